//! One partition's records against one route: every record checked, then the batch forwarded as
//! it was, rebuilt with annotations, or refused.
//!
//! A batch whose records are all valid (or unchecked) leaves as its original bytes. In `annotate`
//! mode a batch with invalid records is rebuilt: valid records are copied byte for byte, invalid
//! ones get one more header, and the batch keeps its header fields (offset deltas, timestamps,
//! producer id, epoch and base sequence), its codec and framing, with a new length and CRC-32C.
//! In `reject` mode the partition is refused with the index and reason of each invalid record.

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::{ANNOTATION_HEADER, Outcome, Route};
use crate::asyncapi::Policy;
use crate::wire::records::{self, RecordError, put_varint, write_batch, write_record_with_header};

/// Kafka error codes eventgate answers with.
pub mod codes {
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const INVALID_RECORD: i16 = 87;
}

/// Records seen per outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub valid: u64,
    pub invalid: u64,
    pub unchecked: u64,
}

/// What becomes of one partition's records.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the original bytes.
    Untouched,
    /// Forward these records instead (annotated).
    Annotated(Bytes),
    /// Refuse the partition: `(record index, reason)` for each invalid record.
    Rejected(Vec<(i32, String)>),
    /// The records cannot be read; refuse the partition with this error code and message.
    Unreadable { code: i16, message: String },
}

/// The result for one partition.
#[derive(Debug)]
pub struct PartitionResult {
    pub verdict: Verdict,
    pub counts: Counts,
    /// Each record's outcome, in order.
    pub outcomes: Vec<Outcome>,
}

#[derive(Serialize)]
struct Annotation<'a> {
    ts: &'a str,
    errors: &'a [String],
}

/// Checks the `records` of one partition against `route` under `policy` (annotate or reject).
/// `ts` is the RFC 3339 time put in annotations; `limit` bounds decompression.
pub fn check_partition(route: &Route, policy: Policy, records: &[u8], ts: &str, limit: usize) -> PartitionResult {
    let mut counts = Counts::default();
    let mut outcomes = Vec::new();
    let mut scratch = Vec::new();
    let mut rebuilt = BytesMut::new();
    let mut changed = false;
    let mut rejected = Vec::new();
    let mut index: i32 = 0;
    let unreadable = |e: RecordError| {
        let code = match e {
            RecordError::Magic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            _ => codes::CORRUPT_MESSAGE,
        };
        PartitionResult {
            verdict: Verdict::Unreadable { code, message: format!("eventgate cannot read this record batch: {e}") },
            counts: Counts::default(),
            outcomes: Vec::new(),
        }
    };
    for batch in records::batches(records) {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return unreadable(e),
        };
        if let Err(e) = batch.verify_crc() {
            return unreadable(e);
        }
        if batch.header.is_control() {
            rebuilt.extend_from_slice(batch.bytes);
            continue;
        }
        let (data, framing) = match batch.records_data(&mut scratch, limit) {
            Ok(d) => d,
            Err(e) => return unreadable(e),
        };
        let first_outcome = outcomes.len();
        // The declared count is a claim: a record takes at least 7 bytes, so never reserve beyond that.
        outcomes.reserve((batch.header.record_count.max(0) as usize).min(data.len() / 7));
        let mut batch_invalid = false;
        let mut n = 0usize;
        for rec in records::records(data) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => return unreadable(e.into()),
            };
            let outcome = route.check(&rec);
            match &outcome {
                Outcome::Valid(_) => counts.valid += 1,
                Outcome::Unchecked(_) => counts.unchecked += 1,
                Outcome::Invalid(errors) => {
                    counts.invalid += 1;
                    batch_invalid = true;
                    if policy == Policy::Reject {
                        rejected.push((index, errors.join("; ")));
                    }
                }
            }
            outcomes.push(outcome);
            index = index.saturating_add(1);
            n += 1;
        }
        if i32::try_from(n).ok() != Some(batch.header.record_count) {
            return unreadable(RecordError::RecordCount { declared: batch.header.record_count, found: n });
        }
        if policy == Policy::Annotate && batch_invalid {
            changed = true;
            let section = annotate(data, &outcomes[first_outcome..], ts);
            if let Err(e) = write_batch(&mut rebuilt, &batch.header, &section, framing) {
                return unreadable(e);
            }
        } else {
            rebuilt.extend_from_slice(batch.bytes);
        }
    }
    let verdict = if !rejected.is_empty() {
        Verdict::Rejected(rejected)
    } else if changed {
        Verdict::Annotated(rebuilt.freeze())
    } else {
        Verdict::Untouched
    };
    PartitionResult { verdict, counts, outcomes }
}

/// The records section `data` again, with the annotation header added to each invalid record.
fn annotate(data: &[u8], outcomes: &[Outcome], ts: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + outcomes.len() * 96);
    for (rec, outcome) in records::records(data).zip(outcomes) {
        // Already walked once by the caller.
        let Ok(rec) = rec else { break };
        match outcome {
            Outcome::Invalid(errors) => {
                let value = serde_json::to_vec(&Annotation { ts, errors }).unwrap_or_default();
                write_record_with_header(&mut out, &rec, ANNOTATION_HEADER.as_bytes(), &value);
            }
            _ => {
                put_varint(&mut out, rec.raw.len() as i32);
                out.extend_from_slice(rec.raw);
            }
        }
    }
    out
}

/// The current time as RFC 3339 UTC with nanoseconds, as annotations carry it.
pub fn now_rfc3339() -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    time::OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests;
