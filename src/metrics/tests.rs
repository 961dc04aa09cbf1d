//! Metric exposition: names, labels, `_total` suffixes, exact cost, unpriced requests.

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;

use super::*;
use crate::pricing::Usage;

fn record(usage: Option<(Usage, UsageSource)>) -> Record {
    Record {
        endpoint: Endpoint::ChatCompletions,
        stream: true,
        status: 200,
        outcome: Outcome::Success,
        time_to_headers: Some(Duration::from_millis(5)),
        ttft: Some(Duration::from_millis(150)),
        tpot: Some(Duration::from_millis(10)),
        duration: Duration::from_millis(900),
        token_events: 3,
        usage,
        usage_missing: None,
    }
}

#[test]
fn records_become_series() {
    let m = Metrics::new();
    let s = m.model_series("sim", "sim-small", None);
    let price = Price {
        input_per_1m: Decimal::from_str("0.10").unwrap_or_default(),
        output_per_1m: Decimal::from_str("0.40").unwrap_or_default(),
        cached_input_per_1m: None,
    };
    let u = Usage { input: 16, output: 24, cached_input: 0, reasoning: 0 };
    let spend = m.spend_series("sim", "sim-small", "anonymous");
    for _ in 0..3 {
        s.record(&record(Some((u, UsageSource::Reported))), Some(&price), &spend);
    }
    s.observe_inter_token(Duration::from_millis(20));
    let unpriced = m.model_series("sim", "free", None);
    unpriced.record(&record(Some((u, UsageSource::Estimated))), None, &m.spend_series("sim", "free", "anonymous"));
    m.backend_series("sim").in_flight_add(2);
    m.model_label_overflow();

    let text = m.encode();
    let has = |line: &str| assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    has(
        r#"tollgate_requests_total{backend="sim",model="sim-small",endpoint="chat_completions",stream="true",status_class="2xx",outcome="success"} 3"#,
    );
    has(
        r#"tollgate_tokens_total{backend="sim",model="sim-small",team="anonymous",token_type="output",usage_source="reported"} 72"#,
    );
    // 3 × (16 × 0.10 + 24 × 0.40) / 1e6 = 0.0000336 exactly.
    has(
        r#"tollgate_cost_usd_total{backend="sim",model="sim-small",team="anonymous",usage_source="reported"} 0.0000336"#,
    );
    has(r#"tollgate_unpriced_requests_total{backend="sim",model="free"} 1"#);
    has(r#"tollgate_time_to_first_token_seconds_bucket{backend="sim",model="sim-small",le="0.25"} 3"#);
    has(r#"tollgate_inter_token_latency_seconds_count{backend="sim",model="sim-small"} 1"#);
    has(r#"tollgate_requests_in_flight{backend="sim"} 2"#);
    has("tollgate_model_label_overflow_total 1");
    has(r#"tollgate_build_info{version="0.1.0"} 1"#);
    has("# TYPE tollgate_output_tokens_per_second histogram");
    // The same series handle comes back for the same labels (reloads keep counting).
    assert!(Arc::ptr_eq(&s, &m.model_series("sim", "sim-small", None)));
}
