//! Budgets: spend limits per calendar day or month in a configured time zone, scoped to all
//! traffic, a team or a model. Spend is integer nano-dollars; enforcement reserves an estimate
//! before a request is forwarded and settles the real cost after, so concurrent requests near the
//! limit overshoot it by at most what they were allowed to start with (see [`BudgetState::try_reserve`]).
//! No IO and no clock here: `now_ms` is a parameter.

pub mod shared;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The calendar period a budget resets on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Which requests a budget counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Team(String),
    Model(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Alert at thresholds; never refuse.
    Alert,
    /// Also refuse requests that would start once the limit is reached (429 `budget_exceeded`).
    Enforce,
}

/// A budget as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetDef {
    pub name: String,
    pub scope: Scope,
    pub period: Period,
    pub limit_nano_usd: u64,
    /// Alert thresholds in percent of the limit, ascending (default 50, 80, 100).
    pub thresholds_percent: Vec<u32>,
    pub mode: Mode,
}

/// [start, end) of the calendar period containing `now_ms`, in milliseconds, in `tz`. Days follow
/// the zone's civil calendar, so a day can be 23 or 25 hours long around DST changes.
pub fn period_bounds(period: Period, tz: &TimeZone, now_ms: i64) -> (i64, i64) {
    let fallback = (now_ms, now_ms.saturating_add(86_400_000));
    let Ok(now) = Timestamp::from_millisecond(now_ms) else { return fallback };
    let zoned = now.to_zoned_datetime(tz.clone());
    let start = match period {
        Period::Day => zoned.start_of_day(),
        Period::Month => zoned.first_of_month().and_then(|z| z.start_of_day()),
    };
    let Ok(start) = start else { return fallback };
    let end = match period {
        Period::Day => start.checked_add(1.day()),
        Period::Month => start.checked_add(1.month()),
    };
    match end {
        Ok(end) => (start.timestamp().as_millisecond(), end.timestamp().as_millisecond()),
        Err(_) => fallback,
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub budget: String,
    /// When the period ends and the budget resets.
    pub resets_at_ms: i64,
}

/// A threshold crossed by a settle, for the alerter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub budget: String,
    pub period: Period,
    pub period_start_ms: i64,
    pub percent: u32,
    pub spent_nano_usd: u64,
    pub limit_nano_usd: u64,
}

/// Where a budget stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub period: Period,
    pub mode: Mode,
    pub start_ms: i64,
    pub end_ms: i64,
    pub limit_nano_usd: u64,
    pub spent_nano_usd: u64,
    pub reserved_nano_usd: u64,
    /// Spend at the period's end at the burn rate so far (equal to spend early in a period, when a
    /// rate would be noise: before 1/48 of the period has passed).
    pub projected_nano_usd: u64,
    /// When the limit will be reached at that rate, if within the period.
    pub limit_reached_at_ms: Option<i64>,
    pub rejections: u64,
}

/// The live state of one budget. Lock-free: a request touches a few atomics.
#[derive(Debug)]
pub struct BudgetState {
    pub def: BudgetDef,
    start_ms: AtomicI64,
    end_ms: AtomicI64,
    spent: AtomicU64,
    reserved: AtomicU64,
    rejections: AtomicU64,
    /// Start of the last period a "projected to exceed" alert was raised for.
    projected_alerted: AtomicI64,
}

impl BudgetState {
    /// A budget whose current period (the one containing `now_ms`) has `spent` so far.
    pub fn new(def: BudgetDef, tz: &TimeZone, now_ms: i64, spent: u64) -> BudgetState {
        let (start, end) = period_bounds(def.period, tz, now_ms);
        BudgetState {
            def,
            start_ms: AtomicI64::new(start),
            end_ms: AtomicI64::new(end),
            spent: AtomicU64::new(spent),
            reserved: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            projected_alerted: AtomicI64::new(i64::MIN),
        }
    }

    /// True the first time it is asked for a given period: one projection alert per period.
    pub fn first_projection_alert(&self, period_start_ms: i64) -> bool {
        self.projected_alerted.swap(period_start_ms, SeqCst) != period_start_ms
    }

    pub fn matches(&self, team: &str, model: &str) -> bool {
        match &self.def.scope {
            Scope::All => true,
            Scope::Team(t) => t == team,
            Scope::Model(m) => m == model,
        }
    }

    /// Moves to a new period when `now_ms` has passed the current one. One caller wins the switch
    /// and resets the spend; a cost added concurrently at that very instant may land on either side.
    fn roll(&self, tz: &TimeZone, now_ms: i64) {
        let end = self.end_ms.load(SeqCst);
        if now_ms < end {
            return;
        }
        let (start, new_end) = period_bounds(self.def.period, tz, now_ms);
        if self.end_ms.compare_exchange(end, new_end, SeqCst, SeqCst).is_ok() {
            self.start_ms.store(start, SeqCst);
            self.spent.store(0, SeqCst);
        }
    }

    /// Enforce mode: admits a request while settled spend plus reservations are below the limit,
    /// and reserves `estimate` for it. The overshoot is bounded: a request is only admitted below
    /// the limit, so the period can end above it by at most the sum, over requests in flight at the
    /// moment it was reached, of (real cost − reserved estimate).
    pub fn try_reserve(&self, tz: &TimeZone, now_ms: i64, estimate: u64) -> Result<(), Refusal> {
        self.roll(tz, now_ms);
        let reserved = self.reserved.fetch_add(estimate, SeqCst) + estimate;
        let committed = self.spent.load(SeqCst).saturating_add(reserved - estimate);
        if committed >= self.def.limit_nano_usd {
            self.reserved.fetch_sub(estimate, SeqCst);
            self.rejections.fetch_add(1, SeqCst);
            return Err(Refusal { budget: self.def.name.clone(), resets_at_ms: self.end_ms.load(SeqCst) });
        }
        Ok(())
    }

    /// Gives back a reservation without spending (the request never reached a backend).
    pub fn release(&self, reserved: u64) {
        let _ = self.reserved.fetch_update(SeqCst, SeqCst, |r| Some(r.saturating_sub(reserved)));
    }

    /// Adds a finished request's real cost (releasing its reservation) and returns the thresholds
    /// this crossed.
    pub fn settle(&self, tz: &TimeZone, now_ms: i64, reserved: u64, cost: u64) -> Vec<Crossing> {
        self.roll(tz, now_ms);
        self.release(reserved);
        let before = self.spent.fetch_add(cost, SeqCst);
        self.crossings(before, before.saturating_add(cost))
    }

    /// The current period [start, end), after moving to a new one if `now_ms` requires it.
    pub fn period(&self, tz: &TimeZone, now_ms: i64) -> (i64, i64) {
        self.roll(tz, now_ms);
        (self.start_ms.load(SeqCst), self.end_ms.load(SeqCst))
    }

    /// With a shared store: the store's spend is the truth; this keeps the local view in step.
    pub fn set_shared_spent(&self, spent: u64) {
        self.spent.store(spent, SeqCst);
    }

    pub fn period_start(&self) -> i64 {
        self.start_ms.load(SeqCst)
    }

    pub fn period_end(&self) -> i64 {
        self.end_ms.load(SeqCst)
    }

    pub fn note_rejection(&self) {
        self.rejections.fetch_add(1, SeqCst);
    }

    /// Thresholds crossed by spend going from `before` to `after`.
    pub fn crossings(&self, before: u64, after: u64) -> Vec<Crossing> {
        let limit = self.def.limit_nano_usd;
        self.def
            .thresholds_percent
            .iter()
            .filter(|p| {
                let mark = u128::from(limit) * u128::from(**p) / 100;
                u128::from(before) < mark && u128::from(after) >= mark
            })
            .map(|p| Crossing {
                budget: self.def.name.clone(),
                period: self.def.period,
                period_start_ms: self.start_ms.load(SeqCst),
                percent: *p,
                spent_nano_usd: after,
                limit_nano_usd: limit,
            })
            .collect()
    }

    pub fn snapshot(&self, tz: &TimeZone, now_ms: i64) -> Snapshot {
        self.roll(tz, now_ms);
        let (start, end) = (self.start_ms.load(SeqCst), self.end_ms.load(SeqCst));
        let spent = self.spent.load(SeqCst);
        let (projected, reached) = project(spent, self.def.limit_nano_usd, start, end, now_ms);
        Snapshot {
            name: self.def.name.clone(),
            period: self.def.period,
            mode: self.def.mode,
            start_ms: start,
            end_ms: end,
            limit_nano_usd: self.def.limit_nano_usd,
            spent_nano_usd: spent,
            reserved_nano_usd: self.reserved.load(SeqCst),
            projected_nano_usd: projected,
            limit_reached_at_ms: reached,
            rejections: self.rejections.load(SeqCst),
        }
    }
}

/// Projected spend at `end` at the burn rate since `start`, and when `limit` is reached at that
/// rate (if it is, before `end`). Early in a period the rate is noise, so nothing is projected
/// before 1/48 of it has passed.
pub fn project(spent: u64, limit: u64, start: i64, end: i64, now: i64) -> (u64, Option<i64>) {
    let elapsed = now.saturating_sub(start).max(0) as u128;
    let length = end.saturating_sub(start).max(1) as u128;
    if elapsed * 48 < length || spent == 0 {
        return (spent, (spent >= limit).then_some(now));
    }
    let projected = u128::from(spent) * length / elapsed;
    let reached = if spent >= limit {
        Some(now)
    } else {
        let at = start as i128 + (i128::try_from(u128::from(limit) * elapsed / u128::from(spent)).unwrap_or(i128::MAX));
        (at < end as i128).then(|| i64::try_from(at).unwrap_or(i64::MAX))
    };
    (u64::try_from(projected).unwrap_or(u64::MAX), reached)
}

#[cfg(test)]
mod tests;
