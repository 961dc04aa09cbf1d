//! Errors tollgate itself answers on the request path: an HTTP status, an OpenAI-shaped JSON body
//! (`{"error":{"message","type","param","code"}}`) and, for refusals, a bounded metric reason.

use bytes::Bytes;
use http::StatusCode;

use crate::metrics::RejectReason;
use crate::openai::error_json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    /// OpenAI's `error.code`.
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
    /// Set when tollgate refused the request without forwarding it.
    pub reject: Option<RejectReason>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_secs: Option<u64>,
}

impl ProxyError {
    fn refuse(status: StatusCode, code: &'static str, reason: RejectReason, message: String) -> ProxyError {
        ProxyError {
            status,
            kind: "invalid_request_error",
            code: Some(code),
            param: None,
            message,
            reject: Some(reason),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ProxyError {
        Self::refuse(StatusCode::BAD_REQUEST, "invalid_request", RejectReason::BadRequest, message.into())
    }

    pub fn missing_model() -> ProxyError {
        ProxyError { param: Some("model"), ..Self::bad_request("you must provide a model parameter") }
    }

    pub fn model_not_found(model: &str) -> ProxyError {
        // The client's own string is echoed in the body (never in a metric label).
        let shown: String = model.chars().take(200).collect();
        ProxyError {
            param: Some("model"),
            ..Self::refuse(
                StatusCode::NOT_FOUND,
                "model_not_found",
                RejectReason::ModelNotFound,
                format!("The model `{shown}` does not exist or is not served by this gateway"),
            )
        }
    }

    pub fn body_too_large(limit: usize) -> ProxyError {
        Self::refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            RejectReason::BodyTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn not_found(path: &str) -> ProxyError {
        let shown: String = path.chars().take(200).collect();
        Self::refuse(StatusCode::NOT_FOUND, "not_found", RejectReason::NotFound, format!("no route for `{shown}`"))
    }

    pub fn method_not_allowed(method: &http::Method) -> ProxyError {
        Self::refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            RejectReason::MethodNotAllowed,
            format!("method {method} is not allowed here"),
        )
    }

    pub fn request_timeout() -> ProxyError {
        Self::refuse(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            RejectReason::Timeout,
            "the request body did not arrive in time".into(),
        )
    }

    /// The backend could not be reached. The body names the backend by its config name only: never
    /// its URL, which can carry internal host names.
    pub fn bad_gateway(backend: &str) -> ProxyError {
        ProxyError {
            status: StatusCode::BAD_GATEWAY,
            kind: "upstream_error",
            code: Some("upstream_unavailable"),
            param: None,
            message: format!("backend `{backend}` could not be reached"),
            reject: None,
            retry_after_secs: None,
        }
    }

    pub fn gateway_timeout(backend: &str) -> ProxyError {
        ProxyError {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "upstream_error",
            code: Some("upstream_timeout"),
            param: None,
            message: format!("backend `{backend}` sent no response headers in time"),
            reject: None,
            retry_after_secs: None,
        }
    }

    /// 401: `require_client_key` is on and the request's key is missing or unknown.
    pub fn invalid_api_key() -> ProxyError {
        Self::refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            RejectReason::Unauthorized,
            "Incorrect API key provided: this gateway requires a key listed in its `clients`".into(),
        )
    }

    /// 429: an enforced budget is spent until its period resets.
    pub fn budget_exceeded(budget: &str, resets_at_ms: i64, now_ms: i64) -> ProxyError {
        let reset = jiff::Timestamp::from_millisecond(resets_at_ms).map(|t| t.to_string()).unwrap_or_default();
        ProxyError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "budget_exceeded",
            code: Some("budget_exceeded"),
            param: None,
            message: format!("Budget `{budget}` is spent for this period; it resets at {reset}"),
            reject: Some(RejectReason::BudgetExceeded),
            retry_after_secs: Some(u64::try_from((resets_at_ms - now_ms).max(0) / 1000 + 1).unwrap_or(1)),
        }
    }

    /// 503: budgets are shared through Redis, Redis is unreachable, and `fail_open` is off.
    pub fn budget_store_unavailable() -> ProxyError {
        ProxyError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: Some("budget_store_unavailable"),
            param: None,
            message: "the shared budget store is unreachable and this gateway is set to fail closed".into(),
            reject: Some(RejectReason::BudgetExceeded),
            retry_after_secs: Some(5),
        }
    }

    pub fn body(&self) -> Bytes {
        error_json(&self.message, self.kind, self.param, self.code)
    }
}

/// The SSE event tollgate appends when a stream it is forwarding breaks after the 200 was sent,
/// so that clients do not mistake a truncated answer for a complete one.
pub fn stream_error_event(message: &str, code: &str) -> Bytes {
    let json = error_json(message, "upstream_error", None, Some(code));
    let mut out = Vec::with_capacity(json.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_openai_shaped() {
        let e = ProxyError::model_not_found("gpt-x");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap_or_default();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains("gpt-x"));

        let ev = stream_error_event("backend `b` stopped sending", "upstream_idle_timeout");
        assert!(ev.starts_with(b"data: {\"error\":"));
        assert!(ev.ends_with(b"\n\n"));
    }
}
