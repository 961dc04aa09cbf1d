//! The request handler: read the request (capped) → resolve the model → forward (rewriting only
//! auth, model and `stream_options`) → wrap the response body in the meter.

mod bill;
mod routes;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use bill::{Bill, Payer};
pub use routes::{Route, Routes, Target};

use crate::accounting::{Accounting, Denied};
use crate::error::ProxyError;
use crate::meter::body::{BoxError, Cutoff, MeteredBody, Mode, Sink};
use crate::meter::{Meter, Outcome};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::openai::{Endpoint, estimate_prompt_tokens, parse_request, rewrite_request};
use crate::teams::{ANONYMOUS, Identity};
use crate::telemetry::{TraceCtx, Tracer};
use crate::upstream::{SendError, error_chain};

/// Shared by every request: the current routing snapshot (swapped whole on reload, read without a
/// lock), the metrics, and the shutdown flag.
#[derive(Debug)]
pub struct State {
    pub routes: ArcSwap<Routes>,
    pub metrics: Arc<Metrics>,
    pub shutting_down: Arc<AtomicBool>,
    /// Fired at the drain deadline: streams still running end with an error event.
    pub cutoff: Arc<Cutoff>,
    /// Budgets, ledger, alerts.
    pub accounting: Arc<Accounting>,
    /// Span export, when configured (fixed at start: a reload does not turn it on or off).
    pub tracer: Option<Arc<Tracer>>,
}

impl State {
    pub fn new(
        routes: Routes,
        metrics: Arc<Metrics>,
        shutting_down: Arc<AtomicBool>,
        cutoff: Arc<Cutoff>,
        accounting: Arc<Accounting>,
        tracer: Option<Arc<Tracer>>,
    ) -> State {
        State { routes: ArcSwap::from_pointee(routes), metrics, shutting_down, cutoff, accounting, tracer }
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// What the proxy answers with: its own small bodies, or an upstream body under the meter.
// Nearly every response is `Metered`: boxing it would add an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Metered(MeteredBody<Incoming>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Metered(m) => Pin::new(m).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Metered(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Metered(m) => m.size_hint(),
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Full(Some(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(metrics: &Metrics, e: &ProxyError) -> Response<ProxyBody> {
    if let Some(reason) = e.reject {
        metrics.rejected(reason);
    }
    let mut resp = json_response(e.status, e.body());
    if let Some(secs) = e.retry_after_secs {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Serves one client request.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let received = Instant::now();
    let routes = state.routes.load_full();
    match route_and_forward(&state, &routes, req, received).await {
        Ok(resp) => resp,
        Err(e) => error_response(&state.metrics, &e),
    }
}

async fn route_and_forward<B>(
    state: &State,
    routes: &Routes,
    req: Request<B>,
    received: Instant,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    if path == "/v1/models" {
        if req.method() != Method::GET {
            return Err(ProxyError::method_not_allowed(req.method()));
        }
        return Ok(json_response(StatusCode::OK, routes.model_list()));
    }
    if !path.starts_with("/v1/") {
        return Err(ProxyError::not_found(path));
    }
    let endpoint = Endpoint::from_path(path);
    if req.method() != Method::POST {
        return Err(if endpoint == Endpoint::Other {
            ProxyError::not_found(path)
        } else {
            ProxyError::method_not_allowed(req.method())
        });
    }
    let identity = routes.teams.identify(req.headers());
    if routes.config.spend.require_client_key && identity == Identity::Unknown {
        return Err(ProxyError::invalid_api_key());
    }
    let (parts, body) = req.into_parts();
    let limits = &routes.config.limits;
    let body = read_body(body, &parts.headers, limits.max_request_body_bytes, limits.request_body_timeout).await?;
    // JSON is UTF-8 (RFC 8259): a body that is not is refused here rather than passed on.
    if std::str::from_utf8(&body).is_err() {
        return Err(ProxyError::bad_request("request body is not valid UTF-8"));
    }
    let view = parse_request(&body).map_err(ProxyError::bad_request)?;
    let model = view.model.as_deref().ok_or_else(ProxyError::missing_model)?;
    let route = match routes.route(model) {
        Some(r) => r,
        // Other `/v1/` paths go only to a configured model's backend, never to the default one.
        None if endpoint == Endpoint::Other => return Err(ProxyError::not_found(parts.uri.path())),
        None => match routes.fallback() {
            Some(r) => {
                state.metrics.model_label_overflow();
                r
            }
            None => return Err(ProxyError::model_not_found(model)),
        },
    };

    let prompt_tokens = estimate_prompt_tokens(&view);
    let team = match identity {
        Identity::Known(id) => id,
        Identity::Unknown => 0,
    };
    let team_name = routes.teams.names().get(team).cloned().unwrap_or_else(|| ANONYMOUS.into());
    let estimate = reservation_estimate(&route, prompt_tokens, view.max_output_tokens);
    let reservations =
        state.accounting.admit(&team_name, &route.label, estimate).await.map_err(|denied| match denied {
            Denied::Budget(r) => ProxyError::budget_exceeded(&r.budget, r.resets_at_ms, crate::ledger::now_ms()),
            Denied::StoreUnavailable => ProxyError::budget_store_unavailable(),
        })?;
    // Zero cost when tracing is off: no ids drawn, no header added.
    let trace = state.tracer.as_ref().map(|_| TraceCtx::from_headers(&parts.headers));
    let payer = Payer { team, team_name, unix_ms: crate::ledger::now_ms(), reservations, trace };
    let meter = Meter::new(endpoint, view.stream, received, prompt_tokens);
    let call =
        Call { endpoint, stream: view.stream, client_asked_usage: view.include_usage, parts: &parts, body: &body };
    let (bill, resp, meter, force_usage) = forward_with_failover(&route, &call, meter, payer).await?;
    Ok(respond(bill, resp, meter, force_usage, limits))
}

/// Output tokens assumed when a request sets no limit, for budget reservations only.
const RESERVED_OUTPUT_TOKENS: u64 = 1024;

/// What a request is reserved against budgets before it runs: its estimated prompt plus its
/// output limit (or [`RESERVED_OUTPUT_TOKENS`]) at the model's price.
fn reservation_estimate(route: &Route, prompt_tokens: u64, max_output: Option<u64>) -> u64 {
    let Some(price) = route.targets.first().and_then(|t| t.price.as_ref()) else { return 0 };
    let usage = crate::pricing::Usage {
        input: prompt_tokens,
        output: max_output.unwrap_or(RESERVED_OUTPUT_TOKENS),
        cached_input: 0,
        reasoning: 0,
    };
    crate::pricing::to_nano_usd(price.cost(&usage))
}

/// What a forwarded request needs from the client's request, whichever backend it goes to.
struct Call<'a> {
    endpoint: Endpoint,
    stream: bool,
    client_asked_usage: bool,
    parts: &'a http::request::Parts,
    body: &'a Bytes,
}

/// A 502/503, or a 429 with its Retry-After: the backend refused before doing any work.
fn refused(resp: &Response<Incoming>) -> Option<Option<std::time::Duration>> {
    match resp.status().as_u16() {
        502 | 503 => Some(None),
        429 => Some(
            resp.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs),
        ),
        _ => None,
    }
}

/// Sends to the best backend of the route; a refusal before any response byte (connection failure,
/// 502/503, 429) is retried once on another backend. A header timeout is never retried: the
/// backend may be generating, and a second attempt would be paid twice.
async fn forward_with_failover(
    route: &Route,
    call: &Call<'_>,
    meter: Meter,
    payer: Payer,
) -> Result<(Arc<Bill>, Response<Incoming>, Meter, bool), ProxyError> {
    let (mut meter, mut payer) = (meter, payer);
    let mut failed: Option<Arc<Target>> = None;
    loop {
        let Some(target) = route.pick(failed.as_ref()) else {
            return Err(ProxyError::model_not_found(&route.label));
        };
        let may_retry = failed.is_none() && route.has_alternative();
        let upstream = target.upstream.clone();
        let force_usage = call.endpoint.accepts_stream_options()
            && call.stream
            && upstream.cfg.inject_usage
            && !call.client_asked_usage;
        let mut up = upstream_request(&upstream, call, route.upstream_model.as_deref(), force_usage)?;
        if let Some(trace) = &payer.trace {
            up.headers_mut().insert(HeaderName::from_static("traceparent"), trace.traceparent());
        }
        // From here until the response is handed to the body wrapper, a dropped handler (the
        // client went away, or an HTTP/2 reset) still yields the request's one record.
        let attempt = Attempt::start(target, meter, payer);
        let sent = Instant::now();
        let failure = match upstream.send(up).await {
            Ok(resp) => match refused(&resp) {
                Some(retry_after) if may_retry => {
                    upstream.on_failure(retry_after);
                    let kind = if resp.status().is_server_error() {
                        UpstreamErrorKind::Http5xx
                    } else {
                        UpstreamErrorKind::Http4xx
                    };
                    (kind, None)
                }
                refusal => {
                    match refusal {
                        Some(retry_after) => upstream.on_failure(retry_after),
                        None if resp.status().is_server_error() => {}
                        None => upstream.on_success(),
                    }
                    let now = Instant::now();
                    upstream.series.observe_header_wait(now.duration_since(sent));
                    let (bill, mut meter) = attempt.hand_over();
                    meter.on_headers(resp.status().as_u16(), now);
                    return Ok((bill, resp, meter, force_usage));
                }
            },
            Err(SendError::HeaderTimeout) => (
                UpstreamErrorKind::HeaderTimeout,
                Some((ProxyError::gateway_timeout(&upstream.cfg.name), Outcome::HeaderTimeout)),
            ),
            Err(SendError::Connect { kind, detail }) => {
                tracing::warn!(backend = %upstream.cfg.name, error = %detail, "upstream request failed");
                upstream.on_failure(None);
                let fatal = (!may_retry).then(|| (ProxyError::bad_gateway(&upstream.cfg.name), Outcome::ConnectError));
                (kind, fatal)
            }
        };
        upstream.series.upstream_error(failure.0);
        match failure.1 {
            Some((error, outcome)) => {
                attempt.fail(error.status.as_u16(), outcome);
                return Err(error);
            }
            None => {
                upstream.series.retried_elsewhere();
                let (target, m, p) = attempt.abandon();
                (meter, payer) = (m, p);
                failed = Some(target);
            }
        }
    }
}

/// One request on one backend before its response headers: counts it in flight, and if dropped
/// unfinished (the handler future was cancelled) records it as a client disconnect or shutdown.
struct Attempt {
    target: Arc<Target>,
    /// Taken by exactly one of `hand_over`, `fail`, `abandon` or `Drop`.
    open: Option<(Meter, Payer)>,
}

impl Attempt {
    fn start(target: Arc<Target>, meter: Meter, payer: Payer) -> Attempt {
        target.upstream.series.in_flight_add(1);
        Attempt { target, open: Some((meter, payer)) }
    }

    fn take(&mut self) -> (Meter, Payer) {
        self.open.take().unwrap_or_else(|| unreachable!("an attempt is closed once"))
    }

    /// The response arrived: the body wrapper takes over the meter (and the in-flight count).
    fn hand_over(mut self) -> (Arc<Bill>, Meter) {
        let (meter, payer) = self.take();
        (Arc::new(Bill { target: self.target.clone(), payer }), meter)
    }

    /// Failed without a response: the record carries the status tollgate answers with.
    fn fail(mut self, status: u16, outcome: Outcome) {
        let (mut meter, payer) = self.take();
        meter.set_status(status);
        Bill { target: self.target.clone(), payer }.finish(meter.finish(outcome, Instant::now()));
    }

    /// Failed before any byte and will be retried elsewhere: no record, the meter goes on.
    fn abandon(mut self) -> (Arc<Target>, Meter, Payer) {
        self.target.upstream.series.in_flight_add(-1);
        let (meter, payer) = self.take();
        (self.target.clone(), meter, payer)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some((meter, payer)) = self.open.take() {
            let outcome = if self.target.shutting_down() { Outcome::Shutdown } else { Outcome::ClientDisconnect };
            Bill { target: self.target.clone(), payer }.finish(meter.finish(outcome, Instant::now()));
        }
    }
}

/// The request as one backend gets it.
fn upstream_request(
    upstream: &crate::upstream::Upstream,
    call: &Call<'_>,
    upstream_model: Option<&str>,
    force_usage: bool,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let body = if force_usage || upstream_model.is_some() {
        rewrite_request(call.body, upstream_model, force_usage).map_err(ProxyError::bad_request)?
    } else {
        call.body.clone()
    };
    let path_and_query = call.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = upstream.uri_for(path_and_query).map_err(|_| ProxyError::not_found(call.parts.uri.path()))?;
    let headers = upstream_headers(&call.parts.headers, upstream.cfg.api_key.as_ref().map(|k| k.expose()), body.len());
    let mut up = Request::new(Full::new(body));
    *up.method_mut() = Method::POST;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;
    Ok(up)
}

/// Wraps the upstream response for the client: hop-by-hop headers out, body under the meter.
fn respond(
    bill: Arc<Bill>,
    resp: Response<Incoming>,
    meter: Meter,
    force_usage: bool,
    limits: &crate::config::Limits,
) -> Response<ProxyBody> {
    let status = resp.status();
    let (mut head, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let (mode, end_outcome) = if !status.is_success() {
        let kind = if status.is_server_error() { UpstreamErrorKind::Http5xx } else { UpstreamErrorKind::Http4xx };
        bill.upstream_error(kind);
        (Mode::Opaque, Outcome::UpstreamError)
    } else if content_type_is(&head.headers, "text/event-stream") {
        if force_usage {
            // The forwarded stream may be shorter than the upstream's by the removed chunk.
            head.headers.remove(header::CONTENT_LENGTH);
        }
        head.headers.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        (Mode::sse(limits.max_sse_line_bytes, force_usage), Outcome::Success)
    } else if content_type_is(&head.headers, "application/json") {
        (Mode::json(limits.max_response_parse_bytes), Outcome::Success)
    } else {
        (Mode::Opaque, Outcome::Success)
    };
    let idle = bill.target.upstream.cfg.idle_timeout;
    let sink: Arc<dyn Sink> = bill;
    let body = MeteredBody::new(incoming, mode, meter, end_outcome, sink, idle);
    Response::from_parts(head, ProxyBody::Metered(body))
}

/// Reads the request body once, capped and under a timeout.
async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    cap: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(ProxyError::body_too_large(cap));
    }
    match tokio::time::timeout(timeout, Limited::new(body, cap).collect()).await {
        Err(_) => Err(ProxyError::request_timeout()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ProxyError::body_too_large(cap)),
        Ok(Err(e)) => Err(ProxyError::bad_request(format!("could not read the request body: {}", error_chain(&*e)))),
    }
}

fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(mime)))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, `Upgrade`, and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The client's headers as the backend gets them: no hop-by-hop headers, no `Host` (the client
/// sets it from the backend URI), an exact `Content-Length` for the possibly rewritten body,
/// `Accept-Encoding: identity` so streams stay readable, and the backend key when one is configured
/// (then the client's own `Authorization` is not forwarded).
fn upstream_headers(client: &HeaderMap, api_key: Option<&str>, body_len: usize) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some(key) = api_key {
        h.remove(header::AUTHORIZATION);
        if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {key}")) {
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
    } else if let Some(v) = h.get_mut(header::AUTHORIZATION) {
        v.set_sensitive(true);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);
    }

    #[test]
    fn backend_key_replaces_client_authorization() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client"));
        client.insert(header::HOST, HeaderValue::from_static("evil.example"));
        client.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let h = upstream_headers(&client, Some("backend-key"), 12);
        assert_eq!(h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()), Some("Bearer backend-key"));
        assert!(h.get(header::AUTHORIZATION).is_some_and(|v| v.is_sensitive()));
        assert!(h.get(header::HOST).is_none());
        assert_eq!(h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()), Some("12"));
        assert_eq!(h.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()), Some("identity"));
        let passthrough = upstream_headers(&client, None, 1);
        assert_eq!(passthrough.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()), Some("Bearer client"));
    }
}
