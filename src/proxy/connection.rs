//! One client connection, proxied to one broker connection: the driver of the stage chain.
//!
//! A connection is two pipelines joined by an ordered queue of [`Pending`] answers:
//!
//! ```text
//!  client ──frames──▶ requests(): chain.request() ──frames──▶ broker
//!                        │ Pending (one per expected answer, pushed *before* the request is sent)
//!                        ▼
//!  client ◀──frames── responses(): the request's hooks ◀──frames── broker
//! ```
//!
//! The driver knows nothing of any Kafka behaviour: every request goes through the
//! [`Chain`](super::chain::Chain) (see that module for the stages and their contract), which says
//! what to forward and what answer is owed. Kafka answers the requests of one connection in order,
//! so the head of the queue always says what the next broker frame must be: its correlation id is
//! checked, and it goes through the hooks its request collected (none for most: then it leaves as
//! the bytes that arrived). Answers eventgate makes itself ([`Pending::Local`]) take their place in
//! the same queue, so the client sees every answer in the order it asked. Requests without an
//! answer (`acks=0` produce) push nothing; a broker frame nobody asked for closes the connection,
//! after the answers before it.
//!
//! Both pipelines read whole frames into a [`FrameBuffer`] and write batches of frames with one
//! vectored write. The byte streams are boxed halves ([`Halves`]), so the transport under the chain
//! (TCP now, TLS next, an in-memory pipe in tests) is chosen at accept and connect time. Any error
//! closes only this connection, with one log line that names the peer and the stage.
//!
//! A connection costs nothing until used: the broker connection is opened when the client's first
//! bytes arrive, and a connection with no request in flight that stays silent for
//! `idle_timeout_ms` is closed.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::chain::{self, AnswerCtx, Ctx, Failed, Pending, Session};
use super::{Gateway, Target};
use crate::wire::WireError;
use crate::wire::frame::FrameBuffer;
use crate::wire::header::{RequestMeta, response_correlation_id};

/// The reading half of a byte stream, whatever the transport.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a byte stream, whatever the transport.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Both halves of one byte stream.
pub struct Halves {
    pub read: Reader,
    pub write: Writer,
}

impl Halves {
    /// A TCP stream's halves (split without a lock).
    pub fn tcp(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self { read: Box::new(read), write: Box::new(write) }
    }

    /// Any other stream's halves (TLS, an in-memory pipe).
    pub fn of<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self { read: Box::new(read), write: Box::new(write) }
    }
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
    #[error("{api:?} v{version}: {source}")]
    Stage { api: i16, version: i16, source: Failed },
    #[error("closed by stage {stage}: {reason}")]
    Closed { stage: &'static str, reason: String },
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
    // Kafka frames are latency-sensitive and already batched by clients: no Nagle delay.
    let _ = client.set_nodelay(true);
    let mut target = target;
    let client = match &gw.tls.server {
        None => Halves::tcp(client),
        Some(tls) => match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, tls.acceptor().accept(client)).await {
            Ok(Ok(stream)) => {
                // SNI routing: the name the client asked for says which broker it wants.
                if let (Some(sni), Some(name)) = (&gw.config.sni, stream.get_ref().1.server_name())
                    && let Some(node_id) = sni.node(name)
                {
                    target = Target::Node(node_id);
                }
                Halves::of(stream)
            }
            Ok(Err(e)) => {
                gw.metrics.connection_errors.increment(1);
                tracing::info!(%peer, error = %e, "connection closed: TLS handshake with the client failed");
                return;
            }
            Err(_) => {
                gw.metrics.connection_errors.increment(1);
                tracing::info!(%peer, "connection closed: the client did not finish its TLS handshake in time");
                return;
            }
        },
    };
    let (broker, broker_addr, _outgoing) = match gw.connect(target).await {
        Ok(c) => c,
        Err(e) => {
            gw.metrics.connection_errors.increment(1);
            tracing::warn!(%peer, ?target, error = %e, "closing client connection: broker unreachable");
            return;
        }
    };
    let _ = broker.set_nodelay(true);
    let broker = match &gw.tls.upstream {
        None => Halves::tcp(broker),
        Some(tls) => {
            let host = crate::config::split_host_port(&broker_addr).map(|(h, _)| h.to_owned()).unwrap_or_default();
            match tls.connect(&host, broker).await {
                Ok(stream) => Halves::of(stream),
                Err(e) => {
                    gw.metrics.connection_errors.increment(1);
                    tracing::warn!(%peer, broker = %broker_addr, error = %e, "closing client connection: broker unreachable");
                    return;
                }
            }
        }
    };
    let session = Session::new(peer);
    let result = drive(&gw, &session, client, broker).await;
    let who = session.producer();
    let (client_id, principal) = (who.client_id.as_deref().unwrap_or("-"), who.principal.as_deref().unwrap_or("-"));
    match result {
        Ok(()) => tracing::debug!(%peer, client_id, principal, broker = %broker_addr, "connection closed"),
        Err(e) => {
            gw.metrics.connection_errors.increment(1);
            match &e {
                ConnError::ClientRead(_)
                | ConnError::ClientWrite(_)
                | ConnError::ClientClosedMidFrame(_)
                | ConnError::Idle(_) => {
                    tracing::info!(%peer, client_id, principal, broker = %broker_addr, error = %e, "connection closed")
                }
                _ => {
                    tracing::warn!(%peer, client_id, principal, broker = %broker_addr, error = %e, "connection closed")
                }
            }
        }
    }
}

/// Runs one connection over any transport until either side closes, an error, the idle timeout,
/// or shutdown.
pub async fn drive(gw: &Arc<Gateway>, session: &Session, client: Halves, broker: Halves) -> Result<(), ConnError> {
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
    let (req, resp) = tokio::join!(
        async { on_error(requests(gw, session, client.read, broker.write, tx, &abort, &activity).await) },
        async { on_error(responses(gw, session, broker.read, client.write, rx, &abort, &activity.in_flight).await) },
    );
    abort.cancel();
    if let Some(w) = watchdog {
        w.abort();
    }
    match (activity.idle.load(Ordering::Acquire), gw.config.idle_timeout) {
        (true, Some(t)) => {
            gw.metrics.idle_closed.increment(1);
            Err(ConnError::Idle(t))
        }
        _ => req.and(resp),
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

async fn requests(
    gw: &Arc<Gateway>,
    session: &Session,
    mut client: Reader,
    mut broker: Writer,
    tx: mpsc::Sender<Pending>,
    abort: &CancellationToken,
    activity: &Activity,
) -> Result<(), ConnError> {
    let cx = Ctx { gw, session };
    let mut buf = FrameBuffer::new(gw.config.max_frame_bytes);
    let mut out = VecDeque::new();
    loop {
        while let Some((frame, room)) = buf.next_frame_in_room().map_err(ConnError::ClientFrame)? {
            gw.metrics.bytes_from_clients.increment(frame.len() as u64);
            let meta = RequestMeta::peek(&frame).map_err(ConnError::ClientFrame)?;
            gw.metrics.request(meta.api_key);
            let plan = gw.chain.request(&cx, meta, frame, room).map_err(|source| ConnError::Stage {
                api: meta.api_key,
                version: meta.api_version,
                source,
            })?;
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
            n = buf.fill(&mut client) => eof_is_end(n).map_err(ConnError::ClientRead)?,
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
    session: &Session,
    mut broker: Reader,
    mut client: Writer,
    mut rx: mpsc::Receiver<Pending>,
    abort: &CancellationToken,
    in_flight: &AtomicUsize,
) -> Result<(), ConnError> {
    let mut buf = FrameBuffer::for_answers(gw.config.max_frame_bytes);
    let mut pending = VecDeque::new();
    let mut out = VecDeque::new();
    let mut requests_done = false;
    // Answers owed are held here and in the channel: taking from the channel only while fewer
    // than `max_in_flight` are held keeps the request side waiting (bounded) when a broker stops
    // answering, instead of piling up requests.
    let most = gw.config.max_in_flight.max(1);
    loop {
        while pending.len() < most
            && let Ok(p) = rx.try_recv()
        {
            pending.push_back(p);
        }
        loop {
            match pending.front() {
                Some(Pending::Local(_)) => {
                    if let Some(Pending::Local(bytes)) = pending.pop_front() {
                        out.push_back(bytes);
                    }
                }
                Some(Pending::Close { .. }) => {
                    write_frames(&mut client, &mut out).await.map_err(ConnError::ClientWrite)?;
                    return Err(match pending.pop_front() {
                        Some(Pending::Close { stage, reason }) => ConnError::Closed { stage, reason },
                        _ => ConnError::Closed { stage: "?", reason: String::new() },
                    });
                }
                Some(Pending::Upstream { .. }) => {
                    let Some(frame) = buf.next_frame().map_err(ConnError::BrokerFrame)? else {
                        break;
                    };
                    let Some(Pending::Upstream { correlation_id, api_key, api_version, hooks }) = pending.pop_front()
                    else {
                        break;
                    };
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    gw.metrics.bytes_from_brokers.increment(frame.len() as u64);
                    let got = response_correlation_id(&frame).map_err(ConnError::BrokerFrame)?;
                    if got != correlation_id {
                        return Err(ConnError::UnexpectedCorrelation { expected: correlation_id, got });
                    }
                    if hooks.is_empty() {
                        out.push_back(frame);
                        continue;
                    }
                    let cx = AnswerCtx { gw, session, api_key, api_version };
                    match chain::answer(&cx, hooks, frame) {
                        Ok(Some(answer)) => out.push_back(answer),
                        Ok(None) => {}
                        Err(Failed { stage, source: chain::StageError::Close(reason) }) => {
                            write_frames(&mut client, &mut out).await.map_err(ConnError::ClientWrite)?;
                            return Err(ConnError::Closed { stage, reason });
                        }
                        Err(source) => return Err(ConnError::Stage { api: api_key, version: api_version, source }),
                    }
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
            p = rx.recv(), if !requests_done && pending.len() < most => match p {
                Some(p) => pending.push_back(p),
                None => requests_done = true,
            },
            n = buf.fill(&mut broker) => {
                if eof_is_end(n).map_err(ConnError::BrokerRead)? == 0 {
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

/// A TLS peer that closes without `close_notify` is an ordinary end here: Kafka frames carry their
/// own length, so a cut frame is still noticed (as a partial frame), and many clients close so.
fn eof_is_end(n: std::io::Result<usize>) -> std::io::Result<usize> {
    match n {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
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
mod tests;
