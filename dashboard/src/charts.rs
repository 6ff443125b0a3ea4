//! Small server-rendered SVG bar charts of the edge's per-minute traffic (no script needed).
use std::collections::BTreeMap;

use maud::{html, Markup};

use crate::backend::TrafficStats;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteTotals {
    pub requests: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl MinuteTotals {
    fn add(&mut self, o: &MinuteTotals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
    }
}

/// One chart: a name and one bucket per minute of the window, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub minutes: Vec<MinuteTotals>,
}

impl Series {
    pub fn total(&self) -> MinuteTotals {
        let mut t = MinuteTotals::default();
        for m in &self.minutes {
            t.add(m);
        }
        t
    }
}

fn minute_of(t: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp().div_euclid(60))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Client,
    Model,
}

/// Sum the edge's series per client or per model, on one shared axis that ends at the newest
/// minute the edge reported and spans its window.
pub fn group(stats: &TrafficStats, by: GroupBy) -> Vec<Series> {
    let window = i64::from(stats.window_minutes.clamp(1, 24 * 60));
    let newest = stats
        .series
        .iter()
        .flat_map(|s| s.minutes.iter())
        .filter_map(|m| minute_of(&m.t))
        .max();
    let Some(end) = newest else {
        return vec![];
    };
    let start = end - window + 1;
    let mut groups: BTreeMap<String, Vec<MinuteTotals>> = BTreeMap::new();
    for s in &stats.series {
        let key = match by {
            GroupBy::Client => &s.client,
            GroupBy::Model => &s.model,
        };
        let buckets = groups
            .entry(if key.is_empty() {
                "(unknown)".to_string()
            } else {
                key.clone()
            })
            .or_insert_with(|| vec![MinuteTotals::default(); window as usize]);
        for m in &s.minutes {
            let Some(minute) = minute_of(&m.t) else {
                continue;
            };
            if minute < start || minute > end {
                continue;
            }
            buckets[(minute - start) as usize].add(&MinuteTotals {
                requests: m.requests,
                errors: m.errors,
                tokens_in: m.tokens_in,
                tokens_out: m.tokens_out,
            });
        }
    }
    let mut out: Vec<Series> = groups
        .into_iter()
        .map(|(name, minutes)| Series { name, minutes })
        .collect();
    // Busiest first.
    out.sort_by(|a, b| {
        b.total()
            .requests
            .cmp(&a.total().requests)
            .then(a.name.cmp(&b.name))
    });
    out
}

const W: u32 = 240;
const H: u32 = 48;

/// Every series summed into one, on the same axis (the overview's "all traffic").
pub fn total(stats: &TrafficStats, name: &str) -> Option<Series> {
    let groups = group(stats, GroupBy::Client);
    let first = groups.first()?;
    let mut minutes = vec![MinuteTotals::default(); first.minutes.len()];
    for g in &groups {
        for (sum, m) in minutes.iter_mut().zip(&g.minutes) {
            sum.add(m);
        }
    }
    Some(Series {
        name: name.to_string(),
        minutes,
    })
}

/// A bar per minute of the tokens in and out (no error overlay).
pub fn tokens_chart(series: &Series) -> Markup {
    let tokens = Series {
        name: series.name.clone(),
        minutes: series
            .minutes
            .iter()
            .map(|m| MinuteTotals {
                requests: m.tokens_in + m.tokens_out,
                errors: 0,
                ..*m
            })
            .collect(),
    };
    let t = series.total();
    let n = series.minutes.len();
    let label = format!(
        "{}: {} tokens in, {} tokens out over the last {n} minutes",
        series.name, t.tokens_in, t.tokens_out
    );
    bars(
        &tokens,
        &label,
        html! {
            strong { (series.name) }
            span.muted { " " (t.tokens_in) " in · " (t.tokens_out) " out" }
        },
    )
}

/// A bar per minute (requests), errors drawn over them in the error colour.
pub fn bar_chart(series: &Series) -> Markup {
    let t = series.total();
    let n = series.minutes.len().max(1);
    let label = format!(
        "{}: {} requests, {} errors, {} tokens in, {} tokens out over the last {} minutes",
        series.name, t.requests, t.errors, t.tokens_in, t.tokens_out, n
    );
    bars(
        series,
        &label,
        html! {
            strong { (series.name) }
            span.muted {
                " " (t.requests) " req · "
                span class=@if t.errors > 0 { "err-text" } @else { "" } { (t.errors) " err" }
                " · " (t.tokens_in) "/" (t.tokens_out) " tok in/out"
            }
        },
    )
}

/// The chart itself: `requests` as bars, `errors` over them; `label` for screen readers.
fn bars(series: &Series, label: &str, caption: Markup) -> Markup {
    let n = series.minutes.len().max(1) as u32;
    let max = series
        .minutes
        .iter()
        .map(|m| m.requests)
        .max()
        .unwrap_or(0)
        .max(1);
    let bar_w = f64::from(W) / f64::from(n);
    let scale = |v: u64| (v as f64 / max as f64) * f64::from(H - 2);
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img" aria-label=(label) {
                title { (label) }
                line.axis x1="0" y1=(H - 1) x2=(W) y2=(H - 1) {}
                @for (i, m) in series.minutes.iter().enumerate() {
                    @if m.requests > 0 {
                        @let h = scale(m.requests).max(1.0);
                        rect.bar x=(format!("{:.2}", i as f64 * bar_w)) y=(format!("{:.2}", f64::from(H - 1) - h))
                            width=(format!("{:.2}", (bar_w - 0.5).max(0.5))) height=(format!("{h:.2}")) {}
                    }
                    @if m.errors > 0 {
                        @let h = scale(m.errors).max(1.0);
                        rect.errbar x=(format!("{:.2}", i as f64 * bar_w)) y=(format!("{:.2}", f64::from(H - 1) - h))
                            width=(format!("{:.2}", (bar_w - 0.5).max(0.5))) height=(format!("{h:.2}")) {}
                    }
                }
            }
            div.axis-labels aria-hidden="true" { span { (n) " min ago" } span { "now" } }
            figcaption { (caption) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{TrafficMinute, TrafficSeries};

    fn minute(t: &str, requests: u64, errors: u64) -> TrafficMinute {
        TrafficMinute {
            t: t.into(),
            requests,
            errors,
            tokens_in: 10 * requests,
            tokens_out: 20 * requests,
        }
    }

    #[test]
    fn groups_on_one_axis() {
        let stats = TrafficStats {
            window_minutes: 3,
            series: vec![
                TrafficSeries {
                    client: "n8n".into(),
                    model: "m1".into(),
                    minutes: vec![
                        minute("2026-11-26T05:00:00Z", 3, 1),
                        minute("2026-11-26T05:02:00Z", 1, 0),
                    ],
                },
                TrafficSeries {
                    client: "n8n".into(),
                    model: "m2".into(),
                    minutes: vec![minute("2026-11-26T05:02:00Z", 2, 0)],
                },
                TrafficSeries {
                    client: "webui".into(),
                    model: "m1".into(),
                    minutes: vec![minute("2026-11-26T04:00:00Z", 9, 0)],
                },
            ],
        };
        let by_client = group(&stats, GroupBy::Client);
        assert_eq!(by_client[0].name, "n8n");
        assert_eq!(
            by_client[0]
                .minutes
                .iter()
                .map(|m| m.requests)
                .collect::<Vec<_>>(),
            vec![3, 0, 3]
        );
        assert_eq!(by_client[1].total().requests, 0, "outside the window");
        let by_model = group(&stats, GroupBy::Model);
        assert_eq!(
            by_model.iter().find(|s| s.name == "m1").unwrap().total(),
            MinuteTotals {
                requests: 4,
                errors: 1,
                tokens_in: 40,
                tokens_out: 80
            }
        );
        let svg = bar_chart(&by_client[0]).into_string();
        assert!(svg.contains("n8n: 6 requests, 1 errors"));
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert_eq!(svg.matches("class=\"errbar\"").count(), 1);
        assert!(group(&TrafficStats::default(), GroupBy::Client).is_empty());
        let all = total(&stats, "all").unwrap();
        assert_eq!(
            all.minutes.iter().map(|m| m.requests).collect::<Vec<_>>(),
            vec![3, 0, 3]
        );
        let tokens = tokens_chart(&all).into_string();
        assert!(
            tokens.contains("all: 60 tokens in, 120 tokens out"),
            "{tokens}"
        );
        assert_eq!(tokens.matches("class=\"errbar\"").count(), 0);
        assert!(total(&TrafficStats::default(), "all").is_none());
    }
}
