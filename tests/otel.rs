//! OpenTelemetry: one span per proxied request reaches a local OTLP/HTTP receiver with the GenAI
//! attributes and cost, and the trace is carried on to the backend in `traceparent`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":500}}\n\ndata: [DONE]\n\n";

fn attr(span: &serde_json::Value, key: &str) -> serde_json::Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_and_the_trace_reaches_the_backend() {
    let otlp = receiver(0).await;
    let base = otlp.url.trim_end_matches("/hook").to_string();
    let up = Upstream::start(Script::sse(vec![Step::Send(Bytes::from(STREAM))])).await;
    let yaml = config(&up.url(), "", PRICED_MODEL)
        .replace("models:", &format!("telemetry: {{otlp_endpoint: \"{base}\", service_name: tg-test}}\nmodels:"));
    let proxy = proxy(&yaml).await;

    let req = http::Request::post(format!("http://{}/v1/chat/completions", proxy.proxy_addr))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(Full::new(Bytes::from(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)))
        .unwrap();
    let _ = text(client().request(req).await.unwrap()).await;

    // The backend continues the client's trace, under tollgate's span.
    let sent = up.requests()[0].header("traceparent").unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7");

    let mut body = serde_json::Value::Null;
    for _ in 0..50 {
        if let Some(b) = otlp.got.lock().unwrap().first() {
            body = b.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rs = &body["resourceSpans"][0];
    assert_eq!(rs["resource"]["attributes"][0]["value"]["stringValue"], "tg-test", "{body}");
    let span = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["spanId"], parts[2]);
    assert_eq!(span["name"], "chat m");
    assert_eq!(attr(span, "gen_ai.operation.name")["stringValue"], "chat");
    assert_eq!(attr(span, "gen_ai.request.model")["stringValue"], "m");
    assert_eq!(attr(span, "gen_ai.request.stream")["boolValue"], true);
    assert_eq!(attr(span, "gen_ai.usage.input_tokens")["intValue"], "1000");
    assert_eq!(attr(span, "gen_ai.usage.output_tokens")["intValue"], "500");
    assert!(attr(span, "gen_ai.response.time_to_first_chunk")["doubleValue"].as_f64().unwrap() > 0.0);
    // 1000 × $2/1M + 500 × $8/1M.
    assert_eq!(attr(span, "gen_ai.usage.cost.amount")["stringValue"], "0.006");
    assert!(span["status"].get("code").is_none());
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start);
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_added() {
    let up = Upstream::start(Script::sse(vec![Step::Send(Bytes::from(STREAM))])).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", r#"{"model":"m","stream":true,"messages":[]}"#).await)
        .await;
    assert_eq!(up.requests()[0].header("traceparent"), None);
}
