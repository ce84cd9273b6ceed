//! The mirror's JSON check gives serde_json's verdict on any text, and the same value.
#![no_main]

use eventgate::mirror::event::json;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let serde = serde_json::from_str::<&RawValue>(text).ok().map(RawValue::get);
    assert_eq!(json::value(text), serde, "{text:?}");
});
