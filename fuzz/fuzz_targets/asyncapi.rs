//! Any text uploaded as an AsyncAPI document is modelled, compiled and used to check records, or
//! refused, never panics or hangs.
#![no_main]

use std::sync::Arc;

use eventgate::asyncapi::load;
use eventgate::validate::{Catalog, MAX_ERRORS, Outcome, Route, compile};
use eventgate::wire::records::{records, write_record};
use libfuzzer_sys::fuzz_target;

type Header = (&'static [u8], Option<&'static [u8]>);

/// Records checked against every route of a document that compiles: `(key, value, headers)`.
const RECORDS: &[(Option<&[u8]>, Option<&[u8]>, &[Header])] = &[
    (None, Some(b"{}"), &[]),
    (
        Some(b"light-7"),
        Some(br#"{"lumens":3,"sentAt":"2026-01-01T00:00:00Z","id":"p1","name":"a","value":1,"children":[]}"#),
        &[(b"my-app-header", Some(b"42")), (b"source", Some(b"s1"))],
    ),
    (Some(b"\"k\""), Some(br#"[1, "two", {"a": null, "b": [true, 1.5e300, -0]}]"#), &[(b"n", Some(b"101"))]),
    // A tombstone, a string key and no headers.
    (Some(b"abc"), None, &[]),
    // Neither JSON nor UTF-8, a header without value, a non-UTF-8 header name, the annotation header.
    (
        Some(b"\xff\xfe"),
        Some(b"{\xff}"),
        &[(b"h", None), (b"\xc3\x28", Some(b"x")), (b"_asyncapi_eg_validation_error", Some(b"e"))],
    ),
    (None, Some(b"lumens=5"), &[(b"my-app-header", Some(b"not json"))]),
    (None, Some(b"\"2026-01-01T00:00:00Z\""), &[]),
    (None, Some(b"1e400"), &[]),
    (None, Some(b""), &[]),
];

fn check_all(route: &Route) {
    for (key, value, headers) in RECORDS {
        let mut raw = Vec::new();
        write_record(&mut raw, 0, 0, *key, *value, headers.iter().copied());
        let rec = records(&raw).next().expect("one record").expect("a record eventgate wrote reads");
        match route.check(&rec) {
            Outcome::Valid(i) => {
                assert!(i < route.messages.len(), "valid against message {i} of {}", route.messages.len())
            }
            Outcome::Invalid(errors) => {
                assert!(!errors.is_empty(), "an invalid record with no reason");
                assert!(errors.len() <= MAX_ERRORS, "{} errors", errors.len());
            }
            Outcome::Unchecked(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(doc) = load(&text) else { return };
    let _ = doc.topics();
    let Ok(compiled) = compile("fuzz", doc) else { return };
    let compiled = Arc::new(compiled);
    // Addresses with free `{parameters}` match themselves; those with enum parameters may find no route.
    let addresses: Vec<String> = compiled.doc.channels.iter().map(|c| c.topic.address().to_owned()).collect();
    for address in &addresses {
        if let Some(route) = compiled.route_for(address) {
            check_all(route);
        }
    }
    if let Some(route) = compiled.single_route() {
        check_all(route);
    }
    // The catalog index of the document alone must build (a document never conflicts with itself).
    let catalog = Catalog::new(vec![compiled.clone()]).expect("one document conflicts with nothing");
    for address in &addresses {
        let _ = catalog.route(address);
    }
});
