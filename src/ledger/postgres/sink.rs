//! The ledger writer's PostgreSQL side: batches go straight to PostgreSQL while it answers; when
//! it does not they are spooled, in order, to the local SQLite file (`ledger.path`) and replayed
//! from there once a reconnect (with exponential backoff) succeeds. Nothing is lost (the spool is
//! on disk) and nothing is written twice (ids are unique, inserts skip known ids). A row the
//! database refuses (a constraint) is logged with its id and set aside; the queue moves on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use postgres::Client;
use rusqlite::{Connection, params};

use super::{Columns, ConnectError, connect, describe, insert, is_data_error};
use crate::ledger::Row;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Spooled rows replayed per statement.
const REPLAY_BATCH: i64 = 5_000;
/// Statements of replay per writer wake-up, so a long backlog does not stall the queue for long.
const REPLAY_ROUNDS: usize = 20;

/// The spool table, next to the SQLite ledger's own tables in `ledger.path`. `seq` keeps the
/// order rows arrived in.
const SPOOL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pg_spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
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
";

/// Counters shared with the [`crate::ledger::Ledger`] handle (and so with the metrics).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub written: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// Rows waiting in the spool (a gauge).
    pub spooled: Arc<AtomicU64>,
}

pub struct Sink {
    config: postgres::Config,
    client: Option<Client>,
    spool: Connection,
    spool_max: u64,
    backoff: Duration,
    retry_at: Instant,
    counters: Counters,
    /// The spool is full: logged once per episode.
    full: bool,
}

impl Sink {
    /// Opens the spool and tries PostgreSQL once. Rejected credentials (or a missing database)
    /// are an error: retrying cannot fix them. An unreachable server is not: rows are spooled.
    pub fn open(
        config: postgres::Config,
        spool_path: &Path,
        spool_max: u64,
        counters: Counters,
    ) -> anyhow::Result<Sink> {
        let spool = crate::ledger::open(spool_path)
            .and_then(|c| c.execute_batch(SPOOL_SCHEMA).map(|()| c))
            .map_err(|e| anyhow::anyhow!("ledger spool {}: {e}", spool_path.display()))?;
        let pending: i64 = spool.query_row("SELECT COUNT(*) FROM pg_spool", [], |r| r.get(0))?;
        counters.spooled.store(u64::try_from(pending).unwrap_or(0), Relaxed);
        let client = match connect(&config) {
            Ok(c) => Some(c),
            Err(ConnectError::Rejected(m)) => {
                anyhow::bail!("{m} (check the URL in the ledger.postgres.url_env variable)")
            }
            Err(ConnectError::Unavailable(m)) => {
                tracing::error!(error = %m, spool = %spool_path.display(), "ledger.postgres unreachable at startup: spooling rows locally until it answers");
                None
            }
        };
        if pending > 0 {
            tracing::info!(rows = pending, "ledger.postgres: spooled rows from an earlier run will be replayed");
        }
        Ok(Sink {
            config,
            client,
            spool,
            spool_max,
            backoff: MIN_BACKOFF,
            retry_at: Instant::now(),
            counters,
            full: false,
        })
    }

    /// Rows waiting in the spool.
    fn spooled(&self) -> u64 {
        self.counters.spooled.load(Relaxed)
    }

    /// Writes one batch: to PostgreSQL when it is up and nothing older waits in the spool,
    /// otherwise to the spool.
    pub fn write(&mut self, rows: &[Box<Row>]) {
        let mut cols = Columns::default();
        for r in rows {
            cols.push(r);
        }
        self.tick();
        let rest = if self.spooled() == 0 { self.send(cols) } else { Some(cols) };
        if let Some(rest) = rest {
            self.spool_rows(&rest);
        }
    }

    /// Called on every writer wake-up: reconnects when due and replays part of the spool.
    pub fn tick(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if Instant::now() < self.retry_at {
                return;
            }
            match connect(&self.config) {
                Ok(c) => {
                    tracing::info!(spooled = self.spooled(), "ledger.postgres: connected");
                    self.client = Some(c);
                    self.backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    self.retry_at = Instant::now() + self.backoff;
                    tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, spooled = self.spooled(), "ledger.postgres: reconnect failed");
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            }
        }
        for _ in 0..REPLAY_ROUNDS {
            if self.spooled() == 0 || self.client.is_none() {
                return;
            }
            if let Err(e) = self.replay_some() {
                tracing::error!(error = %e, "ledger.postgres: reading the spool failed");
                return;
            }
        }
    }

    /// Sends up to [`REPLAY_BATCH`] of the oldest spooled rows, deleting what PostgreSQL took.
    fn replay_some(&mut self) -> rusqlite::Result<()> {
        let (cols, last_seq) = read_spool(&self.spool, REPLAY_BATCH)?;
        if cols.is_empty() {
            self.counters.spooled.store(0, Relaxed);
            return Ok(());
        }
        let n = cols.len() as u64;
        // What `send` hands back is what it could not write (the connection went away): those
        // stay spooled. Rows before them are done (written or set aside).
        let kept = self.send(cols).map_or(0, |rest| rest.len() as i64);
        if kept > 0 {
            let done_to = read_spool_seq_before(&self.spool, last_seq, kept)?;
            self.spool.execute("DELETE FROM pg_spool WHERE seq <= ?1", params![done_to])?;
            self.counters.spooled.fetch_sub((n as i64 - kept).max(0) as u64, Relaxed);
        } else {
            self.spool.execute("DELETE FROM pg_spool WHERE seq <= ?1", params![last_seq])?;
            let left = self.spooled().saturating_sub(n);
            self.counters.spooled.store(left, Relaxed);
        }
        Ok(())
    }

    /// Inserts `cols`; returns the rows not written because the connection failed (to spool).
    fn send(&mut self, cols: Columns) -> Option<Columns> {
        let Some(client) = self.client.as_mut() else { return Some(cols) };
        match insert(client, &cols) {
            Ok(_) => {
                self.counters.written.fetch_add(cols.len() as u64, Relaxed);
                None
            }
            Err(e) if is_data_error(&e) => self.send_one_by_one(cols),
            Err(e) => {
                tracing::warn!(error = %describe(&e), rows = cols.len(), "ledger.postgres: write failed: spooling");
                self.disconnect();
                Some(cols)
            }
        }
    }

    /// A batch the database refused as a whole: each row alone, setting the bad ones aside.
    fn send_one_by_one(&mut self, cols: Columns) -> Option<Columns> {
        for i in 0..cols.len() {
            let one = cols.slice(i..i + 1);
            let Some(client) = self.client.as_mut() else { return Some(cols.slice(i..cols.len())) };
            match insert(client, &one) {
                Ok(_) => {
                    self.counters.written.fetch_add(1, Relaxed);
                }
                Err(e) if is_data_error(&e) => {
                    self.counters.failed.fetch_add(1, Relaxed);
                    tracing::error!(id = %cols.id[i], error = %describe(&e), "ledger.postgres: row refused by the database: skipped");
                }
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "ledger.postgres: write failed: spooling");
                    self.disconnect();
                    return Some(cols.slice(i..cols.len()));
                }
            }
        }
        None
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Appends rows to the spool, or drops and counts them when it is full (logged, no crash).
    fn spool_rows(&mut self, cols: &Columns) {
        if self.spooled() + cols.len() as u64 > self.spool_max {
            self.counters.failed.fetch_add(cols.len() as u64, Relaxed);
            if !self.full {
                self.full = true;
                tracing::error!(
                    max_rows = self.spool_max,
                    "ledger.postgres: spool full while PostgreSQL is down: rows are dropped (tollgate_ledger_rows_total{{result=\"failed\"}})"
                );
            }
            return;
        }
        self.full = false;
        match write_spool(&mut self.spool, cols) {
            Ok(()) => {
                self.counters.spooled.fetch_add(cols.len() as u64, Relaxed);
            }
            Err(e) => {
                self.counters.failed.fetch_add(cols.len() as u64, Relaxed);
                tracing::error!(error = %e, rows = cols.len(), "ledger.postgres: spooling failed: rows lost");
            }
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("connected", &self.client.is_some()).field("spooled", &self.spooled()).finish()
    }
}

fn write_spool(conn: &mut Connection, c: &Columns) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO pg_spool (id, ts_ms, team, model, backend, endpoint, stream, status, outcome,
             input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, usage_source, cost_nano_usd,
             ttft_ms, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for i in 0..c.len() {
            stmt.execute(params![
                c.id[i],
                c.ts_ms[i],
                c.team[i],
                c.model[i],
                c.backend[i],
                c.endpoint[i],
                c.stream[i],
                c.status[i],
                c.outcome[i],
                c.input_tokens[i],
                c.output_tokens[i],
                c.cached_input_tokens[i],
                c.reasoning_tokens[i],
                c.usage_source[i],
                c.cost_nano_usd[i],
                c.ttft_ms[i],
                c.duration_ms[i],
            ])?;
        }
    }
    tx.commit()
}

/// The oldest `limit` spooled rows and the last one's seq.
fn read_spool(conn: &Connection, limit: i64) -> rusqlite::Result<(Columns, i64)> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, ts_ms, team, model, backend, endpoint, stream, status, outcome, input_tokens, output_tokens,
         cached_input_tokens, reasoning_tokens, usage_source, cost_nano_usd, ttft_ms, duration_ms
         FROM pg_spool ORDER BY seq LIMIT ?1",
    )?;
    let mut rows = stmt.query(params![limit])?;
    let (mut c, mut last) = (Columns::default(), 0);
    while let Some(r) = rows.next()? {
        last = r.get(0)?;
        c.id.push(r.get(1)?);
        c.ts_ms.push(r.get(2)?);
        c.team.push(r.get(3)?);
        c.model.push(r.get(4)?);
        c.backend.push(r.get(5)?);
        c.endpoint.push(r.get(6)?);
        c.stream.push(r.get(7)?);
        c.status.push(r.get(8)?);
        c.outcome.push(r.get(9)?);
        c.input_tokens.push(r.get(10)?);
        c.output_tokens.push(r.get(11)?);
        c.cached_input_tokens.push(r.get(12)?);
        c.reasoning_tokens.push(r.get(13)?);
        c.usage_source.push(r.get(14)?);
        c.cost_nano_usd.push(r.get(15)?);
        c.ttft_ms.push(r.get(16)?);
        c.duration_ms.push(r.get(17)?);
    }
    Ok((c, last))
}

/// The seq just before the last `kept` rows up to `last_seq` (the rows already handled end there).
fn read_spool_seq_before(conn: &Connection, last_seq: i64, kept: i64) -> rusqlite::Result<i64> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM pg_spool WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
            params![last_seq, kept],
            |r| r.get(0),
        )
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    Ok(seq.unwrap_or(0))
}
