//! The few OpenAI wire shapes tollgate reads: the request fields it routes on, the token-bearing
//! parts and usage of stream events and response bodies, and the OpenAI-shaped error body.
//! Everything else in a body is skipped, never interpreted.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::pricing::Usage;

/// The API a request is for; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] =
        [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Responses, Endpoint::Embeddings, Endpoint::Other];

    pub fn from_path(path: &str) -> Endpoint {
        match path {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/responses" => Endpoint::Responses,
            "/v1/embeddings" => Endpoint::Embeddings,
            _ => Endpoint::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether `stream_options.include_usage` exists for this API.
    pub fn accepts_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

// ---------------------------------------------------------------- requests ----------------

/// What the proxy needs from a request body. `prompt_chars` is the text a prompt estimate is
/// based on: message contents, `prompt`, `input` and `instructions`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub include_usage: bool,
    pub messages: u64,
    pub prompt_chars: u64,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, whichever the request set.
    pub max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<RawStreamOptions>,
    #[serde(default)]
    messages: Option<Messages>,
    #[serde(default)]
    prompt: Option<TextChars>,
    #[serde(default)]
    input: Option<TextChars>,
    #[serde(default)]
    instructions: Option<TextChars>,
    #[serde(default, deserialize_with = "lenient_count")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A token count as clients write it: an integer, or anything else (then ignored, not refused:
/// validating it is the backend's business).
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    })
}

/// Parses a request body. `Err` carries a message for a 400 response.
pub fn parse_request(body: &[u8]) -> Result<RequestView<'_>, String> {
    // A derived struct would also read a JSON array by position: only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("request body must be a JSON object".into());
    }
    let raw: RawRequest<'_> =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let (messages, message_chars) = raw.messages.map(|m| (m.count, m.chars)).unwrap_or((0, 0));
    let chars = [raw.prompt, raw.input, raw.instructions].iter().flatten().map(|t| t.0).sum::<u64>();
    Ok(RequestView {
        model: raw.model,
        stream: raw.stream.unwrap_or(false),
        include_usage: raw.stream_options.and_then(|s| s.include_usage).unwrap_or(false),
        messages,
        prompt_chars: message_chars + chars,
        max_output_tokens: raw.max_completion_tokens.or(raw.max_tokens).or(raw.max_output_tokens),
    })
}

/// Estimated prompt tokens: about four characters a token, plus a few tokens of chat template per
/// message. A heuristic, always labelled `usage_source="estimated"`.
pub fn estimate_prompt_tokens(view: &RequestView<'_>) -> u64 {
    (view.prompt_chars.div_ceil(4) + 4 * view.messages).max(1)
}

/// Estimated output tokens of a non-streamed answer from its text length.
pub fn estimate_text_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// The chars of all text in a JSON value: strings, arrays of them, and objects' `text`/`content`
/// members (so image URLs and tool schemas are not counted as prompt text).
#[derive(Default)]
struct TextChars(u64);

impl<'de> Deserialize<'de> for TextChars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextCharsVisitor)
    }
}

struct TextCharsVisitor;

impl<'de> Visitor<'de> for TextCharsVisitor {
    type Value = TextChars;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TextChars, E> {
        Ok(TextChars(v.chars().count() as u64))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextChars, A::Error> {
        let mut n = 0;
        while let Some(t) = seq.next_element::<TextChars>()? {
            n += t.0;
        }
        Ok(TextChars(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextChars, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if matches!(key.as_ref(), "text" | "content") {
                n += map.next_value::<TextChars>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(TextChars(n))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextChars, E> {
        Ok(TextChars(0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextChars, E> {
        Ok(TextChars(0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextChars, E> {
        Ok(TextChars(0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextChars, E> {
        Ok(TextChars(0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<TextChars, E> {
        Ok(TextChars(0))
    }
}

/// `messages`: how many there are and the chars of their text.
struct Messages {
    count: u64,
    chars: u64,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut m = Messages { count: 0, chars: 0 };
                while let Some(t) = seq.next_element::<TextChars>()? {
                    m.count += 1;
                    m.chars += t.0;
                }
                Ok(m)
            }
            // A wrong type is the backend's to reject; the meter only counts what it can.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Messages, E> {
                Ok(Messages { count: 1, chars: v.chars().count() as u64 })
            }
        }
        d.deserialize_any(V)
    }
}

/// Rewrites a request body for the backend: renames the model and/or forces
/// `stream_options.include_usage`, merging with whatever stream options the client sent.
pub fn rewrite_request(body: &[u8], upstream_model: Option<&str>, force_usage: bool) -> Result<Bytes, String> {
    if upstream_model.is_none()
        && force_usage
        && let Some(spliced) = splice_include_usage(body)
    {
        return Ok(spliced);
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Some(obj) = value.as_object_mut() else {
        return Err("request body must be a JSON object".into());
    };
    if let Some(m) = upstream_model {
        obj.insert("model".into(), serde_json::Value::String(m.to_string()));
    }
    if force_usage {
        let opts = obj.entry("stream_options").or_insert_with(|| serde_json::json!({}));
        if !opts.is_object() {
            *opts = serde_json::json!({});
        }
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
    }
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| e.to_string())
}

/// The common case of usage injection without parsing the body: when `stream_options` appears
/// nowhere in it, `"stream_options":{"include_usage":true},` goes right after the opening brace and
/// every other byte stays as the client sent it. `None` sends the caller to the full rewrite.
fn splice_include_usage(body: &[u8]) -> Option<Bytes> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if memchr::memmem::find(body, b"stream_options").is_some() {
        return None;
    }
    let open = body.iter().position(|b| !b.is_ascii_whitespace()).filter(|i| body[*i] == b'{')?;
    // An empty object would leave a trailing comma (and has no model: it never gets here anyway).
    let next = body[open + 1..].iter().find(|b| !b.is_ascii_whitespace())?;
    if *next == b'}' {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + FIELD.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(FIELD);
    out.extend_from_slice(&body[open + 1..]);
    Some(Bytes::from(out))
}

// ---------------------------------------------------------------- usage --------------------

/// Usage as any OpenAI API spells it (chat/completions/embeddings and Responses names).
#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn normalize(self) -> Usage {
        let cached = |d: &Option<Details>| d.as_ref().and_then(|d| d.cached_tokens);
        let reasoning = |d: &Option<Details>| d.as_ref().and_then(|d| d.reasoning_tokens);
        Usage {
            input: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            output: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_input: cached(&self.prompt_tokens_details).or(cached(&self.input_tokens_details)).unwrap_or(0),
            reasoning: reasoning(&self.completion_tokens_details)
                .or(reasoning(&self.output_tokens_details))
                .unwrap_or(0),
        }
    }
}

// ---------------------------------------------------------------- stream events -------------

/// What one SSE event means to the meter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventInfo {
    /// Number of choices in this event that carry generated output (content, reasoning, refusal,
    /// tool calls, Responses deltas). A role-only chunk carries none.
    pub token_choices: u32,
    /// Usage reported by this event, if any.
    pub usage: Option<Usage>,
    /// The event is a usage-only chunk (usage set, no choices): the one tollgate removes when it
    /// forced usage on a client that did not ask for it.
    pub usage_only: bool,
    /// An error reported in-band after the 200 (`data: {"error":..}`, `event: error`, `response.failed`).
    pub error: bool,
    /// A terminal event: `[DONE]` or a Responses `response.completed|incomplete|failed`.
    pub done: bool,
    /// The event's data was not JSON the meter could read.
    pub unparsed: bool,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    response: Option<WireResponse>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
}

fn non_empty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_ref().is_some_and(|s| !s.is_empty())
}

impl WireChoice<'_> {
    fn bears_tokens(&self) -> bool {
        non_empty(&self.text)
            || self.delta.as_ref().is_some_and(|d| {
                non_empty(&d.content)
                    || non_empty(&d.reasoning_content)
                    || non_empty(&d.reasoning)
                    || non_empty(&d.refusal)
                    || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
            })
    }
}

/// Responses API event types that carry generated output.
fn responses_delta(kind: &str) -> bool {
    matches!(
        kind,
        "response.output_text.delta"
            | "response.reasoning_text.delta"
            | "response.reasoning_summary_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.audio.transcript.delta"
    )
}

/// Interprets one SSE event (`event` field and `data`) of any OpenAI streaming API.
pub fn classify_event(event: &str, data: &[u8]) -> EventInfo {
    if data.starts_with(b"[DONE]") {
        return EventInfo { done: true, ..EventInfo::default() };
    }
    let Ok(wire) = serde_json::from_slice::<WireEvent<'_>>(data) else {
        return EventInfo { unparsed: true, error: event == "error", ..EventInfo::default() };
    };
    let kind = wire.kind.as_deref().unwrap_or(event);
    let mut info =
        EventInfo { error: wire.error.is_some() || event == "error" || kind == "error", ..EventInfo::default() };
    if let Some(choices) = &wire.choices {
        info.token_choices = choices.iter().filter(|c| c.bears_tokens()).count() as u32;
    }
    if responses_delta(kind) && non_empty(&wire.delta) {
        info.token_choices = 1;
    }
    let terminal = matches!(kind, "response.completed" | "response.incomplete" | "response.failed");
    if terminal {
        info.done = true;
        info.error |= kind == "response.failed";
        info.usage = wire.response.and_then(|r| r.usage).map(WireUsage::normalize);
    } else if let Some(u) = wire.usage {
        info.usage = Some(u.normalize());
        info.usage_only = wire.choices.as_ref().is_none_or(|c| c.is_empty());
    }
    info
}

// ---------------------------------------------------------------- whole bodies -------------

/// What the meter reads from a non-streamed JSON response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyInfo {
    pub usage: Option<Usage>,
    /// Chars of generated text, for an estimate when there is no usage.
    pub output_chars: u64,
    pub error: bool,
}

#[derive(Deserialize)]
struct WireBody {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    choices: Option<Vec<WireBodyChoice>>,
    #[serde(default)]
    output: Option<TextChars>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireBodyChoice {
    #[serde(default)]
    message: Option<TextChars>,
    #[serde(default)]
    text: Option<TextChars>,
}

/// Parses a whole JSON response body; `None` when it is not JSON.
pub fn parse_body(body: &[u8]) -> Option<BodyInfo> {
    let wire: WireBody = serde_json::from_slice(body).ok()?;
    let choice_chars = wire
        .choices
        .iter()
        .flatten()
        .map(|c| c.message.as_ref().map_or(0, |t| t.0) + c.text.as_ref().map_or(0, |t| t.0))
        .sum::<u64>();
    Some(BodyInfo {
        usage: wire.usage.map(WireUsage::normalize),
        output_chars: choice_chars + wire.output.map_or(0, |t| t.0),
        error: wire.error.is_some(),
    })
}

// ---------------------------------------------------------------- errors -------------------

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// `{"error":{"message","type","param","code"}}`, the shape every OpenAI SDK parses.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let body = ErrorEnvelope { error: ErrorObject { message, kind, param, code } };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests;
