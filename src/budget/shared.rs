//! Budgets shared by every replica through Redis: spend and reservations of a budget's current
//! period live in two counters that atomic Lua scripts reserve against and settle into, so N
//! replicas enforce one limit with the same overshoot bound as one process.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use redis::Script;
use redis::aio::ConnectionManager;

/// Admits when spend + reservations are below the limit, and reserves. KEYS: spent, reserved.
/// ARGV: limit, estimate, ttl_ms. Returns {1 admitted or 0 refused, the fleet's spend}.
const RESERVE: &str = r"
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local reserved = tonumber(redis.call('GET', KEYS[2]) or '0')
if spent + reserved >= tonumber(ARGV[1]) then return {0, spent} end
redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, spent}
";

/// Releases a reservation and adds the real cost. KEYS: spent, reserved. ARGV: reserved, cost,
/// ttl_ms. Returns the spend before and after, so exactly one replica sees each threshold crossed.
const SETTLE: &str = r"
local r = tonumber(redis.call('GET', KEYS[2]) or '0')
local release = math.min(r, tonumber(ARGV[1]))
if release > 0 then redis.call('DECRBY', KEYS[2], release) end
local after = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {after - tonumber(ARGV[2]), after}
";

/// The Redis side of shared budgets.
pub struct SharedStore {
    conn: ConnectionManager,
    prefix: String,
    pub fail_open: bool,
    reserve: Script,
    settle: Script,
    errors: AtomicU64,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection (and its URL, which may hold a password) is never printed.
        f.debug_struct("SharedStore").field("prefix", &self.prefix).field("fail_open", &self.fail_open).finish()
    }
}

/// Keys of one budget's period. The period start is part of the key, so a new period starts at 0.
fn keys(prefix: &str, budget: &str, period_start_ms: i64) -> (String, String) {
    (format!("{prefix}:{budget}:{period_start_ms}:spent"), format!("{prefix}:{budget}:{period_start_ms}:reserved"))
}

/// Counters outlive their period by a day (for late settlements), then expire.
fn ttl_ms(period_end_ms: i64, now_ms: i64) -> i64 {
    (period_end_ms - now_ms).max(0) + 86_400_000
}

impl SharedStore {
    pub async fn connect(url: &str, fail_open: bool) -> redis::RedisResult<SharedStore> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        Ok(SharedStore {
            conn,
            prefix: "tollgate:budget".into(),
            fail_open,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            errors: AtomicU64::new(0),
        })
    }

    fn failed<T>(&self, e: redis::RedisError) -> redis::RedisResult<T> {
        self.errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "budget store (Redis) failed");
        Err(e)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// Reserves `estimate` if the fleet's spend plus reservations is below `limit`; also returns
    /// the fleet's spend, so every decision refreshes this replica's view.
    pub async fn reserve(
        &self,
        budget: &str,
        period: (i64, i64),
        limit: u64,
        estimate: u64,
        now_ms: i64,
    ) -> redis::RedisResult<(bool, u64)> {
        let (spent, reserved) = keys(&self.prefix, budget, period.0);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<(i64, i64)> = self
            .reserve
            .key(spent)
            .key(reserved)
            .arg(limit)
            .arg(estimate)
            .arg(ttl_ms(period.1, now_ms))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((admitted, spent)) => Ok((admitted == 1, u64::try_from(spent).unwrap_or(0))),
            Err(e) => self.failed(e),
        }
    }

    /// Returns the shared spend (before, after).
    pub async fn settle(
        &self,
        budget: &str,
        period: (i64, i64),
        reserved: u64,
        cost: u64,
        now_ms: i64,
    ) -> redis::RedisResult<(u64, u64)> {
        let (spent, reserved_key) = keys(&self.prefix, budget, period.0);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<(i64, i64)> = self
            .settle
            .key(spent)
            .key(reserved_key)
            .arg(reserved)
            .arg(cost)
            .arg(ttl_ms(period.1, now_ms))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((b, a)) => Ok((u64::try_from(b).unwrap_or(0), u64::try_from(a).unwrap_or(0))),
            Err(e) => self.failed(e),
        }
    }

    /// The shared spend of a period (0 when nothing was spent yet).
    pub async fn spent(&self, budget: &str, period_start_ms: i64) -> redis::RedisResult<u64> {
        let (spent, _) = keys(&self.prefix, budget, period_start_ms);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Option<i64>> = redis::cmd("GET").arg(spent).query_async(&mut conn).await;
        match result {
            Ok(v) => Ok(v.map_or(0, |v| u64::try_from(v).unwrap_or(0))),
            Err(e) => self.failed(e),
        }
    }
}
