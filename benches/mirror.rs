//! The mirror's cost per event: Kafka records to CloudEvents (JSON, with NATS headers), beside a
//! memcpy of the same record bytes.
//!
//! `cargo bench --bench mirror`

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventgate::mirror::{Job, MirrorConfig, Producer, event, expand};
use eventgate::wire::compression::{Codec, Framing};
use eventgate::wire::records::{BatchHeader, write_batch, write_record};

/// As in the eventgate binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 256;

/// A 1 KiB JSON record value.
fn value(i: usize) -> Vec<u8> {
    let head = format!(r#"{{"lumens":{i},"sentAt":"2026-01-01T00:00:00Z","pad":""#);
    let mut v = head.into_bytes();
    v.resize(1022, b'x');
    v.extend_from_slice(b"\"}");
    v
}

fn batch(codec: Codec) -> (Bytes, usize) {
    let mut section = Vec::new();
    let mut bytes = 0;
    for i in 0..RECORDS {
        let v = value(i);
        bytes += v.len();
        let key = format!("k{i}");
        write_record(&mut section, i as i64, i as i32, Some(key.as_bytes()), Some(&v), std::iter::empty());
    }
    let header = BatchHeader::new(RECORDS as i32, codec, 1_764_000_000_000);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).expect("batch");
    (out.freeze(), bytes)
}

fn config() -> MirrorConfig {
    MirrorConfig {
        cluster: "kafka".into(),
        default_type: "eventgate.record".into(),
        subject_prefix: "eventgate.records".into(),
        rejected_prefix: "eventgate.rejected".into(),
        max_event_bytes: 1_000_000,
        buffer_bytes: 1 << 30,
        max_decompressed_bytes: 64 << 20,
    }
}

fn job(records: Bytes) -> Job {
    Job {
        topic: Arc::from("event-gateway-demo"),
        partition: 0,
        base_offset: Some(1_000),
        log_append_time: -1,
        records,
        outcomes: None,
        route: None,
        producer: Producer { client_id: Some(Arc::from("bench")), principal: None },
        room: None,
    }
}

fn building(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let config = config();
    let mut g = c.benchmark_group("mirror");
    g.throughput(Throughput::Elements(RECORDS as u64));
    {
        // Building alone: the issue's measure (events/s for 1 KiB JSON records, one core).
        let (records, _) = batch(Codec::None);
        let job = job(records);
        // The worker's one block, taken from job after job.
        let mut block = BytesMut::new();
        g.bench_function("1 KiB JSON records to events", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut n = 0usize;
                    expand(&config, &job, &mut block, async |events: Vec<event::Event>| {
                        n += events.len();
                        black_box(events);
                    })
                    .await;
                    n
                })
            })
        });
    }
    for (name, codec) in
        [("1 KiB JSON records to events and NATS publishes", Codec::None), ("the same, lz4 batch", Codec::Lz4)]
    {
        let (records, _) = batch(codec);
        let job = job(records);
        let mut block = BytesMut::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut n = 0usize;
                    let mut wire = Vec::with_capacity(1 << 20);
                    expand(&config, &job, &mut block, async |events: Vec<event::Event>| {
                        wire.clear();
                        for e in &events {
                            eventgate::mirror::publisher::encode_publish(
                                &mut wire,
                                "eg.bench",
                                "_INBOX.x.1",
                                e.id.as_bytes(),
                                &e.json,
                            );
                        }
                        black_box(&wire);
                        n += events.len();
                        black_box(events);
                    })
                    .await;
                    n
                })
            })
        });
    }
    let (records, bytes) = batch(Codec::None);
    let values: Vec<Vec<u8>> = (0..RECORDS).map(value).collect();
    g.bench_function("memcpy of the same record values", |b| {
        b.iter(|| {
            let mut total = 0;
            for v in &values {
                total += black_box(v.clone()).len();
            }
            total
        })
    });
    black_box((records, bytes));
    g.finish();
}

criterion_group!(benches, building);
criterion_main!(benches);
