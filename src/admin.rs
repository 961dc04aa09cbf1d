//! The admin listener, separate from the proxy port. Endpoints:
//! - `GET /metrics`: Prometheus text exposition (format 0.0.4).
//! - `GET /healthz` and `GET /livez`: 200 while the process runs; never checks backends.
//! - `GET /readyz`: 200 while serving, 503 once shutdown has started (so load balancers drain it).
//! - `GET /api/budgets`: every budget's period, limit, spend, reservations, projection and the time
//!   the limit will be reached at the current burn rate (JSON).
//!
//! With `admin_token_env` set, everything but the three probes needs `Authorization: Bearer <token>`
//! (probes stay open: orchestrators call them without credentials, and they reveal nothing).

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
    let path = req.uri().path();
    let probe = matches!(path, "/healthz" | "/livez" | "/readyz");
    if !probe && let Some(token) = &state.routes.load().config.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "text/plain", "admin token required\n");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    match path {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, render(&state.metrics)),
        "/healthz" | "/livez" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.is_shutting_down() => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"),
        "/readyz" => text(StatusCode::OK, "text/plain", "ready\n"),
        "/api/budgets" => text(StatusCode::OK, "application/json", budgets_json(&state)),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn render(metrics: &Metrics) -> String {
    metrics.encode()
}

/// Compares secrets without an early exit, so response timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `/api/budgets` body. Money as exact decimal strings; times as RFC 3339.
fn budgets_json(state: &State) -> String {
    use crate::pricing::nano_usd_text as usd;
    let iso = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    let tz = state.routes.load().config.spend.timezone_name.clone();
    let budgets: Vec<serde_json::Value> = state
        .accounting
        .snapshots()
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "period": b.period.as_str(),
                "mode": match b.mode { crate::budget::Mode::Alert => "alert", crate::budget::Mode::Enforce => "enforce" },
                "period_start": iso(b.start_ms),
                "period_end": iso(b.end_ms),
                "limit_usd": usd(b.limit_nano_usd),
                "spend_usd": usd(b.spent_nano_usd),
                "reserved_usd": usd(b.reserved_nano_usd),
                "projected_spend_usd": usd(b.projected_nano_usd),
                "limit_reached_at": b.limit_reached_at_ms.map(iso),
                "rejections": b.rejections,
            })
        })
        .collect();
    serde_json::json!({"timezone": tz, "budgets": budgets}).to_string()
}
