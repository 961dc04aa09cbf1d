//! One request's account: the backend it went to, the team it is billed to, what it reserved
//! against budgets. The meter's [`Sink`]: the finished record lands here once and becomes metrics,
//! a ledger row and budget settlements.

use std::sync::Arc;
use std::time::Duration;

use super::routes::Target;
use crate::accounting::Reservation;
use crate::ledger::{Row, new_id};
use crate::meter::Record;
use crate::meter::body::{Cutoff, Sink};
use crate::metrics::UpstreamErrorKind;
use crate::pricing::to_nano_usd;
use crate::teams::TeamId;
use crate::telemetry::{Attr, Span, TraceCtx, unix_nanos};

/// Who pays for a request, decided before it is forwarded.
#[derive(Debug, Clone)]
pub struct Payer {
    pub team: TeamId,
    pub team_name: Arc<str>,
    /// Wall-clock time the request was received (ledger timestamp; never used for durations).
    pub unix_ms: i64,
    pub reservations: Vec<Reservation>,
    /// The request's trace, when spans are exported.
    pub trace: Option<TraceCtx>,
}

#[derive(Debug)]
pub struct Bill {
    pub target: Arc<Target>,
    pub payer: Payer,
}

impl Sink for Bill {
    fn inter_token(&self, gap: Duration) {
        self.target.series.observe_inter_token(gap);
    }

    fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.target.upstream.series.upstream_error(kind);
    }

    fn finish(&self, record: Record) {
        let t = &self.target;
        t.upstream.series.in_flight_add(-1);
        let spend = t.spend_series(self.payer.team);
        let cost = t.series.record(&record, t.price.as_ref(), spend);
        let usage = record.usage.map(|u| u.0).unwrap_or_default();
        let row = Row {
            id: new_id(self.payer.unix_ms),
            ts_ms: self.payer.unix_ms,
            team: self.payer.team_name.clone(),
            model: t.label.clone(),
            backend: t.backend_name.clone(),
            endpoint: record.endpoint.as_str(),
            stream: record.stream,
            status: record.status,
            outcome: record.outcome.as_str(),
            input_tokens: usage.input,
            output_tokens: usage.output,
            cached_input_tokens: usage.cached_input,
            reasoning_tokens: usage.reasoning,
            usage_source: record.usage.map(|u| u.1.as_str()),
            cost_nano_usd: cost.map(to_nano_usd),
            ttft_ms: record.ttft.map(|d| d.as_secs_f64() * 1e3),
            duration_ms: record.duration.as_secs_f64() * 1e3,
        };
        tracing::debug!(
            model = %t.label,
            backend = %t.backend_name,
            team = %self.payer.team_name,
            endpoint = row.endpoint,
            outcome = row.outcome,
            status = row.status,
            ttft_ms = row.ttft_ms,
            duration_ms = row.duration_ms,
            input_tokens = row.input_tokens,
            output_tokens = row.output_tokens,
            usage_source = row.usage_source,
            cost_usd = cost.map(|c| c.to_string()),
            "request finished"
        );
        if let (Some(tracer), Some(ctx)) = (&t.tracer, self.payer.trace) {
            tracer.record(span(&row, &record, ctx, t.upstream_model.as_deref()));
        }
        t.accounting.record(row, &self.payer.reservations);
    }

    fn shutting_down(&self) -> bool {
        self.target.shutting_down()
    }

    fn cutoff(&self) -> Option<&Arc<Cutoff>> {
        Some(&self.target.cutoff)
    }
}

/// The request's span, named and attributed after the OpenTelemetry GenAI conventions.
fn span(row: &Row, record: &Record, ctx: TraceCtx, upstream_model: Option<&str>) -> Span {
    use crate::openai::Endpoint;
    let operation = match record.endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        Endpoint::Other => "other",
    };
    let s = |v: &str| Attr::Str(v.to_string());
    let n = |v: u64| Attr::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let mut attributes = vec![
        ("gen_ai.operation.name", s(operation)),
        ("gen_ai.provider.name", s("openai")),
        ("gen_ai.request.model", s(&row.model)),
        ("gen_ai.response.model", s(upstream_model.unwrap_or(&row.model))),
        ("gen_ai.request.stream", Attr::Bool(row.stream)),
        ("http.response.status_code", Attr::Int(i64::from(row.status))),
        ("tollgate.backend", s(&row.backend)),
        ("tollgate.team", s(&row.team)),
        ("tollgate.outcome", s(row.outcome)),
    ];
    if let Some(source) = row.usage_source {
        attributes.extend([
            ("gen_ai.usage.input_tokens", n(row.input_tokens)),
            ("gen_ai.usage.output_tokens", n(row.output_tokens)),
            ("gen_ai.usage.cache_read.input_tokens", n(row.cached_input_tokens)),
            ("gen_ai.usage.reasoning.output_tokens", n(row.reasoning_tokens)),
            ("tollgate.usage_source", s(source)),
        ]);
    }
    if let Some(ttft) = record.ttft {
        attributes.push(("gen_ai.response.time_to_first_chunk", Attr::Double(ttft.as_secs_f64())));
    }
    if let Some(nanos) = row.cost_nano_usd {
        // No convention for cost yet: the proposed names.
        attributes.push(("gen_ai.usage.cost.amount", s(&crate::pricing::nano_usd_text(nanos))));
        attributes.push(("gen_ai.usage.cost.currency", s("USD")));
    }
    let error = (record.outcome != crate::meter::Outcome::Success).then(|| row.outcome.to_string());
    if let Some(e) = &error {
        attributes.push(("error.type", s(e)));
    }
    Span { ctx, name: format!("{operation} {}", row.model), end_unix_nanos: unix_nanos(), attributes, error }
}
