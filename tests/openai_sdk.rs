//! A real client: the official OpenAI Python SDK streams through a running `tollgate serve` against
//! the built-in simulator and gets exactly what it gets from a direct call.
//! Needs `TOLLGATE_TEST_PYTHON` (set by `scripts/test`) or a `python3` that can `import openai`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn python() -> String {
    if let Ok(p) = std::env::var("TOLLGATE_TEST_PYTHON") {
        return p;
    }
    let venv = format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&venv).exists() {
        return venv;
    }
    let ok = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(ok, "the OpenAI Python SDK is not installed: run the suite with scripts/test (it creates .venv)");
    "python3".into()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn the_python_sdk_sees_the_same_answers_through_the_proxy() {
    let (proxy, admin, sim) = (free_addr(), free_addr(), free_addr());
    let yaml = format!(
        "version: 1\nlisten: \"{proxy}\"\nadmin_listen: \"{admin}\"\nbackends:\n  - {{name: sim, url: \"http://{sim}\"}}\nmodels:\n  - {{name: sim-small, backend: sim, price: {{input_per_1m_usd: 10, output_per_1m_usd: 30}}}}\nsimulator:\n  listen: \"{sim}\"\n  seed: 3\n  models:\n    - {{name: sim-small, ttft_ms: 20, tokens_per_second: 400, output_tokens: 40, jitter_ratio: 0.2}}\n"
    );
    let dir = std::env::temp_dir().join(format!("tollgate-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .current_dir(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let script = format!("{}/tests/sdk/compare.py", env!("CARGO_MANIFEST_DIR"));
    let (direct, through) = (format!("http://{sim}/v1"), format!("http://{proxy}/v1"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python()).args([&script, &direct, &through, "sim-small"]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (d, p) = (&v["direct"], &v["proxy"]);
    assert_eq!(d, p, "the SDK saw different answers");
    // The comparison is not vacuous: real text, and the proxy hid the usage chunk it forced.
    assert_eq!(p["chat_stream_text"].as_str().unwrap().split(' ').count(), 12);
    assert_eq!(p["chat_stream_text"], p["chat_text"]);
    assert_eq!(p["chat_stream_usage_chunks"], 0);
    assert_eq!(p["chat_stream_asked_usage"]["completion_tokens"], 12);
    assert_eq!(p["unknown_model"], "NotFoundError");
    assert_eq!(p["embeddings"].as_array().unwrap().len(), 2);

    // And the proxy metered what the SDK sent through it: 3 chat + 1 completion stream/body, with usage reported.
    let m = get(admin, "/metrics").await.1;
    let out_tokens = sample(
        &m,
        "tollgate_tokens_total{backend=\"sim\",model=\"sim-small\",team=\"anonymous\",token_type=\"output\",usage_source=\"reported\"}",
    );
    assert_eq!(out_tokens, 12.0 * 3.0 + 8.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"sim\",model=\"sim-small\",team=\"anonymous\",token_type=\"output\",usage_source=\"estimated\"}"
        ),
        0.0
    );
}
