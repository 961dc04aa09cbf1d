//! The metered response body under arbitrary event streams cut into arbitrary reads: whatever the
//! upstream sends is forwarded byte for byte (or, when tollgate strips the usage chunk it forced,
//! minus exactly the usage-only events), and the request is recorded exactly once.
#![no_main]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use libfuzzer_sys::fuzz_target;
use tollgate::meter::body::{MeteredBody, Mode, Sink};
use tollgate::meter::{Meter, Outcome, Record};
use tollgate::metrics::UpstreamErrorKind;
use tollgate::openai::{Endpoint, classify_event};
use tollgate::sse::SseParser;

/// An upstream body that hands out its chunks one per poll and then ends.
struct Chunks(std::vec::IntoIter<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Default)]
struct Records(Mutex<Vec<Record>>);

impl Sink for Records {
    fn inter_token(&self, _: Duration) {}
    fn upstream_error(&self, _: UpstreamErrorKind) {}
    fn finish(&self, record: Record) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }
    fn shutting_down(&self) -> bool {
        false
    }
}

/// The input minus every usage-only event block, cut where a one-chunk parse reports boundaries.
fn without_usage_events(stream: &[u8]) -> Vec<u8> {
    let (mut out, mut start) = (Vec::new(), 0);
    let mut parser = SseParser::new(1 << 20);
    parser.feed(stream, &mut |event, end| {
        if !event.is_some_and(|e| classify_event(e.event, e.data).usage_only) {
            out.extend_from_slice(&stream[start..end]);
        }
        start = end;
    });
    out.extend_from_slice(&stream[start..]);
    out
}

/// A known deviation, reported and kept as `fuzz/regressions/metered_body/split-crlf-after-usage-chunk`:
/// when a read ends between the CR and the LF of a CRLF next to a stripped usage-only event, the
/// LF lands on the wrong side of the cut (a stray LF is forwarded, or a kept event loses its LF).
/// The output still parses into the same events, which is all that is checked in that case.
/// Set this to false once `src/meter/body.rs` gives the LF of a split CRLF to its own block.
const TOLERATE_SPLIT_CRLF: bool = false;

/// The events a client's spec-following parser reads from `stream`, and whether a tail is left over.
fn events(stream: &[u8]) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut parser = SseParser::new(1 << 20);
    let mut out = Vec::new();
    parser.feed(stream, &mut |event, _| out.extend(event.map(|e| (e.event.to_owned(), e.data.to_vec()))));
    (out, parser.finish())
}

/// Polls the body to its end with a no-op waker: the scripted upstream is never pending.
fn drain(mut body: MeteredBody<Chunks>) -> Vec<u8> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => out.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Poll::Ready(Some(Err(e))) => panic!("the body failed: {e}"),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("the body is pending on a ready upstream"),
        }
    }
    assert!(body.is_end_stream());
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: strip or not, and how many cuts (0..=63); bytes 1.. : cut positions; the last byte
    // picks a small line cap when not stripping (so overflow is forwarded too).
    let flags = data.first().copied().unwrap_or(0);
    let strip = flags & 1 == 1;
    let n = usize::from(flags >> 2);
    let mut at: Vec<usize> =
        (0..n).map(|i| usize::from(data.get(1 + i).copied().unwrap_or(0)) * 31 % (data.len() + 1)).collect();
    at.sort_unstable();
    let max = if strip || flags & 2 == 0 { 1 << 20 } else { usize::from(data.last().copied().unwrap_or(0)) + 1 };
    let starts = std::iter::once(0).chain(at.iter().copied());
    let ends = at.iter().copied().chain(std::iter::once(data.len()));
    let chunks: Vec<Bytes> = starts.zip(ends).map(|(a, b)| Bytes::copy_from_slice(&data[a..b])).collect();

    let _guard = runtime().enter();
    let sink = Arc::new(Records::default());
    let mut meter = Meter::new(Endpoint::ChatCompletions, true, tokio::time::Instant::now(), 10);
    meter.on_headers(200, tokio::time::Instant::now());
    let body = MeteredBody::new(
        Chunks(chunks.into_iter()),
        Mode::sse(max, strip),
        meter,
        Outcome::Success,
        sink.clone(),
        Duration::from_secs(60),
    );
    let out = drain(body);
    let want = if strip { without_usage_events(data) } else { data.to_vec() };
    let split_crlf = at.iter().any(|&c| c > 0 && data[c - 1] == b'\r' && data.get(c) == Some(&b'\n'));
    if strip && split_crlf && TOLERATE_SPLIT_CRLF {
        assert_eq!(events(&out), events(&want), "cuts {at:?}");
    } else {
        let (got, want) = (Bytes::from(out), Bytes::from(want));
        assert!(got == want, "strip {strip}, max {max}, cuts {at:?}\n got: {got:?}\nwant: {want:?}");
    }
    assert_eq!(sink.0.lock().unwrap_or_else(|e| e.into_inner()).len(), 1, "one record");
});
