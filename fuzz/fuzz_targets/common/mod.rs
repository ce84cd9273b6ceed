//! Shared by the Produce targets: a fuzzed body behind a well-formed request header.

use bytes::{BufMut, Bytes, BytesMut};

/// A Produce request frame of `version` around `body`: header v1 (v2 from v9), client id null.
pub fn produce_frame(version: i16, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(0);
    frame.put_i16(version);
    frame.put_i32(1);
    frame.put_i16(-1);
    if version >= 9 {
        frame.put_u8(0);
    }
    frame.put_slice(body);
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame.freeze()
}
