//! The `tollgate` command line: `serve`, `check`, `simulate`.

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
    /// Run the built-in OpenAI-compatible simulator alone, from a config's `simulator:` section.
    Simulate {
        /// Config file whose `simulator:` section to use (default: the embedded example config).
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding `simulator.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
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
        Command::Simulate { config, listen } => {
            let source = config.map_or(ConfigSource::Embedded, ConfigSource::File);
            finish(runtime().and_then(|rt| rt.block_on(simulate_alone(source, listen))))
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
