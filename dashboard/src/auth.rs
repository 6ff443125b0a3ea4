//! Who is looking: the signed session cookie (or, when trusted, Tailscale Serve's identity
//! header), the CSRF check every form goes through, and the security headers of every response.
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::config::{valid_user, CookieSecure};
use crate::session::{Session, SESSION_COOKIE};
use crate::SharedState;

pub const TAILSCALE_USER_HEADER: &str = "tailscale-user-login";

/// The signed-in person behind a request.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: String,
    /// What the CSRF token and the flash messages are bound to: the session id, or the
    /// Tailscale login.
    pub binding: String,
    pub csrf: String,
    /// `None` when signed in through Tailscale's identity header.
    pub session: Option<Session>,
    /// The page's own script refreshing a region: one-time messages are left for a real view.
    pub background_refresh: bool,
}

impl Viewer {
    pub fn via_tailscale(&self) -> bool {
        self.session.is_none()
    }
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The viewer of a request, if any.
pub fn viewer_of(state: &SharedState, headers: &HeaderMap) -> Option<Viewer> {
    if state.config.trust_tailscale {
        if let Some(login) = headers
            .get(TAILSCALE_USER_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            if valid_user(login) {
                let binding = format!("tailscale:{login}");
                return Some(Viewer {
                    user: login.to_string(),
                    csrf: state.keys.csrf_token(&binding),
                    binding,
                    session: None,
                    background_refresh: headers.contains_key("x-dashboard-refresh"),
                });
            }
        }
    }
    let cookie = cookie_value(headers, SESSION_COOKIE)?;
    let session = state.keys.verify(cookie, now_unix())?;
    Some(Viewer {
        user: session.user.clone(),
        csrf: state.keys.csrf_token(&session.sid),
        binding: session.sid.clone(),
        session: Some(session),
        background_refresh: headers.contains_key("x-dashboard-refresh"),
    })
}

impl FromRequestParts<SharedState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(v) = viewer_of(state, &parts.headers) {
            return Ok(v);
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            let target = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let next = crate::pages::encode_query_value(target);
            return Err(Redirect::to(&format!("/login?next={next}")).into_response());
        }
        Err(crate::pages::error_page(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "This action needs a signed-in user. Your session may have expired.",
        ))
    }
}

/// Every form carries the CSRF token of the viewer's session; anything else is refused.
pub fn csrf_refusal(state: &SharedState, viewer: &Viewer, presented: &str) -> Option<Response> {
    if state.keys.csrf_ok(&viewer.binding, presented) {
        None
    } else {
        tracing::warn!(user = %viewer.user, "form refused: missing or wrong CSRF token");
        Some(crate::pages::error_page(
            StatusCode::FORBIDDEN,
            "Form expired",
            "The form's security token is missing or does not match your session. \
             Go back, reload the page and try again.",
        ))
    }
}

/// Only local paths, so a crafted sign-in link cannot send people elsewhere.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login") =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[allow(
    clippy::expect_used,
    reason = "the cookie is base64url, digits and fixed ASCII"
)]
pub fn session_cookie(
    state: &SharedState,
    headers: &HeaderMap,
    value: &str,
    max_age: i64,
) -> HeaderValue {
    let secure = match state.config.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https")),
    };
    let mut c =
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie value is ASCII")
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_local() {
        assert_eq!(safe_next(Some("/models?x=1")), "/models?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; aibox_session=xyz.abc; b=2"),
        );
        assert_eq!(cookie_value(&h, "aibox_session"), Some("xyz.abc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
