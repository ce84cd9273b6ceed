//! Produce requests, walked in place.
//!
//! Every Produce request a client sends is untrusted, so it is walked with the bounds-checked
//! [`Reader`] rather than handed to a generated decoder: counts are checked against the bytes sent
//! before anything is sized by them, and the records of each partition come out as slices of the
//! request itself. Only when eventgate must change the request is it decoded with `kafka-protocol`
//! (which is safe once this walk has accepted it) and encoded again.

use super::WireError;
use super::reader::Reader;

/// One partition's data in a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionData<'a> {
    pub index: i32,
    pub records: Option<&'a [u8]>,
}

/// One topic's data in a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicData<'a> {
    pub name: &'a str,
    pub partitions: Vec<PartitionData<'a>>,
}

/// A walked Produce request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequestView<'a> {
    pub version: i16,
    pub transactional_id: Option<&'a [u8]>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: Vec<TopicData<'a>>,
}

impl<'a> ProduceRequestView<'a> {
    /// Walks a Produce request `body` (after the request header). Versions 0–12: v13 names topics
    /// by id, which eventgate does not negotiate.
    pub fn parse(body: &'a [u8], version: i16) -> Result<Self, WireError> {
        if !(0..=12).contains(&version) {
            return Err(WireError::Malformed { what: "produce request", why: "version not negotiated (0-12)" });
        }
        let flexible = version >= 9;
        let mut r = Reader::new(body);
        let transactional_id = if version >= 3 { r.nullable_string(flexible, "transactional id")? } else { None };
        let acks = r.i16("acks")?;
        let timeout_ms = r.i32("timeout")?;
        let (topic_min, partition_min) = if flexible { (3, 6) } else { (6, 8) };
        let n_topics = r.array_len(flexible, topic_min, "produce topics")?;
        let mut topics = Vec::with_capacity(n_topics);
        for _ in 0..n_topics {
            let name = std::str::from_utf8(r.string(flexible, "topic name")?)
                .map_err(|_| WireError::Malformed { what: "topic name", why: "not UTF-8" })?;
            let n_partitions = r.array_len(flexible, partition_min, "produce partitions")?;
            let mut partitions = Vec::with_capacity(n_partitions);
            for _ in 0..n_partitions {
                let index = r.i32("partition index")?;
                let records = if flexible { r.compact_nullable("records")? } else { r.nullable_bytes32("records")? };
                if flexible {
                    r.skip_tagged_fields("partition tagged fields")?;
                }
                partitions.push(PartitionData { index, records });
            }
            if flexible {
                r.skip_tagged_fields("topic tagged fields")?;
            }
            topics.push(TopicData { name, partitions });
        }
        if flexible {
            r.skip_tagged_fields("request tagged fields")?;
        }
        if r.remaining() != 0 {
            return Err(WireError::Malformed { what: "produce request", why: "trailing bytes after the body" });
        }
        Ok(Self { version, transactional_id, acks, timeout_ms, topics })
    }
}

/// The `acks` of a Produce request body, without walking the rest.
pub fn acks(body: &[u8], version: i16) -> Result<i16, WireError> {
    let mut r = Reader::new(body);
    if version >= 3 {
        r.nullable_string(version >= 9, "transactional id")?;
    }
    r.i16("acks")
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    fn request() -> ProduceRequest {
        ProduceRequest::default().with_acks(-1).with_timeout_ms(1500).with_topic_data(vec![
            TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("a"))).with_partition_data(vec![
                PartitionProduceData::default().with_index(0).with_records(Some(Bytes::from_static(b"batch-0"))),
                PartitionProduceData::default().with_index(3).with_records(None),
            ]),
            TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("b"))).with_partition_data(vec![
                PartitionProduceData::default().with_index(1).with_records(Some(Bytes::from_static(b"b1"))),
            ]),
        ])
    }

    #[test]
    fn walks_every_negotiable_version() {
        for version in 3..=12 {
            let mut b = BytesMut::new();
            request().encode(&mut b, version).unwrap();
            let v = ProduceRequestView::parse(&b, version).unwrap();
            assert_eq!((v.acks, v.timeout_ms), (-1, 1500));
            assert_eq!(v.topics.len(), 2);
            assert_eq!(v.topics[0].name, "a");
            assert_eq!(v.topics[0].partitions[0], PartitionData { index: 0, records: Some(b"batch-0") });
            assert_eq!(v.topics[0].partitions[1].records, None);
            assert_eq!(v.topics[1].partitions[0].records, Some(&b"b1"[..]));
            assert_eq!(acks(&b, version).unwrap(), -1);
            for cut in 0..b.len() {
                assert!(ProduceRequestView::parse(&b[..cut], version).is_err(), "v{version} cut at {cut}");
            }
        }
    }

    #[test]
    fn legacy_versions_walk_too() {
        // v0–v2: acks, timeout, [topic, [partition, INT32-sized message set]].
        let mut b = Vec::new();
        b.extend(1i16.to_be_bytes());
        b.extend(100i32.to_be_bytes());
        b.extend(1i32.to_be_bytes());
        b.extend(1i16.to_be_bytes());
        b.push(b't');
        b.extend(1i32.to_be_bytes());
        b.extend(7i32.to_be_bytes());
        b.extend(3i32.to_be_bytes());
        b.extend(b"abc");
        let v = ProduceRequestView::parse(&b, 2).unwrap();
        assert_eq!(v.topics[0].partitions[0], PartitionData { index: 7, records: Some(b"abc") });
        assert_eq!(v.transactional_id, None);
    }

    #[test]
    fn crafted_counts_are_refused_before_allocation() {
        let mut b = vec![0xff, 0xff]; // null transactional id (v3)
        b.extend(1i16.to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.extend(i32::MAX.to_be_bytes()); // two billion topics in a few bytes
        assert!(ProduceRequestView::parse(&b, 3).is_err());
        assert!(ProduceRequestView::parse(&b, 13).is_err());
    }
}
