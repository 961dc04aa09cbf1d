//! SLA verdicts per run (TTFT p95, median decode speed, error ratio, as [`crate::sla`] defines
//! the objectives) and the recommendation: the cheapest priced model that meets every objective
//! at every tested concurrency and the minimum accuracy.

use std::time::Duration;

use rust_decimal::Decimal;

use super::project::usd;
use super::stats::Summary;
use crate::sla::Objective;

/// The objectives a bench judges: the config's (`sla:` / `models[].sla:`), overridden key by key
/// by the `--sla-*` flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objectives {
    pub ttft_p95: Option<Duration>,
    pub min_output_tokens_per_second: Option<f64>,
    pub max_error_ratio: Option<f64>,
}

impl Objectives {
    pub fn merge(config: Option<&crate::sla::Objectives>, overrides: &Objectives) -> Objectives {
        Objectives {
            ttft_p95: overrides.ttft_p95.or(config.and_then(|c| c.ttft_p95)),
            min_output_tokens_per_second: overrides
                .min_output_tokens_per_second
                .or(config.and_then(|c| c.min_output_tokens_per_second)),
            max_error_ratio: overrides.max_error_ratio.or(config.and_then(|c| c.max_error_ratio)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ttft_p95.is_none() && self.min_output_tokens_per_second.is_none() && self.max_error_ratio.is_none()
    }
}

/// One objective judged on one run. Without data to judge (no successful request), it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub objective: Objective,
    /// Milliseconds, tokens per second or a ratio.
    pub target: f64,
    pub observed: Option<f64>,
    pub pass: bool,
}

impl Check {
    /// "ttft_p95 1234 ms > 1000 ms", "min_output_tokens_per_second 12.0 tok/s < 20.0 tok/s".
    pub fn describe(&self) -> String {
        let (unit, op) = match (self.objective, self.pass) {
            (Objective::TtftP95, pass) => (" ms", if pass { "≤" } else { ">" }),
            (Objective::MinOutputTokensPerSecond, pass) => (" tok/s", if pass { "≥" } else { "<" }),
            (Objective::MaxErrorRatio, pass) => ("", if pass { "≤" } else { ">" }),
        };
        let fmt = |v: f64| match self.objective {
            Objective::TtftP95 => format!("{v:.0}{unit}"),
            Objective::MinOutputTokensPerSecond => format!("{v:.1}{unit}"),
            Objective::MaxErrorRatio => format!("{:.1}%", v * 100.0),
        };
        match self.observed {
            Some(o) => format!("{} {} {op} {}", self.objective.as_str(), fmt(o), fmt(self.target)),
            None => format!("{} no data (target {})", self.objective.as_str(), fmt(self.target)),
        }
    }
}

/// Judges a run's summary against the objectives.
pub fn judge(obj: &Objectives, s: &Summary) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(t) = obj.ttft_p95 {
        let target = t.as_secs_f64() * 1000.0;
        let observed = s.ttft_ms.p95;
        out.push(Check {
            objective: Objective::TtftP95,
            target,
            observed,
            pass: observed.is_some_and(|o| o <= target),
        });
    }
    if let Some(target) = obj.min_output_tokens_per_second {
        let observed = s.tps.p50;
        let pass = observed.is_some_and(|o| o >= target);
        out.push(Check { objective: Objective::MinOutputTokensPerSecond, target, observed, pass });
    }
    if let Some(target) = obj.max_error_ratio {
        let observed = (s.requests > 0).then_some(s.error_ratio);
        let pass = observed.is_some_and(|o| o <= target);
        out.push(Check { objective: Objective::MaxErrorRatio, target, observed, pass });
    }
    out
}

/// A run meets the SLA when it had a successful request and passed every check.
pub fn meets(s: &Summary, checks: &[Check]) -> bool {
    s.ok > 0 && checks.iter().all(|c| c.pass)
}

/// What the recommendation needs to know about one model.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: String,
    /// Why the model misses the SLA, one entry per failing run ("at concurrency 10: ttft_p95 ...").
    pub sla_failures: Vec<String>,
    pub accuracy: Option<f64>,
    pub cost_per_request: Option<Decimal>,
    pub ttft_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub model: Option<String>,
    pub text: String,
    /// Models left out, each with why.
    pub excluded: Vec<(String, String)>,
}

/// The cheapest candidate that meets the SLA and `min_accuracy`; ties go to the more accurate,
/// then the faster to first token.
pub fn recommend(candidates: &[Candidate], min_accuracy: Option<f64>) -> Recommendation {
    let mut excluded = Vec::new();
    let mut fit: Vec<&Candidate> = Vec::new();
    for c in candidates {
        let why = if let Some(f) = c.sla_failures.first() {
            Some(format!("misses the SLA {f}"))
        } else if let Some(min) = min_accuracy
            && c.accuracy.is_none_or(|a| a < min)
        {
            Some(match c.accuracy {
                Some(a) => format!("accuracy {} < {}", percent(a), percent(min)),
                None => "no scored prompts to measure accuracy".to_string(),
            })
        } else if c.cost_per_request.is_none() {
            Some("no cost known (no price in the config, or no successful request)".to_string())
        } else {
            None
        };
        match why {
            Some(w) => excluded.push((c.model.clone(), w)),
            None => fit.push(c),
        }
    }
    let accuracy_clause = min_accuracy.map(|m| format!(" and accuracy ≥ {}", percent(m))).unwrap_or_default();
    fit.sort_by(|a, b| {
        a.cost_per_request
            .cmp(&b.cost_per_request)
            .then(b.accuracy.unwrap_or(0.0).total_cmp(&a.accuracy.unwrap_or(0.0)))
            .then(a.ttft_p95_ms.unwrap_or(f64::MAX).total_cmp(&b.ttft_p95_ms.unwrap_or(f64::MAX)))
    });
    match fit.first() {
        Some(best) => {
            let cost = best.cost_per_request.map(usd).unwrap_or_default();
            let accuracy = best.accuracy.map(|a| format!(", accuracy {}", percent(a))).unwrap_or_default();
            let text = format!(
                "{}: the cheapest model that meets the SLA{accuracy_clause} at every tested concurrency ({cost} per request{accuracy})",
                best.model
            );
            Recommendation { model: Some(best.model.clone()), text, excluded }
        }
        None => {
            let reasons: Vec<String> = excluded.iter().map(|(m, w)| format!("{m}: {w}")).collect();
            let text = format!("none: no model meets the SLA{accuracy_clause} ({})", reasons.join("; "));
            Recommendation { model: None, text, excluded }
        }
    }
}

pub fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::bench::stats::Dist;

    fn summary(ttft_p95: f64, tps: f64, errors: u64) -> Summary {
        Summary {
            requests: 10,
            ok: 10 - errors,
            errors,
            error_ratio: errors as f64 / 10.0,
            ttft_ms: Dist { p95: Some(ttft_p95), ..Dist::default() },
            tps: Dist { p50: Some(tps), ..Dist::default() },
            ..Summary::default()
        }
    }

    #[test]
    fn checks() {
        let obj = Objectives {
            ttft_p95: Some(Duration::from_millis(1000)),
            min_output_tokens_per_second: Some(20.0),
            max_error_ratio: Some(0.1),
        };
        let c = judge(&obj, &summary(900.0, 25.0, 1));
        assert!(c.iter().all(|c| c.pass), "{c:?}");
        assert!(meets(&summary(900.0, 25.0, 1), &c));
        let c = judge(&obj, &summary(1200.0, 12.0, 2));
        let text: Vec<String> = c.iter().map(Check::describe).collect();
        assert_eq!(
            text,
            [
                "ttft_p95 1200 ms > 1000 ms",
                "min_output_tokens_per_second 12.0 tok/s < 20.0 tok/s",
                "max_error_ratio 20.0% > 10.0%"
            ]
        );
        // No successful request: nothing to judge, which fails.
        let mut dead = summary(0.0, 0.0, 10);
        dead.ttft_ms = Dist::default();
        dead.tps = Dist::default();
        let c = judge(&obj, &dead);
        assert_eq!(c[0].describe(), "ttft_p95 no data (target 1000 ms)");
        assert!(!meets(&dead, &[]));
        assert!(judge(&Objectives::default(), &dead).is_empty());
    }

    #[test]
    fn flags_override_the_config_key_by_key() {
        let config = crate::sla::Objectives {
            ttft_p95: Some(Duration::from_secs(2)),
            min_output_tokens_per_second: Some(10.0),
            max_error_ratio: None,
            window: Duration::from_secs(300),
        };
        let flags = Objectives { ttft_p95: Some(Duration::from_secs(30)), ..Objectives::default() };
        let merged = Objectives::merge(Some(&config), &flags);
        assert_eq!(merged.ttft_p95, Some(Duration::from_secs(30)));
        assert_eq!(merged.min_output_tokens_per_second, Some(10.0));
        assert_eq!(merged.max_error_ratio, None);
        assert!(Objectives::merge(None, &Objectives::default()).is_empty());
    }

    fn candidate(model: &str, cost: Option<&str>, accuracy: Option<f64>, failures: &[&str]) -> Candidate {
        Candidate {
            model: model.into(),
            sla_failures: failures.iter().map(|f| f.to_string()).collect(),
            accuracy,
            cost_per_request: cost.map(|c| Decimal::from_str(c).unwrap()),
            ttft_p95_ms: Some(100.0),
        }
    }

    #[test]
    fn recommendation() {
        let large = candidate("large", Some("0.01"), Some(0.9), &[]);
        let small = candidate("small", Some("0.002"), Some(0.75), &[]);
        let r = recommend(&[large.clone(), small.clone()], None);
        assert_eq!(r.model.as_deref(), Some("small"));
        assert!(r.text.starts_with("small: the cheapest model that meets the SLA at every"), "{}", r.text);
        let r = recommend(&[large.clone(), small.clone()], Some(0.8));
        assert_eq!(r.model.as_deref(), Some("large"));
        assert_eq!(r.excluded, vec![("small".to_string(), "accuracy 75% < 80%".to_string())]);
        let slow = candidate("large", Some("0.01"), Some(0.9), &["at concurrency 10: ttft_p95 1200 ms > 1000 ms"]);
        let r = recommend(&[slow, small.clone(), candidate("free", None, Some(1.0), &[])], Some(0.8));
        assert_eq!(r.model, None);
        assert_eq!(
            r.text,
            "none: no model meets the SLA and accuracy ≥ 80% (large: misses the SLA at concurrency 10: ttft_p95 1200 ms > 1000 ms; \
             small: accuracy 75% < 80%; free: no cost known (no price in the config, or no successful request))"
        );
        // Equal cost: the more accurate wins.
        let twin = candidate("twin", Some("0.002"), Some(0.8), &[]);
        assert_eq!(recommend(&[small, twin], None).model.as_deref(), Some("twin"));
    }
}
