//! Page layout and the pieces every page shares.
pub mod assets;
pub mod audit;
pub mod egress;
pub mod gpu;
pub mod keys;
pub mod log_line;
pub mod login;
pub mod models;
pub mod openclaw_card;
pub mod overview;
pub mod services;
pub mod tools;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::Viewer;
use crate::backend::BackendError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Services,
    Models,
    Tools,
    Keys,
    Audit,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKind {
    Ok,
    Error,
    Info,
}

#[derive(Debug, Clone)]
pub struct Flash {
    pub kind: FlashKind,
    pub text: String,
}

/// One-time messages shown on the page a form redirects to (post/redirect/get), per viewer.
#[derive(Default)]
pub struct Flashes {
    by_viewer: Mutex<HashMap<String, Vec<Flash>>>,
}

impl Flashes {
    pub fn push(&self, viewer: &Viewer, kind: FlashKind, text: impl Into<String>) {
        let mut map = self
            .by_viewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A viewer who never comes back must not grow this forever.
        if map.len() > 1000 {
            map.clear();
        }
        let list = map.entry(viewer.binding.clone()).or_default();
        list.push(Flash {
            kind,
            text: text.into(),
        });
        if list.len() > 10 {
            list.remove(0);
        }
    }

    pub fn take(&self, viewer: &Viewer) -> Vec<Flash> {
        if viewer.background_refresh {
            return vec![];
        }
        self.by_viewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&viewer.binding)
            .unwrap_or_default()
    }
}

/// What a page knows about the viewer and the moment, for the shared layout.
pub struct PageContext<'a> {
    pub title: &'a str,
    pub nav: Nav,
    pub viewer: Option<&'a Viewer>,
    pub flashes: Vec<Flash>,
    /// Without JavaScript, reload the page every N seconds (progressive enhancement swaps
    /// `[data-refresh]` regions in place instead).
    pub noscript_refresh: Option<u32>,
}

pub fn layout(ctx: PageContext<'_>, body: Markup) -> Markup {
    let nav_item = |nav: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(ctx.nav == nav).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (ctx.title) " · aibox" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
                @if let Some(secs) = ctx.noscript_refresh {
                    noscript { meta http-equiv="refresh" content=(secs); }
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.bar {
                        a.brand href="/" { span aria-hidden="true" { "◆ " } "aibox" }
                        @if let Some(v) = ctx.viewer {
                            div.who {
                                span { "Signed in as " strong { (v.user) } }
                                @if v.via_tailscale() {
                                    span.muted { " (Tailscale)" }
                                } @else {
                                    form method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(v.csrf);
                                        button.link type="submit" { "Sign out" }
                                    }
                                }
                            }
                        }
                    }
                    @if ctx.viewer.is_some() {
                        nav aria-label="Main" {
                            ul {
                                (nav_item(Nav::Overview, "/", "Overview"))
                                (nav_item(Nav::Services, "/services", "Services"))
                                (nav_item(Nav::Models, "/models", "Models"))
                                (nav_item(Nav::Tools, "/tools", "Tools"))
                                (nav_item(Nav::Keys, "/keys", "Keys"))
                                (nav_item(Nav::Audit, "/audit", "Audit"))
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if !ctx.flashes.is_empty() {
                        div.flashes role="status" {
                            @for f in &ctx.flashes {
                                p class={ "flash " (match f.kind { FlashKind::Ok => "ok", FlashKind::Error => "error", FlashKind::Info => "info" }) } {
                                    (f.text)
                                }
                            }
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// The notice shown where a backend's data would be.
pub fn unavailable(what: &str, err: &BackendError) -> Markup {
    let heading = if err.is_unavailable() {
        format!("{what} unavailable")
    } else {
        format!("{what}: error")
    };
    let detail = match err {
        BackendError::Unconfigured => "Not configured for this dashboard.".to_string(),
        other => other.to_string(),
    };
    html! {
        div.notice.warn role="alert" {
            strong { (heading) }
            " — " (detail)
        }
    }
}

/// Every action of the dashboard is an HTML form: a request body of any other type (a JSON array
/// posing as a confirmation, say) is refused with 400 before any handler reads it.
pub async fn forms_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let has_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    let form = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let refused = req.method() == axum::http::Method::POST
        && has_body
        && form
            .as_deref()
            .is_some_and(|t| t != "application/x-www-form-urlencoded");
    if refused {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not a form",
            "The dashboard takes HTML forms only (application/x-www-form-urlencoded).",
        );
    }
    next.run(req).await
}

pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p { (message) }
        p { a href="/" { "Back to the dashboard" } }
    };
    let page = layout(
        PageContext {
            title,
            nav: Nav::None,
            viewer: None,
            flashes: vec![],
            noscript_refresh: None,
        },
        body,
    );
    (status, page).into_response()
}

pub async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page at this address.",
    )
}

pub async fn healthz() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true}"#,
    )
        .into_response()
}

/// Percent-encode for a query value (keeps unreserved characters and `/`).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// "in 4m 10s" / "3m ago" for an RFC 3339 time, relative to now.
pub fn relative_time(rfc3339: &str) -> Option<String> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let now = time::OffsetDateTime::now_utc();
    let secs = (t - now).whole_seconds();
    Some(if secs >= 0 {
        format!("in {}", human_duration(secs as u64))
    } else {
        format!("{} ago", human_duration(secs.unsigned_abs()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
        assert_eq!(human_duration(3725), "1h 2m");
        assert_eq!(encode_query_value("/a b?c=d"), "/a%20b%3Fc%3Dd");
    }
}
