//! The metered body under a scripted upstream body: byte-exact forwarding, usage-chunk removal at
//! any split, one record per request whichever way it ends, idle timeout, error events.

use std::sync::Mutex;

use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::*;
use crate::openai::Endpoint;

/// An upstream body the test feeds chunk by chunk (or fails, or stalls by sending nothing).
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
    gaps: Mutex<Vec<Duration>>,
    errors: Mutex<Vec<UpstreamErrorKind>>,
    cutoff: Arc<Cutoff>,
}

impl Sink for TestSink {
    fn inter_token(&self, gap: Duration) {
        self.gaps.lock().unwrap().push(gap);
    }
    fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors.lock().unwrap().push(kind);
    }
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

/// Sends `chunks`, ends the upstream body, and returns everything the client would read.
async fn run(mode: Mode, chunks: &[&[u8]]) -> (Vec<u8>, Arc<TestSink>) {
    let (tx, body, sink) = metered(mode, Duration::from_secs(60));
    for c in chunks {
        tx.send(Ok(Bytes::copy_from_slice(c))).unwrap();
    }
    drop(tx);
    let out = body.collect().await.unwrap().to_bytes();
    (out.to_vec(), sink)
}

const CONTENT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n";
const USAGE: &[u8] =
    b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

fn stream() -> Vec<u8> {
    [CONTENT, USAGE, DONE].concat()
}

#[tokio::test]
async fn forwards_bytes_untouched_at_every_split() {
    let all = stream();
    for cut in 0..=all.len() {
        let (out, sink) = run(Mode::sse(1 << 20, false), &[&all[..cut], &all[cut..]]).await;
        assert_eq!(out, all, "cut at {cut}");
        let records = sink.records.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].token_events, 2);
        assert_eq!(
            records[0].usage.map(|u| (u.0.input, u.0.output, u.1)),
            Some((9, 2, crate::meter::UsageSource::Reported))
        );
    }
}

#[tokio::test]
async fn strips_the_forced_usage_chunk_at_every_split() {
    let all = stream();
    let expected = [CONTENT, DONE].concat();
    for cut in 0..=all.len() {
        for cut2 in [cut, (cut + 7).min(all.len()), all.len()] {
            let (out, sink) = run(Mode::sse(1 << 20, true), &[&all[..cut], &all[cut..cut2], &all[cut2..]]).await;
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected), "cuts {cut} {cut2}");
            // The usage was still metered.
            assert_eq!(sink.records.lock().unwrap()[0].usage.map(|u| u.0.input), Some(9));
        }
    }
}

#[tokio::test]
async fn stream_without_usage_is_estimated_and_labelled() {
    let fixture = include_bytes!("../../../tests/fixtures/llama-cpp-python/chat-stream-include-usage-requested.sse");
    let (out, sink) = run(Mode::sse(1 << 20, true), &[&fixture[..]]).await;
    assert_eq!(out, fixture.to_vec());
    let r = &sink.records.lock().unwrap()[0];
    // 24 content chunks, one token each: the backend's own non-streaming usage says 24.
    assert_eq!(r.usage.map(|u| (u.0.output, u.1)), Some((24, crate::meter::UsageSource::Estimated)));
    assert_eq!(r.usage_missing, Some(crate::meter::MissingReason::NoUsage));
    assert_eq!(sink.gaps.lock().unwrap().len(), 23);
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_with_an_error_event() {
    let (tx, body, sink) = metered(Mode::sse(1 << 20, false), Duration::from_secs(60));
    tx.send(Ok(Bytes::from_static(CONTENT))).unwrap();
    tx.send(Ok(Bytes::from_static(b"data: {\"choi"))).unwrap();
    tx.send(Err(std::io::Error::other("connection reset"))).unwrap();
    let out = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with(std::str::from_utf8(CONTENT).unwrap()));
    assert!(text.ends_with("\"code\":\"upstream_reset\"}}\n\n"), "{text}");
    let records = sink.records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::UpstreamReset);
    assert_eq!(*sink.errors.lock().unwrap(), vec![UpstreamErrorKind::Reset]);
}

#[tokio::test(start_paused = true)]
async fn idle_upstream_times_out_with_an_error_event() {
    let (tx, body, sink) = metered(Mode::sse(1 << 20, false), Duration::from_secs(5));
    tx.send(Ok(Bytes::from_static(CONTENT))).unwrap();
    let started = Instant::now();
    // The upstream stalls: nothing more is sent, and the sender stays open.
    let out = body.collect().await.unwrap().to_bytes();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&out).contains("upstream_idle_timeout"));
    assert_eq!(sink.records.lock().unwrap()[0].outcome, Outcome::IdleTimeout);
    drop(tx);
}

#[tokio::test]
async fn in_band_error_event_marks_a_stream_error() {
    let (out, sink) =
        run(Mode::sse(1 << 20, false), &[CONTENT, b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"]).await;
    assert!(out.ends_with(b"overloaded\"}}\n\n"));
    assert_eq!(sink.records.lock().unwrap()[0].outcome, Outcome::StreamError);
    assert_eq!(*sink.errors.lock().unwrap(), vec![UpstreamErrorKind::StreamError]);
}

#[tokio::test]
async fn dropping_the_body_is_a_client_disconnect_recorded_once() {
    let (tx, mut body, sink) = metered(Mode::sse(1 << 20, false), Duration::from_secs(60));
    tx.send(Ok(Bytes::from_static(CONTENT))).unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], CONTENT);
    drop(body);
    let records = sink.records.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::ClientDisconnect);
    assert_eq!(records[0].token_events, 2);
    assert!(tx.is_closed(), "dropping the client side drops the upstream body");
}

#[tokio::test]
async fn json_bodies_are_read_at_the_end() {
    let body = include_bytes!("../../../tests/fixtures/llama-cpp-python/chat-nonstream.json");
    let (out, sink) = run(Mode::json(1 << 20), &[&body[..40], &body[40..]]).await;
    assert_eq!(out, body.to_vec());
    assert_eq!(sink.records.lock().unwrap()[0].usage.map(|u| (u.0.input, u.0.output)), Some((16, 24)));
    let (_, sink) = run(Mode::json(10), &[&body[..]]).await;
    assert_eq!(sink.records.lock().unwrap()[0].usage_missing, Some(crate::meter::MissingReason::Overflow));
}

#[tokio::test]
async fn an_overlong_line_stops_metering_but_not_forwarding() {
    let long = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(5000));
    let all = [CONTENT, long.as_bytes(), DONE].concat();
    let (out, sink) = run(Mode::sse(1024, true), &[&all[..]]).await;
    assert_eq!(out, all);
    assert_eq!(sink.records.lock().unwrap()[0].usage_missing, Some(crate::meter::MissingReason::Overflow));
}

#[tokio::test]
async fn the_drain_deadline_ends_a_stream_with_an_error_event() {
    let (tx, body, sink) = metered(Mode::sse(1 << 20, false), Duration::from_secs(60));
    tx.send(Ok(Bytes::from_static(CONTENT))).unwrap();
    let cutoff = sink.cutoff.clone();
    let reader = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    cutoff.fire();
    let out = tokio::time::timeout(Duration::from_secs(2), reader).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with(std::str::from_utf8(CONTENT).unwrap()));
    assert!(text.ends_with("\"code\":\"server_shutdown\"}}\n\n"), "{text}");
    assert_eq!(sink.records.lock().unwrap()[0].outcome, Outcome::Shutdown);
    drop(tx);
}

#[tokio::test]
async fn forwarded_frames_are_the_upstream_bytes_not_copies() {
    // Without usage removal the client gets the very `Bytes` the upstream produced: same memory.
    let (tx, mut body, _sink) = metered(Mode::sse(1 << 20, false), Duration::from_secs(60));
    let sent = Bytes::from(CONTENT.to_vec());
    let ptr = sent.as_ptr();
    tx.send(Ok(sent)).unwrap();
    let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(got.as_ptr(), ptr, "the frame was copied");
    // With removal on, a read holding whole events that are kept is still passed through as is.
    let (tx, mut body, _sink) = metered(Mode::sse(1 << 20, true), Duration::from_secs(60));
    let sent = Bytes::from(CONTENT.to_vec());
    let ptr = sent.as_ptr();
    tx.send(Ok(sent)).unwrap();
    let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(got.as_ptr(), ptr, "the frame was copied in strip mode");
}
