//! The record batch compression codecs Kafka uses: gzip, snappy, lz4 and zstd.
//!
//! Decompression is always bounded by a caller-supplied limit, checked as bytes come out, so a small
//! batch that inflates to gigabytes (a decompression bomb) fails instead of exhausting memory.
//!
//! Two codecs have Kafka-specific framing. Snappy comes either raw (librdkafka) or in the "xerial"
//! stream format that the Java client writes; both are read, and re-encoding keeps the framing the
//! producer used. LZ4 is the standard LZ4 frame format with independent 64 KiB blocks, which every
//! client (Java included) reads.
//!
//! This module depends on nothing else in `wire`: [`records`](super::records) uses it (to read and
//! rebuild compressed batches), never the other way round. Its failures are [`CodecError`]s, which
//! `records` turns into the same-named [`RecordError`](super::records::RecordError) variants.

use std::io::{Read, Write};

/// Why a codec could not be named, or a records section could not be (de)compressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("cannot decompress {codec} record batch: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("cannot compress {codec} record batch: {reason}")]
    Compress { codec: &'static str, reason: String },
    #[error("record batch decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
}

/// A batch's compression codec (attribute bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec named by a batch's attributes.
    pub fn from_attributes(attributes: i16) -> Result<Self, CodecError> {
        Ok(match attributes & 0x07 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            n => return Err(CodecError::UnknownCodec(n as u8)),
        })
    }

    /// The attribute bits of this codec.
    pub fn bits(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// How a compressed section was framed, so re-encoding can frame it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    Standard,
    /// Snappy in the xerial stream format (Java clients).
    Xerial,
}

const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_BLOCK: usize = 32 * 1024;

/// Memory a decoder of `codec` sets aside for `input` before it produces a byte, as the input
/// itself declares it: an lz4 frame names its block size (up to 4 MiB), which the decoder zeroes
/// whatever the block holds. Callers charge it before decompressing.
pub fn decoder_claim(codec: Codec, input: &[u8]) -> usize {
    const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
    match codec {
        Codec::Lz4 if input.starts_with(&LZ4_MAGIC) => match input.get(5).map(|bd| (bd >> 4) & 0x07) {
            Some(4) => 64 << 10,
            Some(5) => 256 << 10,
            Some(6) => 1 << 20,
            _ => 4 << 20,
        },
        _ => 0,
    }
}

/// Decompresses `input` into `out` (cleared first), failing once more than `limit` bytes come out.
pub fn decompress(codec: Codec, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<Framing, CodecError> {
    out.clear();
    let codec_err = |e: std::io::Error| CodecError::Decompress { codec: codec.name(), reason: e.to_string() };
    let mut framing = Framing::Standard;
    match codec {
        Codec::None => {
            if input.len() > limit {
                return Err(CodecError::TooLarge { limit });
            }
            out.extend_from_slice(input);
        }
        Codec::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(input), out, limit)?,
        Codec::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), out, limit)?,
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(codec_err)?;
            read_bounded(codec, decoder, out, limit)?
        }
        Codec::Snappy => {
            if input.starts_with(&XERIAL_MAGIC) {
                framing = Framing::Xerial;
                xerial_decompress(input, out, limit)?;
            } else {
                snappy_block(input, out, limit)?;
            }
        }
    }
    Ok(framing)
}

/// Compresses `input` with `codec` and `framing`, appending to `out`.
pub fn compress(codec: Codec, framing: Framing, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let codec_err = |e: std::io::Error| CodecError::Compress { codec: codec.name(), reason: e.to_string() };
    match codec {
        Codec::None => out.extend_from_slice(input),
        Codec::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(input).map_err(codec_err)?;
            enc.finish().map_err(codec_err)?;
        }
        Codec::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            enc.write_all(input).map_err(codec_err)?;
            enc.finish().map_err(|e| codec_err(std::io::Error::other(e)))?;
        }
        Codec::Zstd => {
            // Level 3 is Kafka's default for zstd.
            let mut enc = zstd::stream::write::Encoder::new(out, 3).map_err(codec_err)?;
            enc.write_all(input).map_err(codec_err)?;
            enc.finish().map_err(codec_err)?;
        }
        Codec::Snappy => {
            let mut enc = snap::raw::Encoder::new();
            let snap_err = |e: snap::Error| CodecError::Compress { codec: "snappy", reason: e.to_string() };
            match framing {
                Framing::Standard => {
                    let start = out.len();
                    out.resize(start + snap::raw::max_compress_len(input.len()), 0);
                    let n = enc.compress(input, &mut out[start..]).map_err(snap_err)?;
                    out.truncate(start + n);
                }
                Framing::Xerial => {
                    out.extend_from_slice(&XERIAL_MAGIC);
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&1i32.to_be_bytes());
                    for chunk in input.chunks(XERIAL_BLOCK) {
                        let len_at = out.len();
                        out.extend_from_slice(&[0; 4]);
                        let start = out.len();
                        out.resize(start + snap::raw::max_compress_len(chunk.len()), 0);
                        let n = enc.compress(chunk, &mut out[start..]).map_err(snap_err)?;
                        out.truncate(start + n);
                        out[len_at..start].copy_from_slice(&(n as i32).to_be_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads all of `reader` into `out`, failing once more than `limit` bytes come out. `out` grows by
/// doubling but never past `limit + 1`, so a bomb stopped at the limit has made eventgate hold the
/// limit, not twice it.
fn read_bounded(codec: Codec, mut reader: impl Read, out: &mut Vec<u8>, limit: usize) -> Result<(), CodecError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CodecError::Decompress { codec: codec.name(), reason: e.to_string() }),
        };
        if out.len() + n > limit {
            return Err(CodecError::TooLarge { limit });
        }
        if out.capacity() - out.len() < n {
            let target = (out.len() * 2).max(out.len() + n).max(64 * 1024).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn snappy_block(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), CodecError> {
    let err = |e: snap::Error| CodecError::Decompress { codec: "snappy", reason: e.to_string() };
    let len = snap::raw::decompress_len(input).map_err(err)?;
    if out.len() + len > limit {
        return Err(CodecError::TooLarge { limit });
    }
    // The length is the block's own claim, and the output is zeroed before decoding: a few bytes
    // claiming 64 MiB would cost 64 MiB of memset each. Snappy expands at most 64 bytes from a
    // 3-byte copy (21.3x), so a larger claim is a lie.
    if len > input.len().saturating_mul(SNAPPY_MAX_RATIO).saturating_add(64) {
        return Err(CodecError::Decompress {
            codec: "snappy",
            reason: format!("a {}-byte block claims {len} bytes, more than snappy can expand to", input.len()),
        });
    }
    let start = out.len();
    out.resize(start + len, 0);
    let n = snap::raw::Decoder::new().decompress(input, &mut out[start..]).map_err(err)?;
    out.truncate(start + n);
    Ok(())
}

/// Snappy's largest expansion: a 3-byte copy element yields at most 64 bytes.
const SNAPPY_MAX_RATIO: usize = 22;

fn xerial_decompress(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), CodecError> {
    let bad = |why: &str| CodecError::Decompress { codec: "snappy", reason: format!("xerial stream: {why}") };
    let mut rest = input.get(16..).ok_or_else(|| bad("truncated header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated block length"))?;
        let len = usize::try_from(i32::from_be_bytes(*len)).map_err(|_| bad("negative block length"))?;
        let block = tail.get(..len).ok_or_else(|| bad("truncated block"))?;
        snappy_block(block, out, limit)?;
        rest = &tail[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            for framing in [Framing::Standard, Framing::Xerial] {
                if framing == Framing::Xerial && codec != Codec::Snappy {
                    continue;
                }
                let mut packed = Vec::new();
                compress(codec, framing, &data, &mut packed).unwrap();
                let mut back = Vec::new();
                let seen = decompress(codec, &packed, &mut back, data.len()).unwrap();
                assert_eq!(back, data, "{codec:?} {framing:?}");
                assert_eq!(seen, framing, "{codec:?}");
            }
        }
    }

    #[test]
    fn a_snappy_length_claim_beyond_what_snappy_can_expand_to_is_refused_before_allocating() {
        // A varint claiming 64 MiB - 64, then garbage: seven bytes.
        let claim = [0xc0, 0xff, 0xff, 0x1f, 0xff, 0xff, 0xff];
        let mut out = Vec::new();
        let err = decompress(Codec::Snappy, &claim, &mut out, 64 << 20).unwrap_err();
        assert!(err.to_string().contains("more than snappy can expand to"), "{err}");
        assert!(out.capacity() < 1 << 20, "{} bytes reserved for a 7-byte block", out.capacity());
        // The best case snappy has (long runs of one byte) stays within the ratio.
        let zeros = vec![0u8; 1 << 20];
        let mut packed = Vec::new();
        compress(Codec::Snappy, Framing::Standard, &zeros, &mut packed).unwrap();
        let mut back = Vec::new();
        decompress(Codec::Snappy, &packed, &mut back, 1 << 20).unwrap();
        assert_eq!(back, zeros);
    }

    #[test]
    fn an_lz4_frame_claims_the_block_size_it_declares() {
        let mut packed = Vec::new();
        compress(Codec::Lz4, Framing::Standard, b"hello", &mut packed).unwrap();
        let claim = decoder_claim(Codec::Lz4, &packed);
        assert!((64 << 10..=4 << 20).contains(&claim), "{claim}");
        let mut four_mib = packed.clone();
        four_mib[5] = (four_mib[5] & 0x8f) | (7 << 4);
        assert_eq!(decoder_claim(Codec::Lz4, &four_mib), 4 << 20);
        assert_eq!(decoder_claim(Codec::Zstd, &packed), 0);
    }

    #[test]
    fn decompression_is_bounded() {
        let zeros = vec![0u8; 10 * 1024 * 1024];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut packed = Vec::new();
            compress(codec, Framing::Standard, &zeros, &mut packed).unwrap();
            assert!(packed.len() < zeros.len() / 10, "{codec:?} did not compress");
            let mut out = Vec::new();
            let err = decompress(codec, &packed, &mut out, 1024 * 1024).unwrap_err();
            assert!(
                err.to_string().contains("exceeds") || matches!(err, CodecError::TooLarge { .. }),
                "{codec:?}: {err}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut out = Vec::new();
            assert!(decompress(codec, b"\x82SNAPPY\x00garbage-garbage", &mut out, 1 << 20).is_err(), "{codec:?}");
            assert!(decompress(codec, &[0xff; 64], &mut out, 1 << 20).is_err(), "{codec:?}");
        }
    }
}
