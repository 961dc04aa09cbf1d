//! Streaming through the proxy over real loopback HTTP: bytes untouched, usage forced and hidden,
//! timings and cost metered from a scripted upstream.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

const CHAT_NO_USAGE_REQ: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"Write one sentence about the sea."}]}"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn pass_through(fixture_bytes: &[u8], path: &str, request: &str) {
    // Upstream sends the capture event by event, and once more split at odd byte offsets.
    for steps in [events_every(fixture_bytes, Duration::ZERO), odd_splits(fixture_bytes)] {
        let up = Upstream::start(Script::sse(steps)).await;
        let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
        let resp = post(proxy.proxy_addr, path, request).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = text(resp).await;
        assert_eq!(body.as_bytes(), fixture_bytes, "{path}");
    }
}

fn odd_splits(bytes: &[u8]) -> Vec<Step> {
    bytes.chunks(37).map(|c| Step::Send(Bytes::copy_from_slice(c))).collect()
}

#[tokio::test]
async fn chat_stream_bytes_are_untouched() {
    // llama-cpp-python ignores include_usage: nothing to remove, so the client gets every byte.
    let f = fixture("llama-cpp-python/chat-stream-include-usage-requested.sse");
    pass_through(&f, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await;
}

#[tokio::test]
async fn completions_stream_bytes_are_untouched() {
    let f = fixture("llama-cpp-python/completions-stream.sse");
    pass_through(&f, "/v1/completions", r#"{"model":"m","stream":true,"prompt":"Paris is"}"#).await;
}

#[tokio::test]
async fn responses_stream_bytes_are_untouched_and_usage_is_read() {
    let f = fixture("openai/responses-stream.sse");
    pass_through(&f, "/v1/responses", r#"{"model":"m","stream":true,"input":"hi"}"#).await;
    let up = Upstream::start(Script::sse(events_every(&f, ms(5)))).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let _ = text(post(proxy.proxy_addr, "/v1/responses", r#"{"model":"m","stream":true,"input":"hi"}"#).await).await;
    // Responses has no stream_options: nothing is injected.
    assert!(up.requests()[0].json().get("stream_options").is_none());
    let m = metrics_until(&proxy, |m| {
        m.contains(
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"reported\"} 4",
        )
    })
    .await;
    assert_eq!(sample(&m, "tollgate_cached_input_tokens_total{backend=\"up\",model=\"m\"}"), 2.0);
    // (10 × 2 + 2 × 2 + 4 × 8) / 1e6: no cached price, so cached tokens cost the input price.
    assert_eq!(
        sample(&m, "tollgate_cost_usd_total{backend=\"up\",model=\"m\",team=\"anonymous\",usage_source=\"reported\"}"),
        0.000056
    );
}

#[tokio::test]
async fn forced_usage_is_requested_then_hidden_from_the_client() {
    let f = fixture("openai/chat-usage-crlf.sse");
    let expected_client = String::from_utf8(f.clone()).unwrap().replace(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\r\n\r\n",
        "",
    );
    let up = Upstream::start(Script::sse(odd_splits(&f))).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;

    // The client did not ask for usage: the proxy asks upstream and removes the usage chunk.
    let body = text(post(proxy.proxy_addr, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await).await;
    assert_eq!(body, expected_client);
    let sent = up.requests()[0].json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(up.requests()[0].header("content-length").unwrap(), up.requests()[0].body.len().to_string());

    // A client that asked for usage gets it, byte for byte.
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
    let body = text(post(proxy.proxy_addr, "/v1/chat/completions", asked).await).await;
    assert_eq!(body.as_bytes(), &f[..]);

    let m = metrics_until(&proxy, |m| {
        sample(m, "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"input\",usage_source=\"reported\"}")
            == 22.0
    })
    .await;
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"reported\"}"
        ),
        6.0
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"estimated\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn injection_can_be_switched_off_per_backend() {
    let f = fixture("llama-cpp-python/chat-stream-include-usage-requested.sse");
    let up = Upstream::start(Script::sse(events_every(&f, Duration::ZERO))).await;
    let proxy = proxy(&config(&up.url(), "    inject_usage: false\n", PRICED_MODEL)).await;
    let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await).await;
    assert_eq!(up.requests()[0].body, Bytes::from(CHAT_NO_USAGE_REQ));
}

#[tokio::test]
async fn timings_and_cost_come_from_the_stream() {
    // A role chunk at once, the first token after 300 ms, then 5 more 40 ms apart, usage reported.
    let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    let tok =
        |t: &str| Step::Send(Bytes::from(format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")));
    let mut steps = vec![Step::Send(Bytes::from(role)), Step::Wait(ms(300)), tok("a")];
    for t in ["b", "c", "d", "e", "f"] {
        steps.push(Step::Wait(ms(40)));
        steps.push(tok(t));
    }
    steps.push(Step::Send(Bytes::from(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":6,\"total_tokens\":1006}}\n\ndata: [DONE]\n\n",
    )));
    let up = Upstream::start(Script::sse(steps)).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;

    let started = tokio::time::Instant::now();
    let frames = frames(post(proxy.proxy_addr, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await).await;
    let first_token_at = frames.iter().find(|(_, b)| b.windows(9).any(|w| w == b"\"content\"")).unwrap().0;
    let client_ttft = first_token_at.duration_since(started).as_secs_f64();

    let count = "tollgate_time_to_first_token_seconds_count{backend=\"up\",model=\"m\"}";
    let m = metrics_until(&proxy, |m| sample(m, count) == 1.0).await;
    let ttft = sample(&m, "tollgate_time_to_first_token_seconds_sum{backend=\"up\",model=\"m\"}");
    // Server-side TTFT is the scripted 300 ms plus loopback, and never more than the client saw.
    assert!((0.29..0.6).contains(&ttft), "ttft {ttft}");
    assert!(ttft <= client_ttft + 0.005, "proxy {ttft} > client {client_ttft}");
    let tpot = sample(&m, "tollgate_time_per_output_token_seconds_sum{backend=\"up\",model=\"m\"}");
    assert!((0.035..0.08).contains(&tpot), "tpot {tpot}");
    let tps = sample(&m, "tollgate_output_tokens_per_second_sum{backend=\"up\",model=\"m\"}");
    assert!((12.0..29.0).contains(&tps), "tps {tps}");
    assert_eq!(sample(&m, "tollgate_inter_token_latency_seconds_count{backend=\"up\",model=\"m\"}"), 5.0);
    let gaps = sample(&m, "tollgate_inter_token_latency_seconds_sum{backend=\"up\",model=\"m\"}");
    assert!((0.19..0.4).contains(&gaps), "gaps {gaps}");
    // The role-only chunk at t=0 did not count as the first token.
    assert_eq!(sample(&m, "tollgate_time_to_first_token_seconds_bucket{backend=\"up\",model=\"m\",le=\"0.25\"}"), 0.0);
    // Cost to the cent and beyond: 1000 × $2/1M + 6 × $8/1M = $0.002048.
    assert_eq!(
        sample(&m, "tollgate_cost_usd_total{backend=\"up\",model=\"m\",team=\"anonymous\",usage_source=\"reported\"}"),
        0.002048
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_requests_total{backend=\"up\",model=\"m\",endpoint=\"chat_completions\",stream=\"true\",status_class=\"2xx\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "tollgate_requests_in_flight{backend=\"up\"}"), 0.0);
}

#[tokio::test]
async fn missing_usage_is_estimated_and_says_so() {
    let f = fixture("llama-cpp-python/chat-stream-include-usage-requested.sse");
    let up = Upstream::start(Script::sse(events_every(&f, ms(2)))).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await).await;
    let out = "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"estimated\"}";
    let m = metrics_until(&proxy, |m| sample(m, out) > 0.0).await;
    // The backend's own non-streaming usage for this request says 24 completion tokens.
    assert_eq!(sample(&m, out), 24.0);
    assert_eq!(sample(&m, "tollgate_usage_missing_total{backend=\"up\",model=\"m\",reason=\"no_usage\"}"), 1.0);
    assert!(
        sample(&m, "tollgate_cost_usd_total{backend=\"up\",model=\"m\",team=\"anonymous\",usage_source=\"estimated\"}")
            > 0.0
    );
    assert_eq!(
        sample(&m, "tollgate_cost_usd_total{backend=\"up\",model=\"m\",team=\"anonymous\",usage_source=\"reported\"}"),
        0.0
    );
}

#[tokio::test]
async fn non_streaming_usage_and_upstream_model_rename() {
    let body = String::from_utf8(fixture("llama-cpp-python/chat-nonstream.json")).unwrap();
    let up = Upstream::start(Script::json(200, &body)).await;
    let models = "  - name: m\n    backend: up\n    upstream_model: gemma-3-270m\n    price: {input_per_1m_usd: 0.10, output_per_1m_usd: 0.40}\n";
    let proxy = proxy(&config(&up.url(), "", models)).await;
    let resp =
        post(proxy.proxy_addr, "/v1/chat/completions", r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .await;
    assert_eq!(resp.headers()["content-length"], body.len().to_string());
    assert_eq!(text(resp).await, body);
    assert_eq!(up.requests()[0].json()["model"], "gemma-3-270m");
    assert!(up.requests()[0].json().get("stream_options").is_none());
    let m = metrics_until(&proxy, |m| m.contains("token_type=\"output\",usage_source=\"reported\"} 24")).await;
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"input\",usage_source=\"reported\"}"
        ),
        16.0
    );
    // 16 × 0.10 + 24 × 0.40 = 11.2 µ$.
    assert_eq!(
        sample(&m, "tollgate_cost_usd_total{backend=\"up\",model=\"m\",team=\"anonymous\",usage_source=\"reported\"}"),
        0.0000112
    );
}

#[tokio::test]
async fn embeddings_usage_is_metered() {
    let up = Upstream::start(Script::json(200, r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"m","usage":{"prompt_tokens":7,"total_tokens":7}}"#)).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let resp = post(proxy.proxy_addr, "/v1/embeddings", r#"{"model":"m","input":"hello"}"#).await;
    assert_eq!(resp.status(), 200);
    let _ = text(resp).await;
    let m = metrics_until(&proxy, |m| m.contains("endpoint=\"embeddings\"")).await;
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"input\",usage_source=\"reported\"}"
        ),
        7.0
    );
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_and_keeps_tokens_seen() {
    let tok = Step::Send(Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"));
    let mut steps = Vec::new();
    for _ in 0..50 {
        steps.push(tok.clone());
        steps.push(Step::Wait(ms(30)));
    }
    let up = Upstream::start(Script::sse(steps)).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let resp = post(proxy.proxy_addr, "/v1/chat/completions", CHAT_NO_USAGE_REQ).await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    let m = metrics_until(&proxy, |m| m.contains("outcome=\"client_disconnect\"")).await;
    let out = sample(
        &m,
        "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"estimated\"}",
    );
    assert!((3.0..=6.0).contains(&out), "tokens seen so far: {out}");
    assert_eq!(sample(&m, "tollgate_usage_missing_total{backend=\"up\",model=\"m\",reason=\"interrupted\"}"), 1.0);
    assert_eq!(sample(&m, "tollgate_requests_in_flight{backend=\"up\"}"), 0.0);
    // The upstream saw its connection closed long before its 50 tokens were out.
    for _ in 0..100 {
        if *up.peer_closed.lock().unwrap() == 1 {
            return;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("upstream connection was not closed");
}
