//! SLA judgement: exact thresholds, empty windows, transitions once, the rolling window.

use super::*;

fn obj() -> Objectives {
    Objectives {
        ttft_p95: Some(Duration::from_secs(2)),
        min_output_tokens_per_second: Some(20.0),
        max_error_ratio: Some(0.01),
        window: Duration::from_secs(60),
    }
}

fn breached(v: &[Verdict], o: Objective) -> Option<bool> {
    v.iter().find(|v| v.objective == o).and_then(|v| v.breached)
}

#[test]
fn verdicts() {
    let w = Counts { ttft_total: 100, ttft_within: 95, tps_total: 100, tps_at_most_min: 50, requests: 200, errors: 2 };
    let v = evaluate(&obj(), &w);
    assert_eq!(breached(&v, Objective::TtftP95), Some(false));
    assert_eq!(breached(&v, Objective::MinOutputTokensPerSecond), Some(false));
    assert_eq!(breached(&v, Objective::MaxErrorRatio), Some(false));
    let w = Counts { ttft_within: 94, tps_at_most_min: 51, errors: 3, ..w };
    let v = evaluate(&obj(), &w);
    assert_eq!(breached(&v, Objective::TtftP95), Some(true));
    assert_eq!(breached(&v, Objective::MinOutputTokensPerSecond), Some(true));
    assert_eq!(breached(&v, Objective::MaxErrorRatio), Some(true));
    // No traffic: nothing to judge.
    assert!(evaluate(&obj(), &Counts::default()).iter().all(|v| v.breached.is_none()));
}

#[test]
fn one_transition_per_breach_and_recovery_over_a_rolling_window() {
    let mut m = Monitor::new(Arc::new(ModelSla::new("m", obj())));
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let c = |total: u64, within: u64| Counts { ttft_total: total, ttft_within: within, ..Counts::default() };
    assert!(m.tick(at(0), c(0, 0)).is_empty());
    // 10 slow requests: breach, reported once.
    let t = m.tick(at(10), c(10, 0));
    assert_eq!(t.len(), 1);
    assert!(t[0].breached && t[0].objective == Objective::TtftP95);
    assert!(m.tick(at(20), c(10, 0)).is_empty());
    assert!(m.sla.breached(Objective::TtftP95));
    // Fast traffic after the slow requests left the 60 s window: recovery, once.
    assert!(m.tick(at(50), c(110, 100)).is_empty(), "slow requests still in the window: 100/110 < 95 %");
    let t = m.tick(at(80), c(210, 200));
    assert_eq!(t.len(), 1);
    assert!(!t[0].breached);
    assert!(m.tick(at(90), c(220, 210)).is_empty());
}

#[test]
fn windows_parse() {
    assert_eq!(parse_window("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_window("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_window("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_window("90"), Some(Duration::from_secs(90)));
    assert_eq!(parse_window("5 minutes"), None);
    assert_eq!(parse_window("0s"), None);
}
