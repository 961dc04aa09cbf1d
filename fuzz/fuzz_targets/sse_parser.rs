//! The SSE parser under arbitrary bytes cut into arbitrary chunks: it must not panic, and every
//! chunking must give the same boundaries and events as one whole-stream feed.
//!
//! The whole input is the stream (so the fixtures in the seed corpus stay valid streams); its first
//! bytes also choose the cut positions and a second, small line cap, so the fuzzer explores both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::sse::SseParser;

/// One boundary: the dispatched event as (event name, data), if any, and its end offset in the stream.
type Boundary = (Option<(String, Vec<u8>)>, usize);

/// Feeds `chunks` (which concatenate to the stream) and returns every boundary, `finish()` and `overflowed()`.
fn run(chunks: &[&[u8]], max: usize) -> (Vec<Boundary>, bool, bool) {
    let mut parser = SseParser::new(max);
    let (mut out, mut base) = (Vec::new(), 0);
    for chunk in chunks {
        let mut last = 0;
        parser.feed(chunk, &mut |event, end| {
            // Offsets point past a line terminator inside this chunk and only move forward.
            assert!(end > last && end <= chunk.len(), "offset {end} after {last} in a chunk of {}", chunk.len());
            last = end;
            out.push((event.map(|e| (e.event.to_owned(), e.data.to_vec())), base + end));
        });
        base += chunk.len();
    }
    let overflowed = parser.overflowed();
    let truncated = parser.finish();
    assert!(!parser.finish(), "a second finish() reports nothing");
    (out, truncated, overflowed)
}

/// Up to 7 cut positions from the first bytes: byte 0 gives the count, bytes 1.. the positions.
fn cuts(data: &[u8]) -> Vec<usize> {
    let n = data.first().map_or(0, |b| usize::from(b & 7));
    let mut at: Vec<usize> = (0..n)
        .map(|i| {
            let lo = data.get(1 + 2 * i).copied().unwrap_or(0);
            let hi = data.get(2 + 2 * i).copied().unwrap_or(0);
            usize::from(u16::from_le_bytes([lo, hi])) % (data.len() + 1)
        })
        .collect();
    at.sort_unstable();
    at
}

fn check(data: &[u8], at: &[usize], max: usize) {
    let starts = std::iter::once(0).chain(at.iter().copied());
    let ends = at.iter().copied().chain(std::iter::once(data.len()));
    let chunks: Vec<&[u8]> = starts.zip(ends).map(|(a, b)| &data[a..b]).collect();
    let (whole, whole_truncated, whole_over) = run(&[data], max);
    let (split, split_truncated, split_over) = run(&chunks, max);
    assert_eq!((whole_truncated, whole_over), (split_truncated, split_over), "finish/overflowed, cuts {at:?}");
    assert_eq!(whole.len(), split.len(), "boundary count, cuts {at:?}");
    for ((want, w), (got, s)) in whole.iter().zip(&split) {
        assert_eq!(want, got, "events, cuts {at:?}");
        // Offsets agree, except that a CRLF cut between its CR and LF is reported at the CR.
        assert!(w == s || (*w == s + 1 && data[*s] == b'\n' && at.contains(s)), "offset {w} vs {s}, cuts {at:?}");
    }
    // Without an overflow or a truncated tail, the boundaries cut the whole stream into event blocks.
    // (A stream that is only a BOM has no boundary and nothing left over either.)
    if !whole_over && !whole_truncated && data != b"\xEF\xBB\xBF" {
        assert_eq!(whole.last().map_or(0, |b| b.1), data.len(), "the last boundary ends the stream");
    }
}

fuzz_target!(|data: &[u8]| {
    let at = cuts(data);
    check(data, &at, 1 << 20);
    // A small cap (1..=64 bytes) chosen by the last byte, so overflow paths get split too.
    let small = data.last().map_or(1, |b| usize::from(b % 64) + 1);
    check(data, &at, small);
    // One-byte chunks, the worst case for state carried across reads.
    if data.len() <= 4096 {
        let ones: Vec<usize> = (1..data.len()).collect();
        check(data, &ones, 1 << 20);
    }
});
