//! OpenTelemetry traces: one span per proxied request, named and attributed after the GenAI
//! semantic conventions, built from the same record that feeds Prometheus, exported as OTLP/HTTP
//! JSON in batches off the request path; and W3C trace context (`traceparent`) continued from the
//! client or started here, and passed on to the backend. Off unless an endpoint is configured:
//! then no ids are drawn and no header is added.
//!
//! Why not the `opentelemetry` SDK crates: one span per request, from a record we already have,
//! needs none of the SDK's machinery, and the OTLP exporter stack would roughly double the build.
//! OTLP/HTTP with the protobuf-JSON encoding is a stable, documented protocol; this speaks it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Spans waiting for export at most; past it they are dropped and counted.
const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH: Duration = Duration::from_secs(1);

/// A request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// This proxy's span.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub start_unix_nanos: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl TraceCtx {
    /// Continues the client's `traceparent` (version 00) or starts a new trace.
    pub fn from_headers(headers: &HeaderMap) -> TraceCtx {
        let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|v| {
            let mut parts = v.trim().split('-');
            let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let trace_id: [u8; 16] = unhex(trace)?;
            let span_id: [u8; 8] = unhex(span)?;
            let flags: [u8; 1] = unhex(flags)?;
            (version == "00" && trace_id != [0; 16] && span_id != [0; 8]).then_some((
                trace_id,
                span_id,
                flags[0] & 1 == 1,
            ))
        });
        let span_id = fastrand::u64(1..).to_be_bytes();
        match parent {
            Some((trace_id, parent, sampled)) => {
                TraceCtx { trace_id, span_id, parent_span_id: Some(parent), sampled, start_unix_nanos: unix_nanos() }
            }
            None => TraceCtx {
                trace_id: fastrand::u128(1..).to_be_bytes(),
                span_id,
                parent_span_id: None,
                sampled: true,
                start_unix_nanos: unix_nanos(),
            },
        }
    }

    /// The `traceparent` the backend gets: this trace, with this proxy's span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let v = format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), u8::from(self.sampled));
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A span attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// A finished request's span.
#[derive(Debug, Clone)]
pub struct Span {
    pub ctx: TraceCtx,
    pub name: String,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// `Some(description)` marks the span as an error.
    pub error: Option<String>,
}

/// The exporting side: queues spans; a task POSTs them in batches.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

impl Tracer {
    /// `endpoint` is the full traces URL (`.../v1/traces`).
    pub fn start(endpoint: http::Uri, service_name: String) -> anyhow::Result<Tracer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = crate::upstream::http_client(None, Duration::from_secs(5))?;
        let (dropped, exported) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        tokio::spawn(export_loop(rx, client, endpoint, service_name, dropped.clone(), exported.clone()));
        Ok(Tracer { tx, dropped, exported })
    }

    pub fn record(&self, span: Span) {
        if !span.ctx.sampled {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// (exported, dropped).
    pub fn counts(&self) -> (u64, u64) {
        (self.exported.load(Relaxed), self.dropped.load(Relaxed))
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn export_loop(
    mut rx: mpsc::Receiver<Span>,
    client: Client,
    endpoint: http::Uri,
    service: String,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = rx.recv().await;
        let Some(first) = first else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = Bytes::from(encode(&service, &batch).to_string());
        let n = batch.len() as u64;
        batch.clear();
        let req =
            Request::post(endpoint.clone()).header(header::CONTENT_TYPE, "application/json").body(Full::new(body));
        let Ok(req) = req else { continue };
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                exported.fetch_add(n, Relaxed);
            }
            other => {
                dropped.fetch_add(n, Relaxed);
                tracing::warn!(spans = n, ok = matches!(other, Ok(Ok(_))), "OTLP export failed");
            }
        }
    }
}

fn attr(key: &str, v: &Attr) -> Value {
    let value = match v {
        Attr::Str(s) => json!({"stringValue": s}),
        // OTLP JSON carries 64-bit integers as strings.
        Attr::Int(i) => json!({"intValue": i.to_string()}),
        Attr::Double(d) => json!({"doubleValue": d}),
        Attr::Bool(b) => json!({"boolValue": b}),
    };
    json!({"key": key, "value": value})
}

/// An `ExportTraceServiceRequest` in the OTLP protobuf-JSON mapping.
pub fn encode(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.ctx.trace_id),
                "spanId": hex(&s.ctx.span_id),
                "name": s.name,
                // SPAN_KIND_CLIENT: the span is tollgate's call to the model.
                "kind": 3,
                "startTimeUnixNano": s.ctx.start_unix_nanos.to_string(),
                "endTimeUnixNano": s.end_unix_nanos.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": match &s.error {
                    // STATUS_CODE_ERROR
                    Some(msg) => json!({"code": 2, "message": msg}),
                    None => json!({}),
                },
            });
            if let (Some(p), Some(obj)) = (s.ctx.parent_span_id, span.as_object_mut()) {
                obj.insert("parentSpanId".into(), json!(hex(&p)));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", &Attr::Str(service.to_string()))]},
        "scopeSpans": [{"scope": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_or_started() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let ctx = TraceCtx::from_headers(&h);
        assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_span_id.map(|p| hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
        let sent = ctx.traceparent();
        let sent = sent.to_str().unwrap_or_default();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"));
        assert!(!sent.contains("00f067aa0ba902b7"), "the backend's parent is tollgate's span");

        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            h.insert("traceparent", HeaderValue::from_static(bad));
            assert_eq!(TraceCtx::from_headers(&h).parent_span_id, None, "{bad}");
        }
    }
}
