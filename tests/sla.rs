//! SLA objectives end to end: targets exported as gauges and as histogram bucket boundaries; a
//! scripted slow upstream breaches the TTFT objective and a webhook receiver gets exactly one
//! breach and, once the upstream is fast again, exactly one recovery.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use support::*;

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
const REQ: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn states(hook: &Receiver) -> Vec<String> {
    hook.got
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "tollgate_sla_alert")
        .map(|v| format!("{}:{}", v["objective"].as_str().unwrap(), v["state"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_slow_upstream_breaches_then_recovers_once_each() {
    let hook = receiver(0).await;
    let delay = Arc::new(AtomicU64::new(300));
    let mut script = Script::sse(vec![Step::Send(Bytes::from(STREAM))]);
    script.first_byte_delay_ms = Some(delay.clone());
    let up = Upstream::start(script).await;
    let yaml = config(&up.url(), "", PRICED_MODEL).replace(
        "models:",
        &format!(
            "sla: {{ttft_p95_ms: 150, min_output_tokens_per_second: 5, max_error_ratio: 0.5, window: 2s}}\nalerts:\n  webhooks:\n    - {{url: \"{}\"}}\nmodels:",
            hook.url
        ),
    );
    let proxy = proxy(&yaml).await;

    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "tollgate_sla_target_seconds{model=\"m\",objective=\"ttft_p95\"}"), 0.15);
    assert_eq!(
        sample(&m, "tollgate_sla_target_tokens_per_second{model=\"m\",objective=\"min_output_tokens_per_second\"}"),
        5.0
    );
    assert_eq!(sample(&m, "tollgate_sla_target_ratio{model=\"m\",objective=\"max_error_ratio\"}"), 0.5);

    // Slow first tokens: the TTFT objective is breached.
    for _ in 0..3 {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    }
    let m =
        metrics_until(&proxy, |m| sample(m, "tollgate_sla_breached{model=\"m\",objective=\"ttft_p95\"}") == 1.0).await;
    // The threshold is a bucket boundary, so "within 150 ms" is read exactly.
    assert!(m.contains("tollgate_time_to_first_token_seconds_bucket{backend=\"up\",model=\"m\",le=\"0.15\"} 0"), "{m}");
    assert_eq!(sample(&m, "tollgate_sla_breached{model=\"m\",objective=\"max_error_ratio\"}"), 0.0);

    // Fast again: keep traffic flowing until the slow requests have left the 2 s window.
    delay.store(0, Ordering::Relaxed);
    for _ in 0..60 {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sample(&metrics(&proxy).await, "tollgate_sla_breached{model=\"m\",objective=\"ttft_p95\"}") == 0.0 {
            break;
        }
    }
    for _ in 0..50 {
        if states(&hook).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(states(&hook), ["ttft_p95:breached", "ttft_p95:recovered"]);
}

#[tokio::test]
async fn a_failing_upstream_breaches_the_error_ratio() {
    let up = Upstream::start(Script::json(503, r#"{"error":{"message":"down"}}"#)).await;
    let yaml =
        config(&up.url(), "", PRICED_MODEL).replace("models:", "sla: {max_error_ratio: 0.1, window: 2s}\nmodels:");
    let proxy = proxy(&yaml).await;
    for _ in 0..3 {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    }
    metrics_until(&proxy, |m| sample(m, "tollgate_sla_breached{model=\"m\",objective=\"max_error_ratio\"}") == 1.0)
        .await;
}
