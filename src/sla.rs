//! Service-level objectives per model — time to first token at the 95th percentile, a minimum
//! decode speed, a maximum error ratio — evaluated over a rolling window from the same histograms
//! and counters Prometheus scrapes. Breaches and recoveries flip `tollgate_sla_breached` and go to
//! the alert webhooks, once each. The evaluation is pure; [`Monitor`] keeps the window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// A model's objectives (any subset).
#[derive(Debug, Clone, PartialEq)]
pub struct Objectives {
    /// 95 % of requests get their first token within this.
    pub ttft_p95: Option<Duration>,
    /// The median request decodes at least this fast.
    pub min_output_tokens_per_second: Option<f64>,
    /// At most this fraction of requests fail (5xx, timeouts, broken or erroring streams).
    pub max_error_ratio: Option<f64>,
    /// The rolling window the objectives are judged over.
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    TtftP95,
    MinOutputTokensPerSecond,
    MaxErrorRatio,
}

impl Objective {
    pub const ALL: [Objective; 3] = [Objective::TtftP95, Objective::MinOutputTokensPerSecond, Objective::MaxErrorRatio];

    pub fn as_str(self) -> &'static str {
        match self {
            Objective::TtftP95 => "ttft_p95",
            Objective::MinOutputTokensPerSecond => "min_output_tokens_per_second",
            Objective::MaxErrorRatio => "max_error_ratio",
        }
    }
}

/// Cumulative counts of one model's traffic (summed over its backends) at one instant. The
/// thresholds are histogram bucket boundaries, so "within target" is read exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ttft_total: u64,
    /// Requests whose TTFT was ≤ the target.
    pub ttft_within: u64,
    pub tps_total: u64,
    /// Requests whose decode speed was ≤ the minimum.
    pub tps_at_most_min: u64,
    pub requests: u64,
    pub errors: u64,
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, b: Counts) -> Counts {
        Counts {
            ttft_total: self.ttft_total + b.ttft_total,
            ttft_within: self.ttft_within + b.ttft_within,
            tps_total: self.tps_total + b.tps_total,
            tps_at_most_min: self.tps_at_most_min + b.tps_at_most_min,
            requests: self.requests + b.requests,
            errors: self.errors + b.errors,
        }
    }
}

impl Counts {
    fn since(self, then: Counts) -> Counts {
        Counts {
            ttft_total: self.ttft_total.saturating_sub(then.ttft_total),
            ttft_within: self.ttft_within.saturating_sub(then.ttft_within),
            tps_total: self.tps_total.saturating_sub(then.tps_total),
            tps_at_most_min: self.tps_at_most_min.saturating_sub(then.tps_at_most_min),
            requests: self.requests.saturating_sub(then.requests),
            errors: self.errors.saturating_sub(then.errors),
        }
    }
}

/// What the window says about one objective: `None` when it saw no traffic to judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub objective: Objective,
    pub breached: Option<bool>,
    /// The observed figure: fraction within target, fraction at or below the minimum, error ratio.
    pub observed: f64,
}

/// Judges a window's counts against the objectives.
pub fn evaluate(obj: &Objectives, w: &Counts) -> Vec<Verdict> {
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut out = Vec::new();
    if obj.ttft_p95.is_some() {
        let within = ratio(w.ttft_within, w.ttft_total);
        out.push(Verdict {
            objective: Objective::TtftP95,
            breached: (w.ttft_total > 0).then_some(within < 0.95),
            observed: within,
        });
    }
    if obj.min_output_tokens_per_second.is_some() {
        let slow = ratio(w.tps_at_most_min, w.tps_total);
        out.push(Verdict {
            objective: Objective::MinOutputTokensPerSecond,
            breached: (w.tps_total > 0).then_some(slow > 0.5),
            observed: slow,
        });
    }
    if let Some(max) = obj.max_error_ratio {
        let errors = ratio(w.errors, w.requests);
        out.push(Verdict {
            objective: Objective::MaxErrorRatio,
            breached: (w.requests > 0).then_some(errors > max),
            observed: errors,
        });
    }
    out
}

/// A model's SLA state as exported: its objectives and which are breached now.
#[derive(Debug)]
pub struct ModelSla {
    pub model: String,
    pub objectives: Objectives,
    breached: [AtomicBool; 3],
}

impl ModelSla {
    pub fn new(model: &str, objectives: Objectives) -> ModelSla {
        ModelSla { model: model.to_string(), objectives, breached: Default::default() }
    }

    pub fn breached(&self, o: Objective) -> bool {
        self.breached[o as usize].load(Relaxed)
    }

    /// Sets the state; returns true when it changed.
    fn set(&self, o: Objective, breached: bool) -> bool {
        self.breached[o as usize].swap(breached, Relaxed) != breached
    }
}

/// A state change for the alert webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub model: String,
    pub objective: Objective,
    pub breached: bool,
    pub observed: f64,
    pub window: Duration,
}

/// Keeps one model's recent cumulative counts and judges the window on each tick.
#[derive(Debug)]
pub struct Monitor {
    pub sla: Arc<ModelSla>,
    history: VecDeque<(Instant, Counts)>,
}

impl Monitor {
    pub fn new(sla: Arc<ModelSla>) -> Monitor {
        Monitor { sla, history: VecDeque::new() }
    }

    /// Takes the cumulative counts at `now`; returns the objectives whose state changed.
    pub fn tick(&mut self, now: Instant, counts: Counts) -> Vec<Transition> {
        let window = self.sla.objectives.window;
        self.history.push_back((now, counts));
        // Keep the newest sample at or before the window's start as the baseline.
        while self.history.len() > 2 && self.history.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= window) {
            self.history.pop_front();
        }
        let Some((_, baseline)) = self.history.front() else { return Vec::new() };
        let delta = counts.since(*baseline);
        evaluate(&self.sla.objectives, &delta)
            .into_iter()
            .filter_map(|v| {
                let breached = v.breached?;
                self.sla.set(v.objective, breached).then(|| Transition {
                    model: self.sla.model.clone(),
                    objective: v.objective,
                    breached,
                    observed: v.observed,
                    window,
                })
            })
            .collect()
    }
}

/// Parses a window like `5m`, `30s`, `1h` (or a number of seconds).
pub fn parse_window(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
