//! Audit: the controller's audit trail, newest first, filtered by action, resource, actor and
//! time, and exported as JSON.
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;

use super::{layout, unavailable, Nav, PageContext};
use crate::auth::Viewer;
use crate::backend::{
    normalize_time, Actor, AuditEvent, AuditHeadReport, AuditQuery, BackendError,
};
use crate::SharedState;

const ACTIONS: [&str; 12] = [
    "start",
    "stop",
    "restart",
    "pull",
    "logs",
    "model_pull",
    "model_delete",
    "mcp_add",
    "mcp_update",
    "mcp_remove",
    "mcp_enable",
    "mcp_disable",
];

/// The controller filters by `since`; `until` is applied here.
fn before_until(events: Vec<AuditEvent>, until: &str) -> Vec<AuditEvent> {
    let Some(until) = normalize_time(until) else {
        return events;
    };
    let Ok(limit) =
        time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)
    else {
        return events;
    };
    events
        .into_iter()
        .filter(|e| {
            time::OffsetDateTime::parse(&e.ts, &time::format_description::well_known::Rfc3339)
                .map(|t| t <= limit)
                .unwrap_or(true)
        })
        .collect()
}

fn export_query(q: &AuditQuery) -> String {
    let mut parts = vec![];
    for (k, v) in [
        ("action", &q.action),
        ("resource", &q.resource),
        ("actor", &q.actor),
        ("since", &q.since),
        ("until", &q.until),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}={}", super::encode_query_value(v)));
        }
    }
    if let Some(l) = q.limit {
        parts.push(format!("limit={l}"));
    }
    parts.join("&")
}

/// "1 event", "2 events".
pub fn count_phrase(n: usize) -> String {
    if n == 1 {
        "1 event".to_string()
    } else {
        format!("{n} events")
    }
}

/// The head anchor (copy it elsewhere to check the log later) and the self-check's alarm.
fn head_section(head: &Result<AuditHeadReport, BackendError>) -> Markup {
    html! {
        @match head {
            Err(e) => p.muted #audit-head { "The audit head is unavailable (" (e) ")." },
            Ok(r) => {
                @if let Some(alarm) = r.check.as_ref().and_then(|c| c.alarm.as_ref()) {
                    div.notice.bad #audit-alarm role="alert" {
                        strong { "Audit alarm" } " — the log does not match its head anchor: " (alarm)
                    }
                }
                p.muted #audit-head {
                    "Head: seq " (r.head.seq) " · "
                    code.rid title="controller audit verify --expect-head SEQ:HASH" { (r.head.to_arg()) }
                    @match &r.check {
                        Some(c) if c.ok => { " · self-check ok at " (c.at) },
                        Some(_) => { " · self-check failed" },
                        None => { " · no self-check yet" },
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<SharedState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let actor = Actor::new(&viewer.user);
    let (events, head) = tokio::join!(
        state.controller.audit(&actor, &q),
        state.controller.audit_head(&actor)
    );
    let events = events.map(|e| before_until(e, &q.until));
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/audit" aria-label="Filter the audit trail" {
            div.field {
                label for="f-action" { "Action" }
                input #f-action type="text" name="action" value=(q.action) list="actions" autocomplete="off";
                datalist #actions { @for a in ACTIONS { option value=(a) {} } }
            }
            div.field { label for="f-resource" { "Resource" } input #f-resource type="text" name="resource" value=(q.resource) autocomplete="off"; }
            div.field { label for="f-actor" { "Actor" } input #f-actor type="text" name="actor" value=(q.actor) autocomplete="off"; }
            div.field { label for="f-since" { "From (UTC)" } input #f-since type="datetime-local" name="since" value=(q.since); }
            div.field { label for="f-until" { "To (UTC)" } input #f-until type="datetime-local" name="until" value=(q.until); }
            div.field { label for="f-limit" { "At most" } input #f-limit type="number" name="limit" min="1" max="1000" value=(limit) inputmode="numeric"; }
            div.field.buttons {
                button.primary type="submit" { "Filter" }
                a.button href="/audit" { "Clear" }
                a.button href={ "/audit/export?" (export_query(&q)) } download { "Export JSON" }
            }
        }
        div #audit-live data-refresh="15" {
            (head_section(&head))
            @match &events {
                Err(e) => (unavailable("Operations", e)),
                Ok(list) if list.is_empty() => p { "No audit events match." },
                Ok(list) => {
                    p.muted { (count_phrase(list.len())) ", newest first." }
                    div.table-wrap tabindex="0" role="region" aria-label="Audit events" {
                        table.responsive #audit {
                            thead {
                                tr {
                                    th scope="col" { "Time (UTC)" } th scope="col" { "Action" } th scope="col" { "Resource" }
                                    th scope="col" { "Actor" } th scope="col" { "User" } th scope="col" { "Result" } th scope="col" { "Request ID" }
                                }
                            }
                            tbody {
                                @for e in list {
                                    tr data-action=(e.action) {
                                        td data-label="Time" { time datetime=(e.ts) { (e.ts.replace('T', " ").trim_end_matches('Z')) } }
                                        td data-label="Action" { (e.action) }
                                        td data-label="Resource" { (e.resource) }
                                        td data-label="Actor" { (e.actor) }
                                        td data-label="User" { (e.metadata.get("user").and_then(Value::as_str).unwrap_or("")) }
                                        td data-label="Result" {
                                            @match e.result.as_str() {
                                                "ok" => span.badge.good { "ok" },
                                                "intent" => span.badge.neutral title="recorded before the action; its outcome follows" { "intent" },
                                                other => span.badge.bad { (other) },
                                            }
                                        }
                                        td data-label="Request ID" { code.rid { (e.correlation_id) } }
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
    };
    layout(
        PageContext {
            title: "Audit",
            nav: Nav::Audit,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

pub async fn export(
    State(state): State<SharedState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let actor = Actor::new(&viewer.user);
    match state.controller.audit_export(&actor, &q).await {
        Ok(mut v) => {
            if !q.until.is_empty() {
                if let Some(events) = v.get("events").cloned() {
                    let parsed: Vec<AuditEvent> =
                        serde_json::from_value(events.clone()).unwrap_or_default();
                    let kept: std::collections::HashSet<(String, String)> =
                        before_until(parsed, &q.until)
                            .into_iter()
                            .map(|e| (e.ts, e.correlation_id))
                            .collect();
                    let filtered: Vec<Value> = events
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| {
                            let key = (
                                e.get("ts")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                                e.get("correlation_id")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                            );
                            kept.contains(&key)
                        })
                        .cloned()
                        .collect();
                    v["count"] = Value::from(filtered.len());
                    v["events"] = Value::Array(filtered);
                }
            }
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            (
                [
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"aibox-audit-{stamp}.json\""),
                    ),
                ],
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )
                .into_response()
        }
        Err(e) => {
            let status = if e.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({"error": {"code": "operations_unavailable", "message": e.to_string()}}).to_string()).into_response()
        }
    }
}
