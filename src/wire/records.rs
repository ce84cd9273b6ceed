//! Record batches (magic v2): read in place, and rewritten with one header added.
//!
//! A batch is a 61-byte header followed by `record_count` records, compressed as one block when the
//! batch has a codec:
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
//! ```
//!
//! The CRC-32C covers everything from `attributes` to the end. Records are read as borrowed
//! [`Record`]s (from the request bytes, or from a scratch buffer when compressed), so validating a
//! batch allocates nothing per record. [`write_batch`] builds a batch again from its header and a
//! records section, recomputing length and CRC; [`write_record_with_header`] copies a record's own
//! bytes and appends one header. Everything else (offset deltas, timestamps, producer id, epoch and
//! base sequence, other headers in their order, duplicates included) is kept as it was. eventgate
//! has its own codec rather than the `kafka-protocol` crate's because that one keeps headers in a map
//! (losing duplicate keys) and sizes vectors from wire counts before checking them.
//!
//! Compressed sections go through [`compression`]: this module depends on it, it does not depend on
//! this one. A [`CodecError`] is carried as [`RecordError::Codec`].

use bytes::{BufMut, BytesMut};

use super::WireError;
use super::compression::{self, Codec, CodecError, Framing};
use super::reader::Reader;

/// Bytes before the first record: the batch header up to and including `recordCount`.
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of `attributes`, where the CRC-covered part starts.
const CRC_START: usize = 21;
/// Bytes of a batch that `batchLength` does not count (`baseOffset` and `batchLength` itself).
const LOG_OVERHEAD: usize = 12;

/// Why a record batch could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("record batch magic {0} is not supported (only v2 batches carry headers)")]
    Magic(i8),
    #[error("record batch CRC mismatch: header says {expected:#010x}, content has {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    /// The codec is unknown, or (de)compression failed or went past its limit.
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("record batch says {declared} records but holds {found}")]
    RecordCount { declared: i32, found: usize },
}

/// The fixed fields of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// The header of a new batch of `record_count` records as a plain (not idempotent) producer
    /// writes it: offsets from 0, no leader epoch, no producer id or sequence, every record at
    /// `timestamp`. Override fields with struct update syntax for other producers.
    pub fn new(record_count: i32, codec: Codec, timestamp: i64) -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: codec.bits(),
            last_offset_delta: record_count - 1,
            base_timestamp: timestamp,
            max_timestamp: timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count,
        }
    }

    pub fn codec(&self) -> Result<Codec, RecordError> {
        Ok(Codec::from_attributes(self.attributes)?)
    }

    /// Control batches (transaction markers) carry no user records.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// One batch inside a `records` field, borrowed.
#[derive(Debug, Clone)]
pub struct RawBatch<'a> {
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
}

impl<'a> RawBatch<'a> {
    /// Reads the batch at the start of `buf`; returns it and the bytes it spans.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, usize), RecordError> {
        let mut r = Reader::new(buf);
        let base_offset = r.i64("batch base offset")?;
        let batch_length = r.i32("batch length")?;
        if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(
                WireError::Malformed { what: "record batch", why: "batch length shorter than its header" }.into()
            );
        }
        let total = LOG_OVERHEAD + batch_length as usize;
        let bytes = buf.get(..total).ok_or(WireError::Truncated {
            what: "record batch",
            needed: total,
            remaining: buf.len(),
        })?;
        let partition_leader_epoch = r.i32("partition leader epoch")?;
        let magic = r.i8("magic")?;
        if magic != 2 {
            return Err(RecordError::Magic(magic));
        }
        let header = BatchHeader {
            base_offset,
            partition_leader_epoch,
            magic,
            crc: r.u32("crc")?,
            attributes: r.i16("attributes")?,
            last_offset_delta: r.i32("last offset delta")?,
            base_timestamp: r.i64("base timestamp")?,
            max_timestamp: r.i64("max timestamp")?,
            producer_id: r.i64("producer id")?,
            producer_epoch: r.i16("producer epoch")?,
            base_sequence: r.i32("base sequence")?,
            record_count: r.i32("record count")?,
        };
        Ok((Self { header, bytes }, total))
    }

    /// Checks the CRC-32C of the batch.
    pub fn verify_crc(&self) -> Result<(), RecordError> {
        let actual = crc32c::crc32c(&self.bytes[CRC_START..]);
        if actual != self.header.crc {
            return Err(RecordError::Crc { expected: self.header.crc, actual });
        }
        Ok(())
    }

    /// The records section as stored (compressed when the batch has a codec).
    pub fn stored_records(&self) -> &'a [u8] {
        &self.bytes[BATCH_HEADER_LEN..]
    }

    /// The uncompressed records section: borrowed from the batch when it is not compressed, else
    /// decompressed into `scratch` (at most `limit` bytes). Also says how it was framed.
    pub fn records_data<'s>(
        &'s self,
        scratch: &'s mut Vec<u8>,
        limit: usize,
    ) -> Result<(&'s [u8], Framing), RecordError>
    where
        'a: 's,
    {
        match self.header.codec()? {
            Codec::None => Ok((self.stored_records(), Framing::Standard)),
            codec => {
                let framing = compression::decompress(codec, self.stored_records(), scratch, limit)?;
                Ok((scratch.as_slice(), framing))
            }
        }
    }
}

/// The records a records field's batches declare in their headers (unreadable batches count
/// nothing): what a request claims, read without decompressing anything.
pub fn declared_records(records: &[u8]) -> u64 {
    batches(records).filter_map(Result::ok).map(|b| b.header.record_count.max(0) as u64).sum()
}

/// How many records a records field can be said to hold without reading them: each batch's declared
/// count, but no more than its bytes could carry (7 bytes per record uncompressed, the smallest a v2
/// record can be; one per byte compressed). The declared count is the producer's word; this is what
/// eventgate reports of records it refused unread, so a few bytes claiming two billion records count
/// as what they can be. (A compressed batch of tiny, alike records may hold more: it is undercounted,
/// never overcounted.)
pub fn plausible_records(records: &[u8]) -> u64 {
    const SMALLEST_RECORD: u64 = 7;
    batches(records)
        .filter_map(Result::ok)
        .map(|b| {
            let body = b.bytes.len().saturating_sub(BATCH_HEADER_LEN) as u64;
            let most = match b.header.codec() {
                Ok(Codec::None) => body / SMALLEST_RECORD,
                _ => body,
            };
            (b.header.record_count.max(0) as u64).min(most)
        })
        .sum()
}

/// Iterates over the batches of a `records` field.
pub fn batches(mut records: &[u8]) -> impl Iterator<Item = Result<RawBatch<'_>, RecordError>> {
    std::iter::from_fn(move || {
        if records.is_empty() {
            return None;
        }
        match RawBatch::parse(records) {
            Ok((batch, used)) => {
                records = &records[used..];
                Some(Ok(batch))
            }
            Err(e) => {
                records = &[];
                Some(Err(e))
            }
        }
    })
}

/// One record, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's encoding after its length prefix.
    pub raw: &'a [u8],
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub header_count: usize,
    /// Offset in `raw` of the header count.
    headers_at: usize,
    /// Offset in `raw` of the first header.
    first_header_at: usize,
}

impl<'a> Record<'a> {
    /// The record's headers in wire order (keys may repeat).
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + use<'a> {
        let mut r = Reader::new(&self.raw[self.first_header_at..]);
        // Already walked once in `parse_record`; a failure here cannot happen, and ends the walk.
        (0..self.header_count).map_while(move |_| {
            let k = read_varbytes(&mut r, "header key").ok()??;
            let v = read_varbytes(&mut r, "header value").ok()?;
            Some((k, v))
        })
    }

    /// The header value of the last header named `key`.
    pub fn header(&self, key: &[u8]) -> Option<Option<&'a [u8]>> {
        self.headers().filter(|(k, _)| *k == key).last().map(|(_, v)| v)
    }
}

fn read_varbytes<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
    let len = r.varint(what)?;
    if len < 0 {
        return Ok(None);
    }
    r.bytes(len as usize, what).map(Some)
}

fn parse_record<'a>(raw: &'a [u8]) -> Result<Record<'a>, WireError> {
    let mut r = Reader::new(raw);
    let attributes = r.i8("record attributes")?;
    let timestamp_delta = r.varlong("record timestamp delta")?;
    let offset_delta = r.varint("record offset delta")?;
    let key = read_varbytes(&mut r, "record key")?;
    let value = read_varbytes(&mut r, "record value")?;
    let headers_at = r.position();
    let count = r.varint("record header count")?;
    let header_count =
        usize::try_from(count).map_err(|_| WireError::Malformed { what: "record header count", why: "negative" })?;
    if header_count.saturating_mul(2) > r.remaining() {
        return Err(WireError::Malformed { what: "record header count", why: "exceeds the bytes sent" });
    }
    let first_header_at = r.position();
    for _ in 0..header_count {
        read_varbytes(&mut r, "header key")?
            .ok_or(WireError::Malformed { what: "header key", why: "null header key" })?;
        read_varbytes(&mut r, "header value")?;
    }
    if r.remaining() != 0 {
        return Err(WireError::Malformed { what: "record", why: "trailing bytes after the headers" });
    }
    Ok(Record { raw, attributes, timestamp_delta, offset_delta, key, value, header_count, headers_at, first_header_at })
}

/// Iterates over the records of an uncompressed records section.
pub fn records(data: &[u8]) -> impl Iterator<Item = Result<Record<'_>, WireError>> {
    let mut r = Reader::new(data);
    std::iter::from_fn(move || {
        if r.remaining() == 0 {
            return None;
        }
        let item = (|| {
            let len = r.varint("record length")?;
            let len =
                usize::try_from(len).map_err(|_| WireError::Malformed { what: "record length", why: "negative" })?;
            parse_record(r.bytes(len, "record")?)
        })();
        if item.is_err() {
            r = Reader::new(&[]);
        }
        Some(item)
    })
}

/// Checks that `data` holds exactly `declared` well-formed records.
pub fn count_records(data: &[u8], declared: i32) -> Result<usize, RecordError> {
    let mut n = 0;
    for rec in records(data) {
        rec?;
        n += 1;
    }
    if i32::try_from(n).ok() != Some(declared) {
        return Err(RecordError::RecordCount { declared, found: n });
    }
    Ok(n)
}

// ------------------------------------------------------------------ encoding

/// Appends a zig-zag varint.
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarlong(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends a zig-zag varlong.
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarlong(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarlong(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varbytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

fn varint_len(v: i32) -> usize {
    let mut n = ((v << 1) ^ (v >> 31)) as u32;
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Appends one record built from its parts (length prefix included).
pub fn write_record<'h>(
    out: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
) {
    let mut body = Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
    body.push(0);
    put_varlong(&mut body, timestamp_delta);
    put_varint(&mut body, offset_delta);
    put_varbytes(&mut body, key);
    put_varbytes(&mut body, value);
    put_varint(&mut body, headers.len() as i32);
    for (k, v) in headers {
        put_varbytes(&mut body, Some(k));
        put_varbytes(&mut body, v);
    }
    put_varint(out, body.len() as i32);
    out.extend_from_slice(&body);
}

/// Appends `record` unchanged except for one more header, `key: value`, after its own.
pub fn write_record_with_header(out: &mut Vec<u8>, record: &Record<'_>, key: &[u8], value: &[u8]) {
    let raw = record.raw;
    let count = record.header_count as i32 + 1;
    let headers = &raw[record.first_header_at..];
    let extra = varint_len(key.len() as i32) + key.len() + varint_len(value.len() as i32) + value.len();
    let len = record.headers_at + varint_len(count) + headers.len() + extra;
    put_varint(out, len as i32);
    out.extend_from_slice(&raw[..record.headers_at]);
    put_varint(out, count);
    out.extend_from_slice(headers);
    put_varbytes(out, Some(key));
    put_varbytes(out, Some(value));
}

/// Appends a whole batch: `header`'s fields (its `crc` is ignored and recomputed), `record_count`
/// records whose uncompressed encoding is `records`, compressed with the header's codec and `framing`.
pub fn write_batch(
    out: &mut BytesMut,
    header: &BatchHeader,
    records: &[u8],
    framing: Framing,
) -> Result<(), RecordError> {
    let codec = header.codec()?;
    let start = out.len();
    let mut head = [0u8; BATCH_HEADER_LEN];
    {
        let mut h = &mut head[..];
        h.put_i64(header.base_offset);
        h.put_i32(0); // batch length, below
        h.put_i32(header.partition_leader_epoch);
        h.put_i8(2);
        h.put_u32(0); // crc, below
        h.put_i16(header.attributes);
        h.put_i32(header.last_offset_delta);
        h.put_i64(header.base_timestamp);
        h.put_i64(header.max_timestamp);
        h.put_i64(header.producer_id);
        h.put_i16(header.producer_epoch);
        h.put_i32(header.base_sequence);
        h.put_i32(header.record_count);
    }
    out.extend_from_slice(&head);
    match codec {
        Codec::None => out.extend_from_slice(records),
        _ => {
            let mut packed = Vec::with_capacity(records.len() / 2 + 64);
            compression::compress(codec, framing, records, &mut packed)?;
            out.extend_from_slice(&packed);
        }
    }
    let batch_length = (out.len() - start - LOG_OVERHEAD) as i32;
    out[start + 8..start + 12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_START..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
