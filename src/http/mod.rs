//! The admin HTTP listener: health, Prometheus metrics and the spec API ([`specs`]).
//!
//! It binds to loopback by default and shares no task or lock with the Kafka path. When an admin
//! token is configured, every mutating route requires `Authorization: Bearer <token>`.

pub mod specs;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::proxy::Gateway;
use crate::specs::SpecStore;
use crate::telemetry;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<SpecStore>,
    pub admin_token: Option<Arc<str>>,
    pub ws: ws::WsState,
}

/// Binds the admin listener and serves it until shutdown. Returns the bound address.
pub async fn start(gw: Arc<Gateway>, store: Arc<SpecStore>, ws: ws::WsState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(gw.config.http_listen).await?;
    let addr = listener.local_addr()?;
    let state = AppState { store, admin_token: gw.config.admin_token.as_deref().map(Arc::from), ws };
    let app = router(state, gw.config.max_spec_bytes);
    let shutdown = gw.shutdown.clone();
    gw.tasks.spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin HTTP server failed");
        }
    });
    tracing::info!(%addr, "admin HTTP listener ready");
    Ok(addr)
}

/// The admin routes.
pub fn router(state: AppState, max_spec_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/specs", get(specs::list))
        .route("/specs/{id}", put(specs::put).get(specs::get).delete(specs::delete))
        .route("/specs/{id}/validate", post(specs::validate))
        .route("/ws", get(ws::handler))
        .layer(DefaultBodyLimit::max(max_spec_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Mutating routes need the admin token, when one is configured.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mutating = matches!(*req.method(), Method::PUT | Method::DELETE | Method::PATCH)
        || (req.method() == Method::POST && !req.uri().path().ends_with("/validate"));
    if mutating && !authorized(&state, req.headers(), None) {
        return specs::ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs `Authorization: Bearer <admin token>`".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a request may pass when an admin token is configured: `Authorization: Bearer <token>`,
/// or `query_token` where headers cannot be set (browser websockets).
pub(crate) fn authorized(state: &AppState, headers: &axum::http::HeaderMap, query_token: Option<&str>) -> bool {
    let Some(token) = &state.admin_token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token)
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics() -> impl IntoResponse {
    let handle = telemetry::prometheus();
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}
