//! `eventgate bench-sink`: a webhook that counts the CloudEvents delivered to it, for measuring
//! subscriptions (`scripts/bench-subscriptions.sh`).
//!
//! It answers every POST with 204 at once, counts events in each mode (binary: one per request;
//! structured: one; batch: the array's length), notes each event's id (to count duplicates) and its
//! latency: arrival time minus the event's `time` (the record's timestamp; with `eventgate bench
//! --stamp` that is when the producer sent it, so the latency includes the broker's
//! acknowledgement, the mirror and the delivery). When `--expect` distinct events have arrived, or
//! `--idle-ms` passes without any after the first, it prints one JSON line and exits.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use clap::Args;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Options of `eventgate bench-sink`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: String,
    /// Distinct events to wait for.
    #[arg(long)]
    pub expect: u64,
    /// Give up this long after the last event.
    #[arg(long, default_value_t = 30_000)]
    pub idle_ms: u64,
}

/// What the sink saw.
#[derive(Debug, Serialize)]
pub struct SinkReport {
    pub events: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub requests: u64,
    /// From the first event's arrival to the last's.
    pub seconds: f64,
    pub events_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

#[derive(Default)]
struct Seen {
    /// Event ids, hashed (a collision among a few million ids is as likely as not happening).
    ids: HashSet<u64>,
    hasher: RandomState,
    events: u64,
    requests: u64,
    latencies_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

type Shared = Arc<Mutex<Seen>>;

/// Why the sink could not run.
#[derive(Debug, thiserror::Error)]
#[error("bench-sink: {0}")]
pub struct SinkError(String);

fn now_us() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}

fn time_us(t: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1000) as i64)
}

/// One delivery: counted, answered 204. Plain hyper rather than axum's router: on a 2-core machine
/// the sink shares the CPU with what it measures, so it does as little as it can.
fn take(seen: &Shared, headers: &HeaderMap, body: &Bytes) {
    let arrived = now_us();
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut got: Vec<(String, Option<i64>)> = Vec::new();
    if ct.starts_with("application/cloudevents-batch+json") || ct.starts_with("application/cloudevents+json") {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let items = match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for e in items {
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            got.push((id, e["time"].as_str().and_then(time_us)));
        }
    } else {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let time = h("ce-time").map(|t| t.replace("%3A", ":")).and_then(|t| time_us(&t));
        got.push((h("ce-id").unwrap_or_default().to_owned(), time));
    }
    let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    s.first.get_or_insert(now);
    s.last = Some(now);
    s.requests += 1;
    for (id, time) in got {
        s.events += 1;
        if let Some(t) = time {
            s.latencies_us.push(u64::try_from(arrived - t).unwrap_or(0));
        }
        let h = s.hasher.hash_one(id.as_bytes());
        s.ids.insert(h);
    }
}

async fn serve(seen: Shared, stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(Body::new(body), 64 << 20).await.unwrap_or_default();
            take(&seen, &parts.headers, &body);
            let mut answer = Response::new(http_body_empty());
            *answer.status_mut() = StatusCode::NO_CONTENT;
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

fn http_body_empty() -> Body {
    Body::empty()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs the sink until it has seen `expect` distinct events (or goes idle).
pub async fn run(args: SinkArgs) -> Result<SinkReport, SinkError> {
    let seen: Shared = Arc::default();
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| SinkError(format!("{}: {e}", args.listen)))?;
    let accepting = seen.clone();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(accepting.clone(), stream));
        }
    });
    let idle = Duration::from_millis(args.idle_ms);
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if s.ids.len() as u64 >= args.expect {
            break;
        }
        let last = s.last.unwrap_or(started);
        if last.elapsed() > idle && (s.first.is_some() || started.elapsed() > idle * 4) {
            break;
        }
    }
    server.abort();
    let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
    s.latencies_us.sort_unstable();
    let seconds = match (s.first, s.last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let distinct = s.ids.len() as u64;
    Ok(SinkReport {
        events: s.events,
        distinct,
        duplicates: s.events - distinct.min(s.events),
        requests: s.requests,
        seconds,
        events_per_sec: if seconds > 0.0 { s.events as f64 / seconds } else { 0.0 },
        latency_ms_p50: pct(&s.latencies_us, 0.50),
        latency_ms_p99: pct(&s.latencies_us, 0.99),
        latency_ms_max: pct(&s.latencies_us, 1.0),
    })
}
