use bytes::BytesMut;

use super::*;
use crate::wire::compression::{Codec, Framing};
use crate::wire::records::{BatchHeader, write_batch, write_record};

fn config() -> MirrorConfig {
    MirrorConfig {
        cluster: "c".into(),
        default_type: "t".into(),
        subject_prefix: "p".into(),
        rejected_prefix: "r".into(),
        max_event_bytes: 1 << 20,
        buffer_bytes: 1 << 20,
        max_decompressed_bytes: 1 << 20,
    }
}

fn batch(n: usize) -> Bytes {
    let mut section = Vec::new();
    for i in 0..n {
        write_record(&mut section, i as i64, i as i32, None, Some(br#"{"i":1}"#), std::iter::empty());
    }
    let header = BatchHeader::new(n as i32, Codec::Lz4, 1000);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

/// Every event of a job, gathered (taken from a block of their own).
async fn events_of(config: &MirrorConfig, job: &Job) -> Vec<event::Event> {
    events_into(config, job, &mut BytesMut::new()).await
}

/// Every event of a job, gathered, taken from `block`.
async fn events_into(config: &MirrorConfig, job: &Job, block: &mut BytesMut) -> Vec<event::Event> {
    let mut all = Vec::new();
    expand(config, job, block, async |chunk: Vec<event::Event>| {
        assert!(chunk.len() <= EVENT_CHUNK);
        all.extend(chunk);
    })
    .await;
    all
}

#[tokio::test]
async fn events_get_broker_offsets_and_deterministic_ids() {
    let job = Job {
        topic: "orders".into(),
        partition: 3,
        base_offset: Some(100),
        log_append_time: -1,
        records: batch(3),
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    };
    let ids: Vec<String> = events_of(&config(), &job).await.into_iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, vec!["orders-3-100", "orders-3-101", "orders-3-102"]);
}

#[tokio::test]
async fn each_event_carries_its_own_record_s_errors_when_outcomes_alternate() {
    let a: Outcome = Outcome::Invalid(Arc::from(vec!["/a: first".to_owned()]));
    let b: Outcome = Outcome::Invalid(Arc::from(vec!["/b: \"second\"".to_owned()]));
    let why: Outcome = Outcome::Unchecked("no message eventgate can check".into());
    let outcomes = vec![a.clone(), a.clone(), b, why, Outcome::Valid(0), a];
    let job = Job {
        topic: "orders".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(outcomes.len()),
        outcomes: Some(Arc::new(outcomes)),
        route: None,
        producer: Default::default(),
        room: None,
    };
    let errors: Vec<Option<String>> = events_of(&config(), &job)
        .await
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
            v.get("validationerrors").and_then(|x| x.as_str()).map(str::to_owned)
        })
        .collect();
    let first = Some(r#"["/a: first"]"#.to_owned());
    assert_eq!(
        errors,
        vec![
            first.clone(),
            first.clone(),
            Some(r#"["/b: \"second\""]"#.to_owned()),
            Some(r#"["no message eventgate can check"]"#.to_owned()),
            None,
            first,
        ]
    );
}

#[tokio::test]
async fn refused_records_get_unique_ids_without_offsets() {
    let job = Job {
        topic: "orders".into(),
        partition: 0,
        base_offset: None,
        log_append_time: -1,
        records: batch(2),
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    };
    let events = events_of(&config(), &job).await;
    assert_eq!(events.len(), 2);
    assert!(events[0].id.starts_with("orders-0-rejected-"));
    assert_ne!(events[0].id, events[1].id);
    let v: serde_json::Value = serde_json::from_slice(&events[0].json).unwrap();
    assert!(v.get("offset").is_none());
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_instead_of_blocking() {
    let (tx, _rx) = tokio::sync::broadcast::channel(16);
    let stop = Stop::default();
    let mut cfg = config();
    cfg.buffer_bytes = batch(1).len() + RECORD_OVERHEAD + 1;
    let (mirror, worker) = Mirror::start(cfg, SinkSpec::Local(sink::LocalSink::new(tx)), stop.clone(), None).unwrap();
    // Far larger than the buffer: refused at once; a small one fits.
    let job = |n| Job {
        topic: "t".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(n),
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    };
    assert!(!mirror.submit(job(50)));
    assert_eq!(mirror.queued_bytes.load(Ordering::Acquire), 0);
    assert!(mirror.submit(job(1)));
    stop.drain.cancel();
    worker.done.await.unwrap();
}

/// `submit` (records refused by policy) queues a copy, charged its size and bookkeeping, whatever
/// room the job names.
#[test]
fn submit_queues_a_copy() {
    let records = batch(1);
    let (mirror, mut rx) = Mirror::held(usize::MAX);
    assert!(mirror.submit(Job { room: Some(records.len()), ..orders(records.clone(), 0) }));
    assert_eq!(mirror.queued(), records.len() + RECORD_OVERHEAD);
    assert_eq!(received(&mut rx, &records), [(0, None, false, records.len() + RECORD_OVERHEAD)]);
}

/// The partitions of one request are kept where it was read when its room is at most twice all
/// their records: a request naming ten partitions is kept as one naming one is.
#[test]
fn which_partitions_are_kept_where_read() {
    let buffer = Bytes::from(vec![7u8; 1_000]);
    let job = |at: usize, len: usize, room: usize| Job { room: Some(room), ..orders(buffer.slice(at..at + len), 0) };
    let rooms = |jobs: &[Job]| jobs.iter().map(|j| j.room).collect::<Vec<_>>();
    // Ten partitions of 90 bytes in a request read into 1,000: all kept.
    let mut ten: Vec<Job> = (0..10).map(|i| job(i * 90, 90, 1_000)).collect();
    assert_eq!(keep_where_read(&mut ten), Some(1_000));
    assert_eq!(rooms(&ten), [Some(1_000); 10]);
    // One partition: kept while the room is at most twice its records.
    let mut one = vec![job(0, 500, 1_000)];
    assert_eq!(keep_where_read(&mut one), Some(1_000));
    let mut one = vec![job(0, 499, 1_000)];
    assert_eq!(keep_where_read(&mut one), None);
    assert_eq!(rooms(&one), [None]);
    // Room of more than twice all the records, or jobs that name different rooms: copies.
    let mut sparse: Vec<Job> = (0..5).map(|i| job(i * 90, 90, 1_000)).collect();
    assert_eq!(keep_where_read(&mut sparse), None);
    assert_eq!(rooms(&sparse), [None; 5]);
    let mut mixed = vec![job(0, 500, 1_000), job(500, 500, 999)];
    assert_eq!(keep_where_read(&mut mixed), None);
    assert_eq!(rooms(&mixed), [None, None]);
    // Jobs of no room (annotated records) are left as they are and count for nothing.
    let mut annotated = vec![job(0, 500, 1_000), Job { room: None, ..job(500, 400, 0) }];
    assert_eq!(keep_where_read(&mut annotated), Some(1_000));
    assert_eq!(rooms(&annotated), [Some(1_000), None]);
    let mut annotated = vec![job(0, 499, 1_000), Job { room: None, ..job(500, 400, 0) }];
    assert_eq!(keep_where_read(&mut annotated), None);
    assert!(keep_where_read(&mut []).is_none());
}

/// What a held mirror's queue received: each job's partition, room, whether its records are still
/// where they were read (in `buffer`), and its charge.
fn received(rx: &mut tokio::sync::mpsc::Receiver<Queued>, buffer: &Bytes) -> Vec<(i32, Option<usize>, bool, usize)> {
    let read = buffer.as_ptr_range();
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|q| (q.job.partition, q.job.room, read.contains(&q.job.records.as_ptr()), q.charge))
        .collect()
}

/// A request's kept partitions are let in together, where they were read, in their order, the
/// last charged the room (the buffer counts it until the worker is done with all of them); when
/// the buffer cannot take them all, each is copied and let in on its own (never some kept and the
/// rest left out, which would keep the whole room alive for a part of its charge).
#[test]
fn a_request_s_kept_partitions_are_let_in_together_or_copied() {
    let mut buffer = BytesMut::new();
    for _ in 0..3 {
        buffer.extend_from_slice(&batch(1));
    }
    let buffer = buffer.freeze();
    let third = buffer.len() / 3;
    // Read into room twice as large as the request; partition 7, annotated, lies elsewhere.
    let room = buffer.len() * KEPT_ROOM;
    let jobs = || {
        let part = |p: i32, records: Bytes, room| Job { partition: p, room, ..orders(records, 0) };
        vec![
            part(0, buffer.slice(..third), Some(room)),
            part(7, batch(1), None),
            part(1, buffer.slice(third..2 * third), Some(room)),
            part(2, buffer.slice(2 * third..), Some(room)),
        ]
    };
    let copy = third + RECORD_OVERHEAD;
    let kept_together = room + 3 * RECORD_OVERHEAD;
    let (mirror, mut rx) = Mirror::held(kept_together + copy);
    assert_eq!(mirror.submit_all(jobs()), 4);
    assert_eq!(mirror.queued(), kept_together + copy, "the room once, and the copy");
    assert_eq!(
        received(&mut rx, &buffer),
        [
            (0, Some(room), true, RECORD_OVERHEAD),
            (7, None, false, copy),
            (1, Some(room), true, RECORD_OVERHEAD),
            (2, Some(room), true, room + RECORD_OVERHEAD),
        ]
    );

    // One byte short of the kept ones together: every partition copied, each let in on its own.
    let (mirror, mut rx) = Mirror::held(kept_together - 1);
    assert_eq!(mirror.submit_all(jobs()), 4);
    assert_eq!(mirror.queued(), 4 * copy);
    assert_eq!(received(&mut rx, &buffer).iter().map(|g| (g.1, g.2)).collect::<Vec<_>>(), [(None, false); 4]);

    // Room for two copies only: two let in, the others dropped, none kept.
    let (mirror, mut rx) = Mirror::held(2 * copy);
    assert_eq!(mirror.submit_all(jobs()), 2);
    assert!(received(&mut rx, &buffer).iter().all(|g| g.1.is_none() && !g.2));
}

/// A request naming more partitions than the queue holds jobs (the partitions are the
/// producer's choice): they cannot all be let in together, so each is copied and let in on its
/// own until the queue is full, and the rest are dropped and counted; nothing is kept where read,
/// and the buffer counts exactly what the copies hold.
#[test]
fn more_partitions_than_the_queue_holds_are_copied_until_it_is_full() {
    let n = QUEUE_JOBS + 1;
    let buffer = Bytes::from(vec![7u8; n]);
    let jobs: Vec<Job> = (0..n).map(|i| Job { room: Some(n), ..orders(buffer.slice(i..i + 1), 0) }).collect();
    let (mirror, mut rx) = Mirror::held(usize::MAX);
    assert_eq!(mirror.submit_all(jobs), QUEUE_JOBS);
    let got = received(&mut rx, &buffer);
    assert_eq!(got.len(), QUEUE_JOBS);
    assert!(got.iter().all(|g| g.1.is_none() && !g.2), "copies only");
    assert_eq!(mirror.queued(), got.iter().map(|g| g.3).sum::<usize>());
}

/// One job in the 1 MiB its request was read into: kept there when that is at most twice its
/// size, charged all of it; else a copy, charged its size. A copy never keeps the read buffer
/// alive.
#[test]
fn a_job_is_queued_where_it_was_read_only_when_that_room_is_about_its_size() {
    let buffer = Bytes::from(vec![7u8; 1 << 20]);
    for len in [1, 100, 70_000, 500_000, 524_288, 524_289, 900_000] {
        let records = buffer.slice(100..100 + len);
        for room in [None, Some(buffer.len())] {
            let (mirror, mut rx) = Mirror::held(usize::MAX);
            assert_eq!(mirror.submit_all(vec![Job { room, ..orders(records.clone(), 0) }]), 1);
            let q = rx.try_recv().unwrap();
            assert_eq!(q.job.records, records);
            let kept = room.is_some() && buffer.len() <= KEPT_ROOM * len;
            let within = buffer.as_ptr_range().contains(&q.job.records.as_ptr());
            assert_eq!((within, q.job.room.is_some()), (kept, kept), "{len} bytes in room {room:?}");
            assert_eq!(q.charge, if kept { buffer.len() } else { len } + overhead(&records));
        }
    }
    // A lone kept job the buffer cannot take goes in as a copy, charged its size only.
    let records = buffer.slice(..600_000);
    let (mirror, mut rx) = Mirror::held(records.len() + overhead(&records));
    assert_eq!(mirror.submit_all(vec![Job { room: Some(buffer.len()), ..orders(records.clone(), 0) }]), 1);
    assert_eq!(received(&mut rx, &buffer), [(0, None, false, records.len() + overhead(&records))]);
}

#[tokio::test]
async fn a_batch_is_charged_for_every_record_it_claims() {
    let job = Job {
        topic: "t".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(1_000),
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    };
    // lz4 makes the thousand records a few kilobytes; they are charged as a thousand records.
    assert!(job.records.len() < 20_000, "{}", job.records.len());
    assert!(overhead(&job.records) >= 1_000 * RECORD_OVERHEAD);
    let events = events_of(&config(), &job).await;
    assert_eq!(events.len(), 1_000);
}

#[path = "../../tests/cloudevents/conformance.rs"]
mod conformance;

/// One record of [`mixed_records`]: key, value, headers.
type Rec = (Option<&'static [u8]>, Option<&'static [u8]>, Vec<(&'static str, &'static str)>);

/// Every kind of record the mirror meets.
fn mixed_records() -> Vec<Rec> {
    let ce = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![("ce_specversion", "1.0"), ("ce_id", "e-1"), ("ce_source", "/svc"), ("ce_type", "t.x")];
        h.extend_from_slice(extra);
        h
    };
    let structured = vec![("content-type", "application/cloudevents+json")];
    vec![
        // Plain JSON, text, bytes; keys and none.
        (Some(b"k1"), Some(br#"{"email":"a@b"}"#), vec![]),
        (None, Some(br#"[1,2.5,"x",null]"#), vec![]),
        (Some(b""), Some(b"hello words"), vec![]),
        (Some(&[0xff, 0x01]), Some(&[0x00, 0xff, 0x10]), vec![]),
        (None, Some(b"<a/>"), vec![("content-type", "application/xml")]),
        (None, Some(b"not json"), vec![("content-type", "application/json")]),
        (None, None, vec![]),
        // Binary mode: complete (with extensions and a forged verdict), incomplete, invalid.
        (None, Some(br#"{"n":1}"#), ce(&[("ce_traceparent", "00-1"), ("content-type", "application/json")])),
        (None, Some(b"{}"), ce(&[("ce_validation", "valid"), ("ce_offset", "0"), ("ce_partition", "999")])),
        (None, Some(b"{}"), vec![("ce_specversion", "1.0"), ("ce_type", "t")]),
        (None, Some(b"{}"), ce(&[("ce_specversion", "0.3")])),
        (None, Some(b"{}"), ce(&[("ce_time", "2026-01-01 00:00:00Z")])),
        (None, Some(b"{}"), ce(&[("ce_dataschema", "urn:x#/{a}")])),
        (None, Some(b"{}"), ce(&[("ce_source", "a b")])),
        (None, Some(b"{}"), ce(&[("ce_VeryBadName", "x")])),
        (None, Some(b"bytes \x00"), ce(&[])),
        // Structured mode: valid (with a forged verdict), invalid.
        (
            None,
            Some(br#"{"specversion":"1.0","id":"s1","source":"/s","type":"t","time":"2026-01-01T00:00:00Z","n":5,"validation":"valid","offset":0,"partition":999,"data":{"a":1}}"#),
            structured.clone(),
        ),
        (
            None,
            Some(br#"{"specversion":"1.0","id":"s2","source":"/s","type":"t","data_base64":"AAE="}"#),
            structured.clone(),
        ),
        (None, Some(br#"{"foo":1}"#), structured.clone()),
        (None, Some(b"[1]"), structured.clone()),
        (None, Some(br#"{"specversion":"1.0","id":"s","source":"/s","type":"t","x":4294967296}"#), structured.clone()),
        (None, Some(br#"{"specversion":"1.0","id":"s","source":"/s","type":"t","x":[1]}"#), structured.clone()),
        (None, Some(br#"{"specversion":"1.0","id":"s","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#), structured),
        // Large enough to go out without its data.
        (Some(b"big"), Some(&[b'x'; 3000]), vec![]),
    ]
}

fn mixed_batch(records: &[Rec]) -> Bytes {
    let mut section = Vec::new();
    for (i, (key, value, headers)) in records.iter().enumerate() {
        let hs: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))).collect();
        write_record(&mut section, i as i64, i as i32, *key, *value, hs.into_iter());
    }
    let header = BatchHeader::new(records.len() as i32, Codec::None, 1_767_225_600_000);
    let mut out = BytesMut::new();
    write_batch(&mut out, &header, &section, Framing::Standard).unwrap();
    out.freeze()
}

/// A 2.x document with a templated channel, so `dataschema` has a pointer with braces in it.
fn templated_route() -> Arc<crate::validate::Route> {
    let doc = crate::asyncapi::load(
        "asyncapi: 2.6.0\ninfo: {title: users, version: 1.0.0}\nchannels:\n  user.{userId}.signedup:\n    \
         publish:\n      message:\n        name: signedUp\n        contentType: application/json\n        \
         payload: {type: object, required: [email]}\n",
    )
    .unwrap();
    let compiled = crate::validate::compile("users", doc).unwrap();
    compiled.route_for("user.42.signedup").unwrap().clone()
}

#[tokio::test]
async fn every_event_of_a_mixed_workload_is_a_valid_cloudevent() {
    let validator = conformance::validator();
    let records = mixed_records();
    let route = templated_route();
    let n = records.len();
    // Each outcome in turn: valid, invalid, unchecked.
    let outcomes: Vec<Outcome> = (0..n)
        .map(|i| match i % 3 {
            // The records with forged verdicts are invalid.
            _ if matches!(i, 8 | 16) => Outcome::Invalid(Arc::from(["/email: required".to_owned()])),
            0 => Outcome::Valid(0),
            1 => Outcome::Invalid(Arc::from(["/email: required".to_owned()])),
            _ => Outcome::Unchecked("cannot check".into()),
        })
        .collect();
    let mut cfg = config();
    cfg.max_event_bytes = 2048;
    let accepted = Job {
        topic: "user.42.signedup".into(),
        partition: 7,
        base_offset: Some((1 << 40) - 3),
        log_append_time: -1,
        records: mixed_batch(&records),
        outcomes: Some(Arc::new(outcomes.clone())),
        route: Some(route.clone()),
        // Who produced them goes on every event, and must keep it a valid CloudEvent.
        producer: crate::mirror::Producer { client_id: Some("app-1".into()), principal: Some("alice".into()) },
        room: None,
    };
    // Refused by policy: no offset; and a topic no document describes.
    let refused = Job { base_offset: None, ..accepted_clone(&accepted) };
    let unvalidated = Job { topic: "plain".into(), outcomes: None, route: None, ..accepted_clone(&accepted) };

    let mut events = Vec::new();
    for job in [&accepted, &refused, &unvalidated] {
        let built = events_of(&cfg, job).await;
        assert_eq!(built.len(), n);
        events.extend(built);
    }
    let values: Vec<serde_json::Value> = events.iter().map(|e| serde_json::from_slice(&e.json).unwrap()).collect();
    conformance::assert_all_conform(&validator, &values);

    // What the mix was meant to exercise did happen.
    let schema = "urn:eventgate:spec:users#/channels/user.%7BuserId%7D.signedup/publish/message";
    assert!(values.iter().any(|v| v["dataschema"] == schema));
    assert!(values.iter().any(|v| v["offset"] == "1099511627773"));
    assert!(values[n..2 * n].iter().all(|v| v.get("offset").is_none()));
    assert!(events.iter().any(|e| e.data_omitted));
    assert!(events.iter().any(|e| e.wrapped));
    assert!(values.iter().any(|v| v.get("data_base64").is_some()));
    assert!(values.iter().any(|v| v["data"].is_string()));
    // The forged verdicts (records 8 and 16, both invalid) did not survive.
    for job in 0..3 {
        for i in [8, 16] {
            let (e, v) = (&events[job * n + i], &values[job * n + i]);
            assert_eq!(v["partition"], 7, "{v}");
            assert_ne!(v["offset"], 0, "{v}");
            assert_eq!(v["overridden"], "partition,offset,validation", "{v}");
            assert_eq!(e.overridden, 3);
        }
        for i in [8, 16] {
            assert_eq!(values[job * n + i]["validation"], if job == 2 { "unchecked" } else { "invalid" });
        }
    }
}

fn accepted_clone(job: &Job) -> Job {
    Job {
        topic: job.topic.clone(),
        partition: job.partition,
        base_offset: job.base_offset,
        log_append_time: job.log_append_time,
        records: job.records.clone(),
        outcomes: job.outcomes.clone(),
        route: job.route.clone(),
        producer: job.producer.clone(),
        room: None,
    }
}

/// The conformance check itself catches what eventgate used to emit.
#[test]
fn the_conformance_check_catches_what_eventgate_used_to_emit() {
    let validator = conformance::validator();
    let base = serde_json::json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t"});
    assert!(conformance::problems(&validator, &base).is_empty());
    let with = |k: &str, v: serde_json::Value| {
        let mut e = base.clone();
        e[k] = v;
        e
    };
    let bad = [
        with("dataschema", "urn:eventgate:spec:users#/channels/user.{userId}.signedup/publish/message".into()),
        with("offset", (1_i64 << 40).into()),
        with("time", "2026-01-01 00:00:00Z".into()),
        with("source", "a b".into()),
        with("specversion", "0.3".into()),
        with("validationErrors", "x".into()),
        with("x", serde_json::json!({"a": 1})),
        with("data_base64", "AA==".into())
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("data".into(), 1.into());
                serde_json::Value::Object(o)
            })
            .unwrap(),
        serde_json::json!({"specversion": "1.0", "type": "t"}),
    ];
    for e in bad {
        assert!(!conformance::problems(&validator, &e).is_empty(), "{e}");
    }
}

/// Offset deltas are the producer's bytes: a batch whose records all claim delta 0 (or 100000)
/// still gets the offsets the broker gives, base + position, so no event id is the producer's
/// choice and none can take a later record's id.
#[tokio::test]
async fn offsets_come_from_the_broker_s_base_not_the_producer_s_deltas() {
    let forged = |delta: i32, n: usize| {
        let mut section = Vec::new();
        for i in 0..n {
            write_record(&mut section, i as i64, delta, None, Some(br#"{"i":1}"#), std::iter::empty());
        }
        let mut out = BytesMut::new();
        write_batch(&mut out, &BatchHeader::new(n as i32, Codec::None, 1000), &section, Framing::Standard).unwrap();
        out
    };
    let mut records = forged(0, 3);
    records.extend_from_slice(&forged(100_000, 2));
    let job = orders(records.freeze(), 100);
    let ids: Vec<String> = events_of(&config(), &job).await.into_iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["orders-0-100", "orders-0-101", "orders-0-102", "orders-0-103", "orders-0-104"]);
}

/// A job's events are taken one after another from shared blocks (`event::BLOCK`): no allocation
/// per event. An event larger than a block gets a buffer of its own size, and the events after it
/// go on where the block was, or in a new block when it has no room left.
#[tokio::test]
async fn a_job_s_events_are_consecutive_in_shared_blocks() {
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(event::BLOCK));
    let job = job_with_one_unlike(40, 20, big.as_bytes());
    let events = events_of(&config(), &job).await;
    assert_eq!(events.len(), 40);
    for (i, pair) in events.windows(2).enumerate() {
        // Each event's id sits just after its JSON, and the next event just after that.
        assert_eq!(pair[0].json.as_ptr_range().end, pair[0].id.as_bytes().as_ptr(), "event {i}");
        let (a, b) = (&pair[0], &pair[1]);
        match i {
            // The large event did not fit in the first block, and has a buffer of its own.
            19 | 20 => assert!(!follows(a, b), "event {i} and the next share a block"),
            _ => assert!(follows(a, b), "event {i} and the next are not consecutive"),
        }
    }
    assert!(events[20].json.len() > event::BLOCK);
    assert!(follows(&events[19], &events[21]), "the events after it go on in the block");
}

/// Events of mid-sized JSON records lie one after another too: a block is left for a new one only
/// when the next event would not fit (an estimate of a third more than the JSON made each take a
/// block of its own), and an event of more than half a block gets a buffer of its size, so what
/// blocks hold beyond their events stays small.
#[tokio::test]
async fn mid_sized_json_events_share_blocks_or_get_their_size() {
    // Record, and how many of its events one block holds: JSON goes in as it is, bytes a third
    // larger in base64 (30,000 bytes that are not UTF-8 take 40,000).
    let json = |size: usize| format!(r#"{{"pad":"{}"}}"#, "x".repeat(size)).into_bytes();
    for (value, per_block) in [(json(20_000), 3), (json(30_000), 2), (json(40_000), 1), (vec![0xff; 30_000], 1)] {
        let size = value.len();
        let mut section = Vec::new();
        for i in 0..6 {
            write_record(&mut section, i64::from(i), i, None, Some(&value), std::iter::empty());
        }
        let mut records = BytesMut::new();
        write_batch(&mut records, &BatchHeader::new(6, Codec::None, 1000), &section, Framing::Standard).unwrap();
        let job = Job { records: records.freeze(), ..job_with_one_unlike(1, 0, b"{}") };
        let mut block = BytesMut::new();
        let events = events_into(&config(), &job, &mut block).await;
        let blocks = 1 + events.windows(2).filter(|w| !follows(&w[0], &w[1])).count();
        assert_eq!(blocks, 6 / per_block, "{size}");
        if per_block == 1 {
            // Each went into a buffer of its own: none was put in a 64 KiB block, whose rest
            // would be left unused beside it.
            assert!(
                block.capacity() < 2048,
                "{size}: an event was built in a block with {} bytes to spare",
                block.capacity()
            );
        }
    }
}

/// A job on `orders` 0 from offset 0: `n` records of `{"i":1}`, but record `at` holds `value`.
fn job_with_one_unlike(n: i32, at: i32, value: &[u8]) -> Job {
    let mut section = Vec::new();
    for i in 0..n {
        let v: &[u8] = if i == at { value } else { br#"{"i":1}"# };
        write_record(&mut section, i64::from(i), i, None, Some(v), std::iter::empty());
    }
    let mut records = BytesMut::new();
    write_batch(&mut records, &BatchHeader::new(n, Codec::None, 1000), &section, Framing::Standard).unwrap();
    orders(records.freeze(), 0)
}

/// A job of `records` for partition 0 of `orders`, the first at `base_offset`, not validated.
fn orders(records: Bytes, base_offset: i64) -> Job {
    Job {
        topic: "orders".into(),
        partition: 0,
        base_offset: Some(base_offset),
        log_append_time: -1,
        records,
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    }
}

/// `a`'s id ends where `b`'s JSON starts: `b` was taken from the same block right after `a`.
fn follows(a: &event::Event, b: &event::Event) -> bool {
    a.json.as_ptr_range().end == a.id.as_bytes().as_ptr() && a.id.as_bytes().as_ptr_range().end == b.json.as_ptr()
}

/// The worker takes the events of one job after another from one block: a thousand jobs of one
/// small record each (one Produce request touching many partitions) share blocks too, instead of
/// each starting a 64 KiB block its event would keep alive.
#[tokio::test]
async fn jobs_of_one_record_share_the_worker_s_blocks() {
    let mut block = BytesMut::new();
    let mut events = Vec::new();
    for partition in 0..1000 {
        let job = Job {
            topic: "orders".into(),
            partition,
            base_offset: Some(7),
            log_append_time: -1,
            records: batch(1),
            outcomes: None,
            route: None,
            producer: Default::default(),
            room: None,
        };
        events.extend(events_into(&config(), &job, &mut block).await);
    }
    assert_eq!(events.len(), 1000);
    let new_blocks = events.windows(2).filter(|p| !follows(&p[0], &p[1])).count();
    let bytes: usize = events.iter().map(|e| e.json.len() + e.id.len()).sum();
    assert!(new_blocks <= bytes / event::BLOCK + 1, "{new_blocks} blocks for {bytes} bytes");
}

/// An event too large for the stream is written again without its data, in the shared block right
/// after the event before it. Its first attempt, given a buffer of its own, is not kept alive by
/// the small event or the ones after it; an attempt that fit the shared block is written over.
#[tokio::test]
async fn an_event_without_its_data_leaves_no_large_block_behind() {
    let config = MirrorConfig { max_event_bytes: 200 << 10, ..config() };
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300 << 10));
    let small_over = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    // The last case: the estimate, capped by the limit, fits the shared block, and the first
    // attempt grows it far past a block; `written_again` must not keep that.
    for (value, limit) in [(big.as_str(), 200 << 10), (small_over.as_str(), 900), (big.as_str(), 900)] {
        let config = MirrorConfig { max_event_bytes: limit, ..config.clone() };
        let job = job_with_one_unlike(3, 1, value.as_bytes());
        let mut block = BytesMut::new();
        let events = events_into(&config, &job, &mut block).await;
        assert!(events[1].data_omitted);
        let v: serde_json::Value = serde_json::from_slice(&events[1].json).unwrap();
        assert_eq!((v["id"].as_str(), v["dataomitted"].as_bool()), (Some("orders-0-1"), Some(true)));
        assert_eq!(events[1].id.as_str(), "orders-0-1");
        // What the worker's block has left is at most a block: no large one lives on.
        assert!(block.capacity() <= event::BLOCK, "{} bytes of room", block.capacity());
        assert!(follows(&events[1], &events[2]));
        // The event without its data lies right after the one before it, unless its first
        // attempt grew the shared block (then a fresh block takes it).
        assert_eq!(follows(&events[0], &events[1]), limit != 900 || value.len() < event::BLOCK, "limit {limit}");
    }
}

/// An event of more than half a block that does not fit where the block is gets a buffer of its
/// own, and the block is kept: small events between large ones go on one after another in it,
/// instead of each being left alone in a block of its own.
#[tokio::test]
async fn small_events_between_large_ones_share_the_block() {
    let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(event::BLOCK - 300));
    let mut section = Vec::new();
    for i in 0..10 {
        let v: &[u8] = if i % 2 == 1 { large.as_bytes() } else { br#"{"i":1}"# };
        write_record(&mut section, i64::from(i), i, None, Some(v), std::iter::empty());
    }
    let mut records = BytesMut::new();
    write_batch(&mut records, &BatchHeader::new(10, Codec::None, 1000), &section, Framing::Standard).unwrap();
    let job = Job { records: records.freeze(), ..job_with_one_unlike(1, 0, b"{}") };
    let mut block = BytesMut::new();
    let events = events_into(&config(), &job, &mut block).await;
    let small: Vec<&event::Event> = events.iter().step_by(2).collect();
    for (i, pair) in small.windows(2).enumerate() {
        assert!(follows(pair[0], pair[1]), "small events {i} and {} are not one after another", i + 1);
    }
}

/// The in-process feed hands watchers copies: a watcher holding one event of many must not keep
/// the whole block it was built in.
#[tokio::test]
async fn the_live_feed_holds_copies_not_blocks() {
    let job = Job {
        topic: "orders".into(),
        partition: 0,
        base_offset: Some(0),
        log_append_time: -1,
        records: batch(3),
        outcomes: None,
        route: None,
        producer: Default::default(),
        room: None,
    };
    let events = events_of(&config(), &job).await;
    let built: Vec<(*const u8, Bytes)> = events.iter().map(|e| (e.json.as_ptr(), e.json.clone())).collect();
    let (tx, mut rx) = tokio::sync::broadcast::channel(8);
    let mut sink = sink::Sink::Local(sink::LocalSink::new(tx));
    sink.publish(&Arc::from("p.orders"), events, &tokio_util::sync::CancellationToken::new()).await;
    for (ptr, json) in built {
        let live = rx.recv().await.unwrap();
        assert_eq!(live.json, json);
        assert_ne!(live.json.as_ptr(), ptr);
    }
}
