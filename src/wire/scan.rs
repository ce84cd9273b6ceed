//! In-place walks of the two hot responses, Produce and Fetch, without decoding them.
//!
//! eventgate must look inside every Produce answer (to learn the offsets the broker assigned) and
//! check every Fetch answer for `node_endpoints`, but almost never needs to change them. These walks
//! read field by field with the bounds-checked [`Reader`], call a visitor for each partition, and
//! allocate nothing. Only flexible versions are walked (Produce v9+, Fetch v12+), the ones where the
//! top-level tagged fields can carry `node_endpoints`.

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
}

/// Walks a Produce response body (after the response header), v9 or later.
pub fn produce_response<'a>(
    body: &'a [u8],
    version: i16,
    mut on_partition: impl FnMut(ProducePartition<'a>),
) -> Result<TopLevel, WireError> {
    let mut r = Reader::new(body);
    let topics = r.array_len(true, 3, "produce response topics")?;
    for _ in 0..topics {
        let topic: &[u8] = if version >= 13 {
            r.skip(16, "topic id")?;
            &[]
        } else {
            r.compact("topic name")?
        };
        let partitions = r.array_len(true, 33, "produce response partitions")?;
        for _ in 0..partitions {
            let partition = r.i32("partition index")?;
            let error_code = r.i16("partition error code")?;
            let base_offset = r.i64("base offset")?;
            r.skip(8 + 8, "log append time and log start offset")?;
            let errors = r.array_len(true, 6, "record errors")?;
            for _ in 0..errors {
                r.skip(4, "batch index")?;
                r.compact_nullable("batch index error message")?;
                r.skip_tagged_fields("record error tagged fields")?;
            }
            r.compact_nullable("error message")?;
            r.skip_tagged_fields("partition tagged fields")?;
            on_partition(ProducePartition {
                topic,
                partition,
                error_code,
                base_offset,
            });
        }
        r.skip_tagged_fields("topic tagged fields")?;
    }
    r.skip(4, "throttle time")?;
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
        return Err(WireError::Malformed {
            what: "response",
            why: "trailing bytes after the response body",
        });
    }
    Ok(out)
}
