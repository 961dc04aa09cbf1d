//! The routing snapshot built from one config: model name → route (backend, rename, price and
//! pre-resolved metric series). Rebuilt whole on reload and swapped in atomically.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::meter::Record;
use crate::meter::body::Sink;
use crate::metrics::{Metrics, ModelSeries, OTHER_MODEL, UpstreamErrorKind};
use crate::pricing::Price;
use crate::upstream::Upstream;

/// Everything the request path needs about one model, resolved at config load.
#[derive(Debug)]
pub struct Route {
    /// The configured model name, or `other`.
    pub label: String,
    pub upstream: Arc<Upstream>,
    pub upstream_model: Option<String>,
    pub price: Option<Price>,
    pub series: Arc<ModelSeries>,
    shutting_down: Arc<AtomicBool>,
}

impl Sink for Route {
    fn inter_token(&self, gap: Duration) {
        self.series.observe_inter_token(gap);
    }

    fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream.series.upstream_error(kind);
    }

    fn finish(&self, record: Record) {
        self.upstream.series.in_flight_add(-1);
        let cost = self.series.record(&record, self.price.as_ref());
        tracing::debug!(
            model = %self.label,
            backend = %self.upstream.cfg.name,
            endpoint = record.endpoint.as_str(),
            outcome = record.outcome.as_str(),
            status = record.status,
            ttft_ms = record.ttft.map(|d| d.as_secs_f64() * 1e3),
            duration_ms = record.duration.as_secs_f64() * 1e3,
            input_tokens = record.usage.map(|u| u.0.input),
            output_tokens = record.usage.map(|u| u.0.output),
            usage_source = record.usage.map(|u| u.1.as_str()),
            cost_usd = cost.map(|c| c.to_string()),
            "request finished"
        );
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// The immutable routing table of one config.
#[derive(Debug)]
pub struct Routes {
    pub config: Arc<Config>,
    pub upstreams: Vec<Arc<Upstream>>,
    by_model: HashMap<String, Arc<Route>>,
    fallback: Option<Arc<Route>>,
    model_list: Bytes,
}

impl Routes {
    /// Builds clients and resolves every metric series the config can produce.
    pub fn build(config: Config, metrics: &Metrics, shutting_down: &Arc<AtomicBool>) -> anyhow::Result<Routes> {
        let upstreams = config
            .backends
            .iter()
            .map(|b| Upstream::new(b.clone(), metrics.backend_series(&b.name)).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let route = |label: &str, backend: usize, upstream_model: Option<String>, price: Option<Price>| {
            let upstream = upstreams[backend].clone();
            Arc::new(Route {
                label: label.to_string(),
                series: metrics.model_series(&upstream.cfg.name, label),
                upstream,
                upstream_model,
                price,
                shutting_down: shutting_down.clone(),
            })
        };
        let by_model = config
            .models
            .iter()
            .map(|m| (m.name.clone(), route(&m.name, m.backend, m.upstream_model.clone(), m.price.clone())))
            .collect();
        let fallback = config.default_backend.map(|b| route(OTHER_MODEL, b, None, None));
        let list = serde_json::json!({
            "object": "list",
            "data": config.models.iter().map(|m| serde_json::json!({
                "id": m.name, "object": "model", "created": 0, "owned_by": "tollgate",
            })).collect::<Vec<_>>(),
        });
        let model_list = Bytes::from(serde_json::to_vec(&list)?);
        Ok(Routes { config: Arc::new(config), upstreams, by_model, fallback, model_list })
    }

    pub fn route(&self, model: &str) -> Option<Arc<Route>> {
        self.by_model.get(model).cloned()
    }

    /// The route of models the config does not list, when a `default_backend` is set.
    pub fn fallback(&self) -> Option<Arc<Route>> {
        self.fallback.clone()
    }

    /// The `GET /v1/models` body: the configured models.
    pub fn model_list(&self) -> Bytes {
        self.model_list.clone()
    }
}
