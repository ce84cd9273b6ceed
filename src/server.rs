//! `eventgate serve`: starts every listener, waits for a signal, and shuts down gracefully.

use std::sync::Arc;

use crate::config::Config;
use crate::proxy::Gateway;
use crate::specs::{SpecStore, StoreError};
use crate::validate::Validation;

/// Why eventgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the Kafka listener on {addr}: {source}")]
    KafkaListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the admin HTTP listener on {addr}: {source}")]
    HttpListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot open the spec store: {0}")]
    Store(StoreError),
    #[error("--spec {path}: {source}")]
    Spec { path: String, source: StoreError },
}

/// Runs the gateway until SIGTERM or SIGINT, then stops accepting, lets in-flight requests finish
/// (for at most `shutdown_timeout`) and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    crate::telemetry::prometheus();
    let validation = Arc::new(Validation::new(config.policies.clone()));
    let store = Arc::new(
        SpecStore::open(validation.clone(), config.spec_dir.clone()).map_err(ServeError::Store)?,
    );
    for path in &config.specs {
        let summary = store.load_file(path).map_err(|source| ServeError::Spec {
            path: path.display().to_string(),
            source,
        })?;
        tracing::info!(id = summary.id, topics = ?summary.topics, "loaded AsyncAPI document");
        for w in &summary.warnings {
            tracing::warn!(id = summary.id, "{w}");
        }
    }
    let gw = Gateway::new(config, validation);
    let addr = gw.config.listen;
    gw.listen()
        .await
        .map_err(|source| ServeError::KafkaListen { addr, source })?;
    let addr = gw.config.http_listen;
    crate::http::start(gw.clone(), store)
        .await
        .map_err(|source| ServeError::HttpListen { addr, source })?;

    wait_for_signal().await?;
    tracing::info!(timeout = ?gw.config.shutdown_timeout, "shutting down: no new connections, finishing in-flight requests");
    gw.shutdown.cancel();
    gw.tasks.close();
    if tokio::time::timeout(gw.config.shutdown_timeout, gw.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = gw.tasks.len(),
            "shutdown timeout reached; closing the remaining connections"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
