//! In-place walks of the two hot responses, Produce and Fetch, without decoding them.
//!
//! eventgate must look inside every Produce answer (to learn the offsets the broker assigned) and
//! check every Fetch answer for `node_endpoints`, but almost never needs to change them. These walks
//! read field by field with the bounds-checked [`Reader`], call a visitor for each partition, and
//! allocate nothing. Produce answers are walked from v3, Fetch answers from v12 (the flexible
//! versions, where top-level tagged fields can carry `node_endpoints`).

use super::WireError;
use super::reader::Reader;

/// What the top-level tagged fields of a response hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopLevel {
    /// `node_endpoints` (tag 0) is present *and non-empty*. Some brokers (tansu) send an empty array
    /// in every answer; that carries no address and needs no rewrite.
    pub has_node_endpoints: bool,
}

/// One partition of a Produce response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducePartition<'a> {
    /// Topic name (empty for v13+, which names topics by id).
    pub topic: &'a [u8],
    pub partition: i32,
    pub error_code: i16,
    pub base_offset: i64,
    /// The broker's append time for log-append-time topics, else -1 (v2+).
    pub log_append_time: i64,
}

/// Walks a Produce response body (after the response header), v3 or later. Only flexible
/// versions (v9+) carry top-level tagged fields.
pub fn produce_response<'a>(
    body: &'a [u8],
    version: i16,
    mut on_partition: impl FnMut(ProducePartition<'a>),
) -> Result<TopLevel, WireError> {
    let flexible = version >= 9;
    let mut r = Reader::new(body);
    let topics = r.array_len(flexible, 3, "produce response topics")?;
    for _ in 0..topics {
        let topic: &[u8] = if version >= 13 {
            r.skip(16, "topic id")?;
            &[]
        } else {
            r.string(flexible, "topic name")?
        };
        let partitions = r.array_len(flexible, 14, "produce response partitions")?;
        for _ in 0..partitions {
            let partition = r.i32("partition index")?;
            let error_code = r.i16("partition error code")?;
            let base_offset = r.i64("base offset")?;
            let log_append_time = r.i64("log append time")?;
            if version >= 5 {
                r.skip(8, "log start offset")?;
            }
            if version >= 8 {
                let errors = r.array_len(flexible, 5, "record errors")?;
                for _ in 0..errors {
                    r.skip(4, "batch index")?;
                    r.nullable_string(flexible, "batch index error message")?;
                    if flexible {
                        r.skip_tagged_fields("record error tagged fields")?;
                    }
                }
                r.nullable_string(flexible, "error message")?;
            }
            if flexible {
                r.skip_tagged_fields("partition tagged fields")?;
            }
            on_partition(ProducePartition { topic, partition, error_code, base_offset, log_append_time });
        }
        if flexible {
            r.skip_tagged_fields("topic tagged fields")?;
        }
    }
    r.skip(4, "throttle time")?;
    if !flexible {
        if r.remaining() != 0 {
            return Err(WireError::Malformed { what: "response", why: "trailing bytes after the response body" });
        }
        return Ok(TopLevel::default());
    }
    top_level(&mut r)
}

/// Walks a Fetch response body (after the response header), v12 or later, calling
/// `on_partition(partition_index, records)` for each partition.
pub fn fetch_response<'a>(
    body: &'a [u8],
    version: i16,
    mut on_partition: impl FnMut(i32, Option<&'a [u8]>),
) -> Result<TopLevel, WireError> {
    let mut r = Reader::new(body);
    r.skip(4 + 2 + 4, "fetch response header fields")?;
    let topics = r.array_len(true, 18, "fetch response topics")?;
    for _ in 0..topics {
        if version >= 13 {
            r.skip(16, "topic id")?;
        } else {
            r.compact("topic name")?;
        }
        let partitions = r.array_len(true, 37, "fetch response partitions")?;
        for _ in 0..partitions {
            let partition = r.i32("partition index")?;
            r.skip(2 + 8 + 8 + 8, "partition data")?;
            let aborted = r.array_len(true, 17, "aborted transactions")?;
            for _ in 0..aborted {
                r.skip(16, "aborted transaction")?;
                r.skip_tagged_fields("aborted transaction tagged fields")?;
            }
            r.skip(4, "preferred read replica")?;
            let records = r.compact_nullable("records")?;
            r.skip_tagged_fields("partition tagged fields")?;
            on_partition(partition, records);
        }
        r.skip_tagged_fields("topic tagged fields")?;
    }
    top_level(&mut r)
}

fn top_level(r: &mut Reader<'_>) -> Result<TopLevel, WireError> {
    let mut out = TopLevel::default();
    r.tagged_fields("response tagged fields", |tag, value| {
        // A compact array of zero elements is the single byte 0x01.
        out.has_node_endpoints |= tag == 0 && value != [1];
    })?;
    if r.remaining() != 0 {
        return Err(WireError::Malformed { what: "response", why: "trailing bytes after the response body" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::ProduceResponse;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    #[test]
    fn produce_answers_are_walked_at_every_version() {
        let resp = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default().with_index(0).with_base_offset(10).with_log_append_time_ms(99),
                    PartitionProduceResponse::default().with_index(1).with_error_code(87).with_base_offset(-1),
                ]),
        ]);
        for version in 3..=12 {
            let mut b = BytesMut::new();
            resp.encode(&mut b, version).unwrap();
            let mut seen = Vec::new();
            produce_response(&b, version, |p| {
                seen.push((p.topic.to_vec(), p.partition, p.error_code, p.base_offset, p.log_append_time))
            })
            .unwrap();
            assert_eq!(seen, vec![(b"t".to_vec(), 0, 0, 10, 99), (b"t".to_vec(), 1, 87, -1, -1)], "v{version}");
            for cut in 0..b.len() {
                assert!(produce_response(&b[..cut], version, |_| {}).is_err(), "v{version} cut {cut}");
            }
        }
    }
}
