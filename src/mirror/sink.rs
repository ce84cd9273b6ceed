//! Where mirrored events go: a JetStream stream, or (without NATS) an in-process feed.
//!
//! The JetStream sink keeps up to `window` publishes unacknowledged and waits for the oldest when
//! the window is full. A publish that fails, is answered with an error, or stays unacknowledged for
//! 5 s is sent again, with the same `Nats-Msg-Id`, until it is stored, backing off while NATS is
//! away; the stream's duplicate window turns any resend of an event that had in fact been stored
//! into a no-op.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::event::Event;

/// NATS header naming the event's `type`, so watchers filter without parsing the body.
pub const TYPE_HEADER: &str = "Eg-Type";
/// NATS header naming the validation outcome.
pub const VALIDATION_HEADER: &str = "Eg-Validation";

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
    pub async fn publish(&mut self, subject: &str, events: Vec<Event>, shutdown: &CancellationToken) {
        match self {
            Self::JetStream(s) => s.publish(subject, events, shutdown).await,
            Self::Local(s) => s.publish(subject, events),
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

    fn publish(&mut self, subject: &str, events: Vec<Event>) {
        let subject: Arc<str> = subject.into();
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

/// Publishes to JetStream as a pipeline: every event is a plain publish whose reply subject is
/// `<inbox>.<token>` under one subscription, and acknowledgements are matched by token. This is
/// what a request per event does, without a reply inbox, a channel and a timer per event.
pub struct JetStreamSink {
    client: async_nats::Client,
    inbox: String,
    acks: Option<async_nats::Subscriber>,
    window: usize,
    /// Sent, not yet acknowledged, oldest first.
    pending: VecDeque<InFlight>,
    next_token: u64,
    failures: metrics::Counter,
    /// Acknowledgements are failing (logged once per outage).
    degraded: bool,
}

struct InFlight {
    token: u64,
    subject: String,
    event: Event,
    sent: tokio::time::Instant,
    acked: bool,
}

/// How long an event may stay unacknowledged before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

fn headers(e: &Event) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", e.id.as_str());
    h.insert("Content-Type", "application/cloudevents+json");
    h.insert(TYPE_HEADER, e.ce_type.as_str());
    h.insert(VALIDATION_HEADER, e.validation);
    h
}

impl JetStreamSink {
    /// Connects a publisher of its own and makes sure the stream exists, retrying in the
    /// background; `None` only if `abort` fires first.
    pub async fn connect(config: &crate::nats::NatsConfig, abort: &CancellationToken) -> Option<Self> {
        let client = crate::nats::until_ready("mirror connection", abort, || crate::nats::connect(config)).await?;
        {
            let (js, config, abort) = (crate::nats::jetstream(client.clone(), config), config.clone(), abort.clone());
            tokio::spawn(async move {
                crate::nats::until_ready("mirror stream", &abort, || crate::nats::ensure_stream(&js, &config)).await
            });
        }
        Some(Self::new(client, config.window))
    }

    pub fn new(client: async_nats::Client, window: usize) -> Self {
        let inbox = client.new_inbox();
        Self {
            client,
            inbox,
            acks: None,
            window: window.max(1),
            pending: VecDeque::new(),
            next_token: 0,
            failures: metrics::counter!("eventgate_mirror_publish_retries_total"),
            degraded: false,
        }
    }

    async fn publish(&mut self, subject: &str, events: Vec<Event>, shutdown: &CancellationToken) {
        for event in events {
            while self.pending.len() >= self.window {
                if !self.settle(shutdown).await {
                    return;
                }
            }
            if !self.send(subject.to_owned(), event, shutdown).await {
                return;
            }
        }
    }

    /// Sends one event, retrying until the client takes it; false only on shutdown.
    async fn send(&mut self, subject: String, event: Event, shutdown: &CancellationToken) -> bool {
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
            let reply = format!("{}.{token}", self.inbox);
            let sent = tokio::select! {
                r = self.client.publish_with_reply_and_headers(subject.clone(), reply, headers(&event), event.json.clone()) => r,
                _ = shutdown.cancelled() => return false,
            };
            match sent {
                Ok(()) => {
                    self.next_token += 1;
                    self.pending.push_back(InFlight {
                        token,
                        subject,
                        event,
                        sent: tokio::time::Instant::now(),
                        acked: false,
                    });
                    return true;
                }
                Err(e) => {
                    self.failures.increment(1);
                    tracing::debug!(id = event.id, error = %e, "publish to JetStream failed; retrying");
                    if !pause(&mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits until the oldest event is acknowledged (or resent after a timeout or an error), then
    /// drops every acknowledged event from the front. False on shutdown.
    async fn settle(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            while self.pending.front().is_some_and(|f| f.acked) {
                self.pending.pop_front();
            }
            let Some(front) = self.pending.front() else { return true };
            let deadline = front.sent + ACK_TIMEOUT;
            let Some(acks) = self.acks.as_mut() else { return true };
            let next = tokio::select! {
                m = acks.next() => m,
                _ = tokio::time::sleep_until(deadline) => {
                    // The oldest was not acknowledged in time: send it again (same id).
                    self.resend_front(shutdown, "timed out").await;
                    continue;
                }
                _ = shutdown.cancelled() => return false,
            };
            let Some(m) = next else {
                // The subscription ended (connection replaced): subscribe again and resend the window.
                self.acks = None;
                self.resend_all(shutdown).await;
                continue;
            };
            let Some(token) = m.subject.as_str().rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            let Some(i) = self.pending.iter().position(|f| f.token == token) else { continue };
            if is_error(&m.payload) {
                let why = String::from_utf8_lossy(&m.payload).into_owned();
                if let Some(f) = self.pending.remove(i) {
                    self.retry(f, shutdown, &why).await;
                }
                continue;
            }
            self.pending[i].acked = true;
            if self.degraded {
                self.degraded = false;
                tracing::info!("JetStream acknowledges mirrored events again");
            }
            if i == 0 {
                return true;
            }
        }
    }

    async fn resend_front(&mut self, shutdown: &CancellationToken, why: &str) {
        if let Some(f) = self.pending.pop_front() {
            self.retry(f, shutdown, why).await;
        }
    }

    async fn resend_all(&mut self, shutdown: &CancellationToken) {
        let all: Vec<InFlight> = self.pending.drain(..).filter(|f| !f.acked).collect();
        for f in all {
            if !self.send(f.subject, f.event, shutdown).await {
                return;
            }
        }
    }

    async fn retry(&mut self, f: InFlight, shutdown: &CancellationToken, why: &str) {
        self.failures.increment(1);
        if !self.degraded {
            self.degraded = true;
            tracing::warn!(id = f.event.id, why, "JetStream did not acknowledge an event; resending until it does");
        }
        // A refusal (e.g. no stream yet) is worth a short pause; a timeout has waited already.
        if why != "timed out" {
            let mut backoff = Duration::from_millis(50);
            let _ = pause(&mut backoff, shutdown).await;
        }
        self.send(f.subject, f.event, shutdown).await;
    }

    async fn flush(&mut self, shutdown: &CancellationToken) {
        while !self.pending.is_empty() {
            if !self.settle(shutdown).await {
                break;
            }
        }
    }
}

/// Whether a JetStream publish answer is an error (`{"error": ...}`); anything else is a
/// `PubAck`, including `"duplicate": true` for an event the stream already holds.
fn is_error(payload: &[u8]) -> bool {
    payload.is_empty() || payload.windows(8).any(|w| w == b"\"error\"")
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
