//! `tollgate rules`: Prometheus recording and alerting rules generated from the config's SLA
//! objectives and budgets — multi-window, multi-burn-rate alerts on the error ratio and on the
//! fraction of requests within the TTFT target (SRE workbook), a decode-speed alert, budget
//! thresholds and projected overrun — as a plain rules file and as a `PrometheusRule` manifest.
//! Targets are read from the exported gauges where PromQL allows, so rules follow config reloads.

use serde_json::{Value, json};

use crate::budget::BudgetDef;
use crate::config::Config;
use crate::pricing::nano_usd_text;

/// (long window, short window, burn-rate factor, severity, `for`), per the SRE workbook.
const BURN_WINDOWS: [(&str, &str, f64, &str, &str); 4] = [
    ("1h", "5m", 14.4, "page", "2m"),
    ("6h", "30m", 6.0, "page", "15m"),
    ("1d", "2h", 3.0, "ticket", "1h"),
    ("3d", "6h", 1.0, "ticket", "3h"),
];

/// Every window a recording rule is kept for.
const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// Requests that count against the error budget: tollgate's or the backend's 5xx, and 200
/// streams that broke, stalled or carried an error event.
const ERRORS_5XX: &str = r#"tollgate_requests_total{status_class="5xx"}"#;
const ERRORS_IN_STREAM: &str =
    r#"tollgate_requests_total{status_class="2xx",outcome=~"stream_error|upstream_reset|idle_timeout"}"#;

/// A bucket bound as the exposition writes `le` (Go's shortest `%g`: whole numbers without a
/// fraction), so a rule's selector matches the scraped bucket exactly.
pub fn le_label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e6 { format!("{}", v as i64) } else { format!("{v}") }
}

fn rule(record: &str, expr: String) -> Value {
    json!({"record": record, "expr": expr})
}

fn alert(name: &str, expr: String, for_: &str, severity: &str, labels: Value, summary: String) -> Value {
    let mut l = json!({"severity": severity});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({"alert": name, "expr": expr, "for": for_, "labels": l, "annotations": {"summary": summary}})
}

/// The rule groups for a config.
pub fn groups(config: &Config) -> Value {
    let mut recording = Vec::new();
    for w in WINDOWS {
        recording.push(rule(
            &format!("model:tollgate_request_errors:ratio_rate{w}"),
            format!(
                "sum by (model) (rate({ERRORS_5XX}[{w}]) or rate({ERRORS_IN_STREAM}[{w}])) / sum by (model) (rate(tollgate_requests_total[{w}]))"
            ),
        ));
    }
    let mut slo_alerts = Vec::new();
    for m in &config.models {
        let Some(sla) = &m.sla else { continue };
        let model = &m.name;
        if let Some(t) = sla.ttft_p95 {
            let le = le_label(t.as_secs_f64());
            for w in WINDOWS {
                // One rule per model (its target is its own bucket); the static label keeps the
                // rules of different models apart.
                let mut r = rule(
                    &format!("model:tollgate_ttft_within_target:ratio_rate{w}"),
                    format!(
                        r#"sum by (model) (rate(tollgate_time_to_first_token_seconds_bucket{{model="{model}",le="{le}"}}[{w}])) / sum by (model) (rate(tollgate_time_to_first_token_seconds_count{{model="{model}"}}[{w}]))"#
                    ),
                );
                r["labels"] = json!({"model": model});
                recording.push(r);
            }
            for (long, short, factor, severity, for_) in BURN_WINDOWS {
                // The objective is 95 % within target, so the error budget is 5 %.
                let limit = factor * 0.05;
                slo_alerts.push(alert(
                    "TollgateTtftBudgetBurn",
                    format!(
                        r#"(1 - model:tollgate_ttft_within_target:ratio_rate{long}{{model="{model}"}}) > {limit} and (1 - model:tollgate_ttft_within_target:ratio_rate{short}{{model="{model}"}}) > {limit}"#
                    ),
                    for_,
                    severity,
                    json!({"model": model, "window": long}),
                    format!("{model}: first tokens miss the {} ms target {factor}x faster than the SLO allows", t.as_millis()),
                ));
            }
        }
        if let Some(min) = sla.min_output_tokens_per_second {
            slo_alerts.push(alert(
                "TollgateDecodeSpeedLow",
                format!(
                    r#"histogram_quantile(0.5, sum by (le) (rate(tollgate_output_tokens_per_second_bucket{{model="{model}"}}[10m]))) < on() group_left() max(tollgate_sla_target_tokens_per_second{{model="{model}"}})"#
                ),
                "10m",
                "ticket",
                json!({"model": model}),
                format!("{model}: the median request decodes below {min} tokens/s"),
            ));
        }
        if sla.max_error_ratio.is_some() {
            for (long, short, factor, severity, for_) in BURN_WINDOWS {
                slo_alerts.push(alert(
                    "TollgateErrorBudgetBurn",
                    format!(
                        r#"model:tollgate_request_errors:ratio_rate{long}{{model="{model}"}} > on(model) ({factor} * tollgate_sla_target_ratio{{model="{model}",objective="max_error_ratio"}}) and model:tollgate_request_errors:ratio_rate{short}{{model="{model}"}} > on(model) ({factor} * tollgate_sla_target_ratio{{model="{model}",objective="max_error_ratio"}})"#
                    ),
                    for_,
                    severity,
                    json!({"model": model, "window": long}),
                    format!("{model}: errors burn the error budget {factor}x faster than the SLO allows"),
                ));
            }
        }
    }
    let mut budget_alerts = Vec::new();
    for b in &config.spend.budgets {
        budget_alerts.extend(budget_rules(b));
    }
    budget_alerts.push(alert(
        "TollgateBackendDown",
        "tollgate_backend_up == 0".into(),
        "5m",
        "ticket",
        json!({}),
        "backend {{ $labels.backend }} has been out of rotation for 5 minutes".into(),
    ));
    budget_alerts.push(alert(
        "TollgateLedgerLosingRows",
        r#"increase(tollgate_ledger_rows_total{result=~"dropped|failed"}[10m]) > 0"#.into(),
        "0m",
        "ticket",
        json!({}),
        "ledger rows were dropped or failed to write: spend reports are incomplete".into(),
    ));
    json!({"groups": [
        {"name": "tollgate-recording", "rules": recording},
        {"name": "tollgate-slo", "rules": slo_alerts},
        {"name": "tollgate-budgets", "rules": budget_alerts},
    ]})
}

/// A budget's threshold alerts (on the proxy's own calendar-period gauge: `increase(...[1d])`
/// would be a rolling 24 h, not the calendar day) and its projected overrun.
fn budget_rules(b: &BudgetDef) -> Vec<Value> {
    let sel = format!(r#"{{budget="{}",period="{}"}}"#, b.name, b.period.as_str());
    let mut out: Vec<Value> = b
        .thresholds_percent
        .iter()
        .map(|p| {
            alert(
                "TollgateBudgetThreshold",
                format!("tollgate_budget_spend_usd{sel} >= {} * tollgate_budget_limit_usd{sel}", f64::from(*p) / 100.0),
                "0m",
                if *p >= 100 { "page" } else { "ticket" },
                json!({"budget": b.name, "threshold_percent": p.to_string()}),
                format!(
                    "budget {} reached {p} % of its {} limit of ${}",
                    b.name,
                    b.period.as_str(),
                    nano_usd_text(b.limit_nano_usd)
                ),
            )
        })
        .collect();
    out.push(alert(
        "TollgateBudgetProjectedOverrun",
        format!("tollgate_budget_projected_spend_usd{sel} > tollgate_budget_limit_usd{sel} and tollgate_budget_spend_usd{sel} < tollgate_budget_limit_usd{sel}"),
        "15m",
        "ticket",
        json!({"budget": b.name}),
        format!("budget {} is projected to exceed its {} limit at the current burn rate", b.name, b.period.as_str()),
    ));
    out
}

/// The same groups wrapped as a prometheus-operator `PrometheusRule`.
pub fn prometheus_rule(groups: &Value) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tollgate", "labels": {"app.kubernetes.io/name": "tollgate", "prometheus": "k8s", "role": "alert-rules"}},
        "spec": groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_labels_match_the_exposition() {
        assert_eq!(le_label(2.0), "2");
        assert_eq!(le_label(0.15), "0.15");
        assert_eq!(le_label(0.8), "0.8");
    }
}
