//! The PostgreSQL ledger against a real PostgreSQL on loopback (started per test by
//! `scripts/postgres-test-server`): two replicas' totals in `tollgate report`, PostgreSQL stopped
//! mid-traffic, migrations (empty, from v1, concurrent), and bad input.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::*;
use tollgate::ledger::postgres as pg;

/// 1000 input + 500 output tokens: $0.006 on `m` ($2/$8 per 1M), $0.003 on `m2` ($1/$4).
const OK: &str = r#"{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;

/// A PostgreSQL of the test's own, stopped when dropped.
struct Pg {
    dir: PathBuf,
    port: u16,
    url: String,
    fsync: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres-test-server")
}

impl Pg {
    fn start() -> Pg {
        Pg::start_durable(false)
    }

    fn start_durable(fsync: bool) -> Pg {
        let dir = temp_file("pg", "").with_extension("d");
        let port = free_addr().port();
        let mut pg = Pg { dir, port, url: String::new(), fsync };
        pg.url = pg.up();
        pg
    }

    fn up(&self) -> String {
        let out = Command::new(script())
            .args(["start", self.dir.to_str().unwrap(), &self.port.to_string()])
            .env("POSTGRES_TEST_FSYNC", if self.fsync { "on" } else { "off" })
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() != Some(127), "PostgreSQL (initdb/pg_ctl) is not installed: run scripts/test\n{err}");
        assert!(out.status.success(), "scripts/postgres-test-server start failed:\n{err}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn down(&self) {
        let out =
            Command::new(script()).args(["stop", self.dir.to_str().unwrap(), &self.port.to_string()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A query on a thread without a tokio runtime (the sync client runs one of its own).
    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static) -> T {
        let url = self.url.clone();
        std::thread::spawn(move || f(&mut postgres::Client::connect(&url, postgres::NoTls).unwrap())).join().unwrap()
    }

    /// (rows, distinct ids) in the ledger.
    fn counts(&self) -> (i64, i64) {
        self.try_counts().unwrap()
    }

    /// [`Pg::counts`], `None` while the server or the table is not there.
    fn try_counts(&self) -> Option<(i64, i64)> {
        let url = self.url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
            let r = c.query_one("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests", &[]).ok()?;
            Some((r.get(0), r.get(1)))
        })
        .join()
        .unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", self.dir.to_str().unwrap(), &self.port.to_string()]).output();
        // The cluster's files (tens of MB), with the temporary folder they were created in.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn sha(key: &str) -> String {
    tollgate::teams::sha256(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A replica's config: its own ports and spool, the shared PostgreSQL from TOLLGATE_LEDGER_URL.
fn replica(up: &Upstream, extra_models: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    let (p, a) = (free_addr(), free_addr());
    let yaml = format!(
        "version: 1\nlisten: \"{p}\"\nadmin_listen: \"{a}\"\nbackends:\n  - {{name: up, url: \"{}\"}}\nmodels:\n  - {{name: m, backend: up, price: {{input_per_1m_usd: 2, output_per_1m_usd: 8}}}}\n  - {{name: m2, backend: up, price: {{input_per_1m_usd: 1, output_per_1m_usd: 4}}}}\n{extra_models}clients:\n  - {{name: search, key_sha256: \"{}\"}}\n  - {{name: ads, key_sha256: \"{}\"}}\nbudgets:\n  - {{name: daily, limit_usd: 100}}\nledger:\n  flush_interval_ms: 100\n  postgres: {{url_env: TOLLGATE_LEDGER_URL}}\n",
        up.url(),
        sha("sk-search"),
        sha("sk-ads"),
    );
    (temp_file("tollgate.yaml", &yaml), p, a)
}

async fn call(addr: SocketAddr, key: &str, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","max_tokens":500,"messages":[{{"role":"user","content":"hi"}}]}}"#);
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    text(resp).await;
    status
}

fn report(config: &Path, url: &str, by: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["report", "--config", config.to_str().unwrap(), "--by", by, "--format", "json"])
        .env("TOLLGATE_LEDGER_URL", url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn group(json: &serde_json::Value, key: &str) -> serde_json::Value {
    json["groups"].as_array().unwrap().iter().find(|g| g["key"] == key).cloned().unwrap_or_default()
}

async fn stop(served: Served) {
    tokio::task::spawn_blocking(move || served.stop()).await.unwrap();
}

async fn wait_for(what: &str, secs: u64, mut pred: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_replicas_report_usage_times_price_per_team_and_model() {
    let db = Pg::start();
    let up = Upstream::start(Script::json(200, OK)).await;
    let env = [("TOLLGATE_LEDGER_URL", db.url.as_str())];
    let (c1, p1, a1) = replica(&up, "");
    let (c2, p2, a2) = replica(&up, "");
    let (r1, r2) = tokio::join!(Served::start(&c1, a1, &env), Served::start(&c2, a2, &env));
    // search: 3×m + 2×m2 on replica 1, 4×m on replica 2; ads: 1×m2 on each.
    for (addr, key, model, n) in [
        (p1, "sk-search", "m", 3),
        (p1, "sk-search", "m2", 2),
        (p2, "sk-search", "m", 4),
        (p1, "sk-ads", "m2", 1),
        (p2, "sk-ads", "m2", 1),
    ] {
        for _ in 0..n {
            assert_eq!(call(addr, key, model).await, 200);
        }
    }
    stop(r1).await;
    stop(r2).await;
    assert_eq!(db.counts(), (11, 11));
    // A replica starting now reads the fleet's spend for its budgets, not its own spool's.
    let (c3, _, a3) = replica(&up, "");
    let r3 = Served::start(&c3, a3, &env).await;
    let budgets: serde_json::Value = serde_json::from_str(&get(a3, "/api/budgets").await.1).unwrap();
    assert_eq!(budgets["budgets"][0]["spend_usd"], "0.054");
    stop(r3).await;

    let by_team = report(&c1, &db.url, "team");
    // search: 7 × $0.006 + 2 × $0.003 = $0.048; ads: 2 × $0.003.
    assert_eq!(group(&by_team, "search")["spend_usd"], "0.048");
    assert_eq!(group(&by_team, "search")["requests"], 9);
    assert_eq!(group(&by_team, "ads")["spend_usd"], "0.006");
    assert_eq!(by_team["total"]["spend_usd"], "0.054");
    assert_eq!(by_team["total"]["input_tokens"], 11_000);
    let by_model = report(&c2, &db.url, "model");
    assert_eq!(group(&by_model, "m")["spend_usd"], "0.042");
    assert_eq!(group(&by_model, "m2")["spend_usd"], "0.012");
    assert_eq!(group(&by_model, "m2")["requests"], 4);

    // The same records in a SQLite ledger give the same report, in every grouping.
    let sqlite = temp_file("ledger.sqlite3", "");
    std::fs::remove_file(&sqlite).unwrap();
    copy_to_sqlite(&db, &sqlite);
    let yaml = std::fs::read_to_string(&c1).unwrap();
    let lite =
        yaml.replace("  postgres: {url_env: TOLLGATE_LEDGER_URL}\n", &format!("  path: \"{}\"\n", sqlite.display()));
    let lite = temp_file("sqlite.yaml", &lite);
    for by in ["team", "model", "day"] {
        assert_eq!(report(&lite, "", by), report(&c1, &db.url, by), "by {by}");
    }
}

fn copy_to_sqlite(db: &Pg, path: &Path) {
    let rows = db.with(|c| c.query("SELECT id, ts_ms, team, model, backend, endpoint, stream, status, outcome, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, usage_source, cost_nano_usd, ttft_ms, duration_ms FROM requests", &[]).unwrap());
    let conn = tollgate::ledger::open(path).unwrap();
    for r in rows {
        let (id, ts, team, model, backend, endpoint): (String, i64, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let (stream, status, outcome): (bool, i32, String) = (r.get(6), r.get(7), r.get(8));
        let tokens: [i64; 4] = [r.get(9), r.get(10), r.get(11), r.get(12)];
        let (source, cost, ttft, dur): (Option<String>, Option<i64>, Option<f64>, f64) =
            (r.get(13), r.get(14), r.get(15), r.get(16));
        conn.execute(
            "INSERT INTO requests VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            rusqlite::params![
                id, ts, team, model, backend, endpoint, stream, status, outcome, tokens[0], tokens[1], tokens[2],
                tokens[3], source, cost, ttft, dur
            ],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn postgres_stopped_mid_traffic_loses_and_duplicates_nothing() {
    let db = Pg::start();
    let up = Upstream::start(Script::json(200, OK)).await;
    let (c, p, a) = replica(&up, "");
    let served = Served::start(&c, a, &[("TOLLGATE_LEDGER_URL", db.url.as_str())]).await;
    let mut sent = 0i64;
    for round in 0..3 {
        for _ in 0..40 {
            assert_eq!(call(p, "sk-search", "m").await, 200);
            sent += 1;
        }
        if round == 0 {
            // Rows in flight while the server goes away.
            db.down();
        }
        if round == 1 {
            let m = metrics_until_async(a, |m| sample(m, "tollgate_ledger_spool_rows") > 0.0).await;
            assert!(sample(&m, "tollgate_ledger_spool_rows") > 0.0);
            db.up();
        }
    }
    wait_for("the spool to be replayed", 60, || db.try_counts() == Some((sent, sent))).await;
    let m = metrics_until_async(a, |m| sample(m, "tollgate_ledger_spool_rows") == 0.0).await;
    assert_eq!(sample(&m, "tollgate_ledger_rows_total{result=\"written\"}") as i64, sent);
    stop(served).await;
    assert_eq!(db.counts(), (sent, sent));
    let by_team = report(&c, &db.url, "team");
    assert_eq!(by_team["total"]["requests"], sent);
}

async fn metrics_until_async(admin: SocketAddr, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..150 {
        let m = get(admin, "/metrics").await.1;
        if pred(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metrics never matched:\n{}", get(admin, "/metrics").await.1);
}

fn versions(db: &Pg) -> Vec<i32> {
    db.with(|c| {
        c.query("SELECT version FROM tollgate_schema_migrations ORDER BY version", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

#[tokio::test]
async fn migrations_from_empty_from_v1_and_two_replicas_at_once() {
    let db = Pg::start();
    // From an empty database, four connections migrating at once: each step applied once.
    let url = db.url.clone();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || pg::connect(&pg::parse_url(&url).unwrap()).map(drop).map_err(|e| e.to_string()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(versions(&db), vec![1, 2]);

    // From the previous version, with data: two replicas start together and bring it to v2.
    db.with(|c| {
        c.batch_execute("DROP TABLE requests; DROP TABLE tollgate_schema_migrations").unwrap();
        pg::migrate(c, 1).unwrap();
        c.execute(
            "INSERT INTO requests VALUES ('00000000000000000000000000000001', $1, 'search', 'm', 'up', 'chat', false,
             200, 'ok', 1000, 500, 0, 0, 'reported', 6000000, NULL, 1.0)",
            &[&tollgate::ledger::now_ms()],
        )
        .unwrap();
    });
    assert_eq!(versions(&db), vec![1]);
    let up = Upstream::start(Script::json(200, OK)).await;
    let env = [("TOLLGATE_LEDGER_URL", db.url.as_str())];
    let (c1, _, a1) = replica(&up, "");
    let (c2, _, a2) = replica(&up, "");
    let (r1, r2) = tokio::join!(Served::start(&c1, a1, &env), Served::start(&c2, a2, &env));
    assert_eq!(versions(&db), vec![1, 2]);
    let indexes: i64 = db.with(|c| {
        c.query_one(
            "SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'requests' AND indexname LIKE 'requests_%_ts'",
            &[],
        )
        .unwrap()
        .get(0)
    });
    assert_eq!(indexes, 2);
    assert_eq!(db.counts(), (1, 1));
    stop(r1).await;
    stop(r2).await;
    assert_eq!(report(&c1, &db.url, "team")["total"]["spend_usd"], "0.006");
}

#[tokio::test]
async fn unreachable_at_startup_spools_and_keeps_serving() {
    let up = Upstream::start(Script::json(200, OK)).await;
    // Nothing listens on the port yet.
    let port = free_addr().port();
    let url = format!("postgres://tollgate:tollgate@127.0.0.1:{port}/tollgate");
    let db = Pg { dir: temp_file("pg", "").with_extension("d"), port, url: url.clone(), fsync: false };
    let (c, p, a) = replica(&up, "");
    let served = Served::start(&c, a, &[("TOLLGATE_LEDGER_URL", url.as_str())]).await;
    for _ in 0..5 {
        assert_eq!(call(p, "sk-ads", "m").await, 200);
    }
    metrics_until_async(a, |m| sample(m, "tollgate_ledger_spool_rows") == 5.0).await;
    assert_eq!(db.up(), url);
    wait_for("the spool to be replayed", 60, || db.try_counts() == Some((5, 5))).await;
    assert_eq!(versions(&db), vec![1, 2]);
    stop(served).await;
}

#[tokio::test]
async fn a_full_spool_drops_and_counts_rows_and_keeps_serving() {
    let up = Upstream::start(Script::json(200, OK)).await;
    let url = format!("postgres://tollgate:tollgate@127.0.0.1:{}/tollgate", free_addr().port());
    let (c, p, a) = replica(&up, "");
    let yaml = std::fs::read_to_string(&c)
        .unwrap()
        .replace("url_env: TOLLGATE_LEDGER_URL", "url_env: TOLLGATE_LEDGER_URL, spool_max_rows: 3");
    std::fs::write(&c, yaml).unwrap();
    let served = Served::start(&c, a, &[("TOLLGATE_LEDGER_URL", url.as_str())]).await;
    for _ in 0..5 {
        assert_eq!(call(p, "sk-ads", "m").await, 200);
        // One batch per row: the spool fills row by row.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let failed = "tollgate_ledger_rows_total{result=\"failed\"}";
    let m = metrics_until_async(a, |m| sample(m, failed) == 2.0).await;
    assert_eq!(sample(&m, "tollgate_ledger_spool_rows"), 3.0);
    let log = served.log.clone();
    stop(served).await;
    assert!(std::fs::read_to_string(log).unwrap().contains("spool full"));
}

#[tokio::test]
async fn wrong_credentials_refuse_to_start_with_a_clear_error() {
    let db = Pg::start();
    let up = Upstream::start(Script::json(200, OK)).await;
    let (c, _, _) = replica(&up, "");
    let url = db.url.replace("tollgate:tollgate@", "tollgate:wrong@");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config", c.to_str().unwrap()])
            .env("TOLLGATE_LEDGER_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ledger.postgres: the server rejected the connection"), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("wrong"), "the password leaked: {err}");
}

#[tokio::test]
async fn a_row_violating_a_constraint_is_logged_and_skipped() {
    let db = Pg::start();
    db.with(|c| {
        pg::migrate(c, pg::latest_version()).unwrap();
        c.batch_execute("ALTER TABLE requests ADD CONSTRAINT no_bad_model CHECK (model <> 'bad')").unwrap();
    });
    let up = Upstream::start(Script::json(200, OK)).await;
    let (c, p, a) = replica(&up, "  - {name: bad, backend: up}\n");
    let served = Served::start(&c, a, &[("TOLLGATE_LEDGER_URL", db.url.as_str())]).await;
    for model in ["m", "bad", "m", "m"] {
        assert_eq!(call(p, "sk-search", model).await, 200);
    }
    let rows = |m: &str, result: &str| sample(m, &format!("tollgate_ledger_rows_total{{result=\"{result}\"}}"));
    metrics_until_async(a, |m| rows(m, "failed") == 1.0 && rows(m, "written") == 3.0).await;
    // The queue moves on after it.
    assert_eq!(call(p, "sk-search", "m").await, 200);
    let log = served.log.clone();
    stop(served).await;
    assert_eq!(db.counts(), (4, 4));
    let log = std::fs::read_to_string(log).unwrap();
    let line = log.lines().find(|l| l.contains("row refused by the database")).unwrap_or_else(|| panic!("{log}"));
    // The log may be coloured: drop the escape sequences before looking for `id=<32 hex digits>`.
    let plain = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap().replace_all(line, "");
    assert!(regex::Regex::new("id=[0-9a-f]{32} ").unwrap().is_match(&plain), "{plain}");
    assert!(plain.contains("no_bad_model") && plain.contains("23514"), "{plain}");
}

/// `cargo test --test postgres -- --ignored --nocapture write_throughput`: rows/s into
/// PostgreSQL in the writer's batches (5,000 rows a statement), for docs/fleet-ledger.md.
#[test]
#[ignore]
fn write_throughput() {
    // The test server runs with fsync off; a measurement for the docs wants it on.
    let db = Pg::start_durable(true);
    let mut client = pg::connect(&pg::parse_url(&db.url).unwrap()).unwrap();
    assert_eq!(client.query_one("SHOW fsync", &[]).unwrap().get::<_, String>(0), "on");
    let (batches, size) = (100, 5_000);
    let now = tollgate::ledger::now_ms();
    let start = Instant::now();
    for b in 0..batches {
        let mut cols = pg::Columns::default();
        for i in 0..size {
            let ts = now + (b * size + i) as i64 / 10;
            cols.push(&tollgate::ledger::Row {
                id: tollgate::ledger::new_id(ts),
                ts_ms: ts,
                team: "search".into(),
                model: "gpt-4o-mini".into(),
                backend: "openai".into(),
                endpoint: "chat",
                stream: true,
                status: 200,
                outcome: "ok",
                input_tokens: 1200,
                output_tokens: 350,
                cached_input_tokens: 0,
                reasoning_tokens: 0,
                usage_source: Some("reported"),
                cost_nano_usd: Some(390_000),
                ttft_ms: Some(412.5),
                duration_ms: 2_310.0,
            });
        }
        pg::insert(&mut client, &cols).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let rows = (batches * size) as f64;
    let size: i64 = client.query_one("SELECT pg_total_relation_size('requests')", &[]).unwrap().get(0);
    let heap: i64 = client.query_one("SELECT pg_relation_size('requests')", &[]).unwrap().get(0);
    println!(
        "{rows} rows in {secs:.2}s: {:.0} rows/s; {:.0} bytes/row on disk with indexes ({:.0} heap only)",
        rows / secs,
        size as f64 / rows,
        heap as f64 / rows
    );
}
