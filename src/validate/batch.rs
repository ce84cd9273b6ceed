//! One partition's records against one route: every record checked, then the batch forwarded as
//! it was, rebuilt with annotations, or refused.
//!
//! A batch whose records are all valid (or unchecked) leaves as its original bytes. In `annotate`
//! mode a batch with invalid records is rebuilt: valid records are copied byte for byte, invalid
//! ones get one more header, and the batch keeps its header fields (offset deltas, timestamps,
//! producer id, epoch and base sequence), its codec and framing, with a new length and CRC-32C.
//! In `reject` mode the partition is refused with the index and reason of each invalid record.
//!
//! All of this is paid from the request's [`Budget`]: a batch may decompress to far more than was
//! sent, so what eventgate holds for it is bounded by the budget, not by the batch's claims.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::{ANNOTATION_HEADER, Outcome, Route};
use crate::asyncapi::Policy;
use crate::wire::compression::{Codec, CodecError, decoder_claim};
use crate::wire::records::{self, RecordError, put_varint, write_batch, write_record_with_header};

/// Kafka error codes eventgate answers with.
pub mod codes {
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const INVALID_RECORD: i16 = 87;
}

/// At most this many `(record index, reason)` pairs are reported for a refused partition; the
/// message still gives the total.
pub const MAX_RECORD_ERRORS: usize = 100;

/// Bytes charged to the [`Budget`] for each record read out of a compressed batch: its outcome and
/// its place in the walk. Records of uncompressed batches are not charged: the producer sent them,
/// and their bookkeeping is a small multiple of those bytes.
pub const RECORD_COST: usize = 32;

/// What a compressed batch that fails to decompress is charged at least: the largest lz4 block,
/// which the decoder zeroes before it reads a byte of it.
pub const FAILED_DECOMPRESSION_COST: usize = 4 << 20;

/// The work one Produce request may make eventgate do, in bytes, shared by all its partitions:
/// decompressed records (with [`RECORD_COST`] each), the error texts eventgate keeps for them and
/// the annotations it adds. A compressed batch claims what it wants; the request does not, so
/// without this a few kilobytes of zstd could make eventgate hold gigabytes.
#[derive(Debug, Clone)]
pub struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self { left: limit, limit }
    }

    /// What is left.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Takes `n` bytes; false (and nothing left) when they are not there.
    fn charge(&mut self, n: usize) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => {
                self.left = 0;
                false
            }
        }
    }
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
    /// Refuse the partition: `invalid` records do not match; `(record index, reason)` for the first
    /// [`MAX_RECORD_ERRORS`] of them.
    Rejected { invalid: usize, errors: Vec<(i32, String)> },
    /// The records cannot be read; refuse the partition with this error code and message.
    Unreadable { code: i16, message: String },
    /// The request's [`Budget`] ran out: refuse the partition with MESSAGE_TOO_LARGE.
    OverBudget(String),
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

fn refused(verdict: Verdict) -> PartitionResult {
    PartitionResult { verdict, counts: Counts::default(), outcomes: Vec::new() }
}

fn over_budget(budget: &Budget) -> PartitionResult {
    refused(Verdict::OverBudget(format!(
        "the request's records take more than eventgate's limit of {} bytes to check once decompressed \
         (max_decompressed_bytes); send smaller requests",
        budget.limit
    )))
}

fn unreadable(e: RecordError, budget: &Budget) -> PartitionResult {
    let code = match e {
        RecordError::Codec(CodecError::TooLarge { .. }) => return over_budget(budget),
        RecordError::Magic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
        _ => codes::CORRUPT_MESSAGE,
    };
    refused(Verdict::Unreadable { code, message: format!("eventgate cannot read this record batch: {e}") })
}

/// Checks the `records` of one partition against `route` under `policy` (annotate or reject).
/// `ts` is the RFC 3339 time put in annotations; `budget` is what is left of the request's.
pub fn check_partition(
    route: &Route,
    policy: Policy,
    records: &[u8],
    ts: &str,
    budget: &mut Budget,
) -> PartitionResult {
    let mut counts = Counts::default();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut scratch = Vec::new();
    let mut rebuilt = BytesMut::new();
    let mut changed = false;
    let mut rejected = Vec::new();
    let mut invalid = 0usize;
    let mut last_errors: Option<Arc<[String]>> = None;
    let mut index: i32 = 0;
    for batch in records::batches(records) {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return unreadable(e, budget),
        };
        if let Err(e) = batch.verify_crc() {
            return unreadable(e, budget);
        }
        if batch.header.is_control() {
            rebuilt.extend_from_slice(batch.bytes);
            continue;
        }
        let compressed = batch.header.codec().is_ok_and(|c| c != Codec::None);
        if compressed && budget.left() == 0 {
            return over_budget(budget);
        }
        // What the decoder will zero before reading a byte, as the batch declares it.
        let claim = batch.header.codec().map(|c| decoder_claim(c, batch.stored_records())).unwrap_or(0);
        if !budget.charge(claim) {
            return over_budget(budget);
        }
        let (data, framing) = match batch.records_data(&mut scratch, budget.left()) {
            Ok(d) => d,
            Err(e) => {
                // A failed decompression still cost what it touched (lz4 zeroes a whole block
                // before reading it): the next partition of the request pays from what is left.
                budget.charge(scratch.capacity().max(FAILED_DECOMPRESSION_COST));
                return unreadable(e, budget);
            }
        };
        if compressed && !budget.charge(data.len()) {
            return over_budget(budget);
        }
        let first_outcome = outcomes.len();
        // The declared count is a claim: a record takes at least 7 bytes, so never reserve beyond that.
        outcomes.reserve((batch.header.record_count.max(0) as usize).min(data.len() / 7));
        let mut batch_invalid = false;
        let mut n = 0usize;
        for rec in records::records(data) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => return unreadable(e.into(), budget),
            };
            if compressed && !budget.charge(RECORD_COST) {
                return over_budget(budget);
            }
            let mut outcome = route.check(&rec);
            match &mut outcome {
                Outcome::Valid(_) => counts.valid += 1,
                Outcome::Unchecked(_) => counts.unchecked += 1,
                Outcome::Invalid(errors) => {
                    counts.invalid += 1;
                    invalid += 1;
                    batch_invalid = true;
                    // Records that fail alike share one copy of the errors; a new set is charged.
                    match &last_errors {
                        Some(last) if **last == **errors => *errors = last.clone(),
                        _ => {
                            if !budget.charge(errors.iter().map(|e| e.len() + 24).sum()) {
                                return over_budget(budget);
                            }
                            last_errors = Some(errors.clone());
                        }
                    }
                    if policy == Policy::Reject && rejected.len() < MAX_RECORD_ERRORS {
                        // One text per reported record, cut like every error text and paid for:
                        // records that fail alike share their errors, but not this copy.
                        let text = crate::validate::capped(errors.join("; "));
                        if !budget.charge(text.len() + 24) {
                            return over_budget(budget);
                        }
                        rejected.push((index, text));
                    }
                }
            }
            outcomes.push(outcome);
            index = index.saturating_add(1);
            n += 1;
        }
        if i32::try_from(n).ok() != Some(batch.header.record_count) {
            return unreadable(RecordError::RecordCount { declared: batch.header.record_count, found: n }, budget);
        }
        if policy == Policy::Annotate && batch_invalid {
            changed = true;
            let Some(section) = annotate(data, &outcomes[first_outcome..], ts, budget) else {
                return over_budget(budget);
            };
            if let Err(e) = write_batch(&mut rebuilt, &batch.header, &section, framing) {
                return unreadable(e, budget);
            }
        } else {
            rebuilt.extend_from_slice(batch.bytes);
        }
    }
    let verdict = if invalid > 0 && policy == Policy::Reject {
        Verdict::Rejected { invalid, errors: rejected }
    } else if changed {
        Verdict::Annotated(rebuilt.freeze())
    } else {
        Verdict::Untouched
    };
    PartitionResult { verdict, counts, outcomes }
}

/// The records section `data` again, with the annotation header added to each invalid record;
/// `None` when the annotations would take more than the budget has left.
fn annotate(data: &[u8], outcomes: &[Outcome], ts: &str, budget: &mut Budget) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    // Records that fail alike share their errors, and so their annotation.
    let mut last: Option<(*const [String], Vec<u8>)> = None;
    for (rec, outcome) in records::records(data).zip(outcomes) {
        // Already walked once by the caller.
        let Ok(rec) = rec else { break };
        match outcome {
            Outcome::Invalid(errors) => {
                let key = Arc::as_ptr(errors);
                if last.as_ref().is_none_or(|(k, _)| !std::ptr::eq(*k, key)) {
                    let value = serde_json::to_vec(&Annotation { ts, errors }).unwrap_or_default();
                    last = Some((key, value));
                }
                let value = last.as_ref().map(|(_, v)| v.as_slice()).unwrap_or_default();
                // The header, its name and a few bytes of lengths are added to the record.
                if !budget.charge(value.len() + ANNOTATION_HEADER.len() + 16) {
                    return None;
                }
                write_record_with_header(&mut out, &rec, ANNOTATION_HEADER.as_bytes(), value);
            }
            _ => {
                put_varint(&mut out, rec.raw.len() as i32);
                out.extend_from_slice(rec.raw);
            }
        }
    }
    Some(out)
}

/// The current time as RFC 3339 UTC with nanoseconds, as annotations carry it.
pub fn now_rfc3339() -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    time::OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests;
