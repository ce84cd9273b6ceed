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

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::specs::ApiError;
use crate::mirror::sink::{LiveEvent, TYPE_HEADER, VALIDATION_HEADER};

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
fn topic_filter(t: &str) -> Result<(), String> {
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
fn subject_matches(pattern: &str, subject: &str) -> bool {
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
    ws: WebSocketUpgrade,
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
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
    let ws = if offered { ws.protocols([SUBPROTOCOL]) } else { ws };
    ws.on_upgrade(move |socket| serve(socket, state, filter, start))
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
    let clients = metrics::gauge!("eventgate_ws_clients");
    clients.increment(1.0);
    let (tx, rx) = mpsc::channel::<String>(state.buffer);
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Ended>();
    let feeder = match &state.js {
        Some(js) => {
            tokio::spawn(feed_jetstream(js.clone(), state.stream.clone(), filter, start, tx, end_tx, state.slow_after))
        }
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
            tokio::spawn(feed_local(state.live.subscribe(), filter, tx, end_tx, state.slow_after))
        }
    };
    pump(socket, rx, end_rx, state.shutdown.clone()).await;
    feeder.abort();
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
) {
    let sent = metrics::counter!("eventgate_ws_events_sent_total");
    let ended = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ended::Close(1001, "eventgate is shutting down".into()),
            ended = &mut end_rx => break ended.unwrap_or(Ended::Done),
            text = rx.recv() => {
                let Some(text) = text else { return };
                tokio::select! {
                    r = socket.send(Message::Text(text.into())) => {
                        if r.is_err() {
                            return;
                        }
                        sent.increment(1);
                    }
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
            metrics::counter!("eventgate_ws_slow_disconnects_total").increment(1);
            tracing::info!(reason, "closing a slow websocket client");
            // The client is not reading: a close frame may never get through; don't wait for it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close(socket, 1008, reason)).await;
        }
        Ended::Close(code, reason) => {
            while let Ok(text) = rx.try_recv() {
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            close(socket, code, reason).await;
        }
        Ended::Done => {
            while let Ok(text) = rx.try_recv() {
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Queues one event for the client; a buffer that stays full for `slow_after` means the client is
/// too slow.
async fn offer(tx: &mpsc::Sender<String>, text: String, slow_after: std::time::Duration) -> Result<(), Ended> {
    match tx.send_timeout(text, slow_after).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Ended::Close(
            1008,
            format!(
                "client too slow: {} events waiting for {slow_after:?}; reconnect with start_seq to resume",
                tx.max_capacity()
            ),
        )),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Ended::Done),
    }
}

/// Puts the stream position into an event as the `streamseq` extension.
fn with_seq(json: &[u8], seq: u64) -> String {
    let text = String::from_utf8_lossy(json);
    match text.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"streamseq\":{seq}}}"),
        Some(rest) => format!("{{\"streamseq\":{seq},{rest}"),
        None => text.into_owned(),
    }
}

async fn feed_jetstream(
    js: jetstream::Context,
    stream: String,
    filter: Filter,
    start: Start,
    tx: mpsc::Sender<String>,
    end: tokio::sync::oneshot::Sender<Ended>,
    slow_after: std::time::Duration,
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
            let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
            if !filter.keeps(header(TYPE_HEADER).as_deref(), header(VALIDATION_HEADER).as_deref()) {
                continue;
            }
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            offer(&tx, with_seq(&m.payload, seq), slow_after).await?;
        }
        Ok::<(), Ended>(())
    }
    .await;
    let _ = end.send(result.err().unwrap_or(Ended::Done));
}

async fn feed_local(
    mut rx: broadcast::Receiver<Arc<LiveEvent>>,
    filter: Filter,
    tx: mpsc::Sender<String>,
    end: tokio::sync::oneshot::Sender<Ended>,
    slow_after: std::time::Duration,
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
        if let Err(ended) = offer(&tx, with_seq(&e.json, e.seq), slow_after).await {
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

    #[test]
    fn stream_position_is_spliced_into_the_event() {
        assert_eq!(with_seq(br#"{"id":"x"}"#, 7), r#"{"streamseq":7,"id":"x"}"#);
        assert_eq!(with_seq(b"{}", 7), r#"{"streamseq":7}"#);
        let v: serde_json::Value = serde_json::from_str(&with_seq(br#"{"a":1}"#, 3)).unwrap();
        assert_eq!(v["streamseq"], 3);
    }
}
