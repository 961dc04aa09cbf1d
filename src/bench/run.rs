//! Load generation and client-side measurement: N workers share a ticket counter and take the
//! prompts round-robin until `--requests` tickets are used or `--duration` has passed; every
//! request streams (`stream_options.include_usage`) and is timed on a monotonic clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::prompts::PromptSet;
use super::stats::Sample;
use crate::openai;
use crate::pricing::Usage;
use crate::simulate::EXPECTED_HEADER;
use crate::sse::SseParser;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where one model's requests go.
#[derive(Clone)]
pub struct Target {
    /// The model's name in the config (and in the report).
    pub model: String,
    /// The `model` field of the requests (the backend's name for it in direct mode).
    pub wire_model: String,
    /// The full chat completions URL.
    pub url: Uri,
    pub authorization: Option<HeaderValue>,
    pub client: HttpClient,
    /// The model is one of the built-in simulator's: scored prompts carry their example answer
    /// in the simulation header.
    pub simulated: bool,
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// This many requests in total, shared by the workers.
    Requests(u64),
    /// No request starts after this long; the ones in flight finish.
    For(Duration),
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub concurrency: usize,
    pub stop: Stop,
    pub request_timeout: Duration,
}

/// Live counts of a run, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutput {
    pub samples: Vec<Sample>,
    /// First request sent → last response finished.
    pub wall: Duration,
    /// The most requests this client had in flight at once.
    pub peak_in_flight: usize,
}

/// A prompt as sent to one target.
struct Prepared {
    body: Bytes,
    estimated_input: u64,
    sim_expected: Option<HeaderValue>,
}

struct Shared {
    target: Target,
    prompts: PromptSet,
    prepared: Vec<Prepared>,
    plan: Plan,
    tickets: AtomicU64,
    counters: Arc<Counters>,
}

/// Runs one model at one concurrency level.
pub async fn run(target: &Target, prompts: &PromptSet, plan: Plan, counters: Arc<Counters>) -> RunOutput {
    let prepared =
        prompts.prompts.iter().map(|p| prepare(target, &p.messages, p.max_tokens, p.expect.as_ref())).collect();
    let shared = Arc::new(Shared {
        target: target.clone(),
        prompts: prompts.clone(),
        prepared,
        plan,
        tickets: AtomicU64::new(0),
        counters,
    });
    let start = Instant::now();
    let deadline = match plan.stop {
        Stop::For(d) => Some(start + d),
        Stop::Requests(_) => None,
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency.max(1) {
        let shared = shared.clone();
        workers.spawn(async move { worker(&shared, deadline).await });
    }
    let mut samples = Vec::new();
    while let Some(done) = workers.join_next().await {
        // A worker cannot panic short of a bug; its samples are lost then, not the whole run.
        if let Ok(mut s) = done {
            samples.append(&mut s);
        }
    }
    let wall = start.elapsed();
    RunOutput { samples, wall, peak_in_flight: shared.counters.peak_in_flight.load(Relaxed) }
}

async fn worker(shared: &Shared, deadline: Option<Instant>) -> Vec<Sample> {
    let mut out = Vec::new();
    let n = shared.prompts.prompts.len().max(1) as u64;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let ticket = shared.tickets.fetch_add(1, Relaxed);
        if let Stop::Requests(total) = shared.plan.stop
            && ticket >= total
        {
            break;
        }
        let index = (ticket % n) as usize;
        let c = &shared.counters;
        let now = c.in_flight.fetch_add(1, Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Relaxed);
        let sample = one(shared, index).await;
        c.in_flight.fetch_sub(1, Relaxed);
        c.done.fetch_add(1, Relaxed);
        if sample.error.is_some() {
            c.failed.fetch_add(1, Relaxed);
        }
        out.push(sample);
    }
    out
}

fn prepare(
    target: &Target,
    messages: &[Value],
    max_tokens: Option<u32>,
    expect: Option<&super::score::Expect>,
) -> Prepared {
    let mut body = json!({
        "model": target.wire_model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let (Some(m), Some(obj)) = (max_tokens, body.as_object_mut()) {
        obj.insert("max_tokens".into(), m.into());
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let estimated_input = openai::parse_request(&bytes).map_or(1, |v| openai::estimate_prompt_tokens(&v));
    let sim_expected = expect
        .and_then(|e| e.example())
        .filter(|_| target.simulated)
        .and_then(|text| HeaderValue::from_str(&percent_encode(text)).ok());
    Prepared { body: bytes, estimated_input, sim_expected }
}

/// Percent-encodes every byte but ASCII letters, digits and `-._~`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends one request and measures it.
async fn one(shared: &Shared, index: usize) -> Sample {
    let (target, prepared) = (&shared.target, &shared.prepared[index]);
    let mut req =
        Request::post(target.url.clone()).header(CONTENT_TYPE, "application/json").header(ACCEPT, "text/event-stream");
    if let Some(auth) = &target.authorization {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    if let Some(expected) = &prepared.sim_expected {
        req = req.header(EXPECTED_HEADER, expected.clone());
    }
    let mut sample = Sample { prompt: index, ..Sample::default() };
    let req = match req.body(Full::new(prepared.body.clone())) {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(format!("cannot build the request: {e}"));
            return sample;
        }
    };
    let t0 = Instant::now();
    let timeout = shared.plan.request_timeout;
    let mut m = Measure::default();
    match tokio::time::timeout(timeout, exchange(&target.client, req, t0, &mut m)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => m.error = Some(e),
        Err(_) => m.error = Some(format!("no complete answer within {}s", timeout.as_secs_f64())),
    }
    sample.e2e = t0.elapsed();
    sample.ttft = m.first;
    sample.decode = m.first.zip(m.last).map(|(f, l)| l.saturating_sub(f));
    sample.token_events = m.token_events;
    sample.non_streamed = m.non_streamed;
    if m.error.is_none() && !m.complete {
        m.error = Some("the stream ended before [DONE] or a finish_reason".into());
    }
    (sample.usage, sample.usage_reported) = match (m.usage, m.answered) {
        (Some(u), _) => (u, true),
        // Estimated like the proxy does: the prompt from its text, the output from token events.
        (None, true) => (Usage { input: prepared.estimated_input, output: m.token_events, ..Usage::default() }, false),
        (None, false) => (Usage::default(), false),
    };
    sample.passed = shared.prompts.prompts[index].expect.as_ref().map(|e| m.error.is_none() && e.passes(&m.text));
    sample.answer = m.text;
    sample.error = m.error;
    sample
}

/// What reading one response found.
#[derive(Default)]
struct Measure {
    /// Time since the request was sent.
    first: Option<Duration>,
    last: Option<Duration>,
    token_events: u64,
    usage: Option<Usage>,
    text: String,
    /// `[DONE]`, a terminal event or a finish_reason was seen.
    complete: bool,
    /// A 2xx response started (so tokens were probably billed).
    answered: bool,
    non_streamed: bool,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Content>,
    #[serde(default)]
    message: Option<Content>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    content: Option<String>,
}

impl Measure {
    /// Takes the first choice's text and finish reason from a chunk or a whole body.
    fn read_choices(&mut self, data: &[u8]) {
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else { return };
        for c in chunk.choices.unwrap_or_default().into_iter().filter(|c| c.index == 0) {
            let content = c.delta.or(c.message).and_then(|d| d.content).or(c.text);
            self.text.push_str(content.as_deref().unwrap_or_default());
            self.complete |= c.finish_reason.is_some();
        }
    }
}

async fn exchange(client: &HttpClient, req: Request<Full<Bytes>>, t0: Instant, m: &mut Measure) -> Result<(), String> {
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return Err(error_chain(&e)),
    };
    let status = resp.status();
    let sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if !status.is_success() || !sse {
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Err(format!("HTTP {}: body unreadable: {e}", status.as_u16())),
        };
        if !status.is_success() {
            return Err(format!("HTTP {}: {}", status.as_u16(), error_message(&bytes)));
        }
        // Not a stream after all: one JSON body. No TTFT can be measured.
        m.answered = true;
        m.non_streamed = true;
        let info = openai::parse_body(&bytes);
        m.usage = info.as_ref().and_then(|i| i.usage);
        if info.as_ref().is_none_or(|i| i.error) {
            return Err(format!("bad body: {}", error_message(&bytes)));
        }
        m.read_choices(&bytes);
        m.token_events = u64::from(!m.text.is_empty());
        // A whole body is a whole answer, with or without a finish_reason.
        m.complete = true;
        return Ok(());
    }
    m.answered = true;
    let mut parser = SseParser::new(1 << 20);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => return Err(format!("stream broken: {}", error_chain(&e))),
        };
        let now = t0.elapsed();
        parser.feed(&data, &mut |event, _| {
            let Some(event) = event else { return };
            let info = openai::classify_event(event.event, event.data);
            if info.token_choices > 0 {
                m.first.get_or_insert(now);
                m.last = Some(now);
                m.token_events += 1;
            }
            if info.usage.is_some() {
                m.usage = info.usage;
            }
            if info.error {
                m.error.get_or_insert_with(|| format!("error event: {}", error_message(event.data)));
            }
            m.complete |= info.done;
            m.read_choices(event.data);
        });
    }
    Ok(())
}

/// The `error.message` of an OpenAI-shaped error body, else the start of the body.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        e.get("message").and_then(Value::as_str).or(e.as_str()).map(str::to_string)
    });
    let text = message.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let mut short: String = text.chars().take(160).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    if short.is_empty() { "(empty body)".into() } else { short }
}

/// An error and its sources: "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips_through_the_simulator_rules() {
        assert_eq!(percent_encode("Ada 36"), "Ada%2036");
        assert_eq!(percent_encode("{\"a\": \"é\"}"), "%7B%22a%22%3A%20%22%C3%A9%22%7D");
        assert!(HeaderValue::from_str(&percent_encode("line\nbreak\u{0}")).is_ok());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"error": {"message": "The model `x` does not exist"}}"#),
            "The model `x` does not exist"
        );
        assert_eq!(error_message(br#"{"error": "overloaded"}"#), "overloaded");
        assert_eq!(error_message(b"  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(error_message("x".repeat(300).as_bytes()).chars().count(), 161);
    }

    #[test]
    fn choices_text_and_finish() {
        let mut m = Measure::default();
        m.read_choices(br#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#);
        m.read_choices(br#"{"choices":[{"index":0,"delta":{"content":"Par"}},{"index":1,"delta":{"content":"x"}}]}"#);
        m.read_choices(br#"{"choices":[{"index":0,"text":"is"}]}"#);
        assert!(!m.complete);
        m.read_choices(br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#);
        m.read_choices(br#"{"choices":null,"usage":{"prompt_tokens":1}}"#);
        assert_eq!(m.text, "Paris");
        assert!(m.complete);
    }
}
