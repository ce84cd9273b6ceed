//! The delivery engine: one worker per subscription, reading its durable consumer and sending to
//! its channel.
//!
//! A worker is started for each subscription whose channel resolves, and restarted whenever what
//! it delivers with changes ([`Plan`]). It reads the consumer `eg-sub-<name>` (shared by every
//! instance: JetStream hands each event to one of them), skips (acknowledges) events the
//! subscription does not select, and delivers the rest:
//!
//! - `unordered`: up to `concurrency` requests in flight; the consumer's `max_ack_pending` is the
//!   same number, so no instance holds more unacknowledged events than that;
//! - `ordered`: `max_ack_pending` 1: one event (or batch) at a time across all instances, the next
//!   only once the previous was delivered or dead-lettered;
//! - `batch` channels: events gathered up to the channel's count, bytes and wait, sent as one
//!   request, settled together.
//!
//! An answer settles the events ([`Answer`]): 2xx acknowledges them; a retryable failure NAKs them
//! with the backoff delay (or the sink's `Retry-After`, capped), until JetStream's delivery count
//! passes `retry`; then, or at once for a non-retryable answer, they are dead-lettered with the
//! `delivery*` extensions and acknowledged only once the dead letter is stored. A 410 pauses the
//! subscription. Memory is bounded by the in-flight events (the consumer hands out no more).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::encode::{self, Stored};
use super::resource::{
    Backoff, DeadLetter, Mode, Ordering, ResolvedChannel, Resource, Spec, StartAt, SubscriptionSpec, parse_duration,
};
use super::sink::{Answer, Payload};
use super::{SubsConfig, Subscriptions, env};

/// The durable consumer of a subscription.
pub fn consumer_name(subscription: &str) -> String {
    format!("eg-sub-{subscription}")
}

/// Longest text of an error kept in a status or a dead letter.
const MAX_ERROR_TEXT: usize = 1024;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Sequence(u64),
    Time(time::OffsetDateTime),
}

/// Where dead letters of a subscription go.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterTo {
    Subject(String),
    Channel(Box<ResolvedChannel>),
}

/// Everything a worker delivers with; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub spec: SubscriptionSpec,
    pub channel: ResolvedChannel,
    pub dead_letter: DeadLetterTo,
    pub paused: bool,
    /// The subjects of its topics.
    pub subjects: Vec<String>,
    /// When it was last replayed (a replay restarts the worker on the new consumer).
    pub replayed: Option<String>,
}

impl Plan {
    fn backoff(&self, attempt: i64) -> Duration {
        let d = &self.spec.delivery;
        let base = parse_duration(&d.backoff_delay).unwrap_or(Duration::from_secs(1));
        let max = parse_duration(&d.max_delay).unwrap_or(Duration::from_secs(300));
        let n = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
        let delay = match d.backoff_policy {
            Backoff::Linear => base.saturating_mul(n),
            Backoff::Exponential => base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(30))),
        };
        delay.min(max)
    }

    fn retry_after(&self, given: Duration) -> Duration {
        given.min(parse_duration(&self.spec.delivery.retry_after_max).unwrap_or(Duration::from_secs(600)))
    }

    fn concurrency(&self) -> usize {
        match self.spec.delivery.ordering {
            Ordering::Ordered => 1,
            Ordering::Unordered => self.spec.delivery.concurrency.max(1) as usize,
        }
    }

    fn batch_events(&self) -> usize {
        if self.channel.mode == Mode::Batch { self.channel.batch_events } else { 1 }
    }

    /// Whether the event stored under `subject` is one this subscription wants.
    fn selects(&self, subject: &str, stored: &Stored<'_>) -> bool {
        let s = &self.spec;
        if self.subjects.len() > 1 && !self.subjects.iter().any(|p| crate::http::ws::subject_matches(p, subject)) {
            return false;
        }
        if !s.types.is_empty() && !stored.attr("type").is_some_and(|t| s.types.iter().any(|x| *x == t)) {
            return false;
        }
        if let Some(source) = &s.source
            && stored.attr("source").as_deref() != Some(source.as_str())
        {
            return false;
        }
        if !s.validation.is_empty() {
            let v = stored.attr("validation");
            if !v.is_some_and(|v| s.validation.iter().any(|o| o.as_str() == v)) {
                return false;
            }
        }
        s.filters.iter().all(|f| f.matches(&|name| stored.attr(name)))
    }
}

fn subjects(config: &SubsConfig, spec: &SubscriptionSpec) -> Vec<String> {
    let prefix = if spec.rejected { &config.rejected_prefix } else { &config.subject_prefix };
    spec.topics.iter().map(|t| format!("{prefix}.{t}")).collect()
}

/// The consumer's filter: the one topic's subject, or (several topics) every subject under the
/// prefix, the topics then matched here. One filter subject works with every JetStream server;
/// several need 2.10.
fn consumer_filter(config: &SubsConfig, spec: &SubscriptionSpec) -> String {
    match subjects(config, spec).as_slice() {
        [one] => one.clone(),
        _ => format!("{}.>", if spec.rejected { &config.rejected_prefix } else { &config.subject_prefix }),
    }
}

/// A subscription's counters on this instance, and `/metrics`.
pub struct Stats {
    delivered: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    filtered: metrics::Counter,
    pub replays: metrics::Counter,
    pub pending: metrics::Gauge,
    pub paused: metrics::Gauge,
    counts: [AtomicU64; 4],
    last_success: Mutex<Option<String>>,
    last_error: Mutex<Option<Value>>,
}

const DELIVERED: usize = 0;
const RETRIED: usize = 1;
const DEAD_LETTERED: usize = 2;
const FILTERED: usize = 3;

impl Stats {
    pub fn new(name: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("eventgate_subscription_events_total", "subscription" => name.to_owned(), "outcome" => outcome);
        Self {
            delivered: counter("delivered"),
            retried: counter("retried"),
            dead_lettered: counter("dead_lettered"),
            filtered: counter("filtered"),
            replays: metrics::counter!("eventgate_subscription_replays_total", "subscription" => name.to_owned()),
            pending: metrics::gauge!("eventgate_subscription_pending", "subscription" => name.to_owned()),
            paused: metrics::gauge!("eventgate_subscription_paused", "subscription" => name.to_owned()),
            counts: Default::default(),
            last_success: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    fn add(&self, which: usize, n: u64) {
        self.counts[which].fetch_add(n, AtomicOrdering::Relaxed);
        match which {
            DELIVERED => self.delivered.increment(n),
            RETRIED => self.retried.increment(n),
            DEAD_LETTERED => self.dead_lettered.increment(n),
            _ => self.filtered.increment(n),
        }
    }

    fn success(&self) {
        *self.last_success.lock().unwrap_or_else(PoisonError::into_inner) = Some(crate::validate::batch::now_rfc3339());
    }

    pub fn error(&self, status: u16, text: &str) {
        let text: String = text.chars().take(MAX_ERROR_TEXT).collect();
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(json!({ "time": crate::validate::batch::now_rfc3339(), "status": status, "error": text }));
    }

    /// The status the API shows.
    pub fn view(&self, paused: Option<Value>, consumer: Option<consumer::Info>) -> Value {
        let n = |i: usize| self.counts[i].load(AtomicOrdering::Relaxed);
        json!({
            "paused": paused,
            "delivered": n(DELIVERED),
            "retried": n(RETRIED),
            "dead_lettered": n(DEAD_LETTERED),
            "filtered": n(FILTERED),
            "pending": consumer.as_ref().map(|c| c.num_pending),
            "in_flight": consumer.as_ref().map(|c| c.num_ack_pending),
            "redelivered": consumer.as_ref().map(|c| c.num_redelivered),
            "last_success": *self.last_success.lock().unwrap_or_else(PoisonError::into_inner),
            "last_error": *self.last_error.lock().unwrap_or_else(PoisonError::into_inner),
            "counts_are": "this instance's since it started; pending, in_flight and redelivered are the shared consumer's",
        })
    }
}

/// The consumer's state, when it exists.
pub async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> Option<consumer::Info> {
    let s = js.get_stream(stream).await.ok()?;
    s.consumer_info(consumer_name(name)).await.ok()
}

/// The consumer's configuration for a plan.
fn consumer_config(
    config: &SubsConfig,
    name: &str,
    spec: &SubscriptionSpec,
    channel: &ResolvedChannel,
    deliver: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    let filter_subject = consumer_filter(config, spec);
    let concurrency = match spec.delivery.ordering {
        Ordering::Ordered => 1,
        Ordering::Unordered => spec.delivery.concurrency.max(1) as i64,
    };
    let per_request = if channel.mode == Mode::Batch { channel.batch_events as i64 } else { 1 };
    consumer::pull::Config {
        durable_name: Some(consumer_name(name)),
        description: Some(format!("eventgate subscription {name}")),
        filter_subject,
        deliver_policy: deliver,
        ack_policy: consumer::AckPolicy::Explicit,
        // An event handed out and not settled in this time goes to another instance (or to this
        // one again, after a crash). An event waits in the client for at most one delivery before
        // its own starts (the consumer hands out no more than can be in flight), so two timeouts
        // and a batch's wait, with room to spare.
        ack_wait: channel.timeout * 2 + channel.batch_wait + Duration::from_secs(5),
        max_ack_pending: concurrency * per_request,
        max_deliver: -1,
        ..Default::default()
    }
}

fn start_policy(spec: &SubscriptionSpec) -> consumer::DeliverPolicy {
    match spec.start {
        StartAt::New => consumer::DeliverPolicy::New,
        StartAt::All => consumer::DeliverPolicy::All,
    }
}

/// Opens the subscription's consumer, creating it where the subscription starts, or updating the
/// existing one (its position kept) when what it selects or how much it hands out changed.
async fn open_consumer(
    js: &jetstream::Context,
    config: &SubsConfig,
    plan: &Plan,
) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
    let stream = js.get_stream(&config.stream).await.map_err(|e| format!("stream {}: {e}", config.stream))?;
    let name = consumer_name(&plan.name);
    match stream.get_consumer::<consumer::pull::Config>(&name).await {
        Ok(mut existing) => {
            let have = existing.cached_info().config.clone();
            let want = consumer_config(config, &plan.name, &plan.spec, &plan.channel, have.deliver_policy);
            let same = have.filter_subject == want.filter_subject
                && have.max_ack_pending == want.max_ack_pending
                && have.ack_wait == want.ack_wait;
            if same {
                return Ok(existing);
            }
            // Create-or-update with the same name and start: the server keeps its position.
            existing = stream.create_consumer(want).await.map_err(|e| format!("updating consumer {name}: {e}"))?;
            Ok(existing)
        }
        Err(_) => {
            let want = consumer_config(config, &plan.name, &plan.spec, &plan.channel, start_policy(&plan.spec));
            stream.create_consumer(want).await.map_err(|e| format!("creating consumer {name}: {e}"))
        }
    }
}

/// Recreates the consumer at `from` (replay).
pub async fn recreate_consumer(
    js: &jetstream::Context,
    config: &SubsConfig,
    name: &str,
    spec: &SubscriptionSpec,
    channel: &ResolvedChannel,
    from: Start,
) -> Result<(), String> {
    let stream = js.get_stream(&config.stream).await.map_err(|e| format!("stream {}: {e}", config.stream))?;
    let policy = match from {
        Start::Sequence(seq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) },
        Start::Time(t) => consumer::DeliverPolicy::ByStartTime { start_time: t },
    };
    let mut last = String::new();
    // A worker may recreate the old consumer between the delete and the create: try again.
    for _ in 0..5 {
        let _ = stream.delete_consumer(&consumer_name(name)).await;
        match stream.create_consumer(consumer_config(config, name, spec, channel, policy)).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("cannot recreate consumer {}: {last}", consumer_name(name)))
}

/// The plan of each subscription as the resources say now, or why it has none.
fn plans(subs: &Subscriptions) -> HashMap<String, Result<Plan, String>> {
    let r = subs.resources();
    let mut out = HashMap::new();
    for (name, res) in &r.subscriptions {
        let Resource { spec: Spec::Subscription(s), .. } = res else { continue };
        let plan = (|| {
            let channel = r.resolve_channel(&s.channel, &env).map_err(|e| e.to_string())?;
            let dead_letter = match &s.delivery.dead_letter {
                Some(DeadLetter { channel: Some(c), .. }) => {
                    DeadLetterTo::Channel(Box::new(r.resolve_channel(c, &env).map_err(|e| e.to_string())?))
                }
                Some(DeadLetter { subject: Some(subject), .. }) => DeadLetterTo::Subject(subject.clone()),
                _ => DeadLetterTo::Subject(format!("{}.{name}", subs.config.deadletter_prefix)),
            };
            Ok(Plan {
                name: name.clone(),
                spec: (**s).clone(),
                channel,
                dead_letter,
                paused: subs.paused(name).is_some(),
                subjects: subjects(&subs.config, s),
                replayed: subs.replayed(name),
            })
        })();
        out.insert(name.clone(), plan);
    }
    out
}

/// Keeps one worker per subscription, in step with the resources, until `shutdown`.
pub async fn reconcile(subs: Arc<Subscriptions>, mut changed: watch::Receiver<u64>, shutdown: CancellationToken) {
    let mut running: HashMap<String, (Plan, CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted = plans(&subs);
        running.retain(|name, (plan, stop, _)| {
            let keep = matches!(wanted.get(name), Some(Ok(p)) if p == plan);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, plan) in wanted {
            match plan {
                Ok(plan) if !running.contains_key(&name) => {
                    let stop = shutdown.child_token();
                    let task = tokio::spawn(worker(subs.clone(), plan.clone(), stop.clone()));
                    running.insert(name, (plan, stop, task));
                }
                Ok(_) => {}
                Err(e) => {
                    subs.stats(&name).error(0, &e);
                    tracing::warn!(subscription = name, error = e, "subscription not started");
                }
            }
        }
        tokio::select! {
            c = changed.changed() => if c.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    for (_, (_, stop, task)) in running {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// Spaces requests to a rate a sink allowed in the handshake.
struct Pace {
    every: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl Pace {
    async fn wait(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next = Instant::now().max(*next) + self.every;
    }
}

/// What one worker shares with its deliveries.
struct Ctx {
    subs: Arc<Subscriptions>,
    plan: Plan,
    stats: Arc<Stats>,
    pace: Option<Pace>,
}

/// Runs one subscription until `stop`.
async fn worker(subs: Arc<Subscriptions>, plan: Plan, stop: CancellationToken) {
    let stats = subs.stats(&plan.name);
    stats.paused.set(if plan.paused { 1.0 } else { 0.0 });
    if plan.paused {
        tracing::info!(subscription = plan.name, "subscription paused");
        return;
    }
    let mut failures = 0u32;
    let wait =
        |failures: u32| Duration::from_millis(200u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(30));
    // The webhook handshake, before anything is sent.
    let mut pace = None;
    if plan.channel.handshake {
        loop {
            match subs.sinks.handshake(&plan.channel).await {
                Ok(consent) => {
                    pace = consent.rate_per_minute.map(|r| Pace {
                        every: Duration::from_secs(60) / r,
                        next: tokio::sync::Mutex::new(Instant::now()),
                    });
                    break;
                }
                Err(e) => {
                    stats.error(0, &format!("webhook handshake: {e}"));
                    tracing::warn!(subscription = plan.name, error = e, "webhook handshake refused; retrying");
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait(failures)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
    let ctx = Arc::new(Ctx { subs: subs.clone(), plan, stats, pace });
    let permits = Arc::new(Semaphore::new(ctx.plan.concurrency()));
    loop {
        let consumer = match open_consumer(&subs.js, &subs.config, &ctx.plan).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(subscription = ctx.plan.name, error = e, "cannot open the subscription's consumer");
                }
                ctx.stats.error(0, &e);
                tokio::select! {
                    _ = tokio::time::sleep(wait(failures)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        let per_pull = ctx.plan.concurrency() * ctx.plan.batch_events();
        let messages = consumer
            .stream()
            .max_messages_per_batch(per_pull)
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                failures += 1;
                ctx.stats.error(0, &format!("reading consumer: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(wait(failures)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        failures = 0;
        let ended = pump(&ctx, &mut messages, &permits, &stop).await;
        if ended {
            break;
        }
    }
    // Deliveries in flight finish (each has its timeout), so nothing is left half-settled.
    let _ = permits.acquire_many(ctx.plan.concurrency() as u32).await;
}

/// Hands messages to deliveries until `stop` (true) or the message stream fails (false).
async fn pump(
    ctx: &Arc<Ctx>,
    messages: &mut consumer::pull::Stream,
    permits: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> bool {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return true },
            _ = stop.cancelled() => return true,
        };
        let first = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => return true,
        };
        let first = match first {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(subscription = ctx.plan.name, error = %e, "consumer stream error; reopening");
                return false;
            }
            None => return false,
        };
        let mut batch = vec![first];
        if ctx.plan.channel.mode == Mode::Batch {
            let deadline = tokio::time::Instant::now() + ctx.plan.channel.batch_wait;
            let mut bytes = batch[0].payload.len();
            while batch.len() < ctx.plan.channel.batch_events && bytes < ctx.plan.channel.batch_bytes {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(m))) => {
                        bytes += m.payload.len() + 1;
                        batch.push(m);
                    }
                    Ok(Some(Err(_)) | None) | Err(_) => break,
                }
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            deliver(&ctx, batch).await;
            drop(permit);
        });
    }
}

/// Delivers one request's worth of messages and settles them.
async fn deliver(ctx: &Ctx, messages: Vec<jetstream::Message>) {
    let plan = &ctx.plan;
    let mut chosen: Vec<jetstream::Message> = Vec::with_capacity(messages.len());
    for m in messages {
        match Stored::parse(&m.payload) {
            Ok(stored) if plan.selects(&m.subject, &stored) => chosen.push(m),
            Ok(_) => {
                ctx.stats.add(FILTERED, 1);
                let _ = m.ack().await;
            }
            Err(e) => {
                // Not an event eventgate mirrored (someone published to the stream's subjects).
                tracing::warn!(subscription = plan.name, subject = %m.subject, error = %e, "skipping a message that is not a CloudEvent");
                ctx.stats.add(FILTERED, 1);
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
    if chosen.is_empty() {
        return;
    }
    let payload = match plan.channel.mode {
        Mode::Structured => Ok(Payload {
            headers: vec![(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(encode::STRUCTURED))],
            body: chosen[0].payload.clone(),
        }),
        Mode::Batch => {
            let bodies: Vec<Bytes> = chosen.iter().map(|m| m.payload.clone()).collect();
            Ok(Payload {
                headers: vec![(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(encode::BATCH))],
                body: encode::batch(&bodies),
            })
        }
        Mode::Binary => {
            Stored::parse(&chosen[0].payload).and_then(|s| s.binary()).map(|(headers, body)| Payload { headers, body })
        }
    };
    let answer = match payload {
        Ok(payload) => {
            if let Some(pace) = &ctx.pace {
                pace.wait().await;
            }
            ctx.subs.sinks.send(&plan.channel, payload).await
        }
        Err(e) => Answer::Reject { status: 0, error: format!("cannot encode the event for HTTP: {e}") },
    };
    settle(ctx, chosen, answer).await;
}

/// Acknowledges, retries, dead-letters or pauses, by the answer.
async fn settle(ctx: &Ctx, messages: Vec<jetstream::Message>, answer: Answer) {
    let plan = &ctx.plan;
    let n = messages.len() as u64;
    let attempts = messages.iter().filter_map(|m| m.info().ok().map(|i| i.delivered)).max().unwrap_or(1);
    match answer {
        Answer::Delivered => {
            for m in &messages {
                let _ = m.ack().await;
            }
            ctx.stats.add(DELIVERED, n);
            ctx.stats.success();
        }
        Answer::Retry { status, error, retry_after } if attempts <= i64::from(plan.spec.delivery.retry) => {
            let delay = retry_after.map(|d| plan.retry_after(d)).unwrap_or_else(|| plan.backoff(attempts));
            ctx.stats.error(status, &error);
            ctx.stats.add(RETRIED, n);
            tracing::debug!(subscription = plan.name, status, error, ?delay, attempts, "delivery failed; retrying");
            for m in &messages {
                let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
        Answer::Gone { error } => {
            ctx.stats.error(410, &error);
            tracing::warn!(subscription = plan.name, error, "the sink answered 410 Gone: pausing the subscription");
            let why = json!({ "reason": "the sink answered 410 Gone", "error": error, "time": crate::validate::batch::now_rfc3339() });
            if let Err(e) = ctx.subs.pause(&plan.name, why).await {
                tracing::warn!(subscription = plan.name, error = %e, "cannot record the pause");
            }
            // Kept for when the subscription resumes.
            for m in &messages {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
        failed => {
            ctx.stats.error(failed.status(), failed.error());
            for m in &messages {
                dead_letter(ctx, m, &failed, attempts).await;
            }
        }
    }
}

/// Stores an undeliverable event in the dead-letter target, then acknowledges it; if the dead
/// letter cannot be stored, the event is retried later instead.
async fn dead_letter(ctx: &Ctx, m: &jetstream::Message, answer: &Answer, attempts: i64) {
    let plan = &ctx.plan;
    let error: String = answer.error().chars().take(MAX_ERROR_TEXT).collect();
    let extensions = [
        ("deliverycode", json!(answer.status())),
        ("deliveryerror", json!(error)),
        ("deliverydest", json!(plan.channel.url_template)),
        ("deliveryattempts", json!(attempts)),
    ];
    let body = match Stored::parse(&m.payload) {
        Ok(s) => Bytes::from(s.with_extensions(&extensions)),
        Err(_) => m.payload.clone(),
    };
    let stored = match &plan.dead_letter {
        DeadLetterTo::Subject(subject) => {
            let mut headers = async_nats::HeaderMap::new();
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            headers.insert("Nats-Msg-Id", format!("{}-{seq}", plan.name).as_str());
            match ctx.subs.js.publish_with_headers(subject.clone(), headers, body).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| format!("dead-letter subject {subject}: {e}")),
                Err(e) => Err(format!("dead-letter subject {subject}: {e}")),
            }
        }
        DeadLetterTo::Channel(channel) => {
            let payload = Payload {
                headers: vec![(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static(encode::STRUCTURED),
                )],
                body,
            };
            match ctx.subs.sinks.send(channel, payload).await {
                Answer::Delivered => Ok(()),
                other => Err(format!("dead-letter channel {}: {}", channel.name, other.error())),
            }
        }
    };
    match stored {
        Ok(()) => {
            ctx.stats.add(DEAD_LETTERED, 1);
            tracing::info!(subscription = plan.name, status = answer.status(), error, "event dead-lettered");
            let _ = m.ack().await;
        }
        Err(e) => {
            ctx.stats.error(answer.status(), &e);
            tracing::warn!(subscription = plan.name, error = e, "cannot store a dead letter; retrying the event later");
            let _ = m.ack_with(AckKind::Nak(Some(plan.backoff(attempts)))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::resource::{Delivery, parse_documents};

    fn plan(delivery: Delivery) -> Plan {
        let docs = parse_documents(
            "apiVersion: eventgate/v1\nkind: Channel\nmetadata: {name: c}\nspec: {url: 'http://127.0.0.1:1/'}\n",
        )
        .expect("channel");
        let mut r = crate::subscriptions::resource::Resources::default();
        r.insert(docs[0].clone());
        let channel = r.resolve_channel("c", &|_| None).expect("resolves");
        let spec: SubscriptionSpec = serde_json::from_value(json!({"channel": "c"})).expect("spec");
        Plan {
            name: "s".into(),
            spec: SubscriptionSpec { delivery, ..spec },
            channel,
            dead_letter: DeadLetterTo::Subject("dl.s".into()),
            paused: false,
            subjects: vec!["p.>".into()],
            replayed: None,
        }
    }

    #[test]
    fn backoff_grows_by_policy_and_stops_at_the_maximum() {
        let exp = plan(Delivery { backoff_delay: "PT1S".into(), max_delay: "PT10S".into(), ..Delivery::default() });
        let secs: Vec<u64> = (1..=6).map(|a| exp.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        let lin = plan(Delivery {
            backoff_policy: Backoff::Linear,
            backoff_delay: "500ms".into(),
            max_delay: "2s".into(),
            ..Delivery::default()
        });
        let ms: Vec<u128> = (1..=5).map(|a| lin.backoff(a).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 1500, 2000, 2000]);
        assert_eq!(exp.backoff(i64::MAX), Duration::from_secs(10), "no overflow");
        let capped = plan(Delivery { retry_after_max: "PT30S".into(), ..Delivery::default() });
        assert_eq!(capped.retry_after(Duration::from_secs(3600)), Duration::from_secs(30));
    }

    #[test]
    fn selection_uses_types_source_validation_and_filters() {
        let ev = br#"{"specversion":"1.0","id":"a","source":"kafka://k/orders","type":"com.x.placed","validation":"invalid","partition":2}"#;
        let stored = Stored::parse(ev).expect("event");
        let mut p = plan(Delivery::default());
        assert!(p.selects("p.orders", &stored));
        p.spec.types = vec!["com.x.other".into()];
        assert!(!p.selects("p.orders", &stored));
        p.spec.types = vec!["com.x.placed".into()];
        p.spec.validation = vec![crate::subscriptions::resource::Outcome::Valid];
        assert!(!p.selects("p.orders", &stored));
        p.spec.validation = vec![crate::subscriptions::resource::Outcome::Invalid];
        p.spec.source = Some("kafka://k/orders".into());
        assert!(p.selects("p.orders", &stored));
        p.spec.filters =
            vec![crate::subscriptions::filter::Filter::from_value(&json!({"exact": {"partition": "3"}})).expect("f")];
        assert!(!p.selects("p.orders", &stored));
    }
}
