//! The admin HTTP listener: health, Prometheus metrics, the spec API ([`specs`]), subscription
//! resources ([`resources`]), live traffic ([`ws`]) and the browser console at `/` ([`console`]).
//!
//! It binds to loopback by default and shares no task or lock with the Kafka path. When an admin
//! token is configured, every mutating route, and every route of subscription resources, requires
//! `Authorization: Bearer <token>`.
//!
//! Nothing a peer sends is trusted here either: a connection must send its request headers within
//! `--http-header-timeout-ms` (idle keep-alive connections too), a request must be answered within
//! `--http-request-timeout-ms` (else 408), and at most `--http-max-connections` connections are
//! open at once, websockets included; further ones are closed as soon as they are accepted and
//! counted in `eventgate_http_connections_refused_total`.

pub mod console;
pub mod resources;
pub mod specs;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::proxy::Gateway;
use crate::specs::SpecStore;
use crate::subscriptions::resource::Kind;
use crate::telemetry;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<SpecStore>,
    /// Subscriptions (with NATS).
    pub subs: Option<Arc<crate::subscriptions::Subscriptions>>,
    pub admin_token: Option<Arc<str>>,
    pub ws: ws::WsState,
    /// Time a request may take, its body included, before it is answered 408. A websocket's
    /// upgrade is answered at once, so its session is not limited by it.
    pub request_timeout: Duration,
    /// Per-topic counts for `GET /stats/topics`.
    pub rates: Arc<crate::telemetry::rates::TopicRates>,
}

/// Binds the admin listener and serves it until shutdown. Returns the bound address.
pub async fn start(
    gw: Arc<Gateway>,
    store: Arc<SpecStore>,
    subs: Option<Arc<crate::subscriptions::Subscriptions>>,
    ws: ws::WsState,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(gw.config.http_listen).await?;
    let addr = listener.local_addr()?;
    let state = AppState {
        store,
        subs,
        admin_token: gw.config.admin_token.as_deref().map(Arc::from),
        ws,
        request_timeout: gw.config.http_request_timeout,
        rates: gw.validation_metrics.topics.clone(),
    };
    let app = router(state, gw.config.max_spec_bytes);
    gw.tasks.spawn(accept_loop(gw.clone(), listener, app));
    tracing::info!(
        %addr,
        tls = gw.tls.http.is_some(),
        max_connections = gw.config.http_max_connections,
        "admin HTTP listener ready"
    );
    Ok(addr)
}

/// A connection's slot among `--http-max-connections`, and its share of shutdown's wait. The
/// connection holds it, and so does the websocket session it may turn into (the request carries a
/// copy as an extension), so the slot is free again only when both are gone.
#[derive(Clone)]
pub struct ConnSlot {
    _held: Arc<Held>,
}

struct Held {
    _permit: OwnedSemaphorePermit,
    _task: TaskTrackerToken,
}

/// Accepts admin connections until shutdown. Each gets a slot or is closed at once; each is served
/// by hyper with a deadline for its request headers.
async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener, app: Router) {
    let slots = Arc::new(Semaphore::new(gw.config.http_max_connections));
    let refused = metrics::counter!("eventgate_http_connections_refused_total");
    let refusals = crate::telemetry::Throttle::new(Duration::from_secs(10));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(gw.config.http_header_timeout);
    loop {
        let accepted = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, keep the listener.
                tracing::warn!(error = %e, "admin HTTP accept failed");
                tokio::select! {
                    _ = gw.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused.increment(1);
            if let Some(refused) = refusals.note() {
                let limit = gw.config.http_max_connections;
                tracing::warn!(
                    refused,
                    limit,
                    "admin HTTP connection limit reached: closing new connections (--http-max-connections)"
                );
            }
            continue;
        };
        let slot = ConnSlot { _held: Arc::new(Held { _permit: permit, _task: gw.tasks.token() }) };
        let _ = stream.set_nodelay(true);
        let (builder, app, shutdown) = (builder.clone(), app.clone(), gw.shutdown.clone());
        match &gw.tls.http {
            None => gw.tasks.spawn(serve_connection(builder, stream, app, slot, shutdown)),
            Some(tls) => {
                let (acceptor, deadline) = (tls.acceptor(), gw.config.http_header_timeout);
                gw.tasks.spawn(async move {
                    // The handshake counts against the header deadline: a client that stalls in it
                    // holds its slot no longer than one that stalls in its headers.
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(builder, tls, app, slot, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "admin HTTPS handshake failed"),
                        Err(_) => tracing::debug!("admin HTTPS handshake took longer than the header timeout"),
                    }
                })
            }
        };
    }
}

/// Serves one admin connection (and hands it over when it upgrades to a websocket). On shutdown,
/// a request in progress is finished and the connection closed; one that never got as far as a
/// whole request head is closed at once (hyper would wait for that request).
async fn serve_connection<S>(
    builder: http1::Builder,
    stream: S,
    app: Router,
    slot: ConnSlot,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = TowerToHyperService::new(app);
    let held = slot.clone();
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(held.clone());
        hyper::service::Service::call(&app, req)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = shutdown.cancelled() => {
            if !started.load(Ordering::Relaxed) {
                return;
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        // Header timeouts and clients that go away: routine, and a peer could make them frequent.
        tracing::debug!(error = %e, "admin HTTP connection ended");
    }
}

/// The admin routes.
pub fn router(state: AppState, max_spec_bytes: usize) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/stats/topics", get(console::topic_rates))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/specs", get(specs::list))
        .route("/specs/{id}", put(specs::put).get(specs::get).delete(specs::delete))
        .route("/specs/{id}/validate", post(specs::validate))
        .route("/ws", get(ws::handler))
        .route("/apply", post(resources::apply))
        .route("/subscriptions/{name}/replay", post(resources::replay))
        .route("/subscriptions/{name}/pause", post(resources::pause))
        .route("/subscriptions/{name}/resume", post(resources::resume))
        .merge(resource_routes(Kind::Variable))
        .merge(resource_routes(Kind::Channel))
        .merge(resource_routes(Kind::Subscription))
        .layer(DefaultBodyLimit::max(max_spec_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(state.clone(), limit_time))
        .with_state(state)
}

/// `GET /{kind}`, and `GET`/`PUT`/`DELETE /{kind}/{name}`, for one kind of resource.
fn resource_routes(kind: Kind) -> Router<AppState> {
    use axum::extract::{Path, State};
    let one = format!("/{}/{{name}}", kind.plural());
    Router::new().route(&format!("/{}", kind.plural()), get(move |s: State<AppState>| resources::list(s, kind))).route(
        &one,
        get(move |s: State<AppState>, p: Path<String>| resources::get(s, p, kind))
            .put(move |s: State<AppState>, p: Path<String>, body: axum::body::Bytes| resources::put(s, p, kind, body))
            .delete(move |s: State<AppState>, p: Path<String>| resources::delete(s, p, kind)),
    )
}

/// Answers 408 when a request, its body included, is not answered within `request_timeout`. The
/// `/ws` handler answers its upgrade at once; the session runs on its own, outside this limit.
async fn limit_time(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => specs::ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request was not complete within {:?} (--http-request-timeout-ms); a change it asked for \
                 may still take effect: check GET /specs",
                state.request_timeout
            ),
        )
        .into_response(),
    }
}

/// Mutating routes need the admin token, when one is configured.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let mutating = matches!(*req.method(), Method::PUT | Method::DELETE | Method::PATCH)
        || (req.method() == Method::POST && !path.ends_with("/validate"));
    // Resources may hold credentials (header values, tokens in URLs): reading them needs the
    // token too.
    let resources = ["/variables", "/channels", "/subscriptions"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')));
    if (mutating || resources) && !authorized(&state, req.headers(), None) {
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
