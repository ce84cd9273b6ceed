//! The browser console, in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven by Selenium from `tests/clients/console.py`, against an eventgate in
//! front of tansu with NATS, while a real Kafka client (librdkafka) produces. Each test also saves
//! screenshots of the views it shows (`target/console-screenshots/`, or
//! `$EVENTGATE_SCREENSHOTS`; the README's come from `EVENTGATE_SCREENSHOTS=docs/console`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::receiver::Receiver;
use support::*;

const TOPIC: &str = "event-gateway-demo";
const OTHER: &str = "console-other";
const TOKEN: &str = "console-test-token";

struct Setup {
    tansu: Tansu,
    _nats: Nats,
    eg: Eventgate,
}

fn setup() -> Setup {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    tansu.create_topic(OTHER, 1);
    let nats = Nats::start();
    let eg = Eventgate::start(
        &tansu.addr(),
        &["--spec", &repo_path("asyncapi/demo.yaml"), "--nats-url", &nats.url(), "--admin-token", TOKEN],
    );
    Setup { tansu, _nats: nats, eg }
}

fn shots() -> String {
    std::env::var("EVENTGATE_SCREENSHOTS").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots").display().to_string()
    })
}

/// Runs one scenario of `console.py`; its JSON report.
fn browse(scenario: &str, args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/console.py");
    let out = Command::new(python_bin())
        .arg(script)
        .arg(scenario)
        .args(args)
        .args(["--shots", &shots()])
        .env("SE_OFFLINE", "true")
        .output()
        .expect("run the browser driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "console.py {scenario} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("console.py printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

#[test]
fn an_invalid_record_appears_live_with_its_errors_and_the_topic_filter_hides_other_topics() {
    let s = setup();
    let url = s.eg.http("/");
    let r = browse(
        "events",
        &["--url", &url, "--token", TOKEN, "--bootstrap", &s.eg.addr(), "--topic", TOPIC, "--other-topic", OTHER],
    );
    let appeared = r["appeared_ms"].as_u64().expect("appeared_ms");
    eprintln!("the invalid record appeared in the table {appeared} ms after it was produced");
    assert!(appeared <= 2000, "the invalid record took {appeared} ms to appear: {r}");
    assert_eq!(r["row"]["col-topic"], TOPIC, "{r}");
    assert_eq!(r["row"]["col-type"], "com.example.streetlights.light.measured", "{r}");
    assert!(r["badge"].as_str().is_some_and(|c| c.contains("badge-invalid")), "{r}");
    // The validator's error, with the schema location in the document that decided it.
    let errors: Vec<&str> = r["errors"].as_array().expect("errors").iter().filter_map(Value::as_str).collect();
    assert!(
        errors.iter().any(|e| e.contains("/lumens")
            && e.contains("minimum")
            && e.contains("#/components/schemas/lightMeasuredPayload/properties/lumens/minimum")),
        "each error names the instance path and the schema location: {errors:?}"
    );
    assert_eq!(r["topics_shown_after_filter"], serde_json::json!([TOPIC]), "{r}");
    assert_eq!(r["other_topic_shown"], false, "{r}");
    assert!(r["narrow_overflow_px"].as_i64().is_some_and(|px| px <= 0), "the page scrolls sideways when narrow: {r}");
    assert_eq!(r["unlabelled"], serde_json::json!([]), "every field has a label: {r}");
    assert_eq!(r["low_contrast"], serde_json::json!([]), "every text meets WCAG AA contrast: {r}");
}

#[test]
fn documents_upload_with_line_and_column_validation_rates_and_subscriptions() {
    let s = setup();
    // Traffic for the rates view, and a subscription for the subscriptions view.
    produce_values(&s.eg.addr(), TOPIC, &[r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#], 5, &[]);
    produce_values(&s.eg.addr(), TOPIC, &[r#"{"lumens":3,"sentAt":"2026-01-01T00:00:00Z"}"#], 15, &[]);
    let receiver = Receiver::start();
    let resources = format!(
        "apiVersion: eventgate/v1\nkind: Channel\nmetadata: {{name: hook}}\nspec: {{url: '{}'}}\n---\n\
         apiVersion: eventgate/v1\nkind: Subscription\nmetadata: {{name: invalid-lights}}\n\
         spec: {{channel: hook, topics: ['{TOPIC}'], validation: [invalid], start: all}}\n",
        receiver.url("/hook")
    );
    let (code, body) = http("POST", &s.eg.http("/apply"), Some(&resources), &[&auth()]);
    assert_eq!(code, 200, "{body}");

    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("lights.yaml");
    std::fs::write(&good, repo_file("asyncapi/demo.yaml").replace("event-gateway-demo", "console-uploaded"))
        .expect("write");
    let broken = "asyncapi: 3.0.0\ninfo:\n  title: Broken\n  version: 1.0.0\nchannels:\n  a: [unclosed\n";
    let r = browse(
        "documents",
        &[
            "--url",
            &s.eg.http("/"),
            "--token",
            TOKEN,
            "--topic",
            TOPIC,
            "--doc",
            "demo",
            "--broken-text",
            broken,
            "--good-file",
            &good.display().to_string(),
        ],
    );
    let upload_error = r["upload_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(upload_error.contains("line 6"), "the error names the line: {r}");
    assert!(upload_error.contains("column"), "and the column: {r}");
    assert!(r["error_context"].as_str().is_some_and(|c| c.contains("[unclosed") && c.contains('^')), "{r}");
    let (code, _) = http("GET", &s.eg.http("/specs/uploaded"), None, &[]);
    assert_eq!(code, 200, "the document picked from a file was uploaded");
    assert!(r["validate"]["class"].as_str().is_some_and(|c| c.contains("outcome-invalid")), "{r}");
    assert!(r["validate"]["text"].as_str().is_some_and(|t| t.contains("lumens")), "{r}");
    assert_eq!(r["rate"]["col-topic"], TOPIC, "{r}");
    assert!(r["rate"]["col-invalid-share"].as_str().is_some_and(|t| t.contains("25")), "5 of 20 invalid: {r}");
    assert!(r["sparklines"].as_u64().is_some_and(|n| n >= 1), "{r}");
    assert!(r["subscription"].as_str().is_some_and(|t| t.contains("invalid-lights")), "{r}");
    assert_eq!(r["unlabelled"], serde_json::json!([]), "every field has a label: {r}");
    assert_eq!(r["low_contrast"], serde_json::json!([]), "every text meets WCAG AA contrast: {r}");
    drop(s.tansu);
}

#[test]
fn a_wrong_token_is_refused_and_the_page_stays_read_only() {
    let s = setup();
    let r = browse("wrong-token", &["--url", &s.eg.http("/"), "--token", "not-the-token"]);
    assert!(r["status"].as_str().is_some_and(|t| t.to_lowercase().contains("refused")), "{r}");
    assert_eq!(r["rows"], 0, "no events without the token: {r}");
    assert!(r["documents"].as_u64().is_some_and(|n| n >= 1), "documents are readable without a token: {r}");
}

/// The console's own HTTP answers: the page and its files with a strict CSP, unknown files 404,
/// the rates endpoint, and the websocket probe (a plain GET learns what an upgrade would get).
#[test]
fn the_console_is_served_with_a_strict_policy_and_the_probe_answers_like_the_upgrade() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let eg = Eventgate::start(&tansu.addr(), &["--spec", &repo_path("asyncapi/demo.yaml"), "--admin-token", TOKEN]);
    let headers = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--path-as-is", "-D", "-", "-o", "/dev/null", &eg.http(path)])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let index = headers("/");
    assert!(index.starts_with("http/1.1 200"), "{index}");
    assert!(index.contains("content-security-policy: default-src 'self'; script-src 'self'"), "{index}");
    assert!(index.contains("x-content-type-options: nosniff"), "{index}");
    assert!(headers("/console/app.js").contains("content-type: text/javascript"));
    assert!(headers("/console/../Cargo.toml").starts_with("http/1.1 404"));
    assert!(headers("/console/nothing.js").starts_with("http/1.1 404"));

    produce_values(&eg.addr(), TOPIC, &[r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#], 2, &[]);
    let (code, body) = http("GET", &eg.http("/stats/topics"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let t = v["topics"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["topic"] == TOPIC))
        .unwrap_or_else(|| panic!("the topic in {v}"))
        .clone();
    let sum = |k: &str| t[k].as_array().map(|a| a.iter().filter_map(Value::as_u64).sum::<u64>()).unwrap_or(0);
    assert_eq!((sum("records"), sum("invalid"), sum("valid")), (2, 2, 0), "{v}");
    assert_eq!(t["records"].as_array().map(Vec::len), Some(60));

    let (code, _) = http("GET", &eg.http("/ws"), None, &[]);
    assert_eq!(code, 401, "no token: what the upgrade would get");
    let (code, body) = http("GET", &eg.http("/ws?topic=a..b"), None, &[&auth()]);
    assert_eq!(code, 400, "a bad filter: {body}");
    let (code, body) = http("GET", &eg.http("/ws?topic=orders"), None, &[&auth()]);
    assert_eq!(code, 426, "all is well, upgrade to watch: {body}");
}
