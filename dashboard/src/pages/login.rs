//! Sign-in and sign-out.
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{layout, Nav, PageContext};
use crate::auth::{csrf_refusal, now_unix, safe_next, session_cookie, viewer_of, Viewer};
use crate::password::Check;
use crate::SharedState;

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        section.signin aria-labelledby="signin-title" {
            h1 #signin-title { "Sign in to aibox" }
            @if let Some(e) = error {
                p.flash.error role="alert" #signin-error { (e) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="password" { "Password" }
                input #password type="password" name="password" required autocomplete="current-password"
                    autofocus aria-describedby=[error.map(|_| "signin-error")];
                button.primary type="submit" { "Sign in" }
            }
            p.muted { "The password was shown once by ./aibox up (its argon2id hash is DASHBOARD_PASSWORD_HASH in .env)." }
        }
    };
    let page = layout(
        PageContext {
            title: "Sign in",
            nav: Nav::None,
            viewer: None,
            flashes: vec![],
            noscript_refresh: None,
        },
        body,
    );
    (status, page).into_response()
}

pub async fn form(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if viewer_of(&state, &headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    login_page(StatusCode::OK, &next, None)
}

pub async fn submit(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    if let Err(wait) = state.throttle.check(Instant::now()) {
        let msg = format!(
            "Too many failed sign-ins. Try again in {} seconds.",
            wait.as_secs().max(1)
        );
        return login_page(StatusCode::TOO_MANY_REQUESTS, &next, Some(&msg));
    }
    // argon2 is slow on purpose: off the async runtime.
    let check = {
        let state = state.clone();
        let presented = f.password.clone();
        tokio::task::spawn_blocking(move || state.password.check(&presented))
            .await
            .unwrap_or(Check::Wrong)
    };
    if let Check::RightAndUpgraded { rewritten } = &check {
        match rewritten {
            Some(file) => tracing::warn!(file = %file.display(), "dashboard password upgraded from unsalted SHA-256 to argon2id and rewritten in its file"),
            None => tracing::warn!("dashboard password upgraded from unsalted SHA-256 to argon2id in memory; DASHBOARD_PASSWORD_SHA256 cannot be rewritten from here: replace it with DASHBOARD_PASSWORD_HASH (`dashboard hash-password`)"),
        }
    }
    if check == Check::Wrong {
        let lock = state.throttle.failed(Instant::now());
        tracing::warn!(
            locked_for_secs = lock.map(|d| d.as_secs()),
            "failed dashboard sign-in"
        );
        let msg = match lock {
            Some(d) => format!(
                "Wrong password. Sign-in is locked for {} seconds.",
                d.as_secs()
            ),
            None => "Wrong password.".to_string(),
        };
        return login_page(StatusCode::UNAUTHORIZED, &next, Some(&msg));
    }
    state.throttle.succeeded();
    let ttl = state.config.session_ttl_secs;
    let (session, cookie) = state.keys.issue(&state.config.user, ttl, now_unix());
    tracing::info!(user = %session.user, "dashboard sign-in");
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &headers, &cookie, ttl),
    );
    resp
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(state): State<SharedState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    if let Some(s) = &viewer.session {
        state.keys.revoke(s, now_unix());
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &headers, "", 0));
    resp
}
