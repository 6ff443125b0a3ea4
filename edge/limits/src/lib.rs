//! Limits several edge replicas share, kept in Redis (or Valkey) when `AIBOX_REDIS_URL` is set:
//! requests per minute, tokens per minute, concurrent requests and MCP calls per minute.
//!
//! Each operation is one Lua script, so a window is read and changed in one atomic step no
//! matter how many replicas ask at once, and every replica sees Redis's clock (its TTLs), not
//! its own. Windows are fixed and start at their first request: `limit` requests are admitted,
//! then none until the key expires.
//!
//! Every method answers `None` when Redis cannot be asked (down, slow, refused): the caller
//! then holds the client to its own in-process limiter, so a Redis outage is neither a hard
//! outage nor unlimited. The switch is logged once each way; while Redis is away it is asked
//! again at most once per [`PROBE_INTERVAL`], so requests meanwhile do not wait on it.
//!
//! Architecture Invariant: the URL (which may carry a password) is never logged; only its host
//! and port are.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};

/// How often an unreachable Redis is asked again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one Redis operation may take before the request goes on under the local limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

const MINUTE_MS: u64 = 60_000;
/// A concurrency slot's lease: a replica that dies holding slots gives them back this late.
const SLOT_LEASE_MS: u64 = 10 * MINUTE_MS;

/// `INCR` + `PEXPIRE` on the first hit of a window: -1 when admitted, else ms until it ends.
const WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n <= tonumber(ARGV[1]) then return -1 end
local t = redis.call('PTTL', KEYS[1])
if t < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); t = tonumber(ARGV[2]) end
return t
";

/// Tokens used in the current window: -1 while under the budget, else ms until it refills.
const TOKENS_ADMIT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used < tonumber(ARGV[1]) then return -1 end
local t = redis.call('PTTL', KEYS[1])
if t < 0 then t = 0 end
return t
";

/// Adds a response's tokens. What goes over the budget is debt: the window is stretched by the
/// time the budget takes to pay it back (as the in-process bucket does).
const TOKENS_CHARGE: &str = r"
local limit = tonumber(ARGV[1])
local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local total = redis.call('INCRBY', KEYS[1], ARGV[2])
local t = redis.call('PTTL', KEYS[1])
if t < 0 then t = tonumber(ARGV[3]) end
local over = total - math.max(prev, limit)
if over > 0 then t = t + math.floor(over * tonumber(ARGV[3]) / limit) end
redis.call('PEXPIRE', KEYS[1], t)
return total
";

/// Takes a concurrency slot (1) or refuses (0); the key is a lease, renewed by each taker.
const SLOT_TAKE: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]); return 0 end
return 1
";

const SLOT_GIVE_BACK: &str = r"
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
";

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The URL itself is not repeated: it may carry a password.
    #[error("not a Redis URL (redis://[:password@]host[:port][/db]): {0}")]
    InvalidUrl(String),
}

/// The shared limits of every replica, in one Redis.
pub struct SharedLimits {
    client: redis::Client,
    /// `host:port` of the Redis, for logs.
    shown: String,
    timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
    /// Redis answered the last time it was asked.
    up: AtomicBool,
    /// When (ms since `epoch`) a Redis that is down may be asked again. The request that moves
    /// it on asks; the others go on locally meanwhile (and a cancelled ask only costs one
    /// interval).
    next_probe_ms: AtomicU64,
    epoch: Instant,
    window: Script,
    tokens_admit: Script,
    tokens_charge: Script,
    slot_take: Script,
    slot_give_back: Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("redis", &self.shown)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl SharedLimits {
    /// Checks the URL; connects only when first asked (Redis may start after the edge).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, LimitsError> {
        let client =
            redis::Client::open(url).map_err(|e| LimitsError::InvalidUrl(e.to_string()))?;
        let shown = match &client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            redis::ConnectionAddr::Unix(path) => path.display().to_string(),
            other => format!("{other}"),
        };
        Ok(Self {
            client,
            shown,
            timeout,
            conn: Mutex::new(None),
            up: AtomicBool::new(true),
            next_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            window: Script::new(WINDOW),
            tokens_admit: Script::new(TOKENS_ADMIT),
            tokens_charge: Script::new(TOKENS_CHARGE),
            slot_take: Script::new(SLOT_TAKE),
            slot_give_back: Script::new(SLOT_GIVE_BACK),
        })
    }

    /// Where the limits live (`host:port`), for logs and the admin API.
    pub fn redis_addr(&self) -> &str {
        &self.shown
    }

    /// Redis answered the last time: the limits are shared right now.
    pub fn is_shared(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// One hit of a per-minute window (`kind` names the limit, `name` whose it is): admitted, or
    /// refused with the time until the window ends.
    pub async fn hit(
        &self,
        kind: &str,
        name: &str,
        per_minute: u32,
    ) -> Option<Result<(), Duration>> {
        let ms: i64 = self
            .run(
                &self.window,
                kind,
                name,
                &[u64::from(per_minute), MINUTE_MS],
            )
            .await?;
        Some(refusal_after(ms))
    }

    /// Whether a client under a tokens-per-minute budget may start a request.
    pub async fn tokens_admit(&self, name: &str, per_minute: u32) -> Option<Result<(), Duration>> {
        let ms: i64 = self
            .run(&self.tokens_admit, "tpm", name, &[u64::from(per_minute)])
            .await?;
        Some(refusal_after(ms))
    }

    /// Charges a finished response's tokens; `None` when they could not be (charge locally).
    pub async fn tokens_charge(&self, name: &str, per_minute: u32, tokens: u64) -> Option<()> {
        let _total: i64 = self
            .run(
                &self.tokens_charge,
                "tpm",
                name,
                &[u64::from(per_minute), tokens, MINUTE_MS],
            )
            .await?;
        Some(())
    }

    /// Takes one of `max` concurrency slots: `Some(true)` taken, `Some(false)` all in use.
    pub async fn slot_take(&self, name: &str, max: u32) -> Option<bool> {
        let taken: i64 = self
            .run(
                &self.slot_take,
                "concurrency",
                name,
                &[u64::from(max), SLOT_LEASE_MS],
            )
            .await?;
        Some(taken == 1)
    }

    /// Gives a slot taken with [`slot_take`](Self::slot_take) back.
    pub async fn slot_give_back(&self, name: &str) {
        let _: Option<i64> = self
            .run(&self.slot_give_back, "concurrency", name, &[])
            .await;
    }

    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        kind: &str,
        name: &str,
        args: &[u64],
    ) -> Option<T> {
        let mut conn = self.connection()?;
        let mut invocation = script.prepare_invoke();
        invocation.key(format!("aibox:{kind}:{name}"));
        for a in args {
            invocation.arg(*a);
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => {
                self.answered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed(&format!("no answer within {} ms", self.timeout.as_millis()));
                None
            }
        }
    }

    /// A connection to ask with, or `None` when Redis is down and it is not yet time to ask.
    fn connection(&self) -> Option<ConnectionManager> {
        if !self.up.load(Ordering::Acquire) {
            let now = self.epoch.elapsed().as_millis() as u64;
            let due = self.next_probe_ms.load(Ordering::Acquire);
            let next = now + PROBE_INTERVAL.as_millis() as u64;
            if now < due
                || self
                    .next_probe_ms
                    .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return None;
            }
        }
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            // One attempt per request: the local fallback, not the client's retries, covers
            // an outage.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    drop(slot);
                    self.failed(&e.to_string());
                    return None;
                }
            }
        }
        slot.clone()
    }

    fn answered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                redis = %self.shown,
                "shared limits: Redis answers again; request, token, concurrency and MCP limits are shared across replicas again"
            );
        }
    }

    fn failed(&self, error: &str) {
        let next = self.epoch.elapsed() + PROBE_INTERVAL;
        self.next_probe_ms
            .store(next.as_millis() as u64, Ordering::Release);
        // A fresh connection at the next probe rather than the old one's reconnect loop.
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(
                redis = %self.shown,
                error,
                "shared limits: Redis is unreachable; each replica holds clients to its own in-process limits (not shared) until Redis answers again"
            );
        }
    }
}

/// A script's answer: -1 admitted, else the milliseconds to wait (at least one).
fn refusal_after(ms: i64) -> Result<(), Duration> {
    if ms < 0 {
        Ok(())
    } else {
        Err(Duration::from_millis(ms.max(1) as u64))
    }
}
