use std::sync::Arc;

use super::*;
use crate::asyncapi::load;
use crate::wire::records::{records, write_record};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/asyncapi/", $name))
    };
}

fn doc(id: &str, text: &str) -> Arc<CompiledDoc> {
    Arc::new(compile(id, load(text).unwrap()).unwrap())
}

/// Checks a record built from parts against the route for `topic`.
fn check(d: &CompiledDoc, topic: &str, key: Option<&str>, value: Option<&str>, headers: &[(&str, &str)]) -> Outcome {
    let mut raw = Vec::new();
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))).collect();
    write_record(&mut raw, 0, 0, key.map(str::as_bytes), value.map(str::as_bytes), hs.into_iter());
    let rec = records(&raw).next().unwrap().unwrap();
    d.route_for(topic).unwrap_or_else(|| panic!("no route for {topic}")).check(&rec)
}

fn errors(o: Outcome) -> Vec<String> {
    match o {
        Outcome::Invalid(e) => e.to_vec(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn demo_payloads() {
    let d = doc("demo", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml")));
    let t = "event-gateway-demo";
    assert_eq!(check(&d, t, None, Some(r#"{"lumens":5,"sentAt":"2026-01-01T00:00:00Z"}"#), &[]), Outcome::Valid(0));
    assert_eq!(
        errors(check(&d, t, None, Some(r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#), &[])),
        vec![
            "/lumens: -1 is less than the minimum of 0 (schema #/components/schemas/lightMeasuredPayload/properties/lumens/minimum)"
        ]
    );
    assert_eq!(
        errors(check(&d, t, None, Some(r#"{"lumens":1,"sentAt":"yesterday"}"#), &[])),
        vec![
            r#"/sentAt: "yesterday" is not a "date-time" (schema #/components/schemas/lightMeasuredPayload/properties/sentAt/format)"#
        ]
    );
    assert_eq!(
        errors(check(&d, t, None, Some(r#"{"sentAt":"2026-01-01T00:00:00Z"}"#), &[])),
        vec![r#"/: "lumens" is a required property (schema #/components/schemas/lightMeasuredPayload/required)"#]
    );
    let not_json = errors(check(&d, t, None, Some("lumens=5"), &[]));
    assert!(not_json[0].starts_with("/: payload is not JSON: expected value at line 1 column 1"), "{not_json:?}");
    let mut raw = Vec::new();
    write_record(&mut raw, 0, 0, None, Some(&[0x7b, 0xff, 0x7d]), std::iter::empty());
    let rec = records(&raw).next().unwrap().unwrap();
    let e = errors(d.route_for(t).unwrap().check(&rec));
    assert_eq!(e, vec!["/: payload is not UTF-8 text (invalid byte at offset 1)"]);
    let tomb = errors(check(&d, t, None, None, &[]));
    assert!(tomb[0].contains("tombstone"), "{tomb:?}");
}

#[test]
fn keys_and_headers_are_validated() {
    let d = doc("lights", fixture!("streetlights-2.6.yaml"));
    let t = "smartylighting.streetlights.1.0.event.7.lighting.measured";
    let good = r#"{"lumens":3,"sentAt":"2026-01-01T00:00:00Z"}"#;
    assert_eq!(check(&d, t, Some("light-7"), Some(good), &[("my-app-header", "42")]), Outcome::Valid(0));
    let e = errors(check(&d, t, Some("lamp-7"), Some(good), &[]));
    assert_eq!(
        e,
        vec![
            r#"key: "lamp-7" does not match "^light-[0-9]+$" (schema #/components/messages/lightMeasured/bindings/kafka/key/pattern)"#
        ]
    );
    // A header declared as an integer is read as JSON.
    let e = errors(check(&d, t, Some("light-1"), Some(good), &[("my-app-header", "101")]));
    assert_eq!(
        e,
        vec![
            "headers/my-app-header: 101 is greater than the maximum of 100 \
             (schema #/components/messageTraits/commonHeaders/headers/properties/my-app-header/maximum)"
        ]
    );
    // An unrelated header and a null key fail nothing but the key schema.
    let e = errors(check(&d, t, None, Some(good), &[("other", "x")]));
    assert_eq!(
        e,
        vec![
            r#"key: null is not of type "string" (schema #/components/messages/lightMeasured/bindings/kafka/key/type)"#
        ]
    );
}

#[test]
fn one_of_messages_match_any_and_report_each() {
    let d = doc("orders", fixture!("oneof-2.0.json"));
    let t = "shop.orders.v1";
    assert_eq!(check(&d, t, None, Some(r#"{"orderId":"1","items":[{"sku":"a","qty":1}]}"#), &[]), Outcome::Valid(0));
    assert_eq!(check(&d, t, None, Some(r#"{"orderId":"1","reason":"late"}"#), &[]), Outcome::Valid(1));
    let e = errors(check(&d, t, None, Some(r#"{"orderId":"1","items":[{"sku":"a","qty":0}]}"#), &[]));
    assert!(e.contains(&"[OrderPlaced] /items/0/qty: 0 is less than the minimum of 1 (schema #/components/schemas/Item/properties/qty/minimum)".to_owned()), "{e:?}");
    assert!(e.iter().any(|m| m.starts_with("[OrderCancelled]")), "{e:?}");
}

#[test]
fn recursive_schemas_and_patterns() {
    let d = doc("trees", fixture!("recursive-3.0.yaml"));
    assert_eq!(
        check(&d, "trees.v1", None, Some(r#"{"value":1,"children":[{"value":2,"children":[]}]}"#), &[]),
        Outcome::Valid(0)
    );
    let e = errors(check(&d, "trees.v1", None, Some(r#"{"value":1,"children":[{"value":"x"}]}"#), &[]));
    assert_eq!(
        e,
        vec![
            r#"/children/0/value: "x" is not of type "integer" (schema #/components/schemas/node/properties/value/type)"#
        ]
    );
    assert_eq!(check(&d, "user.9.us.signedup", None, Some(r#"{"name":"a"}"#), &[]), Outcome::Valid(0));
}

#[test]
fn unsupported_formats_are_unchecked_never_valid() {
    let d = doc("avro", fixture!("avro-2.4.yaml"));
    // Matches the JSON message: valid.
    assert_eq!(check(&d, "payments", None, Some(r#"{"id":"p1"}"#), &[]), Outcome::Valid(1));
    // Could be the Avro message: unchecked, not valid and not invalid.
    assert!(
        matches!(check(&d, "payments", None, Some("\u{2}binary"), &[]), Outcome::Unchecked(r) if r.contains("avro"))
    );

    let d = doc("multi", fixture!("multiformat-3.0.yaml"));
    let ok = check(&d, "sensors.readings", Some("abc"), Some(r#"{"celsius":20}"#), &[("source", "s1")]);
    assert_eq!(ok, Outcome::Valid(0));
    let missing_header = check(&d, "sensors.readings", Some("abc"), Some(r#"{"celsius":20}"#), &[]);
    assert!(matches!(missing_header, Outcome::Unchecked(_)), "{missing_header:?}");
}

#[test]
fn invalid_schemas_are_refused_with_their_path() {
    let e = compile("bad", load(fixture!("broken-schema.yaml")).unwrap()).err().unwrap().to_string();
    assert!(e.contains("/channels/a/messages/m/payload/properties/n/minimum"), "{e}");
}

#[test]
fn catalog_routes_and_conflicts() {
    let demo = doc("demo", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml")));
    let lights = doc("lights", fixture!("streetlights-2.6.yaml"));
    let cat = Catalog::new(vec![demo.clone(), lights]).unwrap();
    assert_eq!(cat.route("event-gateway-demo").unwrap().doc_id, "demo");
    assert_eq!(cat.route("smartylighting.streetlights.1.0.event.x.lighting.measured").unwrap().doc_id, "lights");
    assert!(cat.route("nothing").is_none());
    // Another document claiming the demo topic conflicts; replacing the same id does not.
    let again = doc("demo2", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml")));
    assert_eq!(cat.with(again).err().unwrap(), Conflict { topic: "event-gateway-demo".into(), other: "demo".into() });
    assert!(cat.with(demo).is_ok());
    assert!(cat.without("demo").route("event-gateway-demo").is_none());
}
