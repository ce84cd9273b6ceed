//! A bounds-checked cursor over a borrowed byte slice.
//!
//! Everything a peer sends is read through [`Reader`]: every length and count is checked against
//! the bytes that remain *before* anything is sliced or allocated, so a crafted frame can make a
//! read fail but never panic or make eventgate reserve memory it was not sent.

use super::WireError;

/// A forward-only reader over `&[u8]` that never panics.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The offset of the next byte to read, from the start of the slice.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { what, needed: n, remaining: self.remaining() });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Skips the next `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), WireError> {
        self.bytes(n, what).map(|_| ())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn i8(&mut self, what: &'static str) -> Result<i8, WireError> {
        Ok(i8::from_be_bytes(self.array(what)?))
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// An unsigned LEB128 varint of at most 32 bits (Kafka's `UNSIGNED_VARINT`).
    #[inline]
    pub fn uvarint(&mut self, what: &'static str) -> Result<u32, WireError> {
        match self.one_byte_varint() {
            Some(b) => Ok(u32::from(b)),
            None => self.uvarint_long(what),
        }
    }

    /// A varint of one byte (a value under 128: most of a record's counts, deltas and short
    /// lengths), read without the loop; `None` (nothing read) for anything else.
    #[inline]
    fn one_byte_varint(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos).filter(|b| **b < 0x80)?;
        self.pos += 1;
        Some(b)
    }

    fn uvarint_long(&mut self, what: &'static str) -> Result<u32, WireError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.array::<1>(what)?[0];
            if i == 4 && b > 0x0f {
                return Err(WireError::Malformed { what, why: "varint longer than 32 bits" });
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed { what, why: "varint longer than 32 bits" })
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    #[inline]
    pub fn uvarlong(&mut self, what: &'static str) -> Result<u64, WireError> {
        match self.one_byte_varint() {
            Some(b) => Ok(u64::from(b)),
            None => self.uvarlong_long(what),
        }
    }

    fn uvarlong_long(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.array::<1>(what)?[0];
            if i == 9 && b > 0x01 {
                return Err(WireError::Malformed { what, why: "varlong longer than 64 bits" });
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed { what, why: "varlong longer than 64 bits" })
    }

    /// A zig-zag encoded signed varint (Kafka's `VARINT`, used inside record batches).
    #[inline]
    pub fn varint(&mut self, what: &'static str) -> Result<i32, WireError> {
        let v = self.uvarint(what)?;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    /// A zig-zag encoded signed varlong (Kafka's `VARLONG`).
    #[inline]
    pub fn varlong(&mut self, what: &'static str) -> Result<i64, WireError> {
        let v = self.uvarlong(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A `NULLABLE_STRING`/`NULLABLE_BYTES` with an `INT16` length, `None` for null.
    pub fn nullable_str16(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i16(what)?;
        if len < 0 {
            return Ok(None);
        }
        self.bytes(len as usize, what).map(Some)
    }

    /// A `STRING` with an `INT16` length.
    pub fn str16(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        self.nullable_str16(what)?.ok_or(WireError::Malformed { what, why: "null where a string is required" })
    }

    /// A `COMPACT_NULLABLE_STRING`/`COMPACT_NULLABLE_BYTES`: an unsigned varint of length + 1.
    pub fn compact_nullable(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.uvarint(what)?;
        if len == 0 {
            return Ok(None);
        }
        self.bytes(len as usize - 1, what).map(Some)
    }

    /// A `COMPACT_STRING`/`COMPACT_BYTES`.
    pub fn compact(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        self.compact_nullable(what)?.ok_or(WireError::Malformed { what, why: "null where a value is required" })
    }

    /// An `INT32`-prefixed `NULLABLE_BYTES` (such as `records` before flexible versions).
    pub fn nullable_bytes32(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32(what)?;
        if len < 0 {
            return Ok(None);
        }
        self.bytes(len as usize, what).map(Some)
    }

    /// The element count of an `ARRAY` (`INT32` count, -1 for null) or a `COMPACT_ARRAY`
    /// (unsigned varint count + 1). Null reads as zero elements. Each element takes at least
    /// `min_element_size` bytes, so a count the remaining bytes cannot hold is refused here,
    /// before any caller sizes a collection by it.
    pub fn array_len(
        &mut self,
        flexible: bool,
        min_element_size: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        let n = if flexible {
            (self.uvarint(what)? as usize).saturating_sub(1)
        } else {
            let n = self.i32(what)?;
            if n < 0 { 0 } else { n as usize }
        };
        if n.saturating_mul(min_element_size.max(1)) > self.remaining() {
            return Err(WireError::Malformed { what, why: "element count exceeds the bytes sent" });
        }
        Ok(n)
    }

    /// A string in either encoding: `COMPACT_STRING` when `flexible`, else `INT16`-prefixed.
    pub fn string(&mut self, flexible: bool, what: &'static str) -> Result<&'a [u8], WireError> {
        if flexible { self.compact(what) } else { self.str16(what) }
    }

    /// A nullable string in either encoding.
    pub fn nullable_string(&mut self, flexible: bool, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        if flexible { self.compact_nullable(what) } else { self.nullable_str16(what) }
    }

    /// Reads a tagged-field section and calls `f(tag, value)` for each field.
    pub fn tagged_fields(&mut self, what: &'static str, mut f: impl FnMut(u32, &'a [u8])) -> Result<(), WireError> {
        let n = self.uvarint(what)? as usize;
        if n.saturating_mul(2) > self.remaining() {
            return Err(WireError::Malformed { what, why: "tagged field count exceeds the bytes sent" });
        }
        for _ in 0..n {
            let tag = self.uvarint(what)?;
            let len = self.uvarint(what)? as usize;
            f(tag, self.bytes(len, what)?);
        }
        Ok(())
    }

    /// Skips a tagged-field section.
    pub fn skip_tagged_fields(&mut self, what: &'static str) -> Result<(), WireError> {
        self.tagged_fields(what, |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_zigzag() {
        // 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, 300 -> 600 (0xd8 0x04)
        let mut r = Reader::new(&[0x00, 0x01, 0x02, 0x03, 0xd8, 0x04]);
        assert_eq!(r.varint("t").unwrap(), 0);
        assert_eq!(r.varint("t").unwrap(), -1);
        assert_eq!(r.varint("t").unwrap(), 1);
        assert_eq!(r.varint("t").unwrap(), -2);
        assert_eq!(r.varint("t").unwrap(), 300);
        assert_eq!(r.remaining(), 0);
    }

    /// Every length of encoding, read one after another, with and without bytes after them, and
    /// cut short: one-byte values take the short path, the rest the loop, to the same result.
    #[test]
    fn varints_of_every_length_are_read_whole_and_cut_short_is_an_error() {
        fn leb(mut v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        }
        let values = [0u64, 1, 63, 64, 127, 128, 300, 16_383, 16_384, 1 << 21, u64::from(u32::MAX), 1 << 35, u64::MAX];
        for &v in &values {
            let enc = leb(v);
            for tail in [&[][..], &[0x05][..], &[0x80][..]] {
                let wire = [enc.as_slice(), tail].concat();
                let mut r = Reader::new(&wire);
                assert_eq!(r.uvarlong("t").unwrap(), v);
                assert_eq!(r.position(), enc.len());
                let mut r = Reader::new(&wire);
                match u32::try_from(v) {
                    Ok(small) => {
                        assert_eq!(r.uvarint("t").unwrap(), small);
                        assert_eq!(r.position(), enc.len());
                    }
                    Err(_) => assert!(r.uvarint("t").is_err(), "{v} read as 32 bits"),
                }
            }
            let cut = &enc[..enc.len() - 1];
            assert!(Reader::new(cut).uvarlong("t").is_err(), "{v} cut short");
            assert!(Reader::new(cut).uvarint("t").is_err(), "{v} cut short");
        }
    }

    #[test]
    fn overlong_varint_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.uvarint("t").is_err());
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.uvarlong("t").is_err());
    }

    #[test]
    fn counts_larger_than_the_frame_are_refused() {
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(r.array_len(false, 1, "t").is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(r.array_len(true, 1, "t").is_err());
    }

    #[test]
    fn truncated_reads_fail_cleanly() {
        let mut r = Reader::new(&[0x00, 0x05, b'a']);
        assert!(matches!(r.str16("s"), Err(WireError::Truncated { .. })));
    }
}
