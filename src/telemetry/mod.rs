//! Logs (`tracing`) and Prometheus metrics.
//!
//! Metric handles are created once and kept in plain structs, so recording on the hot path is one
//! atomic add, never a registry lookup. Without an installed recorder (unit tests) they are no-ops.
//! Per-topic rates for the console, which Prometheus labels cannot bound, are kept in [`rates`].

pub mod rates;

use std::sync::OnceLock;

use kafka_protocol::messages::ApiKey;
use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the log subscriber. `RUST_LOG` wins over `filter` when set.
pub fn init_logs(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Highest API key with its own request counter; higher keys count as "unknown".
const MAX_COUNTED_KEY: i16 = 100;

/// The proxy's metric handles.
pub struct ProxyMetrics {
    requests: Vec<Counter>,
    requests_unknown: Counter,
    connections_open: Gauge,
    pub connections_total: Counter,
    pub connection_errors: Counter,
    pub bytes_from_clients: Counter,
    pub bytes_from_brokers: Counter,
    pub responses_rewritten: Counter,
    pub connections_refused: Counter,
    pub idle_closed: Counter,
    pub brokers_forgotten: Counter,
    pub broker_listeners: Gauge,
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let requests = (0..=MAX_COUNTED_KEY)
            .map(|k| {
                let api = ApiKey::try_from(k).map(|a| format!("{a:?}")).unwrap_or_else(|_| k.to_string());
                counter!("eventgate_kafka_requests_total", "api" => api)
            })
            .collect();
        Self {
            requests,
            requests_unknown: counter!("eventgate_kafka_requests_total", "api" => "unknown"),
            connections_open: gauge!("eventgate_kafka_connections_open"),
            connections_total: counter!("eventgate_kafka_connections_total"),
            connection_errors: counter!("eventgate_kafka_connection_errors_total"),
            bytes_from_clients: counter!("eventgate_kafka_bytes_total", "from" => "client"),
            bytes_from_brokers: counter!("eventgate_kafka_bytes_total", "from" => "broker"),
            responses_rewritten: counter!("eventgate_kafka_responses_rewritten_total"),
            connections_refused: counter!("eventgate_kafka_connections_refused_total"),
            idle_closed: counter!("eventgate_kafka_idle_closed_total"),
            brokers_forgotten: counter!("eventgate_broker_listeners_forgotten_total"),
            broker_listeners: gauge!("eventgate_broker_listeners"),
        }
    }

    /// Counts one request of `api_key`.
    pub fn request(&self, api_key: i16) {
        match usize::try_from(api_key).ok().and_then(|k| self.requests.get(k)) {
            Some(c) => c.increment(1),
            None => self.requests_unknown.increment(1),
        }
    }

    /// Counts an open connection until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_total.increment(1);
        self.connections_open.increment(1.0);
        OpenConnection(&self.connections_open)
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric handles of the validation path.
pub struct ValidationMetrics {
    pub records_valid: Counter,
    pub records_invalid: Counter,
    pub records_unchecked: Counter,
    pub partitions_annotated: Counter,
    pub partitions_rejected: Counter,
    pub partitions_unreadable: Counter,
    pub partitions_over_budget: Counter,
    pub legacy_refused: Counter,
    pub acks0_closed: Counter,
    /// Per-topic counts for the console (`GET /stats/topics`).
    pub topics: std::sync::Arc<rates::TopicRates>,
}

impl ValidationMetrics {
    pub fn new() -> Self {
        let records = |outcome: &'static str| counter!("eventgate_records_validated_total", "outcome" => outcome);
        let partitions = |verdict: &'static str| counter!("eventgate_partitions_changed_total", "verdict" => verdict);
        Self {
            records_valid: records("valid"),
            records_invalid: records("invalid"),
            records_unchecked: records("unchecked"),
            partitions_annotated: partitions("annotated"),
            partitions_rejected: partitions("rejected"),
            partitions_unreadable: partitions("unreadable"),
            partitions_over_budget: partitions("over_budget"),
            legacy_refused: counter!("eventgate_produce_legacy_refused_total"),
            acks0_closed: counter!("eventgate_produce_acks0_closed_total"),
            topics: Default::default(),
        }
    }

    /// Counts one partition's validation outcomes, in the metrics and in `tally` (per topic).
    pub fn count<'a>(&self, topic: &'a str, c: &crate::validate::batch::Counts, tally: &mut Tally<'a>) {
        self.records_valid.increment(c.valid);
        self.records_invalid.increment(c.invalid);
        self.records_unchecked.increment(c.unchecked);
        tally.0.extend([
            (topic, rates::Count::Valid, c.valid),
            (topic, rates::Count::Invalid, c.invalid),
            (topic, rates::Count::Unchecked, c.unchecked),
        ]);
    }

    /// A request's per-topic counts, added to [`rates::TopicRates`] under one lock when dropped
    /// (on every way out of the request's inspection).
    pub fn tally(&self) -> Tally<'_> {
        Tally(Vec::new(), &self.topics)
    }
}

/// Per-topic counts gathered while one request is inspected; see [`ValidationMetrics::tally`].
pub struct Tally<'a>(pub Vec<(&'a str, rates::Count, u64)>, &'a rates::TopicRates);

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            self.1.add(self.0.drain(..));
        }
    }
}

impl Default for ValidationMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the open-connections gauge when dropped.
pub struct OpenConnection<'a>(&'a Gauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Says when to log an event that a peer can make frequent (refused connections, ...): at most
/// once per period, with how many happened since the last line. Shared by any number of tasks.
pub struct Throttle {
    started: std::time::Instant,
    every_ms: u64,
    next_ms: std::sync::atomic::AtomicU64,
    since: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            started: std::time::Instant::now(),
            every_ms: every.as_millis() as u64,
            next_ms: std::sync::atomic::AtomicU64::new(0),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(n)` when a line should be logged now, for the `n` events since the
    /// last one.
    pub fn note(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.since.fetch_add(1, Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        (now >= next && self.next_ms.compare_exchange(next, now + self.every_ms, Relaxed, Relaxed).is_ok())
            .then(|| self.since.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_the_first_event_then_counts_the_rest() {
        let t = Throttle::new(std::time::Duration::from_secs(3600));
        assert_eq!(t.note(), Some(1));
        assert_eq!((0..1000).filter_map(|_| t.note()).count(), 0, "quiet for the rest of the period");
        let now = Throttle::new(std::time::Duration::ZERO);
        assert_eq!((0..5).filter_map(|_| now.note()).sum::<u64>(), 5, "every event is counted in some line");
    }
}
