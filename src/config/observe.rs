//! The observability keys of the config: SLA objectives (top level and per model) and the
//! OpenTelemetry export. Part of `config.rs`, split out by concept.

use serde::Deserialize;

use super::Validator;
use crate::sla::{Objectives, parse_window};

/// SLA keys, at the top level (the default) or per model (overriding it key by key).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSla {
    #[serde(default)]
    ttft_p95_ms: Option<u64>,
    #[serde(default)]
    min_output_tokens_per_second: Option<f64>,
    #[serde(default)]
    max_error_ratio: Option<f64>,
    #[serde(default)]
    window: Option<String>,
}

impl RawSla {
    pub(super) fn or(&self, default: &RawSla) -> RawSla {
        RawSla {
            ttft_p95_ms: self.ttft_p95_ms.or(default.ttft_p95_ms),
            min_output_tokens_per_second: self.min_output_tokens_per_second.or(default.min_output_tokens_per_second),
            max_error_ratio: self.max_error_ratio.or(default.max_error_ratio),
            window: self.window.clone().or_else(|| default.window.clone()),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    /// OTLP/HTTP base URL (`/v1/traces` is appended) or full traces URL.
    #[serde(default)]
    otlp_endpoint: Option<String>,
    #[serde(default)]
    service_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The full OTLP/HTTP traces URL.
    pub traces_endpoint: http::Uri,
    pub service_name: String,
}

impl Validator<'_> {
    /// `telemetry.otlp_endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL): the standard variables, as SDKs read them.
    pub(super) fn telemetry(&mut self, raw: RawTelemetry, env: &dyn Fn(&str) -> Option<String>) -> Option<Telemetry> {
        let (key, url) = match raw.otlp_endpoint {
            Some(u) => ("telemetry.otlp_endpoint", u),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.is_empty()) {
                Some(u) => ("telemetry.otlp_endpoint", u),
                None => (
                    "telemetry.otlp_endpoint",
                    format!(
                        "{}/v1/traces",
                        env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty())?.trim_end_matches('/')
                    ),
                ),
            },
        };
        let full = if url.trim_end_matches('/').ends_with("/v1/traces") {
            url.clone()
        } else {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        };
        let uri = match full.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => u,
            _ => {
                self.problem(key, format!("`{url}` is not an http:// or https:// URL"));
                return None;
            }
        };
        let service_name = raw.service_name.or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "tollgate".into());
        Some(Telemetry { traces_endpoint: uri, service_name })
    }

    /// A model's objectives: its own `sla` keys over the top-level ones.
    pub(super) fn sla(&mut self, path: &str, own: Option<&RawSla>, default: Option<&RawSla>) -> Option<Objectives> {
        let none = RawSla::default();
        let (key, raw) = match own {
            Some(o) => (format!("{path}.sla"), o.or(default.unwrap_or(&none))),
            None => ("sla".to_string(), default?.clone()),
        };
        if raw.ttft_p95_ms.is_none() && raw.min_output_tokens_per_second.is_none() && raw.max_error_ratio.is_none() {
            return None;
        }
        if raw.ttft_p95_ms == Some(0) {
            self.problem(format!("{key}.ttft_p95_ms"), "must be greater than 0");
        }
        if raw.min_output_tokens_per_second.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            self.problem(format!("{key}.min_output_tokens_per_second"), "must be a number greater than 0");
        }
        if raw.max_error_ratio.is_some_and(|v| !(0.0..1.0).contains(&v)) {
            self.problem(format!("{key}.max_error_ratio"), "must be a fraction from 0 up to (not including) 1");
        }
        let window = match &raw.window {
            None => std::time::Duration::from_secs(300),
            Some(w) => parse_window(w).unwrap_or_else(|| {
                self.problem(format!("{key}.window"), format!("`{w}` is not a duration like 30s, 5m or 1h"));
                std::time::Duration::from_secs(300)
            }),
        };
        Some(Objectives {
            ttft_p95: raw.ttft_p95_ms.map(std::time::Duration::from_millis),
            min_output_tokens_per_second: raw.min_output_tokens_per_second,
            max_error_ratio: raw.max_error_ratio,
            window,
        })
    }
}
