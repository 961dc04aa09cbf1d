//! Budgets with injected time: calendar periods in time zones (DST included), reserve/settle,
//! threshold crossings, projection, and the overshoot bound under concurrency.

use std::sync::Arc;

use super::*;

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<Timestamp>().map(|t| t.as_millisecond()).unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
}

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn def(period: Period, limit: u64, mode: Mode) -> BudgetDef {
    BudgetDef {
        name: "b".into(),
        scope: Scope::All,
        period,
        limit_nano_usd: limit,
        thresholds_percent: vec![50, 80, 100],
        mode,
    }
}

#[test]
fn days_and_months_follow_the_zone_calendar() {
    let utc = TimeZone::UTC;
    assert_eq!(
        period_bounds(Period::Day, &utc, ms("2026-11-28T13:00:00Z")),
        (ms("2026-11-28T00:00:00Z"), ms("2026-11-29T00:00:00Z"))
    );
    // 23:30 UTC is already the 29th in Berlin (UTC+1 in winter): that day began at 23:00 UTC.
    let berlin = tz("Europe/Berlin");
    assert_eq!(
        period_bounds(Period::Day, &berlin, ms("2026-11-28T23:30:00Z")),
        (ms("2026-11-28T23:00:00Z"), ms("2026-11-29T23:00:00Z"))
    );
    // The day clocks spring forward lasts 23 hours.
    let (s, e) = period_bounds(Period::Day, &berlin, ms("2026-03-29T12:00:00Z"));
    assert_eq!((s, e - s), (ms("2026-03-28T23:00:00Z"), 23 * 3_600_000));
    assert_eq!(
        period_bounds(Period::Month, &tz("America/New_York"), ms("2026-12-01T03:00:00Z")),
        (ms("2026-11-01T04:00:00Z"), ms("2026-12-01T05:00:00Z"))
    );
}

#[test]
fn a_non_utc_budget_resets_at_local_midnight() {
    let tokyo = tz("Asia/Tokyo");
    let b = BudgetState::new(def(Period::Day, 1_000, Mode::Enforce), &tokyo, ms("2026-11-28T10:00:00Z"), 0);
    assert!(b.settle(&tokyo, ms("2026-11-28T10:00:00Z"), 0, 1_000).iter().any(|c| c.percent == 100));
    let refused = b.try_reserve(&tokyo, ms("2026-11-28T14:59:59Z"), 1).err();
    // Tokyo midnight is 15:00 UTC.
    assert_eq!(refused, Some(Refusal { budget: "b".into(), resets_at_ms: ms("2026-11-28T15:00:00Z") }));
    assert_eq!(b.try_reserve(&tokyo, ms("2026-11-28T15:00:00Z"), 1), Ok(()));
    assert_eq!(b.snapshot(&tokyo, ms("2026-11-28T15:00:01Z")).spent_nano_usd, 0);
}

#[test]
fn thresholds_are_crossed_once() {
    let utc = TimeZone::UTC;
    let now = ms("2026-11-28T12:00:00Z");
    let b = BudgetState::new(def(Period::Day, 1_000, Mode::Alert), &utc, now, 0);
    let percents = |c: Vec<Crossing>| c.iter().map(|c| c.percent).collect::<Vec<_>>();
    assert_eq!(percents(b.settle(&utc, now, 0, 400)), Vec::<u32>::new());
    assert_eq!(percents(b.settle(&utc, now, 0, 450)), vec![50, 80]);
    assert_eq!(percents(b.settle(&utc, now, 0, 100)), Vec::<u32>::new());
    assert_eq!(percents(b.settle(&utc, now, 0, 50)), vec![100]);
    assert_eq!(percents(b.settle(&utc, now, 0, 5_000)), Vec::<u32>::new());
    // Past the limit a reservation is refused (only enforce-mode budgets are asked for one).
    assert_eq!(
        b.try_reserve(&utc, now, 10),
        Err(Refusal { budget: "b".into(), resets_at_ms: ms("2026-11-29T00:00:00Z") })
    );
}

#[test]
fn projection_from_the_burn_rate() {
    let (start, end) = (0, 86_400_000);
    // $1 spent in the first 6 hours of the day: $4 by midnight; a $2 limit is reached at noon.
    assert_eq!(project(1_000_000_000, 2_000_000_000, start, end, 6 * 3_600_000), (4_000_000_000, Some(12 * 3_600_000)));
    // A $5 limit is not reached today.
    assert_eq!(project(1_000_000_000, 5_000_000_000, start, end, 6 * 3_600_000).1, None);
    // Too early to say: 10 minutes into the day.
    assert_eq!(project(1_000, 5_000, start, end, 600_000), (1_000, None));
}

#[test]
fn concurrent_requests_overshoot_by_at_most_what_was_in_flight() {
    let utc = TimeZone::UTC;
    let now = ms("2026-11-28T12:00:00Z");
    let limit = 1_000_000;
    let b = Arc::new(BudgetState::new(def(Period::Day, limit, Mode::Enforce), &utc, now, 0));
    // 8 threads, each admitting requests estimated at 1000 that really cost 3000, 4 in flight each.
    let (estimate, cost, per_thread_in_flight) = (1_000, 3_000, 4);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            let utc = utc.clone();
            std::thread::spawn(move || {
                let mut admitted = 0;
                loop {
                    let mut held = 0;
                    for _ in 0..per_thread_in_flight {
                        if b.try_reserve(&utc, now, estimate).is_ok() {
                            held += 1;
                        }
                    }
                    for _ in 0..held {
                        b.settle(&utc, now, estimate, cost);
                    }
                    admitted += held;
                    if held == 0 {
                        return admitted;
                    }
                }
            })
        })
        .collect();
    let admitted: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let spent = b.snapshot(&utc, now).spent_nano_usd;
    assert_eq!(spent, admitted * cost);
    // The documented bound: at most 32 requests in flight, each exceeding its estimate by 2000,
    // plus the one whose admission crossed the limit.
    let bound = limit + 32 * (cost - estimate) + cost;
    assert!(spent >= limit && spent <= bound, "spent {spent}, bound {bound}");
}
