//! The `tollgate` command line: `serve`, `check`, `report`, `rules`, `bench`, `simulate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tollgate::app::{self, ConfigSource};
use tollgate::config::Config;
use tollgate::simulate::{self, Simulator};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A metering reverse proxy for OpenAI-compatible LLM backends: TTFT, tokens/s and spend per model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Without --config it runs the embedded example config (built-in simulator).
    Serve {
        /// Config file (YAML). SIGHUP or a change to the file reloads it.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0, or list every problem with its key path and line and exit 1.
    Check {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Spend from the ledger: requests, tokens, spend, cost per 1K tokens, TTFT p50/p95 per group,
    /// then each budget's period spend and projection.
    Report {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// First day included (YYYY-MM-DD, in the config's time zone); default 30 days before --until.
        #[arg(long)]
        since: Option<jiff::civil::Date>,
        /// Last day included (YYYY-MM-DD); default today.
        #[arg(long)]
        until: Option<jiff::civil::Date>,
        #[arg(long, value_enum, default_value = "team")]
        by: By,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
    },
    /// Prometheus alerting and recording rules generated from the config's SLAs and budgets.
    Rules {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// Write `tollgate-rules.yml` and `prometheus-rule.yaml` (a PrometheusRule) here instead
        /// of printing the rules.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the built-in OpenAI-compatible simulator alone, from a config's `simulator:` section.
    Simulate {
        /// Config file whose `simulator:` section to use (default: the embedded example config).
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding `simulator.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Compare models on a prompt set: TTFT, tokens/s, cost, accuracy and SLA per concurrency level,
    /// spend projected for your traffic, and the cheapest model that meets the SLA.
    Bench {
        #[command(flatten)]
        args: Box<tollgate::bench::Args>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum By {
    Team,
    Model,
    Day,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutFormat {
    Table,
    Csv,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} backends, {} models{})",
                    config.display(),
                    c.backends.len(),
                    c.models.len(),
                    if c.simulator.is_some() { ", simulator" } else { "" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let source = config.map_or(ConfigSource::Embedded, ConfigSource::File);
            finish(runtime().and_then(|rt| rt.block_on(app::run(source))))
        }
        Command::Report { config, since, until, by, format } => finish(report(&config, since, until, by, format)),
        Command::Rules { config, out } => finish(rules(&config, out.as_deref())),
        Command::Simulate { config, listen } => {
            let source = config.map_or(ConfigSource::Embedded, ConfigSource::File);
            finish(runtime().and_then(|rt| rt.block_on(simulate_alone(source, listen))))
        }
        Command::Bench { args } => bench(*args),
    }
}

/// `tollgate bench`: exit 1 when it cannot run, 2 when `--fail-on-sla` is given and a run misses.
fn bench(args: tollgate::bench::Args) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(tollgate::bench::main(args))) {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(2),
        Err(e) => {
            eprintln!("tollgate bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate_alone(source: ConfigSource, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let config = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    let sim = config.simulator.ok_or_else(|| anyhow::anyhow!("the config has no `simulator:` section"))?;
    let addr = listen.unwrap_or(sim.listen);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, models = sim.models.len(), "simulator listening");
    let simulator = Arc::new(Simulator::new(sim.models, sim.seed));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    simulate::serve(listener, simulator, stop).await?;
    Ok(())
}

fn report(
    config: &std::path::Path,
    since: Option<jiff::civil::Date>,
    until: Option<jiff::civil::Date>,
    by: By,
    format: OutFormat,
) -> anyhow::Result<()> {
    use tollgate::ledger::report::{self, Format, ReportOptions};
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spend = &config.spend;
    let ledger =
        spend.ledger.as_ref().ok_or_else(|| anyhow::anyhow!("the config turns the ledger off: nothing to report"))?;
    // [postgres ledger] The shared store when configured.
    if let Some(pg) = &ledger.postgres {
        return report_postgres(
            pg.url.expose(),
            spend,
            ReportOptions { since, until, by: group_by(by), format: out_format(format) },
        );
    }
    if !ledger.path.exists() {
        anyhow::bail!("no ledger at {} (has `tollgate serve` run with this config?)", ledger.path.display());
    }
    let conn = tollgate::ledger::open(&ledger.path)?;
    let (by, format) = (group_by(by), out_format(format));
    let opts = ReportOptions { since, until, by, format };
    let today = jiff::Timestamp::now().to_zoned_datetime(spend.timezone.clone()).date();
    let built = report::build(&conn, &opts, &spend.timezone, today)?;
    let mut out = std::io::stdout().lock();
    report::write(&built, &opts, &mut out)?;
    if format == Format::Table && !spend.budgets.is_empty() {
        write_budgets(&mut |a, b, t, m| Ok(tollgate::ledger::spend_between(&conn, a, b, t, m)?), spend, &mut out)?;
    }
    Ok(())
}

fn group_by(by: By) -> tollgate::ledger::report::GroupBy {
    use tollgate::ledger::report::GroupBy;
    match by {
        By::Team => GroupBy::Team,
        By::Model => GroupBy::Model,
        By::Day => GroupBy::Day,
    }
}

fn out_format(format: OutFormat) -> tollgate::ledger::report::Format {
    use tollgate::ledger::report::Format;
    match format {
        OutFormat::Table => Format::Table,
        OutFormat::Csv => Format::Csv,
        OutFormat::Json => Format::Json,
    }
}

/// [postgres ledger] `tollgate report` over the shared PostgreSQL ledger (no tokio runtime here,
/// so the sync client may run on this thread).
fn report_postgres(
    url: &str,
    spend: &tollgate::config::Spend,
    opts: tollgate::ledger::report::ReportOptions,
) -> anyhow::Result<()> {
    use tollgate::ledger::{postgres, report};
    let config = postgres::parse_url(url)?;
    let mut client = config
        .connect(::postgres::NoTls)
        .map_err(|e| anyhow::anyhow!("ledger.postgres: {}", postgres::describe(&e)))?;
    let today = jiff::Timestamp::now().to_zoned_datetime(spend.timezone.clone()).date();
    let built = postgres::report::build(&mut client, &opts, &spend.timezone, today)?;
    let mut out = std::io::stdout().lock();
    report::write(&built, &opts, &mut out)?;
    if opts.format == report::Format::Table && !spend.budgets.is_empty() {
        write_budgets(&mut |a, b, t, m| Ok(postgres::spend_between(&mut client, a, b, t, m)?), spend, &mut out)?;
    }
    Ok(())
}

/// Spend in [from_ms, to_ms) for an optional team and model, from whichever store is configured.
type SpendFn<'a> = dyn FnMut(i64, i64, Option<&str>, Option<&str>) -> anyhow::Result<u64> + 'a;

/// Each budget's current period from the ledger: spend, limit, projection at the burn rate so far.
fn write_budgets(
    spent_between: &mut SpendFn<'_>,
    spend: &tollgate::config::Spend,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use tollgate::budget::{BudgetState, Scope, period_bounds};
    use tollgate::pricing::nano_usd_text as usd;
    let now = tollgate::ledger::now_ms();
    writeln!(out, "\nbudget ({})  period  spend_usd  limit_usd  projected_usd  limit_reached_at", spend.timezone_name)?;
    for def in &spend.budgets {
        let (start, end) = period_bounds(def.period, &spend.timezone, now);
        let (team, model) = match &def.scope {
            Scope::All => (None, None),
            Scope::Team(t) => (Some(t.as_str()), None),
            Scope::Model(m) => (None, Some(m.as_str())),
        };
        let spent = spent_between(start, end, team, model)?;
        let snap = BudgetState::new(def.clone(), &spend.timezone, now, spent).snapshot(&spend.timezone, now);
        let reached = snap
            .limit_reached_at_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or("-".to_string(), |t| t.to_string());
        writeln!(
            out,
            "{}  {}  {}  {}  {}  {}",
            def.name,
            def.period.as_str(),
            usd(snap.spent_nano_usd),
            usd(snap.limit_nano_usd),
            usd(snap.projected_nano_usd),
            reached
        )?;
    }
    Ok(())
}

fn rules(config: &std::path::Path, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let groups = tollgate::rules::groups(&config);
    let header = "# Generated by `tollgate rules` from the config's SLAs and budgets: regenerate, don't edit.\n";
    let rules = format!("{header}{}", serde_yaml_ng::to_string(&groups)?);
    match out {
        None => print!("{rules}"),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("tollgate-rules.yml"), &rules)?;
            let manifest = tollgate::rules::prometheus_rule(&groups);
            std::fs::write(
                dir.join("prometheus-rule.yaml"),
                format!("{header}{}", serde_yaml_ng::to_string(&manifest)?),
            )?;
            eprintln!(
                "wrote {} and {}",
                dir.join("tollgate-rules.yml").display(),
                dir.join("prometheus-rule.yaml").display()
            );
        }
    }
    Ok(())
}
