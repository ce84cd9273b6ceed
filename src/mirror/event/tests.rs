use std::sync::Arc;

use serde_json::Value;

use super::*;
use crate::wire::records::{records, write_record};

fn record_bytes(key: Option<&str>, value: Option<&[u8]>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))).collect();
    write_record(&mut raw, 5, 0, key.map(str::as_bytes), value, hs.into_iter());
    raw
}

fn context<'a>(outcome: &'a Outcome, max: usize) -> Context<'a> {
    Context {
        source: "kafka://prod/orders",
        topic: "orders",
        partition: 2,
        offset: Some(41),
        id: "orders-2-41",
        default_type: "eventgate.record",
        message: None,
        outcome,
        timestamp_ms: 1_767_225_600_000,
        max_bytes: max,
        principal: None,
        client_id: None,
        errors: None,
        prepared: None,
    }
}

fn built(raw: &[u8], ctx: &Context<'_>) -> (Event, Value) {
    let rec = records(raw).next().unwrap().unwrap();
    let e = build(&rec, ctx);
    let v = serde_json::from_slice(&e.json).unwrap();
    (e, v)
}

fn event(raw: &[u8], outcome: &Outcome, max: usize) -> Value {
    built(raw, &context(outcome, max)).1
}

fn invalid() -> Outcome {
    Outcome::Invalid(Arc::from(["/a: bad".to_owned()]))
}

/// A complete binary-mode CloudEvent's headers, plus `extra`.
fn binary_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h =
        vec![("ce_specversion", "1.0"), ("ce_id", "abc"), ("ce_source", "/orders-svc"), ("ce_type", "order.placed")];
    h.extend_from_slice(extra);
    h
}

const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json; charset=utf-8");

#[test]
fn plain_json_record() {
    let raw = record_bytes(Some("k1"), Some(br#"{"a":1}"#), &[]);
    let v = event(&raw, &invalid(), 1 << 20);
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["source"], "kafka://prod/orders");
    assert_eq!(v["type"], "eventgate.record");
    assert_eq!(v["subject"], "k1");
    assert_eq!(v["time"], "2026-01-01T00:00:00Z");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["data"]["a"], 1);
    assert_eq!(v["partition"], 2);
    assert_eq!(v["offset"], "41");
    assert_eq!(v["validation"], "invalid");
    assert_eq!(v["validationerrors"], r#"["/a: bad"]"#);
    assert!(v.get("wrapped").is_none() && v.get("overridden").is_none());
    // Attribute names follow [a-z0-9].
    for k in v.as_object().unwrap().keys() {
        assert!(k == "data_base64" || k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{k}");
    }
}

#[test]
fn json_data_is_embedded_as_written() {
    let raw = record_bytes(None, Some(br#"{"b": [1, 2.50, "x"]}"#), &[]);
    let rec = records(&raw).next().unwrap().unwrap();
    let e = build(&rec, &context(&Outcome::Valid(0), 1 << 20));
    let text = std::str::from_utf8(&e.json).unwrap();
    assert!(text.contains(r#""data":{"b": [1, 2.50, "x"]}"#), "{text}");
}

#[test]
fn offset_is_a_string_since_kafka_offsets_are_64_bit() {
    let raw = record_bytes(None, Some(b"{}"), &[]);
    let outcome = Outcome::Valid(0);
    let mut ctx = context(&outcome, 1 << 20);
    ctx.offset = Some(1 << 40);
    let (_, v) = built(&raw, &ctx);
    assert_eq!(v["offset"], "1099511627776");
    assert_eq!(v["partition"], 2, "a partition is an i32: it stays a number");
}

#[test]
fn bytes_go_to_data_base64_and_text_to_data() {
    let raw = record_bytes(None, Some(&[0xff, 0x00, 0x01]), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data_base64"], "/wAB");
    assert_eq!(v["datacontenttype"], "application/octet-stream");
    assert!(v.get("data").is_none() && v.get("subject").is_none());
    let raw = record_bytes(None, Some(b"plain words"), &[("content-type", "text/plain")]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data"], "plain words");
    assert_eq!(v["datacontenttype"], "text/plain");
}

#[test]
fn undeclared_text_goes_to_data_as_a_string() {
    let raw = record_bytes(None, Some("plain wörds\n".as_bytes()), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data"], "plain wörds\n");
    assert_eq!(v["datacontenttype"], "text/plain; charset=utf-8");
    assert!(v.get("data_base64").is_none());
    // UTF-8 with control characters is more likely a binary encoding than text.
    let raw = record_bytes(None, Some(b"\x02ab\x00"), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data_base64"], "AmFiAA==");
    assert_eq!(v["datacontenttype"], "application/octet-stream");
}

#[test]
fn the_content_type_decides_between_data_and_data_base64() {
    let cases: [(&str, &[u8], &str); 8] = [
        ("application/xml", b"<a/>", "data"),
        ("application/atom+xml", b"<feed/>", "data"),
        ("application/x-custom; charset=utf-8", b"words", "data"),
        ("Text/CSV", b"a,b", "data"),
        ("application/octet-stream", b"looks like text", "data_base64"),
        ("application/json", b"not json", "data_base64"),
        ("text/plain", &[0xff, 0xfe], "data_base64"),
        ("application/vnd.x+json", br#"{"x":1}"#, "data"),
    ];
    for (ct, value, member) in cases {
        let raw = record_bytes(None, Some(value), &[("content-type", ct)]);
        let v = event(&raw, &Outcome::Valid(0), 1 << 20);
        assert!(v.get(member).is_some(), "{ct}: {v}");
        assert_eq!(v["datacontenttype"], ct, "the declared content type is kept");
    }
    assert_eq!(Kind::of("application/cloudevents+json; charset=utf-8"), Kind::Json);
    assert_eq!(Kind::of("TEXT/JSON"), Kind::Json);
    assert_eq!(Kind::of("image/png"), Kind::Bytes);
    assert_eq!(Kind::of(""), Kind::Bytes);
}

#[test]
fn an_empty_key_is_no_subject() {
    let raw = record_bytes(Some(""), Some(b"{}"), &[]);
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert!(v.get("subject").is_none(), "{v}");
}

#[test]
fn binary_mode_cloudevents_keep_their_attributes() {
    let raw = record_bytes(
        Some("k"),
        Some(br#"{"n":1}"#),
        &binary_headers(&[("ce_traceparent", "00-1"), ("content-type", "application/json")]),
    );
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["id"], "abc");
    assert_eq!(v["source"], "/orders-svc");
    assert_eq!(v["type"], "order.placed");
    assert_eq!(v["traceparent"], "00-1");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["data"]["n"], 1);
    assert_eq!(v["offset"], "41");
    assert!(v.get("wrapped").is_none() && v.get("overridden").is_none());
}

#[test]
fn forged_binary_mode_headers_do_not_override_eventgate_s_verdict() {
    let raw = record_bytes(
        None,
        Some(br#"{"n":1}"#),
        &binary_headers(&[
            ("ce_validation", "valid"),
            ("ce_offset", "0"),
            ("ce_partition", "999"),
            ("ce_dataomitted", "true"),
            ("ce_wrapped", "no"),
        ]),
    );
    let outcome = invalid();
    let (e, v) = built(&raw, &context(&outcome, 1 << 20));
    assert_eq!(v["id"], "abc", "the producer's own event, otherwise");
    assert_eq!(v["validation"], "invalid");
    assert_eq!(v["validationerrors"], r#"["/a: bad"]"#);
    assert_eq!(v["offset"], "41");
    assert_eq!(v["partition"], 2);
    assert!(v.get("dataomitted").is_none() && v.get("wrapped").is_none());
    assert_eq!(v["overridden"], "partition,offset,validation,dataomitted,wrapped");
    assert_eq!(e.overridden, 5);
    assert!(!e.wrapped);
}

#[test]
fn forged_structured_mode_attributes_do_not_override_eventgate_s_verdict() {
    let raw = record_bytes(
        None,
        Some(
            br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","validation":"valid","offset":0,
                "partition":999,"validationerrors":"[\"forged\"]","principal":"admin","clientid":"x","data":{}}"#,
        ),
        &[STRUCTURED],
    );
    // A valid record: `validationerrors` must be absent even though the producer sent one.
    let (e, v) = built(&raw, &context(&Outcome::Valid(0), 1 << 20));
    assert_eq!(v["id"], "e1");
    assert_eq!(v["validation"], "valid");
    assert!(v.get("validationerrors").is_none(), "{v}");
    assert!(v.get("principal").is_none() && v.get("clientid").is_none());
    assert_eq!(v["offset"], "41");
    assert_eq!(v["partition"], 2);
    assert_eq!(v["overridden"], "partition,offset,validation,validationerrors,principal,clientid");
    assert_eq!(e.overridden, 6);
}

#[test]
fn structured_mode_cloudevents_are_kept() {
    let raw = record_bytes(
        None,
        Some(br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","traceparent":"00-1","n":7,"b":true,"data":{"x":2}}"#),
        &[STRUCTURED],
    );
    let v = event(&raw, &Outcome::Unchecked("no document".into()), 1 << 20);
    assert_eq!(v["id"], "e1");
    assert_eq!(v["type"], "t");
    assert_eq!(v["data"]["x"], 2);
    assert_eq!((&v["traceparent"], &v["n"], &v["b"]), (&Value::from("00-1"), &Value::from(7), &Value::from(true)));
    assert_eq!(v["validation"], "unchecked");
    assert!(v.get("wrapped").is_none());
    let raw = record_bytes(
        None,
        Some(br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","data_base64":"/wAB","subject":null}"#),
        &[STRUCTURED],
    );
    let v = event(&raw, &Outcome::Valid(0), 1 << 20);
    assert_eq!(v["data_base64"], "/wAB");
    assert!(v.get("subject").is_none(), "null is absent");
}

#[test]
fn an_incomplete_binary_mode_record_is_wrapped() {
    let raw = record_bytes(Some("k"), Some(br#"{"n":1}"#), &[("ce_specversion", "1.0"), ("ce_type", "t")]);
    let (e, v) = built(&raw, &context(&Outcome::Valid(0), 1 << 20));
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["source"], "kafka://prod/orders");
    assert_eq!(v["type"], "eventgate.record");
    assert_eq!(v["subject"], "k");
    assert_eq!(v["data"]["n"], 1);
    assert_eq!(v["wrapped"], "binary-mode headers incomplete: no id, source");
    assert!(e.wrapped);
}

#[test]
fn invalid_binary_mode_records_are_wrapped_and_say_why() {
    let cases: [(&[(&str, &str)], &str); 10] = [
        (&[("ce_specversion", "0.3")], "specversion \"0.3\" is not 1.0"),
        (&[("ce_source", "a source with spaces")], "source is not a URI reference"),
        (&[("ce_time", "2026-01-01 00:00:00Z")], "time is not an RFC 3339"),
        (&[("ce_time", "yesterday")], "time is not an RFC 3339"),
        (&[("ce_dataschema", "relative/schema")], "dataschema is not an absolute URI"),
        (&[("ce_dataschema", "urn:x#/a/{b}")], "dataschema is not an absolute URI"),
        (&[("ce_Trace", "1")], "\"ce_Trace\" is not an attribute name"),
        (&[("ce_abcdefghijklmnopqrstu", "1")], "is not an attribute name"),
        (&[("ce_id", "")], "incomplete: no id"),
        (&[("ce_data", "x")], "ce_data is not an attribute"),
    ];
    for (extra, why) in cases {
        // Later headers of a name win, so `extra` replaces the complete set's values.
        let raw = record_bytes(None, Some(b"{}"), &binary_headers(extra));
        let v = event(&raw, &Outcome::Valid(0), 1 << 20);
        assert_eq!(v["id"], "orders-2-41", "{extra:?}: {v}");
        let note = v["wrapped"].as_str().unwrap_or_default();
        assert!(note.starts_with("binary-mode headers") && note.contains(why), "{extra:?}: {note}");
    }
    // What does pass: a URI-reference source, an RFC 3339 time with an offset, an absolute dataschema.
    let raw = record_bytes(
        None,
        Some(b"{}"),
        &binary_headers(&[
            ("ce_source", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"),
            ("ce_time", "2026-01-01T10:00:00.123+02:00"),
            ("ce_dataschema", "https://example.com/s.json#/a%7Bb%7D"),
        ]),
    );
    assert!(event(&raw, &Outcome::Valid(0), 1 << 20).get("wrapped").is_none());
}

#[test]
fn a_value_that_only_claims_to_be_a_structured_cloudevent_is_wrapped() {
    let raw = record_bytes(Some("k"), Some(br#"{"foo":1}"#), &[STRUCTURED]);
    let (e, v) = built(&raw, &context(&Outcome::Valid(0), 1 << 20));
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["source"], "kafka://prod/orders");
    assert_eq!(v["data"]["foo"], 1);
    assert!(v.get("foo").is_none());
    assert_eq!(v["wrapped"], "structured-mode value incomplete: no specversion, id, source, type");
    assert!(e.wrapped);
    let cases: [(&[u8], &str); 10] = [
        (b"[1,2]", "is not a JSON object"),
        (b"not json", "is not a JSON object"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":7}"#, "type is not a string"),
        (br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "no id"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","x":{"a":1}}"#, "extension x is not"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","x":1099511627776}"#, "extension x is not"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","x":1.5}"#, "extension x is not"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "both data"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","data_base64":"%%%"}"#, "not a base64"),
        (br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","Bad_Name":1}"#, "is not an attribute name"),
    ];
    for (value, why) in cases {
        let raw = record_bytes(None, Some(value), &[STRUCTURED]);
        let v = event(&raw, &Outcome::Valid(0), 1 << 20);
        assert_eq!(v["id"], "orders-2-41", "{v}");
        let note = v["wrapped"].as_str().unwrap_or_default();
        assert!(note.starts_with("structured-mode value") && note.contains(why), "{note} / {why}");
    }
}

#[test]
fn forged_headers_on_a_wrapped_record_are_still_reported() {
    let raw = record_bytes(None, Some(b"{}"), &[("ce_specversion", "1.0"), ("ce_validation", "valid")]);
    let outcome = invalid();
    let (e, v) = built(&raw, &context(&outcome, 1 << 20));
    assert_eq!(v["validation"], "invalid");
    assert_eq!(v["overridden"], "validation");
    assert_eq!((e.overridden, e.wrapped), (1, true));
}

/// A document with one templated channel and its one message, `signedUp`.
fn users_doc() -> crate::validate::CompiledDoc {
    let doc = crate::asyncapi::load(
        "asyncapi: 2.6.0\ninfo: {title: users, version: 1.0.0}\nchannels:\n  user.{userId}.signedup:\n    \
         publish:\n      message:\n        name: signedUp\n        payload: {type: object}\n",
    )
    .unwrap();
    crate::validate::compile("users", doc).unwrap()
}

#[test]
fn a_templated_channel_s_dataschema_is_a_valid_uri() {
    let compiled = users_doc();
    let route = compiled.route_for("user.42.signedup").unwrap();
    let message = &route.messages[0];
    assert_eq!(message.dataschema, "urn:eventgate:spec:users#/channels/user.%7BuserId%7D.signedup/publish/message");
    assert!(is_absolute_uri(&message.dataschema));
    let raw = record_bytes(None, Some(b"{}"), &[]);
    let outcome = Outcome::Valid(0);
    let mut ctx = context(&outcome, 1 << 20);
    ctx.message = Some(message);
    let (e, v) = built(&raw, &ctx);
    assert_eq!(v["dataschema"], message.dataschema.as_str());
    assert_eq!(&*e.ce_type, "signedUp");
}

#[test]
fn oversized_events_omit_data_but_are_not_lost() {
    let big = vec![b'x'; 5000];
    let raw = record_bytes(Some("k"), Some(&big), &[]);
    let (e, v) = built(&raw, &context(&Outcome::Valid(0), 1000));
    assert!(e.data_omitted);
    assert_eq!(v["dataomitted"], true);
    assert_eq!(v["datasize"], 5000);
    assert!(v.get("data_base64").is_none() && v.get("data").is_none());
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["subject"], "k");
}

#[test]
fn an_event_too_large_without_its_data_keeps_eventgate_s_attributes_only() {
    let long = "x".repeat(3000);
    let raw =
        record_bytes(Some(&long), Some(b"{}"), &binary_headers(&[("ce_note", long.as_str()), ("ce_offset", "1")]));
    let (e, v) = built(&raw, &context(&Outcome::Valid(0), 1000));
    assert!(e.json.len() < 1000, "{}", e.json.len());
    assert!(e.data_omitted && e.wrapped);
    assert_eq!(v["id"], "orders-2-41");
    assert_eq!(v["offset"], "41");
    assert_eq!(v["overridden"], "offset");
    assert_eq!(v["wrapped"], "the event is too large even without its data");
    assert!(v.get("subject").is_none() && v.get("note").is_none());
}

#[test]
fn an_empty_configured_type_falls_back() {
    let raw = record_bytes(None, Some(b"{}"), &[]);
    let outcome = Outcome::Valid(0);
    let mut ctx = context(&outcome, 1 << 20);
    ctx.default_type = "";
    assert_eq!(built(&raw, &ctx).1["type"], "eventgate.record");
}

/// The checks eventgate makes on a producer's attributes never let through what the official
/// schema's format checks refuse.
#[test]
fn attribute_checks_are_no_looser_than_the_schema_formats() {
    let schema = |format: &str| {
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(&serde_json::json!({ "format": format }))
            .unwrap()
    };
    let (uri, uri_ref, date_time) = (schema("uri"), schema("uri-reference"), schema("date-time"));
    let samples = [
        "",
        "/a/b",
        "a b",
        "a:b",
        "1-555-123-4567",
        "mailto:x@y",
        "http://[::1]:80/x",
        "http://[::1/x",
        "http://h:port/",
        "http://a@b@c/",
        "urn:x#/a/{b}",
        "urn:x#/a/%7Bb%7D",
        "urn:x#/a/%7",
        "//host/path?q#f",
        "x:/a\\b",
        ":nope",
        "é",
        "2026-01-01T00:00:00Z",
        "2026-01-01t00:00:00z",
        "2026-01-01 00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-31T23:59:60Z",
        "2026-06-30T23:59:60+01:00",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00",
        "0000-01-01T00:00:00Z",
    ];
    for s in samples {
        let v = Value::from(s);
        assert!(!is_uri_reference(s) || uri_ref.is_valid(&v), "uri-reference {s:?}");
        assert!(!is_absolute_uri(s) || uri.is_valid(&v), "uri {s:?}");
        assert!(!is_rfc3339(s) || date_time.is_valid(&v), "date-time {s:?}");
    }
    assert!(is_uri_reference("/a/b") && is_absolute_uri("urn:x#/a/%7Bb%7D") && is_rfc3339("2026-01-01T00:00:00Z"));
}

#[test]
fn the_producer_s_principal_and_client_id_are_eventgate_s_own() {
    let outcome = Outcome::Unchecked("no document".into());
    let mut ctx = context(&outcome, 1 << 20);
    ctx.principal = Some("alice");
    ctx.client_id = Some("billing-app");
    // The producer claims to be someone else in binary-mode headers: eventgate's values win.
    let raw = record_bytes(
        Some("k"),
        Some(b"{}"),
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "x"),
            ("ce_source", "/s"),
            ("ce_type", "t"),
            ("ce_principal", "mallory"),
        ],
    );
    let (_, v) = built(&raw, &ctx);
    assert_eq!(v["principal"], "alice");
    assert_eq!(v["clientid"], "billing-app");
    assert_eq!(v["overridden"], "principal");
    // Unknown: absent, not empty.
    let (_, v) = built(&raw, &context(&outcome, 1 << 20));
    assert!(v.get("principal").is_none() && v.get("clientid").is_none(), "{v}");
}

#[test]
fn a_type_with_line_breaks_or_too_long_is_wrapped() {
    let outcome = Outcome::Unchecked("no document".into());
    let ctx = context(&outcome, 1 << 20);
    let long = "t".repeat(MAX_TYPE_BYTES + 1);
    for bad in ["a\nb", long.as_str()] {
        let raw = record_bytes(
            Some("k"),
            Some(b"{}"),
            &[("ce_specversion", "1.0"), ("ce_id", "x"), ("ce_source", "/s"), ("ce_type", bad)],
        );
        let (e, v) = built(&raw, &ctx);
        assert!(e.wrapped, "{v}");
        assert_ne!(v["type"], bad);
        assert!(v["wrapped"].as_str().unwrap().contains("type"), "{v}");
    }
}

/// The `time` attribute of a record timestamp is what the `time` crate's RFC 3339 formatting
/// writes, fraction and range included.
#[test]
fn record_times_are_written_as_the_time_crate_formats_them() {
    let reference = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        t.format(&time::format_description::well_known::Rfc3339).ok().map(|t| format!("\"{t}\""))
    };
    let mut cases: Vec<i64> = vec![
        0,
        1,
        10,
        100,
        999,
        1000,
        1001,
        1010,
        1100,
        -1,
        -999,
        -1000,
        -1001,
        86_399_999,
        86_400_000,
        1_764_000_000_123,
        1_764_000_000_120,
        1_764_000_000_100,
        951_782_400_000,     // 2000-02-29
        253_402_300_799_999, // 9999-12-31T23:59:59.999Z, the last writable instant
        253_402_300_800_000, // year 10000
        -62_167_219_200_000, // 0000-01-01T00:00:00Z
        -62_167_219_200_001, // year -1
        i64::MIN,
        i64::MAX,
        i64::MIN / 1_000_000,
        i64::MAX / 1_000_000,
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cases.push((x % 600_000_000_000_000) as i64 - 300_000_000_000_000);
    }
    for ms in cases {
        let mut w = Vec::new();
        let wrote = put_rfc3339_ms(&mut w, ms);
        let expected = reference(ms);
        assert_eq!(wrote.then(|| String::from_utf8(w).unwrap_or_default()), expected, "{ms}");
    }
}

/// Events written with a job's shared attributes ([`Prepared`]) are byte for byte the events
/// written attribute by attribute, whatever the record, the outcome, the message and the producer;
/// a context the shared attributes were not made for is written attribute by attribute.
#[test]
fn shared_attributes_write_the_same_bytes() {
    let compiled = users_doc();
    let route = compiled.route_for("user.42.signedup").unwrap();
    let message = &route.messages[0];
    let raws: Vec<Vec<u8>> = vec![
        record_bytes(Some("k1"), Some(br#"{"a":1}"#), &[]),
        record_bytes(None, Some(b"plain text"), &[]),
        record_bytes(None, Some(b"\x00\x01bytes"), &[]),
        record_bytes(Some("k\"q"), None, &[("content-type", "text/plain")]),
        record_bytes(None, Some(b"{}"), &[("ce_specversion", "1.0"), ("ce_validation", "valid")]),
        record_bytes(
            None,
            Some(b"{}"),
            &[("ce_specversion", "1.0"), ("ce_id", "x"), ("ce_source", "/s"), ("ce_type", "t"), ("ce_ext", "v")],
        ),
        record_bytes(
            None,
            Some(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1}}"#),
            &[("content-type", "application/cloudevents+json")],
        ),
        record_bytes(Some("k"), Some(&[b'x'; 5000]), &[]),
    ];
    let outcomes = [Outcome::Valid(0), invalid(), Outcome::Unchecked(Arc::from("no document"))];
    for outcome in &outcomes {
        for with_message in [false, true] {
            for (principal, client_id) in [(None, None), (Some("User:alice"), Some("app \"1\""))] {
                for offset in [Some(41), None] {
                    let mut ctx = context(outcome, 2000);
                    ctx.source = "kafka://prod/or\"ders";
                    ctx.message = with_message.then_some(message);
                    (ctx.principal, ctx.client_id, ctx.offset) = (principal, client_id, offset);
                    let shared = Prepared::new(&ctx);
                    for raw in &raws {
                        let rec = records(raw).next().unwrap().unwrap();
                        let plain = build(&rec, &ctx);
                        let with_shared = build(&rec, &Context { prepared: Some(&shared), ..ctx });
                        assert_eq!(
                            String::from_utf8_lossy(&plain.json),
                            String::from_utf8_lossy(&with_shared.json),
                            "{outcome:?} message {with_message} producer {principal:?}"
                        );
                        // Made for another message: not used, so still the same bytes.
                        let mut other = context(outcome, 2000);
                        other.message = (!with_message).then_some(message);
                        let stale = Prepared::new(&other);
                        let with_stale = build(&rec, &Context { prepared: Some(&stale), ..ctx });
                        assert_eq!(plain.json, with_stale.json);
                    }
                }
            }
        }
    }
}

/// The shared attributes are used for the plain events they describe, and only for those: a
/// marked copy shows up in a plain record's event, never in a producer's own CloudEvent, a wrapped
/// record's event, or the event of a context with another default type, partition or producer.
#[test]
fn shared_attributes_are_used_exactly_where_they_fit() {
    let outcome = Outcome::Valid(0);
    let ctx = context(&outcome, 1 << 20);
    let mut marked = Prepared::new(&ctx);
    marked.source_type = br#","source":"MARK","type":"MARK""#.to_vec();
    let json_of = |raw: &[u8], ctx: &Context<'_>| {
        let rec = records(raw).next().unwrap().unwrap();
        String::from_utf8(build(&rec, ctx).json.to_vec()).unwrap()
    };
    let with_mark = Context { prepared: Some(&marked), ..ctx };
    let plain = record_bytes(Some("k"), Some(br#"{"a":1}"#), &[]);
    assert!(json_of(&plain, &with_mark).contains("MARK"), "a plain record's event uses them");
    let own = [
        record_bytes(
            None,
            Some(b"{}"),
            &[("ce_specversion", "1.0"), ("ce_id", "x"), ("ce_source", "/s"), ("ce_type", "t")],
        ),
        record_bytes(
            None,
            Some(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#),
            &[("content-type", "application/cloudevents+json")],
        ),
        record_bytes(None, Some(b"{}"), &[("ce_specversion", "1.0")]),
        record_bytes(None, Some(b"{}"), &[("ce_specversion", "1.0"), ("ce_validation", "invalid")]),
    ];
    for raw in &own {
        assert!(!json_of(raw, &with_mark).contains("MARK"), "{}", json_of(raw, &ctx));
    }
    let others = [
        Context { default_type: "other.type", ..with_mark },
        Context { partition: 3, ..with_mark },
        Context { source: "kafka://prod/payments", ..with_mark },
        Context { principal: Some("User:mallory"), ..with_mark },
        Context { client_id: Some("another"), ..with_mark },
    ];
    for other in &others {
        assert!(!json_of(&plain, other).contains("MARK"));
        assert_eq!(json_of(&plain, other), json_of(&plain, &Context { prepared: None, ..*other }));
    }
}
