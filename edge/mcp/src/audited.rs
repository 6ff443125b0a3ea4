//! The audit rule for admin actions taken at the edge, the same as the controller's
//! (docs/audit/SCHEMA.md, "Intent and outcome"): an intent event is recorded (and fsynced by the
//! controller) before the action starts, and the outcome event is always written afterwards by a
//! spawned task, even when the client hangs up and the request's future is dropped.
//!
//! ```ignore
//! let intent = audited::begin(sink, record).await?;   // refused → do nothing (fail closed)
//! let result = act().await;
//! intent.finish(result.is_ok(), json!({...}));         // or drop it: "interrupted" is recorded
//! ```
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::task::TaskTracker;

use crate::{AuditRecord, AuditSink};
pub use aibox_wire::audit::{INTENT, INTENT_SEQ};

/// Written as the outcome when an intent is dropped without [`OpenIntent::finish`].
pub const INTERRUPTED: &str =
    "interrupted: the request ended before the action finished (the client disconnected)";

/// The intent was not recorded, so the action must not be taken (fail closed). The message is
/// the sink's description of why.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    NotRecorded(String),
}

/// Outcome writes still in flight. Intents are opened by the edge's request handlers as well as
/// the hub's admin API, so the tracker belongs to the process; `McpHub::shutdown` waits for it.
static OUTCOMES: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Longest wait for outcome writes at shutdown (the edge's sink times out after 5 s itself).
const OUTCOME_GRACE: Duration = Duration::from_secs(5);

/// Waits (bounded) until every outcome spawned so far is written or has failed.
pub async fn outcomes_written() {
    OUTCOMES.close();
    if tokio::time::timeout(OUTCOME_GRACE, OUTCOMES.wait())
        .await
        .is_err()
    {
        tracing::error!(
            pending = OUTCOMES.len(),
            "shutting down with admin-action outcomes not yet audited"
        );
    }
    // Reopened: a process may start another hub (the tests do).
    OUTCOMES.reopen();
}

/// A recorded intent whose outcome is still to be written.
pub struct OpenIntent {
    sink: Arc<dyn AuditSink>,
    record: AuditRecord,
    seq: u64,
    finished: bool,
}

/// Records `record` as an intent (`result: intent`). Err: it was not recorded; do not act.
pub async fn begin(
    sink: Arc<dyn AuditSink>,
    mut record: AuditRecord,
) -> Result<OpenIntent, AuditError> {
    record.result = Some(INTENT.into());
    let seq = sink
        .record(record.clone())
        .await
        .map_err(AuditError::NotRecorded)?;
    Ok(OpenIntent {
        sink,
        record,
        seq,
        finished: false,
    })
}

impl OpenIntent {
    /// Writes the outcome in a tracked task (nothing the caller does later can cancel it);
    /// `metadata` (an object) is added to the intent's.
    pub fn finish(mut self, ok: bool, metadata: Value) -> tokio::task::JoinHandle<()> {
        self.finished = true;
        self.spawn_outcome(ok, metadata)
    }

    fn spawn_outcome(&self, ok: bool, metadata: Value) -> tokio::task::JoinHandle<()> {
        let mut record = self.record.clone();
        let mut meta: Map<String, Value> = record.metadata.take().unwrap_or_default();
        if let Value::Object(extra) = metadata {
            meta.extend(extra);
        }
        meta.insert(INTENT_SEQ.into(), json!(self.seq));
        record.metadata = Some(meta);
        record.result = Some(if ok { "ok" } else { "error" }.into());
        let sink = self.sink.clone();
        OUTCOMES.spawn(async move {
            if let Err(e) = sink.record(record.clone()).await {
                tracing::error!(action = %record.action, resource = %record.resource, correlation_id = ?record.correlation_id, error = %e, "the outcome of an admin action could not be audited");
            }
        })
    }
}

impl Drop for OpenIntent {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.spawn_outcome(false, json!({ "error": INTERRUPTED }));
        } else {
            tracing::error!(action = %self.record.action, intent_seq = self.seq, "an admin action ended outside the runtime; its outcome is not audited");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Memory(Mutex<Vec<AuditRecord>>);

    #[async_trait::async_trait]
    impl AuditSink for Memory {
        async fn record(&self, record: AuditRecord) -> Result<u64, String> {
            let mut all = self.0.lock().unwrap();
            all.push(record);
            Ok(all.len() as u64)
        }
    }

    fn record() -> AuditRecord {
        AuditRecord {
            action: "model_delete".into(),
            resource: "model:m".into(),
            metadata: Some(Map::new()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn finish_and_drop_both_write_an_outcome() {
        let sink = Arc::new(Memory::default());
        let intent = begin(sink.clone(), record()).await.unwrap();
        intent.finish(true, json!({"done": 1})).await.unwrap();
        let dropped = begin(sink.clone(), record()).await.unwrap();
        drop(dropped);
        for _ in 0..100 {
            if sink.0.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let all = sink.0.lock().unwrap();
        let results: Vec<_> = all.iter().map(|r| r.result.clone().unwrap()).collect();
        assert_eq!(results, ["intent", "ok", "intent", "error"]);
        assert_eq!(all[1].metadata.as_ref().unwrap()[INTENT_SEQ], json!(1));
        assert_eq!(all[3].metadata.as_ref().unwrap()[INTENT_SEQ], json!(3));
        assert_eq!(
            all[3].metadata.as_ref().unwrap()["error"],
            json!(INTERRUPTED)
        );
    }
}
