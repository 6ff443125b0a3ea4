//! Model pulls run in the background: the form starts one and returns at once, and the models
//! page shows its progress (refreshing itself) until the edge's stream says success or error.
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::backend::{Actor, ControllerClient, EdgeClient};

#[derive(Debug, Clone)]
pub struct PullJob {
    pub id: u64,
    pub model: String,
    pub user: String,
    pub request_id: String,
    pub status: String,
    pub completed: u64,
    pub total: u64,
    pub done: bool,
    pub error: Option<String>,
    /// Set when the audit event for this pull could not be written.
    pub audit_error: Option<String>,
}

impl PullJob {
    pub fn percent(&self) -> Option<u64> {
        (self.total > 0).then(|| (self.completed.min(self.total) * 100) / self.total)
    }
}

/// The most recent pulls (kept in memory; at most `KEEP`).
#[derive(Default)]
pub struct PullJobs {
    jobs: Mutex<Vec<PullJob>>,
    next_id: std::sync::atomic::AtomicU64,
}

const KEEP: usize = 10;

impl PullJobs {
    pub fn list(&self) -> Vec<PullJob> {
        let mut v = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        v.reverse();
        v
    }

    pub fn any_running(&self) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|j| !j.done)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut PullJob)) {
        if let Some(j) = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter_mut()
            .find(|j| j.id == id)
        {
            f(j);
        }
    }

    /// Start pulling `model` through the edge; returns the job id at once.
    pub fn start(
        self: &Arc<Self>,
        edge: EdgeClient,
        controller: ControllerClient,
        actor: Actor,
        model: String,
    ) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            jobs.push(PullJob {
                id,
                model: model.clone(),
                user: actor.user.clone(),
                request_id: actor.request_id.clone(),
                status: "starting".into(),
                completed: 0,
                total: 0,
                done: false,
                error: None,
                audit_error: None,
            });
            // Forget the oldest finished pulls.
            while jobs.len() > KEEP {
                match jobs.iter().position(|j| j.done) {
                    Some(i) => {
                        jobs.remove(i);
                    }
                    None => break,
                }
            }
        }
        let jobs = Arc::clone(self);
        #[allow(
            clippy::disallowed_methods,
            reason = "a pull outlives the request that starts it; its job entry tracks it"
        )]
        tokio::spawn(async move {
            let outcome = run_pull(&jobs, id, &edge, &actor, &model).await;
            let (ok, detail) = match &outcome {
                Ok(()) => (
                    true,
                    json!({"model": model, "via": "edge", "user": actor.user}),
                ),
                Err(e) => (
                    false,
                    json!({"model": model, "via": "edge", "user": actor.user, "error": e}),
                ),
            };
            let audit = controller
                .record(&actor, "model_pull", &format!("model:{model}"), ok, detail)
                .await;
            jobs.update(id, |j| {
                j.done = true;
                match outcome {
                    Ok(()) => j.status = "success".into(),
                    Err(e) => j.error = Some(e),
                }
                if let Err(e) = audit {
                    j.audit_error = Some(e.to_string());
                }
            });
        });
        id
    }
}

async fn run_pull(
    jobs: &PullJobs,
    id: u64,
    edge: &EdgeClient,
    actor: &Actor,
    model: &str,
) -> Result<(), String> {
    let mut lines = edge
        .pull_model(actor, model)
        .await
        .map_err(|e| e.to_string())?;
    let mut succeeded = false;
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| e.to_string())?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        // Errors can arrive inside a 200 stream.
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Err(err.to_string());
        }
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if status == "success" {
            succeeded = true;
        }
        let total = v.get("total").and_then(Value::as_u64);
        let completed = v.get("completed").and_then(Value::as_u64);
        jobs.update(id, |j| {
            if !status.is_empty() {
                j.status = status;
            }
            if let Some(t) = total {
                j.total = t;
                j.completed = completed.unwrap_or(0);
            }
        });
    }
    if succeeded {
        Ok(())
    } else {
        Err("the pull stream ended before the edge reported success".into())
    }
}
