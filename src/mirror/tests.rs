use bytes::BytesMut;

use super::*;
use crate::wire::compression::{Codec, Framing};
use crate::wire::records::{BatchHeader, write_batch, write_record};

fn config() -> MirrorConfig {
    MirrorConfig {
        cluster: "c".into(),
        default_type: "t".into(),
        subject_prefix: "p".into(),
        rejected_prefix: "r".into(),
        max_event_bytes: 1 << 20,
        buffer_bytes: 1 << 20,
        max_decompressed_bytes: 1 << 20,
    }
}

fn batch(n: usize) -> Bytes {
    let mut section = Vec::new();
    for i in 0..n {
        write_record(&mut section, i as i64, i as i32, None, Some(br#"{"i":1}"#), std::iter::empty());
    }
    let header = BatchHeader::new(n as i32, Codec::Lz4, 1000);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

/// Every event of a job, gathered.
async fn events_of(config: &MirrorConfig, job: &Job) -> Vec<event::Event> {
    let mut all = Vec::new();
    expand(config, job, async |chunk: Vec<event::Event>| {
        assert!(chunk.len() <= EVENT_CHUNK);
        all.extend(chunk);
    })
    .await;
    all
}

#[tokio::test]
async fn events_get_broker_offsets_and_deterministic_ids() {
    let job = Job {
        topic: "orders".into(),
        partition: 3,
        base_offset: Some(100),
        log_append_time: -1,
        records: batch(3),
        outcomes: None,
        route: None,
    };
    let ids: Vec<String> = events_of(&config(), &job).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, vec!["orders-3-100", "orders-3-101", "orders-3-102"]);
}

#[tokio::test]
async fn refused_records_get_unique_ids_without_offsets() {
    let job = Job {
        topic: "orders".into(),
        partition: 0,
        base_offset: None,
        log_append_time: -1,
        records: batch(2),
        outcomes: None,
        route: None,
    };
    let events = events_of(&config(), &job).await;
    assert_eq!(events.len(), 2);
    assert!(events[0].id.starts_with("orders-0-rejected-"));
    assert_ne!(events[0].id, events[1].id);
    let v: serde_json::Value = serde_json::from_slice(&events[0].json).unwrap();
    assert!(v.get("offset").is_none());
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_instead_of_blocking() {
    let (tx, _rx) = tokio::sync::broadcast::channel(16);
    let stop = Stop::default();
    let mut cfg = config();
    cfg.buffer_bytes = batch(1).len() + EVENT_OVERHEAD + 1;
    let (mirror, worker) = Mirror::start(cfg, SinkSpec::Local(sink::LocalSink::new(tx)), stop.clone(), None).unwrap();
    // Far larger than the buffer: refused at once; a small one fits.
    let job = |n| Job {
        topic: "t".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(n),
        outcomes: None,
        route: None,
    };
    assert!(!mirror.submit(job(50)));
    assert_eq!(mirror.queued_bytes.load(Ordering::Acquire), 0);
    assert!(mirror.submit(job(1)));
    stop.drain.cancel();
    worker.done.await.unwrap();
}

#[tokio::test]
async fn a_batch_claiming_many_records_costs_what_its_events_would() {
    let job = Job {
        topic: "t".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(1_000),
        outcomes: None,
        route: None,
    };
    // lz4 makes the thousand records a few kilobytes; they are charged as a thousand events.
    assert!(job.records.len() < 20_000, "{}", job.records.len());
    assert!(cost(&job) >= 1_000 * EVENT_OVERHEAD);
    let events = events_of(&config(), &job).await;
    assert_eq!(events.len(), 1_000);
}
