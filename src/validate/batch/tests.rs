use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::asyncapi::load;
use crate::validate::{CompiledDoc, compile};
use crate::wire::compression::{Codec, Framing};
use crate::wire::records::{BatchHeader, RawBatch, records, write_batch, write_record};

fn demo() -> Arc<CompiledDoc> {
    Arc::new(
        compile("demo", load(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml"))).unwrap())
            .unwrap(),
    )
}

fn batch(values: &[&str], codec: Codec) -> Vec<u8> {
    let mut section = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let hs = [(b"trace".as_slice(), Some(b"t1".as_slice())), (b"trace".as_slice(), Some(b"t2".as_slice()))];
        write_record(
            &mut section,
            i as i64 * 3,
            i as i32,
            Some(format!("k{i}").as_bytes()),
            Some(v.as_bytes()),
            hs.into_iter(),
        );
    }
    let header = BatchHeader {
        max_timestamp: 1_000 + 3 * (values.len() as i64 - 1),
        producer_id: 77,
        producer_epoch: 3,
        base_sequence: 1_000,
        ..BatchHeader::new(values.len() as i32, codec, 1_000)
    };
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.to_vec()
}

const GOOD: &str = r#"{"lumens":1,"sentAt":"2026-01-01T00:00:00Z"}"#;
const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;

#[test]
fn all_valid_batches_are_untouched() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    let r =
        check_partition(route, Policy::Annotate, &batch(&[GOOD, GOOD], Codec::None), "ts", &mut Budget::new(1 << 20));
    assert!(matches!(r.verdict, Verdict::Untouched));
    assert_eq!(r.counts, Counts { valid: 2, invalid: 0, unchecked: 0 });
}

#[test]
fn annotated_batches_keep_everything_but_add_one_header_to_invalid_records() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let original = batch(&[GOOD, BAD, "nope"], codec);
        let r = check_partition(
            route,
            Policy::Annotate,
            &original,
            "2026-11-26T00:00:00.000000001Z",
            &mut Budget::new(1 << 20),
        );
        let Verdict::Annotated(new) = r.verdict else { panic!("{codec:?}: {:?}", r.verdict) };
        let (before, _) = RawBatch::parse(&original).unwrap();
        let (after, used) = RawBatch::parse(&new).unwrap();
        assert_eq!(used, new.len());
        after.verify_crc().unwrap();
        assert_eq!(
            BatchHeader { crc: 0, ..after.header.clone() },
            BatchHeader { crc: 0, ..before.header.clone() },
            "{codec:?}"
        );
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        let (d1, _) = before.records_data(&mut s1, 1 << 20).unwrap();
        let (d2, _) = after.records_data(&mut s2, 1 << 20).unwrap();
        let r1: Vec<_> = records(d1).map(Result::unwrap).collect();
        let r2: Vec<_> = records(d2).map(Result::unwrap).collect();
        assert_eq!(r1[0], r2[0], "valid records are copied byte for byte");
        for i in [1, 2] {
            assert_eq!(
                (r1[i].key, r1[i].value, r1[i].offset_delta, r1[i].timestamp_delta),
                (r2[i].key, r2[i].value, r2[i].offset_delta, r2[i].timestamp_delta)
            );
            let mut h2: Vec<_> = r2[i].headers().collect();
            let (name, value) = h2.pop().unwrap();
            assert_eq!(
                h2,
                r1[i].headers().collect::<Vec<_>>(),
                "existing headers, duplicates included, are kept in order"
            );
            assert_eq!(name, ANNOTATION_HEADER.as_bytes());
            let json: serde_json::Value = serde_json::from_slice(value.unwrap()).unwrap();
            assert_eq!(json["ts"], "2026-11-26T00:00:00.000000001Z");
            assert!(json["errors"][0].as_str().unwrap().starts_with('/'), "{json}");
        }
    }
}

#[test]
fn rejected_partitions_name_each_invalid_record() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    let r = check_partition(
        route,
        Policy::Reject,
        &batch(&[GOOD, BAD, GOOD, BAD], Codec::Zstd),
        "ts",
        &mut Budget::new(1 << 20),
    );
    let Verdict::Rejected { invalid: 2, errors } = r.verdict else { panic!() };
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(
        errors[0].1,
        "/lumens: -1 is less than the minimum of 0 (schema #/components/schemas/lightMeasuredPayload/properties/lumens/minimum)"
    );
}

#[test]
fn corrupt_batches_are_unreadable_and_bombs_over_budget() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    let mut corrupt = batch(&[GOOD], Codec::None);
    let last = corrupt.len() - 2;
    corrupt[last] ^= 0x20;
    let r = check_partition(route, Policy::Annotate, &corrupt, "ts", &mut Budget::new(1 << 20));
    assert!(
        matches!(r.verdict, Verdict::Unreadable { code: codes::CORRUPT_MESSAGE, ref message } if message.contains("CRC"))
    );
    let big = "x".repeat(100_000);
    let values: Vec<&str> = (0..50).map(|_| big.as_str()).collect();
    let bomb = batch(&values, Codec::Zstd);
    let r = check_partition(route, Policy::Annotate, &bomb, "ts", &mut Budget::new(1 << 20));
    assert!(matches!(r.verdict, Verdict::OverBudget(ref message) if message.contains("1048576")), "{:?}", r.verdict);
}

/// `count` copies of one small record in one zstd batch: a few kilobytes that decompress to far more.
fn zstd_bomb(value: &str, count: usize) -> Vec<u8> {
    let mut section = Vec::new();
    for i in 0..count {
        write_record(&mut section, 0, i as i32, None, Some(value.as_bytes()), std::iter::empty());
    }
    let mut out = BytesMut::new();
    write_batch(&mut out, &BatchHeader::new(count as i32, Codec::Zstd, 1_000), &section, Framing::Standard).unwrap();
    out.to_vec()
}

#[test]
fn the_budget_is_shared_by_every_batch_of_a_request() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    // Each batch fits the budget alone; the second one of the same request does not.
    let one = zstd_bomb(BAD, 1_000);
    let mut probe = Budget::new(1 << 30);
    check_partition(route, Policy::Annotate, &one, "ts", &mut probe);
    let used = (1 << 30) - probe.left();
    assert!(used > 1_000 * RECORD_COST, "{used}");
    let mut budget = Budget::new(used * 3 / 2);
    let first = check_partition(route, Policy::Annotate, &one, "ts", &mut budget);
    assert!(matches!(first.verdict, Verdict::Annotated(_)), "{:?}", first.verdict);
    let second = check_partition(route, Policy::Annotate, &one, "ts", &mut budget);
    assert!(matches!(second.verdict, Verdict::OverBudget(_)), "{:?}", second.verdict);
    assert_eq!(budget.left(), 0);
    // Uncompressed records cost nothing but their annotations: the producer sent every byte.
    let plain = batch(&[GOOD, GOOD], Codec::None);
    let r = check_partition(route, Policy::Annotate, &plain, "ts", &mut budget);
    assert!(matches!(r.verdict, Verdict::Untouched), "{:?}", r.verdict);
}

#[test]
fn records_that_fail_alike_share_their_errors_and_rejections_are_capped() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    let r = check_partition(route, Policy::Reject, &zstd_bomb(BAD, 1_000), "ts", &mut Budget::new(1 << 20));
    let Verdict::Rejected { invalid, errors } = &r.verdict else { panic!("{:?}", r.verdict) };
    assert_eq!((*invalid, errors.len()), (1_000, MAX_RECORD_ERRORS));
    let shared: Vec<&Arc<[String]>> = r
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Invalid(e) => e,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(shared.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])), "one copy of the errors for all records");
}

#[test]
fn error_texts_quoting_a_huge_value_are_capped() {
    let d = demo();
    let route = d.route_for("event-gateway-demo").unwrap();
    let huge = format!(r#"{{"lumens":"{}","sentAt":"2026-01-01T00:00:00Z"}}"#, "é".repeat(100_000));
    let r = check_partition(route, Policy::Annotate, &batch(&[&huge], Codec::None), "ts", &mut Budget::new(1 << 20));
    let Outcome::Invalid(errors) = &r.outcomes[0] else { panic!("{:?}", r.outcomes) };
    assert!(errors.iter().all(|e| e.len() <= crate::validate::MAX_ERROR_BYTES), "{errors:?}");
    assert!(errors[0].ends_with('…'));
    // Two long errors joined for `record_errors` are cut to one error's length as well.
    let long = "é".repeat(100_000);
    let two = format!(r#"{{"lumens":"{long}","sentAt":"{long}"}}"#);
    let r = check_partition(route, Policy::Reject, &batch(&[&two], Codec::None), "ts", &mut Budget::new(1 << 20));
    let Verdict::Rejected { errors, .. } = &r.verdict else { panic!("{:?}", r.verdict) };
    assert!(errors[0].1.len() <= crate::validate::MAX_ERROR_BYTES, "{}", errors[0].1.len());
    let Outcome::Invalid(all) = &r.outcomes[0] else { panic!() };
    assert!(all.len() >= 2 && all.iter().map(String::len).sum::<usize>() > crate::validate::MAX_ERROR_BYTES);
}

#[test]
fn timestamps_have_nanoseconds() {
    let ts = now_rfc3339();
    assert_eq!(ts.len(), "2026-11-26T00:00:00.000000000Z".len(), "{ts}");
    assert!(ts.ends_with('Z'));
}
