//! The whole Produce path with validation and the mirror on: any request is walked, checked under
//! either policy and a small work budget, and every partition that would reach the broker (or is
//! refused by policy) is turned into CloudEvents. Nothing panics, every event is a CloudEvent 1.0
//! (the rules that need no JSON schema), and the events of a partition never outnumber its records.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use eventgate::asyncapi::{Policy, load};
use eventgate::mirror::event::Event;
use eventgate::mirror::{Job, MirrorConfig, expand};
use eventgate::proxy::produce::{Plan, inspect};
use eventgate::telemetry::ValidationMetrics;
use eventgate::validate::{Catalog, Policies, UnknownTopic, Validation, compile};
use eventgate::wire::header::RequestMeta;
use libfuzzer_sys::fuzz_target;

mod common;

const TOPIC: &str = "event-gateway-demo";
/// Small, so the budget runs out often.
const BUDGET: usize = 1 << 20;

fn validation(policy: Policy, unknown: UnknownTopic) -> Validation {
    let mut policies = Policies { unknown_topic: unknown, max_decompressed_bytes: BUDGET, ..Policies::default() };
    policies.overrides.insert(TOPIC.into(), policy);
    let v = Validation::new(policies);
    let doc = compile("demo", load(include_str!("../../asyncapi/demo.yaml")).unwrap()).unwrap();
    v.catalog.store(Arc::new(Catalog::new(vec![Arc::new(doc)]).unwrap()));
    v
}

fn validations() -> &'static [Validation; 4] {
    static V: OnceLock<[Validation; 4]> = OnceLock::new();
    V.get_or_init(|| {
        [
            validation(Policy::Annotate, UnknownTopic::Pass),
            validation(Policy::Reject, UnknownTopic::Pass),
            validation(Policy::Annotate, UnknownTopic::Reject),
            validation(Policy::Reject, UnknownTopic::Reject),
        ]
    })
}

fn config() -> MirrorConfig {
    MirrorConfig {
        cluster: "fuzz".into(),
        default_type: "eventgate.record".into(),
        subject_prefix: "r".into(),
        rejected_prefix: "x".into(),
        max_event_bytes: 64 * 1024,
        buffer_bytes: BUDGET,
        max_decompressed_bytes: BUDGET,
    }
}

/// Expands one job; `emit` never waits, so one poll finishes it.
fn events(job: &Job) -> Vec<Event> {
    let mut all = Vec::new();
    let config = config();
    {
        let mut block = bytes::BytesMut::new();
        let fut = expand(&config, job, &mut block, async |chunk: Vec<Event>| all.extend(chunk));
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(())), "expanding a job never waits");
    }
    all
}

fn check(job: &Job) {
    let out = events(job);
    if let Some(outcomes) = &job.outcomes {
        // A validated partition was read whole: one event per record checked, never more.
        assert!(out.len() <= outcomes.len(), "{} events for {} records", out.len(), outcomes.len());
    }
    // Parsing every event back would make a large batch slow to check; the first ones show the
    // shape, and every event goes through the same builder.
    for e in out.iter().take(64) {
        let v: serde_json::Value = serde_json::from_slice(&e.json).expect("every event is JSON");
        conforms(&v);
    }
}

/// The CloudEvents 1.0 rules a fuzzer can check without the JSON schema (the tests check that too):
/// required attributes, names, `data` or `data_base64`, eventgate's own attributes.
fn conforms(v: &serde_json::Value) {
    let o = v.as_object().expect("an event is a JSON object");
    assert_eq!(o.get("specversion").and_then(|s| s.as_str()), Some("1.0"), "{v}");
    for required in ["id", "source", "type"] {
        assert!(o.get(required).and_then(|s| s.as_str()).is_some_and(|s| !s.is_empty()), "{required}: {v}");
    }
    assert!(!(o.contains_key("data") && o.contains_key("data_base64")), "both data and data_base64: {v}");
    for name in o.keys().filter(|k| !matches!(k.as_str(), "data" | "data_base64")) {
        let ok = (1..=20).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        assert!(ok, "attribute name {name:?}: {v}");
    }
    assert!(o.get("offset").is_none_or(|x| x.is_string()), "offset is a string: {v}");
    assert!(o.get("validation").is_some_and(|x| x.is_string()), "eventgate's verdict is always there: {v}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&[first], body)) = data.split_first_chunk::<1>() else { return };
    // Low bits: the Produce version (3-12); the two high bits: policy and unknown-topic handling.
    let version = i16::from(first & 0x0f) % 10 + 3;
    let v = &validations()[usize::from(first >> 6)];
    let frame = common::produce_frame(version, body);
    let Ok(meta) = RequestMeta::peek(&frame) else { return };
    let Ok(inspection) = inspect(v, &ValidationMetrics::new(), &meta, &frame, true) else { return };
    for job in &inspection.refused {
        check(job);
    }
    if let Plan::Forward { mirror: Some(parts), .. } = inspection.plan {
        for p in parts.into_iter() {
            let job = Job {
                topic: p.topic,
                partition: p.partition,
                base_offset: Some(0),
                log_append_time: -1,
                records: p.records,
                outcomes: p.outcomes,
                route: p.route,
                producer: Default::default(),
                room: None,
            };
            check(&job);
        }
    }
});
