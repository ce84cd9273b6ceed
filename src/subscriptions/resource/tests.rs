use super::*;

const SET: &str = r#"
apiVersion: eventgate/v1
kind: Variable
metadata: {name: token}
spec: {value: "{{sys:EG_TEST_TOKEN}}", secret: true}
---
apiVersion: eventgate/v1
kind: Channel
metadata: {name: hook}
spec:
  url: "http://127.0.0.1:9000/in"
  headers: {X-Token: "t-{{ token }}"}
  auth: {token: "{{token}}", in: query}
  mode: batch
  batch: {maxEvents: 10, maxWait: 50ms}
---
apiVersion: eventgate/v1
kind: Subscription
metadata: {name: invalid-orders}
spec:
  channel: hook
  topics: ["orders.>"]
  validation: [invalid]
  filters: [{not: {exact: {type: x}}}]
  delivery: {retry: 3, backoffPolicy: linear, backoffDelay: PT0.5S}
"#;

fn env(name: &str) -> Option<String> {
    (name == "EG_TEST_TOKEN").then(|| "s3cret".to_owned())
}

fn set(text: &str) -> Resources {
    let mut r = Resources::default();
    for doc in parse_documents(text).expect("parses") {
        r.insert(doc);
    }
    r
}

#[test]
fn a_set_parses_with_defaults_and_resolves_variables_and_the_environment() {
    let r = set(SET);
    r.check(&env).expect("consistent");
    let ch = r.resolve_channel("hook", &env).expect("resolves");
    assert_eq!(ch.headers, vec![("X-Token".to_owned(), "t-s3cret".to_owned())]);
    assert_eq!(ch.url.as_str(), "http://127.0.0.1:9000/in?access_token=s3cret");
    assert_eq!(ch.url_template, "http://127.0.0.1:9000/in", "errors name the URL as written");
    assert_eq!((ch.mode, ch.batch_events, ch.batch_wait), (Mode::Batch, 10, Duration::from_millis(50)));
    assert_eq!(ch.timeout, Duration::from_secs(10), "default timeout");
    let Some(Resource { spec: Spec::Subscription(s), .. }) = r.get(Kind::Subscription, "invalid-orders") else {
        panic!("subscription")
    };
    assert_eq!(s.delivery.concurrency, 16);
    assert_eq!(s.delivery.max_delay, "PT5M");
}

#[test]
fn a_secret_is_never_shown_and_no_resolved_value_appears_in_a_debug_print() {
    let r = set(SET);
    let shown = r.get(Kind::Variable, "token").map(|v| v.to_value(false)).expect("variable").to_string();
    assert!(!shown.contains("EG_TEST_TOKEN") && shown.contains("\"secret\":true"), "{shown}");
    let ch = r.resolve_channel("hook", &env).expect("resolves");
    assert!(!format!("{ch:?}").contains("s3cret"));
}

#[test]
fn unresolved_references_name_the_resource_and_field() {
    let r = set(SET);
    let err = r.check(&|_| None).expect_err("no environment");
    assert_eq!(err.at, "Variable/token: spec.value");
    assert!(err.message.contains("EG_TEST_TOKEN"), "{err}");
    let r = set(&SET.replace("{{ token }}", "{{missing}}"));
    let err = r.check(&env).expect_err("no such variable");
    assert_eq!(err.at, "Channel/hook: spec.headers.X-Token");
    assert!(err.message.contains("no Variable `missing`"));
    let r = set(&SET.replace("channel: hook", "channel: nowhere"));
    assert_eq!(r.check(&env).expect_err("no channel").at, "Subscription/invalid-orders: spec.channel");
}

#[test]
fn bad_resources_are_refused_with_where_and_why() {
    let doc = |kind: &str, spec: &str| {
        format!("apiVersion: eventgate/v1\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n")
    };
    let cases = [
        (doc("Channel", "{url: 'ftp://h/'}"), "spec.url"),
        (doc("Channel", "{url: 'http://h/', timeout: forever}"), "spec.timeout"),
        (doc("Channel", "{url: 'http://h/', headers: {Content-Type: x}}"), "spec.headers.Content-Type"),
        (doc("Channel", "{url: 'http://u:p@h/'}"), "spec.url"),
        (doc("Channel", "{url: 'http://h/', batch: {maxEvents: 0}}"), "spec.batch.maxEvents"),
        (doc("Channel", "{url: 'http://h/', colour: red}"), "spec"),
        (doc("Subscription", "{channel: c, topics: ['a.>.b']}"), "spec.topics"),
        (doc("Subscription", "{channel: c, filters: [{sql: 'x'}]}"), "spec"),
        (doc("Subscription", "{channel: c, delivery: {concurrency: 0}}"), "spec.delivery.concurrency"),
        (
            doc("Subscription", "{channel: c, delivery: {deadLetter: {subject: 'a.*'}}}"),
            "spec.delivery.deadLetter.subject",
        ),
        (doc("Variable", "{value: '{{other}}'}"), "spec.value"),
        (doc("Variable", "{value: '{{sys:EVENTGATE_ADMIN_TOKEN}}'}"), "spec.value"),
        (
            doc("Channel", "{url: 'http://h/', headers: {authorization: x}, auth: {token: t}}"),
            "spec.headers.Authorization",
        ),
        (
            doc("Subscription", "{channel: c, delivery: {deadLetter: {subject: '$JS.API.STREAM.DELETE.X'}}}"),
            "spec.delivery.deadLetter.subject",
        ),
        (doc("Widget", "{}"), "document 1"),
        ("apiVersion: eventgate/v2\nkind: Channel\nmetadata: {name: x}\nspec: {url: 'http://h/'}".into(), "apiVersion"),
        (
            "apiVersion: eventgate/v1\nkind: Channel\nmetadata: {name: Bad_Name}\nspec: {url: 'http://h/'}".into(),
            "metadata.name",
        ),
    ];
    for (text, field) in cases {
        let err = parse_documents(&text).expect_err(&text);
        assert!(err.at.ends_with(field), "{text}: {err}");
    }
    let big = doc("Variable", &format!("{{value: '{}'}}", "x".repeat(MAX_VALUE_BYTES + 1)));
    assert!(parse_documents(&big).is_err());
}

#[test]
fn durations_read_iso_8601_and_short_forms() {
    for (text, ms) in [
        ("PT1.5S", 1500),
        ("PT2M", 120_000),
        ("P1D", 86_400_000),
        ("P1DT1H", 90_000_000),
        ("500ms", 500),
        ("2s", 2000),
        ("1m", 60_000),
        ("1h", 3_600_000),
    ] {
        assert_eq!(parse_duration(text).map(|d| d.as_millis()), Ok(ms), "{text}");
    }
    for bad in ["", "P", "PT", "PT1", "1", "1d", "PTS", "P1H", "PT1S2M", "-1s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_documents_and_arrays_read_like_yaml() {
    let json = r#"[{"apiVersion":"eventgate/v1","kind":"Channel","metadata":{"name":"a"},"spec":{"url":"http://h/"}}]"#;
    assert_eq!(parse_documents(json).expect("json").len(), 1);
    assert_eq!(parse_documents("---\n").expect("empty").len(), 0);
}

#[test]
fn users_are_found_before_a_delete() {
    let r = set(SET);
    assert_eq!(r.users_of(Kind::Channel, "hook"), vec!["Subscription/invalid-orders".to_owned()]);
    assert_eq!(r.users_of(Kind::Variable, "token"), vec!["Channel/hook".to_owned()]);
    assert!(r.users_of(Kind::Subscription, "invalid-orders").is_empty());
}
