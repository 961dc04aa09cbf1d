//! What clients see when things go wrong, and how each case is metered: backend down, slow,
//! stalled, reset, erroring; bad requests; unknown models and paths.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

const REQ: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn error_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {body}");
    v["error"].clone()
}

fn requests(outcome: &str, status_class: &str) -> String {
    format!(
        "tollgate_requests_total{{backend=\"up\",model=\"m\",endpoint=\"chat_completions\",stream=\"true\",status_class=\"{status_class}\",outcome=\"{outcome}\"}}"
    )
}

const TOKEN: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";

#[tokio::test]
async fn backend_down_is_a_502_that_names_no_url() {
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = proxy(&config(&format!("http://{free}"), "    connect_timeout_ms: 500\n", PRICED_MODEL)).await;
    let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = text(resp).await;
    assert_eq!(error_of(&body)["code"], "upstream_unavailable");
    assert!(!body.contains(&free.port().to_string()), "the backend address leaked: {body}");
    let m = metrics_until(&proxy, |m| sample(m, &requests("connect_error", "5xx")) == 1.0).await;
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"up\",kind=\"connect\"}"), 1.0);
    assert_eq!(sample(&m, "tollgate_requests_in_flight{backend=\"up\"}"), 0.0);
}

#[tokio::test]
async fn no_headers_in_time_is_a_504() {
    let mut script = Script::sse(vec![Step::Send(Bytes::from(TOKEN))]);
    script.delay_headers = Duration::from_secs(5);
    let up = Upstream::start(script).await;
    let proxy = proxy(&config(&up.url(), "    header_timeout_ms: 200\n", PRICED_MODEL)).await;
    let started = tokio::time::Instant::now();
    let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error_of(&text(resp).await)["code"], "upstream_timeout");
    let m = metrics_until(&proxy, |m| sample(m, &requests("header_timeout", "5xx")) == 1.0).await;
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"up\",kind=\"header_timeout\"}"), 1.0);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event() {
    let up = Upstream::start(Script::sse(vec![
        Step::Send(Bytes::from(TOKEN)),
        Step::Send(Bytes::from(TOKEN)),
        Step::Stall(Duration::from_secs(10)),
    ]))
    .await;
    let proxy = proxy(&config(&up.url(), "    idle_timeout_ms: 300\n", PRICED_MODEL)).await;
    let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
    assert_eq!(resp.status(), 200);
    let body = text(resp).await;
    assert!(body.starts_with(&format!("{TOKEN}{TOKEN}")), "{body}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    let err = error_of(last.strip_prefix("data: ").unwrap());
    assert_eq!(err["code"], "upstream_idle_timeout");
    let m = metrics_until(&proxy, |m| sample(m, &requests("idle_timeout", "2xx")) == 1.0).await;
    // Tokens seen before the stall are still metered (estimated: no usage arrived).
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"up\",model=\"m\",team=\"anonymous\",token_type=\"output\",usage_source=\"estimated\"}"
        ),
        2.0
    );
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"up\",kind=\"idle_timeout\"}"), 1.0);
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_an_error_event() {
    let up = Upstream::start(Script::sse(vec![
        Step::Send(Bytes::from(TOKEN)),
        Step::Send(Bytes::from("data: {\"choices\":[{\"de")),
        Step::Wait(ms(50)),
        Step::Reset,
    ]))
    .await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let body = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    assert!(body.starts_with(TOKEN));
    // The half event is terminated, then the error event follows on its own.
    assert!(body.contains("data: {\"choices\":[{\"de\n\ndata: {\"error\""), "{body}");
    assert!(body.ends_with("\"code\":\"upstream_reset\"}}\n\n"), "{body}");
    metrics_until(&proxy, |m| sample(m, &requests("upstream_reset", "2xx")) == 1.0).await;
}

#[tokio::test]
async fn an_error_event_from_the_backend_passes_through_and_is_counted() {
    let err = "data: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n";
    let up = Upstream::start(Script::sse(vec![Step::Send(Bytes::from(TOKEN)), Step::Send(Bytes::from(err))])).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let body = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    assert_eq!(body, format!("{TOKEN}{err}"));
    let m = metrics_until(&proxy, |m| sample(m, &requests("stream_error", "2xx")) == 1.0).await;
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"up\",kind=\"stream_error\"}"), 1.0);
}

#[tokio::test]
async fn backend_4xx_and_5xx_pass_through_unchanged() {
    // llama-cpp-python reports request validation failures as 500 with an OpenAI-shaped body.
    let bad = String::from_utf8(fixture("llama-cpp-python/chat-bad-request.json")).unwrap();
    for (status, body, kind, class) in [
        (500, bad.as_str(), "http_5xx", "5xx"),
        (429, r#"{"error":{"message":"slow down","type":"rate_limit"}}"#, "http_4xx", "4xx"),
        (503, "upstream says no", "http_5xx", "5xx"),
    ] {
        let mut script = Script::json(status, body);
        if !body.starts_with('{') {
            script.content_type = "text/plain";
        }
        let up = Upstream::start(script).await;
        let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
        let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(text(resp).await, body);
        let m = metrics_until(&proxy, |m| sample(m, &requests("upstream_error", class)) == 1.0).await;
        assert_eq!(sample(&m, &format!("tollgate_upstream_errors_total{{backend=\"up\",kind=\"{kind}\"}}")), 1.0);
        // Nothing billed for a failed request.
        assert!(!m.contains("usage_source=\"estimated\"} 1"), "{m}");
    }
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let up = Upstream::start(Script::json(200, "{}")).await;
    let proxy = proxy(
        &config(&up.url(), "", PRICED_MODEL).replace("models:", "limits: {max_request_body_bytes: 1024}\nmodels:"),
    )
    .await;
    let a = proxy.proxy_addr;

    let resp = post(a, "/v1/chat/completions", "{\"model\": \"m\", ").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_of(&text(resp).await)["type"], "invalid_request_error");

    let resp = post(a, "/v1/chat/completions", r#"{"messages":[]}"#).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_of(&text(resp).await)["param"], "model");

    let resp = post(a, "/v1/chat/completions", &format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(2000))).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(error_of(&text(resp).await)["code"], "request_too_large");

    let resp = post(a, "/v1/chat/completions", r#"{"model":"gpt-unknown","messages":[]}"#).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_of(&text(resp).await)["code"], "model_not_found");

    let (status, body) = get(a, "/v1/chat/completions").await;
    assert_eq!(status, 405);
    error_of(&body);
    let (status, body) = get(a, "/admin/secret").await;
    assert_eq!(status, 404);
    error_of(&body);

    let m = metrics(&proxy).await;
    for (reason, n) in [
        ("bad_request", 2.0),
        ("body_too_large", 1.0),
        ("model_not_found", 1.0),
        ("method_not_allowed", 1.0),
        ("not_found", 1.0),
    ] {
        assert_eq!(sample(&m, &format!("tollgate_rejected_requests_total{{reason=\"{reason}\"}}")), n, "{reason}");
    }
    // None of these reached the backend.
    assert!(up.requests().is_empty());
    // The unknown model string never becomes a label.
    assert!(!m.contains("gpt-unknown"));
}

#[tokio::test]
async fn models_list_and_other_v1_paths() {
    let up = Upstream::start(Script::json(200, r#"{"ok":true}"#)).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let (status, body) = get(proxy.proxy_addr, "/v1/models").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "m");

    // Another /v1/ path carrying a configured model goes to that model's backend...
    let resp = post(proxy.proxy_addr, "/v1/moderations?x=1", r#"{"model":"m","input":"hi"}"#).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await, r#"{"ok":true}"#);
    assert!(up.requests()[0].head.starts_with("POST /v1/moderations?x=1 HTTP/1.1"));
    // ...and without one it is a 404.
    let resp = post(proxy.proxy_addr, "/v1/moderations", r#"{"model":"nope","input":"hi"}"#).await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn unknown_models_go_to_the_default_backend_as_other() {
    let up = Upstream::start(Script::json(200, r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#)).await;
    let yaml = config(&up.url(), "", PRICED_MODEL).replace("models:", "default_backend: up\nmodels:");
    let proxy = proxy(&yaml).await;
    for i in 0..20 {
        let resp =
            post(proxy.proxy_addr, "/v1/chat/completions", &format!(r#"{{"model":"random-{i}","messages":[]}}"#)).await;
        assert_eq!(resp.status(), 200);
        let _ = text(resp).await;
    }
    let m = metrics_until(&proxy, |m| sample(m, "tollgate_model_label_overflow_total") == 20.0).await;
    let other = "tollgate_requests_total{backend=\"up\",model=\"other\",endpoint=\"chat_completions\",stream=\"false\",status_class=\"2xx\",outcome=\"success\"}";
    let m = if sample(&m, other) == 20.0 { m } else { metrics_until(&proxy, |m| sample(m, other) == 20.0).await };
    assert!(!m.contains("random-"), "a client-chosen model name became a label");
    // Usage counted, but no price for `other`: unpriced, never $0.
    assert_eq!(sample(&m, "tollgate_unpriced_requests_total{backend=\"up\",model=\"other\"}"), 20.0);
}

#[tokio::test]
async fn the_backend_key_replaces_the_client_key_and_never_shows() {
    let up = Upstream::start(Script::json(200, "{}")).await;
    let yaml = config(&up.url(), "    api_key_env: TOLLGATE_TEST_BACKEND_KEY\n", PRICED_MODEL);
    let proxy = proxy_env(&yaml, &[("TOLLGATE_TEST_BACKEND_KEY", "sk-backend-7f3a")]).await;
    let req = http::Request::post(format!("http://{}/v1/chat/completions", proxy.proxy_addr))
        .header("authorization", "Bearer sk-client-1111")
        .header("host", "attacker.example")
        .header("x-forwarded-host", "attacker.example")
        .body(http_body_util::Full::new(Bytes::from(
            r#"{"model":"m","api_base":"http://attacker.example","messages":[]}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer sk-backend-7f3a"));
    // The request still reached the configured backend, whatever the body and headers said.
    assert_eq!(seen.header("host").as_deref(), Some(up.addr.to_string().as_str()));
    let m = metrics(&proxy).await;
    assert!(!m.contains("sk-backend") && !m.contains("sk-client"));
}
