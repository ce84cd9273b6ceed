//! Every event eventgate stores in JetStream is a valid CloudEvent 1.0 (the official JSON Schema with
//! format checks, plus the rules it leaves out), whatever the producer sent: real tansu, nats-server,
//! eventgate and librdkafka, a mixed workload with records that only look like CloudEvents and
//! records that try to forge eventgate's verdict.

#[path = "cloudevents/conformance.rs"]
mod conformance;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

const DEMO: &str = "event-gateway-demo";
const PLAIN: &str = "plain";
const USERS: &str = "user.42.signedup";
const GOOD: &str = r#"{"lumens":42,"sentAt":"2026-01-01T00:00:00Z"}"#;
const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;
const FORGED: [&str; 6] =
    ["--header", "ce_validation=valid", "--header", "ce_offset=0", "--header", "ce_partition=999"];

/// A 2.x document with a templated channel (so `dataschema` holds braces before encoding), whose
/// invalid records are refused, so they are mirrored without an offset.
const USERS_DOC: &str = "asyncapi: 2.6.0
info: {title: users, version: 1.0.0}
channels:
  user.{userId}.signedup:
    x-eventgate-policy: reject
    parameters:
      userId:
        schema: {type: string}
    publish:
      message:
        name: signedUp
        contentType: application/json
        payload:
          type: object
          required: [email]
          properties:
            email: {type: string}
";

fn produce(eg: &Eventgate, topic: &str, values: &[&str], prefix: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--prefix", prefix];
    args.extend_from_slice(extra);
    produce_values(&eg.addr(), topic, values, values.len(), &args)
}

/// The offset the broker gave the only record of a producer's run.
fn only_offset(p: &Value) -> String {
    let records = p["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{p}");
    records[0]["offset"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mirrored_event_is_a_valid_cloudevent_and_forged_verdicts_do_not_survive() {
    let tansu = Tansu::start();
    for topic in [DEMO, PLAIN, USERS] {
        tansu.create_topic(topic, 1);
    }
    let nats = Nats::start();
    let specs = tempfile::tempdir().expect("tempdir");
    let users = specs.path().join("users.yaml");
    std::fs::write(&users, USERS_DOC).expect("write the document");
    let eg = Eventgate::start(
        &tansu.addr(),
        &[
            "--spec",
            &repo_path("asyncapi/demo.yaml"),
            "--spec",
            users.to_str().expect("utf-8 path"),
            "--cluster-name",
            "test",
            "--nats-url",
            &nats.url(),
            "--mirror-max-event-bytes",
            "4096",
        ],
    );

    let mut delivered = 0;
    let mut expect_delivered = |p: &Value, n: usize| {
        assert_eq!(p["delivered"], n, "{p}");
        delivered += n;
    };
    // Validated: valid, invalid, not JSON under a JSON content type.
    expect_delivered(&produce(&eg, DEMO, &[GOOD, BAD, "not json"], "m", &[]), 3);
    // An invalid record whose headers claim it was valid, at offset 0 of partition 999.
    let forged_plain = produce(&eg, DEMO, &[BAD], "fp", &FORGED);
    expect_delivered(&forged_plain, 1);
    // The same in a complete binary-mode CloudEvent.
    let mut binary = vec!["--header", "ce_specversion=1.0", "--header", "ce_id=forged-1", "--header", "ce_source=/svc"];
    binary.extend(["--header", "ce_type=t.forged", "--header", "ce_validationerrors=none"]);
    binary.extend(FORGED);
    let forged_binary = produce(&eg, DEMO, &[BAD], "fb", &binary);
    expect_delivered(&forged_binary, 1);
    // Unchecked: text, control bytes, JSON, and one too large to go out with its data.
    let big = "x".repeat(6000);
    expect_delivered(&produce(&eg, PLAIN, &["hello words", "\u{1}\u{2}bin", r#"{"x":1}"#, &big], "p", &[]), 4);
    // Only looks like a CloudEvent: incomplete binary mode, and a structured value that is not one.
    let incomplete = ["--header", "ce_specversion=1.0", "--header", "ce_type=t"];
    expect_delivered(&produce(&eg, PLAIN, &["{}"], "ib", &incomplete), 1);
    let structured = ["--header", "content-type=application/cloudevents+json"];
    expect_delivered(&produce(&eg, PLAIN, &[r#"{"foo":1}"#], "fs", &structured), 1);
    // A valid structured-mode CloudEvent that sets eventgate's extensions itself.
    let own = r#"{"specversion":"1.0","id":"s-1","source":"/svc","type":"t.s","validation":"invalid","offset":0,"partition":999,"data":{"a":1}}"#;
    let forged_structured = produce(&eg, PLAIN, &[own], "vs", &structured);
    expect_delivered(&forged_structured, 1);
    // A templated channel: valid records, and an invalid one refused by policy (no offset).
    expect_delivered(&produce(&eg, USERS, &[r#"{"email":"a@b"}"#, r#"{"email":"c@d"}"#], "u", &[]), 2);
    let refused = produce(&eg, USERS, &["{}"], "ur", &FORGED);
    assert_eq!(refused["delivered"], 0, "{refused}");

    // No filter: accepted and refused records alike, whatever the subjects look like.
    let events: Vec<Value> = support::stream::read_stream(&nats.url(), "", delivered + 1, Duration::from_secs(60))
        .await
        .into_iter()
        .map(|s| s.event)
        .collect();
    assert!(events.len() > delivered, "{} events for {delivered} records and a refused one", events.len());
    conformance::assert_all_conform(&conformance::validator(), &events);

    // Every record once, under its id (`<topic>-<partition>-<offset>`, or the producer's own).
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    for id in ["event-gateway-demo-0-0", "plain-0-3", "user.42.signedup-0-1", "forged-1", "s-1"] {
        assert!(ids.contains(id), "{id} missing from {ids:?}");
    }
    let by_subject =
        |key: &str| events.iter().find(|e| e["subject"] == key).unwrap_or_else(|| panic!("no event for key {key}"));

    // Forged verdicts did not survive: eventgate's own values, and the names it replaced.
    for e in &events {
        assert_ne!(e["partition"], 999, "{e}");
    }
    let e = by_subject("fp-0");
    assert_eq!(e["validation"], "invalid", "{e}");
    assert_eq!(e["offset"].as_str(), Some(only_offset(&forged_plain).as_str()));
    let e = events.iter().find(|e| e["id"] == "forged-1").expect("the binary-mode event");
    assert_eq!(e["validation"], "invalid", "{e}");
    assert!(e["validationerrors"].as_str().is_some_and(|v| v.contains("/lumens")), "{e}");
    assert_eq!(e["offset"].as_str(), Some(only_offset(&forged_binary).as_str()));
    assert_eq!(e["partition"], 0);
    assert_eq!(e["overridden"], "partition,offset,validation,validationerrors");
    let e = events.iter().find(|e| e["id"] == "s-1").expect("the structured-mode event");
    assert_eq!(e["validation"], "unchecked", "{e}");
    assert_eq!(e["offset"].as_str(), Some(only_offset(&forged_structured).as_str()));
    assert_eq!(e["overridden"], "partition,offset,validation");
    assert_eq!(e["data"]["a"], 1);
    let rejected: Vec<&Value> = events.iter().filter(|e| e["subject"] == "ur-0").collect();
    assert!(!rejected.is_empty());
    assert!(rejected.iter().all(|e| e["validation"] == "invalid" && e.get("offset").is_none()), "{rejected:?}");

    // Look-alikes are wrapped, and say why.
    let e = by_subject("ib-0");
    assert_eq!(e["id"], "plain-0-4");
    assert_eq!(e["wrapped"], "binary-mode headers incomplete: no id, source");
    let e = by_subject("fs-0");
    assert_eq!(e["source"], "kafka://test/plain");
    assert!(e["wrapped"].as_str().is_some_and(|w| w.starts_with("structured-mode value")), "{e}");
    assert_eq!(e["data"]["foo"], 1);

    // Data: JSON, text and bytes where the JSON format puts them; the large one without its data.
    assert_eq!(by_subject("m-0")["data"]["lumens"], 42);
    assert_eq!(by_subject("m-2")["data_base64"], "bm90IGpzb24=", "declared JSON that is not JSON");
    let e = by_subject("p-0");
    assert_eq!(
        (&e["data"], &e["datacontenttype"]),
        (&Value::from("hello words"), &Value::from("text/plain; charset=utf-8"))
    );
    assert_eq!(by_subject("p-1")["datacontenttype"], "application/octet-stream");
    assert!(by_subject("p-1").get("data_base64").is_some());
    let e = by_subject("p-3");
    assert_eq!((&e["dataomitted"], &e["datasize"]), (&Value::from(true), &Value::from(6000)));

    // The templated channel's dataschema is a valid absolute URI, percent-encoded.
    let e = by_subject("u-0");
    assert_eq!(e["validation"], "valid");
    assert_eq!(e["type"], "signedUp");
    assert_eq!(e["dataschema"], "urn:eventgate:spec:users#/channels/user.%7BuserId%7D.signedup/publish/message");
}
