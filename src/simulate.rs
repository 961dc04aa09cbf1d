//! The built-in OpenAI-compatible LLM simulator: per-model time to first token, decode speed, output length and jitter.
//!
//! It is the default upstream for new users, the upstream of integration tests and the target of
//! benchmarks, so it speaks the OpenAI wire format faithfully and stays cheap: a streaming body is
//! a small state machine driven by one reusable `tokio::time::Sleep`, and each chunk's bytes are
//! written only when the chunk is due.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};

/// One simulated model.
#[derive(Debug, Clone)]
pub struct SimModel {
    pub name: String,
    /// Delay from request to the first content token.
    pub ttft: Duration,
    /// Decode speed after the first token (> 0).
    pub tokens_per_second: f64,
    /// Tokens generated when the request sets no max_tokens (>= 1).
    pub output_tokens: u32,
    /// 0.0..=1.0; each delay is multiplied by (1 + jitter_ratio * u), u uniform in [-1, 1].
    pub jitter_ratio: f64,
    /// Simulation only: the probability (0.0..=1.0) of answering with the text a benchmark passes
    /// in the `x-tollgate-sim-expected` request header, instead of filler words.
    pub accuracy: f64,
}

/// Simulation only: the answer a "correct" model would give, sent by `tollgate bench` with scored
/// prompts. The value is UTF-8 text, percent-encoded (`%XX`; other bytes are taken as they are).
/// With probability `accuracy` (drawn from the request's own generator) the reply is this text,
/// cut into word tokens (each word with the whitespace before it), instead of filler words; the
/// usage then counts those tokens.
pub const EXPECTED_HEADER: &str = "x-tollgate-sim-expected";

/// The response body type of every simulator response.
pub type SimBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Generated text is drawn from these words: it looks like language and needs no JSON escaping.
const WORDS: [&str; 50] = [
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "this", "be",
    "from", "or", "are", "an", "but", "not", "you", "all", "can", "had", "her", "one", "our", "out", "day", "get",
    "has", "him", "his", "how", "man", "new", "now", "old", "see", "two", "way", "who", "time", "about", "many",
    "then", "them",
];
const MAX_BODY: usize = 32 << 20;
/// Every configured or computed delay is capped so that instant arithmetic can never overflow.
const MAX_DELAY: Duration = Duration::from_secs(3600);
const EMBEDDING_DIMS: usize = 8;

struct Entry {
    model: SimModel,
    /// The delay between two tokens, precomputed so that the hot path does no float division.
    gap: Duration,
    /// The model name as a JSON string literal, spliced into every streamed chunk.
    json_name: String,
    requests: AtomicU64,
}

/// The simulated backend; share it as `Arc<Simulator>`.
pub struct Simulator {
    entries: Vec<Entry>,
    seed: u64,
    counter: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Simulator {
    /// Builds a simulator. Out-of-range settings are clamped rather than rejected so that serving
    /// never panics: jitter to 0..=1, output_tokens to at least 1, delays to at most an hour, and a
    /// tokens_per_second that is not positive means tokens follow each other without delay.
    pub fn new(models: Vec<SimModel>, seed: u64) -> Self {
        let entry = |mut model: SimModel| {
            model.ttft = model.ttft.min(MAX_DELAY);
            model.output_tokens = model.output_tokens.max(1);
            let ratio = model.jitter_ratio;
            model.jitter_ratio = if ratio > 0.0 { ratio.min(1.0) } else { 0.0 };
            let tps = model.tokens_per_second;
            // An invalid speed (zero, negative, NaN) cannot be represented as a delay: no delay.
            let gap = Duration::try_from_secs_f64(1.0 / tps).unwrap_or_default().min(MAX_DELAY);
            let json_name = Value::from(model.name.as_str()).to_string();
            let requests = AtomicU64::new(0);
            Entry { model, gap, json_name, requests }
        };
        Self {
            entries: models.into_iter().map(entry).collect(),
            seed,
            counter: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests being served right now (a stream counts until its body is finished or dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// The highest value `in_flight` has reached.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Relaxed)
    }

    /// Total requests accepted (valid and routed to the model) per model name, for tests.
    pub fn requests_for(&self, model: &str) -> u64 {
        let matching = self.entries.iter().filter(|e| e.model.name == model);
        matching.map(|e| e.requests.load(Relaxed)).sum()
    }

    /// Serves one request. Never panics; every error is an OpenAI-shaped JSON error response.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<SimBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let start = Instant::now();
        // The guard travels into the response body, so a request counts until its body ends or is
        // dropped, and a non-streaming request dropped while it waits stops counting at once.
        let guard = InFlight::enter(self);
        let models = req.uri().path() == "/v1/models";
        let (status, kind) = match guard.0.route(req, start).await {
            Ok(kind) => (StatusCode::OK, kind),
            Err(ApiError(status, body)) => (status, Kind::json(&body)),
        };
        let content_type = match kind {
            Kind::Sse(_) => "text/event-stream",
            Kind::Once(_) => "application/json",
        };
        let guard = Some(guard);
        let mut resp = Response::new(ResponseBody { guard, kind }.boxed());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if content_type == "text/event-stream" {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = if models { "GET" } else { "POST" };
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }

    async fn route<B>(&self, req: Request<B>, start: Instant) -> Result<Kind, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let (path, method) = (parts.uri.path(), &parts.method);
        let allowed = match path {
            "/v1/models" => Method::GET,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => Method::POST,
            _ => return Err(error(404, None, format!("Invalid URL ({method} {path})"))),
        };
        if *method != allowed {
            let message = format!("Method {method} is not allowed for {path}; use {allowed}");
            return Err(error(405, None, message));
        }
        if path == "/v1/models" {
            let model = |e: &Entry| {
                let (id, owner) = (&e.model.name, "tollgate-simulator");
                json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
            };
            let data: Vec<Value> = self.entries.iter().map(model).collect();
            return Ok(Kind::json(&json!({"object": "list", "data": data})));
        }
        let bytes = read_body(body).await?;
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(error(400, None, "The body must be a JSON object")),
            Err(e) => return Err(error(400, None, format!("Invalid JSON body: {e}"))),
        };
        let Some(name) = body.get("model").and_then(Value::as_str) else {
            return Err(bad("model", "You must provide a model parameter"));
        };
        let Some(entry) = self.entries.iter().find(|e| e.model.name == name) else {
            let message = format!("The model `{name}` does not exist");
            let code = Some("model_not_found");
            return Err(ApiError::new(404, Some("model"), code, message));
        };
        let chat = path == "/v1/chat/completions";
        let expected = parts.headers.get(EXPECTED_HEADER).map(|v| percent_decode(v.as_bytes()));
        match path {
            "/v1/embeddings" => self.embeddings(entry, &body, start).await,
            _ => self.generate(entry, chat, &body, expected, start).await,
        }
    }

    /// Counts an accepted request and derives its two generators. The words depend only on the
    /// seed and the request's content (`content_hash`), so the same request gets the same answer
    /// whether it streams or not and whether it came direct or through a proxy; the jitter
    /// depends on the request number, so timings still vary.
    fn accept(&self, entry: &Entry, content_hash: u64) -> (u64, fastrand::Rng, fastrand::Rng) {
        entry.requests.fetch_add(1, Relaxed);
        let counter = self.counter.fetch_add(1, Relaxed).wrapping_add(1);
        let words = self.seed ^ content_hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let jitter = self.seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
        (counter, fastrand::Rng::with_seed(words), fastrand::Rng::with_seed(jitter))
    }

    async fn generate(&self, e: &Entry, chat: bool, body: &Value, expected: Option<String>, start: Instant) -> Routed {
        let param = if chat { "messages" } else { "prompt" };
        let valid = match body.get(param) {
            Some(Value::Array(m)) if chat => !m.is_empty() && m.iter().all(Value::is_object),
            prompt => !chat && string_or_strings(prompt),
        };
        if !valid {
            return Err(bad(param, format!("'{param}' is missing or malformed")));
        }
        // Chat clients send the newer max_completion_tokens, which wins when both are present.
        let newer = chat && field(body, "max_completion_tokens").is_some();
        let key = if newer { "max_completion_tokens" } else { "max_tokens" };
        let max_tokens = match field(body, key).map(Value::as_u64) {
            None => u32::MAX,
            Some(Some(m)) if m >= 1 => u32::try_from(m).unwrap_or(u32::MAX),
            Some(_) => return Err(bad(key, format!("'{key}' must be an integer >= 1"))),
        };
        let stream = flag(body, "stream", "stream")?;
        let include_usage = match field(body, "stream_options") {
            None => false,
            Some(o) if o.is_object() => flag(o, "include_usage", "stream_options")?,
            Some(_) => return Err(bad("stream_options", "'stream_options' must be an object")),
        };
        let model = &e.model;
        let prompt = prompt_tokens(body);
        let content = format!("{}\u{0}{}", e.model.name, body.get(param).map(Value::to_string).unwrap_or_default());
        let (counter, mut words, mut jit) = self.accept(e, fnv1a(&content));
        // The draw happens only for requests that carry an expected answer, so that the timing of
        // every other request stays what it was.
        let answer = expected.filter(|_| jit.f64() < model.accuracy).map(|t| word_tokens(&t)).filter(|a| !a.is_empty());
        // An answer has its own length; filler has the configured one. Both stop at max_tokens.
        let out = answer.as_ref().map_or(model.output_tokens, |a| u32::try_from(a.len()).unwrap_or(u32::MAX));
        let n = max_tokens.min(out);
        let finish = if n < out { "length" } else { "stop" };
        let (id, object, chunk_object) = if chat {
            ("chatcmpl", "chat.completion", "chat.completion.chunk")
        } else {
            ("cmpl", "text_completion", "text_completion")
        };
        let id = format!("{id}-sim-{counter}");
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let created = created.map_or(0, |d| d.as_secs());
        if stream {
            let (name, o) = (&e.json_name, chunk_object);
            let head = format!(r#"data: {{"id":"{id}","object":"{o}","created":{created}"#);
            let prefix = format!(r#"{head},"model":{name},"choices":["#);
            let deadline = start + jitter(model.ttft, model.jitter_ratio, &mut jit);
            return Ok(Kind::Sse(SseStream {
                prefix,
                chat,
                phase: if chat { Phase::Role } else { Phase::Token },
                n,
                sent: 0,
                finish,
                usage: include_usage.then_some(prompt),
                answer,
                words,
                jitter: jit,
                ratio: model.jitter_ratio,
                gap: e.gap,
                deadline,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            }));
        }
        let decode = e.gap.saturating_mul(n - 1);
        let total = model.ttft.saturating_add(decode).min(MAX_DELAY);
        tokio::time::sleep_until(start + jitter(total, model.jitter_ratio, &mut jit)).await;
        // The capacity is bounded because output_tokens comes from configuration, not from a need.
        let mut text = String::with_capacity(n.min(1 << 16) as usize * 6);
        match &answer {
            Some(tokens) => tokens.iter().take(n as usize).for_each(|t| text.push_str(t)),
            None => {
                for i in 0..n {
                    text.push_str(if i == 0 { "" } else { " " });
                    text.push_str(word(&mut words));
                }
            }
        }
        let total = prompt.saturating_add(n);
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": total});
        let mut choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}})
        } else {
            json!({"index": 0, "text": text})
        };
        choice["logprobs"] = Value::Null;
        choice["finish_reason"] = finish.into();
        let name = &model.name;
        let mut reply = json!({"id": id, "object": object, "created": created, "model": name});
        reply["choices"] = json!([choice]);
        reply["usage"] = usage;
        Ok(Kind::json(&reply))
    }

    async fn embeddings(&self, e: &Entry, body: &Value, start: Instant) -> Routed {
        if !string_or_strings(body.get("input")) {
            return Err(bad("input", "'input' must be a string or array of strings"));
        }
        // The official Python SDK asks for base64 unless told otherwise, so both are served.
        let base64 = match field(body, "encoding_format").map(Value::as_str) {
            None | Some(Some("float")) => false,
            Some(Some("base64")) => true,
            Some(_) => return Err(bad("encoding_format", "Use float or base64")),
        };
        let (_, _, mut jit) = self.accept(e, 0);
        let delay = jitter(e.model.ttft / 10, e.model.jitter_ratio, &mut jit);
        tokio::time::sleep_until(start + delay).await;
        let item = |(index, text): (usize, &str)| {
            let vector = embed(text);
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64_encode(&raw))
            } else {
                // Six decimals keep the JSON short; an f32 printed as f64 carries noise digits.
                let round = |x: &f32| Value::from((f64::from(*x) * 1e6).round() / 1e6);
                Value::Array(vector.iter().map(round).collect())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        };
        let data: Vec<Value> = texts(body.get("input")).enumerate().map(item).collect();
        let p = prompt_tokens(body);
        let usage = json!({"prompt_tokens": p, "total_tokens": p});
        let reply = json!({"object": "list", "data": data, "model": e.model.name, "usage": usage});
        Ok(Kind::json(&reply))
    }
}

type Routed = Result<Kind, ApiError>;

/// The prompt token count the simulator reports for a request body: the sum, over all text in
/// `messages[].content` (a string, or parts with "text"), `prompt` and `input` (a string or an
/// array of strings), of ceil(chars / 4), plus 4 per chat message, and at least 1.
pub fn prompt_tokens(body: &Value) -> u32 {
    let add = |total: u32, s: &str| {
        let tokens = u32::try_from(s.chars().count().div_ceil(4)).unwrap_or(u32::MAX);
        total.saturating_add(tokens)
    };
    let message = |t: u32, m: &Value| texts(m.get("content")).fold(t.saturating_add(4), add);
    let chat = array(body.get("messages")).iter().fold(0, message);
    let rest = texts(body.get("prompt")).chain(texts(body.get("input")));
    rest.fold(chat, add).max(1)
}

/// Standalone server: accepts on `listener` until `shutdown` resolves, serving HTTP/1.1 and h2c,
/// then waits for open connections to finish their responses. Accept errors are logged and
/// retried, not returned, so that running out of file descriptors under load does not end it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Arc<Simulator>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::debug!(%addr, "simulator listening");
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Benchmarks multiplex thousands of streams over few HTTP/2 connections; hyper allows 200.
    builder.http2().max_concurrent_streams(100_000);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Nagle's algorithm would hold back small SSE chunks and distort the measured token timing.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "simulator could not set TCP_NODELAY");
        }
        let sim = sim.clone();
        let service = hyper::service::service_fn(move |req| {
            let sim = sim.clone();
            async move { Ok::<_, Infallible>(sim.handle(req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "simulator connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Counts a request as in flight for as long as it lives.
struct InFlight(Arc<Simulator>);

impl InFlight {
    fn enter(sim: Arc<Simulator>) -> Self {
        let now = sim.in_flight.fetch_add(1, Relaxed) + 1;
        sim.max_in_flight.fetch_max(now, Relaxed);
        Self(sim)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

// Event templates, indexed by `chat as usize`: [text completion, chat completion].
const TOKEN_OPEN: [&str; 2] = [r#"{"index":0,"text":""#, r#"{"index":0,"delta":{"content":""#];
const TOKEN_CLOSE: [&str; 2] = [r#"","finish_reason":null}]}"#, r#""},"finish_reason":null}]}"#];
const FINISH_OPEN: [&str; 2] =
    [r#"{"index":0,"text":"","finish_reason":""#, r#"{"index":0,"delta":{},"finish_reason":""#];
const ROLE: &str = r#"{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Role,
    Token,
    Finish,
    Usage,
    Done,
    End,
}

/// The state of one SSE response; each poll yields at most one complete `data: ...\n\n` event.
struct SseStream {
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`, shared by every event.
    prefix: String,
    chat: bool,
    phase: Phase,
    n: u32,
    sent: u32,
    finish: &'static str,
    /// The prompt token count, present only when the client asked for a usage chunk.
    usage: Option<u32>,
    /// The expected answer's tokens, when this reply is a "correct" one; filler words otherwise.
    answer: Option<Vec<String>>,
    words: fastrand::Rng,
    jitter: fastrand::Rng,
    ratio: f64,
    gap: Duration,
    /// When the next token is due. It advances from the previous deadline rather than from "now",
    /// so a late poll does not shift the schedule of the tokens after it.
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl SseStream {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let chat = usize::from(self.chat);
        let event = match self.phase {
            Phase::Role => {
                self.phase = Phase::Token;
                self.event(&[ROLE])
            }
            Phase::Token => {
                ready!(self.sleep.as_mut().poll(cx));
                let (space, word) = match &self.answer {
                    // Answer tokens carry their own whitespace and may need JSON escaping.
                    Some(tokens) => {
                        let token = tokens.get(self.sent as usize).map_or("", String::as_str);
                        let quoted = Value::from(token).to_string();
                        let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or_default();
                        ("", Cow::Owned(inner.to_string()))
                    }
                    None => (if self.sent == 0 { "" } else { " " }, Cow::Borrowed(word(&mut self.words))),
                };
                self.sent += 1;
                if self.sent >= self.n {
                    self.phase = Phase::Finish;
                } else {
                    self.deadline += jitter(self.gap, self.ratio, &mut self.jitter);
                    self.sleep.as_mut().reset(self.deadline);
                }
                self.event(&[TOKEN_OPEN[chat], space, &word, TOKEN_CLOSE[chat]])
            }
            Phase::Finish => {
                let usage = self.usage.is_some();
                self.phase = if usage { Phase::Usage } else { Phase::Done };
                self.event(&[FINISH_OPEN[chat], self.finish, r#""}]}"#])
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                let (p, n) = (self.usage.unwrap_or(1), self.n);
                let t = p.saturating_add(n);
                let counts = format!(r#""prompt_tokens":{p},"completion_tokens":{n},"total_tokens":{t}"#);
                self.event(&[r#"],"usage":{"#, &counts, "}}"])
            }
            Phase::Done => {
                self.phase = Phase::End;
                Bytes::from_static(b"data: [DONE]\n\n")
            }
            Phase::End => return Poll::Ready(None),
        };
        Poll::Ready(Some(event))
    }

    /// Builds one event as prefix + parts + blank line in a single exactly sized allocation.
    fn event(&self, parts: &[&str]) -> Bytes {
        let len = self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>() + 2;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(self.prefix.as_bytes());
        for part in parts {
            buf.extend_from_slice(part.as_bytes());
        }
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }
}

enum Kind {
    Once(Option<Bytes>),
    Sse(SseStream),
}

impl Kind {
    fn json(v: &Value) -> Self {
        Self::Once(Some(Bytes::from(serde_json::to_vec(v).unwrap_or_default())))
    }
}

struct ResponseBody {
    guard: Option<InFlight>,
    kind: Kind,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let next = match &mut this.kind {
            Kind::Once(bytes) => bytes.take(),
            Kind::Sse(stream) => ready!(stream.poll_event(cx)),
        };
        // The request stops counting as soon as its last frame is handed out, not when hyper
        // gets round to dropping the body.
        if this.is_end_stream() {
            this.guard = None;
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Once(bytes) => bytes.is_none(),
            Kind::Sse(stream) => stream.phase == Phase::End,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Once(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Sse(_) => SizeHint::default(),
        }
    }
}

mod request;
mod text;

use request::{ApiError, array, bad, error, field, flag, read_body, string_or_strings, texts};
use text::{base64_encode, embed, fnv1a, jitter, percent_decode, word, word_tokens};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
