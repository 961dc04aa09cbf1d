//! The routing snapshot built from one config: model name → route (its backends with weights, the
//! rename, the price and pre-resolved metric series). Rebuilt whole on reload and swapped in atomically.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::accounting::Accounting;
use crate::config::{Config, WeightedBackend};
use crate::meter::body::Cutoff;
use crate::metrics::{Metrics, ModelSeries, OTHER_MODEL, SpendSeries};
use crate::pricing::Price;
use crate::sla::Objectives;
use crate::teams::{ANONYMOUS, TeamId, Teams};
use crate::telemetry::Tracer;
use crate::upstream::Upstream;

/// Everything the request path needs about one model, resolved at config load.
#[derive(Debug)]
pub struct Route {
    /// The configured model name, or `other`.
    pub label: String,
    pub upstream_model: Option<String>,
    /// One per backend of the model, in config order.
    pub targets: Vec<Arc<Target>>,
}

/// One backend of one model: where a request goes and where its record lands.
#[derive(Debug)]
pub struct Target {
    pub label: Arc<str>,
    pub backend_name: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub weight: u32,
    pub price: Option<Price>,
    pub series: Arc<ModelSeries>,
    /// Tokens and spend per team, indexed by [`TeamId`] (0, anonymous, is always there).
    spend: Vec<Arc<SpendSeries>>,
    anonymous_spend: Arc<SpendSeries>,
    pub accounting: Arc<Accounting>,
    pub tracer: Option<Arc<Tracer>>,
    pub upstream_model: Option<String>,
    shutting_down: Arc<AtomicBool>,
    pub cutoff: Arc<Cutoff>,
}

impl Target {
    pub fn spend_series(&self, team: TeamId) -> &SpendSeries {
        self.spend.get(team).unwrap_or(&self.anonymous_spend)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

impl Route {
    /// Weighted least in-flight among backends in rotation, skipping `exclude` (the one that just
    /// failed). Ties, such as every backend idle, are broken at random in proportion to weight, so
    /// light traffic still spreads by weight. When every backend is ejected, the least loaded is
    /// tried anyway: failing open beats refusing everything.
    pub fn pick(&self, exclude: Option<&Arc<Target>>) -> Option<Arc<Target>> {
        let candidates = || self.targets.iter().filter(move |t| exclude.is_none_or(|e| !Arc::ptr_eq(t, e)));
        let any_available = candidates().any(|t| t.upstream.available());
        let eligible = || candidates().filter(move |t| !any_available || t.upstream.available());
        // Compare in_flight / weight by cross-multiplying: no floats, no division.
        let load = |t: &Target| (t.upstream.series.in_flight().max(0) as u128, u128::from(t.weight));
        let best = eligible().min_by(|a, b| {
            let ((ia, wa), (ib, wb)) = (load(a), load(b));
            (ia * wb).cmp(&(ib * wa))
        })?;
        let (ib, wb) = load(best);
        let tied = || eligible().filter(move |t| load(t).0 * wb == ib * load(t).1);
        let total: u64 = tied().map(|t| u64::from(t.weight)).sum();
        let mut ticket = fastrand::u64(0..total.max(1));
        for t in tied() {
            if ticket < u64::from(t.weight) {
                return Some(t.clone());
            }
            ticket -= u64::from(t.weight);
        }
        Some(best.clone())
    }

    /// Whether a failed attempt has somewhere else to go.
    pub fn has_alternative(&self) -> bool {
        self.targets.len() > 1
    }
}

/// The immutable routing table of one config.
#[derive(Debug)]
pub struct Routes {
    pub config: Arc<Config>,
    pub teams: Arc<Teams>,
    pub upstreams: Vec<Arc<Upstream>>,
    by_model: HashMap<String, Arc<Route>>,
    fallback: Option<Arc<Route>>,
    model_list: Bytes,
}

impl Routes {
    /// Builds clients and resolves every metric series the config can produce.
    pub fn build(
        config: Config,
        metrics: &Metrics,
        accounting: &Arc<Accounting>,
        shutting_down: &Arc<AtomicBool>,
        cutoff: &Arc<Cutoff>,
        tracer: &Option<Arc<Tracer>>,
    ) -> anyhow::Result<Routes> {
        let teams = Arc::new(Teams::new(&config.spend.clients));
        let upstreams = config
            .backends
            .iter()
            .map(|b| Upstream::new(b.clone(), metrics.backend_series(&b.name)).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let route = |label: &str,
                     backends: &[WeightedBackend],
                     upstream_model: Option<String>,
                     price: Option<Price>,
                     sla: Option<&Objectives>| {
            let targets = backends
                .iter()
                .map(|b| {
                    let upstream = upstreams[b.index].clone();
                    let backend = upstream.cfg.name.as_str();
                    Arc::new(Target {
                        label: label.into(),
                        backend_name: backend.into(),
                        series: metrics.model_series(backend, label, sla),
                        spend: teams.names().iter().map(|t| metrics.spend_series(backend, label, t)).collect(),
                        anonymous_spend: metrics.spend_series(backend, label, ANONYMOUS),
                        weight: b.weight,
                        price: price.clone(),
                        accounting: accounting.clone(),
                        tracer: tracer.clone(),
                        upstream_model: upstream_model.clone(),
                        shutting_down: shutting_down.clone(),
                        cutoff: cutoff.clone(),
                        upstream,
                    })
                })
                .collect();
            Arc::new(Route { label: label.to_string(), upstream_model, targets })
        };
        let by_model = config
            .models
            .iter()
            .map(|m| {
                let r = route(&m.name, &m.backends, m.upstream_model.clone(), m.price.clone(), m.sla.as_ref());
                (m.name.clone(), r)
            })
            .collect();
        let fallback = config
            .default_backend
            .map(|index| route(OTHER_MODEL, &[WeightedBackend { index, weight: 1 }], None, None, None));
        let list = serde_json::json!({
            "object": "list",
            "data": config.models.iter().map(|m| serde_json::json!({
                "id": m.name, "object": "model", "created": 0, "owned_by": "tollgate",
            })).collect::<Vec<_>>(),
        });
        let model_list = Bytes::from(serde_json::to_vec(&list)?);
        Ok(Routes { config: Arc::new(config), teams, upstreams, by_model, fallback, model_list })
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
