//! The spend keys of the config: time zone, client keys → teams, the ledger, budgets and alert
//! webhooks. Part of `config.rs` (raw serde types here too), split out by concept.

use std::path::PathBuf;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::Validator;
use crate::budget::{BudgetDef, Mode, Period, Scope};
use crate::pricing::{deserialize_decimal, to_nano_usd};
use crate::teams::{ANONYMOUS, parse_sha256_hex};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    name: String,
    key_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLedger {
    enabled: bool,
    path: PathBuf,
    flush_interval_ms: u64,
    retention_days: u32,
    // [postgres ledger]
    postgres: Option<RawPostgresLedger>,
}

impl Default for RawLedger {
    fn default() -> Self {
        RawLedger {
            enabled: true,
            path: "tollgate-ledger.sqlite3".into(),
            flush_interval_ms: 1000,
            retention_days: 90,
            postgres: None,
        }
    }
}

/// [postgres ledger] `ledger.postgres`: the URL only from an environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgresLedger {
    url_env: String,
    #[serde(default = "spool_max_rows")]
    spool_max_rows: u64,
}

fn spool_max_rows() -> u64 {
    10_000_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "day")]
    period: String,
    #[serde(deserialize_with = "deserialize_decimal")]
    limit_usd: Decimal,
    #[serde(default = "default_thresholds")]
    thresholds_percent: Vec<u32>,
    #[serde(default = "alert")]
    mode: String,
}

fn day() -> String {
    "day".into()
}
fn alert() -> String {
    "alert".into()
}
fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: String,
    #[serde(default = "json")]
    format: String,
}

fn json() -> String {
    "json".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudgetStore {
    redis: RawRedis,
    #[serde(default = "yes")]
    fail_open: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_env: Option<String>,
}

/// Where budgets shared by replicas live.
#[derive(Debug, Clone)]
pub struct BudgetStore {
    /// `redis://host:port/db` (may hold a password: kept secret).
    pub redis_url: super::Secret,
    /// Keep serving (alert, count) when Redis is unreachable; false refuses enforced requests.
    pub fail_open: bool,
}

/// The raw spend keys, as they sit at the top level of the YAML.
pub(super) struct RawSpend {
    pub timezone: Option<String>,
    pub clients: Vec<RawClient>,
    pub require_client_key: bool,
    pub ledger: Option<RawLedger>,
    pub budgets: Vec<RawBudget>,
    pub alerts: Option<RawAlerts>,
    pub budget_store: Option<RawBudgetStore>,
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub path: PathBuf,
    pub flush_interval: Duration,
    pub retention_days: u32,
    /// [postgres ledger] The shared store; `path` is then the local spool.
    pub postgres: Option<PostgresLedger>,
}

/// [postgres ledger] Where a fleet's ledger lives.
#[derive(Debug, Clone)]
pub struct PostgresLedger {
    /// `postgres://user:password@host:port/db` (secret: from the `url_env` variable).
    pub url: super::Secret,
    /// Rows the local spool holds at most while PostgreSQL is down; past it rows are dropped.
    pub spool_max_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    Slack,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: http::Uri,
    pub format: WebhookFormat,
}

/// Validated spend settings.
#[derive(Debug, Clone)]
pub struct Spend {
    pub timezone: jiff::tz::TimeZone,
    pub timezone_name: String,
    /// (team, SHA-256 of its key).
    pub clients: Vec<(String, [u8; 32])>,
    pub require_client_key: bool,
    pub ledger: Option<LedgerConfig>,
    pub budgets: Vec<BudgetDef>,
    pub webhooks: Vec<Webhook>,
    pub budget_store: Option<BudgetStore>,
}

impl Validator<'_> {
    pub(super) fn spend(
        &mut self,
        raw: RawSpend,
        model_names: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Spend {
        let timezone_name = raw.timezone.unwrap_or_else(|| "UTC".into());
        let timezone = jiff::tz::TimeZone::get(&timezone_name).unwrap_or_else(|_| {
            self.problem("timezone", format!("`{timezone_name}` is not an IANA time zone (e.g. \"Europe/Berlin\")"));
            jiff::tz::TimeZone::UTC
        });
        let mut clients = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            if c.name.trim().is_empty() || c.name == ANONYMOUS {
                self.problem(format!("clients[{i}].name"), format!("must be a team name other than `{ANONYMOUS}`"));
            }
            match parse_sha256_hex(&c.key_sha256) {
                Some(h) if clients.iter().any(|(_, x)| *x == h) => {
                    self.problem(format!("clients[{i}].key_sha256"), "this key is listed twice")
                }
                Some(h) => clients.push((c.name, h)),
                None => self.problem(
                    format!("clients[{i}].key_sha256"),
                    "must be the 64 hex digits of the key's SHA-256 (e.g. `printf %s \"$KEY\" | sha256sum`)",
                ),
            }
        }
        let r = raw.ledger.unwrap_or_default();
        // [postgres ledger]
        let postgres = r.postgres.and_then(|p| {
            let url = self.secret("ledger.postgres.url_env", &p.url_env, env)?;
            if !url.expose().starts_with("postgres://") && !url.expose().starts_with("postgresql://") {
                self.problem("ledger.postgres.url_env", "the URL must start with postgres:// or postgresql://");
            }
            Some(PostgresLedger { url, spool_max_rows: p.spool_max_rows.max(1) })
        });
        let ledger = r.enabled.then(|| LedgerConfig {
            path: r.path,
            flush_interval: Duration::from_millis(r.flush_interval_ms.clamp(10, 60_000)),
            retention_days: r.retention_days,
            postgres,
        });
        let mut budgets: Vec<BudgetDef> = Vec::new();
        for (i, b) in raw.budgets.into_iter().enumerate() {
            let path = format!("budgets[{i}]");
            if budgets.iter().any(|x| x.name == b.name) {
                self.problem(format!("{path}.name"), format!("budget `{}` is defined twice", b.name));
            }
            let scope = match (b.team, b.model) {
                (None, None) => Scope::All,
                (Some(t), None) => {
                    if t != ANONYMOUS && !clients.iter().any(|(n, _)| *n == t) {
                        self.problem(format!("{path}.team"), format!("team `{t}` is not a `clients` name"));
                    }
                    Scope::Team(t)
                }
                (None, Some(m)) => {
                    if !model_names.contains(&m) {
                        self.problem(format!("{path}.model"), format!("model `{m}` is not defined under `models`"));
                    }
                    Scope::Model(m)
                }
                (Some(_), Some(_)) => {
                    self.problem(format!("{path}.model"), "a budget is scoped to a team or a model, not both");
                    Scope::All
                }
            };
            let period = match b.period.as_str() {
                "day" => Period::Day,
                "month" => Period::Month,
                other => {
                    self.problem(format!("{path}.period"), format!("`{other}` is not `day` or `month`"));
                    Period::Day
                }
            };
            let mode = match b.mode.as_str() {
                "alert" => Mode::Alert,
                "enforce" => Mode::Enforce,
                other => {
                    self.problem(format!("{path}.mode"), format!("`{other}` is not `alert` or `enforce`"));
                    Mode::Alert
                }
            };
            if b.limit_usd <= Decimal::ZERO {
                self.problem(format!("{path}.limit_usd"), "must be greater than 0");
            }
            let mut thresholds = b.thresholds_percent;
            thresholds.sort_unstable();
            thresholds.dedup();
            if thresholds.iter().any(|t| *t == 0 || *t > 1000) {
                self.problem(format!("{path}.thresholds_percent"), "each threshold must be between 1 and 1000");
            }
            budgets.push(BudgetDef {
                name: b.name,
                scope,
                period,
                limit_nano_usd: to_nano_usd(b.limit_usd.max(Decimal::ZERO)),
                thresholds_percent: thresholds,
                mode,
            });
        }
        let mut webhooks = Vec::new();
        for (i, w) in raw.alerts.unwrap_or_default().webhooks.into_iter().enumerate() {
            let format = match w.format.as_str() {
                "json" => WebhookFormat::Json,
                "slack" => WebhookFormat::Slack,
                other => {
                    self.problem(format!("alerts.webhooks[{i}].format"), format!("`{other}` is not `json` or `slack`"));
                    WebhookFormat::Json
                }
            };
            match w.url.parse::<http::Uri>() {
                Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.authority().is_some() => {
                    webhooks.push(Webhook { url, format })
                }
                _ => self.problem(format!("alerts.webhooks[{i}].url"), "must be an http:// or https:// URL"),
            }
        }
        let budget_store = raw.budget_store.and_then(|b| {
            let url = match (b.redis.url, b.redis.url_env) {
                (Some(u), None) => Some(super::Secret(u)),
                (None, Some(var)) => self.secret("budget_store.redis.url_env", &var, env),
                _ => {
                    self.problem("budget_store.redis", "give `url` or `url_env` (an environment variable holding it)");
                    None
                }
            }?;
            if !url.expose().starts_with("redis://") && !url.expose().starts_with("rediss://") {
                self.problem("budget_store.redis", "the URL must start with redis:// or rediss://");
            }
            Some(BudgetStore { redis_url: url, fail_open: b.fail_open })
        });
        Spend {
            timezone,
            timezone_name,
            clients,
            require_client_key: raw.require_client_key,
            ledger,
            budgets,
            webhooks,
            budget_store,
        }
    }
}
