//! Shared by the integration tests: a scripted upstream speaking raw HTTP/1.1 on loopback, a
//! proxy started in-process from YAML, and a small HTTP client that timestamps every frame.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tollgate::app::{self, ConfigSource, Running};
use tollgate::config::Config;

/// One step of a scripted response, after the status line and headers.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (as one HTTP chunk when the response is chunked).
    Send(Bytes),
    /// Sleep.
    Wait(Duration),
    /// Close the socket abruptly, mid-body.
    Reset,
    /// Stop writing but keep the socket open for this long.
    Stall(Duration),
}

/// A scripted response.
#[derive(Clone, Debug)]
pub struct Script {
    pub delay_headers: Duration,
    pub status: u16,
    pub content_type: &'static str,
    /// Chunked transfer encoding (streams) or Content-Length (computed from all `Send`s).
    pub chunked: bool,
    pub steps: Vec<Step>,
    /// Send `connection: close` and hang up after the response.
    pub close: bool,
    /// Extra header lines, each ending in `\r\n`.
    pub headers: String,
    /// A wait after the headers, in milliseconds, that the test can change while the upstream runs.
    pub first_byte_delay_ms: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Script {
    pub fn sse(steps: Vec<Step>) -> Script {
        Script {
            delay_headers: Duration::ZERO,
            status: 200,
            content_type: "text/event-stream",
            chunked: true,
            steps,
            close: false,
            headers: String::new(),
            first_byte_delay_ms: None,
        }
    }
    pub fn json(status: u16, body: &str) -> Script {
        Script {
            delay_headers: Duration::ZERO,
            status,
            content_type: "application/json",
            chunked: false,
            steps: vec![Step::Send(Bytes::from(body.to_string()))],
            close: false,
            headers: String::new(),
            first_byte_delay_ms: None,
        }
    }
}

/// Splits SSE bytes into `Send` steps of events, `gap` apart.
pub fn events_every(bytes: &[u8], gap: Duration) -> Vec<Step> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut steps = Vec::new();
    for ev in text.split_inclusive("\n\n") {
        if !steps.is_empty() && !gap.is_zero() {
            steps.push(Step::Wait(gap));
        }
        steps.push(Step::Send(Bytes::from(ev.to_string())));
    }
    steps
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub head: String,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A raw HTTP/1.1 upstream on loopback that answers every request with `script`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Set when the proxy closed the connection while the script was still writing.
    pub peer_closed: Arc<Mutex<u32>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    /// Stops accepting (frees the port); connections already open finish their scripts.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Upstream {
    pub async fn start(script: Script) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    /// Like [`Upstream::start`] on a given address (to bring a "dead" backend back to life).
    pub async fn start_on(addr: SocketAddr, script: Script) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peer_closed = Arc::new(Mutex::new(0));
        let (s, p) = (seen.clone(), peer_closed.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, s, p) = (script.clone(), s.clone(), p.clone());
                tokio::spawn(async move { serve_one(stream, script, s, p).await });
            }
        });
        Upstream { addr, seen, peer_closed, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_one(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<Seen>>>, closed: Arc<Mutex<u32>>) {
    stream.set_nodelay(true).unwrap();
    loop {
        // Read one request: head, then Content-Length bytes of body.
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        seen.lock().unwrap().push(Seen { head, body: Bytes::copy_from_slice(&buf[head_end..head_end + len]) });

        tokio::time::sleep(script.delay_headers).await;
        let mut out = format!("HTTP/1.1 {} Scripted\r\ncontent-type: {}\r\n", script.status, script.content_type);
        out.push_str(&script.headers);
        if script.close {
            out.push_str("connection: close\r\n");
        }
        if script.chunked {
            out.push_str("transfer-encoding: chunked\r\n\r\n");
        } else {
            let total: usize = script.steps.iter().map(|s| if let Step::Send(b) = s { b.len() } else { 0 }).sum();
            out.push_str(&format!("content-length: {total}\r\n\r\n"));
        }
        if stream.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        if let Some(d) = &script.first_byte_delay_ms {
            tokio::time::sleep(Duration::from_millis(d.load(std::sync::atomic::Ordering::Relaxed))).await;
        }
        for step in &script.steps {
            let ok = match step {
                Step::Send(b) if script.chunked => {
                    let mut frame = format!("{:x}\r\n", b.len()).into_bytes();
                    frame.extend_from_slice(b);
                    frame.extend_from_slice(b"\r\n");
                    stream.write_all(&frame).await.is_ok()
                }
                Step::Send(b) => stream.write_all(b).await.is_ok(),
                Step::Wait(d) => {
                    // Notice a proxy that hung up while we wait.
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        _ = tokio::time::sleep(*d) => true,
                        r = stream.read(&mut probe) => !matches!(r, Ok(0) | Err(_)),
                    }
                }
                Step::Reset => return,
                Step::Stall(d) => {
                    tokio::time::sleep(*d).await;
                    return;
                }
            };
            if !ok {
                *closed.lock().unwrap() += 1;
                return;
            }
        }
        if script.chunked && stream.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
        if script.close {
            return;
        }
    }
}

/// Starts tollgate in-process from YAML; `{up}` in the text is replaced by `up_url`.
pub async fn proxy(yaml: &str) -> Running {
    proxy_env(yaml, &[]).await
}

/// Like [`proxy`], with these environment variables visible to the config (and no others).
pub async fn proxy_env(yaml: &str, env: &[(&str, &str)]) -> Running {
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    // Each test proxy gets a ledger of its own in a temporary folder, never in the working tree.
    let yaml = if yaml.contains("\nledger:") {
        yaml.to_string()
    } else {
        let path = temp_file("ledger.sqlite3", "");
        std::fs::remove_file(&path).unwrap();
        format!("{yaml}ledger: {{path: \"{}\"}}\n", path.display())
    };
    let config = Config::parse(&yaml, "test.yaml", &lookup).unwrap_or_else(|e| panic!("{e}"));
    app::start(config, ConfigSource::Embedded).await.unwrap()
}

/// A config with listeners on ephemeral ports, one backend at `url` and the given models section.
pub fn config(url: &str, extra_backend_keys: &str, models: &str) -> String {
    format!(
        "version: 1\nlisten: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nbackends:\n  - name: up\n    url: \"{url}\"\n{extra_backend_keys}models:\n{models}"
    )
}

pub const PRICED_MODEL: &str =
    "  - name: m\n    backend: up\n    price:\n      input_per_1m_usd: 2\n      output_per_1m_usd: 8\n";

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Response<Incoming> {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client().request(req).await.unwrap()
}

/// Reads a whole body, recording when each frame arrived.
pub async fn frames(resp: Response<Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.push((Instant::now(), data));
        }
    }
    out
}

pub async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new())).unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, text(resp).await)
}

pub async fn metrics(running: &Running) -> String {
    get(running.admin_addr, "/metrics").await.1
}

/// The value of one sample line in a scrape, e.g. `tollgate_tokens_total{...}`; 0 when absent.
pub fn sample(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

/// Polls the scrape until `pred` holds (records are finalized when the body ends, asynchronously
/// to the client having read the last byte).
pub async fn metrics_until(running: &Running, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let m = metrics(running).await;
        if pred(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = metrics(running).await;
    panic!("metrics never matched:\n{m}");
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A free loopback address (bound then released: a small race, acceptable on loopback).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A file with `text` in a fresh temporary folder.
pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-test-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A `tollgate serve` child process, killed when dropped; its stderr (the log) goes to `log`.
pub struct Served {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `tollgate serve --config FILE` with extra environment variables, and waits until the
    /// admin port answers `/healthz`.
    pub async fn start(config: &std::path::Path, admin: SocketAddr, env: &[(&str, &str)]) -> Served {
        let log = config.with_extension("log");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        // The default ledger file lands next to the config, in the test's temporary folder.
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .current_dir(config.parent().unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let served = Served { child: cmd.spawn().unwrap(), log };
        for _ in 0..200 {
            if TcpStream::connect(admin).await.is_ok() && get(admin, "/healthz").await.0 == 200 {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tollgate did not become healthy");
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, then waits for the process to exit (it drains and flushes the ledger first).
    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tollgate exited with {status}");
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }
}

/// A webhook receiver on loopback that fails its first `failures` deliveries with a 500.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub async fn receiver(failures: usize) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (g, attempts) = (g.clone(), attempts.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (g, attempts) = (g.clone(), attempts.clone());
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut a = attempts.lock().unwrap();
                            *a += 1;
                            *a
                        };
                        let status = if n <= failures { 500 } else { 200 };
                        if status == 200 {
                            g.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { url, got }
}
