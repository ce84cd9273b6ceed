//! Where mirrored events go: a JetStream stream, or (without NATS) an in-process feed.
//!
//! # Exactly once in the stream
//!
//! The JetStream sink publishes as a pipeline: up to `window` events (and [`WINDOW_BYTES`]) are
//! sent and not yet acknowledged. Acknowledgements are read as they arrive, between sends and
//! while the worker waits for work, and each event's timeout runs from its own send. Every answer
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

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use metrics::{Counter, counter};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::event::Event;

/// An event on the in-process feed.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Position on the feed (counts from 1 per process).
    pub seq: u64,
    pub subject: Arc<str>,
    pub ce_type: String,
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
        matches!(self, Self::JetStream(s) if !s.pending.is_empty())
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
                json: e.json,
            }));
        }
    }
}

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
    pub fn parse(status: Option<async_nats::StatusCode>, payload: &[u8]) -> Answer {
        if status.is_some_and(|s| s == async_nats::StatusCode::NO_RESPONDERS) {
            return Answer::Retry { description: "no responders: no stream takes this subject (yet)".into() };
        }
        let raw = match serde_json::from_slice::<RawAnswer>(payload) {
            Ok(raw) => raw,
            Err(e) => {
                let text = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
                return Answer::Retry { description: format!("unreadable answer ({e}): {text}") };
            }
        };
        match (raw.error, raw.seq) {
            (Some(e), _) => {
                let description = format!("{} (code {}, err_code {})", e.description, e.code, e.err_code);
                match refusal_reason(e.err_code, &e.description) {
                    Some(reason) => Answer::Refused { reason, description },
                    None => Answer::Retry { description },
                }
            }
            (None, Some(seq)) => Answer::Stored { seq, duplicate: raw.duplicate },
            (None, None) => Answer::Retry { description: "answer without a sequence or an error".into() },
        }
    }
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

/// What the worker should act on next.
#[derive(Debug)]
pub enum Wake {
    /// An answer on the reply subscription (`None`: the subscription ended).
    Answer(Option<async_nats::Message>),
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
    subject: async_nats::Subject,
    event: Event,
    sent: Instant,
    /// The highest stream sequence known to be taken when this was sent: if the event is
    /// stored, it is stored after this.
    floor: u64,
    state: State,
}

struct SinkMetrics {
    no_ack: Counter,
    refused_retry: Counter,
    send_failed: Counter,
    confirmed: Counter,
    /// `eventgate_mirror_refused_events_total`, by the reasons [`refusal_reason`] gives.
    refused: [(&'static str, Counter); 3],
}

/// Publishes to JetStream as a pipeline (see the module doc): every event is a plain publish
/// whose reply subject is `<inbox>.<token>` under one subscription, and answers are matched by
/// token. This is what a request per event does, without a reply inbox, a channel and a timer
/// per event.
pub struct JetStreamSink {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    inbox: String,
    acks: Option<async_nats::Subscriber>,
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

/// The NATS headers of an event: its id as `Nats-Msg-Id`, which the stream's duplicate window
/// needs. Nothing else: every attribute is in the event itself, and each header costs the publisher
/// and the server work per event (watchers filtering on `type` or `validation` read the event).
/// The id is built by eventgate from a Kafka topic name and numbers, so it always fits a header.
pub fn headers(e: &Event) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    if let Ok(v) = e.id.parse::<async_nats::HeaderValue>() {
        h.insert("Nats-Msg-Id", v);
    }
    h
}

impl JetStreamSink {
    /// Connects a publisher of its own and makes sure the stream exists, retrying until both are
    /// there (jobs wait in the mirror's buffer meanwhile); `None` only if `abort` fires first.
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
        let mut sink = Self::new(client, js, config.stream.clone(), config.window);
        sink.last_seq = info.state.last_sequence;
        Some(sink)
    }

    pub fn new(client: async_nats::Client, js: jetstream::Context, stream: String, window: usize) -> Self {
        let inbox = client.new_inbox();
        let retries = |reason: &'static str| counter!("eventgate_mirror_publish_retries_total", "reason" => reason);
        Self {
            client,
            js,
            stream,
            inbox,
            acks: None,
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
                confirmed: counter!("eventgate_mirror_unanswered_found_stored_total"),
                refused: ["stream_full", "subject_full", "message_too_large"]
                    .map(|r| (r, counter!("eventgate_mirror_refused_events_total", "reason" => r))),
            },
            degraded: false,
        }
    }

    fn full(&self) -> bool {
        self.pending.len() >= self.window || self.pending_bytes >= WINDOW_BYTES
    }

    async fn publish(&mut self, subject: &Arc<str>, events: Vec<Event>, shutdown: &CancellationToken) {
        let subject = async_nats::Subject::from(&**subject);
        for event in events {
            while self.full() {
                let wake = tokio::select! {
                    w = self.wake() => w,
                    _ = shutdown.cancelled() => return,
                };
                self.handle(wake, shutdown).await;
            }
            if !self.send(subject.clone(), event, shutdown).await {
                return;
            }
            self.take_ready_answers();
        }
    }

    /// Reads every answer that has already arrived, without waiting, and moves the window on.
    fn take_ready_answers(&mut self) {
        // `None` (nothing ready) or `Some(None)` (ended: `wake` notices and subscribes again) stop.
        while let Some(Some(m)) = self.acks.as_mut().and_then(|acks| acks.next().now_or_never()) {
            self.on_answer(m);
        }
        self.trim();
    }

    /// Sends one event, retrying until the client takes it; false only on shutdown.
    async fn send(&mut self, subject: async_nats::Subject, event: Event, shutdown: &CancellationToken) -> bool {
        let floor = self.last_seq;
        self.send_from(subject, event, floor, shutdown).await
    }

    /// [`send`](Self::send) for an event first sent when the stream's known sequence was `floor`:
    /// a resend keeps the floor of the first send, so a later look into the stream still covers
    /// an original stored after all.
    async fn send_from(
        &mut self,
        subject: async_nats::Subject,
        event: Event,
        floor: u64,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.acks.is_none() {
                match self.client.subscribe(format!("{}.*", self.inbox)).await {
                    Ok(sub) => self.acks = Some(sub),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to acknowledgements; retrying");
                        if !pause(&mut backoff, shutdown).await {
                            return false;
                        }
                        continue;
                    }
                }
            }
            let token = self.next_token;
            let mut reply = String::with_capacity(self.inbox.len() + 21);
            reply.push_str(&self.inbox);
            reply.push('.');
            reply.push_str(itoa::Buffer::new().format(token));
            let sent = tokio::select! {
                r = self.client.publish_with_reply_and_headers(subject.clone(), reply, headers(&event), event.json.clone()) => r,
                _ = shutdown.cancelled() => return false,
            };
            match sent {
                Ok(()) => {
                    self.next_token += 1;
                    self.pending_bytes += event.json.len();
                    self.pending.push_back(InFlight {
                        token,
                        subject,
                        event,
                        sent: Instant::now(),
                        floor,
                        state: State::Sent,
                    });
                    return true;
                }
                Err(e) if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    // The server would refuse it every time: drop it from the mirror, counted.
                    if let Some((_, c)) = self.metrics.refused.iter().find(|(r, _)| *r == "message_too_large") {
                        c.increment(1);
                    }
                    tracing::warn!(id = event.id, error = %e, "event larger than the NATS server takes; not mirrored");
                    return true;
                }
                Err(e) => {
                    self.metrics.send_failed.increment(1);
                    tracing::debug!(id = event.id, error = %e, "publish to JetStream failed; retrying");
                    if !pause(&mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The earliest moment something is due: the oldest unanswered event's timeout, or the
    /// retry of events refused for now or in doubt.
    fn next_due(&self) -> Option<Instant> {
        let timeout = self.pending.iter().find(|f| f.state == State::Sent).map(|f| f.sent + ACK_TIMEOUT);
        match (timeout, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn wake(&mut self) -> Wake {
        let due = self.next_due();
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match self.acks.as_mut() {
            Some(acks) => tokio::select! {
                m = acks.next() => Wake::Answer(m),
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
            Wake::Answer(Some(m)) => {
                self.on_answer(m);
                self.take_ready_answers();
            }
            Wake::Answer(None) => {
                // The subscription ended: answers to what is out may never come; the timeouts
                // put those events in doubt. Subscribe again with the next send.
                self.acks = None;
            }
            Wake::Timer => self.on_timer(shutdown).await,
        }
        self.trim();
    }

    /// Drops done events from the front, so the window moves on.
    fn trim(&mut self) {
        while self.pending.front().is_some_and(|f| f.state == State::Done) {
            if let Some(f) = self.pending.pop_front() {
                self.pending_bytes -= f.event.json.len();
            }
        }
    }

    fn on_answer(&mut self, m: async_nats::Message) {
        let Some(token) = m.subject.as_str().rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else {
            return;
        };
        // Tokens increase along `pending`, so the entry is found by binary search.
        let Ok(i) = self.pending.binary_search_by_key(&token, |f| f.token) else { return };
        if self.pending[i].state == State::Done {
            return;
        }
        match Answer::parse(m.status, &m.payload) {
            Answer::Stored { seq, .. } => {
                self.last_seq = self.last_seq.max(seq);
                self.pending[i].state = State::Done;
                self.backoff = Duration::from_millis(50);
                if self.degraded {
                    self.degraded = false;
                    tracing::info!("JetStream stores mirrored events again");
                }
            }
            Answer::Refused { reason, description } => {
                self.pending[i].state = State::Done;
                if let Some((_, c)) = self.metrics.refused.iter().find(|(r, _)| *r == reason) {
                    c.increment(1);
                }
                if let Some(n) = refused_log().note() {
                    tracing::warn!(
                        id = self.pending[i].event.id,
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
                let id = self.pending[i].event.id.clone();
                self.degrade(&id, &description);
                self.schedule_retry();
            }
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
        let mut timed_out = 0u64;
        for f in self.pending.iter_mut().filter(|f| f.state == State::Sent && f.sent + ACK_TIMEOUT <= now) {
            f.state = State::Doubt;
            timed_out += 1;
        }
        if timed_out > 0 {
            self.metrics.no_ack.increment(timed_out);
            if let Some(id) = self.pending.iter().find(|f| f.state == State::Doubt).map(|f| f.event.id.clone()) {
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
            .map(|f| (f.event.id.as_str(), f.floor, &*f.subject))
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
                        if found.contains(f.event.id.as_str()) {
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
            self.pending_bytes -= f.event.json.len();
            if !self.send_from(f.subject, f.event, f.floor, shutdown).await {
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
    fn an_event_carries_only_its_id_as_a_nats_header() {
        let event = Event {
            id: "t-0-1".into(),
            ce_type: "a\r\nInjected: yes".into(),
            validation: "valid",
            json: Bytes::from_static(b"{}"),
            data_omitted: false,
            overridden: 0,
            wrapped: false,
        };
        let h = headers(&event);
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("t-0-1"));
        assert_eq!(h.iter().count(), 1, "a producer's type never reaches a header");
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
        assert!(matches!(Answer::parse(Some(async_nats::StatusCode::NO_RESPONDERS), b""), Answer::Retry { .. }));
    }
}
