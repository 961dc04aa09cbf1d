//! Configuration: YAML → raw serde types (unknown keys are errors) → a validated [`Config`].
//! Every config key the program reads is declared here; every problem names its key path and line.

mod backends;
mod lines;
mod observe;
mod simulator;
mod spend;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::pricing::{Price, deserialize_decimal, deserialize_opt_decimal};
use crate::sla::Objectives;
pub use backends::{Backend, WeightedBackend};
use backends::{RawBackend, RawBackendRef};
use lines::LineIndex;
pub use observe::Telemetry;
use observe::{RawSla, RawTelemetry};
use simulator::RawSimulator;
pub use simulator::SimulatorConfig;
pub use spend::{BudgetStore, LedgerConfig, Spend, Webhook, WebhookFormat};
use spend::{RawAlerts, RawBudget, RawBudgetStore, RawClient, RawLedger, RawSpend};

/// Model names that clients may not configure, because they are reserved metric label values.
pub const RESERVED_MODEL_LABELS: &[&str] = &["other"];

// ---------------------------------------------------------------- raw (as written) ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin_listen")]
    admin_listen: String,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    admin_token_env: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    default_backend: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    simulator: Option<RawSimulator>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    require_client_key: bool,
    #[serde(default)]
    ledger: Option<RawLedger>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    alerts: Option<RawAlerts>,
    #[serde(default)]
    budget_store: Option<RawBudgetStore>,
    #[serde(default)]
    sla: Option<RawSla>,
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_request_body_bytes: u64,
    request_header_timeout_ms: u64,
    request_body_timeout_ms: u64,
    max_sse_line_bytes: u64,
    max_response_parse_bytes: u64,
    drain_timeout_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_request_body_bytes: 32 * 1024 * 1024,
            request_header_timeout_ms: 10_000,
            request_body_timeout_ms: 30_000,
            max_sse_line_bytes: 1024 * 1024,
            max_response_parse_bytes: 16 * 1024 * 1024,
            drain_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    backends: Option<Vec<RawBackendRef>>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    price: Option<RawPrice>,
    #[serde(default)]
    sla: Option<RawSla>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(deserialize_with = "deserialize_decimal")]
    input_per_1m_usd: Decimal,
    #[serde(deserialize_with = "deserialize_decimal")]
    output_per_1m_usd: Decimal,
    #[serde(default, deserialize_with = "deserialize_opt_decimal")]
    cached_input_per_1m_usd: Option<Decimal>,
}

// ---------------------------------------------------------------- validated ----------------

/// A secret read from the environment. It prints as `[redacted]` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// When set, admin endpoints other than the health probes need `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    pub backends: Vec<Backend>,
    pub models: Vec<Model>,
    /// Index into `backends` of the backend that receives models the config does not list.
    pub default_backend: Option<usize>,
    pub simulator: Option<SimulatorConfig>,
    /// Teams, the ledger, budgets, alerts.
    pub spend: Spend,
    /// OTLP trace export, when an endpoint is configured (here or in `OTEL_EXPORTER_OTLP_*`).
    pub telemetry: Option<Telemetry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_request_body_bytes: usize,
    pub request_header_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_sse_line_bytes: usize,
    pub max_response_parse_bytes: usize,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// One or more backends; with several, requests spread by weighted least in-flight and fail over.
    pub backends: Vec<WeightedBackend>,
    pub upstream_model: Option<String>,
    pub price: Option<Price>,
    /// The model's objectives (its `sla:` over the top-level one), if any.
    pub sla: Option<Objectives>,
}

// ---------------------------------------------------------------- errors -------------------

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in a config file, each with its key path and line.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}", self.file, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            let at = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            let path = if p.path.is_empty() { "(top level)" } else { &p.path };
            writeln!(f, "  {}{at}: {path}: {}", self.file, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------- loading ------------------

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem { path: String::new(), line: None, message: format!("cannot read the file: {e}") }],
        })?;
        Config::parse(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text. `env` looks up environment variables (tests pass their own).
    pub fn parse(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let index = LineIndex::build(text);
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let line = e.inner().location().map(|l| l.line()).or_else(|| index.line_of(&path));
            let message = strip_location(&e.inner().to_string());
            ConfigError { file: file.to_string(), problems: vec![Problem { path, line, message }] }
        })?;
        let mut v = Validator { index: &index, problems: Vec::new() };
        let config = v.config(raw, env);
        match config {
            Some(c) if v.problems.is_empty() => Ok(c),
            _ => Err(ConfigError { file: file.to_string(), problems: v.problems }),
        }
    }

    pub fn model_by_name(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// A model's objectives, if it has any.
    pub fn sla_for(&self, model: &str) -> Option<&Objectives> {
        self.model_by_name(model).and_then(|m| m.sla.as_ref())
    }
}

/// serde_path_to_error writes `?` for an unknown position and `.` for the root.
fn clean_path(p: &str) -> String {
    if p == "." || p == "?" { String::new() } else { p.to_string() }
}

/// serde_yaml_ng appends " at line L column C" to messages; the line is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

struct Validator<'a> {
    index: &'a LineIndex,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.index.line_of(&path);
        self.problems.push(Problem { path, line, message: message.into() });
    }

    /// A secret from the environment variable `var`; its absence is a problem at `path`.
    fn secret(&mut self, path: &str, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
        match env(var) {
            Some(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                self.problem(path, format!("environment variable `{var}` is not set"));
                None
            }
        }
    }

    fn addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(path, format!("`{value}` is not an IP:port address (e.g. \"127.0.0.1:8080\")"));
                None
            }
        }
    }

    fn positive_ms(&mut self, path: &str, ms: u64) -> Duration {
        if ms == 0 {
            self.problem(path, "must be greater than 0");
        }
        Duration::from_millis(ms)
    }

    fn config(&mut self, raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
        if raw.version != 1 {
            self.problem("version", format!("unsupported version {}; this tollgate reads version 1", raw.version));
        }
        let listen = self.addr("listen", &raw.listen);
        let admin_listen = self.addr("admin_listen", &raw.admin_listen);
        // Port 0 (an ephemeral port each) cannot collide.
        if listen.is_some_and(|l| l.port() != 0) && listen == admin_listen {
            self.problem("admin_listen", "must differ from `listen`: metrics are served on their own port");
        }
        let limits = self.limits(&raw.limits);
        let admin_token = raw.admin_token_env.as_ref().and_then(|var| self.secret("admin_token_env", var, env));
        let tls = raw.tls.map(|t| {
            for (key, file) in [("tls.cert_file", &t.cert_file), ("tls.key_file", &t.key_file)] {
                if !file.is_file() {
                    self.problem(key, format!("file `{}` does not exist", file.display()));
                }
            }
            TlsFiles { cert_file: t.cert_file, key_file: t.key_file }
        });

        let mut backends = Vec::new();
        for (i, b) in raw.backends.into_iter().enumerate() {
            let path = format!("backends[{i}]");
            if backends.iter().any(|x: &Backend| x.name == b.name) {
                self.problem(format!("{path}.name"), format!("backend `{}` is defined twice", b.name));
            }
            if let Some(backend) = self.backend(&path, b, env) {
                backends.push(backend);
            }
        }
        if backends.is_empty() && self.problems.is_empty() {
            self.problem("backends", "at least one backend is required");
        }
        let backend_index = |name: &str| backends.iter().position(|b| b.name == name);

        let mut models: Vec<Model> = Vec::new();
        for (i, m) in raw.models.into_iter().enumerate() {
            let path = format!("models[{i}]");
            if m.name.trim().is_empty() {
                self.problem(format!("{path}.name"), "must not be empty");
            } else if RESERVED_MODEL_LABELS.contains(&m.name.as_str()) {
                self.problem(
                    format!("{path}.name"),
                    format!("`{}` is reserved for models the config does not list", m.name),
                );
            } else if models.iter().any(|x| x.name == m.name) {
                self.problem(format!("{path}.name"), format!("model `{}` is defined twice", m.name));
            }
            let refs: Vec<(String, String, u32)> = match (m.backend, m.backends) {
                (Some(name), None) => vec![(format!("{path}.backend"), name, 1)],
                (None, Some(list)) if !list.is_empty() => list
                    .into_iter()
                    .enumerate()
                    .map(|(j, r)| match r {
                        RawBackendRef::Name(n) => (format!("{path}.backends[{j}]"), n, 1),
                        RawBackendRef::Weighted(w) => (format!("{path}.backends[{j}]"), w.name, w.weight),
                    })
                    .collect(),
                (Some(_), Some(_)) => {
                    self.problem(format!("{path}.backends"), "give either `backend` or `backends`, not both");
                    continue;
                }
                _ => {
                    self.problem(path.clone(), "needs `backend: NAME` or `backends: [NAME, ...]`");
                    continue;
                }
            };
            let mut backends: Vec<WeightedBackend> = Vec::new();
            for (key, name, weight) in refs {
                match backend_index(&name) {
                    None => self.problem(key, format!("backend `{name}` is not defined under `backends`")),
                    Some(_) if weight == 0 => self.problem(key, "a weight must be at least 1"),
                    Some(index) if backends.iter().any(|b| b.index == index) => {
                        self.problem(key, format!("backend `{name}` is listed twice"))
                    }
                    Some(index) => backends.push(WeightedBackend { index, weight }),
                }
            }
            if backends.is_empty() {
                continue;
            }
            let price = m.price.map(|p| {
                for (key, value) in [
                    ("input_per_1m_usd", Some(p.input_per_1m_usd)),
                    ("output_per_1m_usd", Some(p.output_per_1m_usd)),
                    ("cached_input_per_1m_usd", p.cached_input_per_1m_usd),
                ] {
                    if value.is_some_and(|v| v.is_sign_negative() && !v.is_zero()) {
                        self.problem(format!("{path}.price.{key}"), "a price must not be negative");
                    }
                }
                Price {
                    input_per_1m: p.input_per_1m_usd,
                    output_per_1m: p.output_per_1m_usd,
                    cached_input_per_1m: p.cached_input_per_1m_usd,
                }
            });
            let sla = self.sla(&path, m.sla.as_ref(), raw.sla.as_ref());
            models.push(Model { name: m.name, backends, upstream_model: m.upstream_model, price, sla });
        }
        if models.is_empty() && raw.default_backend.is_none() && self.problems.is_empty() {
            self.problem("models", "list at least one model (or set `default_backend`)");
        }
        let default_backend = raw.default_backend.and_then(|name| {
            let found = backend_index(&name);
            if found.is_none() {
                self.problem("default_backend", format!("backend `{name}` is not defined under `backends`"));
            }
            found
        });
        let simulator = raw.simulator.and_then(|s| self.simulator(s));
        let model_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let spend = self.spend(
            RawSpend {
                timezone: raw.timezone,
                clients: raw.clients,
                require_client_key: raw.require_client_key,
                ledger: raw.ledger,
                budgets: raw.budgets,
                alerts: raw.alerts,
                budget_store: raw.budget_store,
            },
            &model_names,
            env,
        );
        if let (Some(sim), Some(l), Some(a)) = (&simulator, listen, admin_listen)
            && sim.listen.port() != 0
            && (sim.listen == l || sim.listen == a)
        {
            self.problem("simulator.listen", "must differ from `listen` and `admin_listen`");
        }

        let telemetry = self.telemetry(raw.telemetry.unwrap_or_default(), env);
        Some(Config {
            telemetry,
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token,
            tls,
            limits,
            backends,
            models,
            default_backend,
            simulator,
            spend,
        })
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let size = |v: &mut Self, key: &str, n: u64| {
            if n == 0 {
                v.problem(format!("limits.{key}"), "must be greater than 0");
            }
            usize::try_from(n).unwrap_or(usize::MAX)
        };
        Limits {
            max_request_body_bytes: size(self, "max_request_body_bytes", raw.max_request_body_bytes),
            max_sse_line_bytes: size(self, "max_sse_line_bytes", raw.max_sse_line_bytes),
            max_response_parse_bytes: size(self, "max_response_parse_bytes", raw.max_response_parse_bytes),
            request_header_timeout: self.positive_ms("limits.request_header_timeout_ms", raw.request_header_timeout_ms),
            request_body_timeout: self.positive_ms("limits.request_body_timeout_ms", raw.request_body_timeout_ms),
            drain_timeout: Duration::from_millis(raw.drain_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests;
