//! The admin listener, separate from the proxy port. Endpoints:
//! - `GET /metrics`: Prometheus text exposition (format 0.0.4).
//! - `GET /healthz` and `GET /livez`: 200 while the process runs; never checks backends.
//! - `GET /readyz`: 200 while serving, 503 once shutdown has started (so load balancers drain it).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::proxy::State;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, render(&state.metrics)),
        "/healthz" | "/livez" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.is_shutting_down() => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"),
        "/readyz" => text(StatusCode::OK, "text/plain", "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn render(metrics: &Metrics) -> String {
    metrics.encode()
}
