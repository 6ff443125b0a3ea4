//! aibox dashboard: server-rendered pages (maud) over the controller's and the edge's APIs.
//!
//! `router(state)` is the whole HTTP surface; `main.rs` only reads settings and binds. Every page
//! and action needs a signed-in viewer except `/login`, `/healthz` and the static files.
pub mod auth;
pub mod backend;
pub mod charts;
pub mod config;
pub mod openclaw;
pub mod pages;
pub mod password;
pub mod pulls;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;

use backend::{ControllerClient, EdgeClient};
use config::DashboardConfig;
use session::{LoginThrottle, SessionKeys};

/// Everything the handlers share.
pub struct AppState {
    pub config: DashboardConfig,
    /// The stored sign-in password; it changes once, when a legacy form is upgraded.
    pub password: password::PasswordStore,
    pub keys: SessionKeys,
    pub throttle: LoginThrottle,
    pub controller: ControllerClient,
    pub edge: EdgeClient,
    pub pulls: Arc<pulls::PullJobs>,
    pub flashes: pages::Flashes,
    /// What the last image pull through the dashboard found, per service.
    pub drift: Mutex<HashMap<String, pages::services::DriftNote>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: DashboardConfig) -> SharedState {
        Self::with_throttle(config, LoginThrottle::default())
    }

    pub fn with_throttle(config: DashboardConfig, throttle: LoginThrottle) -> SharedState {
        Arc::new(Self {
            password: password::PasswordStore::new(
                config.password.clone(),
                config.password_file.clone(),
            ),
            keys: SessionKeys::new(config.session_key.clone()),
            throttle,
            controller: ControllerClient::new(
                config.controller_url.clone(),
                config.controller_token.clone(),
            ),
            edge: EdgeClient::new(config.edge_url.clone(), config.edge_admin_token.clone()),
            pulls: Arc::new(pulls::PullJobs::default()),
            flashes: pages::Flashes::default(),
            drift: Mutex::new(HashMap::new()),
            config,
        })
    }
}

pub fn router(state: SharedState) -> Router {
    use pages::{audit, keys, login, models, overview, services, tools};
    Router::new()
        .route("/healthz", get(pages::healthz))
        .route("/static/app.css", get(pages::assets::css))
        .route("/static/app.js", get(pages::assets::js))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/", get(overview::page))
        .route("/services", get(services::page))
        .route("/services/{name}/logs", get(services::logs_page))
        .route("/services/{name}/logs/stream", get(services::logs_stream))
        .route("/services/{name}/pull", post(services::pull_image))
        .route(
            "/services/{name}/{action}",
            get(services::confirm_page).post(services::act),
        )
        .route("/models", get(models::page))
        .route("/models/pull", post(models::pull))
        .route(
            "/models/delete",
            get(models::confirm_delete).post(models::delete),
        )
        .route("/tools", get(tools::page))
        .route("/tools/add", post(tools::add))
        .route("/tools/{name}/enabled", post(tools::set_enabled))
        .route("/tools/{name}/policy", post(tools::set_policy))
        .route("/tools/{name}/secrets", post(tools::set_secrets))
        .route("/keys", get(keys::page).post(keys::create))
        .route(
            "/keys/{name}/revoke",
            get(keys::confirm_revoke).post(keys::revoke),
        )
        .route("/audit", get(audit::page))
        .route("/egress", get(pages::egress::page))
        .route("/audit/export", get(audit::export))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(pages::forms_only))
        .layer(axum::middleware::from_fn(auth::security_headers))
        .with_state(state)
}
