//! `tollgate report` over the PostgreSQL ledger: the same [`Report`] as the SQLite one for the same
//! rows (so the same output in every format). Counts, sums and the nearest-rank percentiles are
//! computed by PostgreSQL (`percentile_disc` is the nearest-rank definition: the first value whose
//! position reaches the fraction), in one repeatable-read snapshot.

use std::collections::HashMap;

use anyhow::{Context, bail};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use postgres::{Client, IsolationLevel};

use crate::ledger::report::{Group, GroupBy, Report, ReportOptions, Scan, div_round, plan, usd};

#[derive(Debug, Default)]
struct Acc {
    requests: u64,
    input: u128,
    output: u128,
    nanos: i128,
    unpriced: u64,
    ttft: (Option<f64>, Option<f64>),
}

/// Reads the rows whose ts_ms falls in [since 00:00, until+1 00:00) in `tz`.
pub fn build(client: &mut Client, opts: &ReportOptions, tz: &TimeZone, today: Date) -> anyhow::Result<Report> {
    let (since, until, window, scans) = plan(opts, tz, today)?;
    let key = match opts.by {
        GroupBy::Team => "team",
        GroupBy::Model => "model",
        GroupBy::Day => "$3::text",
    };
    let sql = format!(
        "SELECT {key}, COUNT(*), SUM(input_tokens)::text, SUM(output_tokens)::text, SUM(cost_nano_usd)::text,
                COUNT(*) FILTER (WHERE cost_nano_usd IS NULL AND usage_source IS NOT NULL),
                percentile_disc(0.5) WITHIN GROUP (ORDER BY ttft_ms),
                percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms)
         FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY 1"
    );
    let exists: bool = client.query_one("SELECT to_regclass('requests') IS NOT NULL", &[])?.get(0);
    if !exists {
        bail!("ledger.postgres: the database has no ledger yet (has `tollgate serve` run with this config?)");
    }
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
    let mut accs: HashMap<String, Acc> = HashMap::new();
    for Scan { lo, hi, day } in &scans {
        let rows = match day {
            Some(d) => tx.query(&sql, &[lo, hi, d])?,
            None => tx.query(&sql, &[lo, hi])?,
        };
        for row in rows {
            let acc = Acc {
                requests: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                input: big(row.get(2))?.try_into().unwrap_or(0),
                output: big(row.get(3))?.try_into().unwrap_or(0),
                nanos: big(row.get(4))?,
                unpriced: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
                ttft: (row.get(6), row.get(7)),
            };
            accs.insert(row.get(0), acc);
        }
    }
    let total_ttft = tx.query_one(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ttft_ms),
                percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms)
         FROM requests WHERE ts_ms >= $1 AND ts_ms < $2",
        &[&window.lo, &window.hi],
    )?;
    tx.commit()?;
    let mut total = Acc { ttft: (total_ttft.get(0), total_ttft.get(1)), ..Acc::default() };
    for a in accs.values() {
        total.requests += a.requests;
        total.input += a.input;
        total.output += a.output;
        total.nanos += a.nanos;
        total.unpriced += a.unpriced;
    }
    let mut accs: Vec<(String, Acc)> = accs.into_iter().collect();
    accs.sort_by(|(ka, a), (kb, b)| b.nanos.cmp(&a.nanos).then_with(|| ka.cmp(kb)));
    Ok(Report {
        since,
        until,
        groups: accs.into_iter().map(|(k, a)| group(k, a)).collect(),
        total: group("total".into(), total),
    })
}

/// A `SUM` read as text (PostgreSQL sums bigints into numeric, which may exceed i64).
fn big(text: Option<String>) -> anyhow::Result<i128> {
    text.map_or(Ok(0), |t| t.parse::<i128>().with_context(|| format!("sum `{t}` is not an integer")))
}

fn group(key: String, a: Acc) -> Group {
    let tokens = a.input + a.output;
    Group {
        key,
        requests: a.requests,
        input_tokens: u64::try_from(a.input).unwrap_or(u64::MAX),
        output_tokens: u64::try_from(a.output).unwrap_or(u64::MAX),
        spend_usd: usd(a.nanos),
        unpriced_requests: a.unpriced,
        cost_per_1k_tokens_usd: (tokens > 0).then(|| usd(div_round(a.nanos * 1000, tokens))),
        ttft_p50_ms: a.ttft.0,
        ttft_p95_ms: a.ttft.1,
    }
}
