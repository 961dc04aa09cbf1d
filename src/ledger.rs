//! The spend ledger: every finished request's record, appended to an embedded SQLite file by a
//! writer thread off the request path, in batches (one transaction per flush interval). A crash
//! loses at most what was queued since the last flush; a restart reads today's totals back.

// [postgres ledger] The shared PostgreSQL store (`ledger.postgres`).
pub mod postgres;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

/// How many rows may wait for the writer; past it rows are dropped and counted (the request path
/// never blocks on the disk).
const QUEUE: usize = 65_536;
/// Rows written in one transaction at most.
const BATCH: usize = 5_000;

/// One finished request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Random 128-bit id, hex: unique across replicas, so replays can be idempotent.
    pub id: String,
    pub ts_ms: i64,
    pub team: Arc<str>,
    pub model: Arc<str>,
    pub backend: Arc<str>,
    pub endpoint: &'static str,
    pub stream: bool,
    pub status: u16,
    pub outcome: &'static str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    /// `reported`, `estimated`, or `None` when nothing was billed.
    pub usage_source: Option<&'static str>,
    /// `None` when the model has no price (unpriced, never $0).
    pub cost_nano_usd: Option<u64>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
}

/// A 128-bit id: 48 bits of the row's millisecond timestamp, then 80 random bits, in hex. Unique
/// across replicas like a random id, but ordered by time, so inserts append to the end of the
/// primary-key B-tree instead of landing at random pages (measured: random ids made the writer
/// thread a third of the proxy's CPU on non-streaming load).
pub fn new_id(ts_ms: i64) -> String {
    let ts = u64::try_from(ts_ms).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{ts:012x}{:04x}{:016x}", fastrand::u16(..), fastrand::u64(..))
}

enum Msg {
    Row(Box<Row>),
    /// Write everything queued before this message, then answer.
    Flush(SyncSender<()>),
}

/// The handle the request path appends through.
#[derive(Debug)]
pub struct Ledger {
    tx: SyncSender<Msg>,
    pub path: PathBuf,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    // [postgres ledger] Rows appended and not yet taken by the writer; the PostgreSQL store.
    queued: Arc<AtomicU64>,
    pg: Option<PgStore>,
}

/// [postgres ledger] What the handle keeps of a PostgreSQL store: how to reach it for reads, and
/// the spool gauge.
struct PgStore {
    config: ::postgres::Config,
    spooled: Arc<AtomicU64>,
    /// When a read last failed: reads within 30 s of it go straight to the spool, so N budgets
    /// do not wait N connect timeouts.
    read_failed: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// [postgres ledger] Where the writer thread puts rows.
enum Store {
    Sqlite(Connection),
    Postgres(Box<postgres::sink::Sink>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    team TEXT NOT NULL,
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    usage_source TEXT,
    cost_nano_usd INTEGER,
    ttft_ms REAL,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE TABLE IF NOT EXISTS alerts_sent (
    budget TEXT NOT NULL,
    period_start_ms INTEGER NOT NULL,
    threshold TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    PRIMARY KEY (budget, period_start_ms, threshold)
);
";

/// Opens (creating if needed) a ledger database with the schema, in WAL mode.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: committed transactions survive a process crash (not a power cut).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl Ledger {
    /// Opens the file and starts the writer thread. `retention_days` > 0 prunes older rows at
    /// start and then hourly.
    pub fn start(path: &Path, flush_interval: Duration, retention_days: u32) -> anyhow::Result<Ledger> {
        let conn = open(path).map_err(|e| anyhow::anyhow!("ledger {}: {e}", path.display()))?;
        let (tx, rx) = sync_channel(QUEUE);
        let (dropped, failed, written) = (Arc::default(), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (f, w) = (Arc::clone(&failed), Arc::clone(&written));
        let queued = Arc::new(AtomicU64::new(0));
        let q = Arc::clone(&queued);
        // The writer thread lives as long as the process; `flush` is how callers wait for it.
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || write_loop(Store::Sqlite(conn), rx, flush_interval, retention_days, &f, &w, &q))?;
        Ok(Ledger { tx, path: path.to_path_buf(), dropped, failed, written, queued, pg: None })
    }

    /// [postgres ledger] Starts the store the config selects: PostgreSQL (spooling to `path`)
    /// when `ledger.postgres` is set, else the SQLite file at `path`.
    pub fn start_with(config: &crate::config::LedgerConfig) -> anyhow::Result<Ledger> {
        let Some(pg) = &config.postgres else {
            return Ledger::start(&config.path, config.flush_interval, config.retention_days);
        };
        let pg_config = postgres::parse_url(pg.url.expose())?;
        let counters = postgres::sink::Counters::default();
        let (tx, rx) = sync_channel(QUEUE);
        let (opened_tx, opened) = sync_channel(1);
        let (path, spool_max, flush_interval) = (config.path.clone(), pg.spool_max_rows, config.flush_interval);
        let (c, q, pc) = (counters.clone(), Arc::new(AtomicU64::new(0)), pg_config.clone());
        let queued = Arc::clone(&q);
        // The sync client must live on a thread without a tokio runtime: the writer's own.
        std::thread::Builder::new().name("tollgate-ledger".into()).spawn(move || {
            match postgres::sink::Sink::open(pc, &path, spool_max, c.clone()) {
                Ok(sink) => {
                    let _ = opened_tx.send(Ok(()));
                    write_loop(Store::Postgres(Box::new(sink)), rx, flush_interval, 0, &c.failed, &c.written, &q);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        })?;
        opened.recv().map_err(|_| anyhow::anyhow!("ledger.postgres: the writer thread exited"))??;
        Ok(Ledger {
            tx,
            path: config.path.clone(),
            dropped: Arc::default(),
            failed: counters.failed,
            written: counters.written,
            queued,
            pg: Some(PgStore { config: pg_config, spooled: counters.spooled, read_failed: Default::default() }),
        })
    }

    /// [postgres ledger] Spend in [from_ms, to_ms) from the configured store (after a `flush`,
    /// everything appended so far). PostgreSQL unreachable: the rows spooled locally are all
    /// this replica can count (logged).
    pub fn spend_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        team: Option<&str>,
        model: Option<&str>,
    ) -> anyhow::Result<u64> {
        let Some(pg) = &self.pg else {
            return Ok(spend_between(&open(&self.path)?, from_ms, to_ms, team, model)?);
        };
        let recent_failure = |f: &Option<Instant>| f.is_some_and(|t| t.elapsed() < Duration::from_secs(30));
        let skip = pg.read_failed.lock().map(|f| recent_failure(&f)).unwrap_or(false);
        let read = if skip {
            Err(anyhow::anyhow!("unreachable moments ago"))
        } else {
            postgres::off_runtime(|| -> anyhow::Result<u64> {
                let mut client = pg.config.connect(::postgres::NoTls)?;
                Ok(postgres::spend_between(&mut client, from_ms, to_ms, team, model)?)
            })?
        };
        if let Ok(mut f) = pg.read_failed.lock() {
            *f = if read.is_err() { f.or(Some(Instant::now())) } else { None };
        }
        match read {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::error!(error = %e, "ledger.postgres unreachable: budgets start from the locally spooled rows only");
                let conn = open(&self.path)?;
                let spooled: i64 = conn.query_row(
                    "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM pg_spool WHERE ts_ms >= ?1 AND ts_ms < ?2
                     AND (?3 IS NULL OR team = ?3) AND (?4 IS NULL OR model = ?4)",
                    params![from_ms, to_ms, team, model],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(spooled).unwrap_or(0))
            }
        }
    }

    /// [postgres ledger] Rows appended and not yet taken by the writer thread.
    pub fn queue_depth(&self) -> u64 {
        self.queued.load(Relaxed)
    }
    /// [postgres ledger] Rows waiting in the local spool for PostgreSQL (0 with SQLite).
    pub fn spooled(&self) -> u64 {
        self.pg.as_ref().map_or(0, |p| p.spooled.load(Relaxed))
    }

    /// Queues a row; never blocks. A full queue drops the row and counts it.
    pub fn append(&self, row: Row) {
        match self.tx.try_send(Msg::Row(Box::new(row))) {
            Ok(()) => {
                self.queued.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Waits until every row queued so far is committed (tests, shutdown).
    pub fn flush(&self) {
        let (ack, done) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(30));
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }
}

fn write_loop(
    mut store: Store,
    rx: Receiver<Msg>,
    flush_interval: Duration,
    retention_days: u32,
    failed: &AtomicU64,
    written: &AtomicU64,
    queued: &AtomicU64,
) {
    let mut batch: Vec<Box<Row>> = Vec::new();
    let mut waiting: Vec<SyncSender<()>> = Vec::new();
    let mut last_prune = None::<Instant>;
    loop {
        if let Store::Sqlite(conn) = &store
            && retention_days > 0
            && last_prune.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(3600))
        {
            prune(conn, retention_days);
            last_prune = Some(Instant::now());
        }
        // Collect for up to one flush interval from the first row, then write them in one go.
        let deadline = Instant::now() + flush_interval;
        let closed = loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(if batch.is_empty() && waiting.is_empty() { flush_interval } else { wait }) {
                Ok(Msg::Row(r)) => {
                    queued.fetch_sub(1, Relaxed);
                    batch.push(r);
                    if batch.len() >= BATCH {
                        break false;
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    waiting.push(ack);
                    break false;
                }
                Err(RecvTimeoutError::Timeout) => break false,
                Err(RecvTimeoutError::Disconnected) => break true,
            }
        };
        // [postgres ledger] PostgreSQL: straight there, or to the spool; retries and replay on
        // every wake-up. Its counters are kept by the sink.
        if let Store::Postgres(sink) = &mut store {
            if batch.is_empty() {
                sink.tick();
            } else {
                sink.write(&batch);
                batch.clear();
            }
        }
        if let Store::Sqlite(conn) = &mut store
            && !batch.is_empty()
        {
            match insert(conn, &batch) {
                Ok(()) => {
                    written.fetch_add(batch.len() as u64, Relaxed);
                }
                Err(e) => {
                    failed.fetch_add(batch.len() as u64, Relaxed);
                    tracing::error!(error = %e, rows = batch.len(), "ledger write failed");
                }
            }
            batch.clear();
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        if closed {
            return;
        }
    }
}

fn insert(conn: &mut Connection, rows: &[Box<Row>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO requests (id, ts_ms, team, model, backend, endpoint, stream, status, outcome,
             input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, usage_source, cost_nano_usd,
             ttft_ms, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.id,
                r.ts_ms,
                r.team.as_ref(),
                r.model.as_ref(),
                r.backend.as_ref(),
                r.endpoint,
                r.stream,
                r.status,
                r.outcome,
                sql_int(r.input_tokens),
                sql_int(r.output_tokens),
                sql_int(r.cached_input_tokens),
                sql_int(r.reasoning_tokens),
                r.usage_source,
                r.cost_nano_usd.map(sql_int),
                r.ttft_ms,
                r.duration_ms,
            ])?;
        }
    }
    tx.commit()
}

/// SQLite integers are i64; counts beyond that are clamped (no request has 9e18 tokens).
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn prune(conn: &Connection, retention_days: u32) {
    let cutoff = now_ms() - i64::from(retention_days) * 86_400_000;
    match conn.execute("DELETE FROM requests WHERE ts_ms < ?1", params![cutoff]) {
        Ok(n) if n > 0 => tracing::info!(rows = n, retention_days, "ledger pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ledger prune failed"),
    }
}

/// Wall-clock milliseconds since the Unix epoch (ledger timestamps; never used for durations).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Spend in nano-dollars of rows in [from_ms, to_ms) matching an optional team and model.
pub fn spend_between(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    team: Option<&str>,
    model: Option<&str>,
) -> rusqlite::Result<u64> {
    let total: i64 = conn.query_row(
        "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM requests
         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR team = ?3) AND (?4 IS NULL OR model = ?4)",
        params![from_ms, to_ms, team, model],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(total).unwrap_or(0))
}

#[cfg(test)]
mod tests;
