//! The one rule for every action the controller takes (docs/audit/SCHEMA.md, "Intent and
//! outcome"): an intent event is on disk (fsynced) before the action starts, and the action and its
//! outcome event run in a task of their own, so a caller that hangs up cancels neither. An action
//! whose outcome was never written (the controller stopped mid-action, e.g. it restarted itself) is
//! closed by [`close_open_intents`] when the controller starts again.
//!
//! A new module acts like this:
//!
//! ```ignore
//! let intent = caller.event("tool_start", &name, audit::INTENT, metadata);
//! let value = audited::run(state.audit.clone(), intent, async move {
//!     let r = do_it().await;
//!     let outcome = match &r { Ok(_) => Outcome::ok(meta), Err(e) => Outcome::error(e, meta) };
//!     (r, outcome)
//! }).await.map_err(ApiError::from)?;
//! ```
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::audit::{AuditError, AuditEvent, AuditLog, NewEvent, INTENT, INTENT_SEQ};
use crate::engine::Engine;

/// How the action ended: `ok` or not, and the details for the outcome event's metadata.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: bool,
    pub metadata: Map<String, Value>,
}

impl Outcome {
    pub fn ok(metadata: Map<String, Value>) -> Outcome {
        Outcome { ok: true, metadata }
    }

    /// A failure; `error` goes to `metadata.error`.
    pub fn error(error: impl std::fmt::Display, mut metadata: Map<String, Value>) -> Outcome {
        metadata.insert("error".into(), Value::String(error.to_string()));
        Outcome {
            ok: false,
            metadata,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditedError {
    /// The intent could not be written: nothing was done (fail closed).
    #[error("{0}")]
    Refused(AuditError),
    /// The action ran but its outcome event could not be written.
    #[error("{0}")]
    OutcomeLost(AuditError),
}

/// Appends one event off the async workers (the write fsyncs).
pub async fn append(audit: &Arc<AuditLog>, event: NewEvent) -> Result<AuditEvent, AuditError> {
    let audit = audit.clone();
    tokio::task::spawn_blocking(move || audit.append(event))
        .await
        .unwrap_or_else(|e| {
            Err(AuditError::Unavailable(format!(
                "audit writer panicked: {e}"
            )))
        })
}

/// The outcome event of `intent` (same action, resource, actor and correlation id; the intent's
/// `user` carried over), naming the intent's `seq`.
pub fn outcome_event(intent: &NewEvent, intent_seq: u64, outcome: Outcome) -> NewEvent {
    let mut metadata = outcome.metadata;
    if let Some(user) = intent.metadata.get("user") {
        metadata.entry("user").or_insert_with(|| user.clone());
    }
    metadata.insert(INTENT_SEQ.into(), json!(intent_seq));
    NewEvent {
        action: intent.action.clone(),
        resource: intent.resource.clone(),
        actor: intent.actor.clone(),
        result: if outcome.ok { "ok" } else { "error" }.into(),
        correlation_id: intent.correlation_id.clone(),
        metadata,
    }
}

/// Records `intent` (its `result` is set to `intent`), then runs `action` and records its outcome,
/// all in a spawned task: dropping the returned future (the client hung up) stops neither.
pub async fn run<T, F>(
    audit: Arc<AuditLog>,
    mut intent: NewEvent,
    action: F,
) -> Result<T, AuditedError>
where
    T: Send + 'static,
    F: Future<Output = (T, Outcome)> + Send + 'static,
{
    intent.result = INTENT.into();
    let task = tokio::spawn(async move {
        let recorded = append(&audit, intent.clone())
            .await
            .map_err(AuditedError::Refused)?;
        let (value, outcome) = action.await;
        append(&audit, outcome_event(&intent, recorded.seq, outcome))
            .await
            .map_err(AuditedError::OutcomeLost)?;
        Ok(value)
    });
    task.await.unwrap_or_else(|e| {
        Err(AuditedError::OutcomeLost(AuditError::Unavailable(format!(
            "the action's task failed: {e}"
        ))))
    })
}

/// The controller's own actions; only these intents are closed at start (the edge and the
/// dashboard close their own through `POST /audit`, which refuses these names).
pub const OWN_ACTIONS: &[&str] = &["start", "stop", "restart", "pull", "up"];

const RECOVERED_NOTE: &str = "outcome recorded when the controller started again: it stopped before this action finished (its own restart or stop, or a crash)";

/// At start: writes an outcome for every open intent of the controller's own actions, judged by
/// the service's state now. A restart of the controller itself therefore ends `ok` once it is back.
pub async fn close_open_intents(
    audit: &Arc<AuditLog>,
    engine: &Engine,
) -> Result<usize, AuditError> {
    let open = {
        let audit = audit.clone();
        tokio::task::spawn_blocking(move || audit.open_intents())
            .await
            .unwrap_or_else(|e| Err(AuditError::Unavailable(e.to_string())))?
    };
    let me = std::env::var("HOSTNAME").unwrap_or_default();
    let mut closed = 0;
    for event in open
        .into_iter()
        .filter(|e| OWN_ACTIONS.contains(&e.action.as_str()))
    {
        let mut metadata = Map::new();
        metadata.insert("recovered".into(), json!(true));
        metadata.insert("note".into(), json!(RECOVERED_NOTE));
        let observed =
            tokio::time::timeout(Duration::from_secs(10), engine.observe(&event.resource)).await;
        let outcome = match observed {
            Ok(Ok((state, ids))) => {
                // Docker sets HOSTNAME to the container id's first 12 characters.
                let is_me = me.len() >= 12 && ids.iter().any(|id| id.starts_with(&me));
                metadata.insert("state".into(), json!(state));
                let running = state == "running";
                let done = match event.action.as_str() {
                    "start" | "restart" | "up" => running,
                    // Stopping itself worked if this is a new process of that container.
                    "stop" => !running || is_me,
                    _ => false,
                };
                if done {
                    Outcome::ok(metadata)
                } else if event.action == "pull" {
                    Outcome::error("the controller stopped during the pull", metadata)
                } else {
                    Outcome::error(format!("the service is {state}"), metadata)
                }
            }
            Ok(Err(e)) => Outcome::error(format!("outcome unknown: {e}"), metadata),
            Err(_) => Outcome::error("outcome unknown: Docker did not answer", metadata),
        };
        let intent = NewEvent {
            action: event.action.clone(),
            resource: event.resource.clone(),
            actor: event.actor.clone(),
            result: INTENT.into(),
            correlation_id: event.correlation_id.clone(),
            metadata: event.metadata.clone(),
        };
        let ok = outcome.ok;
        let stored = append(audit, outcome_event(&intent, event.seq, outcome)).await?;
        tracing::warn!(intent_seq = event.seq, seq = stored.seq, action = %event.action, resource = %event.resource, ok, "closed an action left open when the controller stopped");
        closed += 1;
    }
    Ok(closed)
}
