//! Every Prometheus metric tollgate exports: names, labels, buckets and the lock-free series the
//! request path writes to. The ONLY place metric names exist.
//!
//! Series are created when a config is loaded (one [`ModelSeries`] per configured backend × model,
//! one [`BackendSeries`] per backend) and handed to routes as `Arc`s, so recording a request is a
//! handful of relaxed atomic adds: no lock, no label allocation, no lookup by string. Scrapes walk
//! the series lists under a mutex that only config loads share.

mod export;
mod histogram;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

pub use histogram::Histogram;

use crate::meter::{MissingReason, Outcome, Record, UsageSource};
use crate::openai::Endpoint;
use crate::pricing::{Price, to_nano_usd};
use crate::sla::{Counts as SlaCounts, ModelSla, Objectives};

/// The `model` label of requests for models the config does not list.
pub const OTHER_MODEL: &str = "other";

/// Time to first token: the OTel GenAI list, extended for long prompts and reasoning models.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
];
/// Time per output token and inter-token gaps.
pub const TPOT_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Decode speed in tokens per second.
pub const TPS_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0];
/// Whole requests and upstream header waits: 0.01 s doubling to 655.36 s.
pub const DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84, 327.68, 655.36];

/// Status classes of `tollgate_requests_total`.
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    usize::from(status / 100).saturating_sub(2).min(3)
}

/// Why an upstream call failed; a bounded label of `tollgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Tls,
    HeaderTimeout,
    IdleTimeout,
    Reset,
    Http4xx,
    Http5xx,
    StreamError,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 8] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::HeaderTimeout,
        UpstreamErrorKind::IdleTimeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Http4xx,
        UpstreamErrorKind::Http5xx,
        UpstreamErrorKind::StreamError,
    ];
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::HeaderTimeout => "header_timeout",
            UpstreamErrorKind::IdleTimeout => "idle_timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Http4xx => "http_4xx",
            UpstreamErrorKind::Http5xx => "http_5xx",
            UpstreamErrorKind::StreamError => "stream_error",
        }
    }
}

/// Why tollgate refused a request itself; a bounded label of `tollgate_rejected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadRequest,
    ModelNotFound,
    BodyTooLarge,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Unauthorized,
    BudgetExceeded,
}

impl RejectReason {
    pub(crate) const ALL: [RejectReason; 8] = [
        RejectReason::BadRequest,
        RejectReason::ModelNotFound,
        RejectReason::BodyTooLarge,
        RejectReason::NotFound,
        RejectReason::MethodNotAllowed,
        RejectReason::Timeout,
        RejectReason::Unauthorized,
        RejectReason::BudgetExceeded,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::ModelNotFound => "model_not_found",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::NotFound => "not_found",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::Timeout => "client_timeout",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::BudgetExceeded => "budget_exceeded",
        }
    }
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

const REQUEST_CELLS: usize = 5 * 2 * STATUS_CLASSES.len() * Outcome::COUNT;

fn request_cell(endpoint: Endpoint, stream: bool, status: u16, outcome: Outcome) -> usize {
    ((endpoint.index() * 2 + usize::from(stream)) * STATUS_CLASSES.len() + status_class(status)) * Outcome::COUNT
        + outcome.index()
}

/// The series of one backend × model pair (model is a configured name or `other`).
#[derive(Debug)]
pub struct ModelSeries {
    backend: String,
    model: String,
    requests: Box<[AtomicU64; REQUEST_CELLS]>,
    duration: [Histogram; 10],
    ttft: Histogram,
    tpot: Histogram,
    tps: Histogram,
    itl: Histogram,
    cached_input: AtomicU64,
    reasoning_output: AtomicU64,
    unpriced: AtomicU64,
    usage_missing: [AtomicU64; 4],
}

impl ModelSeries {
    /// SLA thresholds become bucket boundaries, so "p95 within 2 s" is read exactly.
    fn new(backend: &str, model: &str, sla: Option<&Objectives>) -> ModelSeries {
        let ttft_target: Vec<f64> = sla.and_then(|o| o.ttft_p95).map(|d| d.as_secs_f64()).into_iter().collect();
        let min_tps: Vec<f64> = sla.and_then(|o| o.min_output_tokens_per_second).into_iter().collect();
        ModelSeries {
            backend: backend.to_string(),
            model: model.to_string(),
            requests: Box::new(counters()),
            duration: std::array::from_fn(|_| Histogram::new(DURATION_BUCKETS)),
            ttft: Histogram::with_extra(TTFT_BUCKETS, &ttft_target),
            tpot: Histogram::new(TPOT_BUCKETS),
            tps: Histogram::with_extra(TPS_BUCKETS, &min_tps),
            itl: Histogram::new(TPOT_BUCKETS),
            cached_input: AtomicU64::new(0),
            reasoning_output: AtomicU64::new(0),
            unpriced: AtomicU64::new(0),
            usage_missing: counters(),
        }
    }

    /// This series' share of a model's SLA counts (cumulative).
    pub fn sla_counts(&self, obj: &Objectives) -> SlaCounts {
        let mut c = SlaCounts::default();
        if let Some(t) = obj.ttft_p95 {
            c.ttft_total = self.ttft.count();
            c.ttft_within = self.ttft.count_le(t.as_secs_f64());
        }
        if let Some(min) = obj.min_output_tokens_per_second {
            c.tps_total = self.tps.count();
            c.tps_at_most_min = self.tps.count_le(min);
        }
        for (cell, n) in self.requests.iter().enumerate() {
            let n = n.load(Relaxed);
            let outcome = Outcome::ALL[cell % Outcome::COUNT];
            let class = (cell / Outcome::COUNT) % STATUS_CLASSES.len();
            c.requests += n;
            let failed = STATUS_CLASSES[class] == "5xx"
                || matches!(outcome, Outcome::StreamError | Outcome::UpstreamReset | Outcome::IdleTimeout);
            if failed {
                c.errors += n;
            }
        }
        c
    }

    /// One gap between token-bearing events, observed as it happens.
    pub fn observe_inter_token(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
    }

    /// Records a finished request; `price` is the model's (None: unpriced), `spend` the series of
    /// the request's team. Returns the exact cost.
    pub fn record(&self, r: &Record, price: Option<&Price>, spend: &SpendSeries) -> Option<rust_decimal::Decimal> {
        self.requests[request_cell(r.endpoint, r.stream, r.status, r.outcome)].fetch_add(1, Relaxed);
        self.duration[r.endpoint.index() * 2 + usize::from(r.stream)].observe(r.duration.as_secs_f64());
        if let Some(t) = r.ttft {
            self.ttft.observe(t.as_secs_f64());
        }
        if let Some(t) = r.tpot {
            self.tpot.observe(t.as_secs_f64());
        }
        if let Some(tps) = r.tokens_per_second() {
            self.tps.observe(tps);
        }
        if let Some(reason) = r.usage_missing {
            self.usage_missing[reason.index()].fetch_add(1, Relaxed);
        }
        let (usage, source) = r.usage?;
        spend.tokens[0][source.index()].fetch_add(usage.input, Relaxed);
        spend.tokens[1][source.index()].fetch_add(usage.output, Relaxed);
        self.cached_input.fetch_add(usage.cached_input, Relaxed);
        self.reasoning_output.fetch_add(usage.reasoning, Relaxed);
        let Some(price) = price else {
            self.unpriced.fetch_add(1, Relaxed);
            return None;
        };
        let cost = price.cost(&usage);
        spend.cost_nano_usd[source.index()].fetch_add(to_nano_usd(cost), Relaxed);
        Some(cost)
    }
}

/// Tokens and spend of one backend × model × team.
#[derive(Debug)]
pub struct SpendSeries {
    backend: String,
    model: String,
    team: String,
    /// [input/output][reported/estimated]
    tokens: [[AtomicU64; 2]; 2],
    /// Spend in whole nano-dollars, per usage source: money is never accumulated in f64.
    cost_nano_usd: [AtomicU64; 2],
}

/// What the exporter reads from the accounting side (budgets, ledger, alerts) at scrape time.
pub trait AccountingView: Send + Sync + std::fmt::Debug {
    fn budgets(&self) -> Vec<crate::budget::Snapshot>;
    /// Ledger rows (written, dropped because the queue was full, failed to write).
    fn ledger_rows(&self) -> (u64, u64, u64);
    /// [postgres ledger] Ledger rows waiting (in the writer's queue, in the PostgreSQL spool).
    fn ledger_backlog(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Alert deliveries (succeeded, failed after retries).
    fn alert_deliveries(&self) -> (u64, u64);
    /// Failed calls to the shared budget store.
    fn budget_store_errors(&self) -> u64;
}

/// The series of one backend.
#[derive(Debug)]
pub struct BackendSeries {
    backend: String,
    in_flight: AtomicI64,
    header_wait: Histogram,
    errors: [AtomicU64; 8],
    /// 1 while the backend is in rotation, 0 while it is ejected (until a request succeeds again).
    up: AtomicI64,
    retries: AtomicU64,
}

impl BackendSeries {
    pub fn set_up(&self, up: bool) {
        self.up.store(i64::from(up), Relaxed);
    }
    /// A request that failed on this backend before any byte reached the client was retried elsewhere.
    pub fn retried_elsewhere(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub fn in_flight_add(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }
    pub fn observe_header_wait(&self, d: Duration) {
        self.header_wait.observe(d.as_secs_f64());
    }
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
}

#[derive(Debug, Default)]
struct Store {
    models: Mutex<Vec<Arc<ModelSeries>>>,
    backends: Mutex<Vec<Arc<BackendSeries>>>,
    spend: Mutex<Vec<Arc<SpendSeries>>>,
    accounting: std::sync::OnceLock<Arc<dyn AccountingView>>,
    sla: Mutex<Vec<Arc<ModelSla>>>,
    label_overflow: AtomicU64,
    rejected: [AtomicU64; 8],
    reloads: [AtomicU64; 2],
}

/// The metrics of one tollgate process.
pub struct Metrics {
    store: Arc<Store>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let store = Arc::new(Store::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(export::Exporter(store.clone())));
        Metrics { store, registry }
    }

    /// The series of a backend × model pair, created on first use. Called at config load only.
    /// Buckets are fixed at creation: SLA thresholds changed by a reload become boundaries at the
    /// next restart.
    pub fn model_series(&self, backend: &str, model: &str, sla: Option<&Objectives>) -> Arc<ModelSeries> {
        let mut models = self.store.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = models.iter().find(|s| s.backend == backend && s.model == model) {
            return s.clone();
        }
        let s = Arc::new(ModelSeries::new(backend, model, sla));
        models.push(s.clone());
        s
    }

    /// The spend series of a backend × model × team, created on first use. Called at config load only.
    pub fn spend_series(&self, backend: &str, model: &str, team: &str) -> Arc<SpendSeries> {
        let mut all = self.store.spend.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.iter().find(|s| s.backend == backend && s.model == model && s.team == team) {
            return s.clone();
        }
        let s = Arc::new(SpendSeries {
            backend: backend.to_string(),
            model: model.to_string(),
            team: team.to_string(),
            tokens: [counters(), counters()],
            cost_nano_usd: counters(),
        });
        all.push(s.clone());
        s
    }

    /// The models' SLA states to export (replaced on every config load).
    pub fn set_sla(&self, sla: Vec<Arc<ModelSla>>) {
        *self.store.sla.lock().unwrap_or_else(|p| p.into_inner()) = sla;
    }

    /// Connects the budget, ledger and alert figures to the exposition (once, at start).
    pub fn set_accounting(&self, view: Arc<dyn AccountingView>) {
        let _ = self.store.accounting.set(view);
    }

    /// The series of a backend, created on first use. Called at config load only.
    pub fn backend_series(&self, backend: &str) -> Arc<BackendSeries> {
        let mut backends = self.store.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = backends.iter().find(|s| s.backend == backend) {
            return s.clone();
        }
        let s = Arc::new(BackendSeries {
            backend: backend.to_string(),
            in_flight: AtomicI64::new(0),
            header_wait: Histogram::new(DURATION_BUCKETS),
            errors: counters(),
            up: AtomicI64::new(1),
            retries: AtomicU64::new(0),
        });
        backends.push(s.clone());
        s
    }

    pub fn model_label_overflow(&self) {
        self.store.label_overflow.fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.store.rejected[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn config_reload(&self, ok: bool) {
        self.store.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests;
