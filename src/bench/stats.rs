//! Figures of one run (or of all runs of a model): percentiles of TTFT, time per output token,
//! decode speed and end-to-end time over successful requests, achieved rates, tokens, exact cost,
//! accuracy. Pure: samples in, a [`Summary`] out.

use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::pricing::{Price, Usage};

/// What one request did, as measured on the client.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Index into the prompt set.
    pub prompt: usize,
    /// Request sent → first event carrying generated output.
    pub ttft: Option<Duration>,
    /// Request sent → end of the response body.
    pub e2e: Duration,
    /// First → last token-bearing event.
    pub decode: Option<Duration>,
    /// Events that carried generated output.
    pub token_events: u64,
    /// Reported usage, or the estimate (prompt ≈ chars / 4 + 4 per message, output = token events).
    pub usage: Usage,
    pub usage_reported: bool,
    /// The backend answered with one JSON body instead of a stream.
    pub non_streamed: bool,
    /// The generated text (for scoring).
    pub answer: String,
    /// `Some` for prompts with an expected answer; a failed request counts as wrong.
    pub passed: Option<bool>,
    pub error: Option<String>,
}

impl Sample {
    pub fn output_tokens(&self) -> u64 {
        self.usage.output
    }

    /// (t_last − t_first) / (n − 1), with n the output tokens (reported, else token events).
    pub fn tpot(&self) -> Option<Duration> {
        let n = self.output_tokens();
        let decode = self.decode?;
        (n >= 2 && !decode.is_zero()).then(|| decode / u32::try_from(n - 1).unwrap_or(u32::MAX))
    }
}

/// Nearest-rank percentiles and the mean of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dist {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl Dist {
    pub fn of(mut values: Vec<f64>) -> Dist {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Dist::default();
        }
        values.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        Dist {
            p50: percentile(&values, 50.0),
            p95: percentile(&values, 95.0),
            p99: percentile(&values, 99.0),
            mean: Some(mean),
        }
    }
}

/// The nearest-rank percentile of sorted values: the smallest value with at least p % of the
/// values at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The figures of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_ratio: f64,
    /// Milliseconds.
    pub ttft_ms: Dist,
    pub tpot_ms: Dist,
    /// Per-request decode speed, tokens per second.
    pub tps: Dist,
    pub e2e_ms: Dist,
    /// TTFT of each successful request in milliseconds, in completion order.
    pub ttft_samples_ms: Vec<f64>,
    pub wall: Duration,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Requests whose usage was estimated because the backend reported none.
    pub estimated_usage: u64,
    pub non_streamed: u64,
    /// `None` when the model has no price in the config.
    pub cost: Option<Decimal>,
    /// Cost divided by successful requests.
    pub cost_per_request: Option<Decimal>,
    pub cost_per_1k_tokens: Option<Decimal>,
    pub scored: u64,
    pub passed: u64,
    pub accuracy: Option<f64>,
    /// Correct answers per US dollar spent on scored prompts.
    pub correct_per_usd: Option<f64>,
    /// Correct answers per second of waiting (accuracy ÷ mean end-to-end time of scored requests).
    pub correct_per_second: Option<f64>,
    /// Distinct error messages with their counts, most frequent first (at most 5).
    pub error_kinds: Vec<(String, u64)>,
}

/// Summarizes samples collected over `wall` time.
pub fn summarize(samples: &[Sample], wall: Duration, price: Option<&Price>) -> Summary {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ttft_samples_ms: Vec<f64> = ok.iter().filter_map(|s| s.ttft.map(ms)).collect();
    let tpots: Vec<Duration> = ok.iter().filter_map(|s| s.tpot()).collect();
    let requests = samples.len() as u64;
    let output_tokens: u64 = samples.iter().map(Sample::output_tokens).sum();
    let input_tokens: u64 = samples.iter().map(|s| s.usage.input).sum();
    let secs = wall.as_secs_f64();
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };

    let cost_of = |s: &&Sample| price.map_or(Decimal::ZERO, |p| p.cost(&s.usage));
    let cost = price.map(|_| samples.iter().map(|s| cost_of(&s)).sum::<Decimal>());
    let per = |total: Decimal, n: u64| (n > 0).then(|| total / Decimal::from(n));
    let scored: Vec<&Sample> = samples.iter().filter(|s| s.passed.is_some()).collect();
    let passed = scored.iter().filter(|s| s.passed == Some(true)).count() as u64;
    let scored_cost = scored.iter().map(cost_of).sum::<Decimal>().to_f64().unwrap_or(0.0);
    let scored_secs: f64 = scored.iter().map(|s| s.e2e.as_secs_f64()).sum();

    let mut kinds: Vec<(String, u64)> = Vec::new();
    for e in samples.iter().filter_map(|s| s.error.as_ref()) {
        match kinds.iter_mut().find(|(m, _)| m == e) {
            Some((_, n)) => *n += 1,
            None => kinds.push((e.clone(), 1)),
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds.truncate(5);

    let errors = requests - ok.len() as u64;
    Summary {
        requests,
        ok: ok.len() as u64,
        errors,
        error_ratio: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        ttft_ms: Dist::of(ttft_samples_ms.clone()),
        tpot_ms: Dist::of(tpots.iter().map(|d| ms(*d)).collect()),
        tps: Dist::of(tpots.iter().map(|d| 1.0 / d.as_secs_f64()).collect()),
        e2e_ms: Dist::of(ok.iter().map(|s| ms(s.e2e)).collect()),
        ttft_samples_ms,
        wall,
        requests_per_second: rate(ok.len() as u64),
        output_tokens_per_second: rate(output_tokens),
        input_tokens,
        output_tokens,
        estimated_usage: samples.iter().filter(|s| !s.usage_reported && s.error.is_none()).count() as u64,
        non_streamed: samples.iter().filter(|s| s.non_streamed).count() as u64,
        cost,
        cost_per_request: cost.and_then(|c| per(c, ok.len() as u64)),
        cost_per_1k_tokens: cost.and_then(|c| per(c * Decimal::from(1000), input_tokens + output_tokens)),
        scored: scored.len() as u64,
        passed,
        accuracy: (!scored.is_empty()).then(|| passed as f64 / scored.len() as f64),
        correct_per_usd: (price.is_some() && scored_cost > 0.0).then(|| passed as f64 / scored_cost),
        correct_per_second: (scored_secs > 0.0).then(|| passed as f64 / scored_secs),
        error_kinds: kinds,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let d = Dist::of(vec![3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((d.p50, d.p99, d.mean), (Some(2.0), Some(3.0), Some(2.0)));
    }

    fn sample(ttft_ms: u64, decode_ms: u64, output: u64, passed: Option<bool>, error: bool) -> Sample {
        Sample {
            ttft: Some(Duration::from_millis(ttft_ms)),
            e2e: Duration::from_millis(ttft_ms + decode_ms),
            decode: Some(Duration::from_millis(decode_ms)),
            token_events: output,
            usage: Usage { input: 100, output, cached_input: 0, reasoning: 0 },
            usage_reported: true,
            passed,
            error: error.then(|| "HTTP 503".to_string()),
            ..Sample::default()
        }
    }

    #[test]
    fn summary() {
        let price =
            Price { input_per_1m: Decimal::from(2), output_per_1m: Decimal::from(8), cached_input_per_1m: None };
        let samples = vec![
            sample(100, 900, 10, Some(true), false),
            sample(200, 900, 10, Some(false), false),
            sample(300, 0, 1, None, false),
            sample(0, 0, 0, Some(false), true),
        ];
        let s = summarize(&samples, Duration::from_secs(2), Some(&price));
        assert_eq!((s.requests, s.ok, s.errors), (4, 3, 1));
        assert_eq!(s.error_ratio, 0.25);
        assert_eq!(s.ttft_ms.p50, Some(200.0));
        // TPOT = 900 ms / 9 = 100 ms → 10 tokens/s; a one-token answer has no TPOT.
        assert_eq!(s.tpot_ms.p50, Some(100.0));
        assert_eq!(s.tps.p50, Some(10.0));
        assert_eq!((s.input_tokens, s.output_tokens), (400, 21));
        assert_eq!((s.requests_per_second, s.output_tokens_per_second), (1.5, 10.5));
        // Cost: 400 in × $2/M + 21 out × $8/M = 0.000968, over 3 successful requests.
        assert_eq!(s.cost, Some(Decimal::from_str("0.000968").unwrap()));
        assert_eq!(s.cost_per_request.map(|c| c.round_dp(9)), Some(Decimal::from_str("0.000322667").unwrap()));
        assert_eq!(s.cost_per_1k_tokens.map(|c| c.round_dp(9)), Some(Decimal::from_str("0.002299287").unwrap()));
        // One of three scored requests passed (the failed one counts as wrong).
        assert_eq!((s.scored, s.passed), (3, 1));
        assert!((s.accuracy.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // Scored cost: two × (100 × 2 + 10 × 8)/1M + (100 × 2)/1M = 0.00076 → 1 / 0.00076 correct per dollar.
        assert!((s.correct_per_usd.unwrap() - 1.0 / 0.00076).abs() < 1e-6);
        // Scored waiting: 1.0 + 1.1 + 0.0 s → 1 / 2.1 correct per second.
        assert!((s.correct_per_second.unwrap() - 1.0 / 2.1).abs() < 1e-12);
        assert_eq!(s.error_kinds, vec![("HTTP 503".to_string(), 1)]);

        let unpriced = summarize(&samples, Duration::from_secs(2), None);
        assert_eq!((unpriced.cost, unpriced.cost_per_request, unpriced.correct_per_usd), (None, None, None));
        let empty = summarize(&[], Duration::ZERO, Some(&price));
        assert_eq!((empty.requests, empty.accuracy, empty.cost_per_request), (0, None, None));
    }
}
