//! `tollgate rules`: the shipped rule files are exactly what the command generates from
//! `config.example.yaml`, `promtool check rules` accepts them, and `promtool test rules` checks
//! every alert firing and not firing. Needs promtool (installed by `scripts/test`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("promtool is not installed ({e}): run the suite with scripts/test"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn shipped_rules_are_generated_checked_and_unit_tested() {
    let dir = std::env::temp_dir().join(format!("tollgate-rules-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["rules", "--config", "config.example.yaml", "--out", dir.to_str().unwrap()])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (generated, shipped) in [
        ("tollgate-rules.yml", "deploy/prometheus/rules/tollgate-rules.yml"),
        ("prometheus-rule.yaml", "deploy/kubernetes/prometheus-rule.yaml"),
    ] {
        let fresh = std::fs::read_to_string(dir.join(generated)).unwrap();
        let kept = std::fs::read_to_string(Path::new(ROOT).join(shipped)).unwrap();
        assert!(
            fresh == kept,
            "{shipped} is stale: run `tollgate rules --config config.example.yaml --out <dir>` and copy {generated}"
        );
    }
    let said = promtool(&["check", "rules", "deploy/prometheus/rules/tollgate-rules.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    let said = promtool(&["test", "rules", "deploy/prometheus/tests/tollgate-rules.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    // Every alert the generator writes has a unit test.
    let rules = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/rules/tollgate-rules.yml")).unwrap();
    let tests =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/tests/tollgate-rules.test.yml")).unwrap();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {line}")), "no promtool test for {line}");
    }
}

#[test]
fn a_config_without_slas_or_budgets_still_gives_valid_rules() {
    let dir = std::env::temp_dir().join(format!("tollgate-rules-min-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("min.yaml");
    std::fs::write(
        &cfg,
        "version: 1\nbackends: [{name: b, url: \"http://127.0.0.1:1\"}]\nmodels: [{name: m, backend: b}]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["rules", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = dir.join("rules.yml");
    std::fs::write(&file, &out.stdout).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
}
