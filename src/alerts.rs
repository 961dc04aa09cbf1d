//! Built-in alerts for teams without Alertmanager: budget threshold crossings and "projected to
//! exceed" become webhook messages (JSON or Slack), one per budget, threshold and period —
//! deduplicated across restarts through the ledger's `alerts_sent` table — and SLA breaches and
//! recoveries one per transition; delivered off the request path with retries and backoff. URLs
//! come from the config only, never from requests.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::{Webhook, WebhookFormat};
use crate::ledger;
use crate::pricing::nano_usd_text;

/// Something a human should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub budget: String,
    pub period: &'static str,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// `"50%"`, `"80%"`, `"100%"` or `"projected"`.
    pub threshold: String,
    pub spent_nano_usd: u64,
    pub limit_nano_usd: u64,
    pub projected_nano_usd: u64,
    /// When the limit will be reached at the current rate, if within the period.
    pub limit_reached_at_ms: Option<i64>,
}

/// What the delivery task sends.
#[derive(Debug, Clone)]
enum Job {
    Budget(Alert),
    Sla(crate::sla::Transition),
}

/// Attempts per webhook and message, and the first backoff (doubling after each failure).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// The sending side, held by accounting; delivery runs on its own task.
#[derive(Debug)]
pub struct Alerter {
    tx: mpsc::Sender<Job>,
    webhooks: Arc<ArcSwap<Vec<Webhook>>>,
    counts: Arc<Counts>,
}

impl Alerter {
    /// Starts the delivery task. `ledger_path` (when the ledger is on) makes deduplication survive
    /// restarts; without it, alerts are deduplicated for the life of the process.
    pub fn start(webhooks: Vec<Webhook>, ledger_path: Option<PathBuf>) -> anyhow::Result<Alerter> {
        let (tx, rx) = mpsc::channel(1024);
        let webhooks = Arc::new(ArcSwap::from_pointee(webhooks));
        let counts = Arc::new(Counts::default());
        let client = crate::upstream::http_client(None, Duration::from_secs(5))?;
        tokio::spawn(deliver_loop(rx, webhooks.clone(), counts.clone(), client, ledger_path));
        Ok(Alerter { tx, webhooks, counts })
    }

    pub fn set_webhooks(&self, webhooks: Vec<Webhook>) {
        self.webhooks.store(Arc::new(webhooks));
    }

    /// Queues an alert; never blocks the request path (a full queue drops it, counted as failed).
    pub fn send(&self, alert: Alert) {
        self.queue(Job::Budget(alert));
    }

    /// An SLA objective was breached or recovered: one message per transition.
    pub fn send_sla(&self, t: crate::sla::Transition) {
        self.queue(Job::Sla(t));
    }

    fn queue(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            self.counts.failed.fetch_add(1, Relaxed);
        }
    }

    /// (delivered, failed after every retry).
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.delivered.load(Relaxed), self.counts.failed.load(Relaxed))
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn deliver_loop(
    mut rx: mpsc::Receiver<Job>,
    webhooks: Arc<ArcSwap<Vec<Webhook>>>,
    counts: Arc<Counts>,
    client: Client,
    ledger_path: Option<PathBuf>,
) {
    let mut seen: HashSet<(String, i64, String)> = HashSet::new();
    while let Some(job) = rx.recv().await {
        let render: Box<dyn Fn(WebhookFormat) -> Bytes + Send> = match job {
            Job::Sla(t) => Box::new(move |format| sla_message(&t, format)),
            Job::Budget(alert) => {
                if !seen.insert((alert.budget.clone(), alert.period_start_ms, alert.threshold.clone())) {
                    continue;
                }
                let (first, top) = match &ledger_path {
                    Some(path) => {
                        let (path, a) = (path.clone(), alert.clone());
                        tokio::task::spawn_blocking(move || claim_and_top(&path, &a))
                            .await
                            .unwrap_or((true, Top::default()))
                    }
                    None => (true, Top::default()),
                };
                if !first {
                    continue;
                }
                Box::new(move |format| message(&alert, &top, format))
            }
        };
        for hook in webhooks.load().iter() {
            let ok = post_with_retries(&client, hook, render(hook.format)).await;
            let counter = if ok { &counts.delivered } else { &counts.failed };
            counter.fetch_add(1, Relaxed);
        }
    }
}

/// The message for an SLA breach or recovery.
fn sla_message(t: &crate::sla::Transition, format: WebhookFormat) -> Bytes {
    let state = if t.breached { "breached" } else { "recovered" };
    let what = match t.objective {
        crate::sla::Objective::TtftP95 => {
            format!("{:.1} % of requests got their first token in time (objective: 95 %)", t.observed * 100.0)
        }
        crate::sla::Objective::MinOutputTokensPerSecond => {
            format!(
                "{:.1} % of requests decoded at or below the minimum speed (objective: at most 50 %)",
                t.observed * 100.0
            )
        }
        crate::sla::Objective::MaxErrorRatio => format!("error ratio {:.4}", t.observed),
    };
    let summary = format!(
        "SLA `{}` of model `{}` {state}: {what} over the last {} s",
        t.objective.as_str(),
        t.model,
        t.window.as_secs()
    );
    let body = match format {
        WebhookFormat::Json => json!({
            "kind": "tollgate_sla_alert",
            "summary": summary,
            "model": t.model,
            "objective": t.objective.as_str(),
            "state": state,
            "observed": t.observed,
            "window_seconds": t.window.as_secs(),
        }),
        WebhookFormat::Slack => json!({"text": summary}),
    };
    Bytes::from(body.to_string())
}

/// Top spenders of the alert's period, for the message.
#[derive(Debug, Default)]
struct Top {
    teams: Vec<(String, u64)>,
    models: Vec<(String, u64)>,
}

/// Records the alert as sent (false when an earlier process already sent it) and reads the top
/// teams and models of its period.
fn claim_and_top(path: &std::path::Path, a: &Alert) -> (bool, Top) {
    let Ok(conn) = ledger::open(path) else { return (true, Top::default()) };
    let first = conn
        .execute(
            "INSERT OR IGNORE INTO alerts_sent (budget, period_start_ms, threshold, sent_ms) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![a.budget, a.period_start_ms, a.threshold, ledger::now_ms()],
        )
        .map_or(true, |n| n == 1);
    let top = |col: &str| -> Vec<(String, u64)> {
        let sql = format!(
            "SELECT {col}, SUM(cost_nano_usd) AS s FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 AND cost_nano_usd IS NOT NULL
             GROUP BY {col} ORDER BY s DESC LIMIT 3"
        );
        let Ok(mut stmt) = conn.prepare(&sql) else { return Vec::new() };
        let rows = stmt.query_map(rusqlite::params![a.period_start_ms, a.period_end_ms], |r| {
            Ok((r.get::<_, String>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        });
        rows.map(|rows| rows.flatten().collect()).unwrap_or_default()
    };
    (first, Top { teams: top("team"), models: top("model") })
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// The message a human reads: spend, limit, projection and who spent it.
fn message(a: &Alert, top: &Top, format: WebhookFormat) -> Bytes {
    let usd = |n: u64| nano_usd_text(n);
    let pairs =
        |v: &[(String, u64)]| v.iter().map(|(k, n)| json!({"name": k, "spend_usd": usd(*n)})).collect::<Vec<_>>();
    let headline = if a.threshold == "projected" {
        format!("Budget `{}` is projected to exceed its {} limit", a.budget, a.period)
    } else {
        format!("Budget `{}` reached {} of its {} limit", a.budget, a.threshold, a.period)
    };
    let body = match format {
        WebhookFormat::Json => json!({
            "kind": "tollgate_budget_alert",
            "summary": headline,
            "budget": a.budget,
            "period": a.period,
            "period_start": iso(a.period_start_ms),
            "period_end": iso(a.period_end_ms),
            "threshold": a.threshold,
            "spend_usd": usd(a.spent_nano_usd),
            "limit_usd": usd(a.limit_nano_usd),
            "projected_usd": usd(a.projected_nano_usd),
            "limit_reached_at": a.limit_reached_at_ms.map(iso),
            "top_teams": pairs(&top.teams),
            "top_models": pairs(&top.models),
        }),
        WebhookFormat::Slack => {
            let list =
                |v: &[(String, u64)]| v.iter().map(|(k, n)| format!("{k} ${}", usd(*n))).collect::<Vec<_>>().join(", ");
            let reached = a.limit_reached_at_ms.map(|t| format!(", limit reached at {}", iso(t))).unwrap_or_default();
            json!({"text": format!(
                "*{headline}*\nspend ${} of ${} this {} (since {}); projected ${}{reached}\ntop teams: {}\ntop models: {}",
                usd(a.spent_nano_usd), usd(a.limit_nano_usd), a.period, iso(a.period_start_ms),
                usd(a.projected_nano_usd), list(&top.teams), list(&top.models)
            )})
        }
    };
    Bytes::from(body.to_string())
}

/// POSTs with retries and exponential backoff; true once a 2xx came back.
async fn post_with_retries(client: &Client, hook: &Webhook, body: Bytes) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()));
        let Ok(req) = req else { return false };
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                return true;
            }
            Ok(Ok(resp)) => tracing::warn!(status = resp.status().as_u16(), attempt, "alert webhook refused"),
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
            Err(_) => tracing::warn!(attempt, "alert webhook timed out"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    false
}
