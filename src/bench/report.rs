//! The benchmark report: one serializable [`Report`] built from the runs, written as
//! `report.json` (schema: `docs/bench-report.schema.json`), `report.md` and `report.html`, and
//! printed as the terminal summary. Every renderer reads this one structure.

use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

use super::project::{self, DAYS_PER_MONTH, DAYS_PER_YEAR, Traffic, exact_usd, usd};
use super::stats::{Dist, Summary};
use super::verdict::{self, Candidate, Check, Objectives};
use crate::pricing::Price;

fn ser_usd<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&exact_usd(*v))
}

fn ser_opt_usd<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_str(&exact_usd(*d)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub generated_at: String,
    pub config: String,
    pub prompt_set: PromptSetInfo,
    pub mode: Mode,
    pub load: Load,
    pub models: Vec<ModelReport>,
    pub traffic: TrafficReport,
    pub projections: Vec<ProjectionReport>,
    pub savings: Vec<SavingReport>,
    pub recommendation: RecommendationReport,
    /// With `--fail-on-sla`: whether the exit code reports a miss.
    pub sla_failed: bool,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptSetInfo {
    pub name: String,
    pub file: String,
    pub prompts: usize,
    pub scored: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    /// `direct` or `through_proxy`.
    pub kind: &'static str,
    pub proxy_url: Option<String>,
    pub proxy_metrics_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub concurrency: Vec<usize>,
    pub requests_per_run: Option<u64>,
    pub duration_s: Option<f64>,
    pub request_timeout_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub name: String,
    pub simulated: bool,
    pub endpoint: String,
    pub price: Option<PriceReport>,
    pub objectives: ObjectivesReport,
    pub runs: Vec<RunReport>,
    /// All runs pooled.
    pub overall: Figures,
    pub meets_sla: bool,
    /// The first wrong answer to each scored prompt (at most 10), to check the scorers by eye.
    pub wrong_answers: Vec<WrongAnswer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WrongAnswer {
    pub prompt: String,
    pub answer: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PriceReport {
    #[serde(serialize_with = "ser_usd")]
    pub input_per_1m_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub output_per_1m_usd: Decimal,
    #[serde(serialize_with = "ser_opt_usd")]
    pub cached_input_per_1m_usd: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectivesReport {
    pub ttft_p95_ms: Option<f64>,
    pub min_output_tokens_per_second: Option<f64>,
    pub max_error_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub concurrency: usize,
    /// The most requests the client had in flight at once.
    pub peak_in_flight: usize,
    #[serde(flatten)]
    pub figures: Figures,
    /// Through a proxy: its own mean TTFT over this run, and over how many requests.
    pub proxy_ttft_ms_mean: Option<f64>,
    pub proxy_ttft_requests: Option<u64>,
    pub sla: Vec<CheckReport>,
    pub meets_sla: bool,
    pub ttft_ms_samples: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub objective: &'static str,
    pub target: f64,
    pub observed: Option<f64>,
    pub pass: bool,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DistReport {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl From<Dist> for DistReport {
    fn from(d: Dist) -> Self {
        DistReport { p50: d.p50, p95: d.p95, p99: d.p99, mean: d.mean }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_ratio: f64,
    pub ttft_ms: DistReport,
    pub tpot_ms: DistReport,
    pub output_tokens_per_second_per_request: DistReport,
    pub e2e_ms: DistReport,
    pub wall_s: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub usage_estimated_requests: u64,
    pub non_streamed_responses: u64,
    #[serde(serialize_with = "ser_opt_usd")]
    pub cost_usd: Option<Decimal>,
    #[serde(serialize_with = "ser_opt_usd")]
    pub cost_per_request_usd: Option<Decimal>,
    #[serde(serialize_with = "ser_opt_usd")]
    pub cost_per_1k_tokens_usd: Option<Decimal>,
    pub scored: u64,
    pub passed: u64,
    pub accuracy: Option<f64>,
    pub correct_per_usd: Option<f64>,
    pub correct_per_second: Option<f64>,
    pub errors_by_kind: Vec<ErrorKind>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorKind {
    pub message: String,
    pub count: u64,
}

impl From<&Summary> for Figures {
    fn from(s: &Summary) -> Self {
        Figures {
            requests: s.requests,
            ok: s.ok,
            errors: s.errors,
            error_ratio: s.error_ratio,
            ttft_ms: s.ttft_ms.into(),
            tpot_ms: s.tpot_ms.into(),
            output_tokens_per_second_per_request: s.tps.into(),
            e2e_ms: s.e2e_ms.into(),
            wall_s: s.wall.as_secs_f64(),
            requests_per_second: s.requests_per_second,
            output_tokens_per_second: s.output_tokens_per_second,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            usage_estimated_requests: s.estimated_usage,
            non_streamed_responses: s.non_streamed,
            cost_usd: s.cost,
            cost_per_request_usd: s.cost_per_request,
            cost_per_1k_tokens_usd: s.cost_per_1k_tokens,
            scored: s.scored,
            passed: s.passed,
            accuracy: s.accuracy,
            correct_per_usd: s.correct_per_usd,
            correct_per_second: s.correct_per_second,
            errors_by_kind: s.error_kinds.iter().map(|(m, n)| ErrorKind { message: m.clone(), count: *n }).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub text: String,
    /// True when no `--traffic` / `--requests-per-day` was given.
    pub assumed: bool,
    pub requests_per_day: String,
    pub days_per_month: u32,
    pub days_per_year: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectionReport {
    pub model: String,
    #[serde(serialize_with = "ser_usd")]
    pub cost_per_request_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub per_day_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub per_month_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub per_year_usd: Decimal,
}

#[derive(Debug, Clone, Serialize)]
pub struct SavingReport {
    pub cheaper: String,
    pub dearer: String,
    #[serde(serialize_with = "ser_usd")]
    pub per_day_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub per_month_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub per_year_usd: Decimal,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecommendationReport {
    pub model: Option<String>,
    pub min_accuracy: Option<f64>,
    pub text: String,
    pub excluded: Vec<Excluded>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Excluded {
    pub model: String,
    pub reason: String,
}

/// One run's outcome, before rendering.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub concurrency: usize,
    pub summary: Summary,
    pub peak_in_flight: usize,
    pub proxy_ttft: Option<(f64, u64)>,
}

/// One model's outcome, before rendering.
#[derive(Debug, Clone)]
pub struct ModelResult {
    pub name: String,
    pub simulated: bool,
    pub endpoint: String,
    pub price: Option<Price>,
    pub objectives: Objectives,
    pub runs: Vec<RunResult>,
    pub overall: Summary,
    /// (prompt id, answer) of wrong answers.
    pub wrong_answers: Vec<(String, String)>,
}

/// What the report says about where and how the bench ran.
pub struct Context {
    pub config: String,
    pub prompt_set: PromptSetInfo,
    pub mode: Mode,
    pub load: Load,
    pub traffic: Option<Traffic>,
    pub min_accuracy: Option<f64>,
    pub notes: Vec<String>,
}

/// Judges the runs, projects the costs and picks the recommendation.
pub fn build(ctx: Context, results: Vec<ModelResult>) -> Report {
    let assumed = ctx.traffic.is_none();
    let traffic = ctx.traffic.unwrap_or_else(|| Traffic::per_day(1000));
    let mut models = Vec::new();
    let mut candidates = Vec::new();
    let mut projected = Vec::new();
    let mut sla_failed = false;
    for m in results {
        let mut runs = Vec::new();
        let mut failures = Vec::new();
        for r in &m.runs {
            let checks = verdict::judge(&m.objectives, &r.summary);
            let meets = verdict::meets(&r.summary, &checks);
            if !meets {
                let mut why: Vec<String> = checks.iter().filter(|c| !c.pass).map(Check::describe).collect();
                if r.summary.ok == 0 {
                    why.push("every request failed".into());
                }
                failures.push(format!("at concurrency {}: {}", r.concurrency, why.join(", ")));
            }
            let below = ctx.min_accuracy.is_some_and(|min| r.summary.accuracy.is_none_or(|a| a < min));
            sla_failed |= !meets || below;
            runs.push(RunReport {
                concurrency: r.concurrency,
                peak_in_flight: r.peak_in_flight,
                figures: Figures::from(&r.summary),
                proxy_ttft_ms_mean: r.proxy_ttft.map(|p| p.0),
                proxy_ttft_requests: r.proxy_ttft.map(|p| p.1),
                sla: checks.iter().map(check_report).collect(),
                meets_sla: meets,
                ttft_ms_samples: r.summary.ttft_samples_ms.iter().map(|v| (v * 1000.0).round() / 1000.0).collect(),
            });
        }
        if let Some(c) = m.overall.cost_per_request {
            projected.push((m.name.clone(), project::project(c, &traffic)));
        }
        candidates.push(Candidate {
            model: m.name.clone(),
            sla_failures: failures.clone(),
            accuracy: m.overall.accuracy,
            cost_per_request: m.overall.cost_per_request,
            ttft_p95_ms: m.overall.ttft_ms.p95,
        });
        let o = &m.objectives;
        models.push(ModelReport {
            name: m.name,
            simulated: m.simulated,
            endpoint: m.endpoint,
            price: m.price.map(|p| PriceReport {
                input_per_1m_usd: p.input_per_1m,
                output_per_1m_usd: p.output_per_1m,
                cached_input_per_1m_usd: p.cached_input_per_1m,
            }),
            objectives: ObjectivesReport {
                ttft_p95_ms: o.ttft_p95.map(|d| d.as_secs_f64() * 1000.0),
                min_output_tokens_per_second: o.min_output_tokens_per_second,
                max_error_ratio: o.max_error_ratio,
            },
            runs,
            overall: Figures::from(&m.overall),
            meets_sla: failures.is_empty(),
            wrong_answers: m.wrong_answers.into_iter().map(|(prompt, answer)| WrongAnswer { prompt, answer }).collect(),
        });
    }
    let savings = project::savings(&projected)
        .into_iter()
        .map(|s| SavingReport {
            text: format!(
                "choosing {} over {} saves {} per day ({} per month, {} per year)",
                s.cheaper,
                s.dearer,
                usd(s.per_day),
                usd(s.per_month),
                usd(s.per_year)
            ),
            cheaper: s.cheaper,
            dearer: s.dearer,
            per_day_usd: s.per_day,
            per_month_usd: s.per_month,
            per_year_usd: s.per_year,
        })
        .collect();
    let rec = verdict::recommend(&candidates, ctx.min_accuracy);
    Report {
        schema_version: 1,
        tool: format!("tollgate {}", env!("CARGO_PKG_VERSION")),
        generated_at: jiff::Timestamp::now().to_string(),
        config: ctx.config,
        prompt_set: ctx.prompt_set,
        mode: ctx.mode,
        load: ctx.load,
        models,
        traffic: TrafficReport {
            text: traffic.text.clone(),
            assumed,
            requests_per_day: traffic.requests_per_day.normalize().to_string(),
            days_per_month: DAYS_PER_MONTH,
            days_per_year: DAYS_PER_YEAR,
        },
        projections: projected
            .into_iter()
            .map(|(model, p)| ProjectionReport {
                model,
                cost_per_request_usd: p.per_request,
                per_day_usd: p.per_day,
                per_month_usd: p.per_month,
                per_year_usd: p.per_year,
            })
            .collect(),
        savings,
        recommendation: RecommendationReport {
            model: rec.model,
            min_accuracy: ctx.min_accuracy,
            text: rec.text,
            excluded: rec.excluded.into_iter().map(|(model, reason)| Excluded { model, reason }).collect(),
        },
        sla_failed,
        notes: ctx.notes,
    }
}

fn check_report(c: &Check) -> CheckReport {
    CheckReport {
        objective: c.objective.as_str(),
        target: c.target,
        observed: c.observed,
        pass: c.pass,
        text: c.describe(),
    }
}
