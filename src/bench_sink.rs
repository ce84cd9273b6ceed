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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
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
    ids: HashSet<String>,
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

async fn take(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let arrived = now_us();
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut got: Vec<(String, Option<i64>)> = Vec::new();
    if ct.starts_with("application/cloudevents-batch+json") || ct.starts_with("application/cloudevents+json") {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let items = match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for e in items {
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            got.push((id, e["time"].as_str().and_then(time_us)));
        }
    } else {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let time = h("ce-time").map(|t| t.replace("%3A", ":")).and_then(|t| time_us(&t));
        got.push((h("ce-id").unwrap_or_default(), time));
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
        s.ids.insert(id);
    }
    StatusCode::NO_CONTENT
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
    let app = Router::new().fallback(axum::routing::post(take)).with_state(seen.clone());
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| SinkError(format!("{}: {e}", args.listen)))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
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
