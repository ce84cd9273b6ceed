//! Per-topic traffic over the last minutes, for the console's rates view (`GET /stats/topics`).
//!
//! Prometheus keeps history but not per topic: a topic label would let any producer mint series.
//! Here each topic gets a ring of [`BUCKETS`] counters of [`INTERVAL_SECS`] each (five minutes),
//! kept in memory and overwritten as time moves on:
//!
//! ```text
//!   topic "orders":  [ t-295 s | t-290 s | … | t-5 s | now (in progress) ]
//!                      records, valid, invalid, unchecked, refused per slot
//! ```
//!
//! What is counted, and where: `records` the broker accepted (the traffic stage, from the broker's
//! answer); `valid`/`invalid`/`unchecked` the outcomes of the records eventgate checked, and
//! `refused` the records it refused by policy (the produce stage, as it decides). A slot is
//! recognised by the interval number it holds, so a slot left over from an earlier lap of the ring
//! reads as zero and is cleared before it is counted into again.
//!
//! Bounded: at most [`MAX_TOPICS`] topics are kept by name; the rest are summed under
//! [`OTHER_TOPICS`], so a client that produces to many topics costs a fixed amount of memory.
//! Recording takes one short lock per request, never per record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds per slot.
pub const INTERVAL_SECS: u64 = 5;
/// Slots per topic: five minutes.
pub const BUCKETS: usize = 60;
/// Topics kept by name.
pub const MAX_TOPICS: usize = 1000;
/// Where names that are not legal Kafka topic names are counted (a request may carry names of up
/// to 32 KiB; none is kept).
pub const ILLEGAL_TOPICS: &str = "(illegal topic names)";
/// Where the topics beyond [`MAX_TOPICS`] are summed (not a legal Kafka topic name).
pub const OTHER_TOPICS: &str = "(other topics)";

/// What a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Records the broker accepted.
    Records = 0,
    Valid = 1,
    Invalid = 2,
    Unchecked = 3,
    /// Records eventgate refused by policy (they never reached Kafka).
    Refused = 4,
}

const KINDS: usize = 5;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The interval number (`unix seconds / INTERVAL_SECS`) these counts belong to.
    interval: u64,
    counts: [u64; KINDS],
}

struct Ring([Slot; BUCKETS]);

impl Ring {
    fn new() -> Self {
        Self([Slot::default(); BUCKETS])
    }

    fn add(&mut self, interval: u64, kind: Count, n: u64) {
        let slot = &mut self.0[(interval % BUCKETS as u64) as usize];
        if slot.interval != interval {
            *slot = Slot { interval, counts: [0; KINDS] };
        }
        slot.counts[kind as usize] = slot.counts[kind as usize].saturating_add(n);
    }

    /// The counts of one kind for the `BUCKETS` intervals ending with `last`, oldest first.
    fn series(&self, last: u64, kind: Count) -> Vec<u64> {
        let first = last + 1 - BUCKETS as u64;
        (first..=last)
            .map(|i| {
                let slot = &self.0[(i % BUCKETS as u64) as usize];
                if slot.interval == i { slot.counts[kind as usize] } else { 0 }
            })
            .collect()
    }
}

/// Per-topic counts over the last [`BUCKETS`] × [`INTERVAL_SECS`] seconds.
pub struct TopicRates {
    topics: Mutex<HashMap<Arc<str>, Ring>>,
    clock: fn() -> u64,
}

impl Default for TopicRates {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The rates as `GET /stats/topics` answers them.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub interval_secs: u64,
    pub buckets: usize,
    /// Unix time (seconds) at which the last slot (the interval in progress) ends.
    pub end: u64,
    pub topics: Vec<TopicSeries>,
    /// Whether [`MAX_TOPICS`] was reached and later topics are summed under [`OTHER_TOPICS`].
    pub other_topics: bool,
}

/// One topic's counts, oldest slot first.
#[derive(Debug, Serialize)]
pub struct TopicSeries {
    pub topic: String,
    pub records: Vec<u64>,
    pub valid: Vec<u64>,
    pub invalid: Vec<u64>,
    pub unchecked: Vec<u64>,
    pub refused: Vec<u64>,
}

impl TopicRates {
    pub fn new() -> Self {
        Self { topics: Mutex::new(HashMap::new()), clock: unix_secs }
    }

    #[cfg(test)]
    fn with_clock(clock: fn() -> u64) -> Self {
        Self { topics: Mutex::new(HashMap::new()), clock }
    }

    /// Counts `n` of `kind` for each `(topic, kind, n)`, under one lock. Topics beyond
    /// [`MAX_TOPICS`] count under [`OTHER_TOPICS`], names that are not legal topic names under
    /// [`ILLEGAL_TOPICS`]; counts saturate.
    pub fn add<'a>(&self, counts: impl IntoIterator<Item = (&'a str, Count, u64)>) {
        let interval = (self.clock)() / INTERVAL_SECS;
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, kind, n) in counts {
            if n == 0 {
                continue;
            }
            // A producer's name is kept only if it is a legal topic name (at most 249 bytes), so
            // it can also never be one of the two sums' names.
            let name: &str = if !crate::proxy::produce::legal_topic(topic) {
                ILLEGAL_TOPICS
            } else if topics.len() < MAX_TOPICS || topics.contains_key(topic) {
                topic
            } else {
                OTHER_TOPICS
            };
            if let Some(ring) = topics.get_mut(name) {
                ring.add(interval, kind, n);
                continue;
            }
            topics.entry(Arc::from(name)).or_insert_with(Ring::new).add(interval, kind, n);
        }
    }

    /// Every topic's counts, sorted by name.
    pub fn snapshot(&self) -> Snapshot {
        let now = (self.clock)();
        let last = now / INTERVAL_SECS;
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let mut series: Vec<TopicSeries> = topics
            .iter()
            .map(|(topic, ring)| TopicSeries {
                topic: topic.to_string(),
                records: ring.series(last, Count::Records),
                valid: ring.series(last, Count::Valid),
                invalid: ring.series(last, Count::Invalid),
                unchecked: ring.series(last, Count::Unchecked),
                refused: ring.series(last, Count::Refused),
            })
            .collect();
        let other_topics = topics.contains_key(OTHER_TOPICS);
        drop(topics);
        series.sort_by(|a, b| a.topic.cmp(&b.topic));
        Snapshot {
            interval_secs: INTERVAL_SECS,
            buckets: BUCKETS,
            end: (last + 1) * INTERVAL_SECS,
            topics: series,
            other_topics,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    fn now() -> u64 {
        NOW.load(Ordering::Relaxed)
    }

    #[test]
    fn counts_land_in_their_interval_and_age_out_after_the_window() {
        let r = TopicRates::with_clock(now);
        NOW.store(1_000_000, Ordering::Relaxed);
        r.add([("orders", Count::Records, 10), ("orders", Count::Invalid, 2), ("users", Count::Refused, 1)]);
        let s = r.snapshot();
        assert_eq!(s.end, 1_000_005);
        assert_eq!(s.topics.len(), 2);
        assert_eq!(s.topics[0].topic.as_str(), "orders");
        assert_eq!(s.topics[0].records.last(), Some(&10));
        assert_eq!(s.topics[0].invalid.iter().sum::<u64>(), 2);
        assert_eq!(s.topics[1].refused.iter().sum::<u64>(), 1);

        // One interval on: the counts move one slot back, and new ones go to the new slot.
        NOW.store(1_000_005, Ordering::Relaxed);
        r.add([("orders", Count::Records, 3)]);
        let s = r.snapshot();
        assert_eq!(&s.topics[0].records[BUCKETS - 2..], &[10, 3]);

        // A whole window later, the old slots read as zero even though nothing overwrote them yet.
        NOW.store(1_000_005 + (BUCKETS as u64) * INTERVAL_SECS, Ordering::Relaxed);
        assert_eq!(r.snapshot().topics[0].records.iter().sum::<u64>(), 0);
        // And a slot reused on a later lap starts from zero.
        r.add([("orders", Count::Records, 1)]);
        assert_eq!(r.snapshot().topics[0].records.iter().sum::<u64>(), 1);
    }

    #[test]
    fn topics_beyond_the_cap_are_summed_under_one_name() {
        let r = TopicRates::new();
        let names: Vec<String> = (0..MAX_TOPICS + 50).map(|i| format!("t{i}")).collect();
        r.add(names.iter().map(|n| (n.as_str(), Count::Records, 1)));
        let s = r.snapshot();
        assert_eq!(s.topics.len(), MAX_TOPICS + 1, "the cap plus the one sum");
        assert!(s.other_topics);
        let other = s.topics.iter().find(|t| &*t.topic == OTHER_TOPICS).map(|t| t.records.iter().sum::<u64>());
        assert_eq!(other, Some(50));
    }

    #[test]
    fn hostile_names_and_counts_cost_nothing_and_forge_nothing() {
        let r = TopicRates::new();
        let long = "x".repeat(32_000);
        r.add([
            (long.as_str(), Count::Refused, 1),
            ("(other topics)", Count::Refused, 1),
            ("bad name", Count::Refused, u64::MAX),
            ("bad name", Count::Refused, u64::MAX),
        ]);
        let s = r.snapshot();
        assert_eq!(s.topics.len(), 1, "every illegal name lands in one sum, none is kept");
        assert_eq!(s.topics[0].topic, ILLEGAL_TOPICS);
        assert_eq!(s.topics[0].refused.iter().copied().max(), Some(u64::MAX), "saturates, never wraps or panics");
        assert!(!s.other_topics, "a producer cannot write into the other topics' sum");
    }
}
