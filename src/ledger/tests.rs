//! The ledger on a real SQLite file: batched writes, flush, restart, idempotent ids, totals.

use super::*;

fn temp_db(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-ledger-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap_or_default();
    dir.join("ledger.sqlite3")
}

pub(crate) fn row(ts_ms: i64, team: &str, model: &str, cost: Option<u64>) -> Row {
    Row {
        id: new_id(ts_ms),
        ts_ms,
        team: team.into(),
        model: model.into(),
        backend: "b".into(),
        endpoint: "chat_completions",
        stream: true,
        status: 200,
        outcome: "success",
        input_tokens: 10,
        output_tokens: 20,
        cached_input_tokens: 0,
        reasoning_tokens: 0,
        usage_source: Some("reported"),
        cost_nano_usd: cost,
        ttft_ms: Some(150.0),
        duration_ms: 900.0,
    }
}

#[test]
fn rows_survive_a_restart_and_sum_by_scope() {
    let path = temp_db("restart");
    let ledger = Ledger::start(&path, Duration::from_millis(50), 0).unwrap_or_else(|e| panic!("{e}"));
    ledger.append(row(1_000, "search", "m1", Some(100)));
    ledger.append(row(2_000, "ads", "m1", Some(250)));
    ledger.append(row(3_000, "ads", "m2", None));
    ledger.append(row(9_000, "ads", "m2", Some(7)));
    ledger.flush();
    assert_eq!(ledger.written(), 4);
    drop(ledger);

    // A new process opening the same file sees every row.
    let conn = open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spend_between(&conn, 0, 5_000, None, None).ok(), Some(350));
    assert_eq!(spend_between(&conn, 0, 10_000, Some("ads"), None).ok(), Some(257));
    assert_eq!(spend_between(&conn, 0, 10_000, None, Some("m1")).ok(), Some(350));
    assert_eq!(spend_between(&conn, 2_000, 9_000, None, None).ok(), Some(250));
}

#[test]
fn the_same_id_is_written_once() {
    let path = temp_db("idem");
    let ledger = Ledger::start(&path, Duration::from_millis(10), 0).unwrap_or_else(|e| panic!("{e}"));
    let r = row(1, "t", "m", Some(5));
    ledger.append(r.clone());
    ledger.append(r);
    ledger.flush();
    let conn = open(&path).unwrap_or_else(|e| panic!("{e}"));
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0)).unwrap_or(0);
    assert_eq!(n, 1);
}

#[test]
fn retention_prunes_old_rows() {
    let path = temp_db("prune");
    let conn = open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut c = conn;
    insert(
        &mut c,
        &[Box::new(row(now_ms() - 40 * 86_400_000, "t", "m", Some(1))), Box::new(row(now_ms(), "t", "m", Some(2)))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(c);
    let ledger = Ledger::start(&path, Duration::from_millis(10), 30).unwrap_or_else(|e| panic!("{e}"));
    ledger.flush();
    let conn = open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spend_between(&conn, 0, i64::MAX, None, None).ok(), Some(2));
}
