//! The Prometheus collector: walks every series at scrape time and writes the exposition.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::*;

#[derive(Debug)]
pub(super) struct Exporter(pub(super) Arc<Store>);

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

        let spend = self.0.spend.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut m = family(
            &mut enc,
            "tollgate_tokens",
            "Tokens by type, team and where the count comes from.",
            MetricType::Counter,
        )?;
        for s in &spend {
            for (t, token_type) in ["input", "output"].iter().enumerate() {
                for source in UsageSource::ALL {
                    let labels = [
                        ("backend", s.backend.as_str()),
                        ("model", s.model.as_str()),
                        ("team", s.team.as_str()),
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
        for s in &spend {
            for source in UsageSource::ALL {
                let labels = [
                    ("backend", s.backend.as_str()),
                    ("model", s.model.as_str()),
                    ("team", s.team.as_str()),
                    ("usage_source", source.as_str()),
                ];
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
        let sla = self.0.sla.lock().unwrap_or_else(|p| p.into_inner()).clone();
        encode_sla(&mut enc, &sla)?;
        if let Some(view) = self.0.accounting.get() {
            encode_accounting(&mut enc, view.as_ref())?;
        }
        Ok(())
    }
}

/// Picks one figure of a budget snapshot.
type BudgetFigure = fn(&crate::budget::Snapshot) -> u64;

/// Budget, ledger and alert families.
fn encode_accounting(enc: &mut DescriptorEncoder<'_>, view: &dyn AccountingView) -> std::fmt::Result {
    let budgets = view.budgets();
    let gauges: [(&str, &str, BudgetFigure); 3] = [
        ("tollgate_budget_limit_usd", "The budget's limit for its current period.", |b| b.limit_nano_usd),
        (
            "tollgate_budget_spend_usd",
            "Spend in the budget's current calendar period (resets at the period boundary).",
            |b| b.spent_nano_usd,
        ),
        ("tollgate_budget_projected_spend_usd", "Spend projected to the period's end at the burn rate so far.", |b| {
            b.projected_nano_usd
        }),
    ];
    for (name, help, get) in gauges {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for b in &budgets {
            let usd = get(b) as f64 / 1e9;
            m.encode_family(&[("budget", b.name.as_str()), ("period", b.period.as_str())])?.encode_gauge(&usd)?;
        }
    }
    let mut m = family(
        enc,
        "tollgate_budget_rejections",
        "Requests refused because an enforced budget was spent.",
        MetricType::Counter,
    )?;
    for b in &budgets {
        counter(&mut m, &[("budget", b.name.as_str()), ("period", b.period.as_str())], b.rejections)?;
    }
    let (written, dropped, failed) = view.ledger_rows();
    let mut m = family(
        enc,
        "tollgate_ledger_rows",
        "Ledger rows by result (dropped: the write queue was full).",
        MetricType::Counter,
    )?;
    for (result, n) in [("written", written), ("dropped", dropped), ("failed", failed)] {
        counter(&mut m, &[("result", result)], n)?;
    }
    // [postgres ledger] Backlog gauges.
    let (queued, spooled) = view.ledger_backlog();
    for (name, help, v) in [
        ("tollgate_ledger_queue_rows", "Ledger rows queued for the writer thread.", queued),
        (
            "tollgate_ledger_spool_rows",
            "Ledger rows spooled locally while PostgreSQL is unreachable, waiting for replay.",
            spooled,
        ),
    ] {
        family(enc, name, help, MetricType::Gauge)?.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))?;
    }
    let mut m = family(
        enc,
        "tollgate_budget_store_errors",
        "Failed calls to the shared budget store (Redis); with fail_open requests went on unreserved.",
        MetricType::Counter,
    )?;
    m.encode_counter::<NoLabelSet, _, f64>(&view.budget_store_errors(), None)?;
    let (sent, undelivered) = view.alert_deliveries();
    let mut m = family(
        enc,
        "tollgate_alert_deliveries",
        "Webhook alert deliveries by result (failure: after all retries).",
        MetricType::Counter,
    )?;
    for (result, n) in [("success", sent), ("failure", undelivered)] {
        counter(&mut m, &[("result", result)], n)?;
    }
    Ok(())
}

/// Picks one target of a model's objectives.
type TargetOf = fn(&crate::sla::Objectives) -> Option<f64>;

/// SLA targets (so rules and dashboards read them instead of copying numbers) and states.
fn encode_sla(enc: &mut DescriptorEncoder<'_>, sla: &[Arc<crate::sla::ModelSla>]) -> std::fmt::Result {
    use crate::sla::Objective;
    let targets: [(&str, &str, Objective, TargetOf); 3] = [
        (
            "tollgate_sla_target_seconds",
            "SLA target: 95 % of requests get their first token within this.",
            Objective::TtftP95,
            |o| o.ttft_p95.map(|d| d.as_secs_f64()),
        ),
        (
            "tollgate_sla_target_tokens_per_second",
            "SLA target: the median request decodes at least this fast.",
            Objective::MinOutputTokensPerSecond,
            |o| o.min_output_tokens_per_second,
        ),
        (
            "tollgate_sla_target_ratio",
            "SLA target: at most this fraction of requests fail.",
            Objective::MaxErrorRatio,
            |o| o.max_error_ratio,
        ),
    ];
    for (name, help, objective, get) in targets {
        let mut m = family(enc, name, help, MetricType::Gauge)?;
        for s in sla {
            if let Some(v) = get(&s.objectives) {
                m.encode_family(&[("model", s.model.as_str()), ("objective", objective.as_str())])?.encode_gauge(&v)?;
            }
        }
    }
    let mut m = family(
        enc,
        "tollgate_sla_breached",
        "1 while the objective is breached over its rolling window.",
        MetricType::Gauge,
    )?;
    for s in sla {
        for (objective, configured) in [
            (Objective::TtftP95, s.objectives.ttft_p95.is_some()),
            (Objective::MinOutputTokensPerSecond, s.objectives.min_output_tokens_per_second.is_some()),
            (Objective::MaxErrorRatio, s.objectives.max_error_ratio.is_some()),
        ] {
            if configured {
                let labels = [("model", s.model.as_str()), ("objective", objective.as_str())];
                m.encode_family(&labels)?.encode_gauge(&i64::from(s.breached(objective)))?;
            }
        }
    }
    Ok(())
}
