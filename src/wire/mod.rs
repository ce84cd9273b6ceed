//! The Kafka wire protocol, as far as eventgate needs to understand it.
//!
//! A Kafka connection is a stream of size-prefixed frames. Most frames cross eventgate untouched,
//! so this module is built to look at as little as possible:
//!
//! * [`frame`] finds frame boundaries in a read buffer without copying or decoding.
//! * [`header`] peeks at the fixed request header fields (API key, version, correlation id).
//! * [`versions`] owns the API versions eventgate can decode and trims `ApiVersions` responses to them.
//! * [`rewrite`] rewrites broker addresses in the responses that carry them, so that clients always
//!   come back through eventgate.
//! * [`produce`] walks Produce requests in place; [`records`] and [`compression`] read and rebuild
//!   record batches; [`scan`] walks Produce and Fetch answers in place.
//! * [`reader`] is the bounds-checked cursor every hand-walked structure is read with.
//! * [`guard`] walks a response before `kafka-protocol` decodes it, so that no count a peer made up
//!   is allocated for.
//!
//! Messages eventgate must change are decoded and encoded with the `kafka-protocol` crate's generated
//! types; frames it only inspects are walked in place with [`reader::Reader`].

pub mod compression;
pub mod frame;
pub mod guard;
pub mod header;
pub mod produce;
pub mod reader;
pub mod records;
pub mod rewrite;
pub mod scan;
pub mod versions;

/// Why a frame or a part of one could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: needed {needed} bytes, {remaining} left")]
    Truncated { what: &'static str, needed: usize, remaining: usize },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: &'static str },
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("negative frame size {0}")]
    NegativeFrameSize(i32),
    #[error("cannot decode {api} v{version}: {source}")]
    Decode { api: &'static str, version: i16, source: anyhow::Error },
    #[error("cannot encode {api} v{version}: {source}")]
    Encode { api: &'static str, version: i16, source: anyhow::Error },
}
