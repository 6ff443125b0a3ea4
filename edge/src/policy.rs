//! What one client may do, and the limiters that hold it to that: the models it may call
//! (globs over `provider/model`), the MCP servers it may use, requests per minute, tokens per
//! minute and concurrent requests.
//!
//! Tokens are known only after a response, so they are charged then and weigh on the client's
//! following requests: a client over its budget is refused until the budget has refilled.
//!
//! With `AIBOX_REDIS_URL` every limit is asked of the shared limits first (one window per
//! client across every replica; aibox-limits); the in-process limiters below are then the
//! fallback while Redis cannot answer. Without it they are the limits, as on one host. The
//! request path sees only `admit`, `charge` and the `Admission`, whichever holds the count.
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibox_limits::SharedLimits;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A client's policy, as configured. `None` lists mean "everything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Globs over `provider/model` (a bare glob without `/` matches the model of any provider).
    pub models: Option<Vec<String>>,
    /// Globs over MCP server names; each server's own allow/deny lists still apply.
    pub mcp_servers: Option<Vec<String>>,
    pub rpm: Option<NonZeroU32>,
    pub tpm: Option<NonZeroU32>,
    pub concurrency: Option<NonZeroU32>,
}

impl Policy {
    /// Every model and tool, no limits: today's behaviour for a zero-config run.
    pub fn open() -> Self {
        Self::default()
    }

    /// A policy under which the client can do nothing at all (keys are then required).
    pub fn allows_nothing(&self) -> bool {
        self.models.as_ref().is_some_and(Vec::is_empty)
            && self.mcp_servers.as_ref().is_some_and(Vec::is_empty)
    }

    /// `model` is the provider's own name for it; Ollama's implied `:latest` matches both ways.
    pub fn allows_model(&self, provider: &str, model: &str) -> bool {
        let Some(globs) = &self.models else {
            return true;
        };
        let bare = model.strip_suffix(":latest");
        globs.iter().any(|g| {
            let (gp, gm) = match g.split_once('/') {
                // `org/model` ids (vLLM) contain a slash too; the first segment is the provider.
                Some((p, m)) => (Some(p), m),
                None => (None, g.as_str()),
            };
            let provider_ok = gp.is_none_or(|p| glob_match(p, provider));
            let gm_bare = gm.strip_suffix(":latest");
            provider_ok
                && (glob_match(gm, model)
                    || bare.is_some_and(|b| glob_match(gm, b))
                    || gm_bare.is_some_and(|g| glob_match(g, model)))
        })
    }

    /// An alias (`[[models]]`) is judged by its own name, by the globs without a provider part
    /// (`fast`, `f*`, `*`); its targets are the operator's choice and are not checked.
    pub fn allows_alias(&self, alias: &str) -> bool {
        self.models.as_ref().is_none_or(|globs| {
            globs
                .iter()
                .any(|g| !g.contains('/') && glob_match(g, alias))
        })
    }

    pub fn allows_server(&self, server: &str) -> bool {
        self.mcp_servers
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| glob_match(g, server)))
    }
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// Why the gateway refused a request before any handler ran (`EdgeError::refusal` renders it in
/// the shape of the surface; a model the client may not use is refused by the handler instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or a key the edge does not know, while keys are required.
    Unauthenticated { key_presented: bool },
    /// A limit is reached; try again after the duration.
    Limited {
        limit: &'static str,
        retry_after: Duration,
    },
}

impl Refusal {
    /// Short kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated { .. } => "unauthenticated",
            Refusal::Limited { .. } => "rate_limited",
        }
    }
}

/// Whole seconds for `Retry-After`, never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Tokens per minute: a governor bucket plus the tokens it could not take yet (debt).
struct TokenBudget {
    bucket: DefaultDirectRateLimiter,
    burst: u32,
    per_token: Duration,
    debt: AtomicU64,
}

impl TokenBudget {
    fn new(tpm: NonZeroU32) -> Self {
        Self {
            bucket: RateLimiter::direct(Quota::per_minute(tpm)),
            burst: tpm.get(),
            per_token: Duration::from_secs(60) / tpm.get(),
            debt: AtomicU64::new(0),
        }
    }

    /// Pays what it can of the debt; refused while any is left.
    fn admit(&self) -> Result<(), Duration> {
        loop {
            let debt = self.debt.load(Ordering::Acquire);
            if debt == 0 {
                return Ok(());
            }
            let n = debt.min(u64::from(self.burst)) as u32;
            // Never zero (debt and burst are); nothing to pay if it were.
            let Some(n) = NonZeroU32::new(n) else {
                return Ok(());
            };
            match self.bucket.check_n(n) {
                Ok(Ok(())) => {
                    self.debt.fetch_sub(u64::from(n.get()), Ordering::AcqRel);
                }
                Ok(Err(not_until)) => {
                    let rest = (debt - u64::from(n.get())) as u32;
                    return Err(not_until.wait_time_from(DefaultClock::default().now())
                        + self.per_token * rest);
                }
                Err(_) => unreachable!("n is at most the burst"),
            }
        }
    }

    fn charge(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let taken = u32::try_from(tokens)
            .ok()
            .filter(|n| *n <= self.burst)
            .and_then(NonZeroU32::new)
            .is_some_and(|n| matches!(self.bucket.check_n(n), Ok(Ok(()))));
        if !taken {
            self.debt.fetch_add(tokens, Ordering::AcqRel);
        }
    }
}

/// Requests and tokens per minute over the last day, for the Keys page.
pub struct Usage {
    minutes: Mutex<Vec<(u64, u64, u64)>>,
}

const DAY_MINUTES: usize = 24 * 60;

impl Default for Usage {
    fn default() -> Self {
        Self {
            minutes: Mutex::new(vec![(u64::MAX, 0, 0); DAY_MINUTES]),
        }
    }
}

fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

impl Usage {
    pub fn record(&self, requests: u64, tokens: u64) {
        let m = minute_now();
        let mut ring = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut ring[(m % DAY_MINUTES as u64) as usize];
        if slot.0 != m {
            *slot = (m, 0, 0);
        }
        slot.1 += requests;
        slot.2 += tokens;
    }

    /// `(requests, tokens)` over the last `minutes` minutes.
    pub fn total(&self, minutes: u64) -> (u64, u64) {
        let now = minute_now();
        let ring = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .filter(|(m, _, _)| *m != u64::MAX && *m + minutes > now && *m <= now)
            .fold((0, 0), |(r, t), (_, rr, tt)| (r + rr, t + tt))
    }
}

/// One client's policy with its live limiters. Kept across reloads while the policy is the
/// same, so a file edit does not reset anyone's budget.
pub struct ClientState {
    pub name: String,
    pub policy: Policy,
    rpm: Option<DefaultDirectRateLimiter>,
    tpm: Option<TokenBudget>,
    in_flight: AtomicU32,
    pub usage: Arc<Usage>,
    /// The limits every replica shares (`AIBOX_REDIS_URL`); the ones above are then the fallback.
    shared: Option<Arc<SharedLimits>>,
}

impl ClientState {
    pub fn new(name: String, policy: Policy, usage: Arc<Usage>) -> Self {
        Self::with_shared(name, policy, usage, None)
    }

    pub fn with_shared(
        name: String,
        policy: Policy,
        usage: Arc<Usage>,
        shared: Option<Arc<SharedLimits>>,
    ) -> Self {
        Self {
            shared,
            rpm: policy
                .rpm
                .map(|n| RateLimiter::direct(Quota::per_minute(n))),
            tpm: policy.tpm.map(TokenBudget::new),
            in_flight: AtomicU32::new(0),
            name,
            policy,
            usage,
        }
    }

    /// Takes a slot for one request: tokens first (nothing consumed when over), then the
    /// concurrency slot, then the request cell.
    pub async fn admit(self: &Arc<Self>) -> Result<Admission, Refusal> {
        let limits = aibox_limits::Limits {
            rpm: self.policy.rpm.map(NonZeroU32::get),
            tpm: self.policy.tpm.map(NonZeroU32::get),
            concurrency: self.policy.concurrency.map(NonZeroU32::get),
        };
        if let Some(shared) = &self.shared {
            if limits != aibox_limits::Limits::default() {
                match shared.admit(&self.name, &limits).await {
                    Some(Ok(())) => {
                        return Ok(Admission {
                            state: self.clone(),
                            slot: if limits.concurrency.is_some() {
                                Slot::Shared
                            } else {
                                Slot::None
                            },
                        })
                    }
                    Some(Err((limit, retry_after))) => {
                        return Err(Refusal::Limited { limit, retry_after })
                    }
                    // Redis cannot answer: this replica's own limiters hold the client.
                    None => {}
                }
            }
        }
        self.admit_locally()
    }

    /// The in-process limiters: the limits on one host, the fallback of shared ones.
    fn admit_locally(self: &Arc<Self>) -> Result<Admission, Refusal> {
        let limited = |limit, retry_after| Refusal::Limited { limit, retry_after };
        if let Some(t) = &self.tpm {
            t.admit().map_err(|wait| limited("tpm", wait))?;
        }
        let admission = Admission {
            state: self.clone(),
            slot: if self.policy.concurrency.is_some() {
                Slot::Local
            } else {
                Slot::None
            },
        };
        if let Some(max) = self.policy.concurrency {
            if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max.get() {
                // Dropping the admission gives the slot back.
                return Err(limited("concurrency", Duration::from_secs(1)));
            }
        }
        if let Some(r) = &self.rpm {
            r.check()
                .map_err(|nu| limited("rpm", nu.wait_time_from(DefaultClock::default().now())))?;
        }
        Ok(admission)
    }

    /// Tokens of a finished response, charged against the following requests.
    pub async fn charge(&self, tokens: u64) {
        let Some(t) = &self.tpm else { return };
        if let (Some(s), Some(tpm)) = (&self.shared, self.policy.tpm) {
            if tokens == 0
                || s.tokens_charge(&self.name, tpm.get(), tokens)
                    .await
                    .is_some()
            {
                return;
            }
        }
        t.charge(tokens);
    }
}

impl aibox_mcp::ServerGrant for ClientState {
    fn allows_server(&self, server: &str) -> bool {
        self.policy.allows_server(server)
    }
}

/// Held for the life of one request; gives the concurrency slot back when dropped.
pub struct Admission {
    state: Arc<ClientState>,
    slot: Slot,
}

/// Where an admission's concurrency slot was taken, so it goes back to the same place.
enum Slot {
    None,
    Local,
    Shared,
}

impl Drop for Admission {
    fn drop(&mut self) {
        match self.slot {
            Slot::None => {}
            Slot::Local => {
                self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            Slot::Shared => {
                // Drop cannot wait; the give-back runs on the request's runtime. Without one (a
                // runtime shutting down) the slot's lease expires it instead.
                if let (Ok(rt), Some(shared)) = (
                    tokio::runtime::Handle::try_current(),
                    self.state.shared.clone(),
                ) {
                    let name = self.state.name.clone();
                    rt.spawn(async move { shared.slot_give_back(&name).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    #[test]
    fn globs_match_as_in_a_shell() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("llama3*", "llama3.2:1b"));
        assert!(glob_match("qwen?.5", "qwen2.5"));
        assert!(!glob_match("llama3*", "qwen2.5"));
        assert!(glob_match("*:7b", "mistral:7b"));
        assert!(!glob_match("a*b", "acbx"));
    }

    #[test]
    fn model_globs_see_provider_and_latest() {
        let p = Policy {
            models: Some(vec!["ollama/llama3*".into(), "gpt-4o".into()]),
            ..Policy::default()
        };
        assert!(p.allows_model("ollama", "llama3.2:latest"));
        assert!(!p.allows_model("vllm", "llama3.2"));
        assert!(p.allows_model("openai", "gpt-4o"));
        assert!(!p.allows_model("ollama", "qwen2.5:0.5b"));
        let exact = Policy {
            models: Some(vec!["ollama/qwen2.5".into()]),
            ..Policy::default()
        };
        assert!(exact.allows_model("ollama", "qwen2.5:latest"));
        assert!(Policy::open().allows_model("x", "y"));
    }

    #[test]
    fn nothing_means_both_lists_empty() {
        let p = Policy {
            models: Some(vec![]),
            mcp_servers: Some(vec![]),
            ..Policy::default()
        };
        assert!(p.allows_nothing());
        assert!(!Policy::open().allows_nothing());
    }

    #[tokio::test]
    async fn concurrency_slots_come_back_on_drop() {
        let s = Arc::new(ClientState::new(
            "c".into(),
            Policy {
                concurrency: nz(1),
                ..Policy::default()
            },
            Arc::default(),
        ));
        let first = s.admit().await.unwrap();
        assert!(matches!(
            s.admit().await,
            Err(Refusal::Limited {
                limit: "concurrency",
                ..
            })
        ));
        drop(first);
        assert!(s.admit().await.is_ok());
    }

    #[tokio::test]
    async fn rpm_refuses_with_a_wait() {
        let s = Arc::new(ClientState::new(
            "c".into(),
            Policy {
                rpm: nz(2),
                ..Policy::default()
            },
            Arc::default(),
        ));
        assert!(s.admit().await.is_ok());
        assert!(s.admit().await.is_ok());
        match s.admit().await {
            Err(Refusal::Limited { limit, retry_after }) => {
                assert_eq!(limit, "rpm");
                assert!(retry_after > Duration::from_secs(20), "{retry_after:?}");
            }
            _ => panic!("third request in a minute must be refused"),
        }
    }

    #[tokio::test]
    async fn tokens_are_charged_against_the_next_request() {
        let s = Arc::new(ClientState::new(
            "c".into(),
            Policy {
                tpm: nz(100),
                ..Policy::default()
            },
            Arc::default(),
        ));
        assert!(s.admit().await.is_ok());
        s.charge(60).await;
        assert!(s.admit().await.is_ok(), "60 of 100 used");
        s.charge(250).await;
        match s.admit().await {
            Err(Refusal::Limited { limit, retry_after }) => {
                assert_eq!(limit, "tpm");
                assert!(retry_after >= Duration::from_secs(60), "{retry_after:?}");
            }
            _ => panic!("over the token budget must be refused"),
        }
    }

    #[test]
    fn usage_adds_up_by_window() {
        let u = Usage::default();
        u.record(1, 10);
        u.record(1, 5);
        assert_eq!(u.total(60), (2, 15));
        assert_eq!(u.total(DAY_MINUTES as u64), (2, 15));
    }
}
