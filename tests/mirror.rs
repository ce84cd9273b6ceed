//! The CloudEvents mirror, shared documents and the websocket, with real tansu, nats-server
//! (JetStream), eventgate and clients.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::stream::{Stored, read_stream};
use support::websocket::{next_events, ws};
use support::*;
use tokio_tungstenite::tungstenite;

const TOPIC: &str = "event-gateway-demo";
const GOOD: &str = r#"{"lumens":42,"sentAt":"2026-01-01T00:00:00Z"}"#;
const BAD: &str = r#"{"lumens":-1,"sentAt":"2026-01-01T00:00:00Z"}"#;

fn start_gateway(tansu: &Tansu, nats: Option<&Nats>, extra: &[&str]) -> Eventgate {
    let mut args: Vec<String> =
        vec!["--spec".into(), repo_path("asyncapi/demo.yaml"), "--cluster-name".into(), "test".into()];
    if let Some(n) = nats {
        args.extend(["--nats-url".into(), n.url()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Eventgate::start(&tansu.addr(), &refs)
}

/// `topic-partition-offset` of every record a producer had acknowledged.
fn delivered_ids(topic: &str, p: &Value) -> BTreeSet<String> {
    p["records"].as_array().unwrap().iter().map(|r| format!("{topic}-{}-{}", r["partition"], r["offset"])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_appears_once_as_a_cloudevent() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    tansu.create_topic("plain", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &[]);
    let p1 = produce_values(&eg.addr(), TOPIC, &[GOOD, BAD, "not json"], 150, &[]);
    assert_eq!(p1["delivered"], 150, "{p1}");
    let p2 = produce_values(&eg.addr(), "plain", &["hello", "{\"x\":1}"], 40, &["--compression", "zstd"]);
    assert_eq!(p2["delivered"], 40, "{p2}");
    // An acks=0 producer: its records are mirrored too, and it still gets no answers.
    let p3 = produce_values(&eg.addr(), "plain", &["fire and forget"], 20, &["--acks", "0", "--prefix", "ff"]);
    assert_eq!(p3["errors"], Value::Array(vec![]), "{p3}");

    let stored = read_stream(&nats.url(), "eventgate.records.>", 210, Duration::from_secs(30)).await;
    let mut expected = delivered_ids(TOPIC, &p1);
    expected.extend(delivered_ids("plain", &p2));
    let ids: Vec<String> = stored.iter().map(|s| s.event["id"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "an event was stored twice");
    assert_eq!(stored.len(), 210, "every record once, acks=0 included");
    assert!(expected.is_subset(&unique), "missing: {:?}", expected.difference(&unique).collect::<Vec<_>>());

    for s in &stored {
        let e = &s.event;
        let id = e["id"].as_str().unwrap();
        assert_eq!(s.headers.get("Nats-Msg-Id").map(String::as_str), Some(id));
        assert_eq!(e["specversion"], "1.0");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        // Who produced it: librdkafka's default client.id (no SASL here, so no principal).
        assert_eq!(e["clientid"], "rdkafka", "{e}");
        assert!(e.get("principal").is_none(), "{e}");
        assert_eq!(
            id,
            format!(
                "{}-{}-{}",
                e["source"].as_str().unwrap().rsplit('/').next().unwrap(),
                e["partition"],
                e["offset"].as_str().expect("offset is a string")
            )
        );
        let key = e["subject"].as_str().unwrap();
        if e["source"] == format!("kafka://test/{TOPIC}") {
            assert_eq!(e["type"], "com.example.streetlights.light.measured");
            assert_eq!(e["dataschema"], "urn:eventgate:spec:demo#/components/messages/lightMeasured");
            assert_eq!(e["datacontenttype"], "application/json");
            let i: usize = key.trim_start_matches("r-").parse().unwrap();
            match i % 3 {
                0 => {
                    assert_eq!(e["validation"], "valid");
                    assert_eq!(e["data"]["lumens"], 42);
                }
                1 => {
                    assert_eq!(e["validation"], "invalid");
                    assert!(e["validationerrors"].as_str().unwrap().contains("/lumens"));
                }
                _ => {
                    assert_eq!(e["validation"], "invalid");
                    assert_eq!(e["data_base64"], "bm90IGpzb24=", "non-JSON bytes travel as data_base64");
                }
            }
        } else {
            assert_eq!(e["source"], "kafka://test/plain");
            assert_eq!(e["type"], "eventgate.record");
            assert_eq!(e["validation"], "unchecked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_mirrored_to_their_own_subject() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--topic-policy", &format!("{TOPIC}=reject")]);
    let p = produce_values(&eg.addr(), TOPIC, &[BAD], 3, &[]);
    assert_eq!(p["delivered"], 0);
    let stored = read_stream(&nats.url(), "eventgate.rejected.>", 3, Duration::from_secs(20)).await;
    assert!(stored.len() >= 3, "{}", stored.len());
    assert!(stored.iter().all(|s| s.event["validation"] == "invalid" && s.event.get("offset").is_none()));
    assert!(read_stream(&nats.url(), "eventgate.records.>", 0, Duration::from_secs(2)).await.is_empty());
}

/// Ids of the stored events, checked to be unique.
fn unique_ids(stored: &[Stored]) -> BTreeSet<String> {
    let ids: Vec<String> = stored.iter().map(|s| s.event["id"].as_str().expect("id").to_owned()).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "an event was stored twice");
    unique
}

/// NATS frozen (SIGSTOP) for longer than the duplicate window while two gateways in front of the
/// same partitions produce, then killed (SIGKILL) and restarted: the Kafka side never notices, and
/// the stream ends up with exactly one event per accepted record. The resends after the outage
/// fall far outside the duplicate window, so only reading the stream keeps them from being
/// stored twice; and two publishers on one partition rule out "the last event of the partition
/// tells what was stored".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_then_killed_the_stream_holds_each_record_exactly_once() {
    frozen_then_killed(&[]).await;
}

/// The same in fast-ingest batches: answers that never came cover whole batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_then_killed_mid_batch_the_stream_holds_each_record_exactly_once() {
    frozen_then_killed(&["--mirror-batch"]).await;
}

async fn frozen_then_killed(extra: &[&str]) {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let mut nats = Nats::start();
    let mut window = vec!["--mirror-duplicate-window-secs", "2"];
    window.extend_from_slice(extra);
    let a = start_gateway(&tansu, Some(&nats), &window);
    let b = start_gateway(&tansu, Some(&nats), &window);
    // Make sure the stream exists before the outage.
    let warmup = produce_values(&a.addr(), TOPIC, &[GOOD], 10, &["--prefix", "w"]);
    assert_eq!(warmup["delivered"], 10);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.>", 10, Duration::from_secs(20)).await.len(), 10);

    let producers: Vec<_> = [(a.addr(), "a"), (b.addr(), "b")]
        .into_iter()
        .map(|(bootstrap, prefix)| {
            std::thread::spawn(move || {
                produce_values(&bootstrap, TOPIC, &[GOOD, BAD], 1200, &["--rate", "200", "--prefix", prefix])
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.freeze(true);
    // Longer than the answer timeout (5 s) and three times the duplicate window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    nats.kill();
    nats.restart();
    let mut expected = delivered_ids(TOPIC, &warmup);
    for producer in producers {
        let p = tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap();
        assert_eq!(p["errors"], Value::Array(vec![]), "the Kafka side must not notice: {p}");
        assert_eq!(p["delivered"], 1200);
        expected.extend(delivered_ids(TOPIC, &p));
    }
    assert_eq!(expected.len(), 2410);

    let stored = read_stream(&nats.url(), "eventgate.records.>", 2410, Duration::from_secs(90)).await;
    let unique = unique_ids(&stored);
    assert_eq!(unique, expected, "exactly the accepted records, each once");
    let in_doubt = a.metric("eventgate_mirror_publish_retries_total{reason=\"no_ack\"}")
        + b.metric("eventgate_mirror_publish_retries_total{reason=\"no_ack\"}");
    assert!(in_doubt > 0.0, "the outage caught events in flight");
}

/// Answers used to be read only when the window was full: events answered long ago then looked
/// timed out and were resent, and once past the duplicate window the stream kept both copies
/// (16 ids stored as 20 messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_read_while_idle_so_nothing_is_resent() {
    let tansu = Tansu::start();
    tansu.create_topic("idle", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-window", "8", "--mirror-duplicate-window-secs", "2"]);
    let first = produce_values(&eg.addr(), "idle", &[r#"{"n":1}"#], 8, &["--prefix", "a"]);
    assert_eq!(first["delivered"], 8);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.idle", 8, Duration::from_secs(20)).await.len(), 8);
    // Past the answer timeout (5 s) and the duplicate window (2 s) before the window fills again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = produce_values(&eg.addr(), "idle", &[r#"{"n":2}"#], 8, &["--prefix", "b"]);
    assert_eq!(second["delivered"], 8);
    let stored = read_stream(&nats.url(), "eventgate.records.idle", 16, Duration::from_secs(20)).await;
    assert_eq!(unique_ids(&stored).len(), 16);
    assert_eq!(stored.len(), 16);
    assert_eq!(eg.metric("eventgate_mirror_publish_retries_total{reason=\"no_ack\"}"), 0.0);
}

/// A stream that refuses new events (full, discard policy `new`) answers with an error; the old
/// scan of the answer took it as stored. Refusals are now counted by reason, and the stream's
/// limits and policy are in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_refuses_events_is_counted_not_taken_as_stored() {
    let tansu = Tansu::start();
    tansu.create_topic("full", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-discard", "new", "--mirror-max-messages", "5"]);
    let p = produce_values(&eg.addr(), "full", &[r#"{"n":1}"#], 12, &[]);
    assert_eq!(p["delivered"], 12, "Kafka takes every record: {p}");
    let refused = "eventgate_mirror_refused_events_total{reason=\"stream_full\"}";
    wait_until("7 refusals counted", Duration::from_secs(30), || eg.metric(refused) == 7.0);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.>", 5, Duration::from_secs(10)).await.len(), 5);
    assert_eq!(eg.metric("eventgate_mirror_stream_discard{policy=\"new\"}"), 1.0);
    assert_eq!(eg.metric("eventgate_mirror_stream_max_messages"), 5.0);
    assert_eq!(eg.metric("eventgate_mirror_publish_retries_total{reason=\"refused\"}"), 0.0, "refused for good");
    assert!(eg.proc.log_text().contains("refused mirrored events for good"));
}

/// The stream's settings changed under the running gateway (by `nats stream edit`, say).
async fn edit_stream(nats: &Nats, edit: impl FnOnce(&mut jetstream::stream::Config)) {
    let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let mut stream = js.get_stream("EVENTGATE").await.expect("the mirror's stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    edit(&mut config);
    js.update_stream(config).await.expect("update the stream");
}

/// On nats-server 2.15 the mirror publishes in fast-ingest batches, and the server ends a batch at
/// its first refused event: the batch's later events, sent before the refusal came back, are
/// refused as "unknown batch" and must be sent again, in a new batch or one answer each, and
/// never stored twice. Here the stream's message limit is lowered under the running gateway, so
/// every tenth record is refused in the middle of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ended_by_a_refused_event_loses_and_duplicates_nothing() {
    let tansu = Tansu::start();
    tansu.create_topic("mixed", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-duplicate-window-secs", "1", "--mirror-batch"]);
    let warmup = produce_values(&eg.addr(), "mixed", &[r#"{"n":0}"#], 5, &["--prefix", "w"]);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.mixed", 5, Duration::from_secs(20)).await.len(), 5);
    assert_eq!(eg.metric("eventgate_mirror_publish_batched"), 1.0, "a 2.15 server takes batches");
    edit_stream(&nats, |c| c.max_message_size = 4000).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    let mut values: Vec<&str> = vec![r#"{"n":1}"#; 9];
    values.push(&big);
    let p = produce_values(&eg.addr(), "mixed", &values, 400, &["--prefix", "m"]);
    assert_eq!(p["delivered"], 400, "{p}");
    let refused = "eventgate_mirror_refused_events_total{reason=\"message_too_large\"}";
    wait_until("40 refusals counted", Duration::from_secs(30), || eg.metric(refused) == 40.0);
    let stored = read_stream(&nats.url(), "eventgate.records.mixed", 365, Duration::from_secs(30)).await;
    assert_eq!(stored.len(), 365, "every small record once, no big one");
    let records = p["records"].as_array().unwrap();
    let mut expected = delivered_ids("mixed", &warmup);
    for (i, r) in records.iter().enumerate() {
        if i % 10 != 9 {
            expected.insert(format!("mixed-{}-{}", r["partition"], r["offset"]));
        }
    }
    assert_eq!(unique_ids(&stored), expected);
    assert!(eg.metric("eventgate_mirror_publish_retries_total{reason=\"batch_ended\"}") > 0.0, "some were sent again");
}

/// A long batch is answered by flow acknowledgements as it goes, not only at its end: with a
/// window of 64 the server acknowledges every 32 events, and the window keeps moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_is_acknowledged_as_it_goes() {
    let tansu = Tansu::start();
    tansu.create_topic("long", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-batch", "--mirror-window", "64"]);
    let p = produce_values(&eg.addr(), "long", &[r#"{"n":1}"#], 3000, &[]);
    assert_eq!(p["delivered"], 3000, "{p}");
    let stored = read_stream(&nats.url(), "eventgate.records.long", 3000, Duration::from_secs(30)).await;
    assert_eq!(unique_ids(&stored), delivered_ids("long", &p));
    assert!(eg.metric("eventgate_mirror_batch_answers_total{kind=\"flow\"}") > 0.0, "flow acknowledgements came");
    assert!(eg.metric("eventgate_mirror_batch_answers_total{kind=\"end\"}") > 0.0, "batches were ended");
    assert_eq!(eg.metric("eventgate_mirror_publish_retries_total{reason=\"no_ack\"}"), 0.0);
}

/// A gateway started without `--mirror-batch` leaves the stream's `allow_batched` on for the ones
/// that use it (a mixed fleet, or a restart with other settings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_batches_leaves_them_on_for_others() {
    let tansu = Tansu::start();
    let nats = Nats::start();
    let with = start_gateway(&tansu, Some(&nats), &["--mirror-batch"]);
    wait_until("batches on", Duration::from_secs(20), || with.metric("eventgate_mirror_publish_batched") == 1.0);
    let without = start_gateway(&tansu, Some(&nats), &[]);
    wait_until("the second gateway's stream set up", Duration::from_secs(20), || {
        without.metric("eventgate_mirror_stream_max_messages") != 0.0
    });
    let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
    let mut stream = jetstream::new(client).get_stream("EVENTGATE").await.expect("the mirror's stream");
    assert!(stream.info().await.expect("stream info").config.allow_batch_publish, "still on");
    assert_eq!(without.metric("eventgate_mirror_publish_batched"), 0.0, "the second one does not batch");
}

/// A stream that stops taking batches under the running gateway (its `allow_batched` turned off):
/// the refused events are sent again one answer each, and the mirror goes on that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_taking_batches_gets_one_answer_per_event() {
    let tansu = Tansu::start();
    tansu.create_topic("plainly", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-batch"]);
    let first = produce_values(&eg.addr(), "plainly", &[r#"{"n":1}"#], 10, &["--prefix", "a"]);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.plainly", 10, Duration::from_secs(20)).await.len(), 10);
    assert_eq!(eg.metric("eventgate_mirror_publish_batched"), 1.0);
    edit_stream(&nats, |c| c.allow_batch_publish = false).await;
    let second = produce_values(&eg.addr(), "plainly", &[r#"{"n":2}"#], 200, &["--prefix", "b"]);
    assert_eq!(second["delivered"], 200);
    let stored = read_stream(&nats.url(), "eventgate.records.plainly", 210, Duration::from_secs(30)).await;
    let mut expected = delivered_ids("plainly", &first);
    expected.extend(delivered_ids("plainly", &second));
    assert_eq!(unique_ids(&stored), expected);
    assert_eq!(stored.len(), 210);
    assert_eq!(eg.metric("eventgate_mirror_publish_batched"), 0.0);
    assert!(eg.proc.log_text().contains("no longer allows batches"));
}

/// Events left unanswered when NATS froze and died are settled by reading the stream after it
/// restarts, even when the only messages stored past them are on another subject (a read filtered
/// to their subject then has nothing to deliver, and must not wait for it).
async fn events_in_doubt_on_a_quiet_subject_are_settled(binary: std::path::PathBuf, batch: bool, batched: bool) {
    let tansu = Tansu::start();
    tansu.create_topic("quiet", 1);
    let mut nats = Nats::start_binary(binary);
    let batch = if batch { "true" } else { "false" };
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-duplicate-window-secs", "1", "--mirror-batch", batch]);
    let first = produce_values(&eg.addr(), "quiet", &[r#"{"n":1}"#], 20, &["--prefix", "a"]);
    assert_eq!(read_stream(&nats.url(), "eventgate.records.quiet", 20, Duration::from_secs(20)).await.len(), 20);
    // 2.9 knows no batches, asked for or not (their empty ends would be stored as messages there).
    assert_eq!(eg.metric("eventgate_mirror_publish_batched"), f64::from(u8::from(batched)));
    // Another publisher's message on another subject, after everything eventgate saw acknowledged.
    let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
    jetstream::new(client).publish("eventgate.records.other", "{}".into()).await.unwrap().await.unwrap();
    nats.freeze(true);
    let bootstrap = eg.addr();
    let producer =
        std::thread::spawn(move || produce_values(&bootstrap, "quiet", &[r#"{"n":2}"#], 20, &["--prefix", "b"]));
    let second = tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap();
    assert_eq!(second["delivered"], 20);
    // Unanswered past the timeout, then the server dies with them.
    wait_until("events in doubt", Duration::from_secs(20), || {
        eg.metric("eventgate_mirror_publish_retries_total{reason=\"no_ack\"}") > 0.0
    });
    nats.kill();
    nats.restart();
    let stored = read_stream(&nats.url(), "eventgate.records.quiet", 40, Duration::from_secs(25)).await;
    let mut expected = delivered_ids("quiet", &first);
    expected.extend(delivered_ids("quiet", &second));
    assert_eq!(unique_ids(&stored), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_doubt_are_settled_on_the_current_nats() {
    events_in_doubt_on_a_quiet_subject_are_settled(current_nats_server(), false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_doubt_in_batches_are_settled_on_the_current_nats() {
    events_in_doubt_on_a_quiet_subject_are_settled(current_nats_server(), true, true).await;
}

/// Debian's nats-server 2.9 keeps working, the lookup of events in doubt included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_doubt_are_settled_on_debian_nats_2_9() {
    events_in_doubt_on_a_quiet_subject_are_settled(debian_nats_server(), true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_an_uploaded_document() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 1);
    let nats = Nats::start();
    let a = Eventgate::start(&tansu.addr(), &["--nats-url", &nats.url()]);
    let b = Eventgate::start(&tansu.addr(), &["--nats-url", &nats.url()]);
    let doc = repo_file("asyncapi/demo.yaml").replace("address: event-gateway-demo", "address: orders");
    let uploaded = Instant::now();
    let (status, body) = http("PUT", &a.http("/specs/shared"), Some(&doc), &[]);
    assert_eq!(status, 201, "{body}");
    wait_until("instance b to have the document", Duration::from_secs(5), || {
        http("GET", &b.http("/specs"), None, &[]).1.contains("\"shared\"")
    });
    assert!(uploaded.elapsed() < Duration::from_secs(2), "took {:?}", uploaded.elapsed());
    let p = produce_values(&b.addr(), "orders", &[BAD], 1, &[]);
    assert_eq!(p["delivered"], 1);
    let got = consume(&tansu.addr(), "orders", 1, 1);
    assert!(header(&got[0], "_asyncapi_eg_validation_error").is_some(), "b validates with a's upload");
    // Deletion is shared too.
    assert_eq!(http("DELETE", &b.http("/specs/shared"), None, &[]).0, 204);
    wait_until("instance a to drop the document", Duration::from_secs(5), || {
        !http("GET", &a.http("/specs"), None, &[]).1.contains("\"shared\"")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_filters_and_replays() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    tansu.create_topic("other.topic", 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &[]);
    // Before anything was produced, so the stream exists with nothing in it.
    wait_until("the stream", Duration::from_secs(20), || eg.proc.log_text().contains("connected to NATS"));

    let mut everything = ws(&eg, "").await;
    let mut invalid_only = ws(&eg, &format!("?topic={TOPIC}&validation=invalid")).await;
    let mut other_only = ws(&eg, "?topic=other.*").await;
    let before = time::OffsetDateTime::now_utc();
    assert_eq!(produce_values(&eg.addr(), TOPIC, &[GOOD, BAD], 10, &[])["delivered"], 10);
    assert_eq!(produce_values(&eg.addr(), "other.topic", &["x"], 4, &["--prefix", "o"])["delivered"], 4);

    let all = next_events(&mut everything, 14, Duration::from_secs(20)).await;
    assert_eq!(all.iter().filter(|e| e["source"] == format!("kafka://test/{TOPIC}")).count(), 10);
    let seqs: Vec<u64> = all.iter().map(|e| e["streamseq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered by stream position: {seqs:?}");
    let bad = next_events(&mut invalid_only, 5, Duration::from_secs(20)).await;
    assert!(bad.iter().all(|e| e["validation"] == "invalid" && e["source"] == format!("kafka://test/{TOPIC}")));
    let other = next_events(&mut other_only, 4, Duration::from_secs(20)).await;
    assert!(other.iter().all(|e| e["source"] == "kafka://test/other.topic"));

    // Replay from a sequence, and from a time.
    let third = seqs[2];
    let mut from_seq = ws(&eg, &format!("?start_seq={third}")).await;
    let replayed = next_events(&mut from_seq, 12, Duration::from_secs(20)).await;
    assert_eq!(replayed[0]["streamseq"].as_u64(), Some(third));
    assert_eq!(
        replayed.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        all[2..].iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );
    let t = before.format(&time::format_description::well_known::Rfc3339).unwrap();
    let mut from_time = ws(&eg, &format!("?start_time={}", t.replace('+', "%2B"))).await;
    assert_eq!(next_events(&mut from_time, 14, Duration::from_secs(20)).await.len(), 14);
    let mut from_all = ws(&eg, "?start=all&type=com.example.streetlights.light.measured").await;
    assert_eq!(next_events(&mut from_all, 10, Duration::from_secs(20)).await.len(), 10);
    everything.close(None).await.ok();
}

/// The mirror's own publishing connection speaks TLS and sends the URL's credentials, as
/// `async-nats` does for the rest of eventgate: a server that requires both stores
/// every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_publishes_over_tls_with_the_credentials_of_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::root(dir.path(), "nats-ca");
    let leaf = ca.issue("nats", pki::LOOPBACK);
    let nats = Nats::start_with(&[
        "--tls",
        "--tlscert",
        leaf.cert.to_str().unwrap(),
        "--tlskey",
        leaf.key.to_str().unwrap(),
        "--user",
        "eventgate",
        "--pass",
        "s3cret-pass",
    ]);
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let url = format!("tls://eventgate:s3cret-pass@localhost:{}", nats.port);
    let eg = Eventgate::start_with_env(
        &tansu.addr(),
        &["--spec", &repo_path("asyncapi/demo.yaml"), "--cluster-name", "test", "--nats-url", &url],
        &[("SSL_CERT_FILE", ca.cert.to_str().unwrap())],
    );
    let p = produce_values(&eg.addr(), TOPIC, &[GOOD, BAD], 30, &[]);
    assert_eq!(p["delivered"], 30, "{p}");
    let mut socket = ws(&eg, "?start=all").await;
    let events = next_events(&mut socket, 30, Duration::from_secs(30)).await;
    let ids: BTreeSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, delivered_ids(TOPIC, &p), "every record once");
    assert_eq!(eg.metric("eventgate_mirror_publish_retries_total{reason=\"send_failed\"}"), 0.0);
    assert!(!eg.proc.log_text().contains("s3cret-pass"), "the password is never logged");

    // A wrong password is refused by the server: nothing is stored, the Kafka path is unharmed.
    let tansu2 = Tansu::start();
    tansu2.create_topic(TOPIC, 1);
    let wrong = format!("tls://eventgate:nope@localhost:{}", nats.port);
    let eg2 = Eventgate::start_with_env(
        &tansu2.addr(),
        &["--spec", &repo_path("asyncapi/demo.yaml"), "--nats-url", &wrong],
        &[("SSL_CERT_FILE", ca.cert.to_str().unwrap())],
    );
    assert_eq!(produce_values(&eg2.addr(), TOPIC, &[GOOD], 3, &[])["delivered"], 3);
    wait_until("the server to refuse the password", Duration::from_secs(20), || {
        eg2.proc.log_text().contains("authorization violation")
    });
    assert!(!eg2.proc.log_text().contains("nope"), "the wrong password is not logged either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_an_unrecoverable_position() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--mirror-max-messages", "5"]);
    assert_eq!(produce_values(&eg.addr(), TOPIC, &[GOOD], 20, &[])["delivered"], 20);
    wait_until("the stream to roll over", Duration::from_secs(20), || {
        eg.metric("eventgate_mirror_events_total{kind=\"accepted\"}") >= 20.0
    });
    let mut socket = ws(&eg, "?start_seq=1").await;
    match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
        Ok(Some(Ok(tungstenite::Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), 4410);
            assert!(frame.reason.contains("unrecoverable position"), "{}", frame.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_while_others_keep_receiving() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let nats = Nats::start();
    let eg = start_gateway(&tansu, Some(&nats), &["--ws-buffer", "16", "--ws-slow-ms", "1000"]);
    wait_until("NATS", Duration::from_secs(20), || eg.proc.log_text().contains("connected to NATS"));
    let mut reader = ws(&eg, "").await;
    let stalled = ws(&eg, "").await;
    // Large events fill the stalled client's socket and then its buffer.
    let big = format!(r#"{{"lumens":1,"sentAt":"2026-01-01T00:00:00Z","pad":"{}"}}"#, "x".repeat(60_000));
    let bootstrap = eg.addr();
    let producer = std::thread::spawn(move || produce_values(&bootstrap, TOPIC, &[&big], 400, &[]));
    let got = next_events(&mut reader, 400, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 400);
    assert_eq!(tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap()["delivered"], 400);
    wait_until("the stalled client to be cut off", Duration::from_secs(20), || {
        eg.metric("eventgate_ws_slow_disconnects_total") >= 1.0
    });
    assert!(eg.proc.log_text().contains("closing a slow websocket client"));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_the_websocket_is_fed_in_process() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let eg = start_gateway(&tansu, None, &[]);
    let mut socket = ws(&eg, "?validation=valid").await;
    assert_eq!(produce_values(&eg.addr(), TOPIC, &[GOOD, BAD], 6, &[])["delivered"], 6);
    let got = next_events(&mut socket, 3, Duration::from_secs(20)).await;
    assert!(got.iter().all(|e| e["validation"] == "valid" && e["type"] == "com.example.streetlights.light.measured"));
    // Replay needs NATS: said plainly.
    let mut replay = ws(&eg, "?start=all").await;
    match tokio::time::timeout(Duration::from_secs(10), replay.next()).await {
        Ok(Some(Ok(tungstenite::Message::Close(Some(frame))))) => {
            assert!(frame.reason.contains("NATS"), "{}", frame.reason)
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    socket.send(tungstenite::Message::Close(None)).await.ok();
}
