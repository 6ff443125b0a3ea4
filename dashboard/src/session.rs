//! Sign-in state without a server-side store: an HMAC-signed session cookie, CSRF tokens derived
//! from the session, and a lock-out delay after repeated failed sign-ins.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const SESSION_COOKIE: &str = "aibox_session";

/// What the session cookie carries (signed, not encrypted: nothing in it is secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random id: ties CSRF tokens to this session and lets sign-out revoke it.
    pub sid: String,
    pub user: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// Signs and checks session cookies and CSRF tokens with one key.
pub struct SessionKeys {
    key: Vec<u8>,
    /// Sessions signed out before they expired: sid -> exp.
    revoked: Mutex<HashMap<String, i64>>,
}

impl SessionKeys {
    pub fn new(key: Vec<u8>) -> Self {
        Self {
            key,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
    fn mac(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        // new_from_slice accepts keys of any length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac accepts any key length");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    pub fn issue(&self, user: &str, ttl_secs: i64, now: i64) -> (Session, String) {
        let session = Session {
            sid: hex::encode(rand::random::<[u8; 16]>()),
            user: user.to_string(),
            exp: now + ttl_secs,
        };
        let cookie = self.encode(&session);
        (session, cookie)
    }

    #[allow(
        clippy::expect_used,
        reason = "a session is two strings and a number: serialising cannot fail"
    )]
    pub fn encode(&self, session: &Session) -> String {
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).expect("session serializes"));
        let sig = URL_SAFE_NO_PAD.encode(self.mac("session", payload.as_bytes()));
        format!("{payload}.{sig}")
    }

    /// The session in a cookie value, if its signature is right and it has not expired or been
    /// signed out.
    pub fn verify(&self, cookie: &str, now: i64) -> Option<Session> {
        let (payload, sig) = cookie.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let expected = self.mac("session", payload.as_bytes());
        if !bool::from(expected.as_slice().ct_eq(sig.as_slice())) {
            return None;
        }
        let session: Session =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if session.exp <= now {
            return None;
        }
        if self
            .revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&session.sid)
        {
            return None;
        }
        Some(session)
    }

    pub fn revoke(&self, session: &Session, now: i64) {
        let mut revoked = self
            .revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(session.sid.clone(), session.exp);
    }

    /// The CSRF token for a session id (or for a Tailscale identity): a keyed hash, so a page
    /// from another site cannot know it, and it is checked against the session of the request.
    pub fn csrf_token(&self, binding: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", binding.as_bytes()))
    }

    pub fn csrf_ok(&self, binding: &str, presented: &str) -> bool {
        let expected = self.csrf_token(binding);
        bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Slows down password guessing: after `free_attempts` consecutive failures, sign-in is refused
/// without even checking the password for a delay that doubles with each further failure.
///
/// The count is global, not per address: behind the edge every request comes from the same peer,
/// and forwarded-for headers can be forged. A locked dashboard is better than a guessed one.
pub struct LoginThrottle {
    free_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    failures: u32,
    locked_until: Option<Instant>,
}

impl LoginThrottle {
    pub fn new(free_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self {
            free_attempts,
            base_delay,
            max_delay,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    /// `Err(wait)` while sign-in is locked.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.locked_until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, now: Instant) -> Option<Duration> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.failures = state.failures.saturating_add(1);
        if state.failures < self.free_attempts {
            return None;
        }
        let doublings = (state.failures - self.free_attempts).min(16);
        let delay = self
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        state.locked_until = Some(now + delay);
        Some(delay)
    }

    pub fn succeeded(&self) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ThrottleState::default();
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(30), Duration::from_secs(15 * 60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trips_and_rejects_tampering() {
        let keys = SessionKeys::new(b"k".repeat(32));
        let (s, cookie) = keys.issue("admin", 60, 1000);
        assert_eq!(keys.verify(&cookie, 1001), Some(s.clone()));
        assert_eq!(keys.verify(&cookie, 1060), None, "expired");
        // Change the user in the payload but keep the signature.
        let (_, sig) = cookie.split_once('.').unwrap();
        let forged = Session {
            user: "root".into(),
            ..s.clone()
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(keys.verify(&format!("{payload}.{sig}"), 1001), None);
        // Another key does not accept it.
        assert_eq!(
            SessionKeys::new(b"x".repeat(32)).verify(&cookie, 1001),
            None
        );
        assert_eq!(keys.verify("garbage", 1001), None);
        keys.revoke(&s, 1002);
        assert_eq!(keys.verify(&cookie, 1003), None, "signed out");
    }

    #[test]
    fn csrf_token_is_bound_to_the_session() {
        let keys = SessionKeys::new(b"k".repeat(32));
        let t = keys.csrf_token("sid-a");
        assert!(keys.csrf_ok("sid-a", &t));
        assert!(!keys.csrf_ok("sid-b", &t));
        assert!(!keys.csrf_ok("sid-a", ""));
    }

    #[test]
    fn throttle_locks_after_free_attempts_and_doubles() {
        let t = LoginThrottle::new(3, Duration::from_secs(10), Duration::from_secs(25));
        let now = Instant::now();
        assert_eq!(t.failed(now), None);
        assert_eq!(t.failed(now), None);
        assert_eq!(t.failed(now), Some(Duration::from_secs(10)));
        assert!(t.check(now).is_err());
        assert!(t.check(now + Duration::from_secs(11)).is_ok());
        assert_eq!(t.failed(now), Some(Duration::from_secs(20)));
        assert_eq!(t.failed(now), Some(Duration::from_secs(25)), "capped");
        t.succeeded();
        assert!(t.check(now).is_ok());
        assert_eq!(t.failed(now), None);
    }
}
