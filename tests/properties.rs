//! Property tests over the public API: the metered body forwards upstream bytes exactly (minus only
//! the usage-only events when it strips them) at any split, costs are never negative and grow with
//! tokens, and every request is recorded exactly once however its body ends.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;
use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate::meter::body::{Cutoff, MeteredBody, Mode, Sink};
use tollgate::meter::{Meter, Outcome, Record, UsageSource};
use tollgate::metrics::UpstreamErrorKind;
use tollgate::openai::Endpoint;
use tollgate::pricing::{Price, Usage, to_nano_usd};
use tollgate::sse::SseParser;

// ---------------------------------------------------------------- harness ------------------

/// An upstream body the test feeds chunk by chunk, fails, or stalls by sending nothing.
struct Scripted(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

#[derive(Default)]
struct TestSink {
    records: Mutex<Vec<Record>>,
    /// The drain deadline's signal, as the proxy's route hands it to every body.
    cutoff: Arc<Cutoff>,
}

impl Sink for TestSink {
    fn inter_token(&self, _: Duration) {}
    fn upstream_error(&self, _: UpstreamErrorKind) {}
    fn finish(&self, record: Record) {
        self.records.lock().unwrap().push(record);
    }
    fn shutting_down(&self) -> bool {
        false
    }
    fn cutoff(&self) -> Option<&Arc<Cutoff>> {
        Some(&self.cutoff)
    }
}

type Tx = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

fn metered(mode: Mode, idle: Duration) -> (Tx, MeteredBody<Scripted>, Arc<TestSink>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(TestSink::default());
    let mut meter = Meter::new(Endpoint::ChatCompletions, true, Instant::now(), 10);
    meter.on_headers(200, Instant::now());
    let body = MeteredBody::new(Scripted(rx), mode, meter, Outcome::Success, sink.clone(), idle);
    (tx, body, sink)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

/// Sends `chunks`, ends the upstream body, and returns what the client reads and the one record.
fn forward(mode: Mode, chunks: &[&[u8]]) -> (Vec<u8>, Record) {
    runtime().block_on(async {
        let (tx, body, sink) = metered(mode, Duration::from_secs(60));
        for c in chunks {
            tx.send(Ok(Bytes::copy_from_slice(c))).unwrap();
        }
        drop(tx);
        let out = body.collect().await.unwrap().to_bytes().to_vec();
        let mut records = sink.records.lock().unwrap();
        assert_eq!(records.len(), 1, "one record");
        (out, records.pop().unwrap())
    })
}

/// Cuts `stream` at the given positions (sorted, possibly repeated: empty reads happen too).
fn split<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> (Vec<&'a [u8]>, Vec<usize>) {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    at.sort_unstable();
    let starts = std::iter::once(0).chain(at.iter().copied());
    let ends = at.iter().copied().chain(std::iter::once(stream.len()));
    (starts.zip(ends).map(|(a, b)| &stream[a..b]).collect(), at)
}

/// Whether a read ends between the CR and the LF of a CRLF.
fn splits_a_crlf(stream: &[u8], at: &[usize]) -> bool {
    at.iter().any(|&c| c > 0 && stream[c - 1] == b'\r' && stream.get(c) == Some(&b'\n'))
}

/// The events a spec-following client reads from `stream`.
fn client_events(stream: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut parser = SseParser::new(1 << 24);
    let mut out = Vec::new();
    parser.feed(stream, &mut |event, _| out.extend(event.map(|e| (e.event.to_owned(), e.data.to_vec()))));
    out
}

// ---------------------------------------------------------------- random streams -----------

/// A known deviation (reported; `split_crlf_next_to_a_stripped_usage_chunk` below pins it): when a
/// read ends between the CR and the LF of a CRLF next to a stripped usage-only event, that LF is
/// forwarded or dropped with the wrong event. The output still parses into the same events. While
/// this is true, such splits are checked event by event instead of byte by byte.
const TOLERATE_SPLIT_CRLF: bool = false;

#[derive(Debug, Clone, Copy)]
enum Choices {
    Absent,
    Null,
    Empty,
}

/// One event block of an upstream stream.
#[derive(Debug, Clone)]
enum Event {
    /// A chat chunk with content (`\u` escaped throughout when the flag is set).
    Content(String, bool),
    Role,
    Comment(String),
    /// The usage-only chunk (`choices` absent, null or empty), its data optionally on two lines.
    UsageOnly {
        choices: Choices,
        prompt: u64,
        completion: u64,
        cached: Option<u64>,
        two_lines: bool,
    },
    /// Usage on a chunk that also carries a choice: not usage-only.
    UsageWithChoice(u64),
    /// `"usage": null` with empty choices: not usage-only.
    NullUsage,
    /// An Anthropic-style `message_delta` (usage, no choices): usage-only by the same rule.
    MessageDelta(u64),
    /// A Responses terminal event: usage lives on `response.usage`, so it is not usage-only.
    ResponseCompleted(u64),
    /// Data that is not JSON: a cut-off chunk or arbitrary bytes.
    Junk(Vec<u8>),
    Error,
    Done,
}

static TERMINATORS: [&[u8]; 3] = [b"\n", b"\r", b"\r\n"];

/// A JSON string literal; with `escape_all`, every character as `\uXXXX` (surrogate pairs included).
fn json_string(s: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(s).unwrap();
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

impl Event {
    /// The event's field lines, without terminators. Every line is non-empty and starts with a
    /// field name or a colon, so the blocks cannot run into each other whatever the terminators.
    fn lines(&self) -> Vec<Vec<u8>> {
        let data = |json: String| vec![format!("data: {json}").into_bytes()];
        match self {
            Event::Content(text, escape) => data(format!(
                r#"{{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]}}"#,
                json_string(text, *escape)
            )),
            Event::Role => data(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#.into()),
            Event::Comment(text) => vec![format!(":{text}").into_bytes()],
            Event::UsageOnly { choices, prompt, completion, cached, two_lines } => {
                let choices = match choices {
                    Choices::Absent => "",
                    Choices::Null => r#""choices":null,"#,
                    Choices::Empty => r#""choices":[],"#,
                };
                let details = cached.map(|c| format!(r#","prompt_tokens_details":{{"cached_tokens":{c}}}"#));
                let head = format!(r#"{{"id":"c",{choices}"#);
                let usage = format!(
                    r#""usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}{}}}}}"#,
                    details.unwrap_or_default()
                );
                if *two_lines {
                    vec![format!("data: {head}").into_bytes(), format!("data:{usage}").into_bytes()]
                } else {
                    data(format!("{head}{usage}"))
                }
            }
            Event::UsageWithChoice(n) => data(format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"x"}}}}],"usage":{{"prompt_tokens":{n},"completion_tokens":1}}}}"#
            )),
            Event::NullUsage => data(r#"{"choices":[],"usage":null}"#.into()),
            Event::MessageDelta(n) => {
                let mut lines = vec![b"event: message_delta".to_vec()];
                lines.extend(data(format!(r#"{{"type":"message_delta","usage":{{"output_tokens":{n}}}}}"#)));
                lines
            }
            Event::ResponseCompleted(n) => {
                let mut lines = vec![b"event: response.completed".to_vec()];
                lines.extend(data(format!(
                    r#"{{"type":"response.completed","response":{{"usage":{{"input_tokens":{n},"output_tokens":2}}}}}}"#
                )));
                lines
            }
            Event::Junk(bytes) => vec![[&b"data: "[..], bytes].concat()],
            Event::Error => data(r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into()),
            Event::Done => data("[DONE]".into()),
        }
    }

    /// Whether the event is a usage-only one: JSON with a non-null `usage` object and no choices.
    fn usage_only(&self) -> bool {
        matches!(self, Event::UsageOnly { .. } | Event::MessageDelta(_))
    }

    /// Whether the event reports usage at all.
    fn reports_usage(&self) -> bool {
        matches!(
            self,
            Event::UsageOnly { .. } | Event::UsageWithChoice(_) | Event::MessageDelta(_) | Event::ResponseCompleted(_)
        )
    }

    /// The whole block: every line ended by `end`, then a blank line.
    fn block(&self, end: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in self.lines() {
            out.extend_from_slice(&line);
            out.extend_from_slice(end);
        }
        out.extend_from_slice(end);
        out
    }
}

fn text() -> impl Strategy<Value = String> {
    // Printable ASCII, quotes, backslashes, control characters, 2/3/4-byte UTF-8, and anything.
    let piece = prop_oneof![
        "[ -~]{0,8}",
        Just("\"\\\n\r\t\u{0}".to_string()),
        Just("é€😀\u{2028}".to_string()),
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|v| v.concat())
}

fn junk() -> impl Strategy<Value = Vec<u8>> {
    let no_breaks =
        proptest::collection::vec(any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'), 0..40);
    prop_oneof![
        // Arbitrary bytes after a character that cannot start JSON.
        no_breaks.prop_map(|b| [&b"~"[..], &b].concat()),
        // A chunk cut short: a JSON object is incomplete before its last byte.
        (text(), any::<prop::sample::Index>()).prop_map(|(t, i)| {
            let full = Event::Content(t, false).lines().remove(0);
            let json = &full[b"data: ".len()..];
            json[..i.index(json.len())].to_vec()
        }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let choices = prop_oneof![Just(Choices::Absent), Just(Choices::Null), Just(Choices::Empty)];
    let tokens = 0u64..1_000_000;
    prop_oneof![
        6 => (text(), any::<bool>()).prop_map(|(t, e)| Event::Content(t, e)),
        1 => Just(Event::Role),
        1 => "[ -~]{0,12}".prop_map(Event::Comment),
        2 => (choices, tokens.clone(), tokens.clone(), proptest::option::of(tokens.clone()), any::<bool>()).prop_map(
            |(choices, prompt, completion, cached, two_lines)| Event::UsageOnly { choices, prompt, completion, cached, two_lines }
        ),
        1 => tokens.clone().prop_map(Event::UsageWithChoice),
        1 => Just(Event::NullUsage),
        1 => tokens.clone().prop_map(Event::MessageDelta),
        1 => tokens.prop_map(Event::ResponseCompleted),
        1 => junk().prop_map(Event::Junk),
        1 => Just(Event::Error),
        1 => Just(Event::Done),
    ]
}

/// A stream: events, each with its own line terminator, and maybe an unterminated tail.
fn stream() -> impl Strategy<Value = (Vec<(Event, &'static [u8])>, Vec<u8>)> {
    let block = (event(), prop::sample::select(&TERMINATORS[..]));
    let tail = prop_oneof![3 => Just(Vec::new()), 1 => "data: \\{\"cho[a-z]{0,5}".prop_map(String::into_bytes)];
    (proptest::collection::vec(block, 0..24), tail)
}

fn render(events: &[(Event, &[u8])], tail: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = events.iter().flat_map(|(e, end)| e.block(end)).collect();
    out.extend_from_slice(tail);
    out
}

fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    proptest::collection::vec(any::<prop::sample::Index>(), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Without stripping, the client receives the upstream bytes exactly, whatever the reads and
    /// whether or not a line overflows the parser's cap (metering stops, forwarding goes on).
    #[test]
    fn forwarded_bytes_equal_upstream_bytes(
        (events, tail) in stream(),
        cuts in cuts(),
        max in prop_oneof![Just(1usize << 20), 16usize..400],
    ) {
        let upstream = render(&events, &tail);
        let (chunks, _) = split(&upstream, &cuts);
        let (out, record) = forward(Mode::sse(max, false), &chunks);
        prop_assert!(out == upstream, "max {max}\n got: {:?}\nwant: {:?}", Bytes::from(out), Bytes::from(upstream));
        let reported = events.iter().any(|(e, _)| e.reports_usage());
        if max == 1 << 20 {
            prop_assert_eq!(record.usage.map(|u| u.1), Some(if reported { UsageSource::Reported } else { UsageSource::Estimated }));
        }
    }

    /// When stripping the forced usage chunk, the client receives the upstream bytes minus exactly
    /// the usage-only events, whatever the reads; the usage is still metered.
    #[test]
    fn stripping_removes_exactly_the_usage_only_events(
        (events, tail) in stream(),
        cuts in cuts(),
    ) {
        let upstream = render(&events, &tail);
        let kept: Vec<(Event, &[u8])> = events.iter().filter(|(e, _)| !e.usage_only()).cloned().collect();
        let want = render(&kept, &tail);
        let (chunks, at) = split(&upstream, &cuts);
        let (out, record) = forward(Mode::sse(1 << 20, true), &chunks);
        if TOLERATE_SPLIT_CRLF && splits_a_crlf(&upstream, &at) {
            prop_assert_eq!(client_events(&out), client_events(&want));
        } else {
            prop_assert!(out == want, "cuts {at:?}\n got: {:?}\nwant: {:?}", Bytes::from(out), Bytes::from(want));
        }
        let reported = events.iter().any(|(e, _)| e.reports_usage());
        prop_assert_eq!(record.usage.map(|u| u.1), Some(if reported { UsageSource::Reported } else { UsageSource::Estimated }));
    }

    /// Stripping with a cap small enough to overflow: nothing but whole usage-only events is ever
    /// left out, and nothing is duplicated or reordered.
    #[test]
    fn stripping_with_overflow_only_leaves_out_usage_only_events(
        (events, tail) in stream(),
        cuts in cuts(),
        max in 16usize..400,
    ) {
        let upstream = render(&events, &tail);
        let (mut chunks, mut at) = split(&upstream, &cuts);
        if TOLERATE_SPLIT_CRLF && splits_a_crlf(&upstream, &at) {
            // Keep the known split-CRLF deviation out of this byte-level check.
            at.iter_mut().for_each(|c| *c += usize::from(*c > 0 && upstream[*c - 1] == b'\r' && upstream.get(*c) == Some(&b'\n')));
            let starts = std::iter::once(0).chain(at.iter().copied());
            let ends = at.iter().copied().chain(std::iter::once(upstream.len()));
            chunks = starts.zip(ends).map(|(a, b)| &upstream[a..b]).collect();
        }
        let (out, _) = forward(Mode::sse(max, true), &chunks);
        // Walk the blocks: each one is either next in the output, or usage-only and left out.
        let mut rest = &out[..];
        for (event, end) in &events {
            let block = event.block(end);
            if let Some(after) = rest.strip_prefix(&block[..]) {
                rest = after;
            } else {
                prop_assert!(event.usage_only(), "a {event:?} block is missing; max {max}, cuts {at:?}\n got: {:?}", Bytes::from(out.clone()));
            }
        }
        prop_assert!(rest == &tail[..], "max {max}, cuts {at:?}: the output does not end with the tail");
    }
}

/// The known deviation, pinned: a read that ends between the CR and the LF of a usage-only
/// event's last CRLF. The client should get `[DONE]` alone; it gets a stray LF before it (and, in
/// the mirror case, a kept event loses the LF of its last CRLF). Both outputs still parse into the
/// same events. Found by the `metered_body` fuzz target (fuzz/regressions/metered_body/).
#[test]
fn split_crlf_next_to_a_stripped_usage_chunk() {
    let usage = &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\n"[..];
    let content = &b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"[..];
    let done = &b"data: [DONE]\r\n\r\n"[..];
    // The LF after a stripped event must go with it.
    let (out, _) =
        forward(Mode::sse(1 << 20, true), &[&usage[..usage.len() - 1], &[&usage[usage.len() - 1..], done].concat()]);
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(done));
    // The LF of a kept event must stay with it when the next event is stripped.
    let (out, _) = forward(
        Mode::sse(1 << 20, true),
        &[&content[..content.len() - 1], &[&content[content.len() - 1..], usage].concat()],
    );
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(content));
}

/// A second, minor inconsistency of the same kind: a BOM at the stream start belongs to the first
/// event block, so when that first event is a stripped usage-only chunk the BOM is removed with it,
/// unless the first read ends right after the BOM, in which case it is forwarded.
#[test]
#[ignore = "known: a leading BOM is stripped with a usage-only first event, or not, depending on the reads"]
fn bom_before_a_stripped_usage_chunk_does_not_depend_on_reads() {
    let usage = &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"[..];
    let all = [&b"\xEF\xBB\xBF"[..], usage, b"data: [DONE]\n\n"].concat();
    let (whole, _) = forward(Mode::sse(1 << 20, true), &[&all]);
    let (cut, _) = forward(Mode::sse(1 << 20, true), &[&all[..3], &all[3..]]);
    assert_eq!(Bytes::from(whole), Bytes::from(cut));
}

// ---------------------------------------------------------------- prices -------------------

/// A non-negative decimal with up to 6 decimal places, up to 1e6 USD per million tokens.
fn price() -> impl Strategy<Value = Decimal> {
    (0u32..=6).prop_flat_map(|scale| (0..=10i64.pow(6 + scale)).prop_map(move |m| Decimal::new(m, scale)))
}

fn usage() -> impl Strategy<Value = Usage> {
    let n = 0u64..=1_000_000_000_000;
    (n.clone(), n.clone(), n.clone(), n).prop_map(|(input, output, cached_input, reasoning)| Usage {
        input,
        output,
        cached_input,
        reasoning,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Costs are never negative (cached above input included), adding input, output, or cached
    /// tokens that are part of the added input never lowers a cost, reasoning tokens (already
    /// inside output) never change it, and converting to nano-dollars never panics.
    #[test]
    fn cost_is_never_negative_and_grows_with_tokens(
        p_in in price(), p_out in price(), p_cached in proptest::option::of(price()),
        u in usage(),
        d_in in 0u64..=1_000_000_000_000, d_out in 0u64..=1_000_000_000_000, cached_share in any::<prop::sample::Index>(),
        d_reasoning in 0u64..=1_000_000_000_000,
    ) {
        let price = Price { input_per_1m: p_in, output_per_1m: p_out, cached_input_per_1m: p_cached };
        let cost = price.cost(&u);
        prop_assert!(cost >= Decimal::ZERO, "{cost} for {u:?}");
        let d_cached = cached_share.index(d_in as usize + 1) as u64;
        let more = Usage { input: u.input + d_in, output: u.output + d_out, cached_input: u.cached_input + d_cached, reasoning: u.reasoning };
        let more_cost = price.cost(&more);
        prop_assert!(more_cost >= cost, "{more_cost} < {cost}: {u:?} -> {more:?}");
        for grown in [
            Usage { input: u.input + d_in, ..u },
            Usage { output: u.output + d_out, ..u },
        ] {
            prop_assert!(price.cost(&grown) >= cost, "{grown:?}");
        }
        prop_assert_eq!(price.cost(&Usage { reasoning: u.reasoning + d_reasoning, ..u }), cost);
        // Whole nano-dollars: monotone too, since rounding is.
        prop_assert!(to_nano_usd(more_cost) >= to_nano_usd(cost));
    }
}

/// Found while writing the cost property: costs and nano-dollars are computed with `Decimal`'s
/// panicking operators, so absurd but representable inputs panic instead of saturating: a price of
/// 1e10 USD per million tokens with `u64::MAX` reported tokens (`Price::cost`), or a cost above
/// about 7.9e19 USD (`to_nano_usd`). Realistic prices (below about 1e9 USD per million tokens)
/// never get there, even with `u64::MAX` tokens; the property above covers those.
#[test]
fn extreme_costs_do_not_panic() {
    let price = Price {
        input_per_1m: Decimal::from(10_000_000_000u64),
        output_per_1m: Decimal::ZERO,
        cached_input_per_1m: None,
    };
    let _ = price.cost(&Usage { input: u64::MAX, output: 0, cached_input: 0, reasoning: 0 });
    assert_eq!(to_nano_usd(Decimal::MAX), u64::MAX);
}

#[test]
fn cost_of_cached_above_input_is_clamped() {
    let p = |s: &str| Decimal::from_str(s).unwrap();
    let price = Price { input_per_1m: p("2"), output_per_1m: p("0"), cached_input_per_1m: Some(p("1")) };
    let u = Usage { input: 1_000_000, output: 0, cached_input: 3_000_000, reasoning: 0 };
    assert_eq!(price.cost(&u), p("1"));
}

// ---------------------------------------------------------------- one record ---------------

/// What the upstream does next.
#[derive(Debug, Clone)]
enum Action {
    /// Sends one read (a slice of a random stream).
    Frame(Vec<u8>),
    /// Sends nothing for this many whole seconds (the idle timeout is 5.5 s, so no tie is possible).
    Pause(u64),
    /// Breaks the connection.
    Reset,
    /// Ends the body normally.
    End,
    /// Stops sending but keeps the connection open, forever.
    Stall,
    /// The drain deadline passes (the upstream itself carries on with the rest of the script).
    Cutoff,
}

const IDLE: Duration = Duration::from_millis(5_500);

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let step = prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Action::Frame),
        3 => (0u64..8).prop_map(Action::Pause),
        1 => Just(Action::Reset),
        1 => Just(Action::End),
        1 => Just(Action::Stall),
        1 => Just(Action::Cutoff),
    ];
    proptest::collection::vec(step, 0..16)
}

fn mode() -> impl Strategy<Value = u8> {
    0u8..4
}

fn make_mode(which: u8) -> Mode {
    match which {
        0 => Mode::sse(1 << 20, false),
        1 => Mode::sse(24, true),
        2 => Mode::json(32),
        _ => Mode::Opaque,
    }
}

/// How the upstream's script ends, as seen by the body: the outcome a client that reads to the
/// end must find in the record (`None`: success or a stream error, depending on the bytes).
fn expected_outcome(actions: &[Action]) -> Option<Outcome> {
    let mut quiet = 0;
    for a in actions {
        match a {
            Action::Frame(_) => quiet = 0,
            Action::Pause(s) => {
                quiet += s * 1000;
                if quiet > IDLE.as_millis() as u64 {
                    return Some(Outcome::IdleTimeout);
                }
            }
            Action::Reset => return Some(Outcome::UpstreamReset),
            Action::End => return None,
            Action::Stall => return Some(Outcome::IdleTimeout),
            Action::Cutoff => return Some(Outcome::Shutdown),
        }
    }
    // The script ran out: the sender is dropped, which ends the body normally.
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the upstream does (reads, pauses shorter or longer than the idle timeout, a reset,
    /// an end, a stall), whether the drain deadline passes, and whenever the client goes away, the sink receives exactly one record,
    /// with the outcome of whatever ended the body first.
    #[test]
    fn the_meter_finalizes_exactly_once(
        actions in actions(),
        which in mode(),
        drop_after in proptest::option::of(0usize..12),
    ) {
        let expected = expected_outcome(&actions);
        let (records, saw_end) = runtime().block_on(async {
            let (tx, mut body, sink) = metered(make_mode(which), IDLE);
            let script = actions.clone();
            let cutoff = sink.cutoff.clone();
            let upstream = tokio::spawn(async move {
                for a in script {
                    match a {
                        Action::Frame(b) => {
                            let _ = tx.send(Ok(Bytes::from(b)));
                        }
                        Action::Pause(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                        Action::Reset => {
                            let _ = tx.send(Err(std::io::Error::other("reset")));
                            break;
                        }
                        Action::End => break,
                        Action::Stall => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            break;
                        }
                        Action::Cutoff => cutoff.fire(),
                    }
                }
                drop(tx);
            });
            let mut saw_end = false;
            let mut polls = 0;
            while drop_after.is_none_or(|n| polls < n) {
                polls += 1;
                match body.frame().await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        saw_end = true;
                        break;
                    }
                }
            }
            if saw_end {
                // A finished body stays finished.
                assert!(body.frame().await.is_none());
            }
            drop(body);
            upstream.abort();
            let _ = upstream.await;
            (std::mem::take(&mut *sink.records.lock().unwrap()), saw_end)
        });
        prop_assert_eq!(records.len(), 1, "{:?}", records);
        let outcome = records[0].outcome;
        let normal_end = [Outcome::Success, Outcome::StreamError];
        let matches_script = match expected {
            Some(o) => outcome == o,
            None => normal_end.contains(&outcome),
        };
        if saw_end {
            prop_assert!(matches_script, "{outcome:?}, expected {expected:?}");
        } else {
            prop_assert!(matches_script || outcome == Outcome::ClientDisconnect, "{outcome:?}, expected {expected:?}");
        }
    }
}
