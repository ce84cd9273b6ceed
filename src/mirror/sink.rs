//! Where mirrored events go: a JetStream stream, or (without NATS) an in-process feed.
//!
//! The JetStream sink keeps up to `window` publishes unacknowledged and settles the oldest when the
//! window is full (holding thousands of ack futures unbounded stalls on the client's in-flight cap).
//! A publish that fails or whose acknowledgement times out is sent again, with the same
//! `Nats-Msg-Id`, until it is stored, backing off while NATS is away; the stream's duplicate window
//! turns any resend of an event that had in fact been stored into a no-op.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
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

/// Publishes to JetStream with a sliding window of outstanding acknowledgements.
pub struct JetStreamSink {
    js: jetstream::Context,
    window: usize,
    pending: VecDeque<(String, Event, PublishAckFuture)>,
    failures: metrics::Counter,
    /// Acknowledgements are failing (logged once per outage).
    degraded: bool,
}

fn message(e: &Event) -> PublishMessage {
    PublishMessage::build()
        .payload(e.json.clone())
        .message_id(e.id.as_str())
        .header("Content-Type", "application/cloudevents+json")
        .header(TYPE_HEADER, e.ce_type.as_str())
        .header(VALIDATION_HEADER, e.validation)
}

impl JetStreamSink {
    /// Connects a publisher of its own and makes sure the stream exists, retrying in the
    /// background; `None` only if `abort` fires first.
    pub async fn connect(config: &crate::nats::NatsConfig, abort: &CancellationToken) -> Option<Self> {
        let client = crate::nats::until_ready("mirror connection", abort, || crate::nats::connect(config)).await?;
        let js = crate::nats::jetstream(client, config);
        {
            let (js, config, abort) = (js.clone(), config.clone(), abort.clone());
            tokio::spawn(async move {
                crate::nats::until_ready("mirror stream", &abort, || crate::nats::ensure_stream(&js, &config)).await
            });
        }
        Some(Self::new(js, config.window))
    }

    pub fn new(js: jetstream::Context, window: usize) -> Self {
        Self {
            js,
            window: window.max(1),
            pending: VecDeque::new(),
            failures: metrics::counter!("eventgate_mirror_publish_retries_total"),
            degraded: false,
        }
    }

    async fn publish(&mut self, subject: &str, events: Vec<Event>, shutdown: &CancellationToken) {
        for e in events {
            let Some(ack) = self.send(subject, &e, shutdown).await else { return };
            self.pending.push_back((subject.to_owned(), e, ack));
            while self.pending.len() >= self.window {
                if !self.settle_oldest(shutdown).await {
                    return;
                }
            }
        }
    }

    /// Sends one event, retrying until NATS takes it; `None` only on shutdown.
    async fn send(&self, subject: &str, e: &Event, shutdown: &CancellationToken) -> Option<PublishAckFuture> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let sent = tokio::select! {
                r = self.js.send_publish(subject.to_owned(), message(e)) => r,
                _ = shutdown.cancelled() => return None,
            };
            match sent {
                Ok(ack) => return Some(ack),
                Err(err) => {
                    self.failures.increment(1);
                    tracing::debug!(id = e.id, error = %err, "publish to JetStream failed; retrying");
                    if !pause(&mut backoff, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits for the oldest acknowledgement. An event that was not acknowledged is sent again and
    /// goes back to the front of the window, so recovery after an outage resends the whole window
    /// at once instead of one event per timeout. False on shutdown.
    async fn settle_oldest(&mut self, shutdown: &CancellationToken) -> bool {
        let Some((subject, e, ack)) = self.pending.pop_front() else { return true };
        let acked = tokio::select! {
            r = ack.into_future() => r,
            _ = shutdown.cancelled() => return false,
        };
        match acked {
            Ok(_) => {
                if self.degraded {
                    self.degraded = false;
                    tracing::info!("JetStream acknowledges mirrored events again");
                }
                true
            }
            Err(err) => {
                self.failures.increment(1);
                if !self.degraded {
                    self.degraded = true;
                    tracing::warn!(id = e.id, error = %err, "JetStream did not acknowledge an event; resending until it does");
                }
                match self.send(&subject, &e, shutdown).await {
                    Some(ack) => {
                        self.pending.push_front((subject, e, ack));
                        true
                    }
                    None => false,
                }
            }
        }
    }

    async fn flush(&mut self, shutdown: &CancellationToken) {
        while !self.pending.is_empty() {
            if !self.settle_oldest(shutdown).await {
                break;
            }
        }
    }
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
