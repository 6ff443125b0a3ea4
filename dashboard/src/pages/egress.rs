//! `/egress`: what the browser worker's egress guard decided, by decision and reason, from the
//! edge's `aibox_egress_decisions_total{decision,reason}` counters (since the edge started).
//! Each single decision, with its host and address, is in the edge's log (`egress decision`
//! lines; docs/egress.md).
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{layout, unavailable, Nav, PageContext};
use crate::auth::Viewer;
use crate::backend::Actor;
use crate::SharedState;

/// One `aibox_egress_decisions_total` series.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionCount {
    pub decision: String,
    pub reason: String,
    pub count: f64,
}

/// The egress decision counters in a Prometheus text exposition, largest first.
pub fn decision_counts(metrics: &str) -> Vec<DecisionCount> {
    let mut out: Vec<DecisionCount> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("aibox_egress_decisions_total{")?;
            let (labels, value) = rest.split_once('}')?;
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            Some(DecisionCount {
                decision: label("decision")?,
                reason: label("reason").unwrap_or_else(|| "none".into()),
                count: value.trim().parse().ok()?,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .total_cmp(&a.count)
            .then(a.decision.cmp(&b.decision))
    });
    out
}

/// What a denial reason means (docs/egress.md, "Denials").
fn meaning(reason: &str) -> &'static str {
    match reason {
        "none" => "allowed: a public address on an allowed port",
        "private_range" => "a private network (10/8, 172.16/12, 192.168/16, fc00::/7)",
        "metadata" => "a cloud metadata endpoint",
        "tailnet" => "the tailnet (100.64/10)",
        "loopback" => "loopback",
        "link_local" => "link-local",
        "multicast" => "multicast",
        "reserved" => "a reserved or translation range",
        "documentation" => "a documentation range",
        "denied_domain" => "a denied domain (or not in allow_domains)",
        "denied_cidr" => "a denied CIDR",
        "dns_failure" => "the name did not resolve",
        "port_not_allowed" => "a port outside `ports`",
        "bad_request" => "a malformed request",
        "host_mismatch" => "Host header disagreeing with the target",
        "userinfo" => "user@host in the URL",
        "scheme_not_allowed" => "a scheme other than http",
        "edge_address" => "one of the edge's own addresses",
        "too_many_tunnels" => "too many open tunnels",
        _ => "",
    }
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let actor = Actor::new(&viewer.user);
    let metrics = state.edge.metrics_text(&actor).await;
    let body = html! {
        div.page-head {
            h1 { "Browser egress" }
            p.muted { "What the edge's egress guard decided for the browser worker, by reason, since the edge started. Single decisions (host, address, client) are the edge's " code { "egress decision" } " log lines." }
        }
        @match &metrics {
            Err(e) => (unavailable("Egress decisions", e)),
            Ok(text) => {
                @let counts = decision_counts(text);
                @if counts.is_empty() {
                    p { "No egress decisions yet: the browser has not made a request through the proxy." }
                } @else {
                    table {
                        thead { tr { th { "Decision" } th { "Reason" } th { "Requests" } th { "Meaning" } } }
                        tbody {
                            @for c in &counts {
                                tr {
                                    td { span class={ "badge " (if c.decision == "allow" { "good" } else if c.decision == "deny" { "bad" } else { "warn" }) } { (c.decision) } }
                                    td { code { (c.reason) } }
                                    td { (c.count) }
                                    td.muted { (meaning(&c.reason)) }
                                }
                            }
                        }
                    }
                }
            },
        }
    };
    layout(
        PageContext {
            title: "Browser egress",
            nav: Nav::None,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_exposition() {
        let text = "# HELP aibox_egress_decisions_total Egress decisions\n\
                    # TYPE aibox_egress_decisions_total counter\n\
                    aibox_egress_decisions_total{decision=\"allow\",reason=\"none\"} 3\n\
                    aibox_egress_decisions_total{decision=\"deny\",reason=\"loopback\"} 7\n\
                    aibox_egress_open_tunnels 0\n";
        let counts = decision_counts(text);
        assert_eq!(counts.len(), 2);
        assert_eq!(
            counts[0],
            DecisionCount {
                decision: "deny".into(),
                reason: "loopback".into(),
                count: 7.0
            }
        );
        assert_eq!(counts[1].decision, "allow");
        assert_eq!(meaning("edge_address"), "one of the edge's own addresses");
    }
}
