//! The delivery engine: one worker per subscription, reading its durable consumer and sending to
//! its channel.
//!
//! ```text
//! apply ──creates──▶ consumer eg-sub-<name> (shared by every instance)
//!                         │ pull: as many events as free permits, read to its end
//!                         ▼
//!   worker ─▶ select (topics, types, source, validation, filters) ─▶ encode ─▶ sink (HTTP)
//!                         │ not selected: ack                 │ answer
//!                         ▼                                   ▼
//!                       filtered          ack · NAK + delay · dead letter, then ack · pause (410)
//! ```
//!
//! A worker is started for each subscription whose channel resolves, and restarted whenever what
//! it delivers with changes ([`Plan`]). The consumer is created when the subscription is applied
//! (so a `start: new` subscription misses nothing mirrored after the apply answered); a worker only
//! opens it, and creates it itself only after [`MISSING_CONSUMER_GRACE`]. JetStream hands each
//! event to one instance. A worker asks for no more events than it has free permits and reads
//! every pull to its end, so a stopped worker hands what it pulled back at once (NAK) instead of
//! leaving it to the acknowledgement deadline:
//!
//! - `unordered`: up to `concurrency` requests in flight; the consumer hands out four rounds of it
//!   (`max_ack_pending`), so events waiting for a retry do not hold up the rest;
//! - `ordered`: `max_ack_pending` 1: one event (or batch) at a time across all instances, the next
//!   only once the previous was delivered or dead-lettered;
//! - `batch` channels: the events of a pull cut into batches at the channel's count, bytes or wait,
//!   each sent as one request and settled together.
//!
//! An answer settles the events ([`Answer`]): 2xx acknowledges them; a retryable failure NAKs them
//! with the backoff delay (or the sink's `Retry-After`, capped), until JetStream's delivery count
//! passes `retry`; then, or at once for a non-retryable answer, they are dead-lettered with the
//! `delivery*` extensions and acknowledged only once the dead letter is stored. A 410 stops the
//! worker and pauses the subscription on every instance. What a sink can make eventgate hold is
//! its subscription's permits' worth of events, each for at most the channel's timeout.

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

/// Rounds of `concurrency` an unordered subscription's consumer hands out before acknowledgements.
const PENDING_ROUNDS: i64 = 4;

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
    /// Events handed out and not settled yet (delivering, or waiting for a retry).
    pub in_flight: metrics::Gauge,
    pub paused: metrics::Gauge,
    last_success_at: metrics::Gauge,
    last_error_at: metrics::Gauge,
    counts: [AtomicU64; 4],
    /// Unix time of the last delivery, in nanoseconds (0: none yet); formatted when shown.
    last_success: AtomicU64,
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
            in_flight: metrics::gauge!("eventgate_subscription_in_flight", "subscription" => name.to_owned()),
            paused: metrics::gauge!("eventgate_subscription_paused", "subscription" => name.to_owned()),
            last_success_at: metrics::gauge!("eventgate_subscription_last_success_timestamp_seconds", "subscription" => name.to_owned()),
            last_error_at: metrics::gauge!("eventgate_subscription_last_error_timestamp_seconds", "subscription" => name.to_owned()),
            counts: Default::default(),
            last_success: AtomicU64::new(0),
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
        let now = time::OffsetDateTime::now_utc();
        self.last_success_at.set(now.unix_timestamp() as f64);
        self.last_success.store(u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0), AtomicOrdering::Relaxed);
    }

    pub fn error(&self, status: u16, text: &str) {
        self.last_error_at.set(unix_now());
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
            "last_success": match self.last_success.load(AtomicOrdering::Relaxed) {
                0 => None,
                ns => time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            },
            "last_error": *self.last_error.lock().unwrap_or_else(PoisonError::into_inner),
            "counts_are": "this instance's since it started; pending, in_flight and redelivered are the shared consumer's",
        })
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
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
    // Ordered: one event (or batch) handed out at a time, across all instances. Unordered: four
    // rounds of `concurrency`, so events waiting for a retry (NAKed with a delay, still pending)
    // do not stop the others; the worker's permits still bound the requests in flight.
    let concurrency = match spec.delivery.ordering {
        Ordering::Ordered => 1,
        Ordering::Unordered => spec.delivery.concurrency.max(1) as i64 * PENDING_ROUNDS,
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

/// Creates the subscription's consumer where the subscription starts, or updates the existing one
/// (its position kept) when what it selects or how much it hands out changed. Called when the
/// subscription is applied, so a `start: new` subscription sees every event mirrored after the
/// apply answered.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    config: &SubsConfig,
    name: &str,
    spec: &SubscriptionSpec,
    channel: &ResolvedChannel,
) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
    let stream = js.get_stream(&config.stream).await.map_err(|e| format!("stream {}: {e}", config.stream))?;
    let consumer = consumer_name(name);
    match stream.get_consumer::<consumer::pull::Config>(&consumer).await {
        Ok(existing) => {
            let have = existing.cached_info().config.clone();
            let want = consumer_config(config, name, spec, channel, have.deliver_policy);
            let same = have.filter_subject == want.filter_subject
                && have.max_ack_pending == want.max_ack_pending
                && have.ack_wait == want.ack_wait;
            if same {
                return Ok(existing);
            }
            // Create-or-update with the same name and start: the server keeps its position.
            stream.create_consumer(want).await.map_err(|e| format!("updating consumer {consumer}: {e}"))
        }
        Err(_) => {
            let want = consumer_config(config, name, spec, channel, start_policy(spec));
            stream.create_consumer(want).await.map_err(|e| format!("creating consumer {consumer}: {e}"))
        }
    }
}

/// How long a worker waits for a missing consumer before creating it itself (it was deleted
/// behind eventgate's back, or the instance that applied the subscription died before creating
/// it). Longer than a deletion or a replay takes to reach every instance, so a worker never
/// brings back a consumer that is being deleted or recreated.
const MISSING_CONSUMER_GRACE: Duration = Duration::from_secs(10);

/// Opens the subscription's consumer for a worker: the one `apply` created (see
/// [`MISSING_CONSUMER_GRACE`]).
async fn open_consumer(
    js: &jetstream::Context,
    config: &SubsConfig,
    plan: &Plan,
    missing_since: &mut Option<Instant>,
) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
    let stream = js.get_stream(&config.stream).await.map_err(|e| format!("stream {}: {e}", config.stream))?;
    match stream.get_consumer::<consumer::pull::Config>(&consumer_name(&plan.name)).await {
        Ok(c) => {
            *missing_since = None;
            let have = &c.cached_info().config;
            let want = consumer_config(config, &plan.name, &plan.spec, &plan.channel, have.deliver_policy);
            if have.filter_subject == want.filter_subject
                && have.max_ack_pending == want.max_ack_pending
                && have.ack_wait == want.ack_wait
            {
                return Ok(c);
            }
            ensure_consumer(js, config, &plan.name, &plan.spec, &plan.channel).await
        }
        Err(e) => {
            let since = *missing_since.get_or_insert_with(Instant::now);
            if since.elapsed() < MISSING_CONSUMER_GRACE {
                return Err(format!("consumer {} not found yet: {e}", consumer_name(&plan.name)));
            }
            ensure_consumer(js, config, &plan.name, &plan.spec, &plan.channel).await
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
    /// Stops this worker (a 410 stops it at once, before the pause reaches the bucket).
    stop: CancellationToken,
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
    let ctx = Arc::new(Ctx { subs: subs.clone(), plan, stats, pace, stop: stop.clone() });
    let permits = Arc::new(Semaphore::new(ctx.plan.concurrency()));
    let mut missing_since = None;
    loop {
        let consumer = match open_consumer(&subs.js, &subs.config, &ctx.plan, &mut missing_since).await {
            Ok(c) => c,
            Err(e) if missing_since.is_some() => {
                // Being created or recreated elsewhere: look again soon.
                ctx.stats.error(0, &e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
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
        failures = 0;
        if pump(&ctx, &consumer, &permits, &stop).await {
            break;
        }
    }
    // Deliveries in flight finish (each has its timeout), so nothing is left half-settled.
    let _ = permits.acquire_many(ctx.plan.concurrency() as u32).await;
}

/// Longest a pull request waits for events before the next one is sent.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Bytes one pull may bring, whatever the channel says: the NATS maximum payload, so the largest
/// event the stream can hold always fits (a pull whose byte limit is below the next event's size
/// is refused by the server every time, and the subscription would never move on), and one pull
/// never holds more than that. Batches are cut to the channel's `maxBytes` as events arrive.
const PULL_MAX_BYTES: usize = 64 << 20;

/// Hands events to deliveries until `stop` (true) or the consumer fails (false, to reopen it).
///
/// Events come in pull requests eventgate reads to their end (full, or expired after
/// [`PULL_WAIT`] or the batch wait), so when a worker stops, nothing it pulled is left unread:
/// the rest of the current pull is NAKed and goes to the next worker at once, instead of waiting
/// out its acknowledgement deadline. Each pull asks for no more events than there are free
/// permits (deliveries in flight, or batches in batch mode).
async fn pump(
    ctx: &Arc<Ctx>,
    consumer: &consumer::Consumer<consumer::pull::Config>,
    permits: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> bool {
    let plan = &ctx.plan;
    let batched = plan.channel.mode == Mode::Batch;
    // Pull in groups of half the concurrency (fewer pull requests); one at a time when
    // the sink set a rate.
    let group = if ctx.pace.is_some() { 1 } else { (plan.concurrency() / 2).max(1) };
    let mut failed = 0u32;
    loop {
        let mut held = tokio::select! {
            p = permits.clone().acquire_many_owned(group as u32) => match p { Ok(p) => p, Err(_) => return true },
            _ = stop.cancelled() => return true,
        };
        if let Ok(more) = permits.clone().try_acquire_many_owned(permits.available_permits() as u32)
            && group > 1
        {
            held.merge(more);
        }
        if let Some(pace) = &ctx.pace {
            tokio::select! {
                _ = pace.wait() => {}
                _ = stop.cancelled() => return true,
            }
        }
        if batched {
            match pull_batches(ctx, consumer, permits, held, stop).await {
                Ok(()) => failed = 0,
                Err(e) => {
                    failed += 1;
                    if failed >= 3 {
                        ctx.stats.error(0, &format!("reading the consumer: {e}"));
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if stop.is_cancelled() {
                return true;
            }
            continue;
        }
        let n = held.num_permits();
        let mut batch = match pull(consumer, n, PULL_WAIT).await {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                failed += 1;
                tracing::debug!(subscription = plan.name, error = e, "pull failed");
                if failed >= 3 {
                    ctx.stats.error(0, &format!("reading the consumer: {e}"));
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        failed = 0;
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            if stop.is_cancelled() {
                let _ = m.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let permit = held.split(1);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                deliver(&ctx, vec![m]).await;
                drop(permit);
            });
        }
        drop(held);
        if stop.is_cancelled() {
            return true;
        }
    }
}

/// The events of one pull request: up to `n`, or what arrives within `wait`.
async fn pull(
    consumer: &consumer::Consumer<consumer::pull::Config>,
    n: usize,
    wait: Duration,
) -> Result<Option<consumer::pull::Batch>, String> {
    consumer
        .batch()
        .max_messages(n)
        .max_bytes(PULL_MAX_BYTES)
        .expires(wait)
        .messages()
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Batch mode: one pull for as many batches as `held` has permits; the events are cut into
/// batches as they arrive (at the channel's count or bytes, or its batch wait after a batch's
/// first event, or the end of the pull), each sent as one request. The pull is read to its end;
/// if the worker stopped meanwhile, what it brought is NAKed.
async fn pull_batches(
    ctx: &Arc<Ctx>,
    consumer: &consumer::Consumer<consumer::pull::Config>,
    permits: &Arc<Semaphore>,
    mut held: tokio::sync::OwnedSemaphorePermit,
    stop: &CancellationToken,
) -> Result<(), String> {
    let ch = &ctx.plan.channel;
    let n = held.num_permits();
    let mut pulled = pull(consumer, n * ch.batch_events, PULL_WAIT).await?.ok_or("no pull")?;
    let mut current: Vec<jetstream::Message> = Vec::new();
    let mut bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, pulled.next()).await.ok(),
            None => Some(pulled.next().await),
        };
        let ended = matches!(next, Some(None | Some(Err(_))));
        let waited_out = next.is_none();
        if let Some(Some(Ok(m))) = next {
            bytes += m.payload.len() + 1;
            current.push(m);
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + ch.batch_wait);
        }
        let full = current.len() >= ch.batch_events || bytes >= ch.batch_bytes;
        if !current.is_empty() && (full || ended || waited_out) {
            let events = std::mem::take(&mut current);
            bytes = 0;
            deadline = None;
            if stop.is_cancelled() {
                for m in &events {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
            } else {
                // More batches than planned (cut by bytes) wait for a permit of their own.
                let permit = match held.split(1) {
                    Some(p) => p,
                    None => permits.clone().acquire_owned().await.map_err(|e| e.to_string())?,
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    deliver(&ctx, events).await;
                    drop(permit);
                });
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// Delivers one request's worth of messages and settles them.
async fn deliver(ctx: &Ctx, messages: Vec<jetstream::Message>) {
    let plan = &ctx.plan;
    let mut chosen: Vec<jetstream::Message> = Vec::with_capacity(messages.len());
    // Binary mode sends one event per request: its headers are built from the same parse that
    // selected it.
    let mut binary = None;
    for m in messages {
        match Stored::parse(&m.payload) {
            Ok(stored) if plan.selects(&m.subject, &stored) => {
                if plan.channel.mode == Mode::Binary {
                    binary = Some(stored.binary_in(&m.payload).map(|(headers, body)| Payload { headers, body }));
                }
                chosen.push(m)
            }
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
        Mode::Binary => match binary {
            Some(p) => p,
            None => Stored::parse(&chosen[0].payload)
                .and_then(|s| s.binary_in(&chosen[0].payload))
                .map(|(headers, body)| Payload { headers, body }),
        },
    };
    let answer = match payload {
        Ok(payload) => ctx.subs.sinks.send(&plan.channel, payload).await,
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
            // This instance stops taking events now; the pause then reaches the others.
            ctx.stop.cancel();
            ctx.stats.error(410, &error);
            tracing::warn!(subscription = plan.name, error, "the sink answered 410 Gone: pausing the subscription");
            let why = json!({ "reason": "the sink answered 410 Gone", "error": error, "time": crate::validate::batch::now_rfc3339() });
            if let Err(e) = ctx.subs.pause(&plan.name, why).await {
                tracing::error!(subscription = plan.name, error = %e, "cannot record the pause; this instance stopped delivering");
            }
            // Kept for when the subscription resumes.
            for m in &messages {
                let _ = m.ack_with(AckKind::Nak(Some(plan.backoff(attempts)))).await;
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
    // A dead letter must fit in one NATS message: an event close to the limit, plus the delivery
    // extensions, is stored without its data (marked `dataomitted`) rather than retried forever.
    let limit = match ctx.subs.js.client().server_info().max_payload {
        0 => usize::MAX, // not told yet
        max => max.saturating_sub(1024),
    };
    let body = match Stored::parse(&m.payload) {
        Ok(s) => {
            let whole = s.with_extensions(&extensions);
            if whole.len() > limit && matches!(plan.dead_letter, DeadLetterTo::Subject(_)) {
                Bytes::from(s.without_data(&extensions))
            } else {
                Bytes::from(whole)
            }
        }
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
            // The send may take the channel's whole timeout: keep the event's deadline away.
            let _ = m.ack_with(AckKind::Progress).await;
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
