//! Where a request's money goes: the budget check before it is forwarded, and after it ends the
//! ledger row, the budget settlement and the threshold alerts. One per process; budgets and
//! webhooks are swapped on reload, the ledger stays open. With a shared store (Redis) budgets are
//! settled there, so every replica enforces the same limit.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::tz::TimeZone;

use crate::alerts::{Alert, Alerter};
use crate::budget::shared::SharedStore;
use crate::budget::{BudgetState, Mode, Refusal, Scope, Snapshot};
use crate::config::Spend;
use crate::ledger::{self, Ledger, Row};
use crate::metrics::AccountingView;

/// A reservation against one enforced budget, released or settled when the request ends.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub budget: Arc<BudgetState>,
    pub nano_usd: u64,
}

/// Why a request may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Budget(Refusal),
    /// The shared budget store is unreachable and `fail_open` is off.
    StoreUnavailable,
}

#[derive(Debug)]
struct BudgetSet {
    tz: TimeZone,
    list: Vec<Arc<BudgetState>>,
}

#[derive(Debug)]
pub struct Accounting {
    ledger: Option<Arc<Ledger>>,
    budgets: ArcSwap<BudgetSet>,
    alerter: Arc<Alerter>,
    /// Budgets shared with other replicas, when configured.
    shared: Option<Arc<SharedStore>>,
}

impl Accounting {
    /// Opens the ledger and reads the current periods' spend back from it (or from the shared
    /// store), so a restart mid-day forgets nothing that was flushed. Redis unreachable at start:
    /// with `fail_open` this replica budgets alone until restart (logged); without, start fails.
    pub async fn start(spend: &Spend) -> anyhow::Result<Accounting> {
        let ledger = match &spend.ledger {
            // [postgres ledger] SQLite or PostgreSQL, as `ledger.postgres` says.
            Some(l) => Some(Arc::new(Ledger::start_with(l)?)),
            None => None,
        };
        let alerter = Arc::new(Alerter::start(spend.webhooks.clone(), ledger.as_ref().map(|l| l.path.clone()))?);
        let shared = match &spend.budget_store {
            None => None,
            Some(store) => match SharedStore::connect(store.redis_url.expose(), store.fail_open).await {
                Ok(s) => Some(Arc::new(s)),
                Err(e) if store.fail_open => {
                    tracing::error!(error = %e, "budget store (Redis) unreachable: budgeting per replica until restart");
                    None
                }
                Err(e) => anyhow::bail!("budget_store.redis: {e}"),
            },
        };
        let empty = BudgetSet { tz: TimeZone::UTC, list: Vec::new() };
        let accounting = Accounting { ledger, budgets: ArcSwap::from_pointee(empty), alerter, shared };
        accounting.load_budgets(spend)?;
        accounting.sync_shared().await;
        Ok(accounting)
    }

    /// With a shared store, refreshes the local view of the fleet's spend every few seconds, so
    /// an idle replica's gauges and `/api/budgets` follow what the others spend.
    pub fn follow_shared(self: &Arc<Self>) {
        if self.shared.is_none() {
            return;
        }
        let me = Arc::downgrade(self);
        spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                me.sync_shared().await;
            }
        });
    }

    /// Applies a reloaded config: budgets are rebuilt from the ledger's totals (after a flush, so
    /// nothing settled so far is lost), webhooks replaced. The ledger file and the shared store
    /// are kept until restart.
    pub fn reload(&self, spend: &Spend) -> anyhow::Result<()> {
        if let (Some(l), Some(new)) = (&self.ledger, &spend.ledger)
            && l.path != new.path
        {
            tracing::warn!("ledger.path changed: it takes effect at the next restart");
        }
        self.load_budgets(spend)?;
        self.alerter.set_webhooks(spend.webhooks.clone());
        if let Some(store) = &self.shared {
            let (store, set) = (store.clone(), self.budgets.load_full());
            spawn(async move { sync(&store, &set).await });
        }
        Ok(())
    }

    fn load_budgets(&self, spend: &Spend) -> anyhow::Result<()> {
        let now = ledger::now_ms();
        // [postgres ledger] Totals from the configured store (PostgreSQL: the fleet's).
        let conn = match &self.ledger {
            Some(l) => {
                l.flush();
                Some(l)
            }
            None => None,
        };
        let mut list = Vec::with_capacity(spend.budgets.len());
        for def in &spend.budgets {
            let (start, end) = crate::budget::period_bounds(def.period, &spend.timezone, now);
            let (team, model) = match &def.scope {
                Scope::All => (None, None),
                Scope::Team(t) => (Some(t.as_str()), None),
                Scope::Model(m) => (None, Some(m.as_str())),
            };
            let spent = match &conn {
                Some(l) => l.spend_between(start, end, team, model)?,
                None => 0,
            };
            list.push(Arc::new(BudgetState::new(def.clone(), &spend.timezone, now, spent)));
        }
        self.budgets.store(Arc::new(BudgetSet { tz: spend.timezone.clone(), list }));
        Ok(())
    }

    /// Reads every budget's current spend from the shared store into the local view.
    pub async fn sync_shared(&self) {
        if let Some(store) = &self.shared {
            sync(store, &self.budgets.load_full()).await;
        }
    }

    /// Before forwarding: reserves `estimate_nano_usd` against every enforced budget the request
    /// counts toward; the first one already spent refuses it (and the others are given back).
    pub async fn admit(&self, team: &str, model: &str, estimate_nano_usd: u64) -> Result<Vec<Reservation>, Denied> {
        let set = self.budgets.load_full();
        let now = ledger::now_ms();
        let mut held: Vec<Reservation> = Vec::new();
        for b in set.list.iter().filter(|b| b.def.mode == Mode::Enforce && b.matches(team, model)) {
            let admitted = match &self.shared {
                None => b.try_reserve(&set.tz, now, estimate_nano_usd).map_err(Denied::Budget),
                Some(store) => {
                    let period = b.period(&set.tz, now);
                    match store.reserve(&b.def.name, period, b.def.limit_nano_usd, estimate_nano_usd, now).await {
                        Ok((true, spent)) => {
                            b.set_shared_spent(spent);
                            Ok(())
                        }
                        Ok((false, spent)) => {
                            b.set_shared_spent(spent);
                            b.note_rejection();
                            Err(Denied::Budget(Refusal { budget: b.def.name.clone(), resets_at_ms: period.1 }))
                        }
                        // Fail open: the request goes on unreserved (the error is counted and logged).
                        Err(_) if store.fail_open => continue,
                        Err(_) => Err(Denied::StoreUnavailable),
                    }
                }
            };
            if let Err(denied) = admitted {
                self.give_back(held);
                return Err(denied);
            }
            held.push(Reservation { budget: b.clone(), nano_usd: estimate_nano_usd });
        }
        Ok(held)
    }

    /// Releases the reservations of a request that will not run.
    fn give_back(&self, held: Vec<Reservation>) {
        match &self.shared {
            None => held.iter().for_each(|r| r.budget.release(r.nano_usd)),
            Some(store) => {
                let store = store.clone();
                spawn(async move { release_shared(&store, held).await });
            }
        }
    }

    /// After the request: the ledger row, the settlement of every budget it counts toward (its
    /// reservations released), and the alerts that settlement triggers.
    pub fn record(&self, row: Row, reservations: &[Reservation]) {
        let set = self.budgets.load_full();
        let now = row.ts_ms.max(ledger::now_ms());
        let cost = row.cost_nano_usd.unwrap_or(0);
        // A reservation made under a budget list since replaced by a reload is released.
        let reserved_for =
            |b: &Arc<BudgetState>| reservations.iter().find(|r| Arc::ptr_eq(&r.budget, b)).map_or(0, |r| r.nano_usd);
        let stale: Vec<Reservation> =
            reservations.iter().filter(|r| !set.list.iter().any(|b| Arc::ptr_eq(&r.budget, b))).cloned().collect();
        let settle: Vec<(Arc<BudgetState>, u64)> = set
            .list
            .iter()
            .filter(|b| b.matches(&row.team, &row.model))
            .map(|b| (b.clone(), reserved_for(b)))
            .collect();
        match &self.shared {
            None => {
                for (b, reserved) in &settle {
                    let crossed = b.settle(&set.tz, now, *reserved, cost);
                    alert(&self.alerter, b, &set.tz, now, &crossed);
                }
                stale.iter().for_each(|r| r.budget.release(r.nano_usd));
            }
            Some(store) => {
                // The shared counters are settled off the request path; each replica learns the
                // fleet's spend from the result, and only the one whose add crossed a threshold alerts.
                let (store, alerter, tz) = (store.clone(), self.alerter.clone(), set.tz.clone());
                spawn(async move {
                    for (b, reserved) in settle {
                        let period = b.period(&tz, now);
                        if let Ok((before, after)) = store.settle(&b.def.name, period, reserved, cost, now).await {
                            b.set_shared_spent(after);
                            let crossed = b.crossings(before, after);
                            alert(&alerter, &b, &tz, now, &crossed);
                        }
                    }
                    release_shared(&store, stale).await;
                });
            }
        }
        if let Some(l) = &self.ledger {
            l.append(row);
        }
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        let set = self.budgets.load();
        let now = ledger::now_ms();
        set.list.iter().map(|b| b.snapshot(&set.tz, now)).collect()
    }

    /// An SLA transition for the webhooks.
    pub fn alert_sla(&self, t: crate::sla::Transition) {
        self.alerter.send_sla(t);
    }

    /// Waits until every queued ledger row is on disk (shutdown, tests).
    pub fn flush(&self) {
        if let Some(l) = &self.ledger {
            l.flush();
        }
    }
}

async fn sync(store: &SharedStore, set: &BudgetSet) {
    let now = ledger::now_ms();
    for b in &set.list {
        let (start, _) = b.period(&set.tz, now);
        if let Ok(spent) = store.spent(&b.def.name, start).await {
            b.set_shared_spent(spent);
        }
    }
}

async fn release_shared(store: &SharedStore, held: Vec<Reservation>) {
    let now = ledger::now_ms();
    for r in held {
        let period = (r.budget.period_start(), r.budget.period_end());
        let _ = store.settle(&r.budget.def.name, period, r.nano_usd, 0, now).await;
    }
}

/// Threshold alerts for what a settlement crossed, and "projected to exceed" once per period
/// while the limit is not yet reached.
fn alert(alerter: &Alerter, b: &BudgetState, tz: &TimeZone, now: i64, crossed: &[crate::budget::Crossing]) {
    let snap = b.snapshot(tz, now);
    for c in crossed {
        let mut a = alert_of(&snap, format!("{}%", c.percent));
        a.spent_nano_usd = c.spent_nano_usd;
        alerter.send(a);
    }
    if snap.projected_nano_usd > snap.limit_nano_usd
        && snap.spent_nano_usd < snap.limit_nano_usd
        && b.first_projection_alert(snap.start_ms)
    {
        alerter.send(alert_of(&snap, "projected".into()));
    }
}

/// Runs settlement work on the runtime when there is one (a body dropped while the process exits
/// has none: that late settlement is skipped; the ledger row still carries the cost).
fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

fn alert_of(s: &Snapshot, threshold: String) -> Alert {
    Alert {
        budget: s.name.clone(),
        period: s.period.as_str(),
        period_start_ms: s.start_ms,
        period_end_ms: s.end_ms,
        threshold,
        spent_nano_usd: s.spent_nano_usd,
        limit_nano_usd: s.limit_nano_usd,
        projected_nano_usd: s.projected_nano_usd,
        limit_reached_at_ms: s.limit_reached_at_ms,
    }
}

impl AccountingView for Accounting {
    fn budgets(&self) -> Vec<Snapshot> {
        self.snapshots()
    }
    fn ledger_rows(&self) -> (u64, u64, u64) {
        self.ledger.as_ref().map_or((0, 0, 0), |l| (l.written(), l.dropped(), l.failed()))
    }
    // [postgres ledger]
    fn ledger_backlog(&self) -> (u64, u64) {
        self.ledger.as_ref().map_or((0, 0), |l| (l.queue_depth(), l.spooled()))
    }
    fn alert_deliveries(&self) -> (u64, u64) {
        self.alerter.counts()
    }
    fn budget_store_errors(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.errors())
    }
}
