//! `promtool check metrics` on a live scrape after traffic of every kind: the exposition format and
//! metric names pass Prometheus' own linter. Needs promtool (installed by `scripts/test`).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

#[tokio::test]
async fn promtool_accepts_a_live_scrape() {
    let f = fixture("llama-cpp-python/chat-stream-include-usage-requested.sse");
    let up = Upstream::start(Script::sse(events_every(&f, std::time::Duration::ZERO))).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL).replace("models:", "default_backend: up\nmodels:")).await;
    for body in [
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"unlisted","stream":true,"messages":[]}"#,
        r#"{"model":"m","messages":[]}"#,
        "not json",
    ] {
        let _ = text(post(proxy.proxy_addr, "/v1/chat/completions", body).await).await;
    }
    let _ = text(post(proxy.proxy_addr, "/v1/embeddings", r#"{"model":"m","input":"x"}"#).await).await;
    let resp = post(proxy.proxy_addr, "/v1/chat/completions", r#"{"model":"m","stream":true,"messages":[]}"#).await;
    drop(resp);
    let scrape = metrics_until(&proxy, |m| m.contains("model=\"other\"")).await;
    assert!(scrape.contains("tollgate_time_to_first_token_seconds_bucket"));

    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("promtool is not installed ({e}): run the suite with scripts/test"),
    };
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics said:\n{said}");
}
