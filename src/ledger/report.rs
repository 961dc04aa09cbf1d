//! `tollgate report`: requests, tokens, spend, cost per 1K tokens and TTFT percentiles per team,
//! model or day, read from the ledger.
//!
//! Counts and sums are aggregated by SQLite (one `GROUP BY` query over the `ts_ms` index for teams
//! and models, one query per day for days), so the report never holds ledger rows in memory. Only
//! the TTFT percentiles need individual values; see [`IN_MEMORY_TTFT_VALUES`] for how they are
//! bounded. Money stays in integer nano-dollars until it is printed as an exact decimal string.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, bail};
use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rusqlite::{Connection, params};

/// Days before `until` that the report starts at when no `since` is given.
const DEFAULT_DAYS: i32 = 30;

/// How many TTFT values the percentiles may collect in memory. Each costs 8 bytes, and the total
/// line's percentiles copy all of them once more, so the peak is 16 bytes per value: 256 MiB at
/// this limit, which a day at about 190 requests per second reaches. Above it the values are read
/// back sorted by SQLite instead, whose external sorter spills to temporary files: slower (a day
/// at 10,000 requests per second is ~864M values to sort on disk) but bounded in memory.
const IN_MEMORY_TTFT_VALUES: u64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Team,
    Model,
    Day,
}

impl GroupBy {
    /// The name of the key column in every output format.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// First day included (in `tz`), default: 30 days before `until` (or today).
    pub since: Option<Date>,
    /// Last day included (in `tz`), default today.
    pub until: Option<Date>,
    pub by: GroupBy,
    pub format: Format,
}

/// One group's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Group {
    /// Team name, model name, or `YYYY-MM-DD`; `total` on the total line.
    pub key: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Exact decimal from integer nano-dollars, e.g. `0.002048`; never a float.
    pub spend_usd: String,
    /// Requests that were billed (a usage source) but have no cost: their model has no price.
    pub unpriced_requests: u64,
    /// spend / (input + output tokens) * 1000, rounded half up to 9 places; `None` when 0 tokens.
    pub cost_per_1k_tokens_usd: Option<String>,
    /// Nearest-rank percentiles over the requests that have a TTFT.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub since: Date,
    pub until: Date,
    /// Sorted by spend descending, then key.
    pub groups: Vec<Group>,
    /// Key `total`.
    pub total: Group,
}

/// Reads the ledger rows whose ts_ms falls in [since 00:00, until+1 00:00) in `tz`.
pub fn build(conn: &Connection, opts: &ReportOptions, tz: &TimeZone, today: Date) -> anyhow::Result<Report> {
    build_with(conn, opts, tz, today, IN_MEMORY_TTFT_VALUES)
}

/// [`build`] with the in-memory percentile limit as a parameter, so tests can take both paths.
fn build_with(
    conn: &Connection,
    opts: &ReportOptions,
    tz: &TimeZone,
    today: Date,
    in_memory_ttft_values: u64,
) -> anyhow::Result<Report> {
    let (since, until, window, scans) = plan(opts, tz, today)?;
    let key = match opts.by {
        GroupBy::Team => "team",
        GroupBy::Model => "model",
        // The day is bound as ?3 per scan, so the same SQL serves every grouping.
        GroupBy::Day => "?3",
    };

    // The queries below must see the same rows (the percentile pass relies on the counts of the
    // first), while the proxy may be appending: one read transaction gives them one WAL snapshot.
    // A caller that already holds a transaction has a snapshot of its own.
    let _snapshot = if conn.is_autocommit() { Some(conn.unchecked_transaction()?) } else { None };

    let mut accs = aggregate(conn, key, &scans)?;
    let ttft_values: u64 = accs.values().map(|a| a.ttft_count).sum();
    let total_ttft = if ttft_values <= in_memory_ttft_values {
        percentiles_in_memory(conn, key, &scans, &mut accs)?
    } else {
        percentiles_sorted(conn, key, &scans, &window, &mut accs)?
    };

    let mut total = Acc { ttft: total_ttft, ..Acc::default() };
    for a in accs.values() {
        total.add(a);
    }
    let mut accs: Vec<(String, Acc)> = accs.into_iter().collect();
    accs.sort_by(|(ka, a), (kb, b)| b.nanos.cmp(&a.nanos).then_with(|| ka.cmp(kb)));
    Ok(Report {
        since,
        until,
        groups: accs.into_iter().map(|(k, a)| a.into_group(k)).collect(),
        total: total.into_group("total".into()),
    })
}

/// One range of `ts_ms` to query; `day` is the key bound as `?3` when grouping by day.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub(crate) lo: i64,
    pub(crate) hi: i64,
    pub(crate) day: Option<String>,
}

/// The report's period (defaults applied, checked) and its scans: the whole window, and one per
/// civil day when grouping by day. Shared by the SQLite and PostgreSQL reports.
pub(crate) fn plan(opts: &ReportOptions, tz: &TimeZone, today: Date) -> anyhow::Result<(Date, Date, Scan, Vec<Scan>)> {
    let until = opts.until.unwrap_or(today);
    let since = match opts.since {
        Some(since) => since,
        None => {
            until.checked_sub(DEFAULT_DAYS.days()).with_context(|| format!("{DEFAULT_DAYS} days before {until}"))?
        }
    };
    if since > until {
        bail!("the report period is empty: since ({since}) is after until ({until})");
    }
    let window = Scan { lo: day_start(since, tz)?, hi: day_start(next_day(until)?, tz)?, day: None };
    let scans = match opts.by {
        GroupBy::Team | GroupBy::Model => vec![window.clone()],
        GroupBy::Day => day_scans(since, until, tz)?,
    };
    Ok((since, until, window, scans))
}

/// Milliseconds of the first instant of `day` in `tz`. When midnight falls into a DST gap the day
/// starts at the end of the gap, which is what jiff's compatible disambiguation returns.
pub(crate) fn day_start(day: Date, tz: &TimeZone) -> anyhow::Result<i64> {
    let zoned = day.to_zoned_datetime(tz.clone()).with_context(|| format!("start of {day} in the time zone"))?;
    Ok(zoned.timestamp().as_millisecond())
}

pub(crate) fn next_day(day: Date) -> anyhow::Result<Date> {
    day.tomorrow().with_context(|| format!("the day after {day}"))
}

/// One scan per civil day: days are 23, 24 or 25 hours long in zones with DST.
fn day_scans(since: Date, until: Date, tz: &TimeZone) -> anyhow::Result<Vec<Scan>> {
    let mut scans = Vec::new();
    let (mut day, mut lo) = (since, day_start(since, tz)?);
    while day <= until {
        let next = next_day(day)?;
        let hi = day_start(next, tz)?;
        scans.push(Scan { lo, hi, day: Some(day.to_string()) });
        (day, lo) = (next, hi);
    }
    Ok(scans)
}

/// Runs `sql` over one scan's range, calling `each` per result row.
fn query_scan(
    conn: &Connection,
    sql: &str,
    scan: &Scan,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = match &scan.day {
        Some(day) => stmt.query(params![scan.lo, scan.hi, day])?,
        None => stmt.query(params![scan.lo, scan.hi])?,
    };
    while let Some(row) = rows.next()? {
        each(row)?;
    }
    Ok(())
}

/// A group's running figures: wide integers so that totals over groups cannot overflow.
#[derive(Debug, Clone, Default)]
struct Acc {
    requests: u64,
    input: u128,
    output: u128,
    nanos: i128,
    unpriced: u64,
    ttft_count: u64,
    /// (p50, p95), filled by the percentile pass.
    ttft: (Option<f64>, Option<f64>),
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.requests += other.requests;
        self.input += other.input;
        self.output += other.output;
        self.nanos += other.nanos;
        self.unpriced += other.unpriced;
        self.ttft_count += other.ttft_count;
    }

    fn into_group(self, key: String) -> Group {
        let tokens = self.input + self.output;
        Group {
            key,
            requests: self.requests,
            input_tokens: saturate(self.input),
            output_tokens: saturate(self.output),
            spend_usd: usd(self.nanos),
            unpriced_requests: self.unpriced,
            cost_per_1k_tokens_usd: (tokens > 0).then(|| usd(div_round(self.nanos * 1000, tokens))),
            ttft_p50_ms: self.ttft.0,
            ttft_p95_ms: self.ttft.1,
        }
    }
}

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Counts and sums per key, computed by SQLite. `SUM` is exact on integers (SQLite reports an
/// overflow past i64 as an error rather than rounding): 9.2e18 nano-dollars is $9.2 billion.
fn aggregate(conn: &Connection, key: &str, scans: &[Scan]) -> anyhow::Result<HashMap<String, Acc>> {
    // `GROUP BY 1` also works for the day's constant key; a range without rows yields no group.
    let sql = format!(
        "SELECT {key}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_nano_usd),
                SUM(cost_nano_usd IS NULL AND usage_source IS NOT NULL), COUNT(ttft_ms)
         FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY 1"
    );
    let mut accs = HashMap::new();
    for scan in scans {
        query_scan(conn, &sql, scan, |row| {
            let count = |i: usize| -> rusqlite::Result<u64> {
                Ok(row.get::<_, Option<i64>>(i)?.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
            };
            let acc = Acc {
                requests: count(1)?,
                input: count(2)?.into(),
                output: count(3)?.into(),
                nanos: row.get::<_, Option<i64>>(4)?.unwrap_or(0).into(),
                unpriced: count(5)?,
                ttft_count: count(6)?,
                ttft: (None, None),
            };
            accs.entry(row.get::<_, String>(0)?).or_insert_with(Acc::default).add(&acc);
            Ok(())
        })?;
    }
    Ok(accs)
}

/// 0-based index of the nearest-rank `pct` percentile among `n` >= 1 sorted values: the value at
/// rank ceil(pct / 100 * n).
fn rank_index(n: u64, pct: u64) -> u64 {
    let rank = (u128::from(n) * u128::from(pct)).div_ceil(100);
    u64::try_from(rank).unwrap_or(n).clamp(1, n.max(1)) - 1
}

/// Nearest-rank p50 and p95 of `values`, reordering them (selection, not a full sort).
fn p50_p95(values: &mut [f64]) -> (Option<f64>, Option<f64>) {
    let n = values.len() as u64;
    if n == 0 {
        return (None, None);
    }
    // Both indexes are below `values.len()`, so they fit a usize.
    let (i50, i95) = (rank_index(n, 50) as usize, rank_index(n, 95) as usize);
    let p95 = *values.select_nth_unstable_by(i95, f64::total_cmp).1;
    // Everything left of i95 is <= p95 now, so p50 is selected among those alone.
    let p50 = if i50 == i95 { p95 } else { *values[..i95].select_nth_unstable_by(i50, f64::total_cmp).1 };
    (Some(p50), Some(p95))
}

/// Collects every TTFT per key, fills each group's percentiles, and returns the total's.
fn percentiles_in_memory(
    conn: &Connection,
    key: &str,
    scans: &[Scan],
    accs: &mut HashMap<String, Acc>,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let sql = format!("SELECT {key}, ttft_ms FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 AND ttft_ms IS NOT NULL");
    // The counts are known, so each vector is allocated once at its final size.
    let mut values: HashMap<String, Vec<f64>> =
        accs.iter().map(|(k, a)| (k.clone(), Vec::with_capacity(a.ttft_count as usize))).collect();
    for scan in scans {
        query_scan(conn, &sql, scan, |row| {
            let ttft: f64 = row.get(1)?;
            // Looking the key up as &str avoids an allocation per row.
            let k = row.get_ref(0)?.as_str()?;
            match values.get_mut(k) {
                Some(v) => v.push(ttft),
                None => {
                    values.insert(k.to_owned(), vec![ttft]);
                }
            }
            Ok(())
        })?;
    }
    let mut all = Vec::with_capacity(values.values().map(Vec::len).sum());
    for (k, mut v) in values {
        if let Some(acc) = accs.get_mut(&k) {
            acc.ttft = p50_p95(&mut v);
        }
        all.append(&mut v);
    }
    Ok(p50_p95(&mut all))
}

/// Streams the TTFTs sorted by SQLite (per key, then over the whole window for the total) and
/// picks the values at the nearest ranks, holding none of them.
fn percentiles_sorted(
    conn: &Connection,
    key: &str,
    scans: &[Scan],
    window: &Scan,
    accs: &mut HashMap<String, Acc>,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let sql = format!(
        "SELECT {key}, ttft_ms FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 AND ttft_ms IS NOT NULL ORDER BY 1, 2"
    );
    let n: u64 = accs.values().map(|a| a.ttft_count).sum();
    // Keys arrive grouped, in SQL order, so each group's accumulator is taken once per key.
    // Every key belongs to exactly one scan (a day's key to its day), so one map serves all.
    let mut by_key: HashMap<&str, &mut Acc> = accs.iter_mut().map(|(k, a)| (k.as_str(), a)).collect();
    for scan in scans {
        let mut current_key: Option<String> = None;
        let mut current: Option<(&mut Acc, u64, u64)> = None;
        let mut seen = 0u64;
        query_scan(conn, &sql, scan, |row| {
            let ttft: f64 = row.get(1)?;
            let k = row.get_ref(0)?.as_str()?;
            if current_key.as_deref() != Some(k) {
                current_key = Some(k.to_owned());
                seen = 0;
                current = by_key.remove(k).map(|a| {
                    let n = a.ttft_count;
                    (a, rank_index(n, 50), rank_index(n, 95))
                });
            }
            if let Some((acc, i50, i95)) = current.as_mut() {
                if seen == *i50 {
                    acc.ttft.0 = Some(ttft);
                }
                if seen == *i95 {
                    acc.ttft.1 = Some(ttft);
                }
            }
            seen += 1;
            Ok(())
        })?;
    }
    if n == 0 {
        return Ok((None, None));
    }
    let (i50, i95) = (rank_index(n, 50), rank_index(n, 95));
    let mut total = (None, None);
    let mut seen = 0u64;
    query_scan(
        conn,
        "SELECT ttft_ms FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 AND ttft_ms IS NOT NULL ORDER BY 1",
        window,
        |row| {
            let ttft: f64 = row.get(0)?;
            if seen == i50 {
                total.0 = Some(ttft);
            }
            if seen == i95 {
                total.1 = Some(ttft);
            }
            seen += 1;
            Ok(())
        },
    )?;
    Ok(total)
}

/// `nanos` nano-dollars as an exact decimal: no float, trailing zeros trimmed, `0` for zero.
pub(crate) fn usd(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (whole, frac) = (n / 1_000_000_000, n % 1_000_000_000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:09}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// `num / den` rounded half away from zero; `den` > 0.
pub(crate) fn div_round(num: i128, den: u128) -> i128 {
    let (q, r) = (num.unsigned_abs() / den, num.unsigned_abs() % den);
    let q = if r * 2 >= den { q + 1 } else { q };
    let q = i128::try_from(q).unwrap_or(i128::MAX);
    if num < 0 { -q } else { q }
}

/// Writes the report: Table = aligned text columns with a header and a total line; Csv = RFC 4180
/// (quote fields containing comma/quote/newline), header row, one row per group plus "total",
/// opens in a spreadsheet; Json = {"since","until","by","groups":[...],"total":{...}}.
pub fn write(report: &Report, opts: &ReportOptions, out: &mut impl Write) -> anyhow::Result<()> {
    match opts.format {
        Format::Table => write_table(report, opts.by, out)?,
        Format::Csv => write_csv(report, opts.by, out)?,
        Format::Json => write_json(report, opts.by, out)?,
    }
    out.flush()?;
    Ok(())
}

/// Column names after the key's, shared by the table and the CSV header (and equal to the JSON
/// field names, so the three formats read the same).
const COLUMNS: [&str; 8] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "spend_usd",
    "unpriced_requests",
    "cost_per_1k_tokens_usd",
    "ttft_p50_ms",
    "ttft_p95_ms",
];

/// A group's cells after the key; `ms` formats a TTFT, `none` stands for a missing value.
fn cells(g: &Group, ms: fn(f64) -> String, none: &str) -> [String; 8] {
    let opt = |v: Option<f64>| v.map_or_else(|| none.to_owned(), ms);
    [
        g.requests.to_string(),
        g.input_tokens.to_string(),
        g.output_tokens.to_string(),
        g.spend_usd.clone(),
        g.unpriced_requests.to_string(),
        g.cost_per_1k_tokens_usd.clone().unwrap_or_else(|| none.to_owned()),
        opt(g.ttft_p50_ms),
        opt(g.ttft_p95_ms),
    ]
}

fn write_table(report: &Report, by: GroupBy, out: &mut impl Write) -> std::io::Result<()> {
    // Control characters in a key (a team name is configuration, not code) would break the
    // alignment or the terminal, so they are shown as U+FFFD.
    let key = |k: &str| k.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect::<String>();
    let mut lines = vec![std::iter::once(by.as_str().to_owned()).chain(COLUMNS.map(str::to_owned)).collect::<Vec<_>>()];
    for g in report.groups.iter().chain([&report.total]) {
        lines.push(std::iter::once(key(&g.key)).chain(cells(g, |v| format!("{v:.1}"), "-")).collect());
    }
    let mut widths = [0usize; 9];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            // The key reads left to right; numbers align on their last digit.
            match i {
                0 => text.extend([cell.as_str(), &pad]),
                _ => text.extend(["  ", &pad, cell.as_str()]),
            }
        }
        writeln!(out, "{}", text.trim_end())?;
    }
    Ok(())
}

/// One RFC 4180 field: quoted when it holds a comma, quote or line break, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn write_csv(report: &Report, by: GroupBy, out: &mut impl Write) -> std::io::Result<()> {
    // CRLF line ends, as RFC 4180 specifies; spreadsheets and CSV libraries accept both.
    write!(out, "{}", by.as_str())?;
    for c in COLUMNS {
        write!(out, ",{c}")?;
    }
    write!(out, "\r\n")?;
    for g in report.groups.iter().chain([&report.total]) {
        // Full precision for TTFTs (Rust prints the shortest exact form), empty cells for none.
        write!(out, "{}", csv_field(&g.key))?;
        for cell in cells(g, |v| v.to_string(), "") {
            write!(out, ",{}", csv_field(&cell))?;
        }
        write!(out, "\r\n")?;
    }
    Ok(())
}

fn write_json(report: &Report, by: GroupBy, out: &mut impl Write) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        since: String,
        until: String,
        by: &'static str,
        groups: &'a [Group],
        total: &'a Group,
    }
    let json = Json {
        since: report.since.to_string(),
        until: report.until.to_string(),
        by: by.as_str(),
        groups: &report.groups,
        total: &report.total,
    };
    serde_json::to_writer_pretty(&mut *out, &json)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests;
