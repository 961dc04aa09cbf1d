#!/usr/bin/env bash
# Builds and runs every fuzz target for FUZZ_SECONDS (default 30) on the stable toolchain, then
# replays the checked-in corpus and regressions. Exits non-zero on any crash. See README.md.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
TARGETS=(${FUZZ_TARGETS:-sse_parser stream_events config_loader metered_body})
# cargo-fuzz's default build: release with debug assertions; `--sanitizer none` needs no nightly.
FUZZ=(--sanitizer none)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

start=$SECONDS
cargo fuzz build "${FUZZ[@]}"
echo "fuzz: built in $((SECONDS - start)) s"

# New inputs go to a scratch directory, so the checked-in corpus stays as it is.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    echo "fuzz: $t for ${FUZZ_SECONDS} s"
    if ! cargo fuzz run "${FUZZ[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        tail -n 60 "$scratch/$t.log"
        echo "fuzz: $t FAILED: the crashing input is in fuzz/artifacts/$t/"
        failed+=("$t")
        continue
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ *DONE' "$scratch/$t.log" || true
    # Replay the checked-in corpus and the regressions (`-runs=0`: run each file once, no fuzzing).
    replay=("corpus/$t")
    [ -d "regressions/$t" ] && replay+=("regressions/$t")
    if ! cargo fuzz run "${FUZZ[@]}" "$t" "${replay[@]}" -- -runs=0 -rss_limit_mb=2048 -timeout=10 \
        >"$scratch/$t.replay.log" 2>&1; then
        tail -n 60 "$scratch/$t.replay.log"
        echo "fuzz: $t FAILED on the checked-in corpus or regressions"
        failed+=("$t")
    fi
done

echo "fuzz: ${#TARGETS[@]} targets in $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzz: no crash"
