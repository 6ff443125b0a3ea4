//! The controller's audit log as the other processes see it (docs/audit/SCHEMA.md).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `result` of an intent event: written (fsynced) before the action starts.
pub const INTENT: &str = "intent";
/// Metadata key of an outcome event: the `seq` of the intent it closes.
pub const INTENT_SEQ: &str = "intent_seq";

/// One stored event. Field order here is the canonical order on disk; the controller hashes this
/// type's compact serialization, so it must not change shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub seq: u64,
    pub ts: String,
    pub action: String,
    pub resource: String,
    pub actor: String,
    /// `ok`, `error`, or `intent` (see [`INTENT`]).
    pub result: String,
    pub correlation_id: String,
    /// serde_json's map keeps keys sorted, which makes the canonical form deterministic.
    pub metadata: Map<String, Value>,
    pub prev_hash: String,
}

impl AuditEvent {
    pub fn is_intent(&self) -> bool {
        self.result == INTENT
    }

    /// For an outcome event, the `seq` of the intent it closes.
    pub fn intent_seq(&self) -> Option<u64> {
        self.metadata.get(INTENT_SEQ).and_then(Value::as_u64)
    }
}

/// `GET /audit` (format=json).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditEventList {
    pub events: Vec<AuditEvent>,
    pub count: usize,
}

/// `POST /audit`: an action another component records. `actor` defaults to `X-Actor`,
/// `correlation_id` to `X-Request-ID`, `result` to `ok`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub action: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// The newest event the controller has written: `GET /audit/head`, and `audit` in `/health`.
/// Kept in a second file beside the log; a log that ends before it was cut short.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// 0 for an empty log.
    pub seq: u64,
    /// HMAC of the event `seq` (64 hex digits); the genesis hash for an empty log.
    pub hash: String,
}

impl AuditHead {
    /// `SEQ:HASH`, as `controller audit verify --expect-head` takes it.
    pub fn to_arg(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }

    pub fn parse_arg(s: &str) -> Option<AuditHead> {
        let (seq, hash) = s.trim().split_once(':')?;
        let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        Some(AuditHead {
            seq: seq.parse().ok()?,
            hash: ok.then(|| hash.to_ascii_lowercase())?,
        })
    }
}

/// `GET /audit/head`: the anchor, and what the last self-check found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditHeadReport {
    pub head: AuditHead,
    /// `None` until the first self-check ran; then whether the log matched the anchor.
    pub check: Option<AuditCheck>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditCheck {
    pub ok: bool,
    /// When the check ran (RFC 3339).
    pub at: String,
    /// Why it failed: the log is shorter than the anchor, its last event was edited, ...
    #[serde(default)]
    pub alarm: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_arg_round_trips() {
        let h = AuditHead {
            seq: 7,
            hash: "ab".repeat(32),
        };
        assert_eq!(AuditHead::parse_arg(&h.to_arg()), Some(h));
        assert_eq!(AuditHead::parse_arg("7"), None);
        assert_eq!(AuditHead::parse_arg("x:ab"), None);
    }
}
