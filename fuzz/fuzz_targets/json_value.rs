//! The mirror's JSON check gives serde_json's verdict on any text, and the same value; on any
//! bytes, the verdict of a UTF-8 check and then serde_json's.
#![no_main]

use eventgate::mirror::event::json;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    let serde = text.and_then(|t| serde_json::from_str::<&RawValue>(t).ok()).map(RawValue::get);
    assert_eq!(json::value_in(data), serde.map(str::as_bytes), "{:?}", String::from_utf8_lossy(data));
    if let Some(text) = text {
        assert_eq!(json::value(text), serde, "{text:?}");
    }
});
