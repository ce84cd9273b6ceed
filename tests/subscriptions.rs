//! Subscriptions with real parts: tansu, nats-server (JetStream), eventgate, librdkafka producers
//! and an HTTP receiver (`tests/clients/receiver.py`) that parses every delivery with the official
//! CloudEvents Python SDK and answers as each test scripts it.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::receiver::{Receiver, accepted_events};
use support::stream::read_stream_named;
use support::*;

const TOPIC: &str = "event-gateway-demo";
const GOOD: &str = r#"{"lumens":42,"sentAt":"2026-01-01T00:00:00Z"}"#;
const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;
const CE_TYPE: &str = "com.example.streetlights.light.measured";

/// tansu with the demo topic (one partition, so offsets follow production order), NATS, and an
/// eventgate with the demo document.
struct Setup {
    tansu: Tansu,
    nats: Nats,
    eg: Eventgate,
}

fn setup(extra: &[&str]) -> Setup {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let nats = Nats::start();
    let eg = gateway(&tansu, &nats, extra, &[]);
    Setup { tansu, nats, eg }
}

fn gateway(tansu: &Tansu, nats: &Nats, extra: &[&str], env: &[(&str, &str)]) -> Eventgate {
    let mut args = vec!["--spec".to_owned(), repo_path("asyncapi/demo.yaml"), "--nats-url".to_owned(), nats.url()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Eventgate::start_with_env(&tansu.addr(), &refs, env)
}

/// `POST /apply` with YAML; the status and the JSON answer.
fn apply(eg: &Eventgate, yaml: &str, query: &str) -> (u16, Value) {
    let (status, body) = http("POST", &eg.http(&format!("/apply{query}")), Some(yaml), &[]);
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn apply_ok(eg: &Eventgate, yaml: &str) -> Value {
    let (status, v) = apply(eg, yaml, "");
    assert_eq!(status, 200, "apply failed: {v}");
    v
}

/// A Channel `name` to `url` with extra spec lines (YAML flow mapping entries).
fn channel(name: &str, url: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: eventgate/v1\nkind: Channel\nmetadata: {{name: {name}}}\nspec: {{url: '{url}', {extra}}}\n"
    )
}

/// A Subscription `name` to channel `ch`, starting with the stream's first event.
fn subscription(name: &str, ch: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: eventgate/v1\nkind: Subscription\nmetadata: {{name: {name}}}\nspec: {{channel: {ch}, topics: ['{TOPIC}'], start: all, {extra}}}\n"
    )
}

/// Fast retries for tests.
const FAST: &str = "delivery: {retry: 5, backoffDelay: 50ms, maxDelay: 200ms}";

fn status(eg: &Eventgate, name: &str) -> Value {
    let (code, body) = http("GET", &eg.http(&format!("/subscriptions/{name}")), None, &[]);
    assert_eq!(code, 200, "GET /subscriptions/{name}: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["status"].clone()
}

fn count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// Waits until `name` has settled `n` events (delivered, filtered or dead-lettered).
fn wait_settled(eg: &Eventgate, name: &str, n: u64) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("{name} to settle {n} events"), Duration::from_secs(60), || {
        last = status(eg, name);
        count(&last, "delivered") + count(&last, "filtered") + count(&last, "dead_lettered") >= n
    });
    last
}

fn produce(eg: &Eventgate, values: &[&str], n: usize) {
    let p = produce_values(&eg.addr(), TOPIC, values, n, &[]);
    assert_eq!(p["delivered"], n, "{p}");
}

fn requests_to<'a>(received: &'a Value, path: &str) -> Vec<&'a Value> {
    received["requests"].as_array().into_iter().flatten().filter(|r| r["path"] == path).collect()
}

fn events_to(received: &Value, path: &str) -> Vec<Value> {
    requests_to(received, path)
        .into_iter()
        .filter(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
        .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn each_mode_and_filter_dialect_delivers_what_the_subscription_selects() {
    let s = setup(&[]);
    let rx = Receiver::start();
    let url = |p: &str| rx.url(p);
    let mut yaml = String::new();
    yaml += &channel("binary", &url("/binary"), "mode: binary");
    yaml += &channel("structured", &url("/structured"), "mode: structured");
    yaml += &channel("batch", &url("/batch"), "mode: batch, batch: {maxEvents: 7, maxWait: 200ms}");
    // Binary mode, invalid records only.
    yaml += &subscription("invalid", "binary", &format!("validation: [invalid], {FAST}"));
    // Batch mode, everything.
    yaml += &subscription("all-batched", "batch", FAST);
    // Structured mode, one subscription per dialect, each to its own path.
    let dialects = [
        ("exact", json!([{"exact": {"validation": "valid"}}]), 10),
        ("prefix", json!([{"prefix": {"type": "com.example.streetlights."}}]), 20),
        ("suffix", json!([{"suffix": {"id": "5"}}]), 2),
        ("all", json!([{"all": [{"exact": {"validation": "invalid"}}, {"prefix": {"offset": "1"}}]}]), 6),
        ("any", json!([{"any": [{"exact": {"offset": "0"}}, {"exact": {"offset": "1"}}]}]), 2),
        ("not", json!([{"not": {"exact": {"validation": "valid"}}}]), 10),
        ("types", json!([]), 20),
    ];
    for (name, filters, _) in &dialects {
        yaml += &channel(&format!("to-{name}"), &url(&format!("/{name}")), "mode: structured");
        let types = if *name == "types" { format!("types: ['{CE_TYPE}'], ") } else { String::new() };
        yaml += &subscription(name, &format!("to-{name}"), &format!("{types}filters: {filters}, {FAST}"));
    }
    yaml += &subscription("structured", "structured", &format!("types: ['no.such.type'], {FAST}"));
    let report = apply_ok(&s.eg, &yaml);
    assert_eq!(report["summary"]["created"], 3 + 3 + dialects.len() as u64 * 2, "{report}");

    // Offsets 0..20: even ones valid, odd ones invalid.
    produce(&s.eg, &[GOOD, BAD], 20);
    for (name, _, expected) in &dialects {
        let st = wait_settled(&s.eg, name, 20);
        assert_eq!(count(&st, "delivered"), *expected, "{name}: {st}");
    }
    wait_settled(&s.eg, "invalid", 20);
    wait_settled(&s.eg, "all-batched", 20);
    assert_eq!(count(&wait_settled(&s.eg, "structured", 20), "filtered"), 20);
    let got = rx.wait_accepted(20, Duration::from_secs(30));

    // Binary: the ten invalid records, each parsed by the SDK from ce-* headers and its body.
    let binary = events_to(&got, "/binary");
    assert_eq!(binary.len(), 10, "{got}");
    for r in requests_to(&got, "/binary") {
        assert_eq!(r["mode"], "binary");
    }
    for e in &binary {
        assert_eq!(e["extensions"]["validation"], "invalid");
        assert_eq!(e["type"], CE_TYPE);
        assert_eq!(e["data"], serde_json::from_str::<Value>(BAD).unwrap(), "the record's data, unchanged");
        assert!(e["extensions"]["validationerrors"].as_str().is_some_and(|t| t.contains("lumens")), "{e}");
    }
    // Batch: all twenty, in requests of at most seven.
    let batched = events_to(&got, "/batch");
    assert_eq!(batched.len(), 20);
    for r in requests_to(&got, "/batch") {
        assert_eq!(r["mode"], "batch");
        assert!(r["events"].as_array().unwrap().len() <= 7, "{r}");
    }
    // Structured: each dialect's events arrived as application/cloudevents+json.
    for (name, _, expected) in &dialects {
        let events = events_to(&got, &format!("/{name}"));
        assert_eq!(events.len(), *expected as usize, "{name}");
        for r in requests_to(&got, &format!("/{name}")) {
            assert_eq!(r["mode"], "structured");
        }
    }
    // The receiver counts duplicates across paths; each path got each event once.
    for path in ["/binary", "/batch", "/exact", "/prefix", "/suffix", "/all", "/any", "/not", "/types"] {
        let ids: Vec<Value> = events_to(&got, path).iter().map(|e| e["id"].clone()).collect();
        let distinct: std::collections::BTreeSet<String> = ids.iter().map(Value::to_string).collect();
        assert_eq!(ids.len(), distinct.len(), "{path} got an event twice");
    }
    assert!(requests_to(&got, "/structured").is_empty(), "a type nobody produces selects nothing");
}

#[test]
fn a_500_is_retried_with_backoff_until_it_succeeds() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [{"status": 500, "times": 2, "body": "try later"}]}));
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", FAST)));
    produce(&s.eg, &[GOOD], 1);
    let got = rx.wait_accepted(1, Duration::from_secs(30));
    let statuses: Vec<u64> =
        got["requests"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [500, 500, 200]);
    let st = status(&s.eg, "s");
    assert_eq!((count(&st, "delivered"), count(&st, "retried")), (1, 2), "{st}");
    assert_eq!(st["last_error"]["status"], 500, "{st}");
    assert!(st["last_error"]["error"].as_str().unwrap().contains("try later"), "{st}");
    assert!(st["last_success"].is_string());
    assert_eq!(s.eg.metric("eventgate_subscription_events_total{subscription=\"s\",outcome=\"retried\"}"), 2.0);
}

#[test]
fn a_429_waits_as_long_as_retry_after_says_up_to_the_cap() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [{"status": 429, "headers": {"Retry-After": "2"}}]}));
    let capped = Receiver::start();
    capped.script(json!({"answers": [{"status": 503, "headers": {"Retry-After": "3600"}}]}));
    let mut yaml = channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", FAST);
    yaml += &channel("capped", &capped.url("/in"), "");
    yaml += &subscription("c", "capped", "delivery: {retry: 3, backoffDelay: 10ms, retryAfterMax: PT1S}");
    apply_ok(&s.eg, &yaml);
    produce(&s.eg, &[GOOD], 1);
    let got = rx.wait_accepted(1, Duration::from_secs(30));
    let at: Vec<f64> = got["requests"].as_array().unwrap().iter().map(|r| r["at"].as_f64().unwrap()).collect();
    assert_eq!(at.len(), 2, "{got}");
    assert!(at[1] - at[0] >= 1.9, "the retry came {}s after the 429 with Retry-After: 2", at[1] - at[0]);
    // Retry-After: 3600 is cut to retryAfterMax (1 s): delivered long before an hour.
    capped.wait_accepted(1, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_at_once_and_exhausted_retries_after_the_last() {
    let s = setup(&[]);
    let refusing = Receiver::start();
    // A sink that answers with a megabyte: eventgate reads 4 KiB of it, keeps 1 KiB of text.
    let long = format!("field lumens is wrong{}", "!".repeat(1 << 20));
    refusing.script(json!({"answers": [], "then": {"status": 400, "body": long}}));
    let failing = Receiver::start();
    failing.script(json!({"answers": [], "then": {"status": 500}}));
    let mut yaml = channel("refusing", &refusing.url("/in"), "") + &subscription("refused", "refusing", FAST);
    yaml += &channel("failing", &failing.url("/in"), "");
    yaml += &subscription("exhausted", "failing", "delivery: {retry: 2, backoffDelay: 20ms}");
    apply_ok(&s.eg, &yaml);
    produce(&s.eg, &[BAD], 1);
    wait_settled(&s.eg, "refused", 1);
    wait_settled(&s.eg, "exhausted", 1);
    assert_eq!(refusing.received()["requests"].as_array().unwrap().len(), 1, "a 400 is never retried");
    assert_eq!(failing.received()["requests"].as_array().unwrap().len(), 3, "one attempt and two retries");

    let letters = read_stream_named(&s.nats.url(), "EVENTGATE_DEADLETTER", "", 2, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 2);
    let by_sub = |sub: &str| {
        letters
            .iter()
            .map(|l| &l.event)
            .find(|e| {
                e["deliverydest"].as_str()
                    == Some((if sub == "refused" { refusing.url("/in") } else { failing.url("/in") }).as_str())
            })
            .cloned()
            .unwrap_or_else(|| panic!("no dead letter for {sub}"))
    };
    let refused = by_sub("refused");
    assert_eq!(refused["deliverycode"], 400);
    let error = refused["deliveryerror"].as_str().unwrap();
    assert!(error.starts_with("the sink refused the event with 400: field lumens is wrong"), "{error}");
    assert!(error.chars().count() <= 1024, "the error text is cut: {} chars", error.chars().count());
    assert_eq!(refused["deliveryattempts"], 1);
    assert_eq!(refused["id"], format!("{TOPIC}-0-0"), "the event itself, with the delivery extensions");
    assert_eq!(refused["data"], serde_json::from_str::<Value>(BAD).unwrap());
    let exhausted = by_sub("exhausted");
    assert_eq!((exhausted["deliverycode"].clone(), exhausted["deliveryattempts"].clone()), (json!(500), json!(3)));
    let st = status(&s.eg, "refused");
    assert_eq!(count(&st, "dead_lettered"), 1, "{st}");
}

#[test]
fn a_410_pauses_the_subscription_until_it_is_resumed() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [{"status": 410, "body": "gone for good"}]}));
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", FAST)));
    produce(&s.eg, &[GOOD], 3);
    let mut st = Value::Null;
    wait_until("the subscription to pause", Duration::from_secs(30), || {
        st = status(&s.eg, "s");
        st["paused"].is_object()
    });
    assert!(st["paused"]["error"].as_str().unwrap().contains("gone for good"), "{st}");
    assert_eq!(s.eg.metric("eventgate_subscription_paused{subscription=\"s\"}"), 1.0);
    let before = rx.received()["requests"].as_array().unwrap().len();
    produce(&s.eg, &[GOOD], 2);
    // Nothing is sent while paused (deliveries already in flight at the 410 finish): the new
    // events wait in the consumer.
    let mut st = Value::Null;
    let mut waiting = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            st = status(&s.eg, "s");
            if count(&st, "pending") >= 2 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(waiting(), "the new events should wait in the consumer: {st}");
    assert_eq!(rx.received()["requests"].as_array().unwrap().len(), before);
    let (code, body) = http("POST", &s.eg.http("/subscriptions/s/resume"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let got = rx.wait_accepted(5, Duration::from_secs(60));
    assert_eq!(got["duplicates"], 0);
}

#[test]
fn a_receiver_down_for_30_seconds_loses_nothing() {
    let s = setup(&[]);
    let mut rx = Receiver::start();
    let delivery = "delivery: {retry: 100, backoffDelay: PT0.5S, maxDelay: PT4S}";
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "timeout: 2s") + &subscription("s", "hook", delivery)));
    produce(&s.eg, &[GOOD, BAD], 4);
    rx.wait_accepted(4, Duration::from_secs(30));
    rx.stop();
    let down = Instant::now();
    produce(&s.eg, &[GOOD, BAD], 40);
    wait_until("30 s of outage, with retries", Duration::from_secs(60), || {
        down.elapsed() >= Duration::from_secs(30) && count(&status(&s.eg, "s"), "retried") > 0
    });
    let port = rx.port;
    rx = Receiver::start_on(port);
    let got = rx.wait_accepted(40, Duration::from_secs(60));
    let ids: std::collections::BTreeSet<String> =
        accepted_events(&got).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let expected: std::collections::BTreeSet<String> = (4..44).map(|o| format!("{TOPIC}-0-{o}")).collect();
    assert_eq!(ids, expected, "every event produced during the outage, once the receiver was back");
}

#[test]
fn eventgate_killed_mid_delivery_loses_nothing_and_its_successor_resumes() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [], "then": {"status": 200, "delay_ms": 100}}));
    let delivery = "delivery: {retry: 10, backoffDelay: 100ms, concurrency: 4}";
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "timeout: 1s") + &subscription("s", "hook", delivery)));
    produce(&s.eg, &[GOOD, BAD], 60);
    rx.wait_accepted(10, Duration::from_secs(30));
    let Setup { tansu, nats, mut eg } = s;
    eg.proc.signal_and_wait("KILL", Duration::from_secs(10)).expect("eventgate killed");
    // The resources are in JetStream: the new instance takes the subscription up by itself.
    let eg2 = gateway(&tansu, &nats, &[], &[]);
    rx.wait_accepted(60, Duration::from_secs(90));
    // What the killed instance had in flight comes again once its acknowledgement deadline passes
    // (2 × 1 s timeout + 5 s): wait until the consumer has nothing handed out.
    wait_until("every event acknowledged", Duration::from_secs(60), || {
        let st = status(&eg2, "s");
        st["in_flight"] == 0 && st["pending"] == 0
    });
    let got = rx.received();
    let ids: std::collections::BTreeSet<String> =
        accepted_events(&got).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 60, "every event delivered");
    // At least once: what was in flight at the kill may come twice; the receiver dedups by id.
    eprintln!("duplicates after SIGKILL: {}", got["duplicates"]);
    // At most what the consumer had handed out (4 rounds of the concurrency of 4).
    assert!(got["duplicates"].as_u64().unwrap() <= 16, "at most what was in flight: {}", got["duplicates"]);
}

#[test]
fn two_instances_share_one_subscription_and_deliver_each_event_once() {
    let s = setup(&[]);
    let eg2 = gateway(&s.tansu, &s.nats, &[], &[]);
    let rx = Receiver::start();
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", FAST)));
    produce(&s.eg, &[GOOD, BAD], 100);
    produce(&eg2, &[GOOD], 100);
    let got = rx.wait_accepted(200, Duration::from_secs(60));
    assert_eq!(got["duplicates"], 0, "each event once in normal operation");
    let delivered = |eg: &Eventgate| count(&status(eg, "s"), "delivered");
    wait_until("both instances' counts to add up", Duration::from_secs(20), || {
        delivered(&s.eg) + delivered(&eg2) == 200
    });
    eprintln!("instance 1 delivered {}, instance 2 {}", delivered(&s.eg), delivered(&eg2));
}

#[test]
fn variables_resolve_from_resources_and_the_environment_and_secrets_stay_hidden() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let nats = Nats::start();
    let eg = gateway(&tansu, &nats, &["--admin-token", "admin"], &[("EG_HOOK_TOKEN", "s3cret-from-env")]);
    let rx = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resources.yaml");
    let full = format!(
        "apiVersion: eventgate/v1\nkind: Variable\nmetadata: {{name: token}}\nspec: {{value: '{{{{sys:EG_HOOK_TOKEN}}}}', secret: true}}\n\
         ---\napiVersion: eventgate/v1\nkind: Variable\nmetadata: {{name: tenant}}\nspec: {{value: acme}}\n{}{}",
        channel("hook", &rx.url("/in"), "headers: {X-Tenant: 'tenant-{{tenant}}'}, auth: {token: '{{token}}'}"),
        subscription("s", "hook", FAST)
    );
    std::fs::write(&file, &full).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventgate"))
            .arg("apply")
            .arg("-f")
            .arg(&file)
            .args(["--server", &eg.http(""), "--token", "admin"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("subscription/s created") && out.contains("4 created, 0 updated, 0 unchanged, 0 deleted"),
        "{out}"
    );
    // Idempotent.
    let (_, out, _) = cli(&[]);
    assert!(out.contains("0 created, 0 updated, 4 unchanged, 0 deleted"), "{out}");

    produce(&eg, &[GOOD], 1);
    let got = rx.wait_accepted(1, Duration::from_secs(30));
    let headers = &got["requests"][0]["headers"];
    assert_eq!(headers["authorization"], "Bearer s3cret-from-env");
    assert_eq!(headers["x-tenant"], "tenant-acme");

    // Secrets are never returned; templates are shown as written. Resources may hold credentials:
    // reading them needs the token too.
    let auth = ["Authorization: Bearer admin"];
    for path in ["/variables", "/variables/token", "/channels/hook", "/subscriptions/s", "/subscriptions"] {
        let (code, body) = http("GET", &eg.http(path), None, &auth);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body.contains("s3cret"), "{path} showed the secret: {body}");
        assert_eq!(http("GET", &eg.http(path), None, &[]).0, 401, "{path} without the token");
    }
    let (_, body) = http("GET", &eg.http("/channels/hook"), None, &auth);
    assert!(body.contains("{{token}}"), "{body}");
    let (_, body) = http("GET", &eg.http("/variables/tenant"), None, &auth);
    assert!(body.contains("acme"), "a variable that is not secret is shown: {body}");

    // Mutations need the token.
    let (code, _) = http("DELETE", &eg.http("/subscriptions/s"), None, &[]);
    assert_eq!(code, 401);
    // Still used: refused with who uses it.
    let (code, body) = http("DELETE", &eg.http("/channels/hook"), None, &["Authorization: Bearer admin"]);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Subscription/s"), "{body}");

    // An unresolved reference is refused at apply time, naming the resource and the field.
    std::fs::write(&file, full.replace("{{tenant}}", "{{nobody}}")).unwrap();
    let (code, _, err) = cli(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Channel/hook: spec.headers.X-Tenant") && err.contains("no Variable `nobody`"), "{err}");

    // --prune removes what the files no longer declare.
    let without_sub = full.split("---\napiVersion: eventgate/v1\nkind: Subscription").next().unwrap().to_owned();
    std::fs::write(&file, without_sub).unwrap();
    let (code, out, err) = cli(&["--prune", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("subscription/s deleted (dry run)"), "{out}");
    let (code, out, _) = cli(&["--prune"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 created, 0 updated, 3 unchanged, 1 deleted"), "{out}");
    let (code, _) = http("GET", &eg.http("/subscriptions/s"), None, &auth);
    assert_eq!(code, 404);
}

#[test]
fn sinks_in_denied_networks_are_refused_at_apply_time() {
    let s = setup(&["--sink-deny-networks", "169.254.0.0/16,127.0.0.2/32"]);
    let (code, v) = apply(&s.eg, &channel("meta", "http://169.254.169.254/latest/meta-data", ""), "");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Channel/meta: spec.url"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("denied network"), "{v}");
    let (code, v) = apply(&s.eg, &channel("ipv6-mapped", "http://[::ffff:127.0.0.2]:80/", ""), "");
    assert_eq!(code, 400, "an IPv4-mapped address is checked as IPv4: {v}");
}

#[test]
fn resources_that_are_too_many_or_malformed_are_refused_clearly() {
    let s = setup(&[]);
    let (code, v) = apply(&s.eg, &subscription("s", "nowhere", ""), "");
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("no Channel `nowhere`"), "{v}");
    let (code, v) = apply(&s.eg, &subscription("s", "c", "filters: [{sql: \"type = 'x'\"}]"), "");
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("dialect `sql` is not supported"), "{v}");
    let mut many = String::new();
    for i in 0..=256 {
        many += &channel(&format!("c{i}"), "http://127.0.0.1:9/", "");
    }
    let (code, v) = apply(&s.eg, &many, "");
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("at most 256"), "{v}");
    let (code, v) = apply(&s.eg, "apiVersion: eventgate/v1\nkind: Channel\nmetadata: {name: x}\nspec: {url: [}", "");
    assert_eq!(code, 400, "{v}");
    // A dead-letter subject outside --deadletter-prefix could reach JetStream's API or the mirror.
    for subject in ["$JS.API.STREAM.PURGE.EVENTGATE", "eventgate.records.event-gateway-demo", "elsewhere"] {
        let yaml = channel("c", "http://127.0.0.1:9/", "")
            + &subscription("s", "c", &format!("delivery: {{deadLetter: {{subject: '{subject}'}}}}"));
        let (code, v) = apply(&s.eg, &yaml, "");
        assert_eq!(code, 400, "{subject}: {v}");
        assert!(v["error"].as_str().unwrap().contains("spec.delivery.deadLetter.subject"), "{v}");
    }
    // eventgate's own settings are not readable by resources.
    let (code, v) =
        apply(&s.eg, &channel("c", "http://127.0.0.1:9/", "headers: {X-Leak: '{{sys:EVENTGATE_ADMIN_TOKEN}}'}"), "");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("EVENTGATE_"), "{v}");
    // PUT of one resource, by its spec alone.
    let (code, body) = http("PUT", &s.eg.http("/channels/one"), Some("{\"url\": \"http://127.0.0.1:9/\"}"), &[]);
    assert_eq!(code, 201, "{body}");
    let (code, _) = http("PUT", &s.eg.http("/channels/one"), Some("url: http://127.0.0.1:9/x"), &[]);
    assert_eq!(code, 200);
}

#[test]
fn without_nats_subscriptions_are_refused_with_the_reason() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let (code, v) = apply(&eg, &channel("c", "http://127.0.0.1:9/", ""), "");
    assert_eq!(code, 409);
    assert_eq!(v["kind"], "nats_required", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--nats-url"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventgate"))
        .args(["serve", "--upstream", &tansu.addr(), "--resources", &repo_path("resources/demo.yaml")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("subscriptions need NATS"), "{out:?}");
}

#[test]
fn a_hanging_sink_holds_only_the_events_in_flight_and_each_times_out() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [], "then": {"status": 200, "delay_ms": 30000}}));
    let delivery = "delivery: {retry: 1000, backoffDelay: 100ms, maxDelay: 200ms, concurrency: 3}";
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "timeout: 300ms") + &subscription("s", "hook", delivery)));
    produce(&s.eg, &[GOOD], 50);
    wait_until("deliveries to time out and be retried", Duration::from_secs(30), || {
        count(&status(&s.eg, "s"), "retried") >= 6
    });
    for _ in 0..5 {
        let st = status(&s.eg, "s");
        // The consumer hands out four rounds of the concurrency (events waiting for a retry stay
        // handed out); eventgate itself holds at most the three it is sending.
        assert!(count(&st, "in_flight") <= 12, "at most 4 × concurrency events are handed out: {st}");
        assert_eq!(count(&st, "delivered"), 0);
    }
    let st = status(&s.eg, "s");
    assert!(st["last_error"]["error"].as_str().unwrap().contains("timed out"), "{st}");
    // The same in /metrics (refreshed every 5 s): the lag and what is handed out.
    wait_until("the subscription's gauges", Duration::from_secs(20), || {
        let in_flight = s.eg.metric("eventgate_subscription_in_flight{subscription=\"s\"}");
        let pending = s.eg.metric("eventgate_subscription_pending{subscription=\"s\"}");
        (1.0..=12.0).contains(&in_flight) && in_flight + pending >= 50.0 - 12.0
    });
    assert!(s.eg.metric("eventgate_subscription_last_error_timestamp_seconds{subscription=\"s\"}") > 1.7e9);
}

#[test]
fn the_webhook_handshake_is_asked_first_and_a_refusal_holds_delivery() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.handshake(json!({"allowed_origin": null}));
    let hs = "handshake: {enabled: true}";
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), hs) + &subscription("s", "hook", FAST)));
    produce(&s.eg, &[GOOD], 3);
    wait_until("the refused handshake to show", Duration::from_secs(30), || {
        status(&s.eg, "s")["last_error"]["error"].as_str().is_some_and(|e| e.contains("handshake"))
    });
    assert!(rx.received()["requests"].as_array().unwrap().is_empty(), "nothing is sent without consent");
    rx.handshake(json!({"allowed_origin": "eventgate", "allowed_rate": "600"}));
    let got = rx.wait_accepted(3, Duration::from_secs(60));
    let hs = got["handshakes"].as_array().unwrap();
    assert!(hs.iter().all(|h| h["headers"]["webhook-request-origin"] == "eventgate"), "{got}");
    let last_hs = hs.last().unwrap()["seq"].as_u64().unwrap();
    assert!(got["requests"].as_array().unwrap().iter().all(|r| r["seq"].as_u64().unwrap() > last_hs));
}

#[test]
fn ordered_delivery_keeps_stream_order_through_retries() {
    let s = setup(&[]);
    let rx = Receiver::start();
    rx.script(json!({"answers": [{"status": 503, "times": 3}]}));
    let delivery = "delivery: {ordering: ordered, retry: 10, backoffDelay: 50ms}";
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", delivery)));
    produce(&s.eg, &[GOOD, BAD], 15);
    let got = rx.wait_accepted(15, Duration::from_secs(60));
    let ids: Vec<String> = accepted_events(&got).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..15).map(|o| format!("{TOPIC}-0-{o}")).collect();
    assert_eq!(ids, expected);
}

#[test]
fn replay_delivers_again_from_a_stream_position() {
    let s = setup(&[]);
    let rx = Receiver::start();
    apply_ok(&s.eg, &(channel("hook", &rx.url("/in"), "") + &subscription("s", "hook", FAST)));
    produce(&s.eg, &[GOOD], 10);
    rx.wait_accepted(10, Duration::from_secs(30));
    let (code, body) = http("POST", &s.eg.http("/subscriptions/s/replay?start_seq=6"), None, &[]);
    assert_eq!(code, 200, "{body}");
    wait_until("events 6..10 again", Duration::from_secs(30), || {
        rx.received()["duplicates"].as_u64().unwrap_or(0) >= 5
    });
    let (code, _) = http("POST", &s.eg.http("/subscriptions/s/replay?start_time=yesterday"), None, &[]);
    assert_eq!(code, 400);
}

#[test]
fn a_new_subscription_sees_every_event_mirrored_after_apply_answered() {
    let s = setup(&[]);
    let rx = Receiver::start();
    produce(&s.eg, &[GOOD], 3);
    let yaml = channel("hook", &rx.url("/in"), "")
        + &format!(
            "---\napiVersion: eventgate/v1\nkind: Subscription\nmetadata: {{name: s}}\nspec: {{channel: hook, topics: ['{TOPIC}'], start: new}}\n"
        );
    apply_ok(&s.eg, &yaml);
    // At once: the consumer exists when apply answers.
    produce(&s.eg, &[BAD], 5);
    let got = rx.wait_accepted(5, Duration::from_secs(30));
    let ids: Vec<String> = accepted_events(&got).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, (3..8).map(|o| format!("{TOPIC}-0-{o}")).collect::<Vec<_>>(), "only what came after apply");
}

#[test]
fn a_subscription_in_the_cloudevents_subscriptions_api_shape_is_accepted_and_shown_back() {
    let s = setup(&[]);
    let rx = Receiver::start();
    let body = json!({
        "id": "api",
        "sink": rx.url("/api"),
        "protocol": "HTTP",
        "protocolsettings": {"method": "PUT", "headers": {"X-Team": "lights"}},
        "sinkcredential": {"credentialtype": "ACCESSTOKEN", "accesstoken": "tok-123"},
        "types": [CE_TYPE],
        "filters": [{"exact": {"validation": "invalid"}}],
    });
    let (code, answer) = http("PUT", &s.eg.http("/subscriptions/api"), Some(&body.to_string()), &[]);
    assert_eq!(code, 201, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["id"], "api");
    assert_eq!(v["sink"], rx.url("/api"));
    assert_eq!(v["protocol"], "HTTP");
    assert_eq!(v["types"], json!([CE_TYPE]));
    assert!(!answer.contains("tok-123"), "the access token is never shown: {answer}");
    produce(&s.eg, &[GOOD, BAD], 4);
    let got = rx.wait_accepted(2, Duration::from_secs(30));
    let r = &got["requests"][0];
    assert_eq!((r["method"].as_str(), r["headers"]["authorization"].as_str()), (Some("PUT"), Some("Bearer tok-123")));
    assert_eq!(r["headers"]["x-team"], "lights");
    assert!(accepted_events(&got).iter().all(|e| e["extensions"]["validation"] == "invalid"));
    let (_, channel) = http("GET", &s.eg.http("/channels/api"), None, &[]);
    assert!(!channel.contains("tok-123"), "{channel}");
    // What eventgate cannot honour is refused, not ignored.
    for (bad, why) in [
        (json!({"sink": rx.url("/x"), "protocol": "MQTT"}), "protocol `MQTT`"),
        (json!({"sink": rx.url("/x"), "config": {"qos": 1}}), "`config`"),
        (json!({"sink": rx.url("/x"), "filters": [{"sql": "true"}]}), "dialect `sql`"),
        (json!({"sink": rx.url("/x"), "sinkcredential": {"credentialtype": "REFRESHTOKEN"}}), "REFRESHTOKEN"),
    ] {
        let (code, answer) = http("PUT", &s.eg.http("/subscriptions/bad"), Some(&bad.to_string()), &[]);
        assert_eq!(code, 400, "{bad}: {answer}");
        assert!(answer.contains(why), "{answer}");
    }
}

#[test]
fn prune_with_a_selector_deletes_only_what_carries_its_labels() {
    let s = setup(&[]);
    let labelled = |kind: &str, name: &str, team: &str, spec: &str| {
        format!(
            "---\napiVersion: eventgate/v1\nkind: {kind}\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\nspec: {spec}\n"
        )
    };
    let a_channel = labelled("Channel", "a-hook", "a", "{url: 'http://127.0.0.1:9/a'}");
    let a_sub = labelled("Subscription", "a-sub", "a", "{channel: a-hook}");
    let b_channel = labelled("Channel", "b-hook", "b", "{url: 'http://127.0.0.1:9/b'}");
    let b_sub = labelled("Subscription", "b-sub", "b", "{channel: b-hook}");
    apply_ok(&s.eg, &format!("{a_channel}{a_sub}{b_channel}{b_sub}"));
    // Team a's file no longer declares its subscription; team b's resources are not team a's to prune.
    let (code, v) = apply(&s.eg, &a_channel, "?prune=true&selector=team%3Da");
    assert_eq!(code, 200, "{v}");
    let deleted: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "deleted")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, ["a-sub"], "{v}");
    assert_eq!(http("GET", &s.eg.http("/subscriptions/b-sub"), None, &[]).0, 200);
    assert_eq!(http("GET", &s.eg.http("/subscriptions/a-sub"), None, &[]).0, 404);
    let (code, _) = apply(&s.eg, &a_channel, "?prune=true&selector=nonsense");
    assert_eq!(code, 400);
}

#[test]
fn an_event_larger_than_the_batch_byte_limit_is_still_delivered() {
    // The pull's byte limit once followed the channel's `maxBytes`: the server then refused every
    // pull for an event larger than that, and the subscription never moved on.
    let s = setup(&[]);
    let rx = Receiver::start();
    let big = format!(r#"{{"lumens":1,"sentAt":"2026-01-01T00:00:00Z","pad":"{}"}}"#, "x".repeat(3000));
    let yaml = channel("hook", &rx.url("/in"), "mode: batch, batch: {maxEvents: 10, maxBytes: 1024, maxWait: 50ms}")
        + &subscription("s", "hook", "delivery: {ordering: ordered, retry: 3, backoffDelay: 50ms}");
    apply_ok(&s.eg, &yaml);
    produce(&s.eg, &[&big], 3);
    let got = rx.wait_accepted(3, Duration::from_secs(30));
    // Each event alone: one is already past the batch's byte limit.
    for r in got["requests"].as_array().unwrap() {
        assert_eq!(r["events"].as_array().map(Vec::len), Some(1), "{r}");
    }
}
