use serde_json::Value;

use super::*;
use crate::wire::records::{records, write_record};

fn record_bytes(key: Option<&str>, value: Option<&[u8]>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))).collect();
    write_record(&mut raw, 5, 0, key.map(str::as_bytes), value, hs.into_iter());
    raw
}

fn event(raw: &[u8], outcome: &Outcome, max: usize) -> Value {
    let rec = records(raw).next().unwrap().unwrap();
    let ctx = Context {
        source: "kafka://prod/orders",
        topic: "orders",
        partition: 2,
        offset: Some(41),
        id: "orders-2-41".into(),
        default_type: "eventgate.record",
        message: None,
        outcome,
        timestamp_ms: 1_767_225_600_000,
        max_bytes: max,
    };
    let e = build(&rec, &ctx);
    serde_json::from_slice(&e.json).unwrap()
}

#[test]
fn plain_json_record() {
    let raw = record_bytes(Some("k1"), Some(br#"{"a":1}"#), &[]);
    let v = event(&raw, &Outcome::Invalid(std::sync::Arc::from(["/a: bad".to_owned()])), 1 << 20);
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["source"], "kafka://prod/orders");
    assert_eq!(v["type"], "eventgate.record");
    assert_eq!(v["subject"], "k1");
    assert_eq!(v["time"], "2026-01-01T00:00:00Z");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["data"]["a"], 1);
    assert_eq!(v["partition"], 2);
    assert_eq!(v["offset"], 41);
    assert_eq!(v["validation"], "invalid");
    assert_eq!(v["validationerrors"], r#"["/a: bad"]"#);
    // Attribute names follow [a-z0-9].
    for k in v.as_object().unwrap().keys() {
        assert!(k == "data_base64" || k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{k}");
    }
}

#[test]
fn bytes_go_to_data_base64_and_text_to_data() {
    let raw = record_bytes(None, Some(&[0xff, 0x00, 0x01]), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data_base64"], "/wAB");
    assert!(v.get("data").is_none() && v.get("subject").is_none());
    let raw = record_bytes(None, Some(b"plain words"), &[("content-type", "text/plain")]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data"], "plain words");
    assert_eq!(v["datacontenttype"], "text/plain");
}

#[test]
fn binary_mode_cloudevents_keep_their_attributes() {
    let raw = record_bytes(
        Some("k"),
        Some(br#"{"n":1}"#),
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "abc"),
            ("ce_source", "/orders-svc"),
            ("ce_type", "order.placed"),
            ("ce_traceparent", "00-1"),
            ("content-type", "application/json"),
        ],
    );
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["id"], "abc");
    assert_eq!(v["source"], "/orders-svc");
    assert_eq!(v["type"], "order.placed");
    assert_eq!(v["traceparent"], "00-1");
    assert_eq!(v["data"]["n"], 1);
    assert_eq!(v["offset"], 41);
}

#[test]
fn structured_mode_cloudevents_are_kept() {
    let raw = record_bytes(
        None,
        Some(br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","data":{"x":2}}"#),
        &[("content-type", "application/cloudevents+json; charset=utf-8")],
    );
    let v = event(&raw, &Outcome::Unchecked("no document".into()), 1 << 20);
    assert_eq!(v["id"], "e1");
    assert_eq!(v["type"], "t");
    assert_eq!(v["data"]["x"], 2);
    assert_eq!(v["validation"], "unchecked");
}

#[test]
fn oversized_events_omit_data_but_are_not_lost() {
    let big = vec![b'x'; 5000];
    let raw = record_bytes(Some("k"), Some(&big), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1000);
    assert_eq!(v["dataomitted"], true);
    let rec = records(&raw).next().unwrap().unwrap();
    let ctx = Context {
        source: "kafka://c/t",
        topic: "t",
        partition: 0,
        offset: Some(0),
        id: "t-0-0".into(),
        default_type: "d",
        message: None,
        outcome: &Outcome::Valid(0),
        timestamp_ms: 0,
        max_bytes: 1000,
    };
    assert!(build(&rec, &ctx).data_omitted);
    assert_eq!(v["datasize"], 5000);
    assert!(v.get("data_base64").is_none() && v.get("data").is_none());
    assert_eq!(v["id"], "orders-2-41");
}
