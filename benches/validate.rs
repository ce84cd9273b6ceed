//! Validation costs, each beside a memcpy of the same bytes.
//!
//! `cargo bench --bench validate`

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventgate::asyncapi::{Policy, load};
use eventgate::bench::demo_value;
use eventgate::validate::batch::{Budget, Verdict, check_partition};
use eventgate::validate::{CompiledDoc, compile};
use eventgate::wire::compression::{Codec, Framing};
use eventgate::wire::records::{BatchHeader, records, write_batch, write_record};

const RECORDS: usize = 100;
const SIZE: usize = 256;

fn doc() -> Arc<CompiledDoc> {
    let text = include_str!("../asyncapi/demo.yaml");
    Arc::new(compile("demo", load(text).unwrap()).unwrap())
}

fn batch(invalid: bool, codec: Codec) -> Vec<u8> {
    let mut section = Vec::new();
    for i in 0..RECORDS {
        let v = demo_value(i as u64, SIZE, invalid);
        write_record(&mut section, i as i64, i as i32, Some(format!("k{i}").as_bytes()), Some(&v), std::iter::empty());
    }
    let header = BatchHeader { max_timestamp: RECORDS as i64, ..BatchHeader::new(RECORDS as i32, codec, 0) };
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.to_vec()
}

fn validation(c: &mut Criterion) {
    let d = doc();
    let route = d.route_for("event-gateway-demo").unwrap().clone();
    let valid = batch(false, Codec::None);
    let (raw, _) = eventgate::wire::records::RawBatch::parse(&valid).unwrap();
    let section = raw.stored_records().to_vec();

    let mut g = c.benchmark_group("validate 100 records of 256 B");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("check every record (parse JSON + schema)", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in records(black_box(&section)) {
                if let eventgate::validate::Outcome::Valid(_) = route.check(&r.unwrap()) {
                    n += 1;
                }
            }
            assert_eq!(n, RECORDS);
        })
    });
    g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(section.clone())));
    g.finish();

    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let valid = batch(false, codec);
        let invalid = batch(true, codec);
        let mut g = c.benchmark_group(format!("batch of 100 records, {}", codec.name()));
        g.throughput(Throughput::Elements(RECORDS as u64));
        g.bench_function("decode + validate, all valid (forwarded as is)", |b| {
            b.iter(|| {
                let r = check_partition(
                    &route,
                    Policy::Annotate,
                    black_box(&valid),
                    "2026-01-01T00:00:00.000000000Z",
                    &mut Budget::new(1 << 26),
                );
                assert!(matches!(r.verdict, Verdict::Untouched));
            })
        });
        g.bench_function("decode + validate + annotate + encode, all invalid", |b| {
            b.iter(|| {
                let r = check_partition(
                    &route,
                    Policy::Annotate,
                    black_box(&invalid),
                    "2026-01-01T00:00:00.000000000Z",
                    &mut Budget::new(1 << 26),
                );
                assert!(matches!(r.verdict, Verdict::Annotated(_)));
            })
        });
        g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(valid.clone())));
        g.finish();
    }
}

criterion_group!(benches, validation);
criterion_main!(benches);
