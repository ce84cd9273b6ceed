//! The CloudEvents mirror: every record the broker accepted, as a CloudEvent, into NATS JetStream
//! (or, without NATS, to the in-process feed the websocket reads).
//!
//! The Kafka path only ever calls [`Mirror::submit`] or, for the partitions of one answer,
//! [`Mirror::submit_all`], which never block: they hand over each partition's records (the bytes
//! that went to the broker: where they were read when the request was read into room of at most
//! twice the records of its partitions the mirror takes as read, else a copy) with the offset the broker
//! assigned and the validation outcomes, or drop the job and count it when the buffer
//! (`mirror_buffer_bytes`) is full. The buffer counts what queued jobs hold: their bytes (the room
//! of a request kept where it was read, charged to its last job) plus
//! [`RECORD_OVERHEAD`] for each record its batches declare (its validation outcome), so a
//! compressed batch that claims more records than the buffer can account for is dropped from the
//! mirror, never from Kafka. The worker builds and publishes a job's events a chunk at a time
//! ([`EVENT_CHUNK`] events or [`CHUNK_BYTES`]), one batch decompressed at a time, and the sink keeps
//! at most its window unanswered: what the worker holds beyond the queue is bounded by settings,
//! not by what a job claims. A worker task turns jobs into events ([`event`]) and publishes
//! them ([`sink`]) with many acknowledgements outstanding; when NATS is away it retries, the buffer
//! fills, and once NATS is back it catches up. Each event's id is `<topic>-<partition>-<offset>`;
//! the sink stores each one exactly once (see its module doc for how).
//!
//! Records refused by policy never reach Kafka; they are mirrored to a separate subject prefix so
//! they can be watched too.

pub mod audit;
pub mod event;
pub mod publisher;
pub mod sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::mpsc;

use crate::validate::{Outcome, Route};
use crate::wire::records::{self, RawBatch};
use sink::Sink;

/// Mirror settings.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Names the Kafka cluster in each event's `source`.
    pub cluster: String,
    /// `type` of events whose record matched no AsyncAPI message.
    pub default_type: String,
    /// Subject prefix of accepted records: `<prefix>.<topic>`.
    pub subject_prefix: String,
    /// Subject prefix of records refused by policy.
    pub rejected_prefix: String,
    /// Largest event published with its data.
    pub max_event_bytes: usize,
    /// Records (bytes) waiting to be mirrored before new ones are dropped and counted.
    pub buffer_bytes: usize,
    /// Largest decompressed batch read.
    pub max_decompressed_bytes: usize,
}

/// Who sent a connection's records: the Kafka `client.id`, and the principal that authenticated
/// (SASL; never the secret), once known. Every event carries them (`clientid`, `principal`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producer {
    pub client_id: Option<Arc<str>>,
    pub principal: Option<Arc<str>>,
}

/// One partition's records, ready to be mirrored.
#[derive(Debug)]
pub struct Job {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Offset of the first record, from the broker's answer; `None` for records refused by policy.
    pub base_offset: Option<i64>,
    /// The broker's append time, used for batches with log-append-time timestamps (-1: none).
    pub log_append_time: i64,
    pub records: Bytes,
    /// Each record's validation outcome (absent: the topic is not validated).
    pub outcomes: Option<Arc<Vec<Outcome>>>,
    pub route: Option<Arc<Route>>,
    /// Who produced them.
    pub producer: Producer,
    /// The bytes of the allocation `records` lie in, when known: `records` are a slice of the
    /// request as read, which was reported in that room ([`crate::wire::frame::FrameBuffer`]).
    /// The queue may then hold that slice itself instead of a copy ([`Mirror::submit_all`]).
    pub room: Option<usize>,
}

struct MirrorMetrics {
    events: Counter,
    rejected_events: Counter,
    dropped: Counter,
    omitted: Counter,
    overridden: Counter,
    wrapped: Counter,
    queued: Gauge,
}

impl MirrorMetrics {
    fn new() -> Self {
        Self {
            events: counter!("eventgate_mirror_events_total", "kind" => "accepted"),
            rejected_events: counter!("eventgate_mirror_events_total", "kind" => "rejected"),
            dropped: counter!("eventgate_mirror_dropped_records_total"),
            omitted: counter!("eventgate_mirror_data_omitted_total"),
            overridden: counter!("eventgate_mirror_overridden_attributes_total"),
            wrapped: counter!("eventgate_mirror_wrapped_lookalikes_total"),
            queued: gauge!("eventgate_mirror_queued_bytes"),
        }
    }
}

/// Jobs the queue holds at most, whatever their bytes.
const QUEUE_JOBS: usize = 1 << 16;

/// The handle the Kafka path submits to.
pub struct Mirror {
    tx: mpsc::Sender<Queued>,
    queued_bytes: Arc<AtomicUsize>,
    limit: usize,
    metrics: Arc<MirrorMetrics>,
    /// When set, jobs are only built while this says someone is watching (the in-process feed).
    wanted: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// Where the worker publishes: built inside the worker's own runtime, so the NATS client's tasks
/// run there too.
pub enum SinkSpec {
    JetStream(crate::nats::NatsConfig),
    Local(sink::LocalSink),
}

/// The running worker; `done` resolves when it has stopped.
pub struct Worker {
    pub done: tokio::sync::oneshot::Receiver<()>,
}

/// Lowers the calling thread's scheduling priority (Linux: per-thread nice 10).
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; 0 means the calling thread on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if r != 0 {
        tracing::debug!("could not lower the mirror thread's priority");
    }
}

/// Signals that stop the worker: `drain` lets it finish what is queued, `abort` gives up retries.
#[derive(Clone, Default)]
pub struct Stop {
    pub drain: tokio_util::sync::CancellationToken,
    pub abort: tokio_util::sync::CancellationToken,
}

impl Mirror {
    /// Starts the worker that publishes to `sink`. Returns the handle and the worker task.
    pub fn start(
        config: MirrorConfig,
        sink: SinkSpec,
        stop: Stop,
        wanted: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    ) -> Result<(Arc<Self>, Worker), std::io::Error> {
        let (tx, rx) = mpsc::channel(QUEUE_JOBS);
        let metrics = Arc::new(MirrorMetrics::new());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mirror = Arc::new(Self {
            tx,
            queued_bytes: queued_bytes.clone(),
            limit: config.buffer_bytes,
            metrics: metrics.clone(),
            wanted,
        });
        let (done_tx, done) = tokio::sync::oneshot::channel();
        // The worker has a thread and a runtime of its own, at a lower CPU priority than the Kafka
        // path: when the machine is saturated the Kafka path wins and the mirror buffers, instead
        // of each stealing time from the other on shared worker threads.
        std::thread::Builder::new().name("eventgate-mirror".into()).spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the mirror's runtime; records are not mirrored");
                    return;
                }
            };
            runtime.block_on(async move {
                let sink = match sink {
                    SinkSpec::Local(l) => Sink::Local(l),
                    SinkSpec::JetStream(nc) => match sink::JetStreamSink::connect(&nc, &stop.abort).await {
                        Some(s) => Sink::JetStream(Box::new(s)),
                        None => return,
                    },
                };
                run(config, sink, rx, queued_bytes, metrics, stop).await;
            });
            let _ = done_tx.send(());
        })?;
        Ok((mirror, Worker { done }))
    }

    /// A mirror whose queue the caller reads instead of a worker (tests: what was queued, and how
    /// much of the buffer it took).
    #[cfg(test)]
    pub(crate) fn held(limit: usize) -> (Arc<Self>, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_JOBS);
        let metrics = Arc::new(MirrorMetrics::new());
        (Arc::new(Self { tx, queued_bytes: Arc::default(), limit, metrics, wanted: None }), rx)
    }

    /// The bytes the queue is charged now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Whether records are being mirrored now (always with NATS; without it, while someone watches).
    pub fn active(&self) -> bool {
        self.wanted.as_ref().is_none_or(|w| w())
    }

    /// Queues a job, a copy of its records, without ever waiting; drops and counts it when the
    /// buffer is full. Returns whether the job was queued.
    pub fn submit(&self, job: Job) -> bool {
        self.active() && self.queue_copy(job)
    }

    /// Queues the jobs of one Produce answer, in their order, without ever waiting, and returns
    /// how many were queued. The jobs whose records lie in the request as read are kept there
    /// when the room it was read into is at most [`KEPT_ROOM`] times their records
    /// ([`keep_where_read`]), let in all together: the last of them is charged the whole room, the
    /// others their records' bookkeeping, so the buffer counts the room until the worker is done
    /// with the last job that holds it (it does them in order). When the buffer or the queue
    /// cannot take them all, each is copied and let in on its own; other jobs are copied too.
    pub fn submit_all(&self, mut jobs: Vec<Job>) -> usize {
        if !self.active() {
            return 0;
        }
        if let Some(room) = keep_where_read(&mut jobs) {
            let kept = jobs.iter().filter(|j| j.room.is_some()).count();
            let mut charges: Vec<usize> =
                jobs.iter().filter(|j| j.room.is_some()).map(|j| overhead(&j.records)).collect();
            if let Some(last) = charges.last_mut() {
                *last = last.saturating_add(room);
            }
            let total = charges.iter().fold(0usize, |t, c| t.saturating_add(*c));
            if let Some(before) = self.take(total) {
                if let Ok(places) = self.tx.try_reserve_many(kept) {
                    self.metrics.queued.set(before.saturating_add(total) as f64);
                    // As many places and charges as kept jobs.
                    let mut kept = places.zip(charges);
                    let mut queued = 0;
                    for job in jobs {
                        let taken = match job.room.and_then(|_| kept.next()) {
                            Some((place, charge)) => {
                                place.send(Queued { job, charge });
                                true
                            }
                            None => self.queue_copy(job),
                        };
                        queued += usize::from(taken);
                    }
                    return queued;
                }
                self.queued_bytes.fetch_sub(total, Ordering::AcqRel);
            }
        }
        jobs.into_iter().map(|job| usize::from(self.queue_copy(job))).sum()
    }

    /// Takes `size` bytes of the buffer if they fit (never more than the limit, not even for a
    /// moment); returns what was taken before.
    fn take(&self, size: usize) -> Option<usize> {
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_add(size).filter(|n| *n <= self.limit))
            .ok()
    }

    /// Queues a copy of the job's records, charged their size and bookkeeping ([`overhead`]); a
    /// job the buffer or the queue cannot take is dropped and counted, and never copied.
    fn queue_copy(&self, mut job: Job) -> bool {
        let charge = job.records.len().saturating_add(overhead(&job.records));
        let Some(before) = self.take(charge) else {
            self.drop_job(&job, "the mirror buffer is full");
            return false;
        };
        self.metrics.queued.set(before.saturating_add(charge) as f64);
        // A place in the queue first: a job left out is never copied.
        let Ok(place) = self.tx.try_reserve() else {
            self.queued_bytes.fetch_sub(charge, Ordering::AcqRel);
            self.drop_job(&job, "the mirror queue is full or stopped");
            return false;
        };
        job.records = Bytes::copy_from_slice(&job.records);
        job.room = None;
        place.send(Queued { job, charge });
        true
    }

    /// Leaves a job out of the mirror for `why`, counted and logged like a full buffer's drops.
    pub fn drop_job(&self, job: &Job, why: &str) {
        let n = batch_record_count(&job.records);
        self.metrics.dropped.increment(n as u64);
        tracing::warn!(topic = &*job.topic, partition = job.partition, records = n, "records not mirrored: {why}");
    }
}

fn batch_record_count(records: &[u8]) -> usize {
    usize::try_from(records::declared_records(records)).unwrap_or(usize::MAX)
}

/// What a queued job holds per record beyond its bytes: the record's validation outcome and
/// bookkeeping (the same 32 bytes the validator charges a Produce request per record).
pub const RECORD_OVERHEAD: usize = 32;

/// A job in the queue, with what the buffer was charged for it (given back when the worker is
/// done with it).
///
/// A job's records are a slice of some allocation, which holding them keeps alive whole. Kept
/// where the request was read ([`Mirror::submit_all`]), the jobs of one request hold its room
/// together, and the last of them is charged it; any other job holds a copy of its records,
/// charged their size: room of unknown size, records annotated, or a slice of far more room (a
/// read buffer nobody else holds is reclaimed whole, with the room of the largest frame the
/// connection sent: a 70 KiB job read after a 100 MiB frame would hold 100 MiB). Every job is
/// also charged [`overhead`]. The copy was about 6% of the Kafka path's CPU with the mirror on
/// (113 of 1,939 samples, BENCHMARKS.md).
pub(crate) struct Queued {
    pub(crate) job: Job,
    pub(crate) charge: usize,
}

/// Which of a request's jobs are kept where the request was read: those that carry its room (all
/// the same one), when the room is at most [`KEPT_ROOM`] times all their records (a Produce
/// request is mostly its records, however many partitions it names). Returns the room; else, or
/// when they name different rooms, forgets their rooms (they are copied). Jobs without a room
/// are left as they are.
fn keep_where_read(jobs: &mut [Job]) -> Option<usize> {
    let mut rooms = jobs.iter().filter_map(|j| j.room);
    let room = rooms.next();
    let one_room = rooms.all(|r| Some(r) == room);
    let records = jobs.iter().filter(|j| j.room.is_some()).map(|j| j.records.len()).fold(0, usize::saturating_add);
    let kept = room.filter(|room| one_room && records > 0 && *room <= records.saturating_mul(KEPT_ROOM));
    if kept.is_none() {
        for job in jobs.iter_mut() {
            job.room = None;
        }
    }
    kept
}

/// How much larger than its records the room of a request may be for the queue to keep the
/// records where they were read: a job then holds at most this many times what a copy would.
pub const KEPT_ROOM: usize = 2;

/// Events built and published at a time: the worker never holds more of a job than this many
/// events, or than [`CHUNK_BYTES`] of them.
pub const EVENT_CHUNK: usize = 256;
/// Bytes of built events held at a time (events of up to `mirror_max_event_bytes` each).
pub const CHUNK_BYTES: usize = 4 << 20;

/// What a job is charged beyond the bytes it keeps alive: [`RECORD_OVERHEAD`] for every record
/// its batches say they hold. A few kilobytes of compressed records that claim tens of millions
/// of records cost more than the buffer holds, and so are dropped from the mirror (counted)
/// instead of queued.
fn overhead(records: &[u8]) -> usize {
    batch_record_count(records).saturating_mul(RECORD_OVERHEAD)
}

enum Step {
    Job(Queued),
    Sink(sink::Wake),
}

/// The NATS subject of a topic's events: `<prefix>.<topic>`. A topic's dots separate subject
/// tokens, so `orders.eu` is `<prefix>.orders.eu`; Kafka allows empty names between dots
/// (`a..b`, `.a`), which NATS does not, so an empty token is written `%` (a character Kafka
/// topic names never hold): `<prefix>.a.%.b`.
pub fn subject(prefix: &str, topic: &str) -> Arc<str> {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len());
    s.push_str(prefix);
    for token in topic.split('.') {
        s.push('.');
        s.push_str(if token.is_empty() { "%" } else { token });
    }
    s.into()
}

async fn run(
    config: MirrorConfig,
    mut sink: Sink,
    mut rx: mpsc::Receiver<Queued>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<MirrorMetrics>,
    stop: Stop,
) {
    let shutdown = stop.abort;
    // Every job's events are taken from this one block after another (`expand`).
    let mut block = BytesMut::new();
    loop {
        // Answers are read while waiting for work too, so timeouts are measured from each send,
        // not from when the window next fills.
        let step = tokio::select! {
            biased;
            // Given up on (shutdown took too long): stop at once.
            _ = shutdown.cancelled() => None,
            // Work first: answers that have arrived are also read after each send.
            j = rx.recv() => j.map(Step::Job),
            w = sink.wake(), if sink.busy() => Some(Step::Sink(w)),
            // Once draining, stop when nothing is left; the caller bounds how long that takes.
            _ = stop.drain.cancelled(), if rx.is_empty() => None,
        };
        let job = match step {
            None => break,
            Some(Step::Sink(w)) => {
                sink.handle(w, &shutdown).await;
                continue;
            }
            Some(Step::Job(queued)) => queued,
        };
        // Given back once its events are out.
        let Queued { job, charge: size } = job;
        let subject_prefix = if job.base_offset.is_some() { &config.subject_prefix } else { &config.rejected_prefix };
        let subject = subject(subject_prefix, &job.topic);
        let counter = if job.base_offset.is_some() { &metrics.events } else { &metrics.rejected_events };
        expand(&config, &job, &mut block, async |events: Vec<event::Event>| {
            // Summed per chunk: a counter's increment is two atomic additions, and most events
            // add nothing to these three.
            let (mut omitted, mut overridden, mut wrapped) = (0u64, 0u64, 0u64);
            for e in &events {
                omitted += u64::from(e.data_omitted);
                overridden += u64::from(e.overridden);
                wrapped += u64::from(e.wrapped);
            }
            for (c, n) in [(&metrics.omitted, omitted), (&metrics.overridden, overridden), (&metrics.wrapped, wrapped)]
            {
                if n > 0 {
                    c.increment(n);
                }
            }
            counter.increment(events.len() as u64);
            sink.publish(&subject, events, &shutdown).await;
        })
        .await;
        let left = queued_bytes.fetch_sub(size, Ordering::AcqRel).saturating_sub(size);
        metrics.queued.set(left as f64);
    }
    if !shutdown.is_cancelled() {
        sink.flush(&shutdown).await;
    }
    let mut left = 0;
    while let Ok(job) = rx.try_recv() {
        left += batch_record_count(&job.job.records);
    }
    if left > 0 || shutdown.is_cancelled() {
        metrics.dropped.increment(left as u64);
        tracing::warn!(records = left, "mirror stopped before publishing everything queued");
    }
}

/// The events of one job, handed to `emit` [`EVENT_CHUNK`] (or [`CHUNK_BYTES`]) at a time, so that
/// a batch that decompresses to millions of records is never held as millions of events. Their
/// JSON and ids are taken from `block` ([`event::build_into`]): the worker keeps one block for all
/// jobs, so the events of consecutive jobs lie one after another, and a job of one small record
/// does not start a block of its own.
pub async fn expand(
    config: &MirrorConfig,
    job: &Job,
    block: &mut BytesMut,
    mut emit: impl AsyncFnMut(Vec<event::Event>),
) {
    let mut out = Vec::with_capacity(EVENT_CHUNK);
    let mut out_bytes = 0usize;
    let mut scratch = Vec::new();
    let mut index = 0usize;
    let unvalidated = Outcome::Unchecked("no AsyncAPI document describes this topic".into());
    let single = job.route.as_ref().and_then(|r| (r.messages.len() == 1).then(|| &r.messages[0]));
    let mut next_offset = job.base_offset;
    let mut errors_cache: Option<(*const u8, Option<String>)> = None;
    // The attributes shared by the job's events, one entry per AsyncAPI message met.
    let mut prepared: Vec<event::Prepared> = Vec::new();
    // Each record's event id, made in one reused buffer.
    let mut id = String::with_capacity(job.topic.len() + 48);
    let source = format!("kafka://{}/{}", config.cluster, job.topic);
    let unix_nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    for batch in records::batches(&job.records) {
        let Ok(batch): Result<RawBatch<'_>, _> = batch else { break };
        if batch.header.is_control() {
            continue;
        }
        let Ok((data, _)) = batch.records_data(&mut scratch, config.max_decompressed_bytes) else { break };
        let log_append = batch.header.attributes & 0x08 != 0 && job.log_append_time >= 0;
        let batch_base = next_offset;
        // The broker gives a batch's records consecutive offsets from its base, whatever offset
        // deltas the producer wrote: an offset (and so an event id) is never the producer's choice.
        for (position, rec) in (0i64..).zip(records::records(data)) {
            let Ok(rec) = rec else { break };
            let outcome = job.outcomes.as_ref().and_then(|o| o.get(index)).unwrap_or(&unvalidated);
            let message = match (outcome, &job.route) {
                (Outcome::Valid(m), Some(route)) => route.messages.get(*m),
                _ => single,
            };
            let offset = batch_base.map(|b| b + position);
            id.clear();
            id.push_str(&job.topic);
            id.push('-');
            id.push_str(itoa::Buffer::new().format(job.partition));
            id.push('-');
            match offset {
                Some(o) => id.push_str(itoa::Buffer::new().format(o)),
                None => {
                    id.push_str("rejected-");
                    id.push_str(itoa::Buffer::new().format(unix_nanos));
                    id.push('-');
                    id.push_str(itoa::Buffer::new().format(index));
                }
            }
            // Records that fail alike share their outcome: its errors are written once for all.
            let errors_key = match outcome {
                Outcome::Invalid(e) => Some(Arc::as_ptr(e).cast::<u8>()),
                Outcome::Unchecked(why) => Some(Arc::as_ptr(why).cast::<u8>()),
                Outcome::Valid(_) => None,
            };
            if errors_key.is_some() && errors_cache.as_ref().map(|c| c.0) != errors_key {
                errors_cache = errors_key.map(|k| (k, event::validation_errors_literal(outcome)));
            }
            let errors = errors_key.and(errors_cache.as_ref()).and_then(|c| c.1.as_deref());
            let timestamp_ms =
                if log_append { job.log_append_time } else { batch.header.base_timestamp + rec.timestamp_delta };
            let ctx = event::Context {
                source: &source,
                topic: &job.topic,
                partition: job.partition,
                offset,
                id: &id,
                default_type: &config.default_type,
                message: message.map(|m| &**m),
                outcome,
                timestamp_ms,
                max_bytes: config.max_event_bytes,
                principal: job.producer.principal.as_deref(),
                client_id: job.producer.client_id.as_deref(),
                errors,
                prepared: None,
            };
            // The attributes the job's events share, written once per message from the job's
            // second record on (a job of one record gains nothing from them).
            let shared = match prepared.iter().position(|p| p.fits(&ctx)) {
                Some(i) => Some(i),
                None if index > 0 => {
                    prepared.push(event::Prepared::new(&ctx));
                    Some(prepared.len() - 1)
                }
                None => None,
            };
            let ctx = event::Context { prepared: shared.and_then(|i| prepared.get(i)), ..ctx };
            let event = event::build_into(&rec, &ctx, block);
            out_bytes += event.json.len();
            out.push(event);
            index += 1;
            if out.len() == EVENT_CHUNK || out_bytes >= CHUNK_BYTES {
                emit(std::mem::replace(&mut out, Vec::with_capacity(EVENT_CHUNK))).await;
                out_bytes = 0;
            }
        }
        next_offset = batch_base.map(|b| b + i64::from(batch.header.record_count.max(0)));
    }
    if !out.is_empty() {
        emit(out).await;
    }
}

/// How long the mirror may take to drain at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod subject_tests {
    #[test]
    fn topics_map_to_valid_subjects_one_to_one() {
        assert_eq!(&*super::subject("eg.records", "orders"), "eg.records.orders");
        assert_eq!(&*super::subject("eg.records", "orders.eu"), "eg.records.orders.eu");
        // Kafka allows these names; NATS has no empty tokens.
        assert_eq!(&*super::subject("eg.records", "a..b"), "eg.records.a.%.b");
        assert_eq!(&*super::subject("eg.records", ".a."), "eg.records.%.a.%");
    }
}
