//! The `tollgate` binary as a user runs it: `check`, `serve` with the simulator, reload on SIGHUP
//! (a bad config keeps the old one serving), graceful shutdown on SIGTERM, `simulate`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn tollgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

struct Ports {
    proxy: SocketAddr,
    admin: SocketAddr,
    sim: SocketAddr,
}

fn sim_config(p: &Ports, extra_model: &str) -> String {
    format!(
        r#"version: 1
listen: "{}"
admin_listen: "{}"
limits: {{drain_timeout_ms: 10000}}
backends:
  - name: sim
    url: "http://{}"
models:
  - name: sim-fast
    backend: sim
    price: {{input_per_1m_usd: 1, output_per_1m_usd: 2}}
{extra_model}simulator:
  listen: "{}"
  models:
    - {{name: sim-fast, ttft_ms: 50, tokens_per_second: 100, output_tokens: 20}}
    - {{name: sim-slow, ttft_ms: 100, tokens_per_second: 10, output_tokens: 15}}
"#,
        p.proxy, p.admin, p.sim, p.sim
    )
}

fn ports() -> Ports {
    Ports { proxy: free_addr(), admin: free_addr(), sim: free_addr() }
}

#[test]
fn check_accepts_the_example_and_names_every_mistake() {
    let example = format!("{}/config.example.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = tollgate(&["check", "--config", &example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 backends, 3 models, simulator)"));

    let bad = temp_file(
        "bad.yaml",
        "version: 1\nbackends:\n  - name: a\n    url: \"http://127.0.0.1:1\"\nmodels:\n  - name: m\n    backend: b\n  - name: n\n    backend: a\n    price: {input_per_1m_usd: -1, output_per_1m_usd: 1}\n",
    );
    let out = tollgate(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:7: models[0].backend: backend `b` is not defined"), "{err}");
    assert!(err.contains("bad.yaml:10: models[1].price.input_per_1m_usd: a price must not be negative"), "{err}");

    let typo = temp_file("typo.yaml", "version: 1\nbackends: []\nmodles: []\n");
    let err = String::from_utf8_lossy(&tollgate(&["check", "--config", typo.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("typo.yaml:3: modles: unknown field `modles`"), "{err}");

    let missing = tollgate(&["check", "--config", "/nonexistent/tollgate.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the file"));
}

#[test]
fn help_everywhere() {
    for args in [&["--help"][..], &["serve", "--help"], &["check", "--help"], &["simulate", "--help"]] {
        let out = tollgate(args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[tokio::test]
async fn serve_meters_the_simulator_and_reloads_on_sighup() {
    let p = ports();
    let path = temp_file("tollgate.yaml", &sim_config(&p, ""));
    let proc = Served::start(&path, p.admin, &[]).await;

    let resp = post(
        p.proxy,
        "/v1/chat/completions",
        r#"{"model":"sim-fast","stream":true,"messages":[{"role":"user","content":"hello"}]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = text(resp).await;
    assert!(body.ends_with("data: [DONE]\n\n"));
    // The simulator sent a usage chunk because tollgate asked for it; the client did not ask, so it is gone.
    assert!(!body.contains("\"usage\""), "{body}");
    let m = get(p.admin, "/metrics").await.1;
    let ttft = sample(&m, "tollgate_time_to_first_token_seconds_sum{backend=\"sim\",model=\"sim-fast\"}");
    assert!((0.045..0.5).contains(&ttft), "ttft {ttft}");
    assert_eq!(
        sample(
            &m,
            "tollgate_tokens_total{backend=\"sim\",model=\"sim-fast\",team=\"anonymous\",token_type=\"output\",usage_source=\"reported\"}"
        ),
        20.0
    );

    // A broken config is rejected and the old one keeps serving.
    std::fs::write(&path, sim_config(&p, "  - name: broken\n    backend: nowhere\n")).unwrap();
    proc.signal("-HUP");
    let m = wait_metric(p.admin, "tollgate_config_reloads_total{result=\"failure\"}", 1.0).await;
    assert!(m.contains("tollgate_config_reloads_total{result=\"success\"} 0"));
    assert_eq!(
        post(p.proxy, "/v1/chat/completions", r#"{"model":"sim-fast","messages":[{"role":"user","content":"x"}]}"#)
            .await
            .status(),
        200
    );

    // A good one is swapped in.
    std::fs::write(&path, sim_config(&p, "  - name: sim-slow\n    backend: sim\n")).unwrap();
    proc.signal("-HUP");
    wait_metric(p.admin, "tollgate_config_reloads_total{result=\"success\"}", 1.0).await;
    let (_, models) = get(p.proxy, "/v1/models").await;
    assert!(models.contains("\"sim-slow\""), "{models}");
}

async fn wait_metric(admin: SocketAddr, series: &str, at_least: f64) -> String {
    for _ in 0..200 {
        let m = get(admin, "/metrics").await.1;
        if sample(&m, series) >= at_least {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never reached {at_least}");
}

#[tokio::test]
async fn sigterm_drains_streams_in_flight() {
    let p = ports();
    let path = temp_file("tollgate.yaml", &sim_config(&p, "  - name: sim-slow\n    backend: sim\n"));
    let mut proc = Served::start(&path, p.admin, &[]).await;

    // A stream of 15 tokens at 10/s: about 1.5 s long.
    let resp = post(
        p.proxy,
        "/v1/chat/completions",
        r#"{"model":"sim-slow","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    let reading = tokio::spawn(text(resp));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proc.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready, and no new connections on the proxy port.
    assert_eq!(get(p.admin, "/readyz").await.0, 503);
    assert!(tokio::net::TcpStream::connect(p.proxy).await.is_err(), "new connections must be refused");
    let body = reading.await.unwrap();
    assert_eq!(body.matches("\"content\"").count(), 15, "the stream was cut: {body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    let status = tokio::task::spawn_blocking(move || proc.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn simulate_runs_alone() {
    let p = ports();
    let path = temp_file("tollgate.yaml", &sim_config(&p, ""));
    let addr = free_addr();
    let child = Command::new(BIN)
        .args(["simulate", "--config", path.to_str().unwrap(), "--listen", &addr.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proc = Kill(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(addr, "/v1/models").await;
    assert_eq!(status, 200);
    assert!(body.contains("sim-fast") && body.contains("sim-slow"));
}

#[tokio::test]
async fn sigterm_under_load_finishes_or_ends_every_stream_loudly() {
    // 100 streams of about 1.5 s, drain deadline 10 s: every one completes.
    let p = ports();
    let path = temp_file("tollgate.yaml", &sim_config(&p, "  - name: sim-slow\n    backend: sim\n"));
    let mut proc = Served::start(&path, p.admin, &[]).await;
    let body = r#"{"model":"sim-slow","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let resp = post(p.proxy, "/v1/chat/completions", body).await;
        readers.push(tokio::spawn(text(resp)));
    }
    proc.signal("-TERM");
    for r in readers {
        let out = r.await.unwrap();
        assert!(out.ends_with("data: [DONE]\n\n"), "a stream was cut: {out}");
    }
    let status = tokio::task::spawn_blocking(move || proc.child.wait()).await.unwrap().unwrap();
    assert!(status.success());

    // Streams of 15 s with a 500 ms deadline: each ends with an error event, none silently.
    let p = ports();
    let yaml = sim_config(&p, "  - name: sim-slow\n    backend: sim\n")
        .replace("drain_timeout_ms: 10000", "drain_timeout_ms: 500")
        .replace("tokens_per_second: 10, output_tokens: 15", "tokens_per_second: 1, output_tokens: 15");
    let path = temp_file("tollgate.yaml", &yaml);
    let mut proc = Served::start(&path, p.admin, &[]).await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let resp = post(p.proxy, "/v1/chat/completions", body).await;
        readers.push(tokio::spawn(text(resp)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    proc.signal("-TERM");
    for r in readers {
        let out = r.await.unwrap();
        assert!(out.ends_with("\"code\":\"server_shutdown\"}}\n\n"), "a stream was cut silently: {out}");
    }
    let status = tokio::task::spawn_blocking(move || proc.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}
