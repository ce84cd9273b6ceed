//! `eventgate hostile`: attacks a running eventgate the way a hostile peer would, and measures what
//! each attack makes it hold.
//!
//! Each attack is small and well formed: a few kilobytes of zstd that expand to millions of
//! records, a request with 128k partitions, a 30,000-byte topic name, thousands of connections that
//! never speak, half-sent HTTP requests, websocket clients that never read. The tool reads the
//! target's `/proc/<pid>` before and after (peak resident memory via `VmHWM`, reset first; CPU
//! time; open descriptors) and prints one JSON line: bytes sent, peak memory growth, CPU seconds and
//! what the attacker saw. `scripts/hostile.sh` runs every attack against a fresh eventgate, and
//! against a baseline binary when given one, and prints the table BENCHMARKS.md records.
//!
//! The request builders are public so the integration tests (`tests/hostile.rs`) attack with the
//! very same bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde::Serialize;

use crate::wire::compression::{Codec, Framing};
use crate::wire::header::request_frame;
use crate::wire::records::{BatchHeader, write_batch, write_record};

/// The attacks, numbered as in the hostile-input issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// 1: three zstd batches of identical null records, 32 MiB each decompressed, on a validated topic.
    DecompressionBomb,
    /// 2: one such batch (1.2 million records) on a topic no document describes, mirror on.
    MirrorBomb,
    /// 3: one request with 128k partitions, each refused by policy (unknown_topic: reject).
    RefusedPartitions,
    /// 4: a 30,000-byte topic name with 4,000 partitions.
    LongTopic,
    /// 7: 3,000 connections that never send a byte.
    SilentConnections,
    /// 8: 1,000 connections to the admin port that send half a request.
    Slowloris,
    /// 9: 200 websocket clients that never read, while records flow.
    WsReaders,
}

/// Options of `eventgate hostile`.
#[derive(Debug, Clone, Args)]
pub struct HostileArgs {
    #[arg(long, value_enum)]
    pub attack: Attack,
    /// eventgate's Kafka bootstrap address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// eventgate's admin HTTP address (slowloris, ws-readers).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Process id of the eventgate under attack, whose `/proc` is read.
    #[arg(long)]
    pub pid: u32,
    /// Topic to attack (it must exist for mirror-bomb and ws-readers).
    #[arg(long)]
    pub topic: Option<String>,
    /// How long to hold the attack (connections, readers) or let its effects settle, in ms.
    #[arg(long, default_value_t = 3000)]
    pub settle_ms: u64,
}

/// What one attack did.
#[derive(Debug, Serialize)]
pub struct HostileResult {
    pub attack: Attack,
    pub bytes_sent: u64,
    pub peak_rss_growth_bytes: u64,
    pub cpu_seconds: f64,
    /// Descriptors the target held at the attack's height, over its count before.
    pub fds_added: i64,
    /// What the attacker saw (an error code, a closed connection, ...).
    pub outcome: String,
}

/// One zstd batch of `count` identical 7-byte records (null key and value, every offset delta 0):
/// a few kilobytes that decompress to 7 bytes a record.
pub fn null_record_bomb(count: usize) -> Bytes {
    let mut one = Vec::new();
    write_record(&mut one, 0, 0, None, None, std::iter::empty());
    let section = one.repeat(count);
    let mut out = BytesMut::new();
    let header = BatchHeader::new(count as i32, Codec::Zstd, 1_700_000_000_000);
    // Compressing an in-memory section cannot fail.
    let _ = write_batch(&mut out, &header, &section, Framing::Standard);
    out.freeze()
}

/// A Produce request frame for `topic` with one entry per `(partition, records)`, correlation id 7.
pub fn produce_frame(version: i16, acks: i16, topic: &str, parts: Vec<(i32, Option<Bytes>)>) -> Vec<u8> {
    let data = parts.into_iter().map(|(p, r)| PartitionProduceData::default().with_index(p).with_records(r)).collect();
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
        .with_partition_data(data);
    let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(10_000).with_topic_data(vec![topic]);
    request_frame(ApiKey::Produce, version, 7, "hostile", &req).map(|b| b.to_vec()).unwrap_or_default()
}

/// The frame of attack 1: `batches` copies of a bomb of `records` records.
pub fn decompression_bomb(topic: &str, batches: usize, records: usize) -> Vec<u8> {
    let bomb = null_record_bomb(records);
    let mut all = BytesMut::new();
    for _ in 0..batches {
        all.extend_from_slice(&bomb);
    }
    produce_frame(9, -1, topic, vec![(0, Some(all.freeze()))])
}

/// The frame of attack 3: `n` partitions without records, in a shuffled order.
pub fn many_partitions(topic: &str, n: usize) -> (Vec<u8>, Vec<i32>) {
    let order: Vec<i32> = (0..n).map(|i| ((i * 7919) % n) as i32).collect();
    (produce_frame(7, -1, topic, order.iter().map(|p| (*p, None)).collect()), order)
}

/// The topic of attack 4: it matches `user.{userId}.{region}.signedup`.
pub fn long_topic(len: usize) -> String {
    format!("user.{}.eu.signedup", "a".repeat(len))
}

/// Reads one frame's body.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// The partition error codes of a Produce answer body, in order.
pub fn produce_error_codes(body: Vec<u8>, version: i16) -> Result<Vec<i16>, String> {
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version)).map_err(|e| e.to_string())?;
    let resp = ProduceResponse::decode(&mut body, version).map_err(|e| e.to_string())?;
    Ok(resp.responses.iter().flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)).collect())
}

/// What a process holds, read from `/proc/<pid>` (Linux).
pub mod procfs {
    /// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM, ...), in bytes.
    pub fn status_bytes(pid: u32, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.trim().parse().ok())
            .map(|kb: u64| kb * 1024)
            .unwrap_or(0)
    }

    /// Open file descriptors (sockets, listeners, files).
    pub fn fds(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
    }

    /// Listening TCP sockets of the process.
    pub fn listeners(pid: u32) -> usize {
        let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut n = 0;
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // st 0A is LISTEN; column 9 is the socket's inode.
                if cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| inodes.contains(*i)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_secs(pid: u32) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (field(11) + field(12)) / 100.0
    }

    /// Peak resident memory growth of a process from now on: resets the kernel's peak (VmHWM) and
    /// remembers the resident size, so [`PeakRss::growth`] is what came since at its worst.
    pub struct PeakRss {
        pid: u32,
        baseline: u64,
    }

    impl PeakRss {
        pub fn start(pid: u32) -> std::io::Result<PeakRss> {
            // Writing 5 to clear_refs resets VmHWM to the current VmRSS (Linux 4.0+).
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
            Ok(PeakRss { pid, baseline: status_bytes(pid, "VmRSS") })
        }

        pub fn growth(&self) -> u64 {
            status_bytes(self.pid, "VmHWM").saturating_sub(self.baseline)
        }
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// Sends `frame` and describes the answer.
fn send_produce(addr: &str, frame: &[u8], version: i16) -> std::io::Result<String> {
    let mut s = connect(addr)?;
    s.write_all(frame)?;
    Ok(match read_frame(&mut s) {
        Ok(body) => match produce_error_codes(body, version) {
            Ok(codes) => summarize_codes(&codes),
            Err(e) => format!("undecodable answer: {e}"),
        },
        Err(e) => format!("no answer ({e})"),
    })
}

fn summarize_codes(codes: &[i16]) -> String {
    let mut counts: std::collections::BTreeMap<i16, usize> = std::collections::BTreeMap::new();
    for c in codes {
        *counts.entry(*c).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n}x error {c}")).collect();
    parts.join(", ")
}

/// Runs one attack and measures it.
pub fn run(args: &HostileArgs) -> std::io::Result<HostileResult> {
    let pid = args.pid;
    let settle = Duration::from_millis(args.settle_ms);
    let topic = |default: &str| args.topic.clone().unwrap_or_else(|| default.to_owned());
    // Build the attack before measuring, so building it is not counted.
    let (frame, version) = match args.attack {
        Attack::DecompressionBomb => (decompression_bomb(&topic("event-gateway-demo"), 3, (32 << 20) / 7), 9),
        Attack::MirrorBomb => {
            (produce_frame(9, 1, &topic("hostile-bomb"), vec![(0, Some(null_record_bomb(1_200_000)))]), 9)
        }
        Attack::RefusedPartitions => (many_partitions(&topic("hostile-refused"), 128 * 1024).0, 7),
        Attack::LongTopic => (produce_frame(9, -1, &long_topic(30_000), (0..4_000).map(|p| (p, None)).collect()), 9),
        _ => (Vec::new(), 0),
    };
    // The records the websocket readers replay go into the stream first, so that what is measured
    // is the websocket side alone.
    let flood_errors = if args.attack == Attack::WsReaders { ws_flood(args)? } else { 0 };
    if !frame.is_empty() {
        // One small request of the same kind first, so that what is measured is the attack, not
        // the allocator's first pages on each of the target's threads.
        let _ = send_produce(
            &args.bootstrap,
            &produce_frame(version, -1, &topic("hostile-warm-up"), vec![(0, None)]),
            version,
        );
    }
    let peak = procfs::PeakRss::start(pid)?;
    let cpu_before = procfs::cpu_secs(pid);
    let fds_before = procfs::fds(pid) as i64;
    let mut fds_peak = fds_before;
    let mut bytes_sent = frame.len() as u64;
    let outcome = match args.attack {
        Attack::DecompressionBomb | Attack::RefusedPartitions | Attack::LongTopic | Attack::MirrorBomb => {
            let started = Instant::now();
            let seen = send_produce(&args.bootstrap, &frame, version)?;
            let answered = started.elapsed();
            // Let what the request set off (the mirror) run its course.
            std::thread::sleep(settle);
            format!("{seen} after {answered:.2?}")
        }
        Attack::SilentConnections => {
            let conns: Vec<TcpStream> = (0..3_000).filter_map(|_| connect(&args.bootstrap).ok()).collect();
            std::thread::sleep(settle);
            fds_peak = procfs::fds(pid) as i64;
            let open = conns.len();
            let closed = count_closed(conns);
            format!("{open} connected, {closed} closed by eventgate within {settle:?}")
        }
        Attack::Slowloris => {
            let half = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
            let mut conns = Vec::new();
            for _ in 0..1_000 {
                if let Ok(mut s) = connect(&args.http) {
                    if s.write_all(half).is_ok() {
                        bytes_sent += half.len() as u64;
                    }
                    conns.push(s);
                }
            }
            std::thread::sleep(settle);
            fds_peak = procfs::fds(pid) as i64;
            let open = conns.len();
            let closed = count_closed(conns);
            format!("{open} connected, {closed} closed by eventgate within {settle:?}")
        }
        Attack::WsReaders => ws_readers(args, flood_errors, &mut bytes_sent, &mut fds_peak)?,
    };
    fds_peak = fds_peak.max(procfs::fds(pid) as i64);
    Ok(HostileResult {
        attack: args.attack,
        bytes_sent,
        peak_rss_growth_bytes: peak.growth(),
        cpu_seconds: procfs::cpu_secs(pid) - cpu_before,
        fds_added: fds_peak - fds_before,
        outcome,
    })
}

/// How many of `conns` eventgate has closed: a read, after whatever was already sent, sees the
/// end of the stream or a reset.
fn count_closed(conns: Vec<TcpStream>) -> usize {
    let closed = |mut s: TcpStream| -> bool {
        if s.set_read_timeout(Some(Duration::from_millis(5))).is_err() {
            return true;
        }
        let mut b = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    conns.into_iter().map(closed).filter(|c| *c).count()
}

fn ws_topic(args: &HostileArgs) -> String {
    args.topic.clone().unwrap_or_else(|| "hostile-ws".to_owned())
}

/// Produces 20,000 records of 2 KB to the watched topic; returns how many failed.
fn ws_flood(args: &HostileArgs) -> std::io::Result<usize> {
    let topic = ws_topic(args);
    let value = format!("{{\"pad\":\"{}\"}}", "x".repeat(2_000));
    let mut producer = connect(&args.bootstrap)?;
    let mut errors = 0;
    for round in 0..200 {
        let mut section = Vec::new();
        for i in 0..100 {
            write_record(&mut section, 0, i, None, Some(value.as_bytes()), std::iter::empty());
        }
        let mut batch = BytesMut::new();
        let _ = write_batch(&mut batch, &BatchHeader::new(100, Codec::None, round), &section, Framing::Standard);
        let frame = produce_frame(9, 1, &topic, vec![(0, Some(batch.freeze()))]);
        producer.write_all(&frame)?;
        let codes = produce_error_codes(read_frame(&mut producer)?, 9).unwrap_or_else(|_| vec![-1]);
        errors += codes.iter().filter(|c| **c != 0).count();
    }
    // Let the mirror store them before the readers replay the stream.
    std::thread::sleep(Duration::from_secs(3));
    Ok(errors)
}

/// 200 websocket clients that complete the handshake, replay the stream the flood filled, and never
/// read a byte.
fn ws_readers(
    args: &HostileArgs,
    flood_errors: usize,
    bytes_sent: &mut u64,
    fds_peak: &mut i64,
) -> std::io::Result<String> {
    let handshake = format!(
        "GET /ws?start=all&topic={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ws_topic(args)
    );
    let mut readers = Vec::new();
    for _ in 0..200 {
        let mut s = connect(&args.http)?;
        s.write_all(handshake.as_bytes())?;
        *bytes_sent += handshake.len() as u64;
        readers.push(s);
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    *fds_peak = procfs::fds(args.pid) as i64;
    let closed = count_closed(readers);
    Ok(format!(
        "20000 records of 2 KB in the stream ({flood_errors} produce errors); {closed} of 200 readers closed by eventgate"
    ))
}
