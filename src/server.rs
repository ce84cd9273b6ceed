//! `eventgate serve`: starts every listener, waits for a signal, and shuts down gracefully.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::config::Config;
use crate::http::ws::WsState;
use crate::mirror::sink::LocalSink;
use crate::mirror::{DRAIN_TIMEOUT, Mirror, SinkSpec, Stop};
use crate::nats::{self, NatsError};
use crate::proxy::Gateway;
use crate::specs::{SpecStore, StoreError};
use crate::validate::Validation;

/// Why eventgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    KafkaListen(#[from] crate::proxy::ListenError),
    #[error("cannot open the admin HTTP listener on {addr}: {source}")]
    HttpListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot open the spec store: {0}")]
    Store(StoreError),
    #[error("--spec {path}: {source}")]
    Spec { path: String, source: StoreError },
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("cannot start the mirror: {0}")]
    Mirror(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("--resources: {0}")]
    Resources(String),
    #[error(transparent)]
    SubscriptionsClient(#[from] crate::subscriptions::sink::ClientError),
}

/// Runs the gateway until SIGTERM or SIGINT, then stops accepting, lets in-flight requests finish
/// (for at most `shutdown_timeout`), lets the mirror catch up (bounded too) and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    crate::telemetry::prometheus();
    // Unreadable certificates fail the start, before anything listens.
    let tls = crate::proxy::Tls::load(&config)?;
    let validation = Arc::new(Validation::new(config.policies.clone()));
    let background = tokio_util::sync::CancellationToken::new();
    let stop = Stop::default();
    let (live, _) = broadcast::channel(4096);

    // NATS: the mirror (its own connection and thread), the shared document bucket, and a
    // connection for websocket watchers, all set up in the background.
    let (store, mirror, worker, js) = match &config.nats {
        Some(nc) => {
            let js = nats::jetstream(nats::connect(nc).await?, nc);
            let store = Arc::new(SpecStore::open_shared(validation.clone()));
            tokio::spawn(store.clone().sync(js.clone(), nc.clone(), background.clone()));
            let (mirror, worker) =
                Mirror::start(config.mirror.clone(), SinkSpec::JetStream(nc.clone()), stop.clone(), None)
                    .map_err(ServeError::Mirror)?;
            tracing::info!(
                url = crate::nats::redact_url(&nc.url),
                stream = nc.stream,
                "mirroring records to NATS JetStream"
            );
            (store, mirror, worker, Some(js))
        }
        None => {
            let store =
                Arc::new(SpecStore::open(validation.clone(), config.spec_dir.clone()).map_err(ServeError::Store)?);
            // Without NATS, events are built only while someone watches /ws.
            let watchers = live.clone();
            let wanted: Box<dyn Fn() -> bool + Send + Sync> = Box::new(move || watchers.receiver_count() > 0);
            let (mirror, worker) = Mirror::start(
                config.mirror.clone(),
                SinkSpec::Local(LocalSink::new(live.clone())),
                stop.clone(),
                Some(wanted),
            )
            .map_err(ServeError::Mirror)?;
            (store, mirror, worker, None)
        }
    };
    for path in &config.specs {
        let summary =
            store.load_file(path).map_err(|source| ServeError::Spec { path: path.display().to_string(), source })?;
        tracing::info!(id = summary.id, topics = ?summary.topics, "loaded AsyncAPI document");
        for w in &summary.warnings {
            tracing::warn!(id = summary.id, "{w}");
        }
    }
    // Subscriptions: resource files are checked now (a broken file stops the start), applied once
    // the bucket is reachable.
    let subs = match (&config.subscriptions, &config.nats, &js) {
        (Some(sc), Some(nc), Some(js)) => {
            let startup = crate::subscriptions::load_files(&sc.files).map_err(ServeError::Resources)?;
            let subs = crate::subscriptions::Subscriptions::new(sc.clone(), js.clone())?;
            tokio::spawn(subs.clone().run(nc.clone(), startup, background.clone()));
            Some(subs)
        }
        _ => None,
    };
    let ws_shutdown = tokio_util::sync::CancellationToken::new();
    let ws = WsState {
        js,
        stream: config.nats.as_ref().map(|n| n.stream.clone()).unwrap_or_default(),
        subject_prefix: config.mirror.subject_prefix.clone(),
        rejected_prefix: config.mirror.rejected_prefix.clone(),
        live,
        buffer: config.ws_buffer,
        slow_after: config.ws_slow,
        shutdown: ws_shutdown.clone(),
        memory: crate::http::ws::WsMemory::new(config.ws_max_buffered_bytes),
        metrics: crate::http::ws::WsMetrics::new(),
    };
    let gw = Gateway::with_tls(config, validation, Some(mirror), tls);
    gw.listen().await?;
    let addr = gw.config.http_listen;
    crate::http::start(gw.clone(), store, subs, ws).await.map_err(|source| ServeError::HttpListen { addr, source })?;

    wait_for_signal().await?;
    tracing::info!(timeout = ?gw.config.shutdown_timeout, "shutting down: no new connections, finishing in-flight requests");
    gw.shutdown.cancel();
    gw.tasks.close();
    // Websocket watchers hold their HTTP connections open: tell them to go.
    ws_shutdown.cancel();
    if tokio::time::timeout(gw.config.shutdown_timeout, gw.tasks.wait()).await.is_err() {
        tracing::warn!(tasks = gw.tasks.len(), "shutdown timeout reached; closing the remaining connections");
    }
    // Every answer is out: let the mirror publish what it still holds, for a bounded time.
    stop.drain.cancel();
    let mut done = worker.done;
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut done).await.is_err() {
        stop.abort.cancel();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, done).await;
    }
    background.cancel();
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
