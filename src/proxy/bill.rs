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

/// Who pays for a request, decided before it is forwarded.
#[derive(Debug, Clone)]
pub struct Payer {
    pub team: TeamId,
    pub team_name: Arc<str>,
    /// Wall-clock time the request was received (ledger timestamp; never used for durations).
    pub unix_ms: i64,
    pub reservations: Vec<Reservation>,
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
            id: new_id(),
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
        t.accounting.record(row, &self.payer.reservations);
    }

    fn shutting_down(&self) -> bool {
        self.target.shutting_down()
    }

    fn cutoff(&self) -> Option<&Arc<Cutoff>> {
        Some(&self.target.cutoff)
    }
}
