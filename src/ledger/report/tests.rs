//! Reports over a real SQLite ledger file: sums per team, model and day, exact money, nearest-rank
//! percentiles on both paths, time zones around a DST change, and the three output formats.

use std::path::PathBuf;

use super::*;
use crate::ledger::{Row, insert, open};

/// A ledger file in its own temporary directory, removed on drop.
struct TempDb {
    dir: PathBuf,
    conn: Connection,
}

impl TempDb {
    fn new() -> TempDb {
        let dir = std::env::temp_dir().join(format!("tollgate-report-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let conn = open(&dir.join("ledger.sqlite3")).unwrap();
        TempDb { dir, conn }
    }

    fn put(&mut self, rows: Vec<Row>) {
        insert(&mut self.conn, &rows.into_iter().map(Box::new).collect::<Vec<_>>()).unwrap();
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ms(ts: &str) -> i64 {
    ts.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn date(d: &str) -> Date {
    d.parse().unwrap()
}

fn berlin() -> TimeZone {
    TimeZone::get("Europe/Berlin").unwrap()
}

/// A billed request with the given cost (`None`: unpriced), tokens and TTFT.
fn req(ts: &str, team: &str, model: &str, cost: Option<u64>, tokens: (u64, u64), ttft: Option<f64>) -> Row {
    let mut r = crate::ledger::tests::row(ms(ts), team, model, cost);
    (r.input_tokens, r.output_tokens, r.ttft_ms) = (tokens.0, tokens.1, ttft);
    r
}

fn opts(by: GroupBy, since: Option<&str>, until: Option<&str>) -> ReportOptions {
    ReportOptions { since: since.map(date), until: until.map(date), by, format: Format::Table }
}

fn report(db: &TempDb, by: GroupBy, since: &str, until: &str, tz: &TimeZone) -> Report {
    build(&db.conn, &opts(by, Some(since), Some(until)), tz, date(until)).unwrap()
}

fn render(report: &Report, by: GroupBy, format: Format) -> String {
    let mut out = Vec::new();
    write(report, &ReportOptions { since: None, until: None, by, format }, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn group(
    key: &str,
    requests: u64,
    tokens: (u64, u64),
    spend: &str,
    unpriced: u64,
    per_1k: Option<&str>,
    p50: Option<f64>,
    p95: Option<f64>,
) -> Group {
    Group {
        key: key.into(),
        requests,
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        spend_usd: spend.into(),
        unpriced_requests: unpriced,
        cost_per_1k_tokens_usd: per_1k.map(Into::into),
        ttft_p50_ms: p50,
        ttft_p95_ms: p95,
    }
}

/// Two teams on two models on 2026-03-10, plus a row after the period.
fn sample() -> TempDb {
    let mut db = TempDb::new();
    let failed = {
        // A request that failed before any usage: counted, billed nothing, not unpriced.
        let mut r = req("2026-03-10T15:00:00Z", "ads", "m1", None, (0, 0), None);
        (r.usage_source, r.status, r.outcome) = (None, 502, "upstream_error");
        r
    };
    db.put(vec![
        req("2026-03-10T09:00:00Z", "search", "m1", Some(2_048_000), (1000, 24), Some(100.0)),
        req("2026-03-10T10:00:00Z", "search", "m2", Some(1_000_000), (500, 500), Some(300.0)),
        req("2026-03-10T11:00:00Z", "ads", "m1", Some(500), (10, 20), Some(150.0)),
        req("2026-03-10T12:00:00Z", "ads", "m2", None, (10, 20), None),
        failed,
        req("2026-03-12T00:00:00Z", "search", "m1", Some(7), (1, 1), Some(1.0)),
    ]);
    db
}

#[test]
fn by_team_sums_requests_tokens_exact_spend_and_unpriced() {
    let db = sample();
    let r = report(&db, GroupBy::Team, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    assert_eq!((r.since, r.until), (date("2026-03-10"), date("2026-03-11")));
    assert_eq!(
        r.groups,
        [
            // 3_048_000 nano-dollars over 2024 tokens: 1_505_928.85 nano per 1K, rounded up.
            group("search", 2, (1500, 524), "0.003048", 0, Some("0.001505929"), Some(100.0), Some(300.0)),
            // 500 nano over 60 tokens: 8333.33 nano per 1K, rounded down.
            group("ads", 3, (20, 40), "0.0000005", 1, Some("0.000008333"), Some(150.0), Some(150.0)),
        ]
    );
    assert_eq!(r.total, group("total", 5, (1520, 564), "0.0030485", 1, Some("0.001462812"), Some(150.0), Some(300.0)));
}

#[test]
fn by_model_sums() {
    let db = sample();
    let r = report(&db, GroupBy::Model, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    assert_eq!(
        r.groups,
        [
            group("m1", 3, (1010, 44), "0.0020485", 0, Some("0.001943548"), Some(100.0), Some(150.0)),
            group("m2", 2, (510, 520), "0.001", 1, Some("0.000970874"), Some(300.0), Some(300.0)),
        ]
    );
    assert_eq!(r.total.requests, 5);
    assert_eq!(r.total.spend_usd, "0.0030485");
}

#[test]
fn by_day_sums_each_day_and_leaves_out_days_without_requests() {
    let db = sample();
    let r = report(&db, GroupBy::Day, "2026-03-09", "2026-03-12", &TimeZone::UTC);
    assert_eq!(
        r.groups,
        [
            group("2026-03-10", 5, (1520, 564), "0.0030485", 1, Some("0.001462812"), Some(150.0), Some(300.0)),
            group("2026-03-12", 1, (1, 1), "0.000000007", 0, Some("0.0000035"), Some(1.0), Some(1.0)),
        ]
    );
    // TTFTs 1, 100, 150 and 300: ranks 2 and 4.
    assert_eq!(
        r.total,
        group("total", 6, (1521, 565), "0.003048507", 1, Some("0.001461413"), Some(100.0), Some(300.0))
    );
}

#[test]
fn groups_sort_by_spend_descending_then_key() {
    let mut db = TempDb::new();
    db.put(vec![
        req("2026-03-10T09:00:00Z", "b", "m", Some(5), (1, 1), None),
        req("2026-03-10T09:00:00Z", "a", "m", Some(5), (1, 1), None),
        req("2026-03-10T09:00:00Z", "z", "m", Some(9), (1, 1), None),
        req("2026-03-10T09:00:00Z", "c", "m", None, (1, 1), None),
    ]);
    let r = report(&db, GroupBy::Team, "2026-03-10", "2026-03-10", &TimeZone::UTC);
    let keys: Vec<&str> = r.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(keys, ["z", "a", "b", "c"]);
    // A group of unpriced requests has spent nothing known: "0", with a cost per 1K of 0 too.
    assert_eq!((r.groups[3].spend_usd.as_str(), r.groups[3].unpriced_requests), ("0", 1));
    assert_eq!(r.groups[3].cost_per_1k_tokens_usd.as_deref(), Some("0"));
}

#[test]
fn money_is_formatted_exactly() {
    assert_eq!(usd(0), "0");
    assert_eq!(usd(2_048_000), "0.002048");
    assert_eq!(usd(1), "0.000000001");
    assert_eq!(usd(1_000_000_000), "1");
    assert_eq!(usd(12_345_600_000), "12.3456");
    assert_eq!(usd(-1_500_000_000), "-1.5");
    // Beyond what an f64 holds exactly: every digit survives.
    assert_eq!(usd(123_456_789_012_345_678_901), "123456789012.345678901");
    assert_eq!((div_round(5, 2), div_round(4, 3), div_round(-5, 2), div_round(7, 7)), (3, 1, -3, 1));
}

#[test]
fn percentiles_are_nearest_rank() {
    assert_eq!((rank_index(1, 50), rank_index(1, 95)), (0, 0));
    assert_eq!((rank_index(2, 50), rank_index(2, 95)), (0, 1));
    assert_eq!((rank_index(20, 50), rank_index(20, 95)), (9, 18));
    assert_eq!((rank_index(100, 50), rank_index(100, 95)), (49, 94));
    assert_eq!((rank_index(101, 50), rank_index(101, 95)), (50, 95));

    let mut db = TempDb::new();
    let mut rows = Vec::new();
    // Team "twenty" has TTFTs 1..=20 ms, "ten" has 10..=100 in steps of 10, inserted shuffled.
    let mut twenty: Vec<u32> = (1..=20).collect();
    fastrand::shuffle(&mut twenty);
    for v in twenty {
        rows.push(req("2026-03-10T09:00:00Z", "twenty", "m", Some(1), (1, 1), Some(f64::from(v))));
    }
    for v in (1..=10).rev() {
        rows.push(req("2026-03-10T09:00:00Z", "ten", "m", Some(1), (1, 1), Some(f64::from(v * 10))));
    }
    // Rows without a TTFT (failed before the first token) do not count towards the ranks.
    rows.push(req("2026-03-10T09:00:00Z", "ten", "m", Some(1), (1, 1), None));
    db.put(rows);
    let o = opts(GroupBy::Team, Some("2026-03-10"), Some("2026-03-10"));
    let in_memory = build_with(&db.conn, &o, &TimeZone::UTC, date("2026-03-10"), u64::MAX).unwrap();
    let sorted = build_with(&db.conn, &o, &TimeZone::UTC, date("2026-03-10"), 0).unwrap();
    assert_eq!(in_memory, sorted);
    let p = |g: &Group| (g.ttft_p50_ms, g.ttft_p95_ms);
    let by_key = |k: &str| in_memory.groups.iter().find(|g| g.key == k).unwrap().clone();
    assert_eq!(p(&by_key("twenty")), (Some(10.0), Some(19.0)));
    assert_eq!(p(&by_key("ten")), (Some(50.0), Some(100.0)));
    // All 30 values: 1..=20 and 10, 20, ..., 100; rank 15 is 14, rank 29 is 90.
    assert_eq!(p(&in_memory.total), (Some(14.0), Some(90.0)));
}

#[test]
fn both_percentile_paths_match_a_full_sort_on_random_data() {
    let mut db = TempDb::new();
    // A fixed seed keeps a failure reproducible.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut rows = Vec::new();
    for i in 0..2_000 {
        let ts = format!("2026-03-{:02}T{:02}:00:00Z", 1 + i % 5, i % 24);
        let (team, model) = (["a", "b", "c", "d"][rng.usize(..4)], ["m1", "m2", "m3"][rng.usize(..3)]);
        // Coarse values repeat, so ties at a rank are exercised too; some rows have no TTFT.
        let ttft = (!rng.u8(..).is_multiple_of(7)).then(|| f64::from(rng.u32(0..500)) / 4.0);
        rows.push(req(&ts, team, model, Some(rng.u64(0..1_000_000)), (3, 4), ttft));
    }
    db.put(rows.clone());
    let nearest = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |pct: usize| v.get((v.len() * pct).div_ceil(100).max(1) - 1).copied();
        (at(50), at(95))
    };
    // How a row's group key is derived, to check against.
    type KeyOf = fn(&Row) -> String;
    let cases: [(GroupBy, KeyOf); 3] = [
        (GroupBy::Team, |r| r.team.to_string()),
        (GroupBy::Model, |r| r.model.to_string()),
        (GroupBy::Day, |r| jiff::Timestamp::from_millisecond(r.ts_ms).unwrap().to_string()[..10].into()),
    ];
    for (by, key) in cases {
        let o = opts(by, Some("2026-03-01"), Some("2026-03-05"));
        for limit in [u64::MAX, 0] {
            let r = build_with(&db.conn, &o, &TimeZone::UTC, date("2026-03-05"), limit).unwrap();
            for g in r.groups.iter().chain([&r.total]) {
                let values = rows.iter().filter(|r| g.key == "total" || key(r) == g.key).filter_map(|r| r.ttft_ms);
                assert_eq!((g.ttft_p50_ms, g.ttft_p95_ms), nearest(values.collect()), "{by:?} {} {limit}", g.key);
            }
            assert_eq!(r.total.requests, 2_000);
        }
    }
}

#[test]
fn days_follow_the_configured_time_zone_across_dst() {
    let mut db = TempDb::new();
    // Costs are powers of ten so that a day's spend shows which rows it got.
    db.put(vec![
        // 23:59:59.999 CET on 2026-03-27: before the period.
        req("2026-03-27T22:59:59.999Z", "t", "m", Some(100_000), (1, 1), None),
        // 00:00 CET on 2026-03-28: the first instant of the period.
        req("2026-03-27T23:00:00Z", "t", "m", Some(1_000_000), (1, 1), None),
        // 23:30 CET on 2026-03-28.
        req("2026-03-28T22:30:00Z", "t", "m", Some(1), (1, 1), None),
        // 00:30 CET on 2026-03-29, though still the 28th in UTC.
        req("2026-03-28T23:30:00Z", "t", "m", Some(10), (1, 1), None),
        // 01:30 CET on 2026-03-29; clocks go from 02:00 CET to 03:00 CEST an hour later.
        req("2026-03-29T00:30:00Z", "t", "m", Some(100), (1, 1), None),
        // 23:30 CEST on 2026-03-29, a 23-hour day.
        req("2026-03-29T21:30:00Z", "t", "m", Some(1_000), (1, 1), None),
        // 00:00 CEST on 2026-03-30: after the period.
        req("2026-03-29T22:00:00Z", "t", "m", Some(10_000), (1, 1), None),
    ]);
    let days =
        |r: &Report| r.groups.iter().map(|g| (g.key.clone(), g.requests, g.spend_usd.clone())).collect::<Vec<_>>();
    let s = |k: &str, n: u64, usd: &str| (k.to_owned(), n, usd.to_owned());

    let r = report(&db, GroupBy::Day, "2026-03-28", "2026-03-29", &berlin());
    assert_eq!(days(&r), [s("2026-03-28", 2, "0.001000001"), s("2026-03-29", 3, "0.00000111")]);
    assert_eq!(r.total.requests, 5);

    // The same rows in UTC fall on other days.
    let r = report(&db, GroupBy::Day, "2026-03-27", "2026-03-29", &TimeZone::UTC);
    assert_eq!(
        days(&r),
        [s("2026-03-27", 2, "0.0011"), s("2026-03-29", 3, "0.0000111"), s("2026-03-28", 2, "0.000000011")]
    );

    // since and until are inclusive whole days, also when grouping by team.
    let r = report(&db, GroupBy::Team, "2026-03-29", "2026-03-29", &berlin());
    assert_eq!((r.total.requests, r.total.spend_usd.as_str()), (3, "0.00000111"));
    let r = report(&db, GroupBy::Team, "2026-03-30", "2026-03-30", &berlin());
    assert_eq!((r.total.requests, r.total.spend_usd.as_str()), (1, "0.00001"));
}

#[test]
fn the_default_period_is_thirty_days_before_until() {
    let mut db = TempDb::new();
    db.put(vec![
        req("2026-03-30T23:59:59Z", "t", "m", Some(1), (1, 1), None),
        req("2026-03-31T00:00:00Z", "t", "m", Some(10), (1, 1), None),
        req("2026-04-30T23:59:59Z", "t", "m", Some(100), (1, 1), None),
        req("2026-05-01T00:00:00Z", "t", "m", Some(1_000), (1, 1), None),
    ]);
    let today = date("2026-04-30");
    let r = build(&db.conn, &opts(GroupBy::Team, None, None), &TimeZone::UTC, today).unwrap();
    assert_eq!((r.since, r.until), (date("2026-03-31"), today));
    assert_eq!(r.total.spend_usd, "0.00000011");

    let r = build(&db.conn, &opts(GroupBy::Team, None, Some("2026-04-29")), &TimeZone::UTC, today).unwrap();
    assert_eq!((r.since, r.until), (date("2026-03-30"), date("2026-04-29")));
    assert_eq!(r.total.spend_usd, "0.000000011");

    let r = build(&db.conn, &opts(GroupBy::Team, Some("2026-04-01"), None), &TimeZone::UTC, today).unwrap();
    assert_eq!((r.since, r.until), (date("2026-04-01"), today));
    assert_eq!(r.total.spend_usd, "0.0000001");
}

#[test]
fn since_after_until_is_an_error() {
    let db = TempDb::new();
    let o = opts(GroupBy::Day, Some("2026-03-02"), Some("2026-03-01"));
    let e = build(&db.conn, &o, &TimeZone::UTC, date("2026-03-10")).unwrap_err().to_string();
    assert_eq!(e, "the report period is empty: since (2026-03-02) is after until (2026-03-01)");
    // A since after today, with until left to default, is the same mistake.
    let o = opts(GroupBy::Day, Some("2026-03-11"), None);
    assert!(build(&db.conn, &o, &TimeZone::UTC, date("2026-03-10")).is_err());
}

#[test]
fn an_empty_ledger_reports_zeros_and_no_averages() {
    let db = TempDb::new();
    let r = report(&db, GroupBy::Model, "2026-03-01", "2026-03-31", &TimeZone::UTC);
    assert!(r.groups.is_empty());
    assert_eq!(r.total, group("total", 0, (0, 0), "0", 0, None, None, None));
    assert_eq!(render(&r, GroupBy::Model, Format::Csv).lines().count(), 2);
}

#[test]
fn a_caller_inside_a_transaction_gets_the_same_report() {
    let db = sample();
    db.conn.execute_batch("BEGIN").unwrap();
    let inside = report(&db, GroupBy::Team, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    db.conn.execute_batch("COMMIT").unwrap();
    assert_eq!(inside, report(&db, GroupBy::Team, "2026-03-10", "2026-03-11", &TimeZone::UTC));
}

#[test]
fn csv_quotes_commas_and_quotes_and_ends_lines_with_crlf() {
    let mut db = TempDb::new();
    db.put(vec![
        req("2026-03-10T09:00:00Z", "eu, \"west\"", "m", Some(2_048_000), (1000, 24), Some(120.5)),
        req("2026-03-10T09:00:00Z", "plain", "m", None, (10, 20), None),
    ]);
    let r = report(&db, GroupBy::Team, "2026-03-10", "2026-03-10", &TimeZone::UTC);
    let csv = render(&r, GroupBy::Team, Format::Csv);
    assert_eq!(
        csv,
        "team,requests,input_tokens,output_tokens,spend_usd,unpriced_requests,cost_per_1k_tokens_usd,ttft_p50_ms,ttft_p95_ms\r\n\
         \"eu, \"\"west\"\"\",1,1000,24,0.002048,0,0.002,120.5,120.5\r\n\
         plain,1,10,20,0,1,0,,\r\n\
         total,2,1010,44,0.002048,1,0.001943074,120.5,120.5\r\n"
    );
    assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    assert_eq!(csv_field("a\rb"), "\"a\rb\"");
}

#[test]
fn json_has_the_documented_keys() {
    let db = sample();
    let r = report(&db, GroupBy::Model, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    let v: serde_json::Value = serde_json::from_str(&render(&r, GroupBy::Model, Format::Json)).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&v), ["since", "until", "by", "groups", "total"]);
    assert_eq!(
        (v["since"].as_str(), v["until"].as_str(), v["by"].as_str()),
        (Some("2026-03-10"), Some("2026-03-11"), Some("model"))
    );
    let fields = [
        "key",
        "requests",
        "input_tokens",
        "output_tokens",
        "spend_usd",
        "unpriced_requests",
        "cost_per_1k_tokens_usd",
        "ttft_p50_ms",
        "ttft_p95_ms",
    ];
    assert_eq!(keys(&v["total"]), fields);
    assert_eq!(v["groups"].as_array().map(Vec::len), Some(2));
    assert_eq!(keys(&v["groups"][0]), fields);
    // Money is a string, never a float; missing values are null.
    assert_eq!(v["groups"][0]["spend_usd"], "0.0020485");
    assert_eq!(v["total"]["key"], "total");
    assert_eq!(v["total"]["requests"], 5);
    assert_eq!(v["total"]["ttft_p95_ms"], 300.0);
    let empty = report(&TempDb::new(), GroupBy::Model, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    let v: serde_json::Value = serde_json::from_str(&render(&empty, GroupBy::Model, Format::Json)).unwrap();
    assert!(v["total"]["cost_per_1k_tokens_usd"].is_null() && v["total"]["ttft_p50_ms"].is_null());
}

/// The examples in the README: keep them in step with this output.
#[test]
fn readme_examples() {
    let db = sample();
    let r = report(&db, GroupBy::Team, "2026-03-10", "2026-03-11", &TimeZone::UTC);
    let table = render(&r, GroupBy::Team, Format::Table);
    let csv = render(&r, GroupBy::Team, Format::Csv);
    println!("{table}\n{csv}");
    assert_eq!(
        table,
        "\
team    requests  input_tokens  output_tokens  spend_usd  unpriced_requests  cost_per_1k_tokens_usd  ttft_p50_ms  ttft_p95_ms
search         2          1500            524   0.003048                  0             0.001505929        100.0        300.0
ads            3            20             40  0.0000005                  1             0.000008333        150.0        150.0
total          5          1520            564  0.0030485                  1             0.001462812        150.0        300.0
"
    );
    assert_eq!(
        csv,
        "team,requests,input_tokens,output_tokens,spend_usd,unpriced_requests,cost_per_1k_tokens_usd,ttft_p50_ms,ttft_p95_ms\r\n\
         search,2,1500,524,0.003048,0,0.001505929,100,300\r\n\
         ads,3,20,40,0.0000005,1,0.000008333,150,150\r\n\
         total,5,1520,564,0.0030485,1,0.001462812,150,300\r\n"
    );
}

#[test]
fn the_table_shows_missing_values_as_dashes() {
    let mut db = TempDb::new();
    db.put(vec![req("2026-03-10T09:00:00Z", "a\tb", "m", None, (0, 0), None)]);
    let r = report(&db, GroupBy::Team, "2026-03-10", "2026-03-10", &TimeZone::UTC);
    let table = render(&r, GroupBy::Team, Format::Table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("team "));
    assert!(lines[1].starts_with("a\u{fffd}b "), "{table}");
    let total: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(total, ["total", "1", "0", "0", "0", "1", "-", "-", "-"]);
    // Every line is as wide as the header: the columns line up.
    assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "{table}");
}

#[test]
fn a_day_whose_midnight_is_skipped_starts_when_the_clocks_resume() {
    // Chile moves its clocks from 00:00 to 01:00 on 2026-09-06: that day starts at 01:00 -03.
    let santiago = TimeZone::get("America/Santiago").unwrap();
    assert_eq!(day_start(date("2026-09-06"), &santiago).unwrap(), ms("2026-09-06T04:00:00Z"));
    assert_eq!(day_start(date("2026-09-07"), &santiago).unwrap(), ms("2026-09-07T03:00:00Z"));
}
