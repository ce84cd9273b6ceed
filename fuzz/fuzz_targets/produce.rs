//! Any Produce request a client sends is walked, validated and annotated or refused, never panics.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use eventgate::asyncapi::load;
use eventgate::proxy::produce::inspect;
use eventgate::telemetry::ValidationMetrics;
use eventgate::validate::{Catalog, Policies, Validation, compile};
use eventgate::wire::header::RequestMeta;
use libfuzzer_sys::fuzz_target;

mod common;

fn validation() -> &'static Validation {
    static V: OnceLock<Validation> = OnceLock::new();
    V.get_or_init(|| {
        let v = Validation::new(Policies::default());
        let doc = compile("demo", load(include_str!("../../asyncapi/demo.yaml")).unwrap()).unwrap();
        v.catalog.store(Arc::new(Catalog::new(vec![Arc::new(doc)]).unwrap()));
        v
    })
}

/// The one call of `inspect`: when its signature changes, only this function changes.
fn run(meta: &RequestMeta, frame: &Bytes, mirror_on: bool) {
    let _ = inspect(validation(), &ValidationMetrics::new(), meta, frame, mirror_on);
}

fuzz_target!(|data: &[u8]| {
    let Some((&[first], body)) = data.split_first_chunk::<1>() else { return };
    // Low bits: the Produce version (0-13); high bit: whether the mirror is on.
    let version = i16::from((first & 0x7f) % 14);
    let mirror_on = first & 0x80 != 0;
    // Header v1/v2 with the topic of the demo document likely to appear in the body.
    let frame = common::produce_frame(version, body);
    let Ok(meta) = RequestMeta::peek(&frame) else { return };
    run(&meta, &frame, mirror_on);
});
