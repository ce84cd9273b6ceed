//! Whether a record's text is exactly one JSON value, checked without building anything.
//!
//! The mirror embeds a JSON record in its event's `data` as the producer wrote it, so it must know
//! the text is one complete JSON value: anything else would let a producer write members of the
//! event itself (`1, "validation": "valid"`). serde_json's `RawValue` answers that too, but it
//! reads the inside of strings eight bytes at a time with several operations per word, and most
//! of a record is string contents: here they are scanned 32 bytes at a time, in one AVX2 compare
//! where the processor has it, else two SSE2 compares (every x86_64 has SSE2), else a portable
//! loop.
//!
//! The grammar is RFC 8259's and the verdicts are serde_json's (`from_str::<&RawValue>`), which
//! the tests and the `json_value` fuzz target check input by input: whitespace is space, tab, CR
//! and LF; strings hold no control characters (U+0000 to U+001F) unescaped; `\u` takes any four
//! hex digits (lone surrogates included, as serde_json's raw values do); numbers without leading
//! zeros; no depth limit (the nesting record costs one bit per level).
//!
//! UTF-8 is checked in the same pass ([`value_in`]): outside strings the grammar admits ASCII
//! only, and the scan of string contents also stops at a byte of 0x80 or more, which then has the
//! whole text checked once (simdutf8) and the scan go on without stopping there. So an ASCII record,
//! the common case, is read once, not once for UTF-8 and again for JSON.
//!
//! ```text
//!   text ──► whitespace ─► value ─► whitespace ─► end    (else None)
//!                            │
//!      { [  push a bit ◄─────┤────► " … "  strings: 32-byte chunks until " \ or < 0x20
//!      } ]  pop, check kind ◄┘      numbers, true, false, null: byte by byte
//! ```

/// The JSON value `text` holds, without the whitespace around it; `None` when `text` is not
/// exactly one JSON value.
pub fn value(text: &str) -> Option<&str> {
    let (start, end) = span(text.as_bytes(), true)?;
    text.get(start..end)
}

/// The JSON value `bytes` hold, without the whitespace around it; `None` when they are not UTF-8
/// text holding exactly one JSON value. The same verdict as `from_utf8` and then [`value`], in
/// one pass over ASCII text.
pub fn value_in(bytes: &[u8]) -> Option<&[u8]> {
    let (start, end) = span(bytes, false)?;
    bytes.get(start..end)
}

/// Where the one JSON value of `b` starts and ends; `utf8` says whether `b` is known to be UTF-8.
fn span(b: &[u8], mut utf8: bool) -> Option<(usize, usize)> {
    let start = whitespace(b, 0);
    let end = one_value(b, start, &mut utf8)?;
    (whitespace(b, end) == b.len()).then_some((start, end))
}

fn whitespace(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The open arrays and objects, one bit each (1: object): the first 256 levels without allocating.
struct Nesting {
    depth: usize,
    near: [u64; 4],
    far: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        let (w, bit) = (self.depth / 64, self.depth % 64);
        let word = match w.checked_sub(self.near.len()) {
            None => self.near.get_mut(w),
            Some(f) => {
                if self.far.len() <= f {
                    self.far.push(0);
                }
                self.far.get_mut(f)
            }
        };
        if let Some(word) = word {
            *word = (*word & !(1 << bit)) | (u64::from(object) << bit);
        }
        self.depth += 1;
    }

    /// Whether the innermost open container is an object (`None`: nothing is open).
    fn top_is_object(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        let (w, bit) = (d / 64, d % 64);
        let word = match w.checked_sub(self.near.len()) {
            None => self.near.get(w),
            Some(f) => self.far.get(f),
        };
        word.map(|word| word >> bit & 1 == 1)
    }
}

/// The end of the value starting at `i` (whitespace already skipped).
fn one_value(b: &[u8], mut i: usize, utf8: &mut bool) -> Option<usize> {
    let mut open = Nesting { depth: 0, near: [0; 4], far: Vec::new() };
    loop {
        // A value is expected at `i`.
        i = whitespace(b, i);
        match *b.get(i)? {
            c @ (b'{' | b'[') => {
                let object = c == b'{';
                open.push(object);
                i = whitespace(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    open.depth -= 1;
                    i += 1;
                } else {
                    if object {
                        i = member_name(b, i, utf8)?;
                    }
                    continue;
                }
            }
            b'"' => i = string(b, i + 1, utf8)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            _ => return None,
        }
        // A value ended at `i`: close what it ends, or go on to the next one.
        loop {
            let Some(object) = open.top_is_object() else { return Some(i) };
            i = whitespace(b, i);
            match *b.get(i)? {
                b',' if object => {
                    i = member_name(b, whitespace(b, i + 1), utf8)?;
                    break;
                }
                b',' => {
                    i += 1;
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            open.depth -= 1;
            i += 1;
        }
    }
}

/// `"name"` then `:` from `i`; the index after the colon.
fn member_name(b: &[u8], i: usize, utf8: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = whitespace(b, string(b, i + 1, utf8)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` from `i`.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    // A leading zero is alone: `01` is not a number (nor `0` then `1`).
    match b.get(i) {
        Some(b'0'..=b'9') => None,
        _ => Some(i),
    }
}

/// A string's contents from `i` (just after its opening quote); the index after the closing one.
/// Until `b` is known to be UTF-8 (`utf8`), a byte of 0x80 or more stops the scan too, and has all
/// of `b` checked once.
fn string(b: &[u8], mut i: usize, utf8: &mut bool) -> Option<usize> {
    loop {
        i = if *utf8 { plain_run(b, i) } else { plain_run_ascii(b, i) };
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0x80.. => {
                simdutf8::basic::from_utf8(b).ok()?;
                *utf8 = true;
            }
            // A control character.
            _ => return None,
        }
    }
}

/// What ends a run of string contents: a quote, a backslash or a control character (the bytes
/// JSON must escape), and with `HIGH` a byte of 0x80 or more (not ASCII).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn special<const HIGH: bool>(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\' || (HIGH && c >= 0x80)
}

/// The index of the first [`special`] byte in `b` from `i` (or `b.len()`), 32 bytes per step;
/// the last few bytes are copied into a chunk padded with spaces, so no byte is read alone.
pub(super) fn plain_run(b: &[u8], i: usize) -> usize {
    plain_run_of::<false>(b, i)
}

/// [`plain_run`] that also stops at the first byte that is not ASCII.
fn plain_run_ascii(b: &[u8], i: usize) -> usize {
    plain_run_of::<true>(b, i)
}

fn plain_run_of<const HIGH: bool>(b: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above; std caches the answer).
        return unsafe { avx2::plain_run::<HIGH>(b, i) };
    }
    plain_run_with(b, i, first_special::<HIGH>)
}

/// [`plain_run`] with `first` finding the first special byte of a chunk; inlined into each
/// caller, so the AVX2 loop is compiled whole with AVX2.
#[inline(always)]
fn plain_run_with(b: &[u8], mut i: usize, first: impl Fn(&[u8; 32]) -> Option<usize>) -> usize {
    const CHUNK: usize = 32;
    loop {
        let Some(rest) = b.get(i..) else { return b.len() };
        let found = match rest.first_chunk::<CHUNK>() {
            Some(chunk) => first(chunk),
            None => {
                let mut padded = [b' '; CHUNK];
                padded[..rest.len()].copy_from_slice(rest);
                first(&padded)
            }
        };
        if let Some(at) = found {
            return i + at;
        }
        if rest.len() <= CHUNK {
            return b.len();
        }
        i += CHUNK;
    }
}

/// A whole chunk per compare, on processors that have AVX2 (most x86_64 since 2013).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_min_epu8, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set_epi64x,
        _mm256_set1_epi8,
    };

    /// One bit per byte of `chunk`, set where the byte is special (with `HIGH`, also where it is
    /// 0x80 or more: the byte's own top bit, which is what the mask is made of).
    #[target_feature(enable = "avx2")]
    fn special_mask<const HIGH: bool>(chunk: &[u8; 32]) -> u32 {
        let word = |k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&chunk[k * 8..k * 8 + 8]);
            i64::from_le_bytes(w)
        };
        // Four words, which the compiler reads as one unaligned load.
        let x: __m256i = _mm256_set_epi64x(word(3), word(2), word(1), word(0));
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(0x1f)), x);
        let quote = _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'\\' as i8));
        let special = _mm256_or_si256(control, _mm256_or_si256(quote, backslash));
        let special = if HIGH { _mm256_or_si256(special, x) } else { special };
        _mm256_movemask_epi8(special).cast_unsigned()
    }

    #[target_feature(enable = "avx2")]
    fn first_special<const HIGH: bool>(chunk: &[u8; 32]) -> Option<usize> {
        let mask = special_mask::<HIGH>(chunk);
        (mask != 0).then(|| mask.trailing_zeros() as usize)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn plain_run<const HIGH: bool>(b: &[u8], mut i: usize) -> usize {
        // Two chunks per step while they last: one test and one branch per 64 bytes.
        while let Some(pair) = b.get(i..).and_then(<[u8]>::first_chunk::<64>) {
            let (Some(lo), Some(hi)) = (pair.first_chunk::<32>(), pair.last_chunk::<32>()) else { break };
            let mask = u64::from(special_mask::<HIGH>(lo)) | (u64::from(special_mask::<HIGH>(hi)) << 32);
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 64;
        }
        super::plain_run_with(b, i, |chunk| first_special::<HIGH>(chunk))
    }
}

/// Whether `b` holds nothing JSON must escape (no [`special`] byte). Short strings (eventgate's
/// attribute values) are folded byte by byte with no early exit, which the compiler vectorizes;
/// longer ones are scanned like string contents.
pub(super) fn is_plain(b: &[u8]) -> bool {
    if b.len() < 32 {
        !b.iter().fold(false, |hit, &c| hit | (c < 0x20) | (c == b'"') | (c == b'\\'))
    } else {
        plain_run(b, 0) == b.len()
    }
}

/// The position of the first [`special`] byte of `chunk`.
#[cfg(target_arch = "x86_64")]
fn first_special<const HIGH: bool>(chunk: &[u8; 32]) -> Option<usize> {
    // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 processor has it.
    unsafe { sse2::first_special::<HIGH>(chunk) }
}

#[cfg(not(target_arch = "x86_64"))]
fn first_special<const HIGH: bool>(chunk: &[u8; 32]) -> Option<usize> {
    first_special_portable::<HIGH>(chunk)
}

/// [`first_special`] without vector instructions (tested on every machine).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn first_special_portable<const HIGH: bool>(chunk: &[u8; 32]) -> Option<usize> {
    chunk.iter().position(|&c| special::<HIGH>(c))
}

/// Sixteen bytes per compare: `special` is `min(c, 0x1f) == c` or `c == '"'` or `c == '\\'`.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
    };

    #[target_feature(enable = "sse2")]
    fn load(bytes: &[u8; 16]) -> __m128i {
        let v = u128::from_le_bytes(*bytes);
        // Two halves, which the compiler reads as one unaligned load.
        _mm_set_epi64x((v >> 64) as u64 as i64, v as u64 as i64)
    }

    /// 0xff in each lane holding a special byte (with `HIGH`, the top bit set where the byte is
    /// 0x80 or more, which is all the mask reads).
    #[target_feature(enable = "sse2")]
    fn specials<const HIGH: bool>(bytes: &[u8; 16]) -> __m128i {
        let x = load(bytes);
        let control = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        let special = _mm_or_si128(control, _mm_or_si128(quote, backslash));
        if HIGH { _mm_or_si128(special, x) } else { special }
    }

    /// The common case (nothing special in 32 bytes) is one test of both halves at once; the
    /// position is worked out only when there is one. (Joining the two halves' bit masks into
    /// one word made the compiler take the masks apart bit by bit: four times slower.)
    #[target_feature(enable = "sse2")]
    pub(super) fn first_special<const HIGH: bool>(chunk: &[u8; 32]) -> Option<usize> {
        let (Some(low), Some(high)) = (chunk.first_chunk::<16>(), chunk.last_chunk::<16>()) else { return Some(0) };
        let (low, high) = (specials::<HIGH>(low), specials::<HIGH>(high));
        if _mm_movemask_epi8(_mm_or_si128(low, high)) == 0 {
            return None;
        }
        let low = _mm_movemask_epi8(low).cast_unsigned();
        Some(if low != 0 {
            low.trailing_zeros() as usize
        } else {
            16 + _mm_movemask_epi8(high).cast_unsigned().trailing_zeros() as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_run, special, value, value_in};
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    /// serde_json's verdict, the reference.
    fn serde(text: &str) -> Option<&str> {
        serde_json::from_str::<&RawValue>(text).ok().map(RawValue::get)
    }

    fn agree(text: &str) {
        assert_eq!(value(text), serde(text), "{text:?}");
        agree_bytes(text.as_bytes());
    }

    /// [`value_in`] against `from_utf8`, then serde_json.
    fn agree_bytes(b: &[u8]) {
        let reference = std::str::from_utf8(b).ok().and_then(serde).map(str::as_bytes);
        assert_eq!(value_in(b), reference, "{:?}", String::from_utf8_lossy(b));
    }

    #[test]
    fn agrees_with_serde_json_on_the_edges() {
        let long = "x".repeat(100);
        let cases = [
            "",
            " ",
            "{}",
            "[]",
            " {} ",
            "{} x",
            "{}}",
            "[]]",
            "[",
            "{",
            "]",
            "}",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,{"b":null}]}"#,
            "0",
            "-0",
            "01",
            "-01",
            "1.",
            "1.0",
            ".5",
            "1e",
            "1e+",
            "1e+5",
            "1E-05",
            "-",
            "--1",
            "+1",
            "0x10",
            "1.5e3.2",
            "00",
            "0.0e0",
            "123456789012345678901234567890",
            "true",
            "false",
            "null",
            "nul",
            "truex",
            "True",
            "[true,false,null]",
            "\"\"",
            "\"",
            "\"abc",
            r#""\u00e9""#,
            r#""\uD800""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\x""#,
            r#""\/\b\f\n\r\t\\\"""#,
            "\"a\tb\"",
            "\"a\u{7f}b\"",
            "\"é ü 中 😀\"",
            "\t\r\n [ 1 , 2 ] \n",
            "\u{a0}1",
            "1\u{a0}",
            "[1 2]",
            "{\"a\":1}{}",
        ];
        for c in cases {
            agree(c);
        }
        // Strings around the chunk size, with the special byte at every position.
        for n in [0, 1, 15, 16, 31, 32, 33, 63, 64, 65, 100] {
            let s = &long[..n];
            agree(&format!("\"{s}\""));
            agree(&format!("[\"{s}\"]"));
            for special in ["\"", "\\", "\\n", "\u{1}", "\n", "\u{1f}", " "] {
                for at in 0..=n {
                    agree(&format!("\"{}{special}{}\"", &s[..at], &s[at..]));
                }
            }
        }
        // Deep nesting: no limit, past the inline levels.
        for depth in [1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000] {
            agree(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            agree(&format!("{}{}", "[".repeat(depth), "]".repeat(depth - 1)));
            let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            agree(&objects);
            let mixed: String = (0..depth).map(|d| if d % 3 == 0 { "{\"k\":" } else { "[" }).collect();
            let closing: String = (0..depth).rev().map(|d| if d % 3 == 0 { "}" } else { "]" }).collect();
            agree(&format!("{mixed}0{closing}"));
            let wrong: String = (0..depth).rev().map(|d| if d % 3 == 0 { "]" } else { "}" }).collect();
            agree(&format!("{mixed}0{wrong}"));
        }
    }

    /// A producer's megabyte of brackets costs one bit of nesting per bracket and one pass.
    #[test]
    fn a_megabyte_of_nesting_is_read_in_one_pass() {
        let n = 1 << 20;
        let open = "[".repeat(n);
        assert_eq!(value(&open), None);
        let whole = format!("{open}{}", "]".repeat(n));
        assert_eq!(value(&whole), Some(whole.as_str()));
        let objects = format!("{}0{}", "{\"a\":".repeat(n / 8), "}".repeat(n / 8));
        assert_eq!(value(&objects), serde(&objects));
    }

    /// Every byte value at every position of runs around the chunk size, from every start.
    #[test]
    fn plain_run_finds_the_first_special_byte() {
        for len in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 161] {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = vec![b'x'; len];
                    b[at] = c;
                    for from in [0, 1, 5, 31, 32, 33, 63, 64, 65].into_iter().filter(|f| *f <= len) {
                        let naive = (from..len).find(|&i| special::<false>(b[i])).unwrap_or(len);
                        assert_eq!(plain_run(&b, from), naive, "len {len} at {at} byte {c:#x} from {from}");
                        let sse2 = super::plain_run_with(&b, from, super::first_special::<false>);
                        assert_eq!(sse2, naive, "without AVX2: len {len} at {at} byte {c:#x} from {from}");
                        let portable = super::plain_run_with(&b, from, super::first_special_portable::<false>);
                        assert_eq!(portable, naive, "portable: len {len} at {at} byte {c:#x} from {from}");
                        // Stopping at bytes that are not ASCII too.
                        let naive = (from..len).find(|&i| special::<true>(b[i])).unwrap_or(len);
                        let what = format!("ascii: len {len} at {at} byte {c:#x} from {from}");
                        assert_eq!(super::plain_run_ascii(&b, from), naive, "{what}");
                        assert_eq!(super::plain_run_with(&b, from, super::first_special::<true>), naive, "sse2 {what}");
                        let portable = super::plain_run_with(&b, from, super::first_special_portable::<true>);
                        assert_eq!(portable, naive, "portable {what}");
                    }
                }
            }
        }
        assert_eq!(plain_run(b"abc", 7), 3);
        for len in 0..70 {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = vec![b'x'; len];
                    b[at] = c;
                    assert_eq!(super::is_plain(&b), !special::<false>(c), "len {len} at {at} byte {c:#x}");
                }
            }
        }
    }

    /// JSON-ish text: the bytes a grammar check has to tell apart, in any order.
    fn jsonish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("\u{1}".to_string()),
            Just("true".to_string()),
            Just("nul".to_string()),
            Just("null".to_string()),
            Just("-".to_string()),
            Just("0".to_string()),
            Just("1".to_string()),
            Just(".".to_string()),
            Just("e".to_string()),
            Just("u".to_string()),
            Just("é".to_string()),
            "[a-f0-9]{1,4}",
            "\"[a-z \\\\\"]{0,40}\"",
        ];
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
    }

    /// Bytes that are not UTF-8, or are but not ASCII, inside strings, names and everywhere else,
    /// at every position around the scan's 32- and 64-byte steps.
    #[test]
    fn bytes_get_the_verdict_of_utf8_then_json() {
        let bad: [&[u8]; 8] = [
            b"\xff",
            b"\x80",
            b"\xc3",             // a lead byte without its continuation
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // a surrogate
            b"\xf4\x90\x80\x80", // past U+10FFFF
            "é".as_bytes(),
            "€😀".as_bytes(),
        ];
        for len in [0usize, 1, 30, 31, 32, 33, 62, 63, 64, 65, 100] {
            for at in 0..=len {
                for piece in bad {
                    let mut s = vec![b'x'; len];
                    s.splice(at..at, piece.iter().copied());
                    let quoted = [b"\"".as_slice(), &s, b"\""].concat();
                    agree_bytes(&quoted);
                    agree_bytes(&[b"{".as_slice(), &quoted, b":1}"].concat());
                    agree_bytes(&[b"[1,".as_slice(), &quoted, b",\"\xe9\"]"].concat());
                    agree_bytes(&[b"[".as_slice(), &quoted, b"] "].concat());
                    agree_bytes(&[b"[".as_slice(), &quoted, b"]\xff"].concat());
                    agree_bytes(&[piece, b" 1".as_slice()].concat());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        /// JSON-like text (some of it not ASCII), and the same with one byte set to anything.
        #[test]
        fn bytes_agree_with_from_utf8_then_serde_json(text in jsonish(), at in 0usize..10_000, byte in any::<u8>()) {
            let mut b = text.into_bytes();
            agree_bytes(&b);
            if !b.is_empty() {
                let at = at % b.len();
                b[at] = byte;
                agree_bytes(&b);
            }
        }

        #[test]
        fn agrees_with_serde_json_on_jsonish_text(text in jsonish()) {
            prop_assert_eq!(value(&text), serde(&text), "{:?}", text);
        }

        #[test]
        fn agrees_with_serde_json_on_any_text(text in "\\PC{0,64}") {
            prop_assert_eq!(value(&text), serde(&text), "{:?}", text);
        }

        /// Valid documents, from serde_json's own writer, then one byte dropped.
        #[test]
        fn agrees_with_serde_json_on_documents_and_their_damage(
            v in prop::collection::vec(("\\PC{0,20}", any::<Option<i64>>(), any::<f32>()), 0..8),
            cut in 0usize..10_000,
        ) {
            let doc = serde_json::to_string(&v).unwrap_or_default();
            prop_assert_eq!(value(&doc), serde(&doc), "{:?}", doc);
            if !doc.is_empty() {
                let at = doc.char_indices().map(|(i, _)| i).nth(cut % doc.chars().count()).unwrap_or(0);
                let mut damaged = doc.clone();
                damaged.remove(at);
                prop_assert_eq!(value(&damaged), serde(&damaged), "{:?}", damaged);
            }
        }
    }
}
