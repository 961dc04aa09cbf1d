//! Every Prometheus metric tollgate exports: names, labels, buckets and the lock-free series the
//! request path writes to. The ONLY place metric names exist.
//!
//! Series are created when a config is loaded (one [`ModelSeries`] per configured backend × model,
//! one [`BackendSeries`] per backend) and handed to routes as `Arc`s, so recording a request is a
//! handful of relaxed atomic adds: no lock, no label allocation, no lookup by string. Scrapes walk
//! the series lists under a mutex that only config loads share.

mod histogram;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use histogram::Histogram;

use crate::meter::{MissingReason, Outcome, Record, UsageSource};
use crate::openai::Endpoint;
use crate::pricing::{Price, to_nano_usd};

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
}

impl RejectReason {
    const ALL: [RejectReason; 6] = [
        RejectReason::BadRequest,
        RejectReason::ModelNotFound,
        RejectReason::BodyTooLarge,
        RejectReason::NotFound,
        RejectReason::MethodNotAllowed,
        RejectReason::Timeout,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::ModelNotFound => "model_not_found",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::NotFound => "not_found",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::Timeout => "client_timeout",
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
    /// [input/output][reported/estimated]
    tokens: [[AtomicU64; 2]; 2],
    cached_input: AtomicU64,
    reasoning_output: AtomicU64,
    /// Spend in whole nano-dollars, per usage source: money is never accumulated in f64.
    cost_nano_usd: [AtomicU64; 2],
    unpriced: AtomicU64,
    usage_missing: [AtomicU64; 4],
}

impl ModelSeries {
    fn new(backend: &str, model: &str) -> ModelSeries {
        ModelSeries {
            backend: backend.to_string(),
            model: model.to_string(),
            requests: Box::new(counters()),
            duration: std::array::from_fn(|_| Histogram::new(DURATION_BUCKETS)),
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            tps: Histogram::new(TPS_BUCKETS),
            itl: Histogram::new(TPOT_BUCKETS),
            tokens: [counters(), counters()],
            cached_input: AtomicU64::new(0),
            reasoning_output: AtomicU64::new(0),
            cost_nano_usd: counters(),
            unpriced: AtomicU64::new(0),
            usage_missing: counters(),
        }
    }

    /// One gap between token-bearing events, observed as it happens.
    pub fn observe_inter_token(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
    }

    /// Records a finished request; `price` is the model's (None: unpriced). Returns the exact cost.
    pub fn record(&self, r: &Record, price: Option<&Price>) -> Option<rust_decimal::Decimal> {
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
        self.tokens[0][source.index()].fetch_add(usage.input, Relaxed);
        self.tokens[1][source.index()].fetch_add(usage.output, Relaxed);
        self.cached_input.fetch_add(usage.cached_input, Relaxed);
        self.reasoning_output.fetch_add(usage.reasoning, Relaxed);
        let Some(price) = price else {
            self.unpriced.fetch_add(1, Relaxed);
            return None;
        };
        let cost = price.cost(&usage);
        self.cost_nano_usd[source.index()].fetch_add(to_nano_usd(cost), Relaxed);
        Some(cost)
    }
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
    label_overflow: AtomicU64,
    rejected: [AtomicU64; 6],
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
        registry.register_collector(Box::new(Exporter(store.clone())));
        Metrics { store, registry }
    }

    /// The series of a backend × model pair, created on first use. Called at config load only.
    pub fn model_series(&self, backend: &str, model: &str) -> Arc<ModelSeries> {
        let mut models = self.store.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = models.iter().find(|s| s.backend == backend && s.model == model) {
            return s.clone();
        }
        let s = Arc::new(ModelSeries::new(backend, model));
        models.push(s.clone());
        s
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

#[derive(Debug)]
struct Exporter(Arc<Store>);

/// Picks one per-model histogram or counter, so families that share a shape share their loop.
type HistogramOf = fn(&ModelSeries) -> &Histogram;
type CounterOf = fn(&ModelSeries) -> &AtomicU64;

/// Starts one metric family: `# HELP` and `# TYPE` (counters get `_total` appended).
fn family<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    ty: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, ty)
}

fn counter(m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, v: u64) -> std::fmt::Result {
    m.encode_family(labels)?.encode_counter::<NoLabelSet, _, f64>(&v, None)
}

impl Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let models = self.0.models.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let backends = self.0.backends.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bm = |s: &ModelSeries| [("backend", s.backend.clone()), ("model", s.model.clone())];

        let version = [("version", env!("CARGO_PKG_VERSION"))];
        family(&mut enc, "tollgate_build_info", "Build information; always 1.", MetricType::Gauge)?
            .encode_family(&version)?
            .encode_gauge(&1i64)?;

        let mut m = family(&mut enc, "tollgate_requests", "Proxied requests by how they ended.", MetricType::Counter)?;
        for s in &models {
            for (cell, n) in s.requests.iter().enumerate() {
                let n = n.load(Relaxed);
                if n == 0 {
                    continue;
                }
                let outcome = Outcome::ALL[cell % Outcome::COUNT];
                let class = STATUS_CLASSES[(cell / Outcome::COUNT) % STATUS_CLASSES.len()];
                let es = cell / Outcome::COUNT / STATUS_CLASSES.len();
                let labels = [
                    ("backend", s.backend.as_str()),
                    ("model", s.model.as_str()),
                    ("endpoint", Endpoint::ALL[es / 2].as_str()),
                    ("stream", if es % 2 == 1 { "true" } else { "false" }),
                    ("status_class", class),
                    ("outcome", outcome.as_str()),
                ];
                counter(&mut m, &labels, n)?;
            }
        }

        let mut m = family(
            &mut enc,
            "tollgate_request_duration_seconds",
            "Request received to last byte sent to the client.",
            MetricType::Histogram,
        )?;
        for s in &models {
            for (i, h) in s.duration.iter().enumerate() {
                let labels = [
                    ("backend", s.backend.as_str()),
                    ("model", s.model.as_str()),
                    ("endpoint", Endpoint::ALL[i / 2].as_str()),
                    ("stream", if i % 2 == 1 { "true" } else { "false" }),
                ];
                h.encode_if_used(&mut m, &labels)?;
            }
        }

        let histograms: [(&str, &str, HistogramOf); 4] = [
            (
                "tollgate_time_to_first_token_seconds",
                "Streams: request received to the first event carrying generated output.",
                |s| &s.ttft,
            ),
            (
                "tollgate_time_per_output_token_seconds",
                "Per request: (last token time - first token time) / (output tokens - 1).",
                |s| &s.tpot,
            ),
            ("tollgate_output_tokens_per_second", "Per request decode speed: 1 / time per output token.", |s| &s.tps),
            (
                "tollgate_inter_token_latency_seconds",
                "Each gap between consecutive token-bearing stream events.",
                |s| &s.itl,
            ),
        ];
        for (name, help, get) in histograms {
            let mut m = family(&mut enc, name, help, MetricType::Histogram)?;
            for s in &models {
                get(s).encode(&mut m, &bm(s))?;
            }
        }

        let mut m = family(
            &mut enc,
            "tollgate_tokens",
            "Tokens by type and by where the count comes from.",
            MetricType::Counter,
        )?;
        for s in &models {
            for (t, token_type) in ["input", "output"].iter().enumerate() {
                for source in UsageSource::ALL {
                    let labels = [
                        ("backend", s.backend.as_str()),
                        ("model", s.model.as_str()),
                        ("token_type", token_type),
                        ("usage_source", source.as_str()),
                    ];
                    counter(&mut m, &labels, s.tokens[t][source.index()].load(Relaxed))?;
                }
            }
        }

        let subsets: [(&str, &str, CounterOf); 3] = [
            ("tollgate_cached_input_tokens", "Cached prompt tokens (a subset of input tokens).", |s| &s.cached_input),
            ("tollgate_reasoning_output_tokens", "Reasoning tokens (a subset of output tokens).", |s| {
                &s.reasoning_output
            }),
            ("tollgate_unpriced_requests", "Requests with usage whose model has no price: never counted as $0.", |s| {
                &s.unpriced
            }),
        ];
        for (name, help, get) in subsets {
            let mut m = family(&mut enc, name, help, MetricType::Counter)?;
            for s in &models {
                counter(&mut m, &bm(s), get(s).load(Relaxed))?;
            }
        }

        let mut m =
            family(&mut enc, "tollgate_cost_usd", "Spend from the price table, in US dollars.", MetricType::Counter)?;
        for s in &models {
            for source in UsageSource::ALL {
                let labels =
                    [("backend", s.backend.as_str()), ("model", s.model.as_str()), ("usage_source", source.as_str())];
                // Exact integer nano-dollars become a float only here, at the exposition edge.
                let usd = s.cost_nano_usd[source.index()].load(Relaxed) as f64 / 1e9;
                m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, f64>(&usd, None)?;
            }
        }

        let mut m = family(
            &mut enc,
            "tollgate_usage_missing",
            "2xx responses without backend usage, by reason (their tokens are estimated).",
            MetricType::Counter,
        )?;
        for s in &models {
            for reason in MissingReason::ALL {
                let n = s.usage_missing[reason.index()].load(Relaxed);
                if n > 0 {
                    let labels =
                        [("backend", s.backend.as_str()), ("model", s.model.as_str()), ("reason", reason.as_str())];
                    counter(&mut m, &labels, n)?;
                }
            }
        }

        let mut m = family(&mut enc, "tollgate_requests_in_flight", "Requests being proxied now.", MetricType::Gauge)?;
        for b in &backends {
            m.encode_family(&[("backend", b.backend.as_str())])?.encode_gauge(&b.in_flight.load(Relaxed))?;
        }
        let mut m = family(
            &mut enc,
            "tollgate_upstream_header_seconds",
            "Request forwarded to upstream response headers.",
            MetricType::Histogram,
        )?;
        for b in &backends {
            b.header_wait.encode(&mut m, &[("backend", b.backend.as_str())])?;
        }
        let mut m = family(&mut enc, "tollgate_upstream_errors", "Upstream failures by kind.", MetricType::Counter)?;
        for b in &backends {
            for kind in UpstreamErrorKind::ALL {
                let n = b.errors[kind as usize].load(Relaxed);
                if n > 0 {
                    counter(&mut m, &[("backend", b.backend.as_str()), ("kind", kind.as_str())], n)?;
                }
            }
        }

        let mut m = family(
            &mut enc,
            "tollgate_backend_up",
            "1 while the backend is in rotation, 0 while it is ejected after failures.",
            MetricType::Gauge,
        )?;
        for b in &backends {
            m.encode_family(&[("backend", b.backend.as_str())])?.encode_gauge(&b.up.load(Relaxed))?;
        }
        let mut m = family(
            &mut enc,
            "tollgate_upstream_retries",
            "Requests that failed on this backend before any byte reached the client and were retried on another.",
            MetricType::Counter,
        )?;
        for b in &backends {
            counter(&mut m, &[("backend", b.backend.as_str())], b.retries.load(Relaxed))?;
        }

        let mut m = family(
            &mut enc,
            "tollgate_model_label_overflow",
            "Requests for models the config does not list, labelled model=\"other\".",
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, f64>(&self.0.label_overflow.load(Relaxed), None)?;
        let mut m = family(
            &mut enc,
            "tollgate_rejected_requests",
            "Requests tollgate answered itself without forwarding, by reason.",
            MetricType::Counter,
        )?;
        for reason in RejectReason::ALL {
            counter(&mut m, &[("reason", reason.as_str())], self.0.rejected[reason as usize].load(Relaxed))?;
        }
        let mut m = family(&mut enc, "tollgate_config_reloads", "Config reloads by result.", MetricType::Counter)?;
        for (i, result) in ["success", "failure"].iter().enumerate() {
            counter(&mut m, &[("result", *result)], self.0.reloads[i].load(Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
