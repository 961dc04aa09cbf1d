//! The per-request meter: a pure accumulator of timestamps, token-bearing events and usage that
//! turns into exactly one [`Record`] when the request ends. No IO; `now` is always a parameter.

pub mod body;

use std::time::Duration;

use tokio::time::Instant;

use crate::openai::{BodyInfo, Endpoint, EventInfo, estimate_text_tokens};
use crate::pricing::Usage;

/// How a request ended; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx and the body ended normally.
    Success,
    /// The upstream answered with a 4xx/5xx status (its body was passed through).
    UpstreamError,
    /// A 2xx stream carried an error event (`data: {"error":..}`, `event: error`, `response.failed`).
    StreamError,
    /// The upstream connection broke mid-body.
    UpstreamReset,
    /// No body bytes from the upstream for longer than the backend's idle timeout.
    IdleTimeout,
    /// The upstream sent no response headers within the backend's header timeout.
    HeaderTimeout,
    /// The backend could not be reached (connect or TLS failure).
    ConnectError,
    /// The client went away before the body ended.
    ClientDisconnect,
    /// tollgate shut down before the body ended.
    Shutdown,
}

impl Outcome {
    pub const COUNT: usize = 9;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Success,
        Outcome::UpstreamError,
        Outcome::StreamError,
        Outcome::UpstreamReset,
        Outcome::IdleTimeout,
        Outcome::HeaderTimeout,
        Outcome::ConnectError,
        Outcome::ClientDisconnect,
        Outcome::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
            Outcome::StreamError => "stream_error",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::HeaderTimeout => "header_timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::ClientDisconnect => "client_disconnect",
            Outcome::Shutdown => "shutdown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a record's token counts come from; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The backend reported usage (final chunk, body `usage`, Responses terminal event).
    Reported,
    /// The backend reported none: counted from the stream and the request text.
    Estimated,
}

impl UsageSource {
    pub const ALL: [UsageSource; 2] = [UsageSource::Reported, UsageSource::Estimated];
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a 2xx response carried no usable usage; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingReason {
    /// The backend sent none (e.g. llama-cpp-python ignores `include_usage`).
    NoUsage,
    /// The response ended early (disconnect, reset, timeout) before usage arrived.
    Interrupted,
    /// The body or an event was not JSON the meter could read.
    ParseError,
    /// A line or body exceeded the parser's cap; metering stopped, forwarding went on.
    Overflow,
}

impl MissingReason {
    pub const ALL: [MissingReason; 4] =
        [MissingReason::NoUsage, MissingReason::Interrupted, MissingReason::ParseError, MissingReason::Overflow];
    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::NoUsage => "no_usage",
            MissingReason::Interrupted => "interrupted",
            MissingReason::ParseError => "parse_error",
            MissingReason::Overflow => "overflow",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Everything known about one finished request. Produced once, by [`Meter::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub endpoint: Endpoint,
    pub stream: bool,
    pub status: u16,
    pub outcome: Outcome,
    /// Received → upstream response headers.
    pub time_to_headers: Option<Duration>,
    /// Received → first token-bearing event (streams only).
    pub ttft: Option<Duration>,
    /// (t_last − t_first) / (output_tokens − 1), when there are at least two tokens.
    pub tpot: Option<Duration>,
    /// Received → last byte handed to the client.
    pub duration: Duration,
    /// Token-bearing events seen (one per choice carrying output).
    pub token_events: u64,
    /// Token counts and where they come from; `None` when nothing was billed (no 2xx response).
    pub usage: Option<(Usage, UsageSource)>,
    pub usage_missing: Option<MissingReason>,
}

impl Record {
    /// Decode speed, 1 / TPOT.
    pub fn tokens_per_second(&self) -> Option<f64> {
        self.tpot.filter(|t| !t.is_zero()).map(|t| 1.0 / t.as_secs_f64())
    }
}

/// The accumulator. One per proxied request.
#[derive(Debug)]
pub struct Meter {
    endpoint: Endpoint,
    stream: bool,
    received: Instant,
    estimated_input: u64,
    status: u16,
    headers_at: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    token_events: u64,
    usage: Option<Usage>,
    output_chars: u64,
    error_seen: bool,
    parse_error: bool,
    overflow: bool,
    done_seen: bool,
}

impl Meter {
    pub fn new(endpoint: Endpoint, stream: bool, received: Instant, estimated_input: u64) -> Meter {
        Meter {
            endpoint,
            stream,
            received,
            estimated_input,
            status: 0,
            headers_at: None,
            first_token: None,
            last_token: None,
            token_events: 0,
            usage: None,
            output_chars: 0,
            error_seen: false,
            parse_error: false,
            overflow: false,
            done_seen: false,
        }
    }

    pub fn received(&self) -> Instant {
        self.received
    }

    pub fn on_headers(&mut self, status: u16, now: Instant) {
        self.status = status;
        self.headers_at = Some(now);
    }

    /// The status tollgate itself answered with when no upstream response came (502, 504).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Takes one SSE event; returns the gap since the previous token-bearing event, if this is one.
    pub fn on_event(&mut self, info: &EventInfo, now: Instant) -> Option<Duration> {
        if let Some(u) = info.usage {
            // Usage is cumulative where backends repeat it (llama.cpp sends it on every chunk):
            // the last report wins, it is never added.
            self.usage = Some(u);
        }
        self.error_seen |= info.error;
        self.parse_error |= info.unparsed;
        self.done_seen |= info.done;
        if info.token_choices == 0 {
            return None;
        }
        self.token_events += u64::from(info.token_choices);
        let gap = self.last_token.map(|prev| now.saturating_duration_since(prev));
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        gap
    }

    /// Takes what was read from a whole (non-streamed) body; `None` when it was not readable JSON.
    pub fn on_body(&mut self, info: Option<BodyInfo>) {
        match info {
            Some(b) => {
                self.usage = b.usage.or(self.usage);
                self.output_chars = b.output_chars;
                self.error_seen |= b.error;
            }
            None => self.parse_error = true,
        }
    }

    /// The parser hit its cap: metering of this response stops, forwarding goes on.
    pub fn on_overflow(&mut self) {
        self.overflow = true;
    }

    /// Whether the stream has sent its terminal event (`[DONE]`, `response.completed`, ...).
    pub fn done_seen(&self) -> bool {
        self.done_seen
    }

    /// Whether an in-band error was seen (the outcome of a normally ended 2xx stream depends on it).
    pub fn error_seen(&self) -> bool {
        self.error_seen
    }

    /// Closes the meter into its one record.
    pub fn finish(self, outcome: Outcome, now: Instant) -> Record {
        let responded_ok = (200..300).contains(&self.status);
        let usage = match self.usage {
            Some(u) => Some((u, UsageSource::Reported)),
            None if responded_ok => {
                let output = if self.stream { self.token_events } else { estimate_text_tokens(self.output_chars) };
                Some((
                    Usage { input: self.estimated_input, output, cached_input: 0, reasoning: 0 },
                    UsageSource::Estimated,
                ))
            }
            None => None,
        };
        let usage_missing = (responded_ok && self.usage.is_none()).then(|| {
            if self.overflow {
                MissingReason::Overflow
            } else if outcome != Outcome::Success && outcome != Outcome::StreamError {
                MissingReason::Interrupted
            } else if self.parse_error {
                MissingReason::ParseError
            } else {
                MissingReason::NoUsage
            }
        });
        let output_tokens = usage.map_or(self.token_events, |(u, _)| u.output);
        let tpot = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) if output_tokens >= 2 && last > first => {
                Some(last.duration_since(first) / u32::try_from(output_tokens - 1).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        Record {
            endpoint: self.endpoint,
            stream: self.stream,
            status: self.status,
            outcome,
            time_to_headers: self.headers_at.map(|h| h.duration_since(self.received)),
            ttft: if self.stream { self.first_token.map(|f| f.duration_since(self.received)) } else { None },
            tpot,
            duration: now.saturating_duration_since(self.received),
            token_events: self.token_events,
            usage,
            usage_missing,
        }
    }
}

#[cfg(test)]
mod tests;
