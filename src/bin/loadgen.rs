//! `tollgate-loadgen`: the load generator of the overhead benchmark (`bench/overhead.sh`). A closed loop of
//! OpenAI chat requests that measures, from the client side, TTFT (request sent → first event with a
//! non-empty `delta.content`), the gaps between content chunks, end-to-end latency and requests/s; and a
//! hold mode that opens N streams at once and keeps them open, for the idle-memory and 10k-stream tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "tollgate-loadgen", about = "Closed-loop load generator for OpenAI-compatible chat endpoints")]
struct Args {
    /// Target, e.g. http://127.0.0.1:8080/v1/chat/completions (loopback only in the benchmark).
    #[arg(long)]
    url: String,
    #[arg(long)]
    model: String,
    /// Ask for a streamed (SSE) answer.
    #[arg(long)]
    stream: bool,
    /// Requests in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measure for this long (e.g. 5s, 500ms); the default when --requests is not given is 5s.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Measure exactly this many requests instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured load before the measurement, which also fills the connection pool.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Print the summary as one JSON line (default: indented JSON).
    #[arg(long)]
    json: bool,
    /// Hold mode: open this many streams concurrently and keep them open for --hold-secs.
    #[arg(long)]
    hold: Option<usize>,
    /// Seconds to hold the streams once all are open.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// Hold mode: streams being opened at once (a ramp that spares the listen backlog).
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1: multiplexes streams over few connections.
    #[arg(long)]
    http2: bool,
    /// With --http2: streams per connection (tollgate allows 1024 per connection).
    #[arg(long, default_value_t = 1000)]
    streams_per_conn: usize,
    /// Hold mode: written (with the counts so far) once every stream got its headers or failed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.trim().parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in `{s}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration `{s}`: {e}"))
}

/// How requests go out: a pooled HTTP/1.1 keep-alive client, or fixed HTTP/2 connections.
#[derive(Clone)]
enum Sender {
    Pool(Box<Client<HttpConnector, Full<Bytes>>>),
    H2(Arc<Vec<http2::SendRequest<Full<Bytes>>>>),
}

impl Sender {
    async fn new(args: &Args, uri: &Uri, streams: usize) -> anyhow::Result<Sender> {
        if !args.http2 {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(streams.max(1)).build(http);
            return Ok(Sender::Pool(Box::new(client)));
        }
        let host = uri.host().ok_or_else(|| anyhow!("the URL has no host"))?;
        let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let mut conns = Vec::new();
        for _ in 0..streams.div_ceil(args.streams_per_conn.max(1)).max(1) {
            let tcp = tokio::net::TcpStream::connect(&addr).await.with_context(|| format!("connect {addr}"))?;
            tcp.set_nodelay(true)?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            conns.push(send);
        }
        Ok(Sender::H2(Arc::new(conns)))
    }

    async fn send(&self, slot: usize, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        match self {
            Sender::Pool(client) => Ok(client.request(req).await?),
            Sender::H2(conns) => {
                let mut send = conns.get(slot % conns.len()).ok_or_else(|| anyhow!("no connection"))?.clone();
                send.ready().await?;
                Ok(send.send_request(req).await?)
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a byte stream into SSE events and counts the ones that carry a content token.
#[derive(Default)]
struct Scanner {
    /// The start of an event that straddles frames.
    carry: Vec<u8>,
    error: bool,
}

impl Scanner {
    fn tokens(&mut self, data: &[u8]) -> usize {
        let joined;
        let buf: &[u8] = if self.carry.is_empty() {
            data
        } else {
            self.carry.extend_from_slice(data);
            joined = std::mem::take(&mut self.carry);
            &joined
        };
        let (mut pos, mut n) = (0, 0);
        while let Some(end) = find(&buf[pos..], b"\n\n") {
            let event = &buf[pos..pos + end];
            // A token chunk has `"content":"` followed by at least one character.
            if let Some(i) = find(event, b"\"content\":\"") {
                n += usize::from(event.get(i + 11).is_some_and(|&c| c != b'"'));
            }
            self.error |= event.starts_with(b"data: {\"error\"");
            pos += end + 2;
        }
        self.carry.extend_from_slice(&buf[pos..]);
        n
    }
}

/// One worker's measurements, merged at the end (no shared locks on the hot path).
#[derive(Default)]
struct Stats {
    /// Every finished request, warm-up included (the benchmark divides CPU time by it).
    total: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    ttft: Vec<u32>,
    gaps: Vec<u32>,
    e2e: Vec<u32>,
}

impl Stats {
    fn fail(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
    fn merge(&mut self, o: Stats) {
        self.total += o.total;
        self.requests += o.requests;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.ttft.extend(o.ttft);
        self.gaps.extend(o.gaps);
        self.e2e.extend(o.e2e);
    }
}

/// This process's CPU time so far (utime + stime; /proc reports them in USER_HZ = 100 ticks per second).
fn self_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u32], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    json!(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summary(v: &mut [u32], ps: &[(&str, f64)]) -> Value {
    v.sort_unstable();
    let mut m = serde_json::Map::new();
    for (name, p) in ps {
        m.insert((*name).to_string(), pct(v, *p));
    }
    m.insert("n".into(), json!(v.len()));
    Value::Object(m)
}

fn request(uri: &Uri, body: &Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::post(uri.clone()).header("content-type", "application/json").body(Full::new(body.clone()))?)
}

/// One measured request: returns (ttft, gaps, e2e) or an error description.
async fn one(sender: &Sender, slot: usize, req: Request<Full<Bytes>>, stream: bool) -> Result<Sample, String> {
    let t0 = Instant::now();
    let resp = sender.send(slot, req).await.map_err(|e| format!("request: {e:#}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let (mut scan, mut first, mut last, mut gaps) = (Scanner::default(), None, None, Vec::new());
    let mut size = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        size += data.len();
        if !stream || status != StatusCode::OK {
            continue;
        }
        let now = Instant::now();
        let n = scan.tokens(&data);
        if n == 0 {
            continue;
        }
        if let Some(prev) = last {
            gaps.push(micros(now - prev));
        }
        // Tokens that arrived in the same read are 0 µs apart, as the client sees them.
        gaps.extend(std::iter::repeat_n(0, n - 1));
        first.get_or_insert(now);
        last = Some(now);
    }
    let end = Instant::now();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if scan.error {
        return Err("in-band error event".into());
    }
    let first = match (stream, first) {
        (true, Some(f)) => f,
        (true, None) => return Err("stream without a content token".into()),
        (false, _) if size == 0 => return Err("empty body".into()),
        (false, _) => end,
    };
    Ok(Sample { ttft: micros(first - t0), gaps, e2e: micros(end - t0) })
}

struct Sample {
    ttft: u32,
    gaps: Vec<u32>,
    e2e: u32,
}

async fn run_load(args: Args, uri: Uri, body: Bytes) -> anyhow::Result<Value> {
    let conc = args.concurrency.max(1);
    let sender = Sender::new(&args, &uri, conc).await?;
    let duration = args.duration.unwrap_or(Duration::from_secs(5));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = measure_from + duration;
    let tickets = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for slot in 0..conc {
        let (sender, uri, body, tickets) = (sender.clone(), uri.clone(), body.clone(), tickets.clone());
        let (limit, stream) = (args.requests, args.stream);
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
            loop {
                let now = Instant::now();
                let measured = now >= measure_from;
                match limit {
                    Some(n) if measured && tickets.fetch_add(1, Relaxed) >= n => break,
                    None if now >= deadline => break,
                    _ => {}
                }
                let req = match request(&uri, &body) {
                    Ok(r) => r,
                    Err(e) => {
                        st.fail(format!("{e:#}"));
                        break;
                    }
                };
                let result = one(&sender, slot, req, stream).await;
                st.total += 1;
                if !measured {
                    continue;
                }
                st.requests += 1;
                match result {
                    Ok(s) => {
                        st.ttft.push(s.ttft);
                        st.gaps.extend(s.gaps);
                        st.e2e.push(s.e2e);
                    }
                    Err(e) => {
                        st.fail(e);
                        // Do not spin on a dead target.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            st
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await?);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from).as_secs_f64();
    let ok = all.requests - all.errors;
    Ok(json!({
        "mode": "load",
        "url": args.url, "model": args.model, "stream": args.stream, "concurrency": conc,
        "requests": all.requests, "total_requests": all.total, "errors": all.errors, "first_error": all.first_error,
        "elapsed_s": elapsed, "loadgen_cpu_s": self_cpu_s(),
        "rps": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        "ttft_us": summary(&mut all.ttft, &[("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]),
        "gap_us": summary(&mut all.gaps, &[("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]),
        "e2e_us": summary(&mut all.e2e, &[("p50", 50.0), ("p99", 99.0), ("max", 100.0)]),
    }))
}

/// Counters shared by the held streams.
#[derive(Default)]
struct Hold {
    opened: AtomicU64,
    ok_headers: AtomicU64,
    failed: AtomicU64,
    with_token: AtomicU64,
    body_errors: AtomicU64,
    ended: AtomicU64,
}

impl Hold {
    fn snapshot(&self) -> Value {
        let (f, b) = (self.failed.load(Relaxed), self.body_errors.load(Relaxed));
        json!({
            "opened": self.opened.load(Relaxed), "ok_headers": self.ok_headers.load(Relaxed),
            "failed": f, "body_errors": b, "errors": f + b,
            "with_token": self.with_token.load(Relaxed), "ended_early": self.ended.load(Relaxed),
        })
    }
}

async fn hold_stream(
    sender: Sender,
    slot: usize,
    req: Request<Full<Bytes>>,
    h: Arc<Hold>,
    gate: Arc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let permit = gate.acquire_owned().await.ok();
    let resp = sender.send(slot, req).await;
    h.opened.fetch_add(1, Relaxed);
    drop(permit);
    let resp = match resp {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            h.failed.fetch_add(1, Relaxed);
            return Some(format!("status {}", r.status()));
        }
        Err(e) => {
            h.failed.fetch_add(1, Relaxed);
            return Some(format!("request: {e:#}"));
        }
    };
    h.ok_headers.fetch_add(1, Relaxed);
    let (mut body, mut scan, mut seen) = (resp.into_body(), Scanner::default(), false);
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            f = body.frame() => f,
        };
        match frame {
            None => {
                h.ended.fetch_add(1, Relaxed);
                return None;
            }
            Some(Err(e)) => {
                h.body_errors.fetch_add(1, Relaxed);
                return Some(format!("body: {e}"));
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if scan.tokens(&data) > 0 && !seen {
                    seen = true;
                    h.with_token.fetch_add(1, Relaxed);
                }
                if scan.error {
                    h.body_errors.fetch_add(1, Relaxed);
                    return Some("in-band error event".into());
                }
            }
        }
    }
}

async fn run_hold(args: Args, uri: Uri, body: Bytes, n: usize) -> anyhow::Result<Value> {
    let sender = Sender::new(&args, &uri, n).await?;
    let hold = Arc::new(Hold::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(args.open_concurrency.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for slot in 0..n {
        let req = request(&uri, &body)?;
        let conn_slot = if args.http2 { slot / args.streams_per_conn.max(1) } else { slot };
        let task = hold_stream(sender.clone(), conn_slot, req, hold.clone(), gate.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(task));
    }
    while hold.opened.load(Relaxed) < n as u64 && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_ms = start.elapsed().as_millis() as u64;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, hold.snapshot().to_string()).with_context(|| format!("write {}", path.display()))?;
    }
    tokio::time::sleep(Duration::try_from_secs_f64(args.hold_secs.max(0.0))?).await;
    let mut report = hold.snapshot();
    stop_tx.send(true)?;
    let mut first_error = None;
    for t in tasks {
        if let Some(e) = t.await? {
            first_error.get_or_insert(e);
        }
    }
    let extra = json!({"mode": "hold", "streams": n, "http2": args.http2, "open_ms": open_ms,
        "held_s": args.hold_secs, "first_error": first_error});
    if let (Some(r), Value::Object(e)) = (report.as_object_mut(), extra) {
        r.extend(e);
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: Uri = args.url.parse().with_context(|| format!("bad --url {}", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let mut req =
        json!({"model": args.model, "messages": [{"role": "user", "content": "Say hello to the benchmark."}]});
    if args.stream {
        req["stream"] = json!(true);
    }
    let body = Bytes::from(serde_json::to_vec(&req)?);
    let json_line = args.json;
    let report = match args.hold {
        Some(n) => run_hold(args, uri, body, n).await?,
        None => run_load(args, uri, body).await?,
    };
    if json_line {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
