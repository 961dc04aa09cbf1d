//! The response body wrapper: forwards every upstream frame unchanged while the meter observes a
//! view of the same bytes, and finalizes the request's record exactly once (end, error, idle
//! timeout, client drop, shutdown).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use super::{Meter, Outcome, Record};
use crate::error::stream_error_event;
use crate::metrics::UpstreamErrorKind;
use crate::openai::{classify_event, parse_body};
use crate::sse::SseParser;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a finished request's record and live observations go (the route, in production).
pub trait Sink: Send + Sync + 'static {
    /// One gap between token-bearing events, as it happens.
    fn inter_token(&self, gap: Duration);
    /// An upstream failure seen while reading the body.
    fn upstream_error(&self, kind: UpstreamErrorKind);
    /// The request's one record.
    fn finish(&self, record: Record);
    /// Whether the process is shutting down (a dropped body then means `shutdown`, not a client leaving).
    fn shutting_down(&self) -> bool;
    /// The signal that ends bodies still streaming when the drain deadline passes.
    fn cutoff(&self) -> Option<&Arc<Cutoff>> {
        None
    }
}

/// Fired when the drain deadline passes: bodies still streaming end with an OpenAI-shaped error
/// event (and outcome `shutdown`) instead of being cut silently when the process exits.
#[derive(Debug, Default)]
pub struct Cutoff {
    fired: AtomicBool,
    notify: Arc<Notify>,
}

impl Cutoff {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// How the body is read.
#[derive(Debug)]
pub enum Mode {
    /// `text/event-stream`. With `strip_usage`, the usage-only chunk tollgate forced is removed; to
    /// be able to, an event split across reads is forwarded once its last byte has arrived.
    Sse {
        parser: SseParser,
        strip_usage: bool,
        held: BytesMut,
        /// The last complete block was a removed usage chunk (its split CRLF's LF goes with it).
        last_dropped: bool,
    },
    /// A JSON body: parts are kept (reference-counted, not copied) up to `cap` bytes and read at the end.
    Json { parts: Vec<Bytes>, size: usize, cap: usize },
    /// Anything else, and upstream error bodies: forwarded, not read.
    Opaque,
}

impl Mode {
    pub fn sse(max_line_bytes: usize, strip_usage: bool) -> Mode {
        Mode::Sse { parser: SseParser::new(max_line_bytes), strip_usage, held: BytesMut::new(), last_dropped: false }
    }
    pub fn json(cap: usize) -> Mode {
        Mode::Json { parts: Vec::new(), size: 0, cap }
    }
}

pub struct MeteredBody<B> {
    inner: B,
    mode: Mode,
    /// `Some` until the record is finalized; taking it is what makes finalization happen once.
    meter: Option<Meter>,
    /// Outcome of a normal end: `Success`, or `UpstreamError` for a 4xx/5xx passed through.
    end_outcome: Outcome,
    sink: Arc<dyn Sink>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// An error event to send before ending (SSE only).
    trailer: Option<Bytes>,
    /// A frame read ahead while looking for the end of a completed stream; handled next.
    peeked: Option<Result<Frame<Bytes>, BoxError>>,
    done: bool,
    /// Wakes this body when the drain deadline passes.
    cut: Option<(Arc<Cutoff>, Pin<Box<OwnedNotified>>)>,
}

impl<B> MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(
        inner: B,
        mode: Mode,
        meter: Meter,
        end_outcome: Outcome,
        sink: Arc<dyn Sink>,
        idle_timeout: Duration,
    ) -> Self {
        let cut = sink.cutoff().map(|c| (c.clone(), Box::pin(c.notify.clone().notified_owned())));
        MeteredBody {
            inner,
            mode,
            meter: Some(meter),
            end_outcome,
            sink,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            trailer: None,
            peeked: None,
            done: false,
            cut,
        }
    }

    fn finalize(&mut self, outcome: Outcome) {
        let Some(mut meter) = self.meter.take() else { return };
        let now = Instant::now();
        if let Mode::Json { parts, size, cap } = &mut self.mode {
            if *size > *cap {
                meter.on_overflow();
            } else if outcome == Outcome::Success {
                let whole = if parts.len() == 1 { parts[0].clone() } else { Bytes::from(parts.concat()) };
                meter.on_body(parse_body(&whole));
            }
            parts.clear();
        }
        if let Mode::Sse { parser, .. } = &mut self.mode {
            parser.finish();
            if parser.overflowed() {
                meter.on_overflow();
            }
        }
        let outcome = if outcome == Outcome::Success && meter.error_seen() {
            self.sink.upstream_error(UpstreamErrorKind::StreamError);
            Outcome::StreamError
        } else {
            outcome
        };
        self.sink.finish(meter.finish(outcome, now));
    }

    /// Feeds one data frame to the meter; returns the bytes to forward (the same `Bytes` unless a
    /// forced usage chunk is being removed).
    fn observe(&mut self, data: Bytes, now: Instant) -> Bytes {
        let Some(meter) = self.meter.as_mut() else { return data };
        match &mut self.mode {
            Mode::Opaque => data,
            Mode::Json { parts, size, cap } => {
                *size += data.len();
                if *size <= *cap {
                    parts.push(data.clone());
                } else {
                    parts.clear();
                }
                data
            }
            Mode::Sse { parser, strip_usage, held, last_dropped } => {
                if parser.overflowed() {
                    return data;
                }
                let sink = &self.sink;
                let strip = *strip_usage;
                // Event blocks to drop, as (start, end) offsets into `data`; empty in the common case.
                let mut drops: Vec<(usize, usize)> = Vec::new();
                // The LF of a CRLF split across reads, when that CR ended a block (a blank line),
                // belongs to that block: it goes (or stays out) with it, and this read's first
                // block starts after it. After any other line it is part of the held event.
                let mut start = usize::from(parser.continues_crlf(&data) && !parser.is_mid_event());
                if start == 1 && *last_dropped {
                    drops.push((0, 1));
                }
                parser.feed(&data, &mut |event, end| {
                    let mut dropped = false;
                    if let Some(ev) = event {
                        let info = classify_event(ev.event, ev.data);
                        if let Some(gap) = meter.on_event(&info, now) {
                            sink.inter_token(gap);
                        }
                        dropped = strip && info.usage_only;
                        if dropped {
                            drops.push((start, end));
                        }
                    }
                    *last_dropped = dropped;
                    start = end;
                });
                let overflowed = parser.overflowed();
                if overflowed {
                    // Metering stops here: blocks already judged in this read keep their verdict,
                    // the rest (and whatever was held back) goes out as it is.
                    meter.on_overflow();
                }
                if !strip {
                    return data;
                }
                strip_blocks(data, held, &drops, start, parser.is_mid_event() && !overflowed)
            }
        }
    }
}

/// Builds the bytes to forward in strip mode. `held` is the start of an event from earlier reads
/// and belongs to this read's first block; blocks in `drops` (start, end) are left out; the tail
/// after the last boundary (`tail_start`) is held back while an event is unfinished.
fn strip_blocks(
    data: Bytes,
    held: &mut BytesMut,
    drops: &[(usize, usize)],
    tail_start: usize,
    hold_tail: bool,
) -> Bytes {
    // Boundaries end after a line terminator, so 0 means no event ended in this read.
    if tail_start == 0 {
        if hold_tail {
            held.extend_from_slice(&data);
            return Bytes::new();
        }
        if held.is_empty() {
            return data;
        }
        held.extend_from_slice(&data);
        return held.split().freeze();
    }
    let keep_end = if hold_tail { tail_start } else { data.len() };
    if drops.is_empty() && held.is_empty() {
        if hold_tail {
            held.extend_from_slice(&data[tail_start..]);
        }
        return data.slice(..keep_end);
    }
    let mut out = BytesMut::with_capacity(held.len() + data.len());
    if drops.first().is_none_or(|d| d.0 != 0) {
        out.extend_from_slice(held);
    }
    held.clear();
    let mut pos = 0;
    for &(start, end) in drops {
        out.extend_from_slice(&data[pos..start]);
        pos = end;
    }
    // Dropped blocks end at boundaries, so `pos <= tail_start <= keep_end`.
    out.extend_from_slice(&data[pos..keep_end]);
    if hold_tail {
        held.extend_from_slice(&data[tail_start..]);
    }
    out.freeze()
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailer.take() {
                return Poll::Ready(Some(Ok(Frame::data(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.cut.as_ref().is_some_and(|(c, _)| c.fired()) {
                return this.cut_off();
            }
            let polled = match this.peeked.take() {
                Some(frame) => Poll::Ready(Some(frame)),
                None => Pin::new(&mut this.inner).poll_frame(cx).map(|o| o.map(|r| r.map_err(Into::into))),
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = Instant::now();
                    this.idle.as_mut().reset(now + this.idle_timeout);
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    let out = this.observe(data, now);
                    // hyper stops polling once the inner body says it has ended (content-length
                    // bodies): finalize on that, not only on a final `None`.
                    if this.inner.is_end_stream() {
                        this.end_normally();
                    } else if this.meter.as_ref().is_some_and(Meter::done_seen) {
                        // The stream said it is complete ([DONE], response.completed): if the body's
                        // end is already here, report it with this frame, so the client gets the
                        // last bytes and the end of a chunked body in one write, not two.
                        match Pin::new(&mut this.inner).poll_frame(cx) {
                            Poll::Ready(None) => this.end_normally(),
                            Poll::Ready(Some(next)) => this.peeked = Some(next.map_err(Into::into)),
                            Poll::Pending => {}
                        }
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(None) => this.end_normally(),
                Poll::Ready(Some(Err(e))) => {
                    this.sink.upstream_error(UpstreamErrorKind::Reset);
                    // In-band first: it needs the parser's state, which finalizing resets.
                    let in_band = this.fail_in_band("the backend connection broke mid-response", "upstream_reset");
                    this.finalize(Outcome::UpstreamReset);
                    if !in_band {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Pending => {
                    if let Some((cutoff, wait)) = this.cut.as_mut() {
                        // Registered first, then checked: a fire in between is not missed.
                        if wait.as_mut().poll(cx).is_ready() || cutoff.fired() {
                            return this.cut_off();
                        }
                    }
                    ready!(this.idle.as_mut().poll(cx));
                    this.sink.upstream_error(UpstreamErrorKind::IdleTimeout);
                    let in_band = this
                        .fail_in_band("the backend stopped sending before the response ended", "upstream_idle_timeout");
                    this.finalize(Outcome::IdleTimeout);
                    if !in_band {
                        this.done = true;
                        return Poll::Ready(Some(Err("upstream idle timeout".into())));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailer.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.mode {
            Mode::Sse { strip_usage: true, .. } => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

impl<B> MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The upstream body ended: release held bytes and finalize.
    fn end_normally(&mut self) {
        if let Mode::Sse { held, .. } = &mut self.mode
            && !held.is_empty()
        {
            self.trailer = Some(held.split().freeze());
        }
        let outcome = self.end_outcome;
        self.finalize(outcome);
        self.done = true;
    }

    /// The drain deadline passed with this body still streaming.
    fn cut_off(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.cut = None;
        let in_band = self.fail_in_band("tollgate is shutting down and the drain deadline passed", "server_shutdown");
        self.finalize(Outcome::Shutdown);
        self.done = true;
        match self.trailer.take() {
            Some(t) if in_band => Poll::Ready(Some(Ok(Frame::data(t)))),
            _ => Poll::Ready(Some(Err("tollgate is shutting down".into()))),
        }
    }

    /// For event streams, ends the body with an OpenAI-shaped error event; returns false for other
    /// bodies, which can only be cut (their status was already sent).
    fn fail_in_band(&mut self, message: &str, code: &str) -> bool {
        let Mode::Sse { parser, held, .. } = &mut self.mode else { return false };
        let mut out = BytesMut::new();
        out.extend_from_slice(held);
        held.clear();
        if parser.is_mid_event() {
            // Terminate the half-sent event so the error event parses on its own.
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(&stream_error_event(message, code));
        self.trailer = Some(out.freeze());
        self.done = true;
        true
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            let outcome = if self.sink.shutting_down() { Outcome::Shutdown } else { Outcome::ClientDisconnect };
            self.sink.finish(meter.finish(outcome, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests;
