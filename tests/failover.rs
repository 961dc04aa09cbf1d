//! Several backends per model: weighted least in-flight spreading, one retry on another backend
//! for failures before any response byte, ejection for a cool-down and recovery.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use support::*;

const REQ: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const OK: &str = r#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;

fn two_backends(a: &str, b: &str, keys: &str, model_backends: &str) -> String {
    format!(
        "version: 1\nlisten: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nbackends:\n  - name: a\n    url: \"{a}\"\n{keys}  - name: b\n    url: \"{b}\"\n{keys}models:\n  - name: m\n    backends: {model_backends}\n    price: {{input_per_1m_usd: 1, output_per_1m_usd: 1}}\n"
    )
}

fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn a_dead_backend_is_retried_elsewhere_then_ejected() {
    let dead = dead_addr();
    let b = Upstream::start(Script::json(200, OK)).await;
    let keys = "    eject_after_failures: 1\n    eject_cooldown_ms: 60000\n";
    let proxy = proxy(&two_backends(&format!("http://{dead}"), &b.url(), keys, "[a, b]")).await;
    for _ in 0..10 {
        let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
        assert_eq!(resp.status(), 200, "every request must succeed through b");
        assert_eq!(text(resp).await, OK);
    }
    let m = metrics_until(&proxy, |m| m.contains("tollgate_backend_up{backend=\"a\"} 0")).await;
    // a failed once, was retried on b, and then stayed out of rotation.
    assert_eq!(sample(&m, "tollgate_upstream_retries_total{backend=\"a\"}"), 1.0);
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"a\",kind=\"connect\"}"), 1.0);
    assert_eq!(sample(&m, "tollgate_backend_up{backend=\"b\"}"), 1.0);
    assert_eq!(b.requests().len(), 10);
    // One record per request, all on b.
    let ok = "tollgate_requests_total{backend=\"b\",model=\"m\",endpoint=\"chat_completions\",stream=\"false\",status_class=\"2xx\",outcome=\"success\"}";
    assert_eq!(sample(&m, ok), 10.0);
    assert!(!m.contains("tollgate_requests_total{backend=\"a\""), "{m}");
    assert_eq!(sample(&m, "tollgate_requests_in_flight{backend=\"a\"}"), 0.0);
}

#[tokio::test]
async fn a_503_is_retried_and_the_backend_recovers_after_its_cooldown() {
    let a_addr = dead_addr();
    let b = Upstream::start(Script::json(200, OK)).await;
    let keys = "    eject_after_failures: 1\n    eject_cooldown_ms: 300\n";
    let proxy = proxy(&two_backends(&format!("http://{a_addr}"), &b.url(), keys, "[{name: a, weight: 5}, b]")).await;
    // a answers 503 at first.
    let mut refusing = Script::json(503, r#"{"error":{"message":"overloaded"}}"#);
    refusing.close = true;
    let a = Upstream::start_on(a_addr, refusing).await;
    // Until a has been tried once (the pick is random by weight), every request still succeeds.
    while a.requests().is_empty() {
        let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
        assert_eq!(resp.status(), 200);
        let _ = text(resp).await;
    }
    // During the cool-down nothing more goes to a.
    for _ in 0..5 {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    }
    assert_eq!(a.requests().len(), 1);
    drop(a);

    // a comes back healthy on the same port; after the cool-down, traffic probes it and it is in again.
    let a = restart_healthy(a_addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..20 {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    }
    assert!(a.requests().len() >= 10, "weight 5:1 should send most traffic to a, got {}", a.requests().len());
    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "tollgate_backend_up{backend=\"a\"}"), 1.0);
}

/// The same port, answering 200 from now on.
async fn restart_healthy(addr: SocketAddr) -> Upstream {
    // The aborted accept task releases the port on its next poll.
    tokio::task::yield_now().await;
    Upstream::start_on(addr, Script::json(200, OK)).await
}

#[tokio::test]
async fn nothing_is_retried_after_bytes_reached_the_client() {
    let token = Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
    let a = Upstream::start(Script::sse(vec![
        Step::Send(token.clone()),
        Step::Wait(Duration::from_millis(20)),
        Step::Reset,
    ]))
    .await;
    let single = proxy(&two_backends(&a.url(), &a.url(), "", "[a]")).await;
    let body =
        text(post(single.proxy_addr, "/v1/chat/completions", r#"{"model":"m","stream":true,"messages":[]}"#).await)
            .await;
    assert!(body.contains("upstream_reset"));
    assert_eq!(a.requests().len(), 1);

    // And a header timeout is not retried either: the first backend may already be generating.
    let mut slow = Script::json(200, OK);
    slow.delay_headers = Duration::from_secs(3);
    let slow = Upstream::start(slow).await;
    let b = Upstream::start(Script::json(200, OK)).await;
    let proxy = proxy(&two_backends(
        &slow.url(),
        &b.url(),
        "    header_timeout_ms: 200\n",
        "[{name: a, weight: 1000}, {name: b, weight: 1}]",
    ))
    .await;
    let mut timeouts = 0;
    for _ in 0..3 {
        let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
        if resp.status() == 504 {
            timeouts += 1;
        }
    }
    assert!(timeouts >= 2, "weight 1000:1 picks a nearly always, and its timeouts must surface as 504");
    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "tollgate_upstream_retries_total{backend=\"a\"}"), 0.0);
}

#[tokio::test]
async fn load_spreads_by_weighted_least_in_flight() {
    let slow = |ms| {
        let mut s = Script::json(200, OK);
        s.delay_headers = Duration::from_millis(ms);
        s
    };
    let a = Upstream::start(slow(150)).await;
    let b = Upstream::start(slow(150)).await;
    let proxy = proxy(&two_backends(&a.url(), &b.url(), "", "[{name: a, weight: 3}, {name: b, weight: 1}]")).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let addr = proxy.proxy_addr;
        tasks.push(tokio::spawn(async move { text(post(addr, "/v1/chat/completions", REQ).await).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), OK);
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 40);
    // 3:1 by weight: about 30 / 10.
    assert!((24..=36).contains(&na), "a got {na}, b got {nb}");
}

#[tokio::test]
async fn a_429_with_retry_after_ejects_for_that_long() {
    let mut limited = Script::json(429, r#"{"error":{"message":"rate limited"}}"#);
    limited.headers = "retry-after: 30\r\n".into();
    limited.close = true;
    let a = Upstream::start(limited).await;
    let b = Upstream::start(Script::json(200, OK)).await;
    // One failure would not eject (eject_after_failures: 5), but Retry-After does, for 30 s > 1 s cool-down.
    let keys = "    eject_after_failures: 5\n    eject_cooldown_ms: 1000\n";
    let proxy = proxy(&two_backends(&a.url(), &b.url(), keys, "[{name: a, weight: 1000}, {name: b, weight: 1}]")).await;
    for _ in 0..5 {
        let resp = post(proxy.proxy_addr, "/v1/chat/completions", REQ).await;
        assert_eq!(resp.status(), 200);
        let _ = text(resp).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", REQ).await).await;
    assert_eq!(a.requests().len(), 1, "a must stay out for its Retry-After");
    let m = metrics(&proxy).await;
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"a\",kind=\"http_4xx\"}"), 1.0);
    assert_eq!(sample(&m, "tollgate_backend_up{backend=\"a\"}"), 0.0);
}
