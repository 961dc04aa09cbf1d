//! `tollgate bench`: which model to choose. Runs a prompt set against each model at each
//! concurrency level, measures TTFT, time per token, throughput, errors, tokens, exact cost and
//! accuracy on the client side, judges the SLA, projects spend for the stated traffic and
//! recommends the cheapest model that meets the SLA and a minimum accuracy.
//!
//! - [`prompts`] + [`score`] + [`schema`]: the prompt set and its scorers.
//! - [`target`]: where requests go (backends directly, or a running tollgate); the simulator.
//! - [`run`]: load generation and per-request measurement; [`progress`]: the live line.
//! - [`stats`]: percentiles and a run's figures; [`verdict`]: SLA checks, the recommendation.
//! - [`project`]: traffic and spend projection; [`scrape`]: the proxy's own TTFT.
//! - [`report`]: the report structure; [`table`], [`html`], [`svg`]: its renderings.

pub mod html;
pub mod progress;
pub mod project;
pub mod prompts;
pub mod report;
pub mod run;
pub mod schema;
pub mod score;
pub mod scrape;
pub mod stats;
pub mod svg;
pub mod table;
pub mod target;
pub mod verdict;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::Uri;

use crate::config::Config;
use crate::simulate::Simulator;
use report::{Context, Load, Mode, ModelResult, PromptSetInfo, Report, RunResult};
use run::{Counters, Plan, Stop};

/// The command line of `tollgate bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Config file: models, backends, prices, `sla:` objectives, `simulator:`.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: PathBuf,
    /// Prompt set: YAML, or JSON lines when the name ends in .jsonl.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Models to compare (names from the config). Default: the simulated models if the config
    /// has any, else every model.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Concurrency levels: this many requests in flight at once, one run per level.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub concurrency: Vec<usize>,
    /// Requests per run (model × concurrency level). Default 20.
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Run each level for this long instead (e.g. 60s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Traffic to project spend for, e.g. "1000 users x 10 req/day" or "5000 req/hour".
    #[arg(long, conflicts_with = "requests_per_day")]
    pub traffic: Option<String>,
    /// Traffic to project spend for, in requests per day.
    #[arg(long)]
    pub requests_per_day: Option<u64>,
    /// Send the requests through a running tollgate at this base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub through_proxy: Option<String>,
    /// The proxy's metrics URL, for its server-side TTFT. Default with --through-proxy:
    /// http://{admin_listen}/metrics from the config.
    #[arg(long, requires = "through_proxy")]
    pub proxy_metrics: Option<String>,
    /// Environment variable holding the client key sent to the proxy (with --through-proxy).
    #[arg(long, requires = "through_proxy")]
    pub proxy_key_env: Option<String>,
    /// Directory for report.json, report.md and report.html.
    #[arg(long, default_value = "bench-report")]
    pub out: PathBuf,
    /// Minimum accuracy for the recommendation (0.8 or 80%).
    #[arg(long, value_parser = parse_ratio)]
    pub min_accuracy: Option<f64>,
    /// Exit with status 2 when a run misses an SLA objective or the minimum accuracy.
    #[arg(long)]
    pub fail_on_sla: bool,
    /// SLA override: TTFT p95 objective in milliseconds.
    #[arg(long)]
    pub sla_ttft_p95_ms: Option<u64>,
    /// SLA override: minimum median decode speed in output tokens per second.
    #[arg(long)]
    pub sla_min_tps: Option<f64>,
    /// SLA override: maximum error ratio (0.01 or 1%).
    #[arg(long, value_parser = parse_ratio)]
    pub sla_max_error_ratio: Option<f64>,
    /// Give up on a request after this long (e.g. 120s).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// A finished bench.
pub struct Outcome {
    pub report: Report,
    /// The report files written.
    pub files: Vec<PathBuf>,
    /// The simulator this bench started in-process, if it did (stopped by now).
    pub simulator: Option<Arc<Simulator>>,
    /// `--fail-on-sla` was given and a run missed an objective or the minimum accuracy.
    pub failed: bool,
}

/// Parses `500ms`, `60s`, `1.5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 500ms, 60s, 2m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{text}`: the unit must be ms, s, m or h")),
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("`{text}` must be a positive duration")),
    }
}

/// Parses a ratio written as a fraction (0.8) or a percentage (80%), within 0..=1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match value {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a ratio between 0 and 1 (or 0% and 100%)")),
    }
}

/// Runs the whole bench and writes the report files; prints only the progress line.
pub async fn run(args: &Args) -> anyhow::Result<Outcome> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1, e.g. 1,10,100");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let config = Config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let prompts = prompts::load(&args.prompts).map_err(|e| anyhow!("{e}"))?;
    let traffic = match (&args.traffic, args.requests_per_day) {
        (Some(t), _) => Some(project::parse_traffic(t).map_err(|e| anyhow!("--traffic: {e}"))?),
        (None, Some(0)) => bail!("--requests-per-day must be at least 1"),
        (None, Some(n)) => Some(project::Traffic::per_day(n)),
        (None, None) => None,
    };
    let names = target::models(&config, &args.models)?;
    let stop = match args.duration {
        Some(d) => Stop::For(d),
        None => Stop::Requests(args.requests.unwrap_or(20)),
    };
    let overrides = verdict::Objectives {
        ttft_p95: args.sla_ttft_p95_ms.map(Duration::from_millis),
        min_output_tokens_per_second: args.sla_min_tps,
        max_error_ratio: args.sla_max_error_ratio,
    };
    let proxy_key = match &args.proxy_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("--proxy-key-env: `{var}` is not set"))?),
        None => None,
    };
    let mut notes = Vec::new();
    let proxy = args.through_proxy.as_deref();
    let targets = target::targets(&config, &names, proxy, proxy_key.as_deref())?;
    let simulator = match (&config.simulator, proxy) {
        (Some(sim), None) if targets.iter().any(|(t, _)| t.simulated) => target::start_simulator(sim, &mut notes).await,
        _ => None,
    };
    let metrics_url: Option<Uri> = match (proxy, &args.proxy_metrics) {
        (Some(_), Some(url)) => Some(url.parse().with_context(|| format!("--proxy-metrics `{url}`"))?),
        (Some(_), None) => Some(format!("http://{}/metrics", config.admin_listen).parse()?),
        (None, _) => None,
    };
    let admin_token = config.admin_token.as_ref().map(|t| t.expose().to_string());
    let interactive = !args.quiet && std::io::stderr().is_terminal();
    let plan = |concurrency| Plan { concurrency, stop, request_timeout: args.request_timeout };

    let mut results = Vec::new();
    let mut scrape_failed = None;
    for (t, endpoint) in &targets {
        let price = config.model_by_name(&t.model).and_then(|m| m.price.clone());
        let mut runs = Vec::new();
        let mut pooled = Vec::new();
        let mut wall = Duration::ZERO;
        for &concurrency in &args.concurrency {
            let metrics = metrics_url.as_ref().map(|u| (u, &t.client));
            let before = match metrics {
                Some((u, c)) => {
                    scrape::scrape(c, u, admin_token.as_deref()).await.map_err(|e| scrape_failed = Some(e)).ok()
                }
                None => None,
            };
            let counters = Arc::new(Counters::default());
            let label = format!("{} c={concurrency}", t.model);
            let bar = progress::Bar::start(label, stop, counters.clone(), interactive);
            let out = run::run(t, &prompts, plan(concurrency), counters).await;
            bar.finish().await;
            let summary = stats::summarize(&out.samples, out.wall, price.as_ref());
            let proxy_ttft = match (metrics, before) {
                (Some((u, c)), Some(before)) => {
                    let expect = summary.ttft_samples_ms.len() as u64;
                    proxy_ttft(c, u, admin_token.as_deref(), &before, &t.model, expect).await
                }
                _ => None,
            };
            wall += out.wall;
            pooled.extend(out.samples);
            runs.push(RunResult { concurrency, summary, peak_in_flight: out.peak_in_flight, proxy_ttft });
        }
        let overall = stats::summarize(&pooled, wall, price.as_ref());
        if overall.estimated_usage > 0 {
            notes.push(format!(
                "{}: {} responses reported no usage; their tokens and cost are estimated like the proxy does \
                 (prompt ≈ characters / 4 + 4 per message, output = token-bearing events).",
                t.model, overall.estimated_usage
            ));
        }
        if overall.non_streamed > 0 {
            notes
                .push(format!("{}: {} responses were not streamed: they have no TTFT.", t.model, overall.non_streamed));
        }
        let objectives = verdict::Objectives::merge(config.sla_for(&t.model), &overrides);
        let (name, simulated, endpoint) = (t.model.clone(), t.simulated, endpoint.clone());
        let wrong_answers = wrong_answers(&pooled, &prompts);
        results.push(ModelResult { name, simulated, endpoint, price, objectives, runs, overall, wrong_answers });
    }
    let simulated: Vec<&str> = results.iter().filter(|m| m.simulated).map(|m| m.name.as_str()).collect();
    if !simulated.is_empty() {
        notes.push(format!(
            "Simulation: {} are served by tollgate's built-in simulator. Their timing follows the config, and a scored \
             prompt is answered correctly with the configured `accuracy` probability (the bench passes the expected \
             answer in the x-tollgate-sim-expected header). These figures demonstrate the tool, not real models.",
            simulated.join(", ")
        ));
    }
    if let Some(e) = scrape_failed {
        notes.push(format!("The proxy's metrics could not be read ({e}): no server-side TTFT."));
    }
    drop(targets);
    let simulator = match simulator {
        Some(handle) => Some(handle.stop().await),
        None => None,
    };

    let ctx = Context {
        config: args.config.display().to_string(),
        prompt_set: PromptSetInfo {
            name: prompts.name.clone(),
            file: args.prompts.display().to_string(),
            prompts: prompts.prompts.len(),
            scored: prompts.scored(),
        },
        mode: Mode {
            kind: if proxy.is_some() { "through_proxy" } else { "direct" },
            proxy_url: args.through_proxy.clone(),
            proxy_metrics_url: metrics_url.map(|u| u.to_string()),
        },
        load: Load {
            concurrency: args.concurrency.clone(),
            requests_per_run: match stop {
                Stop::Requests(n) => Some(n),
                Stop::For(_) => None,
            },
            duration_s: args.duration.map(|d| d.as_secs_f64()),
            request_timeout_s: args.request_timeout.as_secs_f64(),
        },
        traffic,
        min_accuracy: args.min_accuracy,
        notes,
    };
    let report = report::build(ctx, results);
    let files = write(&report, &args.out)?;
    let failed = args.fail_on_sla && report.sla_failed;
    Ok(Outcome { report, files, simulator, failed })
}

/// The first wrong (not failed) answer to each scored prompt, at most 10, each cut to 200 chars.
fn wrong_answers(samples: &[stats::Sample], set: &prompts::PromptSet) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in samples.iter().filter(|s| s.passed == Some(false) && s.error.is_none()) {
        let Some(p) = set.prompts.get(s.prompt) else { continue };
        if out.len() < 10 && !out.iter().any(|(id, _)| *id == p.id) {
            let mut answer: String = s.answer.chars().take(200).collect();
            if answer.len() < s.answer.len() {
                answer.push('…');
            }
            out.push((p.id.clone(), answer));
        }
    }
    out
}

/// The proxy's mean TTFT over a run. Its records are finished just after the client reads the
/// last byte, so the scrape is retried briefly until it has seen every request.
async fn proxy_ttft(
    client: &run::HttpClient,
    url: &Uri,
    token: Option<&str>,
    before: &scrape::TtftTotals,
    model: &str,
    expect: u64,
) -> Option<(f64, u64)> {
    let mut last = None;
    for _ in 0..40 {
        let after = scrape::scrape(client, url, token).await.ok()?;
        last = scrape::mean_ms(before, &after, model);
        if last.is_some_and(|(_, n)| n >= expect) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Writes report.json, report.md and report.html into `dir`.
pub fn write(report: &Report, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    let files =
        [("report.json", json + "\n"), ("report.md", table::markdown(report)), ("report.html", html::page(report))];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// `tollgate bench`: runs, prints the terminal report and the files written; true when the exit
/// status should say that the SLA was missed.
pub async fn main(args: Args) -> anyhow::Result<bool> {
    let outcome = run(&args).await?;
    let mut text = table::terminal(&outcome.report);
    let files: Vec<String> = outcome.files.iter().map(|f| f.display().to_string()).collect();
    text.push_str(&format!("\nReports: {}\n", files.join(", ")));
    if outcome.failed {
        text.push_str("\n--fail-on-sla: a run missed an SLA objective or the minimum accuracy.\n");
    }
    print!("{text}");
    Ok(outcome.failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ratios() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        for bad in ["", "0s", "-1s", "5 days", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ratio("0.8"), Ok(0.8));
        assert_eq!(parse_ratio("75%"), Ok(0.75));
        assert!(parse_ratio("80").is_err());
        assert!(parse_ratio("x").is_err());
    }
}
