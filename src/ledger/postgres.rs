//! The PostgreSQL ledger shared by a fleet of replicas: connection, versioned migrations (under an
//! advisory lock, so N replicas may start at once), batched idempotent inserts, and the spend
//! query that budgets read at startup. The writer side (spool and retries) is in [`sink`], the
//! `tollgate report` side in [`report`].

pub mod report;
pub mod sink;

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};

use super::Row;

/// Key of the session advisory lock held while migrating ("tollgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// The schema, one step per version; a database at version N gets steps N+1.. applied in order,
/// each in its own transaction together with its row in `tollgate_schema_migrations`.
/// Never edit a released step: add one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            ts_ms BIGINT NOT NULL,
            team TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            stream BOOLEAN NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            input_tokens BIGINT NOT NULL CHECK (input_tokens >= 0),
            output_tokens BIGINT NOT NULL CHECK (output_tokens >= 0),
            cached_input_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            usage_source TEXT,
            cost_nano_usd BIGINT CHECK (cost_nano_usd >= 0),
            ttft_ms DOUBLE PRECISION,
            duration_ms DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX requests_ts ON requests (ts_ms);",
    ),
    // Reports and budgets filter a time range by team or by model.
    (
        2,
        "CREATE INDEX requests_team_ts ON requests (team, ts_ms);
         CREATE INDEX requests_model_ts ON requests (model, ts_ms);",
    ),
];

/// The version this build migrates to.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Parses a `postgres://` URL (or key=value string) and applies tollgate's timeouts.
pub fn parse_url(url: &str) -> anyhow::Result<postgres::Config> {
    let mut config: postgres::Config =
        url.parse().map_err(|e| anyhow::anyhow!("ledger.postgres: the URL does not parse: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A dead peer is noticed by the kernel instead of blocking the writer forever.
    config.keepalives(true).keepalives_idle(Duration::from_secs(30)).tcp_user_timeout(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("tollgate");
    }
    Ok(config)
}

/// Why a connection failed, which decides between "spool and retry" and "refuse to start".
#[derive(Debug)]
pub enum ConnectError {
    /// Credentials or database rejected: retrying will not help.
    Rejected(String),
    /// Unreachable, refused, timed out, server starting or shutting down: retry later.
    Unavailable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Rejected(m) | ConnectError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Connects and migrates to [`latest_version`]. Must run outside any tokio runtime (the sync
/// client runs one of its own).
pub fn connect(config: &postgres::Config) -> Result<Client, ConnectError> {
    let mut client = config.connect(NoTls).map_err(classify)?;
    migrate(&mut client, latest_version()).map_err(classify)?;
    Ok(client)
}

fn classify(e: postgres::Error) -> ConnectError {
    let text = describe(&e);
    match e.code().map(SqlState::code) {
        // 28xxx: invalid authorization (bad password, no such role, pg_hba); 3D000: no such
        // database; 42501: insufficient privilege (cannot create the schema).
        Some(c) if c.starts_with("28") || c == "3D000" || c == "42501" => {
            ConnectError::Rejected(format!("ledger.postgres: the server rejected the connection: {text}"))
        }
        Some(c) if !c.starts_with("57") && !c.starts_with("08") && !c.starts_with("53") => {
            ConnectError::Rejected(format!("ledger.postgres: {text}"))
        }
        _ => ConnectError::Unavailable(format!("ledger.postgres: unreachable: {text}")),
    }
}

/// The server's message (with its SQLSTATE) when there is one, else the client's.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let source = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
            format!("{e}{source}")
        }
    }
}

/// Applies the migrations up to `target` under the advisory lock: replicas starting together
/// wait for the first one, then find nothing left to do.
pub fn migrate(client: &mut Client, target: i32) -> Result<(), postgres::Error> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(client, target);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked.map(drop)
}

fn migrate_locked(client: &mut Client, target: i32) -> Result<(), postgres::Error> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS tollgate_schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    let current: i32 =
        client.query_one("SELECT COALESCE(MAX(version), 0) FROM tollgate_schema_migrations", &[])?.get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current && *v <= target) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO tollgate_schema_migrations (version) VALUES ($1)", &[version])?;
        tx.commit()?;
        tracing::info!(version, "ledger.postgres: schema migrated");
    }
    Ok(())
}

/// Rows in column form, the shape one `INSERT ... SELECT FROM unnest(...)` takes.
#[derive(Debug, Default)]
pub struct Columns {
    pub id: Vec<String>,
    pub ts_ms: Vec<i64>,
    pub team: Vec<String>,
    pub model: Vec<String>,
    pub backend: Vec<String>,
    pub endpoint: Vec<String>,
    pub stream: Vec<bool>,
    pub status: Vec<i32>,
    pub outcome: Vec<String>,
    pub input_tokens: Vec<i64>,
    pub output_tokens: Vec<i64>,
    pub cached_input_tokens: Vec<i64>,
    pub reasoning_tokens: Vec<i64>,
    pub usage_source: Vec<Option<String>>,
    pub cost_nano_usd: Vec<Option<i64>>,
    pub ttft_ms: Vec<Option<f64>>,
    pub duration_ms: Vec<f64>,
}

/// Counts beyond i64 are clamped (no request has 9e18 tokens), as in the SQLite ledger.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Columns {
    pub fn len(&self) -> usize {
        self.id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub fn push(&mut self, r: &Row) {
        self.id.push(r.id.clone());
        self.ts_ms.push(r.ts_ms);
        self.team.push(r.team.to_string());
        self.model.push(r.model.to_string());
        self.backend.push(r.backend.to_string());
        self.endpoint.push(r.endpoint.to_owned());
        self.stream.push(r.stream);
        self.status.push(i32::from(r.status));
        self.outcome.push(r.outcome.to_owned());
        self.input_tokens.push(int(r.input_tokens));
        self.output_tokens.push(int(r.output_tokens));
        self.cached_input_tokens.push(int(r.cached_input_tokens));
        self.reasoning_tokens.push(int(r.reasoning_tokens));
        self.usage_source.push(r.usage_source.map(str::to_owned));
        self.cost_nano_usd.push(r.cost_nano_usd.map(int));
        self.ttft_ms.push(r.ttft_ms);
        self.duration_ms.push(r.duration_ms);
    }

    /// Rows `range` as a new set (to retry a failed batch row by row).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Columns {
        let r = range;
        Columns {
            id: self.id[r.clone()].to_vec(),
            ts_ms: self.ts_ms[r.clone()].to_vec(),
            team: self.team[r.clone()].to_vec(),
            model: self.model[r.clone()].to_vec(),
            backend: self.backend[r.clone()].to_vec(),
            endpoint: self.endpoint[r.clone()].to_vec(),
            stream: self.stream[r.clone()].to_vec(),
            status: self.status[r.clone()].to_vec(),
            outcome: self.outcome[r.clone()].to_vec(),
            input_tokens: self.input_tokens[r.clone()].to_vec(),
            output_tokens: self.output_tokens[r.clone()].to_vec(),
            cached_input_tokens: self.cached_input_tokens[r.clone()].to_vec(),
            reasoning_tokens: self.reasoning_tokens[r.clone()].to_vec(),
            usage_source: self.usage_source[r.clone()].to_vec(),
            cost_nano_usd: self.cost_nano_usd[r.clone()].to_vec(),
            ttft_ms: self.ttft_ms[r.clone()].to_vec(),
            duration_ms: self.duration_ms[r].to_vec(),
        }
    }
}

/// Inserts the rows in one statement (atomic); ids already present are skipped, so a replay
/// after an ambiguous failure writes nothing twice. Returns the rows actually inserted.
pub fn insert(client: &mut Client, c: &Columns) -> Result<u64, postgres::Error> {
    client.execute(
        "INSERT INTO requests (id, ts_ms, team, model, backend, endpoint, stream, status, outcome,
             input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, usage_source, cost_nano_usd,
             ttft_ms, duration_ms)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[],
             $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::text[], $15::int8[],
             $16::float8[], $17::float8[])
         ON CONFLICT (id) DO NOTHING",
        &[
            &c.id,
            &c.ts_ms,
            &c.team,
            &c.model,
            &c.backend,
            &c.endpoint,
            &c.stream,
            &c.status,
            &c.outcome,
            &c.input_tokens,
            &c.output_tokens,
            &c.cached_input_tokens,
            &c.reasoning_tokens,
            &c.usage_source,
            &c.cost_nano_usd,
            &c.ttft_ms,
            &c.duration_ms,
        ],
    )
}

/// True when the error is about the rows (a constraint or a bad value), not the connection:
/// the batch is then retried row by row and the offending rows are set aside.
pub fn is_data_error(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("23") || c.code().starts_with("22"))
}

/// Spend in nano-dollars of rows in [from_ms, to_ms) matching an optional team and model: the
/// PostgreSQL twin of [`super::spend_between`].
pub fn spend_between(
    client: &mut Client,
    from_ms: i64,
    to_ms: i64,
    team: Option<&str>,
    model: Option<&str>,
) -> Result<u64, postgres::Error> {
    let total: i64 = client
        .query_one(
            "SELECT COALESCE(SUM(cost_nano_usd), 0)::int8 FROM requests
             WHERE ts_ms >= $1 AND ts_ms < $2 AND ($3::text IS NULL OR team = $3) AND ($4::text IS NULL OR model = $4)",
            &[&from_ms, &to_ms, &team, &model],
        )?
        .get(0);
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Runs `f` on a thread of its own: the sync client cannot be used (nor dropped) on a thread
/// that drives a tokio runtime, which is where startup and reloads run.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("tollgate-ledger-pg".into())
            .spawn_scoped(s, f)?
            .join()
            .map_err(|_| anyhow::anyhow!("ledger.postgres: the query thread panicked"))
    })
}
