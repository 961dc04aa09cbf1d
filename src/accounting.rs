//! Where a request's money goes: the budget check before it is forwarded, and after it ends the
//! ledger row, the budget settlement and the threshold alerts. One per process; budgets and
//! webhooks are swapped on reload, the ledger stays open.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::tz::TimeZone;

use crate::alerts::{Alert, Alerter};
use crate::budget::{BudgetState, Crossing, Mode, Refusal, Scope, Snapshot};
use crate::config::Spend;
use crate::ledger::{self, Ledger, Row};
use crate::metrics::AccountingView;

/// A reservation against one enforced budget, released or settled when the request ends.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub budget: Arc<BudgetState>,
    pub nano_usd: u64,
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
    alerter: Alerter,
}

impl Accounting {
    /// Opens the ledger and reads the current periods' spend back from it, so a restart mid-day
    /// forgets nothing that was flushed.
    pub fn start(spend: &Spend) -> anyhow::Result<Accounting> {
        let ledger = match &spend.ledger {
            Some(l) => Some(Arc::new(Ledger::start(&l.path, l.flush_interval, l.retention_days)?)),
            None => None,
        };
        let alerter = Alerter::start(spend.webhooks.clone(), ledger.as_ref().map(|l| l.path.clone()))?;
        let accounting = Accounting {
            ledger,
            budgets: ArcSwap::from_pointee(BudgetSet { tz: TimeZone::UTC, list: Vec::new() }),
            alerter,
        };
        accounting.load_budgets(spend)?;
        Ok(accounting)
    }

    /// Applies a reloaded config: budgets are rebuilt from the ledger's totals (after a flush, so
    /// nothing settled so far is lost), webhooks replaced. The ledger file is kept until restart.
    pub fn reload(&self, spend: &Spend) -> anyhow::Result<()> {
        if let (Some(l), Some(new)) = (&self.ledger, &spend.ledger)
            && l.path != new.path
        {
            tracing::warn!("ledger.path changed: it takes effect at the next restart");
        }
        self.load_budgets(spend)?;
        self.alerter.set_webhooks(spend.webhooks.clone());
        Ok(())
    }

    fn load_budgets(&self, spend: &Spend) -> anyhow::Result<()> {
        let now = ledger::now_ms();
        let conn = match &self.ledger {
            Some(l) => {
                l.flush();
                Some(ledger::open(&l.path)?)
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
                Some(c) => ledger::spend_between(c, start, end, team, model)?,
                None => 0,
            };
            list.push(Arc::new(BudgetState::new(def.clone(), &spend.timezone, now, spent)));
        }
        self.budgets.store(Arc::new(BudgetSet { tz: spend.timezone.clone(), list }));
        Ok(())
    }

    /// Before forwarding: reserves `estimate_nano_usd` against every enforced budget the request
    /// counts toward; the first one already spent refuses it (and the others are given back).
    pub fn admit(&self, team: &str, model: &str, estimate_nano_usd: u64) -> Result<Vec<Reservation>, Refusal> {
        let set = self.budgets.load();
        let now = ledger::now_ms();
        let mut held: Vec<Reservation> = Vec::new();
        for b in set.list.iter().filter(|b| b.def.mode == Mode::Enforce && b.matches(team, model)) {
            if let Err(refusal) = b.try_reserve(&set.tz, now, estimate_nano_usd) {
                for r in &held {
                    r.budget.release(r.nano_usd);
                }
                return Err(refusal);
            }
            held.push(Reservation { budget: b.clone(), nano_usd: estimate_nano_usd });
        }
        Ok(held)
    }

    /// After the request: the ledger row, the settlement of every budget it counts toward (its
    /// reservations released), and the alerts that settlement triggers.
    pub fn record(&self, row: Row, reservations: &[Reservation]) {
        let set = self.budgets.load();
        let now = row.ts_ms.max(ledger::now_ms());
        let cost = row.cost_nano_usd.unwrap_or(0);
        for b in set.list.iter().filter(|b| b.matches(&row.team, &row.model)) {
            // A reservation made under a budget list since replaced by a reload is simply released.
            let reserved = reservations.iter().find(|r| Arc::ptr_eq(&r.budget, b)).map_or(0, |r| r.nano_usd);
            for crossing in b.settle(&set.tz, now, reserved, cost) {
                self.alert_crossing(b, &set.tz, now, crossing);
            }
            let snap = b.snapshot(&set.tz, now);
            if snap.projected_nano_usd > snap.limit_nano_usd
                && snap.spent_nano_usd < snap.limit_nano_usd
                && b.first_projection_alert(snap.start_ms)
            {
                self.alerter.send(alert_of(&snap, "projected".into()));
            }
        }
        for r in reservations.iter().filter(|r| !set.list.iter().any(|b| Arc::ptr_eq(&r.budget, b))) {
            r.budget.release(r.nano_usd);
        }
        if let Some(l) = &self.ledger {
            l.append(row);
        }
    }

    fn alert_crossing(&self, b: &BudgetState, tz: &TimeZone, now: i64, c: Crossing) {
        let snap = b.snapshot(tz, now);
        let mut alert = alert_of(&snap, format!("{}%", c.percent));
        alert.spent_nano_usd = c.spent_nano_usd;
        self.alerter.send(alert);
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        let set = self.budgets.load();
        let now = ledger::now_ms();
        set.list.iter().map(|b| b.snapshot(&set.tz, now)).collect()
    }

    /// Waits until every queued ledger row is on disk (shutdown, tests).
    pub fn flush(&self) {
        if let Some(l) = &self.ledger {
            l.flush();
        }
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
    fn alert_deliveries(&self) -> (u64, u64) {
        self.alerter.counts()
    }
}
