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
    let result = drive(&gw, Session { peer }, Halves::tcp(client), Halves::tcp(broker)).await;
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

/// Runs one connection over any transport until either side closes, an error, the idle timeout,
/// or shutdown.
pub async fn drive(gw: &Arc<Gateway>, session: Session, client: Halves, broker: Halves) -> Result<(), ConnError> {
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
        async { on_error(requests(gw, &session, client.read, broker.write, tx, &abort, &activity).await) },
        async { on_error(responses(gw, broker.read, client.write, rx, &abort, &activity.in_flight).await) },
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
        while let Some(frame) = buf.next_frame().map_err(ConnError::ClientFrame)? {
            gw.metrics.bytes_from_clients.increment(frame.len() as u64);
            let meta = RequestMeta::peek(&frame).map_err(ConnError::ClientFrame)?;
            gw.metrics.request(meta.api_key);
            let plan = gw.chain.request(&cx, meta, frame).map_err(|source| ConnError::Stage {
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
    mut broker: Reader,
    mut client: Writer,
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
                    let cx = AnswerCtx { gw, api_key, api_version };
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

    /// A client and a scripted broker around one driven connection, over in-memory pipes.
    mod driver {
        use std::collections::BTreeSet;

        use bytes::BytesMut;
        use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
        use kafka_protocol::messages::{
            ApiKey, ApiVersionsRequest, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
            ProduceRequest, ProduceResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        use tokio::io::{AsyncReadExt, DuplexStream};

        use super::super::*;
        use crate::proxy::produce::tests::{BAD, GOOD, TOPIC, reject, request as produce_request, validation};
        use crate::proxy::stages::testing::{decode_request, request, response_frame};

        fn gateway() -> Arc<Gateway> {
            let config = crate::config::Settings::default().resolve().expect("default settings resolve");
            Gateway::new(config, Arc::new(validation(reject())), None)
        }

        /// Starts the driver; returns the client's and the broker's ends, and the driver's result.
        fn start(gw: &Arc<Gateway>) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Result<(), ConnError>>) {
            let (client, client_side) = tokio::io::duplex(1 << 20);
            let (broker_side, broker) = tokio::io::duplex(1 << 20);
            let gw = gw.clone();
            let session = Session { peer: "127.0.0.1:1".parse().expect("address") };
            let task =
                tokio::spawn(
                    async move { drive(&gw, session, Halves::of(client_side), Halves::of(broker_side)).await },
                );
            (client, broker, task)
        }

        async fn read_frame(s: &mut DuplexStream) -> Option<Bytes> {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.ok()?;
            let mut frame = vec![0u8; 4 + i32::from_be_bytes(len) as usize];
            frame[..4].copy_from_slice(&len);
            s.read_exact(&mut frame[4..]).await.ok()?;
            Some(Bytes::from(frame))
        }

        fn correlation(frame: &[u8]) -> i32 {
            i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"))
        }

        fn with_correlation(frame: Bytes, id: i32) -> Bytes {
            let mut f = BytesMut::from(&frame[..]);
            f[8..12].copy_from_slice(&id.to_be_bytes());
            f.freeze()
        }

        fn produce_answer(correlation_id: i32, parts: &[(&str, i32)]) -> Bytes {
            let mut resp = ProduceResponse::default();
            for (topic, p) in parts {
                resp.responses.push(
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                        .with_partition_responses(vec![
                            PartitionProduceResponse::default().with_index(*p).with_base_offset(7),
                        ]),
                );
            }
            response_frame(ApiKey::Produce, 9, correlation_id, &resp)
        }

        /// Pipelined requests whose answers come from four places (eventgate alone, the broker
        /// as it sent it, the broker's with eventgate's refusals merged in, the broker's with
        /// addresses rewritten) reach the client in request order; requests eventgate answers
        /// itself never reach the broker, and a refused partition is left out of what does.
        #[tokio::test]
        async fn answers_keep_request_order_whoever_makes_them() {
            let gw = gateway();
            let (mut client, mut broker, task) = start(&gw);
            let v0 = request(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
            let mut too_new = v0.to_vec();
            too_new[6..8].copy_from_slice(&99i16.to_be_bytes());
            let requests = [
                Bytes::from(too_new),                                               // 1: local
                request(ApiKey::ListOffsets, 7, 2, &ListOffsetsRequest::default()), // 2: untouched
                with_correlation(produce_request(9, -1, &[(TOPIC, 0, &[GOOD]), (TOPIC, 1, &[BAD])]).1, 3), // 3: merged
                with_correlation(produce_request(9, -1, &[(TOPIC, 0, &[BAD])]).1, 4), // 4: local refusal
                request(ApiKey::Metadata, 12, 5, &MetadataRequest::default()),      // 5: rewritten
            ];
            // Pipelined: everything is written before any answer is read.
            for r in &requests {
                client.write_all(r).await.unwrap();
            }
            // The broker sees 2, 3 (without partition 1) and 5, in order, and answers them.
            let mut seen = Vec::new();
            for _ in 0..3 {
                let f = read_frame(&mut broker).await.expect("a request");
                let meta = RequestMeta::peek(&f).unwrap();
                seen.push(meta.correlation_id);
                let answer = match meta.correlation_id {
                    2 => response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default()),
                    3 => {
                        let sent: ProduceRequest = decode_request(&f);
                        let parts: BTreeSet<i32> =
                            sent.topic_data.iter().flat_map(|t| t.partition_data.iter().map(|p| p.index)).collect();
                        assert_eq!(parts, BTreeSet::from([0]), "the refused partition stays with eventgate");
                        produce_answer(3, &[(TOPIC, 0)])
                    }
                    _ => response_frame(ApiKey::Metadata, 12, 5, &MetadataResponse::default()),
                };
                broker.write_all(&answer).await.unwrap();
            }
            assert_eq!(seen, vec![2, 3, 5]);
            let mut got = Vec::new();
            for _ in 0..5 {
                got.push(read_frame(&mut client).await.expect("an answer"));
            }
            assert_eq!(got.iter().map(|f| correlation(f)).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
            assert_eq!(got[0], crate::wire::versions::unsupported_version_frame(1));
            assert_eq!(got[1], response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default()), "as sent");
            let merged: ProduceResponse = crate::proxy::stages::testing::decode_response(ApiKey::Produce, 9, &got[2]);
            let codes: Vec<(i32, i16)> =
                merged.responses[0].partition_responses.iter().map(|p| (p.index, p.error_code)).collect();
            assert_eq!(codes, vec![(0, 0), (1, crate::validate::batch::codes::INVALID_RECORD)]);
            drop(client);
            drop(broker);
            let _ = task.await;
        }

        /// A broker frame nobody asked for: the answers before it are delivered, then the
        /// connection closes with an error naming it.
        #[tokio::test]
        async fn an_unsolicited_broker_frame_closes_after_the_answers_before_it() {
            let gw = gateway();
            let (mut client, mut broker, task) = start(&gw);
            client.write_all(&request(ApiKey::ListOffsets, 7, 1, &ListOffsetsRequest::default())).await.unwrap();
            read_frame(&mut broker).await.expect("the request");
            let answer = response_frame(ApiKey::ListOffsets, 7, 1, &ListOffsetsResponse::default());
            let stray = response_frame(ApiKey::ListOffsets, 7, 77, &ListOffsetsResponse::default());
            broker.write_all(&[&answer[..], &stray[..]].concat()).await.unwrap();
            assert_eq!(read_frame(&mut client).await.expect("the answer"), answer);
            let result = task.await.unwrap();
            assert!(matches!(result, Err(ConnError::UnsolicitedResponse(77))), "{result:?}");
            assert!(read_frame(&mut client).await.is_none(), "closed");
        }

        /// An answer whose correlation id is not the next one owed closes the connection.
        #[tokio::test]
        async fn an_answer_out_of_order_closes_the_connection() {
            let gw = gateway();
            let (mut client, mut broker, task) = start(&gw);
            for id in [1, 2] {
                client.write_all(&request(ApiKey::ListOffsets, 7, id, &ListOffsetsRequest::default())).await.unwrap();
            }
            read_frame(&mut broker).await.expect("request 1");
            read_frame(&mut broker).await.expect("request 2");
            broker
                .write_all(&response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default()))
                .await
                .unwrap();
            let result = task.await.unwrap();
            assert!(matches!(result, Err(ConnError::UnexpectedCorrelation { expected: 1, got: 2 })), "{result:?}");
        }

        /// An `acks=0` request eventgate refuses: the valid rest is forwarded, then the connection
        /// closes, naming the stage; the producer never gets an answer.
        #[tokio::test]
        async fn a_refused_acks_zero_request_forwards_the_rest_then_closes() {
            let gw = gateway();
            let (mut client, mut broker, task) = start(&gw);
            let (_, frame) = produce_request(9, 0, &[(TOPIC, 0, &[GOOD]), (TOPIC, 1, &[BAD])]);
            client.write_all(&frame).await.unwrap();
            let sent: ProduceRequest = decode_request(&read_frame(&mut broker).await.expect("the valid rest"));
            assert_eq!(sent.topic_data[0].partition_data.len(), 1);
            let result = task.await.unwrap();
            match result {
                Err(ConnError::Closed { stage: "produce", reason }) => assert!(reason.contains("acks=0"), "{reason}"),
                other => panic!("{other:?}"),
            }
            assert!(read_frame(&mut client).await.is_none(), "no answer, closed");
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
