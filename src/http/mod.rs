//! The admin HTTP listener: health and Prometheus metrics.
//!
//! It binds to loopback by default and never shares a task or a lock with the Kafka path.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::proxy::Gateway;
use crate::telemetry;

/// Binds the admin listener and serves it until shutdown. Returns the bound address.
pub async fn start(gw: Arc<Gateway>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(gw.config.http_listen).await?;
    let addr = listener.local_addr()?;
    let app = router();
    let shutdown = gw.shutdown.clone();
    gw.tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin HTTP server failed");
        }
    });
    tracing::info!(%addr, "admin HTTP listener ready");
    Ok(addr)
}

fn router() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics() -> impl IntoResponse {
    let handle = telemetry::prometheus();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}
