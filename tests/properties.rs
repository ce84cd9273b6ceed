//! Property tests of the record batch codec and of annotation.

use bytes::BytesMut;
use eventgate::asyncapi::{Policy, load};
use eventgate::validate::batch::{Budget, Verdict, check_partition};
use eventgate::validate::{ANNOTATION_HEADER, compile};
use eventgate::wire::compression::{Codec, Framing};
use eventgate::wire::records::{BatchHeader, RawBatch, records, write_batch, write_record};
use proptest::prelude::*;

type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

fn arb_record() -> impl Strategy<Value = Rec> {
    (
        -1_000_000i64..1_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..12),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
            ),
            0..4,
        ),
    )
}

fn arb_codec() -> impl Strategy<Value = (Codec, Framing)> {
    prop_oneof![
        Just((Codec::None, Framing::Standard)),
        Just((Codec::Gzip, Framing::Standard)),
        Just((Codec::Snappy, Framing::Standard)),
        Just((Codec::Snappy, Framing::Xerial)),
        Just((Codec::Lz4, Framing::Standard)),
        Just((Codec::Zstd, Framing::Standard)),
    ]
}

fn encode(recs: &[Rec], codec: Codec, framing: Framing, producer: (i64, i16, i32)) -> Vec<u8> {
    let mut section = Vec::new();
    for (i, (ts, k, v, hs)) in recs.iter().enumerate() {
        let headers: Vec<(&[u8], Option<&[u8]>)> = hs.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
        write_record(&mut section, *ts, i as i32, k.as_deref(), v.as_deref(), headers.into_iter());
    }
    let header = BatchHeader {
        producer_id: producer.0,
        producer_epoch: producer.1,
        base_sequence: producer.2,
        ..BatchHeader::new(recs.len() as i32, codec, 1_700_000_000_000)
    };
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, framing).unwrap();
    out.to_vec()
}

fn decode(batch: &[u8]) -> (BatchHeader, Vec<Rec>) {
    let (raw, used) = RawBatch::parse(batch).unwrap();
    assert_eq!(used, batch.len());
    raw.verify_crc().unwrap();
    let mut scratch = Vec::new();
    let (data, _) = raw.records_data(&mut scratch, 1 << 24).unwrap();
    let recs = records(data)
        .map(|r| {
            let r = r.unwrap();
            (
                r.timestamp_delta,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
                r.headers().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect(),
            )
        })
        .collect();
    (BatchHeader { crc: 0, ..raw.header.clone() }, recs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever is encoded decodes back to the same records with every codec.
    #[test]
    fn batches_round_trip(recs in proptest::collection::vec(arb_record(), 1..20), (codec, framing) in arb_codec()) {
        let bytes = encode(&recs, codec, framing, (9, 2, 40));
        let (_, back) = decode(&bytes);
        prop_assert_eq!(back, recs);
    }

    /// An untouched uncompressed batch encodes to identical bytes from what was decoded.
    #[test]
    fn untouched_batch_re_encodes_byte_identical(recs in proptest::collection::vec(arb_record(), 1..20)) {
        let original = encode(&recs, Codec::None, Framing::Standard, (-1, -1, -1));
        let (raw, _) = RawBatch::parse(&original).unwrap();
        let mut again = BytesMut::new();
        write_batch(&mut again, &raw.header, raw.stored_records(), Framing::Standard).unwrap();
        prop_assert_eq!(&again[..], &original[..]);
    }

    /// Annotation changes exactly the invalid records, and only by one added header; the batch
    /// header (producer id, epoch, base sequence, offsets, timestamps) and codec are kept, and
    /// all-valid batches are forwarded as their original bytes.
    #[test]
    fn annotation_adds_exactly_one_header(
        valid in proptest::collection::vec(any::<bool>(), 1..30),
        (codec, framing) in arb_codec(),
        extra in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..8), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..3),
    ) {
        let doc = compile("demo", load(include_str!("../asyncapi/demo.yaml")).unwrap()).unwrap();
        let route = doc.route_for("event-gateway-demo").unwrap();
        let recs: Vec<Rec> = valid.iter().enumerate().map(|(i, ok)| {
            let v = if *ok { format!(r#"{{"lumens":{i},"sentAt":"2026-01-01T00:00:00Z"}}"#) } else { format!(r#"{{"lumens":-{}}}"#, i + 1) };
            (i as i64, Some(format!("k{i}").into_bytes()), Some(v.into_bytes()), extra.clone())
        }).collect();
        let original = encode(&recs, codec, framing, (1234, 5, 77));
        let result = check_partition(route, Policy::Annotate, &original, "2026-01-01T00:00:00.000000000Z", &mut Budget::new(1 << 24));
        if valid.iter().all(|v| *v) {
            prop_assert!(matches!(result.verdict, Verdict::Untouched));
            return Ok(());
        }
        let Verdict::Annotated(new) = result.verdict else { panic!("expected annotation") };
        let (h0, r0) = decode(&original);
        let (h1, r1) = decode(&new);
        prop_assert_eq!(h0, h1);
        prop_assert_eq!(r0.len(), r1.len());
        for ((before, after), ok) in r0.iter().zip(&r1).zip(&valid) {
            if *ok {
                prop_assert_eq!(before, after);
            } else {
                let mut expected = before.clone();
                let (name, value) = after.3.last().unwrap().clone();
                prop_assert_eq!(name.as_slice(), ANNOTATION_HEADER.as_bytes());
                expected.3.push((name, value.clone()));
                prop_assert_eq!(&expected, after);
                let json: serde_json::Value = serde_json::from_slice(&value.unwrap()).unwrap();
                prop_assert_eq!(&json["ts"], "2026-01-01T00:00:00.000000000Z");
            }
        }
    }
}
