//! Validation on the produce path with real tansu, eventgate and clients: annotate, reject, every
//! codec, idempotent producers, live document uploads, and the spec API.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde_json::Value;
use support::*;

const TOPIC: &str = "event-gateway-demo";
const GOOD: &str = r#"{"lumens":42,"sentAt":"2026-01-01T00:00:00Z"}"#;
const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;
const NOT_JSON: &str = "lumens=7";

fn demo_args() -> Vec<String> {
    vec!["--spec".into(), repo_path("asyncapi/demo.yaml")]
}

fn start(tansu: &Tansu, extra: &[&str]) -> Eventgate {
    let mut args: Vec<String> = demo_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Eventgate::start(&tansu.addr(), &refs)
}

fn annotation(record: &Value) -> Option<Value> {
    header(record, "_asyncapi_eg_validation_error").map(|h| serde_json::from_str(&h).expect("annotation is JSON"))
}

/// Checks the records of a good/bad/not-JSON cycle: only the invalid ones are annotated, and no
/// value changed.
fn assert_annotated(records: &[Value], values: &[&str]) {
    assert!(!records.is_empty());
    for r in records {
        let value = r["value"].as_str().expect("value");
        assert!(values.contains(&value), "value altered: {value}");
        match (value, annotation(r)) {
            (GOOD, None) => {}
            (GOOD, Some(a)) => panic!("valid record annotated: {a}"),
            (_, None) => panic!("invalid record not annotated: {r}"),
            (v, Some(a)) => {
                let ts = a["ts"].as_str().expect("ts");
                assert!(ts.ends_with('Z') && ts.len() == 30, "ts {ts}");
                let errors: Vec<&str> = a["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                let expected =
                    if v == BAD { "/lumens: -1 is less than the minimum of 0" } else { "/: payload is not JSON" };
                assert!(errors[0].starts_with(expected), "{errors:?}");
            }
        }
    }
}

#[test]
fn annotate_marks_invalid_records_and_forwards_everything() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let eg = start(&tansu, &[]);
    let values = [GOOD, BAD, NOT_JSON];
    let f = values_file(&values);
    let p = client(
        "ck-produce",
        &["--bootstrap", &eg.addr(), "--topic", TOPIC, "--values-file", f.path().to_str().unwrap(), "--count", "60"],
    );
    assert_eq!(p["delivered"], 60, "{p}");
    let got = consume(&tansu.addr(), TOPIC, 60, 2);
    assert_eq!(got.len(), 60);
    assert_annotated(&got, &values);
    assert_eq!(got.iter().filter(|r| annotation(r).is_some()).count(), 40);
    let (status, metrics) = http("GET", &eg.http("/metrics"), None, &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("eventgate_records_validated_total{outcome=\"invalid\"} 40"), "{metrics}");
}

#[test]
fn every_codec_is_re_encoded_with_annotations() {
    let tansu = Tansu::start();
    let eg = start(&tansu, &[]);
    let values = [GOOD, BAD, NOT_JSON];
    let f = values_file(&values);
    let path = f.path().to_str().unwrap().to_owned();
    tansu.create_topic(TOPIC, 1);
    let mut expected = 0;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        // librdkafka writes raw snappy; kafka-python writes the xerial framing Java uses.
        for (cmd, prefix) in [("ck-produce", "ck"), ("kp-produce", "kp")] {
            let p = client(
                cmd,
                &[
                    "--bootstrap",
                    &eg.addr(),
                    "--topic",
                    TOPIC,
                    "--values-file",
                    &path,
                    "--count",
                    "30",
                    "--compression",
                    codec,
                    "--prefix",
                    &format!("{prefix}-{codec}"),
                ],
            );
            assert_eq!(p["delivered"], 30, "{cmd} {codec}: {p}");
            expected += 30;
        }
    }
    let got = consume(&tansu.addr(), TOPIC, expected, 1);
    assert_eq!(got.len(), expected);
    assert_annotated(&got, &values);
    // Consumers read them through eventgate as well.
    let through = consume(&eg.addr(), TOPIC, expected, 1);
    assert_eq!(through.len(), expected);
}

#[test]
fn idempotent_producer_accepts_annotated_batches() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 3);
    let eg = start(&tansu, &[]);
    let values = [GOOD, BAD, NOT_JSON];
    let f = values_file(&values);
    for codec in ["none", "zstd"] {
        let p = client(
            "ck-produce",
            &[
                "--bootstrap",
                &eg.addr(),
                "--topic",
                TOPIC,
                "--values-file",
                f.path().to_str().unwrap(),
                "--count",
                "300",
                "--idempotent",
                "--compression",
                codec,
                "--prefix",
                codec,
            ],
        );
        assert_eq!(p["errors"], Value::Array(vec![]), "{p}");
        assert_eq!(p["delivered"], 300);
    }
    let got = consume(&tansu.addr(), TOPIC, 600, 3);
    assert_eq!(got.len(), 600);
    assert_annotated(&got, &values);
}

#[test]
fn reject_mode_fails_the_producer_with_invalid_record() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let eg = start(&tansu, &["--topic-policy", &format!("{TOPIC}=reject")]);
    let f = values_file(&[BAD]);
    let p = client(
        "ck-produce",
        &["--bootstrap", &eg.addr(), "--topic", TOPIC, "--values-file", f.path().to_str().unwrap(), "--count", "1"],
    );
    assert_eq!(p["delivered"], 0, "{p}");
    let errors = p["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().unwrap().contains("INVALID_RECORD") || e.as_str().unwrap().contains("Invalid record")),
        "{p}"
    );
    let f = values_file(&[GOOD]);
    let p = client(
        "ck-produce",
        &["--bootstrap", &eg.addr(), "--topic", TOPIC, "--values-file", f.path().to_str().unwrap(), "--count", "1"],
    );
    assert_eq!(p["delivered"], 1, "{p}");
    let got = consume(&tansu.addr(), TOPIC, 1, 1);
    assert_eq!(got[0]["value"], GOOD);
}

fn batch(values: &[&str]) -> Bytes {
    use eventgate::wire::compression::{Codec, Framing};
    use eventgate::wire::records::{BatchHeader, write_batch, write_record};
    let mut section = Vec::new();
    for (i, v) in values.iter().enumerate() {
        write_record(&mut section, 0, i as i32, Some(b"k"), Some(v.as_bytes()), std::iter::empty());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let header = BatchHeader::new(values.len() as i32, Codec::None, now);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

fn produce_frame(version: i16, acks: i16, partitions: &[(i32, &[&str])]) -> Vec<u8> {
    let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str(TOPIC))).with_partition_data(
            partitions
                .iter()
                .map(|(p, v)| PartitionProduceData::default().with_index(*p).with_records(Some(batch(v))))
                .collect(),
        ),
    ]);
    let b = eventgate::wire::header::request_frame(ApiKey::Produce, version, 77, "raw", &req).unwrap();
    b.to_vec()
}

#[test]
fn reject_mode_lands_valid_partitions_of_the_same_request() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 3);
    let eg = start(&tansu, &["--topic-policy", &format!("{TOPIC}=reject")]);
    for version in [3i16, 7, 8, 9, 12] {
        let mut s = TcpStream::connect(("127.0.0.1", eg.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&produce_frame(version, -1, &[(0, &[GOOD]), (1, &[GOOD, BAD]), (2, &[GOOD])])).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let h = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, 77);
        let resp = ProduceResponse::decode(&mut body, version).unwrap();
        let parts = &resp.responses[0].partition_responses;
        let codes: Vec<(i32, i16)> = parts.iter().map(|p| (p.index, p.error_code)).collect();
        assert_eq!(codes, vec![(0, 0), (1, 87), (2, 0)], "v{version}");
        if version >= 8 {
            assert_eq!(parts[1].record_errors[0].batch_index, 1);
            let msg = parts[1].error_message.as_ref().unwrap().to_string();
            assert!(msg.contains("/lumens: -1 is less than the minimum of 0"), "{msg}");
        }
    }
    let got = consume(&tansu.addr(), TOPIC, 10, 3);
    assert_eq!(got.len(), 10, "5 requests x partitions 0 and 2");
    assert!(got.iter().all(|r| r["partition"] != 1 && r["value"] == GOOD));
}

#[test]
fn acks_zero_refusal_closes_the_connection() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let eg = start(&tansu, &["--topic-policy", &format!("{TOPIC}=reject")]);
    let mut s = TcpStream::connect(("127.0.0.1", eg.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&produce_frame(9, 0, &[(0, &[GOOD]), (1, &[BAD])])).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "connection must be closed");
    let got = consume(&tansu.addr(), TOPIC, 1, 2);
    assert_eq!(got[0]["partition"], 0, "the valid partition still landed");
    wait_until("the refusal to be logged", Duration::from_secs(10), || eg.proc.log_text().contains("acks=0"));
}

#[test]
fn uploading_a_document_while_producers_run_takes_effect_without_errors() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let bootstrap = eg.addr();
    let producer = std::thread::spawn(move || {
        produce_values(&bootstrap, TOPIC, &[GOOD, BAD], 1200, &["--rate", "300", "--linger-ms", "1"])
    });
    // Upload once the producer is under way.
    wait_until("records to flow", Duration::from_secs(20), || {
        eg.metric("eventgate_kafka_requests_total{api=\"Produce\"}") >= 20.0
    });
    let (status, body) = http("PUT", &eg.http("/specs/demo"), Some(&repo_file("asyncapi/demo.yaml")), &[]);
    assert_eq!(status, 201, "{body}");
    let p = producer.join().unwrap();
    assert_eq!(p["errors"], Value::Array(vec![]), "{p}");
    assert_eq!(p["delivered"], 1200);
    let got = consume(&tansu.addr(), TOPIC, 1200, 2);
    let annotated = got.iter().filter(|r| annotation(r).is_some()).count();
    assert!(annotated > 0 && annotated < 600, "only records after the upload are annotated: {annotated}");
    assert!(got.iter().all(|r| r["value"] == GOOD || r["value"] == BAD));
}

#[test]
fn asyncapi_2_document_validates_keys_headers_and_parameterized_topics() {
    let tansu = Tansu::start();
    let topic = "smartylighting.streetlights.1.0.event.lamp7.lighting.measured";
    tansu.create_topic(topic, 1);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let (status, body) =
        http("PUT", &eg.http("/specs/lights"), Some(&repo_file("tests/fixtures/asyncapi/streetlights-2.6.yaml")), &[]);
    assert_eq!(status, 201, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["asyncapi"], "2.6.0");
    let mut produce = Command::new("kcat")
        .args(["-b", &eg.addr(), "-P", "-t", topic, "-K", "|", "-H", "my-app-header=7"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    produce.stdin.take().unwrap().write_all(format!("light-1|{GOOD}\nlamp-1|{GOOD}\n").as_bytes()).unwrap();
    assert!(produce.wait().unwrap().success());
    let got = consume(&tansu.addr(), topic, 2, 1);
    let by_key = |k: &str| got.iter().find(|r| r["key"] == k).unwrap().clone();
    assert!(annotation(&by_key("light-1")).is_none());
    let a = annotation(&by_key("lamp-1")).unwrap();
    assert_eq!(
        a["errors"][0],
        r#"key: "lamp-1" does not match "^light-[0-9]+$" (schema #/components/messages/lightMeasured/bindings/kafka/key/pattern)"#
    );
}

#[test]
fn spec_api_refuses_broken_documents_and_conflicts_and_guards_mutations() {
    let tansu = Tansu::start();
    let spec_dir = tempfile::tempdir().unwrap();
    let dir = spec_dir.path().to_str().unwrap().to_owned();
    let eg = Eventgate::start(&tansu.addr(), &["--admin-token", "s3cret", "--spec-dir", &dir]);
    let auth = "Authorization: Bearer s3cret";
    let demo = repo_file("asyncapi/demo.yaml");

    assert_eq!(http("PUT", &eg.http("/specs/demo"), Some(&demo), &[]).0, 401);
    // Watching traffic needs the token too.
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: ZXZlbnRnYXRlZGVtbzEyMw==",
    ];
    assert_eq!(http("GET", &eg.http("/ws"), None, &upgrade).0, 401);
    assert_eq!(http("PUT", &eg.http("/specs/demo"), Some(&demo), &["Authorization: Bearer wrong"]).0, 401);
    let (status, body) = http("PUT", &eg.http("/specs/demo"), Some(&demo), &[auth]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(http("PUT", &eg.http("/specs/demo"), Some(&demo), &[auth]).0, 200, "replacing");

    let (status, body) = http("PUT", &eg.http("/specs/copy"), Some(&demo), &[auth]);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("event-gateway-demo") && body.contains("demo"), "{body}");

    for (fixture, needle) in [
        ("broken-syntax.yaml", "line 5 column 9"),
        ("broken-ref.yaml", "#/components/messages/doesNotExist"),
        ("broken-schema.yaml", "/channels/a/messages/m/payload/properties/n/minimum"),
        ("external-ref.yaml", "https://example.com/messages.yaml#/Thing"),
        ("external-refs.yaml", "; and 5 more"),
        ("version-short.yaml", "MAJOR.MINOR.PATCH"),
    ] {
        let (status, body) = http(
            "PUT",
            &eg.http("/specs/broken"),
            Some(&repo_file(&format!("tests/fixtures/asyncapi/{fixture}"))),
            &[auth],
        );
        assert_eq!(status, 400, "{fixture}: {body}");
        assert!(body.contains(needle), "{fixture}: {body}");
    }

    let (status, list) = http("GET", &eg.http("/specs"), None, &[]);
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["id"], "demo");
    assert_eq!(list[0]["title"], "Event Gateway Demo");
    assert_eq!(list[0]["version"], "1.0.0");
    assert_eq!(list[0]["topics"][0], TOPIC);
    assert_eq!(list[0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(http("GET", &eg.http("/specs/demo"), None, &[]).1, demo);

    let (status, body) = http(
        "POST",
        &eg.http("/specs/demo/validate"),
        Some(r#"{"value": {"lumens": -2, "sentAt": "2026-01-01T00:00:00Z"}}"#),
        &["content-type: application/json"],
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outcome"], "invalid");
    assert_eq!(
        v["errors"][0],
        "/lumens: -2 is less than the minimum of 0 (schema #/components/schemas/lightMeasuredPayload/properties/lumens/minimum)"
    );

    // Persisted across a restart.
    drop(eg);
    let eg = Eventgate::start(&tansu.addr(), &["--admin-token", "s3cret", "--spec-dir", &dir]);
    let (_, list) = http("GET", &eg.http("/specs"), None, &[]);
    assert!(list.contains("\"id\":\"demo\""), "{list}");
    assert_eq!(http("DELETE", &eg.http("/specs/demo"), None, &[]).0, 401);
    assert_eq!(http("DELETE", &eg.http("/specs/demo"), None, &[auth]).0, 204);
    assert_eq!(http("DELETE", &eg.http("/specs/demo"), None, &[auth]).0, 404);
    assert_eq!(http("GET", &eg.http("/specs/demo"), None, &[]).0, 404);
}

#[test]
fn offline_validate_and_lint_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_eventgate");
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let demo = repo_path("asyncapi/demo.yaml");
    assert_eq!(run(&["validate", "--spec", &demo, "-"], GOOD).0, Some(0));
    let (code, out) = run(&["validate", "--spec", &demo, "-"], BAD);
    assert_eq!(code, Some(1));
    assert!(out.contains("/lumens: -1 is less than the minimum of 0"), "{out}");
    assert_eq!(
        run(&["validate", "--spec", &repo_path("tests/fixtures/asyncapi/broken-ref.yaml"), "-"], GOOD).0,
        Some(2)
    );
    assert_eq!(run(&["lint", &demo], "").0, Some(0));
    let (code, out) = run(&["lint", &repo_path("tests/fixtures/asyncapi/broken-schema.yaml")], "");
    assert_eq!(code, Some(1));
    assert!(out.contains("minimum"), "{out}");
    // AsyncAPI 3.1 loads; a version eventgate does not read is refused with the ones it does.
    let (code, out) = run(&["lint", &repo_path("tests/fixtures/asyncapi/ledger-3.1.yaml")], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(AsyncAPI 3.1.0)") && out.contains("topic ledger.entries.v1: entry"), "{out}");
    let (code, out) = run(&["lint", &repo_path("tests/fixtures/asyncapi/version-3.2.yaml")], "");
    assert_eq!(code, Some(1));
    assert!(out.contains("eventgate reads 2.0.0–2.6.0, 3.0.0, 3.1.0"), "{out}");
    // YAML 1.1 booleans are strings: `enum: [on, off]` allows "on", and `required: [n]` names `n`.
    let switches = repo_path("tests/fixtures/asyncapi/switches-2.3.yaml");
    assert_eq!(run(&["validate", "--spec", &switches, "-"], r#"{"n": false, "command": "on"}"#).0, Some(0));
    let (code, out) = run(&["validate", "--spec", &switches, "-"], r#"{"command": true}"#);
    assert_eq!(code, Some(1));
    assert!(out.contains(r#""n" is a required property"#), "{out}");
}
