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

/// One request's admission, in one round trip: the token budget (nothing taken when over), then a
/// concurrency slot (a lease, renewed by each taker), then the request window; a refusal later in
/// the line gives back what was taken before it. A limit of 0 is "not set". Answers
/// `{0, 0}` admitted, or `{1 tpm | 2 concurrency | 3 rpm, ms to wait}`.
const ADMIT: &str = r"
local tpm, conc, rpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if used >= tpm then
    local t = redis.call('PTTL', KEYS[1])
    if t < 0 then t = 0 end
    return {1, t}
  end
end
if conc > 0 then
  local n = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  if n > conc then
    redis.call('DECR', KEYS[2])
    return {2, 1000}
  end
end
if rpm > 0 then
  local n = redis.call('INCR', KEYS[3])
  if n == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
  if n > rpm then
    if conc > 0 then redis.call('DECR', KEYS[2]) end
    local t = redis.call('PTTL', KEYS[3])
    if t < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[4]); t = tonumber(ARGV[4]) end
    return {3, t}
  end
end
return {0, 0}
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
    admit: Script,
    tokens_charge: Script,
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
            admit: Script::new(ADMIT),
            tokens_charge: Script::new(TOKENS_CHARGE),
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
                &[key(kind, name)],
                &[u64::from(per_minute), MINUTE_MS],
            )
            .await?;
        Some(refusal_after(ms))
    }

    /// Admits one request of `name` under the limits that are set, in one round trip: `Ok`
    /// (a concurrency slot is then held if `concurrency` is set: give it back with
    /// [`slot_give_back`](Self::slot_give_back)), or which limit refused and for how long.
    pub async fn admit(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Option<Result<(), (&'static str, Duration)>> {
        let keys = [key("tpm", name), key("concurrency", name), key("rpm", name)];
        let args = [
            limits.tpm.unwrap_or(0).into(),
            limits.concurrency.unwrap_or(0).into(),
            limits.rpm.unwrap_or(0).into(),
            MINUTE_MS,
            SLOT_LEASE_MS,
        ];
        let (which, ms): (i64, i64) = self.run(&self.admit, &keys, &args).await?;
        let wait = Duration::from_millis(ms.max(1) as u64);
        Some(match which {
            0 => Ok(()),
            1 => Err(("tpm", wait)),
            2 => Err(("concurrency", wait)),
            _ => Err(("rpm", wait)),
        })
    }

    /// Charges a finished response's tokens; `None` when they could not be (charge locally).
    pub async fn tokens_charge(&self, name: &str, per_minute: u32, tokens: u64) -> Option<()> {
        let _total: i64 = self
            .run(
                &self.tokens_charge,
                &[key("tpm", name)],
                &[u64::from(per_minute), tokens, MINUTE_MS],
            )
            .await?;
        Some(())
    }

    /// Gives back the concurrency slot an [`admit`](Self::admit) took.
    pub async fn slot_give_back(&self, name: &str) {
        let _: Option<i64> = self
            .run(&self.slot_give_back, &[key("concurrency", name)], &[])
            .await;
    }

    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[u64],
    ) -> Option<T> {
        let mut conn = self.connection()?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
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

/// The limits of one client, as `admit` takes them (`None`: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub concurrency: Option<u32>,
}

/// `aibox:{name}:kind`: the braces are a Redis Cluster hash tag, so one client's keys share a
/// slot and one script may touch them all.
fn key(kind: &str, name: &str) -> String {
    format!("aibox:{{{name}}}:{kind}")
}

/// A script's answer: -1 admitted, else the milliseconds to wait (at least one).
fn refusal_after(ms: i64) -> Result<(), Duration> {
    if ms < 0 {
        Ok(())
    } else {
        Err(Duration::from_millis(ms.max(1) as u64))
    }
}
