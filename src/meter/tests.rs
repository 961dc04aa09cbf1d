//! The pure meter: timings derived from scripted timestamps, usage reported vs estimated.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::openai::{BodyInfo, EventInfo};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn token() -> EventInfo {
    EventInfo { token_choices: 1, ..EventInfo::default() }
}

#[test]
fn stream_timings_follow_the_definitions() {
    let t0 = Instant::now();
    let mut m = Meter::new(Endpoint::ChatCompletions, true, t0, 20);
    m.on_headers(200, t0 + ms(50));
    // A role-only chunk arrives first: not a token.
    assert_eq!(m.on_event(&EventInfo::default(), t0 + ms(60)), None);
    assert_eq!(m.on_event(&token(), t0 + ms(300)), None);
    assert_eq!(m.on_event(&token(), t0 + ms(320)), Some(ms(20)));
    assert_eq!(m.on_event(&token(), t0 + ms(350)), Some(ms(30)));
    assert_eq!(m.on_event(&token(), t0 + ms(400)), Some(ms(50)));
    let r = m.finish(Outcome::Success, t0 + ms(410));
    assert_eq!(r.time_to_headers, Some(ms(50)));
    assert_eq!(r.ttft, Some(ms(300)));
    // (400 - 300) / (4 - 1)
    assert_eq!(r.tpot, Some(Duration::from_nanos(33_333_333)));
    assert!((r.tokens_per_second().unwrap_or(0.0) - 30.0).abs() < 1e-3);
    assert_eq!(r.duration, ms(410));
    // No usage from the backend: estimated from the request and the token-bearing chunks.
    assert_eq!(r.usage, Some((Usage { input: 20, output: 4, cached_input: 0, reasoning: 0 }, UsageSource::Estimated)));
    assert_eq!(r.usage_missing, Some(MissingReason::NoUsage));
}

#[test]
fn reported_usage_wins_and_drives_tpot() {
    let t0 = Instant::now();
    let mut m = Meter::new(Endpoint::ChatCompletions, true, t0, 999);
    m.on_headers(200, t0);
    // Two chunks carrying 5 tokens each (speculative decoding): TPOT uses the reported 10 tokens.
    m.on_event(&token(), t0 + ms(100));
    m.on_event(&token(), t0 + ms(190));
    let u = Usage { input: 7, output: 10, cached_input: 2, reasoning: 0 };
    m.on_event(&EventInfo { usage: Some(u), usage_only: true, ..EventInfo::default() }, t0 + ms(191));
    let r = m.finish(Outcome::Success, t0 + ms(200));
    assert_eq!(r.usage, Some((u, UsageSource::Reported)));
    assert_eq!(r.usage_missing, None);
    assert_eq!(r.tpot, Some(ms(10)));
}

#[test]
fn interrupted_and_failed_requests() {
    let t0 = Instant::now();
    let mut m = Meter::new(Endpoint::ChatCompletions, true, t0, 5);
    m.on_headers(200, t0);
    m.on_event(&token(), t0 + ms(10));
    let r = m.finish(Outcome::ClientDisconnect, t0 + ms(20));
    assert_eq!(r.usage.map(|u| u.0.output), Some(1));
    assert_eq!(r.usage_missing, Some(MissingReason::Interrupted));
    assert_eq!(r.tpot, None);

    // No response at all: nothing billed, nothing missing.
    let r = Meter::new(Endpoint::ChatCompletions, true, t0, 5).finish(Outcome::ConnectError, t0 + ms(1));
    assert_eq!((r.usage, r.usage_missing, r.status), (None, None, 0));

    // A 500 passed through: not billed.
    let mut m = Meter::new(Endpoint::ChatCompletions, false, t0, 5);
    m.on_headers(500, t0);
    assert_eq!(m.finish(Outcome::UpstreamError, t0).usage, None);
}

#[test]
fn non_streamed_bodies() {
    let t0 = Instant::now();
    let mut m = Meter::new(Endpoint::ChatCompletions, false, t0, 5);
    m.on_headers(200, t0 + ms(700));
    m.on_body(Some(BodyInfo { usage: None, output_chars: 41, error: false }));
    let r = m.finish(Outcome::Success, t0 + ms(701));
    assert_eq!(r.ttft, None);
    assert_eq!(r.usage.map(|u| (u.0.output, u.1)), Some((11, UsageSource::Estimated)));

    let mut m = Meter::new(Endpoint::Embeddings, false, t0, 5);
    m.on_headers(200, t0);
    m.on_body(None);
    assert_eq!(m.finish(Outcome::Success, t0).usage_missing, Some(MissingReason::ParseError));

    let mut m = Meter::new(Endpoint::ChatCompletions, true, t0, 5);
    m.on_headers(200, t0);
    m.on_overflow();
    assert_eq!(m.finish(Outcome::Success, t0).usage_missing, Some(MissingReason::Overflow));
}
