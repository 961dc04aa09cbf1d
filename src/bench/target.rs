//! Which models a bench runs and where their requests go: straight to a model's first backend
//! (with its upstream model name and API key) or to a running tollgate; and the built-in
//! simulator, started in-process when the bench targets simulated models directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::{HeaderValue, Uri};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::run::{HttpClient, Target};
use crate::config::{Config, SimulatorConfig};
use crate::simulate::{self, Simulator};
use crate::upstream::http_client;

/// The models to run: the ones asked for, each of which must be in the config; by default the
/// simulated models when the config has any (the out-of-the-box demo), else every model.
pub fn models(config: &Config, asked: &[String]) -> anyhow::Result<Vec<String>> {
    let known: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    if asked.is_empty() {
        let simulated: Vec<String> = known.iter().filter(|m| simulated(config, m)).map(|m| m.to_string()).collect();
        return Ok(if simulated.is_empty() { known.iter().map(|m| m.to_string()).collect() } else { simulated });
    }
    let mut out: Vec<String> = Vec::new();
    for name in asked.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !known.contains(&name) {
            bail!("unknown model `{name}`: the config lists {}", known.join(", "));
        }
        if !out.iter().any(|m| m == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        bail!("--models names no model");
    }
    Ok(out)
}

/// Whether a config model is served by the built-in simulator (by its name or upstream name).
pub fn simulated(config: &Config, model: &str) -> bool {
    let Some(sim) = &config.simulator else { return false };
    let Some(m) = config.model_by_name(model) else { return false };
    let wire = m.upstream_model.as_deref().unwrap_or(&m.name);
    sim.models.iter().any(|s| s.name == wire || s.name == m.name)
}

/// Builds the targets; `proxy` is the base URL of a running tollgate, `proxy_key` its client key.
pub fn targets(
    config: &Config,
    names: &[String],
    proxy: Option<&str>,
    proxy_key: Option<&str>,
) -> anyhow::Result<Vec<(Target, String)>> {
    let mut clients: HashMap<usize, HttpClient> = HashMap::new();
    let mut out = Vec::new();
    for name in names {
        let model = config.model_by_name(name).ok_or_else(|| anyhow!("unknown model `{name}`"))?;
        let simulated = simulated(config, name);
        let (url, wire_model, authorization, client) = match proxy {
            Some(base) => {
                let url = format!("{}/v1/chat/completions", base.trim_end_matches('/'));
                let client = match clients.get(&usize::MAX) {
                    Some(c) => c.clone(),
                    None => http_client(None, Duration::from_secs(5))?,
                };
                clients.insert(usize::MAX, client.clone());
                (url, name.clone(), proxy_key.map(bearer).transpose()?, client)
            }
            None => {
                let index =
                    model.backends.first().map(|b| b.index).ok_or_else(|| anyhow!("model `{name}` has no backend"))?;
                let backend = config.backends.get(index).ok_or_else(|| anyhow!("model `{name}`: bad backend index"))?;
                let client = match clients.get(&index) {
                    Some(c) => c.clone(),
                    None => http_client(backend.ca_file.as_deref(), backend.connect_timeout)?,
                };
                clients.insert(index, client.clone());
                let origin = backend.origin.to_string();
                let url = format!("{}{}/v1/chat/completions", origin.trim_end_matches('/'), backend.path_prefix);
                let wire = model.upstream_model.clone().unwrap_or_else(|| name.clone());
                let auth = backend.api_key.as_ref().map(|k| bearer(k.expose())).transpose()?;
                (url, wire, auth, client)
            }
        };
        let uri: Uri = url.parse().with_context(|| format!("model `{name}`: `{url}` is not a URL"))?;
        out.push((Target { model: name.clone(), wire_model, url: uri, authorization, client, simulated }, url));
    }
    Ok(out)
}

fn bearer(key: &str) -> anyhow::Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {key}")).context("the API key is not a valid header value")?;
    v.set_sensitive(true);
    Ok(v)
}

/// A simulator this bench started; stopped by [`SimulatorHandle::stop`].
pub struct SimulatorHandle {
    pub simulator: Arc<Simulator>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl SimulatorHandle {
    pub async fn stop(self) -> Arc<Simulator> {
        let _ = self.stop.send(());
        // Keep-alive connections end at once; give a stuck one a moment, not forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        self.simulator
    }
}

/// Starts the built-in simulator on `simulator.listen`. When the address is taken, one is
/// assumed to run there already (e.g. `tollgate serve` with the same config), and `None` returns.
pub async fn start_simulator(sim: &SimulatorConfig, notes: &mut Vec<String>) -> Option<SimulatorHandle> {
    match tokio::net::TcpListener::bind(sim.listen).await {
        Ok(listener) => {
            let simulator = Arc::new(Simulator::new(sim.models.clone(), sim.seed));
            let (stop, stopped) = oneshot::channel::<()>();
            let s = simulator.clone();
            let task = tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = simulate::serve(listener, s, stopped).await {
                    tracing::warn!(error = %e, "bench simulator stopped");
                }
            });
            notes.push(format!("The built-in simulator was started in-process on {} for this run.", sim.listen));
            Some(SimulatorHandle { simulator, stop, task })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            notes.push(format!(
                "simulator.listen {} was taken: a simulator already running there was used.",
                sim.listen
            ));
            None
        }
        Err(e) => {
            notes.push(format!("The built-in simulator could not start on {}: {e}.", sim.listen));
            None
        }
    }
}
