//! The running process: binds the listeners, starts the in-process simulator when configured,
//! swaps configs on SIGHUP or file change (a bad config is rejected, the old one keeps serving),
//! and shuts down gracefully on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounting::Accounting;
use crate::config::{Config, ConfigError};
use crate::meter::body::Cutoff;
use crate::metrics::Metrics;
use crate::proxy::{self, Routes, State};
use crate::server::{self, ServeOptions};
use crate::simulate::{self, Simulator};
use crate::sla::{ModelSla, Monitor};
use crate::telemetry::Tracer;

/// The example config, compiled in: what `tollgate serve` runs without `--config`.
pub const EMBEDDED_CONFIG: &str = include_str!("../config.example.yaml");

/// Where the config came from, and so whether it can be reloaded.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    Embedded,
    File(PathBuf),
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::Embedded => {
                Config::parse(EMBEDDED_CONFIG, "<embedded config.example.yaml>", &|n| std::env::var(n).ok())
            }
            ConfigSource::File(p) => Config::load(p),
        }
    }
}

/// A started tollgate: its bound addresses and the handles to reload or stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub simulator_addr: Option<SocketAddr>,
    pub simulator: Option<Arc<Simulator>>,
    pub state: Arc<State>,
    source: ConfigSource,
    /// Stops the proxy listener (which then drains).
    stop_proxy: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    /// Stops the simulator and the admin listener, once the proxy has drained.
    stop_rest: watch::Sender<bool>,
    rest_tasks: Vec<JoinHandle<()>>,
}

/// Binds everything and starts serving. Port 0 in the config binds an ephemeral port (tests).
pub async fn start(config: Config, source: ConfigSource) -> anyhow::Result<Running> {
    let (stop_proxy, stop_proxy_rx) = watch::channel(false);
    let (stop_rest, stop_rest_rx) = watch::channel(false);
    let mut rest_tasks = Vec::new();

    let (simulator, simulator_addr) = match &config.simulator {
        Some(sim_cfg) => {
            let listener = TcpListener::bind(sim_cfg.listen)
                .await
                .with_context(|| format!("simulator.listen {}", sim_cfg.listen))?;
            let addr = listener.local_addr()?;
            let sim = Arc::new(Simulator::new(sim_cfg.models.clone(), sim_cfg.seed));
            let mut rx = stop_rest_rx.clone();
            let s = sim.clone();
            rest_tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                };
                if let Err(e) = simulate::serve(listener, s, stop).await {
                    tracing::error!(error = %e, "simulator stopped");
                }
            }));
            tracing::info!(%addr, "simulator listening");
            (Some(sim), Some(addr))
        }
        None => (None, None),
    };

    let tls = match &config.tls {
        Some(t) => Some(server::tls_acceptor(&t.cert_file, &t.key_file)?),
        None => None,
    };
    let proxy_listener = TcpListener::bind(config.listen).await.with_context(|| format!("listen {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin_listen {}", config.admin_listen))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let opts = ServeOptions {
        header_read_timeout: config.limits.request_header_timeout,
        drain_timeout: config.limits.drain_timeout,
    };

    let metrics = Arc::new(Metrics::new());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let cutoff = Arc::new(Cutoff::default());
    let accounting = Arc::new(Accounting::start(&config.spend).await?);
    accounting.follow_shared();
    metrics.set_accounting(accounting.clone());
    let tracer = match &config.telemetry {
        Some(t) => Some(Arc::new(Tracer::start(t.traces_endpoint.clone(), t.service_name.clone())?)),
        None => None,
    };
    let routes = Routes::build(config, &metrics, &accounting, &shutting_down, &cutoff, &tracer)?;
    let state = Arc::new(State::new(routes, metrics, shutting_down, cutoff.clone(), accounting, tracer));

    state.metrics.set_sla(sla_states(&state.routes.load()));
    tokio::spawn(sla_loop(Arc::downgrade(&state)));

    let s = state.clone();
    let handler = move |req| proxy::handle(s.clone(), req);
    let at_deadline = move || cutoff.fire();
    let proxy_task =
        tokio::spawn(server::serve(proxy_listener, tls, opts.clone(), handler, stop_proxy_rx, at_deadline));
    let s = state.clone();
    let admin_handler = move |req| crate::admin::handle(s.clone(), req);
    let admin_opts = ServeOptions { drain_timeout: Duration::from_secs(1), ..opts };
    rest_tasks.push(tokio::spawn(server::serve(admin_listener, None, admin_opts, admin_handler, stop_rest_rx, || {})));
    tracing::info!(%proxy_addr, %admin_addr, "tollgate listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        simulator_addr,
        simulator,
        state,
        source,
        stop_proxy,
        proxy_task,
        stop_rest,
        rest_tasks,
    })
}

impl Running {
    /// Loads the config again and swaps it in. A config that fails validation is rejected and the
    /// current one keeps serving. Listener addresses and the simulator are bound at start and
    /// change only with a restart.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        self.state.metrics.config_reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload rejected; the previous config keeps serving"),
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let config = self.source.load().map_err(|e| e.to_string())?;
        let current = self.state.routes.load();
        if config.listen != current.config.listen || config.admin_listen != current.config.admin_listen {
            tracing::warn!("listen addresses changed: they take effect at the next restart");
        }
        self.state.accounting.reload(&config.spend).map_err(|e| e.to_string())?;
        let routes = Routes::build(
            config,
            &self.state.metrics,
            &self.state.accounting,
            &self.state.shutting_down,
            &self.state.cutoff,
            &self.state.tracer,
        )
        .map_err(|e| e.to_string())?;
        self.state.routes.store(Arc::new(routes));
        Ok(())
    }

    /// Starts a graceful shutdown: readiness fails, the proxy stops accepting and drains.
    pub fn shutdown(&self) {
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.stop_proxy.send(true);
    }

    /// Waits for the proxy to drain (after [`Running::shutdown`]), then stops the rest.
    pub async fn wait(self) {
        let _ = self.proxy_task.await;
        // Every request has its record by now: put the ledger on disk before the process ends.
        let accounting = self.state.accounting.clone();
        let _ = tokio::task::spawn_blocking(move || accounting.flush()).await;
        let _ = self.stop_rest.send(true);
        for t in self.rest_tasks {
            let _ = t.await;
        }
    }
}

/// `tollgate serve`: start, then reload on SIGHUP or file change, and stop on SIGTERM/SIGINT.
pub async fn run(source: ConfigSource) -> anyhow::Result<()> {
    let config = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Handlers first: a SIGTERM that arrives as soon as the ports answer must drain, not kill.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let running = start(config, source.clone()).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut seen = modified(&source);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = running.reload();
                seen = modified(&source);
            }
            _ = tick.tick() => {
                let now = modified(&source);
                if now != seen {
                    seen = now;
                    let _ = running.reload();
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown();
    running.wait().await;
    Ok(())
}

/// The config file's modification time: polling it is cheap and needs no platform watcher.
fn modified(source: &ConfigSource) -> Option<SystemTime> {
    match source {
        ConfigSource::File(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
        ConfigSource::Embedded => None,
    }
}

/// The SLA states of a config's models.
fn sla_states(routes: &Routes) -> Vec<Arc<ModelSla>> {
    routes.config.models.iter().filter_map(|m| Some(Arc::new(ModelSla::new(&m.name, m.sla.clone()?)))).collect()
}

/// Judges every model's objectives over its rolling window, a dozen times per window (between
/// every 250 ms and 5 s), and sends breaches and recoveries to the webhooks. A reload starts the
/// windows afresh.
async fn sla_loop(state: std::sync::Weak<State>) {
    let mut current: Option<Arc<Routes>> = None;
    let mut monitors: Vec<Monitor> = Vec::new();
    loop {
        let Some(state) = state.upgrade() else { return };
        let routes = state.routes.load_full();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &routes)) {
            let states = sla_states(&routes);
            state.metrics.set_sla(states.clone());
            monitors = states.into_iter().map(Monitor::new).collect();
            current = Some(routes.clone());
        }
        let now = tokio::time::Instant::now();
        for m in &mut monitors {
            let Some(route) = routes.route(&m.sla.model) else { continue };
            let counts = route
                .targets
                .iter()
                .map(|t| t.series.sla_counts(&m.sla.objectives))
                .fold(crate::sla::Counts::default(), |a, b| a + b);
            for t in m.tick(now, counts) {
                tracing::warn!(model = %t.model, objective = t.objective.as_str(), breached = t.breached, observed = t.observed, "SLA state changed");
                state.accounting.alert_sla(t);
            }
        }
        let tick = monitors
            .iter()
            .map(|m| m.sla.objectives.window / 12)
            .min()
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_millis(250), Duration::from_secs(5));
        drop(state);
        tokio::time::sleep(tick).await;
    }
}
