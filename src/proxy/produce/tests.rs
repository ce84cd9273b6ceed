use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ResponseHeader};
use kafka_protocol::protocol::Decodable;

use super::*;
use crate::asyncapi::{Policy, load};
use crate::validate::{Catalog, Policies, UnknownTopic, compile};
use crate::wire::compression::{Codec, Framing};
use crate::wire::records::{BatchHeader, RawBatch, records, write_batch, write_record};

pub(crate) const GOOD: &str = r#"{"lumens":1,"sentAt":"2026-01-01T00:00:00Z"}"#;
pub(crate) const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;
pub(crate) const TOPIC: &str = "event-gateway-demo";

pub(crate) fn validation(policies: Policies) -> Validation {
    let v = Validation::new(policies);
    let doc = compile("demo", load(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml"))).unwrap())
        .unwrap();
    v.catalog.store(Arc::new(Catalog::new(vec![Arc::new(doc)]).unwrap()));
    v
}

/// The demo channel says `annotate`; a configured override makes it `reject`.
pub(crate) fn reject() -> Policies {
    let mut p = Policies::default();
    p.overrides.insert(TOPIC.into(), Policy::Reject);
    p
}

fn batch(values: &[&str]) -> Bytes {
    let mut section = Vec::new();
    for (i, v) in values.iter().enumerate() {
        write_record(&mut section, 0, i as i32, None, Some(v.as_bytes()), std::iter::empty());
    }
    let header = BatchHeader::new(values.len() as i32, Codec::None, 0);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

/// A Produce request frame: (topic, partition, values) triples.
pub(crate) fn request(version: i16, acks: i16, parts: &[(&str, i32, &[&str])]) -> (RequestMeta, Bytes) {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, p, values) in parts {
        let data = PartitionProduceData::default().with_index(*p).with_records(Some(batch(values)));
        match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
            Some(t) => t.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(1000).with_topic_data(topics);
    let b = crate::wire::header::request_frame(ApiKey::Produce, version, 9, "t", &req).unwrap();
    let frame = b.freeze();
    (RequestMeta::peek(&frame).unwrap(), frame)
}

pub(crate) fn decode_request(frame: &Bytes, meta: &RequestMeta) -> ProduceRequest {
    let mut body = frame.slice(meta.body_offset(frame).unwrap()..);
    ProduceRequest::decode(&mut body, meta.api_version).unwrap()
}

fn decode_answer(frame: &Bytes, version: i16) -> ProduceResponse {
    let mut body = frame.slice(4..);
    let h = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version)).unwrap();
    assert_eq!(h.correlation_id, 9);
    ProduceResponse::decode(&mut body, version).unwrap()
}

#[test]
fn valid_and_undescribed_records_pass_untouched() {
    let v = validation(Policies::default());
    let m = ValidationMetrics::new();
    let (meta, frame) = request(9, -1, &[(TOPIC, 0, &[GOOD, GOOD]), ("other", 0, &["anything"])]);
    assert!(matches!(
        inspect(&v, &m, &meta, &frame, false).unwrap().plan,
        Plan::Forward { frame: None, merge: None, .. }
    ));
    let empty = Validation::new(Policies::default());
    assert!(matches!(
        inspect(&empty, &m, &meta, &frame, false).unwrap().plan,
        Plan::Forward { frame: None, merge: None, .. }
    ));
}

#[test]
fn annotate_rewrites_only_the_batches_with_invalid_records() {
    let v = validation(Policies::default());
    let (meta, frame) = request(9, -1, &[(TOPIC, 0, &[GOOD, BAD]), (TOPIC, 1, &[GOOD]), ("other", 0, &["x"])]);
    let Plan::Forward { frame: Some(new), merge: None, .. } =
        inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan
    else {
        panic!()
    };
    // The request header is kept byte for byte.
    let body_at = meta.body_offset(&frame).unwrap();
    assert_eq!(&new[4..body_at], &frame[4..body_at]);
    let before = decode_request(&frame, &meta);
    let after = decode_request(&new, &meta);
    assert_eq!(after.topic_data[0].partition_data[1], before.topic_data[0].partition_data[1]);
    assert_eq!(after.topic_data[1], before.topic_data[1]);
    let records_bytes = after.topic_data[0].partition_data[0].records.clone().unwrap();
    let (raw, _) = RawBatch::parse(&records_bytes).unwrap();
    raw.verify_crc().unwrap();
    let recs: Vec<_> = records(raw.stored_records()).map(Result::unwrap).collect();
    assert_eq!(recs[0].header_count, 0);
    assert!(recs[1].header(crate::validate::ANNOTATION_HEADER.as_bytes()).is_some());
}

#[test]
fn reject_refuses_partitions_and_merges_errors_in_request_order() {
    let policies = reject();
    let v = validation(policies);
    let parts: &[(&str, i32, &[&str])] = &[("other", 0, &["x"]), (TOPIC, 0, &[GOOD, BAD]), (TOPIC, 1, &[GOOD])];
    let (meta, frame) = request(9, -1, parts);
    let Plan::Forward { frame: Some(new), merge: Some(merge), .. } =
        inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan
    else {
        panic!()
    };
    let forwarded = decode_request(&new, &meta);
    let names: Vec<_> = forwarded
        .topic_data
        .iter()
        .map(|t| (t.name.0.to_string(), t.partition_data.iter().map(|p| p.index).collect::<Vec<_>>()))
        .collect();
    assert_eq!(names, vec![("other".to_string(), vec![0]), (TOPIC.to_string(), vec![1])]);
    // The broker answers the two partitions it got, in its own order; the merge restores the request's.
    let mut broker = ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_responses(vec![PartitionProduceResponse::default().with_index(1).with_base_offset(10)]),
        TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("other")))
            .with_partition_responses(vec![PartitionProduceResponse::default().with_index(0).with_base_offset(5)]),
    ]);
    merge_into(&mut broker, &merge, 9);
    let got: Vec<(String, Vec<(i32, i16)>)> = broker
        .responses
        .iter()
        .map(|t| (t.name.0.to_string(), t.partition_responses.iter().map(|p| (p.index, p.error_code)).collect()))
        .collect();
    assert_eq!(got, vec![("other".into(), vec![(0, 0)]), (TOPIC.into(), vec![(0, 87), (1, 0)])]);
    let refused = &broker.responses[1].partition_responses[0];
    assert_eq!(refused.record_errors[0].batch_index, 1);
    assert!(refused.error_message.as_ref().unwrap().contains("/lumens"), "{refused:?}");
}

#[test]
fn all_refused_is_answered_locally_at_every_version() {
    let policies = reject();
    let v = validation(policies);
    for version in 3..=12 {
        let (meta, frame) = request(version, -1, &[(TOPIC, 0, &[BAD])]);
        let Plan::Answer(answer) = inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan else {
            panic!()
        };
        let resp = decode_answer(&answer, version);
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 87, "v{version}");
        assert_eq!(p.record_errors.len(), usize::from(version >= 8), "v{version}");
    }
}

#[test]
fn acks_zero_refusal_closes_after_forwarding_the_rest() {
    let v = validation(reject());
    let (meta, frame) = request(9, 0, &[(TOPIC, 0, &[BAD]), (TOPIC, 1, &[GOOD])]);
    let Plan::ForwardThenClose { frame: Some(rest), reason } =
        inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan
    else {
        panic!()
    };
    assert_eq!(decode_request(&rest, &meta).topic_data[0].partition_data.len(), 1);
    assert!(reason.contains("event-gateway-demo[0]"), "{reason}");
    let (meta, frame) = request(9, 0, &[(TOPIC, 0, &[BAD])]);
    assert!(matches!(
        inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan,
        Plan::ForwardThenClose { frame: None, .. }
    ));
}

#[test]
fn unknown_topics_can_be_refused_and_overrides_win() {
    let mut policies = Policies { unknown_topic: UnknownTopic::Reject, ..Default::default() };
    policies.overrides.insert(TOPIC.into(), Policy::Off);
    let v = validation(policies);
    let (meta, frame) = request(9, -1, &[(TOPIC, 0, &[BAD]), ("other", 0, &["x"])]);
    let Plan::Forward { merge: Some(merge), .. } =
        inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan
    else {
        panic!()
    };
    assert_eq!(merge.refused.len(), 1);
    assert_eq!(&*merge.refused[0].topic, "other");
    assert!(merge.refused[0].message.contains("not described"));
}

#[test]
fn legacy_produce_versions_on_validated_topics_are_refused_with_their_own_answer_format() {
    let v = validation(Policies::default());
    // A v2 request: acks, timeout, [topic [partition, message set]].
    let mut f = BytesMut::new();
    f.put_i32(0);
    f.put_i16(0);
    f.put_i16(2);
    f.put_i32(9);
    f.put_i16(1);
    f.put_slice(b"t");
    f.put_i16(1);
    f.put_i32(1000);
    f.put_i32(1);
    f.put_i16(TOPIC.len() as i16);
    f.put_slice(TOPIC.as_bytes());
    f.put_i32(1);
    f.put_i32(0);
    f.put_i32(3);
    f.put_slice(b"old");
    let len = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    let frame = f.freeze();
    let meta = RequestMeta::peek(&frame).unwrap();
    let Plan::Answer(a) = inspect(&v, &ValidationMetrics::new(), &meta, &frame, false).unwrap().plan else { panic!() };
    // correlation id, 1 topic, name, 1 partition, index 0, error 43, base offset -1, append time -1, throttle 0
    let mut expected = 9i32.to_be_bytes().to_vec();
    expected.extend(1i32.to_be_bytes());
    expected.extend((TOPIC.len() as i16).to_be_bytes());
    expected.extend(TOPIC.as_bytes());
    expected.extend(1i32.to_be_bytes());
    expected.extend(0i32.to_be_bytes());
    expected.extend(43i16.to_be_bytes());
    expected.extend((-1i64).to_be_bytes());
    expected.extend((-1i64).to_be_bytes());
    expected.extend(0i32.to_be_bytes());
    assert_eq!(&a[4..], &expected[..]);
}

#[test]
fn mirror_lists_forwarded_partitions() {
    let v = validation(reject());
    let (meta, frame) = request(9, 0, &[(TOPIC, 0, &[GOOD]), ("other", 1, &["x"])]);
    let i = inspect(&v, &ValidationMetrics::new(), &meta, &frame, true).unwrap();
    assert!(i.refused.is_empty());
    // The frame itself is untouched: asking the broker for offsets is the acks_zero stage's part.
    let Plan::Forward { frame: None, mirror: Some(parts), .. } = i.plan else { panic!() };
    let names: Vec<_> = parts.iter().map(|p| (&*p.topic, p.partition, p.outcomes.is_some())).collect();
    assert_eq!(names, vec![(TOPIC, 0, true), ("other", 1, false)]);

    // Refused records are handed over at once, for the rejected subject.
    let (meta, frame) = request(9, -1, &[(TOPIC, 0, &[BAD]), (TOPIC, 1, &[GOOD])]);
    let i = inspect(&v, &ValidationMetrics::new(), &meta, &frame, true).unwrap();
    assert_eq!(i.refused.len(), 1);
    assert_eq!((i.refused[0].partition, i.refused[0].base_offset), (0, None));
}
