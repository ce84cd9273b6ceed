//! One client connection, proxied to one broker connection.
//!
//! A connection is two pipelines joined by an ordered queue of [`Pending`] answers:
//!
//! ```text
//!  client ──frames──▶ requests() ──original bytes──▶ broker
//!                        │ Pending (one per expected answer, pushed *before* the request is sent)
//!                        ▼
//!  client ◀──frames── responses() ◀──frames──────────── broker
//! ```
//!
//! Kafka answers the requests of one connection in order, so the head of the queue always says
//! what the next broker frame must be: its correlation id is checked, and only the responses that
//! carry broker addresses or API versions are decoded and rewritten. Answers eventgate makes itself
//! ([`Pending::Local`]) take their place in the same queue, so the client sees every answer in the
//! order it asked. Requests without an answer (`acks=0` produce) push nothing.
//!
//! Both pipelines read whole frames into a [`FrameBuffer`] and write batches of frames with one
//! vectored write; a frame that needs no change is forwarded as the very bytes that arrived.
//! Any error closes only this connection, with one log line that names the peer and the stage.
//!
//! A connection costs nothing until used: the broker connection is opened when the client's first
//! bytes arrive, and a connection with no request in flight that stays silent for
//! `idle_timeout_ms` is closed.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Gateway, Target, produce};
use crate::mirror::Job;
use crate::wire::WireError;
use crate::wire::frame::FrameBuffer;
use crate::wire::header::{RequestMeta, response_correlation_id, response_header_len};
use crate::wire::rewrite::{ResponseAction, RewriteError, recode_produce_response, rewrite_response};
use crate::wire::scan;
use crate::wire::versions;

/// An answer the client is owed, in request order.
#[derive(Debug)]
pub enum Pending {
    /// The broker's next frame answers this request.
    Upstream {
        correlation_id: i32,
        api_key: i16,
        api_version: i16,
        action: ResponseAction,
        /// Partition errors eventgate merges into a Produce answer.
        merge: Option<Box<produce::Merge>>,
        /// Produce partitions to mirror once the broker has accepted them.
        mirror: Option<Box<Vec<produce::Mirrored>>>,
        /// The client expects no answer (`acks=0` sent as `acks=1` for the mirror): consume it.
        swallow: bool,
    },
    /// eventgate answers this request itself with these bytes.
    Local(Bytes),
    /// Close the connection once every earlier answer is out (an `acks=0` produce was refused).
    Close(String),
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("reading from client: {0}")]
    ClientRead(std::io::Error),
    #[error("writing to client: {0}")]
    ClientWrite(std::io::Error),
    #[error("reading from broker: {0}")]
    BrokerRead(std::io::Error),
    #[error("writing to broker: {0}")]
    BrokerWrite(std::io::Error),
    #[error("bad request frame from client: {0}")]
    ClientFrame(WireError),
    #[error("bad response frame from broker: {0}")]
    BrokerFrame(WireError),
    #[error("client closed the connection in the middle of a {0}-byte partial request")]
    ClientClosedMidFrame(usize),
    #[error("broker closed the connection with {in_flight} request(s) unanswered")]
    BrokerClosed { in_flight: usize },
    #[error("broker sent a response with correlation id {got} while {expected} was expected")]
    UnexpectedCorrelation { expected: i32, got: i32 },
    #[error("broker sent a response with correlation id {0} to no outstanding request")]
    UnsolicitedResponse(i32),
    #[error("refused an acks=0 produce request, so closing the connection as a broker would: {0}")]
    RefusedAcksZero(String),
    #[error("rewriting {api:?} v{version} response: {source}")]
    Rewrite { api: i16, version: i16, source: RewriteError },
    #[error("idle for {0:?} with no request in flight (idle_timeout_ms)")]
    Idle(std::time::Duration),
}

/// What the client did before its first byte.
enum FirstBytes {
    Arrived,
    /// It left, went idle for the idle timeout, or eventgate is shutting down.
    Gone(&'static str),
}

/// Waits, holding nothing but the socket, until the client sends its first byte.
async fn first_bytes(gw: &Gateway, client: &TcpStream) -> FirstBytes {
    let idle = async {
        match gw.config.idle_timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = gw.shutdown.cancelled() => FirstBytes::Gone("eventgate is shutting down"),
        _ = idle => FirstBytes::Gone("idle timeout before the first request"),
        n = client.peek(&mut probe) => match n {
            Ok(0) | Err(_) => FirstBytes::Gone("client left before its first request"),
            Ok(_) => FirstBytes::Arrived,
        },
    }
}

/// Serves one accepted client until either side closes or eventgate shuts down. The broker
/// connection is opened only once the client has sent something: a connection that is never used
/// costs eventgate one socket, not two, and no buffers.
pub async fn serve(gw: Arc<Gateway>, client: TcpStream, peer: SocketAddr, target: Target) {
    let _open = gw.metrics.connection_opened();
    if let FirstBytes::Gone(why) = first_bytes(&gw, &client).await {
        gw.metrics.idle_closed.increment(u64::from(why.starts_with("idle")));
        tracing::debug!(%peer, why, "connection closed");
        return;
    }
    // An upstream connection of eventgate's own that arrived back here: a loop. Refuse it, or each
    // request would open yet another connection until every descriptor is gone.
    if gw.is_own_upstream_connection(peer) {
        gw.metrics.connection_errors.increment(1);
        tracing::error!(
            %peer,
            ?target,
            "closing a connection from eventgate itself: an upstream address leads back to eventgate (check \
             --upstream and the brokers' advertised listeners)"
        );
        return;
    }
    let (broker, broker_addr, _outgoing) = match gw.connect(target).await {
        Ok(c) => c,
        Err(e) => {
            gw.metrics.connection_errors.increment(1);
            tracing::warn!(%peer, ?target, error = %e, "closing client connection: broker unreachable");
            return;
        }
    };
    // Kafka frames are latency-sensitive and already batched by clients: no Nagle delay.
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (broker_rd, broker_wr) = broker.into_split();
    let (tx, rx) = mpsc::channel(gw.config.max_in_flight);
    let abort = CancellationToken::new();
    let activity = Arc::new(Activity::new());
    // The idle watchdog is a task of its own: its timer is polled only when it fires, never on the
    // request path.
    let watchdog = gw.config.idle_timeout.map(|t| tokio::spawn(watch_idle(t, activity.clone(), abort.clone())));
    let on_error = |r: Result<(), ConnError>| {
        if r.is_err() {
            abort.cancel();
        }
        r
    };
    let (req, resp) =
        tokio::join!(async { on_error(requests(&gw, client_rd, broker_wr, tx, &abort, &activity).await) }, async {
            on_error(responses(&gw, broker_rd, client_wr, rx, &abort, &activity.in_flight).await)
        },);
    abort.cancel();
    if let Some(w) = watchdog {
        w.abort();
    }
    let result = match (activity.idle.load(Ordering::Acquire), gw.config.idle_timeout) {
        (true, Some(t)) => {
            gw.metrics.idle_closed.increment(1);
            Err(ConnError::Idle(t))
        }
        _ => req.and(resp),
    };
    match result {
        Ok(()) => tracing::debug!(%peer, broker = %broker_addr, "connection closed"),
        Err(e) => {
            gw.metrics.connection_errors.increment(1);
            match &e {
                ConnError::ClientRead(_)
                | ConnError::ClientWrite(_)
                | ConnError::ClientClosedMidFrame(_)
                | ConnError::Idle(_) => {
                    tracing::info!(%peer, broker = %broker_addr, error = %e, "connection closed")
                }
                _ => tracing::warn!(%peer, broker = %broker_addr, error = %e, "connection closed"),
            }
        }
    }
}

/// What the idle watchdog reads: shared by the two halves of one connection.
struct Activity {
    started: tokio::time::Instant,
    /// Requests sent upstream whose answers have not come back.
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the client's latest bytes.
    last_read_ms: AtomicU64,
    /// The watchdog closed the connection.
    idle: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_read_ms: AtomicU64::new(0),
            idle: AtomicBool::new(false),
        }
    }

    /// Notes that the client sent something.
    fn touch(&self) {
        self.last_read_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Closes the connection (through `abort`) once the client has sent nothing for `after` while no
/// request was in flight (a long Fetch waiting for data is not idleness).
async fn watch_idle(after: std::time::Duration, a: Arc<Activity>, abort: CancellationToken) {
    let mut deadline = a.started + after;
    loop {
        tokio::select! {
            _ = abort.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let last = a.started + std::time::Duration::from_millis(a.last_read_ms.load(Ordering::Relaxed));
        let now = tokio::time::Instant::now();
        if now >= last + after && a.in_flight.load(Ordering::Acquire) == 0 {
            a.idle.store(true, Ordering::Release);
            abort.cancel();
            return;
        }
        deadline = (last + after).max(now + after / 2);
    }
}

/// What to do with one request frame.
struct Plan {
    /// Bytes to send to the broker.
    forward: Option<Bytes>,
    /// The answer owed to the client, if any.
    pending: Option<Pending>,
    /// Stop reading requests: the connection closes after this one.
    close: bool,
}

/// Produce requests larger than this are inspected with [`tokio::task::block_in_place`], so that
/// checking thousands of records never holds up the other connections of the same worker thread.
const INLINE_INSPECTION_BYTES: usize = 256 * 1024;

fn plan_request(gw: &Gateway, frame: Bytes) -> Result<Plan, WireError> {
    let meta = RequestMeta::peek(&frame)?;
    gw.metrics.request(meta.api_key);
    let upstream = |merge, mirror, swallow| {
        Some(Pending::Upstream {
            correlation_id: meta.correlation_id,
            api_key: meta.api_key,
            api_version: meta.api_version,
            action: ResponseAction::for_request(meta.api_key, meta.api_version),
            merge,
            mirror,
            swallow,
        })
    };
    let forward = |frame, pending| Plan { forward: Some(frame), pending, close: false };
    let plan = match meta.key() {
        Some(ApiKey::ApiVersions) if meta.api_version > versions::API_VERSIONS_MAX => Plan {
            forward: None,
            pending: Some(Pending::Local(versions::unsupported_version_frame(meta.correlation_id))),
            close: false,
        },
        Some(ApiKey::Produce) => {
            let mirror_on = gw.mirror.as_ref().is_some_and(|m| m.active());
            let inspect = || produce::inspect(&gw.validation, &gw.validation_metrics, &meta, &frame, mirror_on);
            let multi_thread = || {
                tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            };
            let inspection = if frame.len() > INLINE_INSPECTION_BYTES && multi_thread() {
                tokio::task::block_in_place(inspect)?
            } else {
                inspect()?
            };
            if let Some(m) = &gw.mirror {
                for job in inspection.refused {
                    m.submit(job);
                }
            }
            match inspection.plan {
                produce::Plan::Forward { frame: new, client_acks, broker_answers, merge, mirror } => {
                    let frame = new.unwrap_or(frame);
                    let pending = match (client_acks, broker_answers) {
                        (0, false) => None,
                        (0, true) => upstream(None, mirror, true),
                        _ => upstream(merge, mirror, false),
                    };
                    forward(frame, pending)
                }
                produce::Plan::Answer(answer) => {
                    Plan { forward: None, pending: Some(Pending::Local(answer)), close: false }
                }
                produce::Plan::ForwardThenClose { frame, reason } => {
                    Plan { forward: frame, pending: Some(Pending::Close(reason)), close: true }
                }
            }
        }
        _ => forward(frame, upstream(None, None, false)),
    };
    Ok(plan)
}

async fn requests(
    gw: &Gateway,
    mut client: OwnedReadHalf,
    mut broker: OwnedWriteHalf,
    tx: mpsc::Sender<Pending>,
    abort: &CancellationToken,
    activity: &Activity,
) -> Result<(), ConnError> {
    let mut buf = FrameBuffer::new(gw.config.max_frame_bytes);
    let mut out = VecDeque::new();
    loop {
        while let Some(frame) = buf.next_frame().map_err(ConnError::ClientFrame)? {
            gw.metrics.bytes_from_clients.increment(frame.len() as u64);
            let plan = plan_request(gw, frame).map_err(ConnError::ClientFrame)?;
            if let Some(p) = plan.pending {
                if matches!(p, Pending::Upstream { .. }) {
                    activity.in_flight.fetch_add(1, Ordering::AcqRel);
                }
                // The answer is queued before its request leaves, so it is always there to match.
                if let Err(mpsc::error::TrySendError::Full(p)) = tx.try_send(p) {
                    // max_in_flight reached: send what is buffered, then wait for room.
                    write_frames(&mut broker, &mut out).await.map_err(ConnError::BrokerWrite)?;
                    if tx.send(p).await.is_err() {
                        return Ok(());
                    }
                }
            }
            out.extend(plan.forward);
            if plan.close {
                write_frames(&mut broker, &mut out).await.map_err(ConnError::BrokerWrite)?;
                return Ok(());
            }
        }
        write_frames(&mut broker, &mut out).await.map_err(ConnError::BrokerWrite)?;
        let n = tokio::select! {
            biased;
            _ = abort.cancelled() => return Ok(()),
            _ = gw.shutdown.cancelled() => return Ok(()),
            n = buf.fill(&mut client) => n.map_err(ConnError::ClientRead)?,
        };
        activity.touch();
        if n == 0 {
            return match buf.buffered() {
                0 => Ok(()),
                partial => Err(ConnError::ClientClosedMidFrame(partial)),
            };
        }
    }
}

async fn responses(
    gw: &Arc<Gateway>,
    mut broker: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    abort: &CancellationToken,
    in_flight: &AtomicUsize,
) -> Result<(), ConnError> {
    let mut buf = FrameBuffer::new(gw.config.max_frame_bytes);
    let mut pending = VecDeque::new();
    let mut out = VecDeque::new();
    let mut requests_done = false;
    loop {
        while let Ok(p) = rx.try_recv() {
            pending.push_back(p);
        }
        loop {
            match pending.front() {
                Some(Pending::Local(_)) => {
                    if let Some(Pending::Local(bytes)) = pending.pop_front() {
                        out.push_back(bytes);
                    }
                }
                Some(Pending::Close(_)) => {
                    write_frames(&mut client, &mut out).await.map_err(ConnError::ClientWrite)?;
                    let reason = match pending.pop_front() {
                        Some(Pending::Close(reason)) => reason,
                        _ => String::new(),
                    };
                    return Err(ConnError::RefusedAcksZero(reason));
                }
                Some(Pending::Upstream { .. }) => {
                    let Some(frame) = buf.next_frame().map_err(ConnError::BrokerFrame)? else {
                        break;
                    };
                    let Some(Pending::Upstream {
                        correlation_id,
                        api_key,
                        api_version,
                        action,
                        merge,
                        mirror,
                        swallow,
                    }) = pending.pop_front()
                    else {
                        break;
                    };
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    gw.metrics.bytes_from_brokers.increment(frame.len() as u64);
                    let got = response_correlation_id(&frame).map_err(ConnError::BrokerFrame)?;
                    if got != correlation_id {
                        return Err(ConnError::UnexpectedCorrelation { expected: correlation_id, got });
                    }
                    if let Some(parts) = mirror {
                        let refused =
                            mirror_accepted(gw, api_version, &frame, *parts).map_err(ConnError::BrokerFrame)?;
                        if swallow {
                            // The client sent acks=0: no answer goes back, but a refusal closes
                            // the connection, as the broker would have.
                            if refused > 0 {
                                return Err(ConnError::RefusedAcksZero(format!(
                                    "the broker refused {refused} partition(s)"
                                )));
                            }
                            continue;
                        }
                    }
                    let mut map = |id: i32, host: &str, port: i32| gw.advertise(id, host, port);
                    let rewritten = match merge {
                        Some(merge) => recode_produce_response(api_version, &frame, &mut map, |resp| {
                            produce::merge_into(resp, &merge, api_version)
                        })
                        .map(Some),
                        None => rewrite_response(action, api_version, &frame, &mut map),
                    };
                    let answer = match rewritten {
                        Ok(Some(rewritten)) => {
                            gw.metrics.responses_rewritten.increment(1);
                            rewritten
                        }
                        Ok(None) => frame,
                        Err(source) => {
                            return Err(ConnError::Rewrite { api: api_key, version: api_version, source });
                        }
                    };
                    out.push_back(answer);
                }
                None => {
                    if let Some(frame) = buf.next_frame().map_err(ConnError::BrokerFrame)? {
                        // The answers before it are the client's: deliver them, then close.
                        write_frames(&mut client, &mut out).await.map_err(ConnError::ClientWrite)?;
                        let got = response_correlation_id(&frame).unwrap_or(-1);
                        return Err(ConnError::UnsolicitedResponse(got));
                    }
                    break;
                }
            }
        }
        write_frames(&mut client, &mut out).await.map_err(ConnError::ClientWrite)?;
        if requests_done && pending.is_empty() {
            let _ = client.shutdown().await;
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = abort.cancelled() => return Ok(()),
            p = rx.recv(), if !requests_done => match p {
                Some(p) => pending.push_back(p),
                None => requests_done = true,
            },
            n = buf.fill(&mut broker) => {
                if n.map_err(ConnError::BrokerRead)? == 0 {
                    return match pending.len() {
                        0 => {
                            tracing::debug!("broker closed an idle connection");
                            Ok(())
                        }
                        in_flight => Err(ConnError::BrokerClosed { in_flight }),
                    };
                }
            }
        }
    }
}

/// Hands the partitions the broker accepted to the mirror, with their offsets. Returns how many
/// partitions the broker refused.
fn mirror_accepted(
    gw: &Gateway,
    version: i16,
    frame: &Bytes,
    parts: Vec<produce::Mirrored>,
) -> Result<usize, WireError> {
    let Some(mirror) = &gw.mirror else { return Ok(0) };
    let hlen = response_header_len(ApiKey::Produce, version, frame.get(4..).unwrap_or_default())?;
    let mut accepted = HashMap::new();
    let mut refused = 0;
    scan::produce_response(&frame[4 + hlen..], version, |p| {
        if p.error_code == 0 {
            accepted.insert((p.topic, p.partition), (p.base_offset, p.log_append_time));
        } else {
            refused += 1;
        }
    })?;
    for part in parts {
        let Some(&(base, append)) = accepted.get(&(part.topic.as_bytes(), part.partition)) else {
            continue;
        };
        mirror.submit(Job {
            topic: part.topic,
            partition: part.partition,
            base_offset: Some(base),
            log_append_time: append,
            records: part.records,
            outcomes: part.outcomes,
            route: part.route,
        });
    }
    Ok(refused)
}

/// Writes every frame in `out` with as few system calls as the socket allows, and empties it.
async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, out: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    while !out.is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(out.iter()) {
                *slot = IoSlice::new(frame);
                n += 1;
            }
            w.write_vectored(&slices[..n]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = out.front_mut() else { break };
            if front.len() <= left {
                left -= front.len();
                out.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `chunk` bytes per call.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        let frames: Vec<Bytes> = (0u8..100).map(|i| Bytes::from(vec![i; (i as usize % 7) + 1])).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for chunk in [1, 3, 5, 1000] {
            let mut out: VecDeque<Bytes> = frames.iter().cloned().collect();
            let mut w = Trickle { got: Vec::new(), chunk };
            write_frames(&mut w, &mut out).await.unwrap();
            assert_eq!(w.got, expected, "chunk {chunk}");
            assert!(out.is_empty());
        }
    }
}
