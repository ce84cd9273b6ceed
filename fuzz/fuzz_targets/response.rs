//! Any bytes a broker sends as the answer to any request must be rewritten, forwarded or refused,
//! never panic or allocate beyond what was sent.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use eventgate::wire::rewrite::{AdvertiseError, ResponseAction, rewrite_response};
use kafka_protocol::protocol::StrBytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[key, version], body)) = data.split_first_chunk::<2>() else { return };
    let (key, version) = (i16::from(key % 80), i16::from(version % 20));
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.put_slice(body);
    let frame: Bytes = frame.freeze();
    let mut map = |id: i32, _: &str, _: i32| -> Result<(StrBytes, i32), AdvertiseError> {
        Ok((StrBytes::from_static_str("eventgate"), 19000 + (id & 0xff)))
    };
    let action = ResponseAction::for_request(key, version);
    let _ = rewrite_response(action, version, &frame, &mut map);
});
