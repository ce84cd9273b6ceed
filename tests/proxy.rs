//! The wire proxy with real clients: librdkafka (confluent-kafka, kcat), kafka-python, and raw frames.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use serde_json::Value;
use support::*;

fn assert_delivered(v: &Value, n: u64) {
    assert_eq!(v["errors"], Value::Array(vec![]), "producer errors: {v}");
    assert_eq!(v["delivered"].as_u64(), Some(n), "delivered: {v}");
}

#[test]
fn librdkafka_produces_and_consumes_and_sees_only_eventgate_addresses() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 3);
    let eg = Eventgate::start(&tansu.addr(), &[]);

    let md = client("ck-metadata", &["--bootstrap", &eg.addr()]);
    let brokers = md["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1, "{md}");
    assert_eq!(brokers[0]["host"], "127.0.0.1");
    assert_eq!(brokers[0]["port"].as_u64(), Some(u64::from(eg.node_port)), "{md}");

    let p = client("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "orders", "--count", "300"]);
    assert_delivered(&p, 300);
    let through = by_key(&consume(&eg.addr(), "orders", 300, 3));
    let direct = by_key(&consume(&tansu.addr(), "orders", 300, 3));
    assert_eq!(through.len(), 300);
    assert_eq!(through, direct, "records read through eventgate differ from the broker's");
}

#[test]
fn kafka_python_admin_producer_and_consumer_group() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let admin = client(
        "kp-admin",
        &[
            "--bootstrap",
            &eg.addr(),
            "--create",
            "kept",
            "--create",
            "dropped",
            "--partitions",
            "2",
            "--delete",
            "dropped",
        ],
    );
    let after_create: Vec<&str> =
        admin["topics_after_create"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(after_create.contains(&"kept") && after_create.contains(&"dropped"), "{admin}");
    let topics: Vec<&str> = admin["topics"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(topics.contains(&"kept") && !topics.contains(&"dropped"), "{admin}");
    for b in admin["brokers"].as_array().unwrap() {
        assert_eq!(b["port"].as_u64(), Some(u64::from(eg.node_port)), "{admin}");
    }

    let p = client("kp-produce", &["--bootstrap", &eg.addr(), "--topic", "kept", "--count", "120"]);
    assert_delivered(&p, 120);
    let c =
        client("kp-consume-group", &["--bootstrap", &eg.addr(), "--topic", "kept", "--count", "120", "--group", "g1"]);
    assert_eq!(by_key(c["records"].as_array().unwrap()).len(), 120, "{c}");
    let committed: u64 = c["committed"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(committed, 120, "committed offsets: {c}");
}

#[test]
fn idempotent_librdkafka_producer() {
    let tansu = Tansu::start();
    tansu.create_topic("idem", 2);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let p = client("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "idem", "--count", "500", "--idempotent"]);
    assert_delivered(&p, 500);
    assert_eq!(by_key(&consume(&eg.addr(), "idem", 500, 2)).len(), 500);
}

#[test]
fn every_compression_codec_from_both_clients() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &[]);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        tansu.create_topic(&topic, 1);
        let ck = client(
            "ck-produce",
            &["--bootstrap", &eg.addr(), "--topic", &topic, "--count", "50", "--compression", codec, "--prefix", "ck"],
        );
        assert_delivered(&ck, 50);
        let kp = client(
            "kp-produce",
            &["--bootstrap", &eg.addr(), "--topic", &topic, "--count", "50", "--compression", codec, "--prefix", "kp"],
        );
        assert_delivered(&kp, 50);
        let through = by_key(&consume(&eg.addr(), &topic, 100, 1));
        assert_eq!(through.len(), 100, "{codec}");
        assert_eq!(through, by_key(&consume(&tansu.addr(), &topic, 100, 1)), "{codec}");
    }
}

#[test]
fn one_mib_record() {
    let tansu = Tansu::start();
    tansu.create_topic("big", 1);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let p = client("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "big", "--count", "3", "--size", "1048576"]);
    assert_delivered(&p, 3);
    let through = by_key(&consume(&eg.addr(), "big", 3, 1));
    assert!(through.values().all(|r| r["value_len"].as_u64() == Some(1_048_576)));
    assert_eq!(through, by_key(&consume(&tansu.addr(), "big", 3, 1)));
}

#[test]
fn fifty_concurrent_producers_lose_and_duplicate_nothing() {
    let tansu = Tansu::start();
    tansu.create_topic("busy", 3);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let p = client(
        "ck-produce-many",
        &["--bootstrap", &eg.addr(), "--topic", "busy", "--producers", "50", "--count", "40", "--prefix", "p"],
    );
    assert_delivered(&p, 2000);
    let got = by_key(&consume(&tansu.addr(), "busy", 2000, 3));
    for producer in 0..50 {
        for i in 0..40 {
            assert!(got.contains_key(&format!("p{producer}-{i}")), "record p{producer}-{i} missing");
        }
    }
    assert_eq!(got.len(), 2000);
}

#[test]
fn acks_zero_producer_gets_no_response_and_records_land() {
    let tansu = Tansu::start();
    tansu.create_topic("fire", 1);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let p = client("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "fire", "--count", "200", "--acks", "0"]);
    assert_eq!(p["errors"], Value::Array(vec![]), "{p}");
    assert_eq!(by_key(&consume(&tansu.addr(), "fire", 200, 1)).len(), 200);
    // The connection stayed in sync: a later request/response exchange still works.
    let md = client("ck-metadata", &["--bootstrap", &eg.addr()]);
    assert!(md["topics"].as_array().unwrap().iter().any(|t| t == "fire"));
}

/// Debian's kcat (librdkafka 2.0.2) cannot read tansu's own ApiVersions response (non-empty
/// default tagged fields); through eventgate, which re-encodes that response, it works.
#[test]
fn kcat_works_through_eventgate() {
    let tansu = Tansu::start();
    tansu.create_topic("kc", 1);
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let mut produce = Command::new("kcat")
        .args(["-b", &eg.addr(), "-P", "-t", "kc", "-K", ":"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat");
    produce.stdin.take().unwrap().write_all(b"k1:{\"n\":1}\nk2:{\"n\":2}\n").unwrap();
    assert!(produce.wait().unwrap().success());
    let out = Command::new("kcat")
        .args(["-b", &eg.addr(), "-C", "-t", "kc", "-o", "beginning", "-c", "2", "-f", "%k=%s\n"])
        .output()
        .expect("kcat");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k1={\"n\":1}\nk2={\"n\":2}\n");
}

// ------------------------------------------------------------------ raw frames

fn request_frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    eventgate::wire::header::request_frame(key, version, correlation_id, "raw-test", body).unwrap().to_vec()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The connection is closed by eventgate: reads hit end of stream (or a reset).
fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected the connection to be closed, read {n} bytes"),
    }
}

fn metadata_works(port: u16) {
    let mut s = connect(port);
    s.write_all(&request_frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default())).unwrap();
    let body = read_frame(&mut s).unwrap();
    let mut b = bytes::Bytes::from(body);
    let h = ResponseHeader::decode(&mut b, ApiKey::Metadata.response_header_version(12)).unwrap();
    assert_eq!(h.correlation_id, 1);
    MetadataResponse::decode(&mut b, 12).unwrap();
}

#[test]
fn pipelined_requests_are_answered_in_order_across_versions() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let mut s = connect(eg.port);
    let mut all = Vec::new();
    for (i, v) in (0..=12i16).enumerate() {
        all.extend(request_frame(ApiKey::Metadata, v, 100 + i as i32, &MetadataRequest::default()));
    }
    s.write_all(&all).unwrap();
    for (i, v) in (0..=12i16).enumerate() {
        let mut b = bytes::Bytes::from(read_frame(&mut s).unwrap());
        let h = ResponseHeader::decode(&mut b, ApiKey::Metadata.response_header_version(v)).unwrap();
        assert_eq!(h.correlation_id, 100 + i as i32);
        let m = MetadataResponse::decode(&mut b, v).unwrap();
        assert!(m.brokers.iter().all(|b| b.port == i32::from(eg.node_port)), "v{v}: {m:?}");
    }
}

#[test]
fn too_new_api_versions_request_gets_unsupported_version_in_v0_form() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &[]);
    let mut s = connect(eg.port);
    // A v99 request: the body is whatever a future client sends; eventgate must not parse it.
    let mut f = request_frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    f[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&f).unwrap();
    let mut b = bytes::Bytes::from(read_frame(&mut s).unwrap());
    let h = ResponseHeader::decode(&mut b, 0).unwrap();
    assert_eq!(h.correlation_id, 5);
    let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
    assert_eq!(r.error_code, 35);
    assert_eq!(r.api_keys[0].api_key, ApiKey::ApiVersions as i16);
    // The client retries with a version eventgate knows, on the same connection.
    s.write_all(&request_frame(ApiKey::ApiVersions, 3, 6, &ApiVersionsRequest::default())).unwrap();
    let mut b = bytes::Bytes::from(read_frame(&mut s).unwrap());
    assert_eq!(ResponseHeader::decode(&mut b, 0).unwrap().correlation_id, 6);
    let r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
    let produce = r.api_keys.iter().find(|k| k.api_key == 0).unwrap();
    assert_eq!(produce.min_version, 0);
    assert!(produce.max_version <= 12);
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let tansu = Tansu::start();
    let eg = Eventgate::start(&tansu.addr(), &["--max-frame-bytes", "1048576"]);
    let mut bystander = connect(eg.port);
    bystander.write_all(&request_frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default())).unwrap();
    read_frame(&mut bystander).unwrap();

    // Negative size.
    let mut s = connect(eg.port);
    s.write_all(&(-1i32).to_be_bytes()).unwrap();
    assert_closed(&mut s);
    // Larger than --max-frame-bytes.
    let mut s = connect(eg.port);
    s.write_all(&(2 * 1024 * 1024i32).to_be_bytes()).unwrap();
    assert_closed(&mut s);
    // A frame too short to hold a request header.
    let mut s = connect(eg.port);
    s.write_all(&[0, 0, 0, 2, 0, 3]).unwrap();
    assert_closed(&mut s);
    // A Produce request whose body is garbage.
    let mut s = connect(eg.port);
    let mut f = request_frame(ApiKey::Produce, 9, 1, &ProduceRequest::default());
    f.truncate(4 + 19); // size, then header v2: key, version, correlation id, client id, no tags
    f.extend([0xff, 0xff, 0xff]); // a transactional id length that never ends
    let len = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&f).unwrap();
    assert_closed(&mut s);
    // A client that goes away in the middle of a request.
    let mut s = connect(eg.port);
    s.write_all(&[0, 0, 0, 100, 0, 3, 0, 12]).unwrap();
    s.shutdown(Shutdown::Both).unwrap();

    // Everything else is unharmed.
    bystander.write_all(&request_frame(ApiKey::Metadata, 12, 2, &MetadataRequest::default())).unwrap();
    read_frame(&mut bystander).unwrap();
    metadata_works(eg.port);
    let log = eg.proc.log_text();
    assert!(log.contains("frame of 2097152 bytes exceeds the maximum of 1048576 bytes"), "{log}");
    assert!(log.contains("negative frame size"), "{log}");
    wait_until("the mid-request close to be logged", Duration::from_secs(10), || {
        eg.proc.log_text().contains("in the middle of a")
    });
}

#[test]
fn broker_that_answers_with_an_unknown_correlation_id_loses_only_that_connection() {
    // A broker cannot be made to misnumber its answers, so this one is a raw socket that does.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Readiness probes open connections that send nothing; answer the first one that asks.
        loop {
            let (mut s, _) = fake.accept().unwrap();
            let Ok(req) = read_frame(&mut s) else {
                continue;
            };
            let cid = i32::from_be_bytes(req[4..8].try_into().unwrap());
            let mut resp = 8i32.to_be_bytes().to_vec();
            resp.extend((cid + 1000).to_be_bytes());
            resp.extend([0, 0, 0, 0]);
            s.write_all(&resp).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            return;
        }
    });
    let eg = Eventgate::start(&format!("127.0.0.1:{fake_port}"), &[]);
    let mut s = connect(eg.port);
    s.write_all(&request_frame(ApiKey::Metadata, 12, 7, &MetadataRequest::default())).unwrap();
    assert_closed(&mut s);
    server.join().unwrap();
    wait_until("the correlation error to be logged", Duration::from_secs(10), || {
        eg.proc.log_text().contains("correlation id 1007 while 7 was expected")
    });
    let health = Command::new("curl").args(["-sf", &eg.http("/healthz")]).output().unwrap();
    assert!(health.status.success());
}

#[test]
fn broker_going_away_closes_client_connections_and_eventgate_stays_up() {
    let mut tansu = Tansu::start();
    let mut eg = Eventgate::start(&tansu.addr(), &[]);
    let mut s = connect(eg.port);
    s.write_all(&request_frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default())).unwrap();
    read_frame(&mut s).unwrap();
    tansu.proc.signal_and_wait("KILL", Duration::from_secs(10));
    assert_closed(&mut s);
    // New clients are refused cleanly while no broker is reachable (at their first request: the
    // broker connection opens then), and the process lives on.
    let mut s = connect(eg.port);
    s.write_all(&request_frame(ApiKey::Metadata, 12, 2, &MetadataRequest::default())).unwrap();
    assert_closed(&mut s);
    assert!(eg.proc.is_running());
    wait_until("the unreachable broker to be logged", Duration::from_secs(10), || {
        eg.proc.log_text().contains("broker unreachable")
    });
}

#[test]
fn sigterm_and_sigint_stop_gracefully_with_exit_code_zero() {
    let tansu = Tansu::start();
    for signal in ["TERM", "INT"] {
        let mut eg = Eventgate::start(&tansu.addr(), &[]);
        metadata_works(eg.port);
        // An idle client connection must not hold shutdown beyond its bound.
        let _idle = connect(eg.port);
        let status = eg.proc.signal_and_wait(signal, Duration::from_secs(15)).expect("eventgate exited");
        assert!(status.success(), "SIG{signal}: {status}");
        assert!(!port_open(eg.port));
    }
}

#[test]
fn a_busy_fixed_broker_port_fails_the_start_with_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_eventgate"))
        .args(["serve", "--upstream", "127.0.0.1:1", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port()), "--spec-dir", ""])
        .args(["--node-port", &format!("111={port}"), "--node-id-max", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot open the Kafka listener on 127.0.0.1:{port}")), "{stderr}");
}
