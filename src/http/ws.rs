//! `GET /ws`: watch the mirrored traffic live, or replay it (CloudEvents WebSocket binding: the
//! `cloudevents.json` subprotocol, one structured event per text frame).
//!
//! Query parameters:
//!
//! | parameter | meaning |
//! |---|---|
//! | `topic` | Kafka topic filter in NATS wildcard syntax over dot-separated names: `orders`, `user.*.signedup`, `events.>` (default: all) |
//! | `type` | comma-separated CloudEvents types to keep |
//! | `validation` | comma-separated outcomes to keep: `valid`, `invalid`, `unchecked` |
//! | `rejected` | `true`: watch records refused by policy instead of accepted ones |
//! | `start` | `new` (default) or `all`; or `start_seq=N` (stream sequence), `start_time=RFC3339` |
//!
//! With NATS every client gets its own ordered JetStream consumer, so replay and fan-out cost the
//! Kafka path nothing; each event carries its stream position as the `streamseq` extension, so a
//! client can resume. Without NATS the feed is in-process and only `start=new` is possible. A start
//! sequence older than the stream's first is refused with close code 4410 ("unrecoverable
//! position"). Each client has a bounded buffer (`--ws-buffer` events); when it stays full for
//! `--ws-slow-ms` the client is closed with code 1008 and a reason saying so, and nothing more is
//! held for it. Others are not affected.
//!
//! The bytes buffered for all clients together are bounded too (`--ws-max-buffered-bytes`, see
//! [`WsMemory`]): an event that would take the total past it first closes the clients holding the
//! most (1008, "memory limit reached"), so many clients that stop reading cannot exhaust memory
//! before `--ws-slow-ms` runs out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::{self, consumer};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::specs::ApiError;
use crate::mirror::sink::LiveEvent;

/// Events a watcher's consumer pulls at a time.
const WATCH_BATCH: i64 = 32;

/// The subprotocol of the CloudEvents WebSocket binding.
pub const SUBPROTOCOL: &str = "cloudevents.json";

/// What the websocket endpoint reads from.
#[derive(Clone)]
pub struct WsState {
    /// JetStream, when NATS is configured: a connection of its own, so watchers can never stall the
    /// mirror's publishing.
    pub js: Option<jetstream::Context>,
    pub stream: String,
    pub subject_prefix: String,
    pub rejected_prefix: String,
    /// The in-process feed (without NATS).
    pub live: broadcast::Sender<Arc<LiveEvent>>,
    /// Events buffered per client.
    pub buffer: usize,
    /// How long a full buffer may stay full before the client is closed as too slow.
    pub slow_after: std::time::Duration,
    /// Cancelled when eventgate shuts down: clients are closed with 1001 (going away).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Bytes buffered for all clients, against `--ws-max-buffered-bytes`.
    pub memory: Arc<WsMemory>,
    /// Metric handles, created once for all clients.
    pub metrics: WsMetrics,
}

/// The websocket endpoint's metric handles (besides [`WsMemory`]'s gauge of buffered bytes),
/// created once, so a client or an event costs an atomic add, never a registry lookup.
#[derive(Clone)]
pub struct WsMetrics {
    /// `eventgate_ws_clients`: clients connected now.
    clients: metrics::Gauge,
    /// `eventgate_ws_events_sent_total`.
    events_sent: metrics::Counter,
    /// `eventgate_ws_slow_disconnects_total`: clients closed as too slow (1008).
    slow_disconnects: metrics::Counter,
}

impl WsMetrics {
    /// Create after the metrics recorder is installed (the handles are taken here).
    pub fn new() -> Self {
        Self {
            clients: metrics::gauge!("eventgate_ws_clients"),
            events_sent: metrics::counter!("eventgate_ws_events_sent_total"),
            slow_disconnects: metrics::counter!("eventgate_ws_slow_disconnects_total"),
        }
    }
}

impl Default for WsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a client cut off by the memory limit is closed.
const MEMORY_LIMIT_REASON: &str =
    "client too slow: eventgate's websocket memory limit reached; reconnect with start_seq to resume";

/// A client's byte count once it has been released (cut off or gone): nothing is counted for it
/// any more.
const RELEASED: usize = usize::MAX;

/// The bytes of events buffered for all websocket clients together, and who holds them.
///
/// An event is counted (for its client and in the total) before it is queued and uncounted once it
/// has been written to the socket. When counting an event takes the total past the limit, the
/// clients holding the most are cut off first (their bytes released at once, their pumps told to
/// close with 1008) until the total fits. Every count goes through [`Budget`]; a client's
/// [`Member`] releases whatever it still holds when dropped, so no exit path leaks bytes.
pub struct WsMemory {
    limit: usize,
    total: AtomicUsize,
    /// Live clients that may be cut off, by id.
    clients: Mutex<HashMap<u64, Arc<Share>>>,
    next_id: AtomicU64,
    gauge: metrics::Gauge,
}

/// One client's part of the total.
struct Share {
    /// Bytes counted for this client, or [`RELEASED`].
    bytes: AtomicUsize,
    /// Cancelled when the memory limit cuts this client off.
    cut: CancellationToken,
}

impl WsMemory {
    /// Create after the metrics recorder is installed (the gauge handle is taken here).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            total: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            gauge: metrics::gauge!("eventgate_ws_buffered_bytes"),
        })
    }

    /// Bytes buffered for all clients now.
    pub fn buffered(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Registers a client; it leaves when the returned [`Member`] drops.
    fn join(self: &Arc<Self>) -> Member {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let share = Arc::new(Share { bytes: AtomicUsize::new(0), cut: CancellationToken::new() });
        self.lock().insert(id, share.clone());
        Member(Budget { pool: self.clone(), share, id })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Share>>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, n: usize) {
        self.total.fetch_add(n, Ordering::AcqRel);
        self.gauge.increment(n as f64);
    }

    fn sub(&self, n: usize) {
        self.total.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }

    /// Uncounts everything `share` holds and marks it released; idempotent.
    fn release_all(&self, share: &Share) {
        let held = share.bytes.swap(RELEASED, Ordering::AcqRel);
        if held != RELEASED {
            self.sub(held);
        }
    }

    /// Cuts off the clients holding the most until the total fits under the limit. Returns how
    /// many were cut off.
    fn make_room(&self) -> usize {
        let mut clients = self.lock();
        let mut cut = 0;
        while self.total.load(Ordering::Acquire) > self.limit {
            let largest = clients
                .iter()
                .map(|(id, s)| (*id, s.bytes.load(Ordering::Acquire)))
                .filter(|(_, b)| *b != RELEASED && *b > 0)
                .max_by_key(|(_, b)| *b);
            // The rest of the total is being counted right now by other clients' events.
            let Some((id, bytes)) = largest else { break };
            let Some(share) = clients.remove(&id) else { break };
            self.release_all(&share);
            share.cut.cancel();
            cut += 1;
            tracing::debug!(
                bytes,
                limit = self.limit,
                "websocket memory limit reached: cutting off the largest client"
            );
        }
        cut
    }
}

/// A client's handle on [`WsMemory`]: its feeder counts events in, its pump counts them out.
#[derive(Clone)]
struct Budget {
    pool: Arc<WsMemory>,
    share: Arc<Share>,
    id: u64,
}

impl Budget {
    /// Counts `n` more bytes for this client, cutting off the largest clients if the total passes
    /// the limit. False when this client is cut off (then nothing is counted for it).
    fn reserve(&self, n: usize) -> bool {
        // The total first: it never falls below the sum of the clients' counts.
        self.pool.add(n);
        let mut cur = self.share.bytes.load(Ordering::Acquire);
        loop {
            if cur == RELEASED {
                self.pool.sub(n);
                return false;
            }
            match self.share.bytes.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.pool.buffered() > self.pool.limit {
            self.pool.make_room();
        }
        !self.is_cut()
    }

    /// `n` counted bytes left the buffer (written to the socket, or given up).
    fn release(&self, n: usize) {
        let mut cur = self.share.bytes.load(Ordering::Acquire);
        loop {
            if cur == RELEASED {
                return;
            }
            let next = cur.saturating_sub(n);
            match self.share.bytes.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.pool.sub(cur - next),
                Err(now) => cur = now,
            }
        }
    }

    /// Uncounts everything this client holds; nothing more is counted for it.
    fn release_all(&self) {
        self.pool.release_all(&self.share);
    }

    fn is_cut(&self) -> bool {
        self.share.bytes.load(Ordering::Acquire) == RELEASED
    }

    /// Cancelled when the memory limit cuts this client off.
    fn cut_off(&self) -> &CancellationToken {
        &self.share.cut
    }
}

/// A client's membership in [`WsMemory`]: dropping it (on any exit path) releases what the client
/// still holds and unregisters it.
struct Member(Budget);

impl Drop for Member {
    fn drop(&mut self) {
        let b = &self.0;
        b.pool.lock().remove(&b.id);
        b.release_all();
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    topic: Option<String>,
    r#type: Option<String>,
    validation: Option<String>,
    rejected: Option<bool>,
    start: Option<String>,
    start_seq: Option<u64>,
    start_time: Option<String>,
    token: Option<String>,
}

/// Where a client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    New,
    All,
    Seq(u64),
    Time(time::OffsetDateTime),
}

/// A client's filters.
#[derive(Debug, Clone)]
struct Filter {
    subject: String,
    types: Option<Vec<String>>,
    validations: Option<Vec<String>>,
}

impl Filter {
    fn keeps(&self, ce_type: Option<&str>, validation: Option<&str>) -> bool {
        let ok = |list: &Option<Vec<String>>, v: Option<&str>| {
            list.as_ref().is_none_or(|l| v.is_some_and(|v| l.iter().any(|x| x == v)))
        };
        ok(&self.types, ce_type) && ok(&self.validations, validation)
    }
}

fn bad(msg: String) -> Response {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", msg).into_response()
}

/// Checks a topic filter in NATS wildcard syntax.
pub fn topic_filter(t: &str) -> Result<(), String> {
    let tokens: Vec<&str> = t.split('.').collect();
    for (i, tok) in tokens.iter().enumerate() {
        let ok = !tok.is_empty()
            && !tok.contains(char::is_whitespace)
            && (*tok == "*" || *tok == ">" || !tok.contains(['*', '>']))
            && (*tok != ">" || i == tokens.len() - 1);
        if !ok {
            return Err(format!(
                "topic filter `{t}`: use dot-separated names, `*` for one name, `>` at the end for the rest"
            ));
        }
    }
    Ok(())
}

/// Whether `subject` matches the NATS `pattern`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

fn list(v: &Option<String>) -> Option<Vec<String>> {
    v.as_ref().map(|s| s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect())
}

pub async fn handler(
    State(app): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    slot: Option<Extension<super::ConnSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !super::authorized(&app, &headers, q.token.as_deref()) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/ws needs the admin token (Authorization: Bearer, or ?token=)".into(),
        )
        .into_response();
    }
    let state = app.ws.clone();
    let topic = q.topic.clone().unwrap_or_else(|| ">".into());
    if let Err(e) = topic_filter(&topic) {
        return bad(e);
    }
    let prefix = if q.rejected.unwrap_or(false) { &state.rejected_prefix } else { &state.subject_prefix };
    let start = match (q.start.as_deref(), q.start_seq, &q.start_time) {
        (None | Some("new"), None, None) => Start::New,
        (Some("all"), None, None) => Start::All,
        (None, Some(seq), None) => Start::Seq(seq.max(1)),
        (None, None, Some(t)) => match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
            Ok(t) => Start::Time(t),
            Err(e) => return bad(format!("start_time `{t}` is not RFC 3339: {e}")),
        },
        _ => return bad("give one of start=new|all, start_seq=N or start_time=RFC3339".into()),
    };
    let filter =
        Filter { subject: format!("{prefix}.{topic}"), types: list(&q.r#type), validations: list(&q.validation) };
    // The token and the filters are checked before the upgrade, so a plain GET (what a browser can
    // send to learn why a websocket would fail: it never sees the status of a refused upgrade)
    // gets the same 401 or 400 a websocket would, and 426 when all is well.
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                format!("the token and the filters are fine; open a websocket to watch ({e})"),
            )
            .into_response();
        }
    };
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
    let ws = if offered { ws.protocols([SUBPROTOCOL]) } else { ws };
    ws.on_upgrade(move |socket| async move {
        // The session keeps the connection's slot (and shutdown's wait) until it ends.
        let _slot = slot;
        serve(socket, state, filter, start).await
    })
}

async fn close(mut socket: WebSocket, code: u16, reason: String) {
    let reason: String = reason.chars().take(120).collect();
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))).await;
}

/// Why a client's feed stopped.
enum Ended {
    /// The client left or the feed ended.
    Done,
    /// Close with this code and reason.
    Close(u16, String),
}

async fn serve(socket: WebSocket, state: WsState, filter: Filter, start: Start) {
    let clients = &state.metrics.clients;
    clients.increment(1.0);
    let member = state.memory.join();
    let budget = member.0.clone();
    let (tx, rx) = mpsc::channel::<String>(state.buffer);
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Ended>();
    let out = Out { tx, budget: budget.clone(), slow_after: state.slow_after };
    let feeder = match &state.js {
        Some(js) => tokio::spawn(feed_jetstream(js.clone(), state.stream.clone(), filter, start, out, end_tx)),
        None => {
            if start != Start::New {
                close(
                    socket,
                    4400,
                    "replay needs the NATS mirror (--nats-url); without it only start=new is possible".into(),
                )
                .await;
                clients.decrement(1.0);
                return;
            }
            tokio::spawn(feed_local(state.live.subscribe(), filter, out, end_tx))
        }
    };
    pump(socket, rx, end_rx, state.shutdown.clone(), &budget, &state.metrics).await;
    feeder.abort();
    // Whatever the feeder still queues after this is refused: the client is released.
    drop(member);
    clients.decrement(1.0);
}

/// Moves events from the feed to the socket until either side ends. A send to a client that
/// stopped reading can block; the feed's verdict (too slow) is watched meanwhile, so such a client
/// is closed instead of holding its task forever.
async fn pump(
    mut socket: WebSocket,
    mut rx: mpsc::Receiver<String>,
    mut end_rx: tokio::sync::oneshot::Receiver<Ended>,
    shutdown: tokio_util::sync::CancellationToken,
    budget: &Budget,
    metrics: &WsMetrics,
) {
    let sent = &metrics.events_sent;
    let cut_off = budget.cut_off();
    let too_much = || Ended::Close(1008, MEMORY_LIMIT_REASON.into());
    let ended = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ended::Close(1001, "eventgate is shutting down".into()),
            _ = cut_off.cancelled() => break too_much(),
            ended = &mut end_rx => break ended.unwrap_or(Ended::Done),
            text = rx.recv() => {
                let Some(text) = text else { return };
                let n = text.len();
                tokio::select! {
                    r = socket.send(Message::Text(text.into())) => {
                        // Counted until written: an event stuck in a send is still held.
                        budget.release(n);
                        if r.is_err() {
                            return;
                        }
                        sent.increment(1);
                    }
                    _ = cut_off.cancelled() => break too_much(),
                    ended = &mut end_rx => break ended.unwrap_or(Ended::Done),
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    };
    match ended {
        Ended::Close(1008, reason) => {
            metrics.slow_disconnects.increment(1);
            tracing::info!(reason, "closing a slow websocket client");
            // Nothing more is held for it, from now on.
            budget.release_all();
            drop(rx);
            // The client is not reading: a close frame may never get through; don't wait for it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close(socket, 1008, reason)).await;
        }
        Ended::Close(code, reason) => {
            let goodbye = async {
                if drain(&mut socket, &mut rx, budget).await {
                    close(socket, code, reason).await;
                }
            };
            if code == 1001 {
                // Shutdown waits for this session (it holds its connection's slot): a client that
                // does not read must not take the whole shutdown timeout.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), goodbye).await;
            } else {
                goodbye.await;
            }
        }
        Ended::Done => {
            drain(&mut socket, &mut rx, budget).await;
        }
    }
}

/// Sends what is still buffered; false when the socket failed.
async fn drain(socket: &mut WebSocket, rx: &mut mpsc::Receiver<String>, budget: &Budget) -> bool {
    while let Ok(text) = rx.try_recv() {
        let n = text.len();
        let sent = socket.send(Message::Text(text.into())).await;
        budget.release(n);
        if sent.is_err() {
            return false;
        }
    }
    true
}

/// Where a feeder puts a client's events.
struct Out {
    tx: mpsc::Sender<String>,
    budget: Budget,
    slow_after: std::time::Duration,
}

/// Queues one event for the client, counted against the memory limit first; a buffer that stays
/// full for `slow_after` means the client is too slow.
async fn offer(out: &Out, text: String) -> Result<(), Ended> {
    let n = text.len();
    if !out.budget.reserve(n) {
        return Err(Ended::Close(1008, MEMORY_LIMIT_REASON.into()));
    }
    let slow_after = out.slow_after;
    let result = match out.tx.send_timeout(text, slow_after).await {
        Ok(()) => return Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Ended::Close(
            1008,
            format!(
                "client too slow: {} events waiting for {slow_after:?}; reconnect with start_seq to resume",
                out.tx.max_capacity()
            ),
        ),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Ended::Done,
    };
    out.budget.release(n);
    Err(result)
}

/// Puts the stream position into an event as the `streamseq` extension. The result is allocated to
/// its exact length, which is what the memory limit counts.
fn with_seq(json: &[u8], seq: u64) -> String {
    let text = String::from_utf8_lossy(json);
    match text.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"streamseq\":{seq}}}"),
        Some(rest) => {
            use std::fmt::Write;
            let mut s = String::with_capacity(rest.len() + 34);
            let _ = write!(s, "{{\"streamseq\":{seq},");
            s.push_str(rest);
            s
        }
        None => text.into_owned(),
    }
}

async fn feed_jetstream(
    js: jetstream::Context,
    stream: String,
    filter: Filter,
    start: Start,
    out: Out,
    end: tokio::sync::oneshot::Sender<Ended>,
) {
    let result = async {
        // Right after start the mirror may still be creating the stream: give it a moment.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let stream = loop {
            match js.get_stream(&stream).await {
                Ok(s) => break s,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(Ended::Close(1011, format!("event stream: {e}"))),
            }
        };
        // Refuse a position the stream no longer has, rather than silently starting later.
        if let Start::Seq(seq) = start {
            let mut stream = stream.clone();
            if let Ok(info) = stream.info().await
                && seq < info.state.first_sequence
            {
                return Err(Ended::Close(
                    4410,
                    format!(
                        "unrecoverable position: sequence {seq} is older than the stream's first, {}",
                        info.state.first_sequence
                    ),
                ));
            }
        }
        let deliver_policy = match start {
            Start::New => consumer::DeliverPolicy::New,
            Start::All => consumer::DeliverPolicy::All,
            Start::Seq(s) => consumer::DeliverPolicy::ByStartSequence { start_sequence: s },
            Start::Time(t) => consumer::DeliverPolicy::ByStartTime { start_time: t },
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.subject.clone(),
                deliver_policy,
                // Small pulls: hundreds of watchers share one NATS connection, whose pending data
                // the server caps (64 MiB by default) before it drops the connection.
                max_batch: WATCH_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| Ended::Close(1011, format!("cannot create a consumer: {e}")))?;
        let mut messages =
            consumer.messages().await.map_err(|e| Ended::Close(1011, format!("cannot read the stream: {e}")))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| Ended::Close(1011, format!("stream read failed: {e}")))?;
            // Filters on `type` or `validation` read the event itself (read in place, only then).
            if filter.types.is_some() || filter.validations.is_some() {
                let stored = crate::subscriptions::encode::Stored::parse(&m.payload).ok();
                let attr = |name: &str| stored.as_ref().and_then(|s| s.attr(name));
                if !filter.keeps(attr("type").as_deref(), attr("validation").as_deref()) {
                    continue;
                }
            }
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            offer(&out, with_seq(&m.payload, seq)).await?;
        }
        Ok::<(), Ended>(())
    }
    .await;
    let _ = end.send(result.err().unwrap_or(Ended::Done));
}

async fn feed_local(
    mut rx: broadcast::Receiver<Arc<LiveEvent>>,
    filter: Filter,
    out: Out,
    end: tokio::sync::oneshot::Sender<Ended>,
) {
    let result = loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                break Err(Ended::Close(1008, format!("client too slow: missed {n} events")));
            }
            Err(broadcast::error::RecvError::Closed) => break Ok(()),
        };
        if !subject_matches(&filter.subject, &e.subject) || !filter.keeps(Some(&e.ce_type), Some(e.validation)) {
            continue;
        }
        if let Err(ended) = offer(&out, with_seq(&e.json, e.seq)).await {
            break Err(ended);
        }
    };
    let _ = end.send(result.err().unwrap_or(Ended::Done));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("p.orders", "p.orders"));
        assert!(subject_matches("p.>", "p.orders.eu"));
        assert!(subject_matches("p.user.*.signedup", "p.user.42.signedup"));
        assert!(!subject_matches("p.user.*.signedup", "p.user.42.x.signedup"));
        assert!(!subject_matches("p.orders", "p.orders.eu"));
        assert!(topic_filter("a.*.b").is_ok() && topic_filter("a.>").is_ok());
        assert!(topic_filter("a.>.b").is_err() && topic_filter("a*").is_err() && topic_filter("a..b").is_err());
    }

    /// The sum of the live clients' counts.
    fn held(pool: &WsMemory) -> usize {
        pool.lock().values().map(|s| s.bytes.load(Ordering::Acquire)).filter(|b| *b != RELEASED).sum()
    }

    #[test]
    fn events_are_counted_in_and_out() {
        let pool = WsMemory::new(1000);
        let a = pool.join();
        let b = pool.join();
        assert!(a.0.reserve(100) && a.0.reserve(50) && b.0.reserve(200));
        assert_eq!(pool.buffered(), 350);
        a.0.release(100);
        assert_eq!(pool.buffered(), 250);
        assert_eq!(held(&pool), 250);
        // A client that leaves releases what it still holds.
        drop(b);
        assert_eq!(pool.buffered(), 50);
        assert_eq!(pool.lock().len(), 1);
        drop(a);
        assert_eq!(pool.buffered(), 0);
        assert!(pool.lock().is_empty());
    }

    #[test]
    fn passing_the_limit_cuts_off_the_largest_client_first() {
        let pool = WsMemory::new(1000);
        let (a, b, c) = (pool.join(), pool.join(), pool.join());
        assert!(a.0.reserve(300) && b.0.reserve(450) && c.0.reserve(200));
        // 950 + 100 > 1000: b, holding the most, goes; the event is queued for c.
        assert!(c.0.reserve(100));
        assert!(b.0.cut_off().is_cancelled() && b.0.is_cut());
        assert!(!a.0.cut_off().is_cancelled() && !c.0.cut_off().is_cancelled());
        assert_eq!(pool.buffered(), 600);
        assert_eq!(held(&pool), 600);
        // Nothing more is counted for a client that was cut off, and its pump's late releases and
        // its leaving change nothing.
        assert!(!b.0.reserve(10));
        b.0.release(450);
        drop(b);
        assert_eq!(pool.buffered(), 600);
        // The client offering the event may itself be the largest: then it goes, and the event
        // is not queued.
        assert!(!c.0.reserve(500));
        assert!(c.0.cut_off().is_cancelled());
        assert_eq!(pool.buffered(), 300);
        assert!(!a.0.is_cut());
    }

    #[test]
    fn clients_are_cut_off_until_the_total_fits() {
        let pool = WsMemory::new(1000);
        let members: Vec<Member> = (0..5).map(|_| pool.join()).collect();
        for (i, m) in members.iter().enumerate() {
            assert!(m.0.reserve(150 + i));
        }
        // 760, plus 600 being counted right now by concurrent offers (in the total, not yet in a
        // client's count): the three largest go, 154 + 153 + 152.
        pool.add(600);
        assert_eq!(pool.make_room(), 3);
        assert!(members[4].0.is_cut() && members[3].0.is_cut() && members[2].0.is_cut());
        assert!(!members[1].0.is_cut() && !members[0].0.is_cut());
        assert_eq!(pool.buffered(), 760 - 459 + 600);
        // When no client holds anything, there is nothing to cut: no endless loop.
        drop(members);
        assert_eq!(pool.buffered(), 600);
        let idle = pool.join();
        pool.add(1000);
        assert_eq!(pool.make_room(), 0);
        assert!(!idle.0.is_cut());
        pool.sub(1600);
        drop(idle);
        assert_eq!(pool.buffered(), 0);
    }

    #[test]
    fn concurrent_offers_and_cut_offs_leak_nothing() {
        let pool = WsMemory::new(50_000);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let member = pool.join();
                        let mut queued = Vec::new();
                        for i in 0..200 {
                            let n = 100 + (t * 7 + i + round) % 300;
                            if !member.0.reserve(n) {
                                break;
                            }
                            queued.push(n);
                            if i % 3 == 0 {
                                member.0.release(queued.remove(0));
                            }
                        }
                        assert!(pool.buffered() <= 50_000 + 8 * 400, "{}", pool.buffered());
                        if round % 2 == 0 {
                            for n in queued {
                                member.0.release(n);
                            }
                        }
                        // Odd rounds leave with events still counted: dropping releases them.
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.buffered(), 0);
        assert!(pool.lock().is_empty());
    }

    #[test]
    fn stream_position_is_spliced_into_the_event() {
        assert_eq!(with_seq(br#"{"id":"x"}"#, 7), r#"{"streamseq":7,"id":"x"}"#);
        assert_eq!(with_seq(b"{}", 7), r#"{"streamseq":7}"#);
        let long = with_seq(br#"{"a":1}"#, u64::MAX);
        assert_eq!(long.len(), long.capacity(), "allocated to its length, which the memory limit counts");
        let v: serde_json::Value = serde_json::from_str(&with_seq(br#"{"a":1}"#, 3)).unwrap();
        assert_eq!(v["streamseq"], 3);
    }
}
