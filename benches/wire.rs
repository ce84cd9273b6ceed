//! Hot-path costs of the wire proxy, each beside a memcpy of the same bytes.
//!
//! `cargo bench --bench wire`

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventgate::wire::compression::{Codec, Framing};
use eventgate::wire::frame::{FrameBuffer, check};
use eventgate::wire::records::{self, BatchHeader, RawBatch, write_batch, write_record};
use eventgate::wire::rewrite::{AdvertiseError, ResponseAction, rewrite_response};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

// The binary's allocator: how frames are read depends on how allocations grow and are reused.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn batch(n: usize, size: usize) -> Bytes {
    let mut section = Vec::new();
    let value = vec![b'x'; size];
    for i in 0..n {
        write_record(&mut section, 0, i as i32, Some(b"key"), Some(&value), std::iter::empty());
    }
    let header = BatchHeader::new(n as i32, Codec::None, 0);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

fn response_frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0);
    ResponseHeader::default().encode(&mut b, key.response_header_version(version)).unwrap();
    body.encode(&mut b, version).unwrap();
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

fn frames(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..1000 {
        wire.extend_from_slice(&1020i32.to_be_bytes());
        wire.extend_from_slice(&[7u8; 1020]);
    }
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("split 1000 x 1 KiB frames", |b| {
        let src = Bytes::from(wire.clone());
        b.iter(|| {
            let mut buf = src.clone();
            let mut n = 0;
            while let Some(len) = check(&buf, 1 << 20).unwrap() {
                black_box(buf.split_to(len));
                n += 1;
            }
            n
        })
    });
    g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(wire.clone())));
    g.finish();
}

/// A peer's bytes, handed over at most `piece` at a time (as the kernel gives a socket's).
struct Pieces<'a> {
    rest: &'a [u8],
    piece: usize,
}

impl tokio::io::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.piece.min(out.remaining()).min(self.rest.len());
        let (now, rest) = self.rest.split_at(n);
        out.put_slice(now);
        self.rest = rest;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads every frame of `wire` through a frame buffer, in reads of at most 64 KiB; `hold` keeps
/// them all until the end (requests waiting for their answers), else each is let go at once
/// (answers written to the client).
fn read_frames(rt: &tokio::runtime::Runtime, wire: &[u8], hold: bool) -> usize {
    rt.block_on(async {
        // Answers read as the broker's are, requests as a client's.
        let max = eventgate::wire::frame::DEFAULT_MAX_FRAME_BYTES;
        let mut fb = if hold { FrameBuffer::new(max) } else { FrameBuffer::for_answers(max) };
        let mut src = Pieces { rest: wire, piece: 64 * 1024 };
        let (mut held, mut n) = (Vec::new(), 0);
        while fb.fill(&mut src).await.unwrap_or(0) > 0 {
            while let Some(f) = fb.next_frame().ok().flatten() {
                n += f.len();
                if hold {
                    held.push(f);
                }
            }
        }
        black_box(held);
        n
    })
}

/// The frame buffer reading a connection's frames from the socket, beside a memcpy of them.
fn frame_reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let frames = |sizes: &mut dyn Iterator<Item = usize>| -> Vec<u8> {
        sizes.flat_map(|n| [(n as i32).to_be_bytes().to_vec(), vec![7u8; n]].concat()).collect()
    };
    let cases = [
        ("32 answers of 1 MiB, each let go", frames(&mut std::iter::repeat_n(1 << 20, 32)), false),
        ("answers of 64 KiB to 8 MiB, each larger, let go", frames(&mut (16..=23).map(|s| 1usize << s)), false),
        ("100 requests of 100 KB, held", frames(&mut std::iter::repeat_n(100_000, 100)), true),
    ];
    for (name, wire, hold) in &cases {
        let mut g = c.benchmark_group(format!("frame reads/{name}"));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function("FrameBuffer", |b| b.iter(|| read_frames(&rt, wire, *hold)));
        g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(wire.clone())));
        g.finish();
    }
}

fn rewrites(c: &mut Criterion) {
    let brokers = (1..=3)
        .map(|i| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(i))
                .with_host(StrBytes::from_string(format!("kafka-{i}.internal")))
                .with_port(9092)
        })
        .collect();
    let md = response_frame(ApiKey::Metadata, 12, &MetadataResponse::default().with_brokers(brokers));
    let mut map = |id: i32, _: &str, _: i32| -> Result<(StrBytes, i32), AdvertiseError> {
        Ok((StrBytes::from_static_str("eventgate"), 19000 + id))
    };
    c.bench_function("rewrite Metadata v12, 3 brokers", |b| {
        b.iter(|| rewrite_response(ResponseAction::Addresses(ApiKey::Metadata), 12, black_box(&md), &mut map).unwrap())
    });

    let records = batch(1000, 1024);
    let fetch = FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_partitions(vec![PartitionData::default().with_records(Some(records.clone()))]),
    ]);
    let frame = response_frame(ApiKey::Fetch, 16, &fetch);
    let mut g = c.benchmark_group("fetch v16 answer with 1 MiB of records");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("scan for node_endpoints", |b| {
        b.iter(|| {
            rewrite_response(ResponseAction::NodeEndpoints(ApiKey::Fetch), 16, black_box(&frame), &mut map).unwrap()
        })
    });
    g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(frame.to_vec())));
    g.finish();

    let mut g = c.benchmark_group("record batch of 1000 x 1 KiB");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("parse, verify CRC, walk records", |b| {
        b.iter(|| {
            let (raw, _) = RawBatch::parse(black_box(&records)).unwrap();
            raw.verify_crc().unwrap();
            records::count_records(raw.stored_records(), raw.header.record_count).unwrap()
        })
    });
    g.bench_function("memcpy of the same bytes", |b| b.iter(|| black_box(records.to_vec())));
    g.finish();
}

criterion_group!(benches, frames, frame_reads, rewrites);
criterion_main!(benches);
