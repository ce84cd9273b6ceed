//! Where mirrored events go: a JetStream stream, or (without NATS) an in-process feed.
//!
//! # Exactly once in the stream
//!
//! The JetStream sink publishes as a pipeline, over a NATS connection of its own
//! ([`super::publisher`]): up to `window` events (and [`WINDOW_BYTES`]) are sent and not yet
//! acknowledged. Acknowledgements are read as they arrive, between sends and while the worker
//! waits for work, and each event's timeout runs from its own send; if the connection is lost,
//! every unanswered event is in doubt at once. Every answer
//! is parsed ([`Answer`]):
//!
//! ```text
//!            ┌─ PubAck (stored, or "duplicate": stored before) ──────────────▶ done
//!  sent ─────┼─ error the stream will repeat (full with discard new, too big) ─▶ dropped, counted
//!            ├─ any other error, "no responders" ─── pause ──────────────────▶ sent again
//!            └─ nothing within ACK_TIMEOUT ─▶ in doubt ─▶ stream read ─┬─ found ─▶ done
//!                                                                      └─ absent ▶ sent again
//! ```
//!
//! An event whose answer never came (NATS frozen, restarted, the connection cut) may or may not
//! be stored. The sink does not guess: it reads the stream's message ids from just past the last
//! sequence it had seen acknowledged when it sent the event (headers only), and resends only the
//! events that are not there. So a resend never stores an event twice, however long NATS was
//! away, and whatever the stream's duplicate window. The `Nats-Msg-Id` header (the event id)
//! closes the one remaining gap: an original still on its way inside the server while its resend
//! is sent is dropped by the stream's duplicate window, which only has to cover that race.
//!
//! # Fast-ingest batches (nats-server 2.14+)
//!
//! With `--mirror-batch`, where the stream allows them (`allow_batched`, which eventgate then sets
//! and only a 2.14+ server keeps), events go out in JetStream's fast-ingest batches ([`Batching`]): still one message,
//! one CloudEvent, per event in the stream, but the server answers every `flow` events (up to
//! 500) instead of each one, and eventgate no longer reads and matches an answer per event (the
//! server's own cost per message measured 6–18% lower, BENCHMARKS.md). Each event's
//! reply subject names its batch (`<tag>-<first token>`, unique to this sink) and its place in
//! it, so the answers map onto the same window of tokens ([`BatchAnswer`]):
//!
//! ```text
//!  {"type":"ack","seq":N}              publishes 1..=N of the batch stored (gap mode `fail`)
//!  {"stream":…,"seq":S,"count":C}      the batch's end: 1..=C stored, the last at sequence S
//!  an error on publish k               the batch is over: k as above (dropped or sent again),
//!                                      and its later publishes come back as "unknown batch",
//!                                      not stored: sent again
//!  "batch publish is disabled"         the stream stopped taking batches: one answer per event
//! ```
//!
//! A batch ends (an empty publish, stored as nothing) [`BATCH_LINGER`] after the worker first
//! waits with it open, at once when the window is full and no acknowledgement is on its way, and
//! after [`BATCH_EVENTS`] events; its end answers for all of it. After an error the sink sends one
//! answer per event for [`BATCH_PAUSE`], so a stream that refuses every event does not end a
//! batch per event. Timeouts, lookups and resends are the same as above.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use metrics::{Counter, Gauge, counter, gauge};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::event::{Event, EventId};
use super::publisher::{BATCH_APPEND, BATCH_END, BATCH_START, Incoming, PublishError, Publisher, ReplyTo};

/// An event on the in-process feed.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Position on the feed (counts from 1 per process).
    pub seq: u64,
    pub subject: Arc<str>,
    pub ce_type: Arc<str>,
    pub validation: &'static str,
    pub json: Bytes,
}

/// A destination for events.
pub enum Sink {
    JetStream(Box<JetStreamSink>),
    Local(LocalSink),
}

impl Sink {
    pub async fn publish(&mut self, subject: &Arc<str>, events: Vec<Event>, shutdown: &CancellationToken) {
        match self {
            Self::JetStream(s) => s.publish(subject, events, shutdown).await,
            Self::Local(s) => s.publish(subject, events),
        }
    }

    /// Whether events wait for an answer (the worker then also waits on [`Sink::wake`]).
    pub fn busy(&self) -> bool {
        matches!(self, Self::JetStream(s) if s.busy())
    }

    /// Waits for the next thing to do: an answer, a timeout or a retry. Cancel-safe: nothing is
    /// lost when another branch of a `select!` wins.
    pub async fn wake(&mut self) -> Wake {
        match self {
            Self::JetStream(s) => s.wake().await,
            Self::Local(_) => std::future::pending().await,
        }
    }

    /// Acts on what [`Sink::wake`] returned.
    pub async fn handle(&mut self, wake: Wake, shutdown: &CancellationToken) {
        if let Self::JetStream(s) = self {
            s.handle(wake, shutdown).await;
        }
    }

    pub async fn flush(&mut self, shutdown: &CancellationToken) {
        if let Self::JetStream(s) = self {
            s.flush(shutdown).await;
        }
    }
}

/// The in-process feed, for running without NATS.
pub struct LocalSink {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    seq: Arc<AtomicU64>,
}

impl LocalSink {
    pub fn new(tx: broadcast::Sender<Arc<LiveEvent>>) -> Self {
        Self { tx, seq: Arc::new(AtomicU64::new(0)) }
    }

    fn publish(&mut self, subject: &Arc<str>, events: Vec<Event>) {
        for e in events {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            // No receiver is not an error: nobody is watching.
            let _ = self.tx.send(Arc::new(LiveEvent {
                seq,
                subject: subject.clone(),
                ce_type: e.ce_type,
                validation: e.validation,
                // A copy: a watcher may hold a few events of many, and a slice of the event's
                // block would keep the whole block (`event::BLOCK`) alive for each.
                json: Bytes::copy_from_slice(&e.json),
            }));
        }
    }
}

/// Events sent between two looks at the answers while the worker is busy sending.
const READ_EVERY: u64 = 32;
/// How long an event may stay unanswered before it is in doubt.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most event bytes sent and not yet answered, whatever `window` says: events of up to a
/// megabyte each would otherwise make a window of 1024 hold a gigabyte.
pub const WINDOW_BYTES: usize = 32 << 20;
/// How long one look into the stream (for events in doubt) may take before it is tried again.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a JetStream publish answer says, parsed (not scanned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored at `seq`; `duplicate` when the stream already held the id (stored by an earlier send).
    Stored { seq: u64, duplicate: bool },
    /// Refused for a reason the stream would give again (full with discard new, too large): the
    /// event is dropped and counted under `reason`.
    Refused { reason: &'static str, description: String },
    /// Refused for a reason that may pass (no stream yet, no responders, a server error): sent
    /// again after a pause.
    Retry { description: String },
}

#[derive(Deserialize)]
struct RawAnswer {
    #[serde(default)]
    error: Option<RawError>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

impl Answer {
    /// Reads an answer from its NATS status (503 "no responders" has no body) and body.
    pub fn parse(status: Option<u16>, payload: &[u8]) -> Answer {
        const NO_RESPONDERS: u16 = 503;
        if status == Some(NO_RESPONDERS) {
            return Answer::Retry { description: "no responders: no stream takes this subject (yet)".into() };
        }
        if let Some(stored) = plain_puback(payload) {
            return stored;
        }
        let raw = match serde_json::from_slice::<RawAnswer>(payload) {
            Ok(raw) => raw,
            Err(e) => {
                let text = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
                return Answer::Retry { description: format!("unreadable answer ({e}): {text}") };
            }
        };
        match (raw.error, raw.seq) {
            (Some(e), _) => Answer::of_error(&e),
            (None, Some(seq)) => Answer::Stored { seq, duplicate: raw.duplicate },
            (None, None) => Answer::Retry { description: "answer without a sequence or an error".into() },
        }
    }

    /// What an error answer means for the event: dropped for good, or sent again.
    fn of_error(e: &RawError) -> Answer {
        let description = format!("{} (code {}, err_code {})", e.description, e.code, e.err_code);
        match refusal_reason(e.err_code, &e.description) {
            Some(reason) => Answer::Refused { reason, description },
            None => Answer::Retry { description },
        }
    }
}

/// The common answer, `{"stream":"…","seq":N}` (with `"duplicate":true` when it was stored
/// before), read without a JSON parser; anything else (`None`) goes through serde.
fn plain_puback(payload: &[u8]) -> Option<Answer> {
    // `"name":"text"` at the start of `b`: the rest after it.
    fn skip_string<'a>(b: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        let b = b.strip_prefix(b"\"")?.strip_prefix(name)?.strip_prefix(b"\":\"")?;
        Some(&b[memchr::memchr(b'"', b)? + 1..])
    }
    let mut rest = skip_string(payload.strip_prefix(b"{")?, b"stream")?;
    if let Some(r) = rest.strip_prefix(b",").and_then(|r| skip_string(r, b"domain")) {
        rest = r;
    }
    let rest = rest.strip_prefix(b",\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = super::publisher::decimal(&rest[..digits])?;
    let mut rest = &rest[digits..];
    if let Some(r) = rest.strip_prefix(b",").and_then(|r| skip_string(r, b"domain")) {
        rest = r;
    }
    let duplicate = match rest {
        b"}" => false,
        b",\"duplicate\":true}" => true,
        b",\"duplicate\":false}" => false,
        _ => return None,
    };
    Some(Answer::Stored { seq, duplicate })
}

/// What an answer on a fast-ingest batch's reply subject says (nats-server 2.14+, ADR-50).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAnswer {
    /// `{"type":"ack","seq":N,"msgs":M}`: the batch's publishes 1..=N are stored (the batch
    /// fails on a gap, so none is missing); the server acknowledges every M from now on.
    Flow { stored: u64 },
    /// `{"type":"gap",…}`: the server missed a publish and ends the batch; its final
    /// acknowledgement follows, and the publishes after the gap are answered as unknown.
    Gap,
    /// The batch's final acknowledgement, `{"stream":…,"seq":S,"batch":…,"count":C}`: its
    /// publishes 1..=C are stored (duplicates count: stored before), the last at stream sequence
    /// `S` (0 when none was new), and the batch is over.
    End { seq: u64, count: u64 },
    /// A plain answer to one publish (a server that took the publish outside any batch), or an
    /// error about one: `at` is the batch sequence it names, if it names one (`"type":"err"`).
    One { at: Option<u64>, answer: Answer, err_code: u32 },
}

/// JetStream's error codes the batching sink acts on.
pub const BATCH_DISABLED: u32 = 10205;
pub const BATCH_UNKNOWN: u32 = 10208;

#[derive(Deserialize)]
struct RawBatchAnswer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<RawError>,
}

impl BatchAnswer {
    pub fn parse(status: Option<u16>, payload: &[u8]) -> BatchAnswer {
        if let Some(stored) = payload.strip_prefix(br#"{"type":"ack","seq":"#).and_then(flow_ack) {
            return BatchAnswer::Flow { stored };
        }
        let one = |at, err_code| BatchAnswer::One { at, answer: Answer::parse(status, payload), err_code };
        if status.is_some() {
            return one(None, 0);
        }
        let Ok(raw) = serde_json::from_slice::<RawBatchAnswer>(payload) else { return one(None, 0) };
        if let Some(error) = raw.error {
            let at = if raw.kind.as_deref() == Some("err") { raw.seq } else { None };
            return BatchAnswer::One { at, answer: Answer::of_error(&error), err_code: error.err_code };
        }
        match (raw.kind.as_deref(), raw.seq, raw.count) {
            (Some("ack"), Some(stored), _) => BatchAnswer::Flow { stored },
            (Some("gap"), _, _) => BatchAnswer::Gap,
            (None, Some(seq), Some(count)) => BatchAnswer::End { seq, count },
            // A plain acknowledgement.
            (None, Some(_), None) => one(None, 0),
            _ => {
                let text = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
                BatchAnswer::One {
                    at: None,
                    answer: Answer::Retry { description: format!("unknown answer: {text}") },
                    err_code: 0,
                }
            }
        }
    }
}

/// The rest of `{"type":"ack","seq":` as the common flow acknowledgement: `N,"msgs":M}`.
fn flow_ack(rest: &[u8]) -> Option<u64> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (n, tail) = rest.split_at(digits);
    let m = tail.strip_prefix(br#","msgs":"#)?.strip_suffix(b"}")?;
    (!m.is_empty() && m.iter().all(u8::is_ascii_digit)).then_some(())?;
    super::publisher::decimal(n)
}

/// Errors the stream would give again for the same event: its limits with the `new` discard
/// policy, and the message size limit. Matched by JetStream error code where the server has a
/// stable one, else by the server's description (stable across 2.9–2.15).
fn refusal_reason(err_code: u32, description: &str) -> Option<&'static str> {
    const MESSAGE_TOO_LARGE: u32 = 10054;
    let d = description.to_ascii_lowercase();
    if err_code == MESSAGE_TOO_LARGE || d.contains("message size exceeds") {
        Some("message_too_large")
    } else if d.contains("maximum messages per subject exceeded") {
        Some("subject_full")
    } else if d.contains("maximum messages exceeded") || d.contains("maximum bytes exceeded") {
        Some("stream_full")
    } else {
        None
    }
}

/// The most publishes in one fast-ingest batch: it is then ended, and its final answer brings the
/// stream's sequence (the floor of later lookups) up to date.
const BATCH_EVENTS: u64 = 4096;
/// The most the server is asked to let pass between two acknowledgements of a batch (it takes at
/// most 500); never more than half the window. A full window with no acknowledgement coming (its
/// events from earlier batches, or in doubt) ends the open batch instead.
const BATCH_FLOW: usize = 500;
/// How long an open batch waits for more events once the worker has nothing to send, before it
/// is ended (its last events are answered only then, or at the next acknowledgement interval).
const BATCH_LINGER: Duration = Duration::from_millis(50);
/// After a batch ends on an error, events are sent one answer each for this long: with a stream
/// that refuses every event (full, with discard `new`), each batch would end at its first event
/// and send the rest again, over and over.
const BATCH_PAUSE: Duration = Duration::from_secs(5);

/// How the sink publishes in fast-ingest batches (see the module doc).
struct Batching {
    /// `<inbox>.<tag>-`: what every batch's reply subject starts with. The server knows a batch
    /// by `<tag>-<first token>`, across all its clients, and the tag is the inbox's own random
    /// token: no other publisher's batch has the same id.
    base: String,
    /// Requested acknowledgement interval (`<flow>` of the reply subject).
    flow: usize,
    open: Option<OpenBatch>,
    /// The open batch's reply subjects up to the publish's sequence.
    prefix: String,
    /// When the open batch is ended ([`BATCH_LINGER`] after the worker first waited).
    end_at: Option<Instant>,
    /// Until then, events are sent one answer each ([`BATCH_PAUSE`]).
    paused_until: Option<Instant>,
    /// The server at the other end of this connection has answered as one that knows batches
    /// (a flow acknowledgement, a batch's end, "unknown batch"). Until it has, no batch is ended:
    /// a server before 2.14 (a reconnect may reach one) would store the empty end as a message.
    confirmed: bool,
}

/// The batch being sent.
struct OpenBatch {
    /// The token of its first publish, which names it.
    first: u64,
    /// Publishes in it so far.
    sent: u64,
    /// Publishes the server has acknowledged (its last flow acknowledgement).
    acked: u64,
    /// The subject of the last one: the batch is ended on it.
    subject: Arc<str>,
}

impl Batching {
    fn new(inbox: &str, window: usize) -> Self {
        let tag = inbox.rsplit('.').next().unwrap_or(inbox);
        Self {
            base: format!("{inbox}.{tag}-"),
            flow: (window / 2).clamp(1, BATCH_FLOW),
            open: None,
            prefix: String::new(),
            end_at: None,
            confirmed: false,
            paused_until: None,
        }
    }

    /// Opens a batch whose first publish is token `first`, and returns it.
    fn open(&mut self, first: u64, subject: &Arc<str>) -> &mut OpenBatch {
        let mut n = itoa::Buffer::new();
        self.prefix.clear();
        self.prefix.push_str(&self.base);
        self.prefix.push_str(n.format(first));
        self.prefix.push('.');
        self.prefix.push_str(n.format(self.flow));
        self.prefix.push_str(".fail.");
        self.end_at = None;
        self.open.insert(OpenBatch { first, sent: 0, acked: 0, subject: subject.clone() })
    }

    /// Writes into `reply` the reply subject of the open batch's publish `seq` (`op`):
    /// `<inbox>.<tag>-<first>.<flow>.fail.<seq>.<op>.$FI`. The gap mode `fail` makes every
    /// acknowledgement cover all the batch's publishes before it.
    fn reply(&self, reply: &mut String, seq: u64, op: u8) {
        const OPS: [&str; 4] = [".0.$FI", ".1.$FI", ".2.$FI", ".3.$FI"];
        reply.clear();
        reply.push_str(&self.prefix);
        reply.push_str(itoa::Buffer::new().format(seq));
        reply.push_str(OPS[usize::from(op & 3)]);
    }

    /// Whether the next event goes into a batch (false while paused).
    fn active(&mut self) -> bool {
        match self.paused_until {
            None => true,
            Some(until) if Instant::now() >= until => {
                self.paused_until = None;
                true
            }
            Some(_) => false,
        }
    }
}

/// What the worker should act on next.
#[derive(Debug)]
pub enum Wake {
    /// The publishing connection has something to read: the bytes read (0: the server closed
    /// it), or why it failed.
    Read(Result<usize, PublishError>),
    /// A timeout or a retry is due.
    Timer,
}

/// Where one sent event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent; no answer yet.
    Sent,
    /// Answered: stored, or dropped for good.
    Done,
    /// Refused for now: send again at the next retry.
    Again,
    /// Not answered in time: look into the stream at the next retry.
    Doubt,
}

struct InFlight {
    token: u64,
    /// Made once per chunk of events; a clone is a reference count.
    subject: Arc<str>,
    id: EventId,
    /// The event: a slice of the block it was built in when first sent, its own copy when sent
    /// again (so what a block pins stays within the window: see `event::BLOCK`).
    json: Bytes,
    sent: Instant,
    /// The highest stream sequence known to be taken when this was sent: if the event is
    /// stored, it is stored after this.
    floor: u64,
    state: State,
    /// The first token of the fast-ingest batch it was sent in (`None`: sent on its own).
    batch: Option<u64>,
}

struct SinkMetrics {
    no_ack: Counter,
    refused_retry: Counter,
    send_failed: Counter,
    /// Events sent into a batch the server had already ended: not stored, sent again.
    batch_ended: Counter,
    confirmed: Counter,
    /// 1 while events are published in fast-ingest batches, 0 while each has its own answer.
    batched: Gauge,
    /// `eventgate_mirror_batch_answers_total{kind}`: flow acknowledgements, batch ends, gaps.
    batch_answers: [Counter; 3],
    /// `eventgate_mirror_refused_events_total`, by the reasons [`refusal_reason`] gives.
    refused: [(&'static str, Counter); 3],
}

/// Publishes to JetStream as a pipeline (see the module doc) over a connection of its own
/// ([`Publisher`]): every event is a publish whose reply subject is `<inbox>.<token>` (or, in a
/// batch, names the batch and the event's place in it), answers are read in bulk from the same
/// socket and matched by token. `async-nats` (`js`) is used for the
/// rest: the stream's state and the lookups of events in doubt.
pub struct JetStreamSink {
    js: jetstream::Context,
    /// `--nats-url`, for the publishing connection.
    urls: String,
    stream: String,
    inbox: String,
    /// The reply subject of the publish being written (reused, no allocation).
    reply: String,
    /// Fast-ingest batches, when the stream allows them (nats-server 2.14+); else one answer per
    /// event.
    batching: Option<Batching>,
    conn: Option<Publisher>,
    window: usize,
    /// Sent and not yet done, in send order (tokens increase).
    pending: VecDeque<InFlight>,
    pending_bytes: usize,
    next_token: u64,
    /// The highest stream sequence an answer (or the stream's info) has shown.
    last_seq: u64,
    /// When events waiting in `Again` or `Doubt` are next looked at, and the pause after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    metrics: SinkMetrics,
    /// Answers are failing (logged once per outage).
    degraded: bool,
}

impl JetStreamSink {
    /// Connects (`async-nats`, for the stream) and makes sure the stream exists, retrying until
    /// both are there (jobs wait in the mirror's buffer meanwhile); `None` only if `abort` fires
    /// first. The publishing connection is opened then too, or with the first event.
    pub async fn connect(config: &crate::nats::NatsConfig, abort: &CancellationToken) -> Option<Self> {
        let client =
            crate::nats::until_ready("mirror connection", abort, || crate::nats::connect_publisher(config)).await?;
        let js = crate::nats::jetstream(client.clone(), config);
        let info = crate::nats::until_ready("mirror stream", abort, || crate::nats::ensure_stream(&js, config)).await?;
        crate::nats::report_stream(&info);
        {
            let (js, config, abort) = (js.clone(), config.clone(), abort.clone());
            tokio::spawn(async move { crate::nats::watch_stream(&js, &config, &abort).await });
        }
        let mut sink = Self::new(js, config.url.clone(), client.new_inbox(), config.stream.clone(), config.window);
        sink.last_seq = info.state.last_sequence;
        // Only a server that knows fast-ingest batches (2.14+) says the stream allows them: older
        // ones drop the setting, and would store a batch's empty end as a message.
        if config.batch && info.config.allow_batch_publish {
            sink.batching = Some(Batching::new(&sink.inbox, sink.window));
            sink.metrics.batched.set(1.0);
            tracing::info!(stream = sink.stream, "mirror publishes in fast-ingest batches");
        } else if config.batch {
            tracing::info!(
                stream = sink.stream,
                "the stream takes no batches (nats-server before 2.14): one answer per event"
            );
        }
        // Ready before the first event (a failure here is retried with the first event).
        match Publisher::connect(&sink.urls, &sink.inbox).await {
            Ok(c) => sink.conn = Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "mirror's publisher not connected yet; trying again with the first event")
            }
        }
        Some(sink)
    }

    pub fn new(js: jetstream::Context, urls: String, inbox: String, stream: String, window: usize) -> Self {
        let retries = |reason: &'static str| counter!("eventgate_mirror_publish_retries_total", "reason" => reason);
        let reply = String::with_capacity(2 * inbox.len() + 64);
        Self {
            js,
            urls,
            stream,
            inbox,
            reply,
            batching: None,
            conn: None,
            window: window.max(1),
            pending: VecDeque::new(),
            pending_bytes: 0,
            next_token: 0,
            last_seq: 0,
            retry_at: None,
            backoff: Duration::from_millis(50),
            metrics: SinkMetrics {
                no_ack: retries("no_ack"),
                refused_retry: retries("refused"),
                send_failed: retries("send_failed"),
                batch_ended: retries("batch_ended"),
                confirmed: counter!("eventgate_mirror_unanswered_found_stored_total"),
                batched: gauge!("eventgate_mirror_publish_batched"),
                batch_answers: ["flow", "end", "gap"]
                    .map(|k| counter!("eventgate_mirror_batch_answers_total", "kind" => k)),
                refused: ["stream_full", "subject_full", "message_too_large"]
                    .map(|r| (r, counter!("eventgate_mirror_refused_events_total", "reason" => r))),
            },
            degraded: false,
        }
    }

    fn full(&self) -> bool {
        self.pending.len() >= self.window || self.pending_bytes >= WINDOW_BYTES
    }

    /// Whether the worker should wait on [`wake`](Self::wake): answers are awaited, or the
    /// connection is open (the server's `PING`s are answered while no event flows).
    fn busy(&self) -> bool {
        !self.pending.is_empty() || self.conn.is_some()
    }

    async fn publish(&mut self, subject: &Arc<str>, events: Vec<Event>, shutdown: &CancellationToken) {
        // One reading of the clock for the events sent without a wait (a chunk takes far less
        // than ACK_TIMEOUT to send).
        let mut now = Instant::now();
        for event in events {
            while self.full() {
                let wake = tokio::select! {
                    w = self.wake() => w,
                    _ = shutdown.cancelled() => return,
                };
                self.handle(wake, shutdown).await;
                now = Instant::now();
            }
            // Connected, the event is appended without an `async` call of its own (each such
            // call moves its arguments into a future: a measurable share of the worker's time);
            // otherwise `send_from` connects first.
            let floor = self.last_seq;
            let sent = match self.append(subject, event.id, event.json, floor, now) {
                Ok(flush) => !flush || self.flush_conn(shutdown).await,
                Err((id, json)) => self.send_from(subject.clone(), id, json, floor, now, shutdown).await,
            };
            if !sent {
                return;
            }
            // Answers that have arrived are read now and then (each look costs a poll of the
            // socket); a full window, or the worker's next wait, reads them all.
            if self.next_token.is_multiple_of(READ_EVERY) {
                self.take_ready_answers();
            }
        }
    }

    /// Reads every answer that has already arrived, without waiting, and moves the window on.
    fn take_ready_answers(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        match conn.fill_ready() {
            Ok(true) => self.take_answers(),
            Ok(false) => {
                self.take_answers();
                self.lost("the server closed the connection");
            }
            Err(e) => {
                self.take_answers();
                self.lost(&e.to_string());
            }
        }
        self.trim();
    }

    /// Acts on everything read so far.
    fn take_answers(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else { return };
            match conn.next_incoming() {
                Ok(Some(Incoming::Reply { to, status, payload })) => match to {
                    ReplyTo::Token(token) => {
                        let answer = Answer::parse(status, payload);
                        self.on_answer(token, answer);
                    }
                    ReplyTo::Batch { first, seq, op } => {
                        let answer = BatchAnswer::parse(status, payload);
                        self.on_batch_answer(first, seq, op, answer);
                    }
                    ReplyTo::Unknown => {}
                },
                Ok(Some(Incoming::Error(e))) => {
                    // The server may close the connection after it; events it dropped are never
                    // answered and come back through the timeouts.
                    let id = self.pending.front().map(|f| f.id.clone()).unwrap_or_default();
                    self.degrade(&id, &format!("NATS said: {e}"));
                }
                Ok(None) => return,
                Err(e) => return self.lost(&e.to_string()),
            }
        }
    }

    /// The publishing connection is gone: answers to what was sent on it will never come, so
    /// every event still waiting is in doubt now (the stream is read before anything is sent
    /// again), not after its timeout.
    fn lost(&mut self, why: &str) {
        let Some(conn) = self.conn.take() else { return };
        // The server forgets the open batch (after its timeout); the next event opens another,
        // and the next connection may reach another server.
        if let Some(b) = self.batching.as_mut() {
            b.open = None;
            b.end_at = None;
            b.confirmed = false;
        }
        let mut waiting = 0u64;
        for f in self.pending.iter_mut().filter(|f| f.state == State::Sent) {
            f.state = State::Doubt;
            waiting += 1;
        }
        tracing::warn!(
            server = conn.server,
            why,
            events_in_doubt = waiting,
            "mirror's NATS connection lost; reconnecting"
        );
        if waiting > 0 {
            self.metrics.no_ack.increment(waiting);
            self.schedule_retry();
        }
    }

    /// Sends one event, retrying until the connection takes it; false only on shutdown.
    #[cfg(test)]
    async fn send(&mut self, subject: Arc<str>, event: Event, sent: Instant, shutdown: &CancellationToken) -> bool {
        let floor = self.last_seq;
        self.send_from(subject, event.id, event.json, floor, sent, shutdown).await
    }

    /// Sends one event, retrying until the connection takes it (false only on shutdown), for an
    /// event first sent when the stream's known sequence was `floor`: a resend keeps the floor of
    /// the first send, so a later look into the stream still covers an original stored after all.
    /// `sent` is when it is sent (for its timeout), or a moment before.
    async fn send_from(
        &mut self,
        subject: Arc<str>,
        mut id: EventId,
        mut json: Bytes,
        floor: u64,
        sent: Instant,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.conn.is_none() {
                let connected = tokio::select! {
                    r = Publisher::connect(&self.urls, &self.inbox) => r,
                    _ = shutdown.cancelled() => return false,
                };
                match connected {
                    Ok(c) => {
                        tracing::debug!(server = c.server, "mirror's NATS connection ready");
                        self.conn = Some(c);
                    }
                    Err(e) => {
                        self.metrics.send_failed.increment(1);
                        tracing::debug!(error = %e, "cannot connect the mirror's publisher; retrying");
                        if !pause(&mut backoff, shutdown).await {
                            return false;
                        }
                        continue;
                    }
                }
            }
            match self.append(&subject, id, json, floor, sent) {
                Ok(flush) => return !flush || self.flush_conn(shutdown).await,
                Err(back) => (id, json) = back,
            }
        }
    }

    /// Appends the event to the connection's writes and puts it in the window; `Ok(true)` when
    /// the writes should go out now. An event larger than the server takes is dropped here,
    /// counted. Without a connection (and only then), the event comes back.
    fn append(
        &mut self,
        subject: &Arc<str>,
        id: EventId,
        json: Bytes,
        floor: u64,
        sent: Instant,
    ) -> Result<bool, (EventId, Bytes)> {
        let Some(conn) = self.conn.as_mut() else { return Err((id, json)) };
        if Publisher::message_size(id.as_bytes(), json.len()) > conn.max_payload {
            // The server would refuse it every time: drop it from the mirror, counted.
            if let Some((_, c)) = self.metrics.refused.iter().find(|(r, _)| *r == "message_too_large") {
                c.increment(1);
            }
            tracing::warn!(
                id = id.as_str(),
                bytes = json.len(),
                max_payload = conn.max_payload,
                "event larger than the NATS server takes; not mirrored"
            );
            return Ok(false);
        }
        let token = self.next_token;
        let batched = self.batching.as_mut().is_some_and(Batching::active);
        let (batch, end_batch) = match self.batching.as_mut() {
            Some(b) if batched => {
                let open = match b.open.take() {
                    Some(open) => b.open.insert(open),
                    None => b.open(token, subject),
                };
                open.sent += 1;
                if !Arc::ptr_eq(&open.subject, subject) {
                    open.subject = subject.clone();
                }
                let (first, seq) = (open.first, open.sent);
                b.reply(&mut self.reply, seq, if seq == 1 { BATCH_START } else { BATCH_APPEND });
                (Some(first), seq >= BATCH_EVENTS)
            }
            _ => {
                self.reply.clear();
                self.reply.push_str(&self.inbox);
                self.reply.push('.');
                self.reply.push_str(itoa::Buffer::new().format(token));
                (None, false)
            }
        };
        // Sent at WRITE_CHUNK bytes, or at half the window, so the server always has a part
        // of the window to work on while the rest is built.
        let mut flush =
            conn.push(subject, &self.reply, id.as_bytes(), &json) || conn.unflushed() >= self.window.div_ceil(2);
        if end_batch {
            self.end_batch();
            flush = true;
        }
        self.next_token += 1;
        self.pending_bytes += json.len();
        let subject = subject.clone();
        self.pending.push_back(InFlight { token, subject, id, json, sent, floor, state: State::Sent, batch });
        Ok(flush)
    }

    /// Sends what was appended; false only on shutdown (a failed write loses the connection,
    /// and the window's events are in doubt).
    async fn flush_conn(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(conn) = self.conn.as_mut() else { return true };
        let flushed = tokio::select! {
            r = conn.flush() => r,
            _ = shutdown.cancelled() => return false,
        };
        if let Err(e) = flushed {
            self.lost(&e.to_string());
        }
        true
    }

    /// The earliest moment something is due: the oldest unanswered event's timeout, or the
    /// retry of events refused for now or in doubt.
    fn next_due(&self) -> Option<Instant> {
        let timeout = self.pending.iter().find(|f| f.state == State::Sent).map(|f| f.sent + ACK_TIMEOUT);
        let batch_end = self.batching.as_ref().and_then(|b| b.end_at);
        [timeout, self.retry_at, batch_end].into_iter().flatten().min()
    }

    /// Appends the end of the open batch, if any: the server then answers for all of it.
    /// Not before the server has shown it knows batches ([`Batching::confirmed`]): the batch then
    /// lingers again (its first publish brings that answer at once).
    fn end_batch(&mut self) {
        let (Some(b), Some(conn)) = (self.batching.as_mut(), self.conn.as_mut()) else { return };
        let Some(open) = b.open.as_ref() else { return };
        if !b.confirmed {
            b.end_at = Some(Instant::now() + BATCH_LINGER);
            return;
        }
        b.reply(&mut self.reply, open.sent + 1, BATCH_END);
        conn.push_end(&open.subject, &self.reply);
        b.open = None;
        b.end_at = None;
    }

    /// The worker is about to wait, with a batch open: its events after the last acknowledgement
    /// interval are answered only at the next one or at its end. It ends at once when the window
    /// is full and no acknowledgement is on its way (nothing else would free the window), or when
    /// it has lingered [`BATCH_LINGER`]; otherwise it lingers, so that a worker that keeps up with
    /// its input and waits between jobs still sends long batches.
    fn linger_or_end(&mut self) {
        let full = self.full();
        let Some(b) = self.batching.as_mut() else { return };
        let Some(open) = b.open.as_ref() else { return };
        // The server acknowledges at least every `flow` publishes.
        let ack_coming = open.sent - open.acked.min(open.sent) >= b.flow as u64;
        let now = Instant::now();
        if (full && !ack_coming) || b.end_at.is_some_and(|at| at <= now) {
            self.end_batch();
        } else if b.end_at.is_none() {
            b.end_at = Some(now + BATCH_LINGER);
        }
    }

    /// Sends what was appended, then waits for the server or the next timer (the open batch
    /// lingers, see [`linger_or_end`](Self::linger_or_end)). Cancel-safe: a flush cut short resumes where it
    /// stopped, and a read keeps what it read.
    async fn wake(&mut self) -> Wake {
        self.linger_or_end();
        if let Some(conn) = self.conn.as_mut()
            && conn.pending_writes()
            && let Err(e) = conn.flush().await
        {
            return Wake::Read(Err(e));
        }
        let due = self.next_due();
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match self.conn.as_mut() {
            Some(conn) => tokio::select! {
                r = conn.fill() => Wake::Read(r),
                _ = timer => Wake::Timer,
            },
            None => {
                timer.await;
                Wake::Timer
            }
        }
    }

    async fn handle(&mut self, wake: Wake, shutdown: &CancellationToken) {
        match wake {
            Wake::Read(Ok(0)) => {
                self.take_answers();
                self.lost("the server closed the connection");
            }
            Wake::Read(Ok(_)) => self.take_ready_answers(),
            Wake::Read(Err(e)) => self.lost(&e.to_string()),
            Wake::Timer => self.on_timer(shutdown).await,
        }
        self.trim();
    }

    /// Drops done events from the front, so the window moves on.
    fn trim(&mut self) {
        // Dropped where they lie: moving each out first was a measurable share of the worker.
        let done = self
            .pending
            .iter()
            .take_while(|f| f.state == State::Done)
            .fold((0, 0), |(n, b), f| (n + 1, b + f.json.len()));
        if done.0 > 0 {
            self.pending_bytes -= done.1;
            self.pending.drain(..done.0);
        }
    }

    /// Where the event sent as `token` is in `pending`, if it still is.
    fn position(&self, token: u64) -> Option<usize> {
        // Tokens increase along `pending` and are usually consecutive (only a resend takes one
        // out of the middle): look where it would be if they are, else search.
        let first = self.pending.front()?.token;
        let guess = usize::try_from(token.checked_sub(first)?).ok()?;
        if self.pending.get(guess).is_some_and(|f| f.token == token) {
            return Some(guess);
        }
        self.pending.binary_search_by_key(&token, |f| f.token).ok()
    }

    fn on_answer(&mut self, token: u64, answer: Answer) {
        let Some(i) = self.position(token) else { return };
        if self.pending[i].state == State::Done {
            return;
        }
        match answer {
            Answer::Stored { seq, .. } => {
                self.last_seq = self.last_seq.max(seq);
                self.pending[i].state = State::Done;
                self.storing();
            }
            Answer::Refused { reason, description } => {
                self.pending[i].state = State::Done;
                if let Some((_, c)) = self.metrics.refused.iter().find(|(r, _)| *r == reason) {
                    c.increment(1);
                }
                if let Some(n) = refused_log().note() {
                    tracing::warn!(
                        id = self.pending[i].id.as_str(),
                        reason,
                        events = n,
                        "JetStream refused mirrored events for good ({description}); they are not mirrored"
                    );
                }
            }
            Answer::Retry { description } => {
                // Not stored: sending it again cannot duplicate it.
                self.metrics.refused_retry.increment(1);
                self.pending[i].state = State::Again;
                let id = self.pending[i].id.clone();
                self.degrade(&id, &description);
                self.schedule_retry();
            }
        }
    }

    /// An answer said events were stored: pauses start short again, and an outage is over.
    fn storing(&mut self) {
        self.backoff = Duration::from_millis(50);
        if self.degraded {
            self.degraded = false;
            tracing::info!("JetStream stores mirrored events again");
        }
    }

    /// Acts on an answer to a batch's publish (`seq`, `op`) of the batch first sent as `first`.
    fn on_batch_answer(&mut self, first: u64, seq: u64, op: u8, answer: BatchAnswer) {
        // Which of `batch_answers` it counts in, and whether only a server that knows batches
        // gives it.
        let (counted, knows_batches) = match &answer {
            BatchAnswer::Flow { .. } => (Some(0), true),
            BatchAnswer::End { .. } => (Some(1), true),
            BatchAnswer::Gap => (Some(2), true),
            BatchAnswer::One { err_code, .. } => (None, *err_code == BATCH_UNKNOWN || *err_code == BATCH_DISABLED),
        };
        if let Some(k) = counted {
            self.metrics.batch_answers[k].increment(1);
        }
        if knows_batches && let Some(b) = self.batching.as_mut() {
            b.confirmed = true;
        }
        match answer {
            BatchAnswer::Flow { stored } => {
                if let Some(open) = self.batching.as_mut().and_then(|b| b.open.as_mut()).filter(|o| o.first == first) {
                    open.acked = open.acked.max(stored);
                }
                self.settle(first, stored);
            }
            BatchAnswer::Gap => {
                // The server ends the batch: events sent into it from now on would come back.
                tracing::debug!(batch = first, "JetStream missed a publish of a batch and ends it");
                self.close_batch(first);
            }
            BatchAnswer::End { seq: stream_seq, count } => {
                self.last_seq = self.last_seq.max(stream_seq);
                self.settle(first, count);
                self.close_batch(first);
            }
            BatchAnswer::One { at, answer, err_code } => {
                // The event it is about: the one the error names, else the one it answers (a
                // batch's end is no event).
                let token = match at {
                    Some(k) => k.checked_sub(1).and_then(|k| first.checked_add(k)),
                    None if op == BATCH_END => None,
                    None => first.checked_add(seq - 1),
                };
                if matches!(answer, Answer::Stored { .. }) {
                    // Stored outside any batch: this server does not batch after all (and would
                    // store a batch's empty end as a message).
                    self.stop_batching("the server answered a batch's event on its own", false);
                } else {
                    // The server ends a batch at its first error; new events open another.
                    self.close_batch(first);
                    if err_code == BATCH_DISABLED {
                        self.stop_batching("the stream no longer allows batches", true);
                    } else if err_code != BATCH_UNKNOWN {
                        // No batch stays open while paused: events sent on their own must not
                        // take tokens from the middle of one.
                        self.end_batch();
                        if let Some(b) = self.batching.as_mut() {
                            b.paused_until = Some(Instant::now() + BATCH_PAUSE);
                        }
                    }
                }
                let Some(token) = token else { return };
                if err_code == BATCH_UNKNOWN || err_code == BATCH_DISABLED {
                    // Refused before the stream saw it: not stored, so sending it again (one
                    // answer each, or in a new batch) cannot duplicate it.
                    self.again_quietly(token);
                } else {
                    self.on_answer(token, answer);
                }
            }
        }
    }

    /// Marks the events a batch's acknowledgement covers (its publishes 1..=`count`) as stored.
    fn settle(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count);
        let start = self.pending.partition_point(|f| f.token < first);
        let mut any = false;
        // A batch's events are consecutive in `pending`: the walk ends at the first that is not
        // one of them, whatever count the answer claims.
        for f in self.pending.range_mut(start..) {
            if f.token >= end || f.batch != Some(first) {
                break;
            }
            if matches!(f.state, State::Sent | State::Doubt) {
                f.state = State::Done;
                any = true;
            }
        }
        if any {
            self.storing();
        }
    }

    /// The server has ended batch `first`: new events open another.
    fn close_batch(&mut self, first: u64) {
        if let Some(b) = self.batching.as_mut()
            && b.open.as_ref().is_some_and(|o| o.first == first)
        {
            b.open = None;
            b.end_at = None;
        }
    }

    /// Sends every event on its own from now on; `end` ends the open batch first (only where the
    /// server knows batches: others would store the end as a message).
    fn stop_batching(&mut self, why: &str, end: bool) {
        if end {
            self.end_batch();
        }
        if self.batching.take().is_some() {
            self.metrics.batched.set(0.0);
            tracing::info!(stream = self.stream, why, "mirror publishes one answer per event from now on");
        }
    }

    /// Sends an event again at the next retry, without counting it as refused.
    fn again_quietly(&mut self, token: u64) {
        let Some(i) = self.position(token) else { return };
        if self.pending[i].state != State::Done {
            self.pending[i].state = State::Again;
            self.metrics.batch_ended.increment(1);
            self.schedule_retry();
        }
    }

    fn degrade(&mut self, id: &str, why: &str) {
        if !self.degraded {
            self.degraded = true;
            tracing::warn!(id, why, "JetStream did not store a mirrored event; trying again until it does");
        }
    }

    fn schedule_retry(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff);
        }
    }

    async fn on_timer(&mut self, shutdown: &CancellationToken) {
        let now = Instant::now();
        if self.batching.as_ref().and_then(|b| b.end_at).is_some_and(|at| at <= now) {
            self.end_batch();
        }
        let mut timed_out = 0u64;
        for f in self.pending.iter_mut().filter(|f| f.state == State::Sent && f.sent + ACK_TIMEOUT <= now) {
            f.state = State::Doubt;
            timed_out += 1;
        }
        if timed_out > 0 {
            self.metrics.no_ack.increment(timed_out);
            if let Some(id) = self.pending.iter().find(|f| f.state == State::Doubt).map(|f| f.id.clone()) {
                self.degrade(&id, "no answer in time");
            }
            // Look at once: usually the answers were lost with a connection, and the stream
            // answers the lookup.
            self.schedule_retry();
            self.retry_at = self.retry_at.map(|at| at.min(now));
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.retry(shutdown).await;
        }
    }

    /// Settles events in doubt by looking into the stream, then sends again every event that is
    /// known not to be stored.
    async fn retry(&mut self, shutdown: &CancellationToken) {
        let doubt: Vec<(&str, u64, &str)> = self
            .pending
            .iter()
            .filter(|f| f.state == State::Doubt)
            .map(|f| (f.id.as_str(), f.floor, &*f.subject))
            .collect();
        if !doubt.is_empty() {
            let floor = doubt.iter().map(|d| d.1).min().unwrap_or(0);
            let ids: HashSet<&str> = doubt.iter().map(|d| d.0).collect();
            let first_subject = doubt[0].2;
            let subject = doubt.iter().all(|d| d.2 == first_subject).then(|| first_subject.to_owned());
            let found = tokio::select! {
                r = tokio::time::timeout(LOOKUP_TIMEOUT, stored_ids(&self.js, &self.stream, floor, subject, &ids)) => r,
                _ = shutdown.cancelled() => return,
            };
            match found {
                Ok(Ok(found)) => {
                    let mut confirmed = 0u64;
                    for f in self.pending.iter_mut().filter(|f| f.state == State::Doubt) {
                        if found.contains(f.id.as_str()) {
                            f.state = State::Done;
                            confirmed += 1;
                        } else {
                            f.state = State::Again;
                        }
                    }
                    self.metrics.confirmed.increment(confirmed);
                    if confirmed > 0 {
                        tracing::info!(events = confirmed, "unanswered events were found stored; not sent again");
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot look into the stream yet; events stay in doubt");
                    return self.back_off();
                }
                Err(_) => {
                    tracing::debug!("looking into the stream took too long; events stay in doubt");
                    return self.back_off();
                }
            }
        }
        // Send again, in the original order, everything known not to be stored.
        let again: Vec<InFlight> = {
            let (keep, again): (VecDeque<InFlight>, VecDeque<InFlight>) =
                std::mem::take(&mut self.pending).into_iter().partition(|f| f.state != State::Again);
            self.pending = keep;
            again.into()
        };
        let resent = !again.is_empty();
        for f in again {
            self.pending_bytes -= f.json.len();
            // Copies: a resend must not keep the blocks of events long done alive.
            let (id, json) = (f.id.detached(), Bytes::copy_from_slice(&f.json));
            if !self.send_from(f.subject, id, json, f.floor, Instant::now(), shutdown).await {
                return;
            }
        }
        if resent {
            // Refused again soon after means NATS is not ready: wait longer each time (a stored
            // answer brings the pause back to its start).
            self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        }
        self.trim();
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    async fn flush(&mut self, shutdown: &CancellationToken) {
        while !self.pending.is_empty() {
            let wake = tokio::select! {
                w = self.wake() => w,
                _ = shutdown.cancelled() => return,
            };
            self.handle(wake, shutdown).await;
        }
    }
}

/// The ids among `ids` that the stream holds past sequence `floor` (on `subject` if given),
/// read from the message headers only.
async fn stored_ids(
    js: &jetstream::Context,
    stream: &str,
    floor: u64,
    subject: Option<String>,
    ids: &HashSet<&str>,
) -> Result<HashSet<String>, crate::nats::NatsError> {
    let err = |e: &dyn std::fmt::Display| crate::nats::NatsError::JetStream(format!("stream {stream}: {e}"));
    let mut found = HashSet::new();
    let mut stream = js.get_stream(stream).await.map_err(|e| err(&e))?;
    let last = stream.info().await.map_err(|e| err(&e))?.state.last_sequence;
    if last <= floor {
        return Ok(found);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.unwrap_or_default(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: floor + 1 },
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    // Nothing on the subject past the floor: no message would ever come to end the read below.
    if consumer.cached_info().num_pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| err(&e))?;
        if let Some(id) = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str())
            && ids.contains(id)
        {
            found.insert(id.to_owned());
        }
        let info = m.info().map_err(|e| err(&e))?;
        if info.pending == 0 || info.stream_sequence >= last || found.len() == ids.len() {
            break;
        }
    }
    Ok(found)
}

fn refused_log() -> &'static crate::telemetry::Throttle {
    static LOG: std::sync::OnceLock<crate::telemetry::Throttle> = std::sync::OnceLock::new();
    LOG.get_or_init(|| crate::telemetry::Throttle::new(Duration::from_secs(10)))
}

/// Sleeps for `backoff` (doubling it up to 2 s); false if shutdown came first.
async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn the_plain_puback_reading_agrees_with_serde() {
        for p in [
            &br#"{"stream":"EVENTGATE","seq":42}"#[..],
            br#"{"stream":"EVENTGATE","seq":7,"duplicate":true}"#,
            br#"{"stream":"EVENTGATE","domain":"hub","seq":9}"#,
            br#"{"stream":"EVENTGATE","seq":9,"domain":"hub","duplicate":true}"#,
            br#"{"stream":"EVENTGATE","seq":10,"duplicate":false}"#,
        ] {
            let raw: RawAnswer = serde_json::from_slice(p).unwrap();
            let want = Answer::Stored { seq: raw.seq.unwrap(), duplicate: raw.duplicate };
            assert_eq!(plain_puback(p), Some(want), "{}", String::from_utf8_lossy(p));
        }
        for p in [
            &br#"{"error":{"code":503,"description":"no"}}"#[..],
            br#"{"stream":"S","error":{"code":1},"seq":1}"#,
            br#"{"stream":"S","seq":"x"}"#,
            br#"{"stream":"S","seq":1,"duplicate":nope}"#,
        ] {
            assert_eq!(plain_puback(p), None, "{}", String::from_utf8_lossy(p));
        }
    }

    /// Every answer a 2.15 server gives on a batch's reply subject (seen on the wire), and what
    /// it means for the batch's events.
    #[test]
    fn batch_answers_say_how_much_of_the_batch_is_stored() {
        let parse = |p: &str| BatchAnswer::parse(None, p.as_bytes());
        assert_eq!(parse(r#"{"type":"ack","seq":500,"msgs":500}"#), BatchAnswer::Flow { stored: 500 });
        assert_eq!(parse(r#"{"type":"ack","seq":0,"msgs":10}"#), BatchAnswer::Flow { stored: 0 });
        // The same, written otherwise, through serde.
        assert_eq!(parse(r#"{ "msgs": 10, "seq": 20, "type": "ack" }"#), BatchAnswer::Flow { stored: 20 });
        assert_eq!(parse(r#"{"type":"gap","last_seq":27,"seq":28}"#), BatchAnswer::Gap);
        assert_eq!(
            parse(r#"{"stream":"EV","seq":3001,"batch":"L-1","count":3000}"#),
            BatchAnswer::End { seq: 3001, count: 3000 }
        );
        let unknown = parse(
            r#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"},"stream":"EV","seq":0}"#,
        );
        assert!(matches!(
            unknown,
            BatchAnswer::One { at: None, answer: Answer::Retry { .. }, err_code: BATCH_UNKNOWN }
        ));
        let big = parse(
            r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"EV","seq":0}"#,
        );
        assert!(matches!(
            big,
            BatchAnswer::One { at: None, answer: Answer::Refused { reason: "message_too_large", .. }, err_code: 10054 }
        ));
        let err = parse(
            r#"{"type":"err","seq":7,"error":{"code":400,"err_code":10071,"description":"wrong last sequence"}}"#,
        );
        assert!(matches!(err, BatchAnswer::One { at: Some(7), answer: Answer::Retry { .. }, err_code: 10071 }));
        // A server that took the publish on its own (no batch) answers it plainly.
        assert_eq!(
            parse(r#"{"stream":"EV","seq":4}"#),
            BatchAnswer::One { at: None, answer: Answer::Stored { seq: 4, duplicate: false }, err_code: 0 }
        );
        assert!(matches!(BatchAnswer::parse(Some(503), b""), BatchAnswer::One { answer: Answer::Retry { .. }, .. }));
        for junk in
            ["", "{}", "[1]", r#"{"type":"ack"}"#, r#"{"type":"ack","seq":1,"msgs":}"#, r#"{"type":"nope","seq":1}"#]
        {
            assert!(
                matches!(parse(junk), BatchAnswer::One { answer: Answer::Retry { .. }, .. }),
                "{junk} stores nothing"
            );
        }
    }

    #[test]
    fn a_puback_is_stored_and_a_duplicate_too() {
        assert_eq!(
            Answer::parse(None, br#"{"stream":"EVENTGATE","seq":42}"#),
            Answer::Stored { seq: 42, duplicate: false }
        );
        assert_eq!(
            Answer::parse(None, br#"{"stream":"EVENTGATE","seq":7,"duplicate":true}"#),
            Answer::Stored { seq: 7, duplicate: true }
        );
    }

    #[test]
    fn error_answers_are_errors_whatever_their_length() {
        // The old scan compared 8-byte windows with the 7-byte `"error"` and so took these as stored.
        let full = br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        assert!(matches!(Answer::parse(None, full), Answer::Refused { reason: "stream_full", .. }));
        let bytes = br#"{"error":{"code":503,"description":"maximum bytes exceeded"}}"#;
        assert!(matches!(Answer::parse(None, bytes), Answer::Refused { reason: "stream_full", .. }));
        let big = br#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        assert!(matches!(Answer::parse(None, big), Answer::Refused { reason: "message_too_large", .. }));
        let missing = br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert!(matches!(Answer::parse(None, missing), Answer::Retry { .. }));
        assert!(matches!(Answer::parse(None, b""), Answer::Retry { .. }));
        assert!(matches!(Answer::parse(None, b"{}"), Answer::Retry { .. }));
        assert!(matches!(Answer::parse(Some(503), b""), Answer::Retry { .. }));
    }
}

/// The batch bookkeeping against answers written by hand (the integration tests in
/// `tests/mirror.rs` run it against real servers): what each answer settles, and what it must not.
#[cfg(test)]
mod batch_tests {
    use super::*;

    /// A sink in batches; `confirmed`: its server has already answered as one that knows them.
    async fn sink(confirmed: bool) -> JetStreamSink {
        // A client that never reaches a server: the sink's stream lookups are not used here.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .expect("a client that connects later");
        let mut s = JetStreamSink::new(jetstream::new(client), String::new(), "_INBOX.t".into(), "S".into(), 64);
        let mut batching = Batching::new(&s.inbox, s.window);
        batching.confirmed = confirmed;
        s.batching = Some(batching);
        s.conn = Some(Publisher::in_memory());
        s
    }

    fn event(n: u64) -> Event {
        Event {
            id: EventId::new(&format!("t-0-{n}")),
            ce_type: "t".into(),
            validation: "valid",
            json: Bytes::from_static(b"{}"),
            data_omitted: false,
            overridden: 0,
            wrapped: false,
        }
    }

    async fn send(s: &mut JetStreamSink, n: u64) {
        let subject: Arc<str> = "eg.t".into();
        let shutdown = CancellationToken::new();
        for i in 0..n {
            assert!(s.send(subject.clone(), event(i), Instant::now(), &shutdown).await);
        }
    }

    fn states(s: &JetStreamSink) -> Vec<State> {
        s.pending.iter().map(|f| f.state).collect()
    }

    fn appended(s: &JetStreamSink) -> String {
        String::from_utf8_lossy(s.conn.as_ref().map_or(&[][..], Publisher::appended)).into_owned()
    }

    #[tokio::test]
    async fn acknowledgements_settle_their_own_batch_and_no_more() {
        // Not confirmed: the first flow acknowledgement confirms it.
        let mut s = sink(false).await;
        send(&mut s, 5).await;
        assert!(appended(&s).contains("_INBOX.t.t-0.32.fail.1.0.$FI"), "{}", appended(&s));
        s.on_batch_answer(0, 1, BATCH_START, BatchAnswer::Flow { stored: 3 });
        assert_eq!(states(&s)[..], [State::Done, State::Done, State::Done, State::Sent, State::Sent]);
        // A made-up batch starting inside this one, with a count far past it: nothing is settled
        // (the walk stops at the first event that is not the named batch's).
        s.on_batch_answer(3, 1, BATCH_APPEND, BatchAnswer::End { seq: 9, count: u64::MAX });
        assert_eq!(states(&s)[3..], [State::Sent, State::Sent]);
        s.end_batch();
        assert!(appended(&s).contains("PUB eg.t _INBOX.t.t-0.32.fail.6.3.$FI 0"), "{}", appended(&s));
        // The next events open another batch, named by its first token.
        send(&mut s, 2).await;
        assert!(appended(&s).contains(".t-5.32.fail.1.0.$FI"), "{}", appended(&s));
        s.on_batch_answer(0, 6, BATCH_END, BatchAnswer::End { seq: 9, count: u64::MAX });
        assert_eq!(states(&s)[3..], [State::Done, State::Done, State::Sent, State::Sent], "only batch 0's");
        assert_eq!(s.last_seq, 9);
    }

    #[tokio::test]
    async fn no_batch_is_ended_before_the_server_has_shown_it_knows_batches() {
        let mut s = sink(false).await;
        send(&mut s, 2).await;
        s.end_batch();
        assert!(!appended(&s).contains(".3.$FI"), "no end yet: {}", appended(&s));
        assert!(s.batching.as_ref().is_some_and(|b| b.open.is_some() && b.end_at.is_some()), "it lingers");
        // A server before 2.14 answers the batch's first publish as a plain one: batches stop,
        // and no end is ever sent (it would be stored as a message).
        s.on_batch_answer(0, 1, BATCH_START, BatchAnswer::parse(None, br#"{"stream":"S","seq":1}"#));
        assert!(s.batching.is_none());
        assert!(!appended(&s).contains(".3.$FI"));
        assert_eq!(states(&s), [State::Done, State::Sent]);
    }

    /// A chunk published through a connected sink: one `HPUB` per event, in order, with
    /// consecutive reply tokens, all in the window. (That no `async` call is made per event is a
    /// matter of cost, measured in BENCHMARKS.md, which this test cannot see.)
    #[tokio::test]
    async fn a_chunk_is_appended_in_order_by_a_connected_sink() {
        let mut s = sink(true).await;
        s.batching = None;
        let subject: Arc<str> = "eg.t".into();
        s.publish(&subject, (0..3).map(event).collect(), &CancellationToken::new()).await;
        assert_eq!(states(&s), [State::Sent; 3]);
        let out = appended(&s);
        let at: Vec<usize> = (0..3).map(|t| out.find(&format!("HPUB eg.t _INBOX.t.{t} ")).unwrap()).collect();
        assert!(at.is_sorted(), "{out}");
        assert!(out.contains("Nats-Msg-Id: t-0-2\r\n"), "{out}");
        assert_eq!(s.pending_bytes, 6);
    }

    /// An event goes out first as a slice of the block it was built in; sent again, it is a copy,
    /// so events waiting for a resend never keep old blocks alive.
    #[tokio::test]
    async fn an_event_sent_again_is_a_copy_not_a_slice_of_its_block() {
        let mut s = sink(true).await;
        s.batching = None;
        let block = Bytes::from_static(b"{}[]");
        let subject: Arc<str> = "eg.t".into();
        let shutdown = CancellationToken::new();
        for i in 0..2usize {
            let e = Event { json: block.slice(2 * i..2 * i + 2), ..event(i as u64) };
            assert!(s.send(subject.clone(), e, Instant::now(), &shutdown).await);
        }
        assert!(block.as_ptr_range().contains(&s.pending[1].json.as_ptr()));
        s.on_answer(0, Answer::Stored { seq: 1, duplicate: false });
        s.on_answer(1, Answer::Retry { description: "not yet".into() });
        s.retry(&shutdown).await;
        assert_eq!(states(&s), [State::Sent]);
        let again = &s.pending[0];
        assert_eq!((&again.json[..], again.id.as_str()), (&b"[]"[..], "t-0-1"));
        assert!(!block.as_ptr_range().contains(&again.json.as_ptr()));
    }

    #[tokio::test]
    async fn an_error_ends_the_batch_and_unknown_batch_answers_are_sent_again() {
        let mut s = sink(true).await;
        send(&mut s, 4).await;
        let too_big =
            br#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        s.on_batch_answer(0, 2, BATCH_APPEND, BatchAnswer::parse(None, too_big));
        let unknown = br#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"}}"#;
        for seq in 3..=4 {
            s.on_batch_answer(0, seq, BATCH_APPEND, BatchAnswer::parse(None, unknown));
        }
        // Publish 1 is still unanswered, 2 is dropped for good, 3 and 4 were not stored.
        assert_eq!(states(&s), [State::Sent, State::Done, State::Again, State::Again]);
        let b = s.batching.as_ref().expect("still batching");
        assert!(b.open.is_none(), "the server ended the batch");
        assert!(b.paused_until.is_some(), "one answer per event for a while");
        // While paused, events are sent on their own.
        send(&mut s, 1).await;
        assert!(appended(&s).ends_with("{}\r\n"));
        assert!(appended(&s).contains("HPUB eg.t _INBOX.t.4 "), "{}", appended(&s));
    }
}
