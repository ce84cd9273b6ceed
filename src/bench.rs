//! `eventgate bench`: an end-to-end load tool that speaks Kafka with eventgate's own codec.
//!
//! It produces `--records` records of `--record-size` bytes over one connection to `--bootstrap`,
//! with up to `--in-flight` Produce requests outstanding (each `--batch-records` records, in one
//! batch for one partition, or split over `--partitions-per-request` partitions, as clients that
//! gather a broker's partitions into one request send them; partitions taken in turn), then fetches
//! them all back. It reports
//! records/s, MB/s and per-request latency percentiles as one JSON line on stdout.
//!
//! Every request goes over the bootstrap connection (no metadata lookup), so the same run can target
//! a broker directly, a byte relay, another proxy or eventgate, and compare like with like on a
//! single-broker cluster. Request templates are built once and only their correlation id changes, so
//! the client spends as little CPU as possible: on a small machine the client, the broker and the
//! proxy share the cores, and what the client saves shows up as proxy headroom.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, FetchRequest, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use crate::wire::WireError;
use crate::wire::compression::{Codec, Framing};
use crate::wire::frame::FrameBuffer;
use crate::wire::header::{request_frame, response_header_len};
use crate::wire::records::{BatchHeader, RawBatch, RecordError, write_batch, write_record};
use crate::wire::scan;

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

/// Options of `eventgate bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Address to connect to: a broker, a relay, or a proxy.
    #[arg(long)]
    pub bootstrap: String,
    /// Topic to produce to (must exist).
    #[arg(long)]
    pub topic: String,
    /// Partitions of the topic to spread batches over.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Partitions each Produce request names, one batch each, sharing its records (at most
    /// `--partitions`).
    #[arg(long, default_value_t = 1)]
    pub partitions_per_request: i32,
    /// Records to produce and then consume.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Size of each record value in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per Produce request.
    #[arg(long, default_value_t = 100)]
    pub batch_records: usize,
    /// Produce requests outstanding at once.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Target records per second (0: as fast as possible). Use a moderate rate to measure latency.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Every Nth record gets a value that is not valid against the demo schema (0: none).
    #[arg(long, default_value_t = 0)]
    pub invalid_every: usize,
    /// Compression codec of the batches: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Records to read back in the consume phase (default: all that were produced).
    #[arg(long)]
    pub consume_records: Option<u64>,
    /// Skip the consume phase.
    #[arg(long)]
    pub no_consume: bool,
    /// Websocket URL of an eventgate `/ws` endpoint: clients connect before producing and every
    /// event they receive is counted (e.g. ws://127.0.0.1:8080/ws?topic=tput).
    #[arg(long)]
    pub ws: Option<String>,
    /// Websocket clients to connect to `--ws`.
    #[arg(long, default_value_t = 100)]
    pub ws_clients: usize,
    /// Label copied into the JSON result.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Build each request when it is sent, its records stamped with the time of sending (for
    /// end-to-end latency measured from the record's timestamp, e.g. by `eventgate bench-sink`).
    #[arg(long)]
    pub stamp: bool,
    /// Speak TLS to `--bootstrap`, trusting the CA certificates in this PEM file.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A connection to `--bootstrap`, over TLS with `--tls-ca`.
async fn open(args: &BenchArgs) -> Result<crate::proxy::connection::Halves, BenchError> {
    let stream = TcpStream::connect(&args.bootstrap).await?;
    stream.set_nodelay(true)?;
    let Some(ca) = &args.tls_ca else { return Ok(crate::proxy::connection::Halves::tcp(stream)) };
    let settings = crate::tls::UpstreamSettings { ca: Some(ca.clone()), ..Default::default() };
    let tls = crate::tls::Upstream::load(&settings).map_err(|e| BenchError::Option(e.to_string()))?;
    let host = crate::config::split_host_port(&args.bootstrap).map_err(BenchError::Option)?.0.to_owned();
    let stream = tls.connect(&host, stream).await.map_err(BenchError::Protocol)?;
    Ok(crate::proxy::connection::Halves::of(stream))
}

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("bad option: {0}")]
    Option(String),
}

fn protocol(e: impl std::fmt::Display) -> BenchError {
    BenchError::Protocol(e.to_string())
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct PhaseResult {
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub label: String,
    pub bootstrap: String,
    pub record_size: usize,
    pub batch_records: usize,
    pub partitions: i32,
    pub partitions_per_request: i32,
    pub in_flight: usize,
    pub rate: u64,
    pub produce: PhaseResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume: Option<PhaseResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<WsResult>,
}

/// Events delivered to websocket clients.
#[derive(Debug, Serialize)]
pub struct WsResult {
    pub clients: usize,
    pub events_expected: u64,
    pub events_received: u64,
    /// From the start of the produce phase to the last event delivered.
    pub seconds: f64,
    pub events_per_sec: f64,
}

/// Runs the benchmark and prints the JSON result.
pub async fn run(args: BenchArgs) -> Result<BenchResult, BenchError> {
    if args.partitions < 1 || args.batch_records == 0 || args.in_flight == 0 {
        return Err(BenchError::Option("partitions, batch-records and in-flight must be at least 1".into()));
    }
    if !(1..=args.partitions).contains(&args.partitions_per_request)
        || args.batch_records < args.partitions_per_request as usize
    {
        return Err(BenchError::Option(
            "partitions-per-request must be at least 1, at most partitions and at most batch-records".into(),
        ));
    }
    let codec = match args.compression.as_str() {
        "none" => Codec::None,
        "gzip" => Codec::Gzip,
        "snappy" => Codec::Snappy,
        "lz4" => Codec::Lz4,
        "zstd" => Codec::Zstd,
        other => return Err(BenchError::Option(format!("unknown compression {other}"))),
    };
    let watchers = match &args.ws {
        Some(url) => Some(ws_watchers(url, args.ws_clients).await?),
        None => None,
    };
    let started = Instant::now();
    let produce = produce(&args, codec).await?;
    let ws = match watchers {
        Some(counts) => {
            let expected =
                args.records.div_ceil(args.batch_records as u64) * args.batch_records as u64 * args.ws_clients as u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            let total = || counts.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).sum::<u64>();
            while total() < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            let received = total();
            Some(WsResult {
                clients: args.ws_clients,
                events_expected: expected,
                events_received: received,
                seconds,
                events_per_sec: received as f64 / seconds,
            })
        }
        None => None,
    };
    let consume = if args.no_consume { None } else { Some(consume(&args).await?) };
    Ok(BenchResult {
        label: args.label.clone(),
        bootstrap: args.bootstrap.clone(),
        record_size: args.record_size,
        batch_records: args.batch_records,
        partitions: args.partitions,
        partitions_per_request: args.partitions_per_request,
        in_flight: args.in_flight,
        rate: args.rate,
        produce,
        consume,
        ws,
    })
}

/// Connects `n` websocket clients to `url`; each counts the text frames it receives.
async fn ws_watchers(url: &str, n: usize) -> Result<Vec<Arc<std::sync::atomic::AtomicU64>>, BenchError> {
    let mut counts = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| BenchError::Protocol(format!("websocket {url}: {e}")))?;
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(m)) = socket.next().await {
                if m.is_text() {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        counts.push(count);
    }
    Ok(counts)
}

/// A record value of `size` bytes that is valid against the demo `lightMeasured` schema (or, when
/// `invalid`, breaks it by making `lumens` negative).
pub fn demo_value(i: u64, size: usize, invalid: bool) -> Vec<u8> {
    let lumens: i64 = if invalid { -1 } else { (i % 10_000) as i64 };
    let head = format!(r#"{{"lumens":{lumens},"sentAt":"2026-11-26T00:00:00Z","pad":""#);
    let mut v = head.into_bytes();
    let pad = size.saturating_sub(v.len() + 2);
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(b"\"}");
    v
}

fn set_correlation_id(frame: &mut [u8], id: i32) {
    frame[8..12].copy_from_slice(&id.to_be_bytes());
}

/// One Produce request template per partition, each carrying `n` records: one batch for that
/// partition, or one batch for each of `--partitions-per-request` partitions from it on, the
/// records shared out (the first batches one more where they do not divide evenly).
fn produce_templates(args: &BenchArgs, codec: Codec, n: usize, first: u64) -> Result<Vec<BytesMut>, BenchError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let per = args.partitions_per_request;
    (0..args.partitions)
        .map(|p| {
            let mut idx = first;
            let mut data = Vec::with_capacity(per as usize);
            for k in 0..per {
                let count = n / per as usize + usize::from((k as usize) < n % per as usize);
                let mut section = Vec::with_capacity(count * (args.record_size + 32));
                for i in 0..count {
                    let invalid = args.invalid_every > 0 && idx.is_multiple_of(args.invalid_every as u64);
                    let key = format!("k{idx}");
                    let value = demo_value(idx, args.record_size, invalid);
                    write_record(&mut section, 0, i as i32, Some(key.as_bytes()), Some(&value), std::iter::empty());
                    idx += 1;
                }
                let header = BatchHeader::new(count as i32, codec, now);
                let mut batch = BytesMut::new();
                write_batch(&mut batch, &header, &section, Framing::Standard).map_err(protocol)?;
                data.push(
                    PartitionProduceData::default()
                        .with_index((p + k) % args.partitions)
                        .with_records(Some(batch.freeze())),
                );
            }
            let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
                    .with_partition_data(data),
            ]);
            request_frame(ApiKey::Produce, PRODUCE_VERSION, 0, "eventgate-bench", &req).map_err(protocol)
        })
        .collect()
}

async fn produce(args: &BenchArgs, codec: Codec) -> Result<PhaseResult, BenchError> {
    let crate::proxy::connection::Halves { read: mut rd, write: mut wr } = open(args).await?;
    let requests = args.records.div_ceil(args.batch_records as u64);
    let templates = produce_templates(args, codec, args.batch_records, 0)?;
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();

    let writer_permits = permits.clone();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.batch_records as f64 / args.rate as f64));
    let start = Instant::now();
    let stamped = args.stamp.then(|| args.clone());
    let writer = tokio::spawn(async move {
        let mut frame = BytesMut::new();
        for i in 0..requests {
            if let Some(every) = interval {
                tokio::time::sleep_until((start + every * i as u32).into()).await;
            }
            let permit = writer_permits.acquire().await.map_err(|e| BenchError::Protocol(e.to_string()))?;
            permit.forget();
            frame.clear();
            let fresh;
            let template = match &stamped {
                Some(args) => {
                    fresh = produce_templates(args, codec, args.batch_records, i * args.batch_records as u64)?;
                    &fresh[(i % fresh.len() as u64) as usize]
                }
                None => &templates[(i % templates.len() as u64) as usize],
            };
            frame.extend_from_slice(template);
            set_correlation_id(&mut frame, i as i32);
            let _ = tx.send(Instant::now());
            wr.write_all(&frame).await?;
        }
        Ok::<_, BenchError>(wr)
    });

    let mut buf = FrameBuffer::for_answers(64 << 20);
    let mut latencies = Vec::with_capacity(requests as usize);
    let mut errors = 0u64;
    let mut answered = 0u64;
    while answered < requests {
        let frame = loop {
            if let Some(f) = buf.next_frame().map_err(protocol)? {
                break f;
            }
            if buf.fill(&mut rd).await? == 0 {
                return Err(BenchError::Protocol(format!("connection closed after {answered} answers")));
            }
        };
        let sent = rx.recv().await.ok_or_else(|| BenchError::Protocol("answer without request".into()))?;
        latencies.push(sent.elapsed().as_micros() as u64);
        let mut body = frame.slice(4..);
        let header = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(PRODUCE_VERSION))
            .map_err(protocol)?;
        if header.correlation_id != answered as i32 {
            return Err(BenchError::Protocol(format!("answer {} for request {answered}", header.correlation_id)));
        }
        let resp = ProduceResponse::decode(&mut body, PRODUCE_VERSION).map_err(protocol)?;
        errors +=
            resp.responses.iter().flat_map(|t| &t.partition_responses).filter(|p| p.error_code != 0).count() as u64;
        answered += 1;
        permits.add_permits(1);
    }
    let seconds = start.elapsed().as_secs_f64();
    writer.await.map_err(protocol)??;
    let records = requests * args.batch_records as u64;
    Ok(PhaseResult {
        records,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: (records as f64 * args.record_size as f64) / seconds / 1e6,
        errors,
        latency: Some(percentiles(&mut latencies)),
    })
}

async fn consume(args: &BenchArgs) -> Result<PhaseResult, BenchError> {
    let crate::proxy::connection::Halves { read: mut rd, write: mut wr } = open(args).await?;
    let produced = args.records.div_ceil(args.batch_records as u64) * args.batch_records as u64;
    let wanted = args.consume_records.unwrap_or(produced).min(produced);
    let mut offsets = vec![0i64; args.partitions as usize];
    let mut buf = FrameBuffer::for_answers(128 << 20);
    let mut got = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let mut cid = 0;
    while got < wanted {
        if Instant::now() > deadline {
            return Err(BenchError::Protocol(format!("consumed {got} of {wanted} records before the deadline")));
        }
        let req = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_topics(vec![
                FetchTopic::default().with_topic(TopicName(StrBytes::from_string(args.topic.clone()))).with_partitions(
                    offsets
                        .iter()
                        .enumerate()
                        .map(|(p, &o)| {
                            FetchPartition::default()
                                .with_partition(p as i32)
                                .with_fetch_offset(o)
                                .with_partition_max_bytes(16 << 20)
                        })
                        .collect(),
                ),
            ]);
        let mut frame = request_frame(ApiKey::Fetch, FETCH_VERSION, 0, "eventgate-bench", &req).map_err(protocol)?;
        cid += 1;
        set_correlation_id(&mut frame, cid);
        wr.write_all(&frame).await?;
        let resp = loop {
            if let Some(f) = buf.next_frame().map_err(protocol)? {
                break f;
            }
            if buf.fill(&mut rd).await? == 0 {
                return Err(BenchError::Protocol("connection closed while fetching".into()));
            }
        };
        // Walked in place rather than decoded: some brokers (tansu) add tagged fields that strict
        // decoders refuse at this version.
        let hlen = response_header_len(ApiKey::Fetch, FETCH_VERSION, &resp[4..]).map_err(protocol)?;
        let mut walk_error = None;
        scan::fetch_response(&resp[4 + hlen..], FETCH_VERSION, |partition, records| {
            let mut rest = records.unwrap_or_default();
            while !rest.is_empty() {
                match RawBatch::parse(rest) {
                    Ok((batch, used)) => {
                        let h = &batch.header;
                        if let Some(o) = offsets.get_mut(partition as usize) {
                            *o = h.base_offset + i64::from(h.last_offset_delta) + 1;
                        }
                        got += h.record_count as u64;
                        bytes += used as u64;
                        rest = &rest[used..];
                    }
                    // A fetch may end with a partial batch; the next fetch starts at it again.
                    Err(RecordError::Wire(WireError::Truncated { .. })) => break,
                    Err(e) => {
                        walk_error.get_or_insert(e);
                        break;
                    }
                }
            }
        })
        .map_err(protocol)?;
        if let Some(e) = walk_error {
            return Err(protocol(e));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(PhaseResult {
        records: got,
        seconds,
        records_per_sec: got as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / 1e6,
        errors: 0,
        latency: None,
    })
}

fn percentiles(v: &mut [u64]) -> Latency {
    v.sort_unstable();
    let at = |q: f64| -> u64 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    Latency { p50_us: at(0.50), p90_us: at(0.90), p99_us: at(0.99), p999_us: at(0.999), max_us: at(1.0) }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let base = ["bench", "--bootstrap", "x:1", "--topic", "t", "--record-size", "16"];
        Cli::parse_from(base.iter().chain(extra)).args
    }

    /// (partition, records) of each batch of a request template.
    fn batches(frame: &BytesMut) -> Vec<(i32, u64)> {
        let frame = frame.clone().freeze();
        let req: ProduceRequest = crate::proxy::stages::testing::decode_request(&frame);
        req.topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .map(|p| (p.index, crate::wire::records::declared_records(p.records.as_deref().unwrap_or_default())))
            .collect()
    }

    /// Requests name one partition each, taken in turn, or several from each on, the request's
    /// records shared out among them.
    #[test]
    fn requests_name_their_partitions_and_share_their_records() {
        let one = produce_templates(&args(&["--partitions", "3"]), Codec::None, 10, 0).unwrap();
        assert_eq!(one.iter().map(batches).collect::<Vec<_>>(), [vec![(0, 10)], vec![(1, 10)], vec![(2, 10)]]);
        let shared = args(&["--partitions", "3", "--partitions-per-request", "3"]);
        let many = produce_templates(&shared, Codec::None, 10, 0).unwrap();
        assert_eq!(batches(&many[1]), [(1, 4), (2, 3), (0, 3)]);
    }

    /// A request cannot name more partitions than the topic has, or than it has records.
    #[tokio::test]
    async fn partitions_per_request_are_checked_before_anything_is_sent() {
        for bad in [
            &["--partitions", "2", "--partitions-per-request", "3"][..],
            &["--partitions-per-request", "0"],
            &["--partitions", "4", "--partitions-per-request", "4", "--batch-records", "3"],
        ] {
            assert!(matches!(run(args(bad)).await, Err(BenchError::Option(_))), "{bad:?}");
        }
    }
}
