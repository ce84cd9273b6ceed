//! TLS with real clients and a real broker: eventgate's Kafka listeners over TLS (server
//! certificate, client certificates, rotation) in front of a plaintext tansu, and eventgate
//! speaking TLS to the brokers through a terminator nobody here wrote (socat `OPENSSL-LISTEN` in
//! front of tansu, which advertises the terminator's port). Certificates are made by the `openssl`
//! command line in each test's temporary directory (`support::pki`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `--config` options that make a client speak SSL, trusting `ca`, with a client certificate if
/// given (the same names serve librdkafka, kafka-python and `tls-probe`).
fn ssl(ca: &Path, cert: Option<&pki::Leaf>) -> Vec<String> {
    let mut v = vec!["security.protocol=SSL".to_owned(), format!("ssl.ca.location={}", ca.display())];
    if let Some(c) = cert {
        v.push(format!("ssl.certificate.location={}", c.cert.display()));
        v.push(format!("ssl.key.location={}", c.key.display()));
    }
    v
}

/// `args`, then `--config` for each of `config`.
fn with_config(args: &[&str], config: &[String]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    for c in config {
        v.push("--config".into());
        v.push(c.clone());
    }
    v
}

/// Runs a client command with `--config` options.
fn run(command: &str, args: &[&str], config: &[String]) -> Value {
    let v = with_config(args, config);
    client(command, &v.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A TLS handshake and one ApiVersions exchange with python's `ssl` module (`tls-probe`).
fn probe(addr: &str, config: &[String]) -> Value {
    run("tls-probe", &["--bootstrap", addr, "--timeout", "10"], config)
}

fn assert_delivered(v: &Value, n: u64) {
    assert_eq!(v["errors"], Value::Array(vec![]), "producer errors: {v}");
    assert_eq!(v["delivered"].as_u64(), Some(n), "delivered: {v}");
}

/// A producer that cannot get through: nothing delivered, every record failed (in seconds).
fn produce_fails(addr: &str, topic: &str, config: &[String]) {
    let mut config = config.to_vec();
    config.push("message.timeout.ms=5000".to_owned());
    let p = run(
        "ck-produce",
        &["--bootstrap", addr, "--topic", topic, "--count", "5", "--timeout", "30", "--prefix", "lost"],
        &config,
    );
    assert_eq!(p["delivered"].as_u64(), Some(0), "{p}");
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(5), "{p}");
}

/// `count` records of `topic` (partitions 0..`partitions`) read with librdkafka.
fn consume_with(addr: &str, topic: &str, count: usize, partitions: u32, config: &[String]) -> Vec<Value> {
    let count = count.to_string();
    let partitions = partitions.to_string();
    let c =
        run("ck-consume", &["--bootstrap", addr, "--topic", topic, "--count", &count, "--assign", &partitions], config);
    c["records"].as_array().expect("records").clone()
}

/// A plaintext Kafka request on a TLS-only port gets no Kafka answer: the connection is closed,
/// at most after a TLS alert record (content type 21).
fn assert_plaintext_refused(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // ApiVersions v0, correlation id 7, client id "plain".
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 7, 0, 5];
    frame.extend(b"plain");
    let mut req = (frame.len() as i32).to_be_bytes().to_vec();
    req.extend(frame);
    let _ = s.write_all(&req);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("port {port}: a plaintext request was neither answered with a close nor refused: {e}"),
    }
    assert!(got.is_empty() || got[0] == 21, "port {port} answered a plaintext request: {got:?}");
}

fn log_has(eg: &Eventgate, what: &str, cond: impl Fn(&str) -> bool) {
    wait_until(what, Duration::from_secs(15), || cond(&eg.proc.log_text()));
}

fn tls_args<'a>(leaf: &'a pki::Leaf, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--tls-cert", path(&leaf.chain), "--tls-key", path(&leaf.key)];
    v.extend_from_slice(extra);
    v
}

#[test]
fn ssl_to_eventgate_plaintext_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "ca");
    let server = ca.issue("server", pki::LOOPBACK);
    let tansu = Tansu::start();
    tansu.create_topic("secure", 2);
    let eg = Eventgate::start(&tansu.addr(), &tls_args(&server, &[]));
    let conf = ssl(&ca.cert, None);

    // The metadata rewrite is unchanged: eventgate's host and broker port.
    let md = run("ck-metadata", &["--bootstrap", &eg.addr()], &conf);
    let brokers = md["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1, "{md}");
    assert_eq!(brokers[0]["host"], "127.0.0.1", "{md}");
    assert_eq!(brokers[0]["port"].as_u64(), Some(u64::from(eg.node_port)), "{md}");

    // librdkafka and kafka-python produce over TLS (host names verified: IP SAN 127.0.0.1).
    let ck =
        run("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "secure", "--count", "200", "--prefix", "ck"], &conf);
    assert_delivered(&ck, 200);
    let kp =
        run("kp-produce", &["--bootstrap", &eg.addr(), "--topic", "secure", "--count", "100", "--prefix", "kp"], &conf);
    assert_delivered(&kp, 100);

    // Both read everything back over TLS, and it is what the broker holds.
    let through = by_key(&consume_with(&eg.addr(), "secure", 300, 2, &conf));
    assert_eq!(through.len(), 300);
    assert_eq!(through, by_key(&consume(&tansu.addr(), "secure", 300, 2)), "records differ from the broker's");
    let group = run(
        "kp-consume-group",
        &["--bootstrap", &eg.addr(), "--topic", "secure", "--count", "300", "--group", "tls"],
        &conf,
    );
    assert_eq!(by_key(group["records"].as_array().expect("records")).len(), 300, "{group}");

    // TLS 1.2 and 1.3, on the bootstrap and the broker listener; no plaintext on either.
    for port in [eg.port, eg.node_port] {
        let addr = format!("127.0.0.1:{port}");
        for (version, name) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
            let p = run("tls-probe", &["--bootstrap", &addr, "--tls-version", version], &conf);
            assert_eq!(p["ok"], true, "{name} on {port}: {p}");
            assert_eq!(p["version"], name, "{p}");
            assert_eq!(p["peer_sha256"].as_str(), Some(pki::sha256(&server.cert).as_str()), "{p}");
        }
        assert_plaintext_refused(port);
    }
}

#[test]
fn certificate_chain_with_an_intermediate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = pki::Ca::root(dir.path(), "root");
    let intermediate = root.intermediate("intermediate");
    let server = intermediate.issue("server", pki::LOOPBACK);
    let tansu = Tansu::start();
    // --tls-cert is the leaf followed by the intermediate; clients trust only the root.
    let eg = Eventgate::start(&tansu.addr(), &tls_args(&server, &[]));
    let p = probe(&eg.addr(), &ssl(&root.cert, None));
    assert_eq!(p["ok"], true, "{p}");
    let md = run("ck-metadata", &["--bootstrap", &eg.addr()], &ssl(&root.cert, None));
    assert_eq!(md["brokers"][0]["port"].as_u64(), Some(u64::from(eg.node_port)), "{md}");
}

#[test]
fn plaintext_to_eventgate_ssl_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "broker-ca");
    let broker = ca.issue("broker", pki::LOOPBACK);
    let tls_port = free_port();
    let tansu = Tansu::start_advertising(Some(&format!("127.0.0.1:{tls_port}")));
    let term = TlsTerminator::start(tls_port, &broker.cert, &broker.key, tansu.port);
    tansu.create_topic("upstream", 2);
    // The terminator itself works, with this certificate: what fails below is eventgate's.
    let p = probe(&term.addr(), &ssl(&ca.cert, None));
    assert_eq!(p["ok"], true, "socat terminator: {p}");

    {
        let eg = Eventgate::start(&term.addr(), &["--upstream-tls", "--upstream-ca", path(&ca.cert)]);
        let md = client("ck-metadata", &["--bootstrap", &eg.addr()]);
        assert_eq!(md["brokers"][0]["host"], "127.0.0.1", "{md}");
        assert_eq!(md["brokers"][0]["port"].as_u64(), Some(u64::from(eg.node_port)), "{md}");
        let p = client(
            "ck-produce",
            &["--bootstrap", &eg.addr(), "--topic", "upstream", "--count", "200", "--prefix", "ck"],
        );
        assert_delivered(&p, 200);
        let p = client(
            "kp-produce",
            &["--bootstrap", &eg.addr(), "--topic", "upstream", "--count", "50", "--prefix", "kp"],
        );
        assert_delivered(&p, 50);
        let through = by_key(&consume(&eg.addr(), "upstream", 250, 2));
        assert_eq!(through.len(), 250);
        // tansu advertises the terminator, so the records are read directly over TLS from it.
        let direct = by_key(&consume_with(&term.addr(), "upstream", 250, 2, &ssl(&ca.cert, None)));
        assert_eq!(through, direct, "records read through eventgate differ from the broker's");
    }

    // The platform's roots do not know this CA: the client gets nothing, the log says why.
    {
        let eg = Eventgate::start(&term.addr(), &["--upstream-tls"]);
        produce_fails(&eg.addr(), "upstream", &[]);
        log_has(&eg, "the upstream verification failure to be logged", |log| {
            let l = log.to_ascii_lowercase();
            l.contains("unknownissuer") || l.contains("unknown issuer")
        });
    }

    // Without verification it works, with a loud warning.
    {
        let eg = Eventgate::start(&term.addr(), &["--upstream-tls", "--upstream-tls-insecure"]);
        let p = client(
            "ck-produce",
            &["--bootstrap", &eg.addr(), "--topic", "upstream", "--count", "20", "--prefix", "in"],
        );
        assert_delivered(&p, 20);
        assert_eq!(by_key(&consume(&eg.addr(), "upstream", 270, 2)).len(), 270);
        log_has(&eg, "the insecure-upstream warning", |log| {
            log.lines().any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("insecure"))
        });
    }
}

#[test]
fn upstream_server_name_and_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "broker-ca");
    // The broker's certificate names a host that is not the address eventgate dials.
    let broker = ca.issue("broker", &["DNS:kafka.internal"]);
    let clients = pki::Ca::root(dir.path(), "clients");
    let gateway = clients.issue("gateway", &["DNS:gateway"]);
    let tls_port = free_port();
    let tansu = Tansu::start_advertising(Some(&format!("127.0.0.1:{tls_port}")));
    let term =
        TlsTerminator::start_requiring_client_cert(tls_port, &broker.cert, &broker.key, tansu.port, &clients.cert);
    tansu.create_topic("mtls", 1);
    let upstream_ca = path(&ca.cert);

    {
        let eg = Eventgate::start(
            &term.addr(),
            &[
                "--upstream-tls",
                "--upstream-ca",
                upstream_ca,
                "--upstream-tls-server-name",
                "kafka.internal",
                "--upstream-cert",
                path(&gateway.cert),
                "--upstream-key",
                path(&gateway.key),
            ],
        );
        let p = client("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "mtls", "--count", "50"]);
        assert_delivered(&p, 50);
        assert_eq!(by_key(&consume(&eg.addr(), "mtls", 50, 1)).len(), 50);
    }

    // The broker's name is checked: 127.0.0.1 is not in its certificate.
    {
        let eg = Eventgate::start(
            &term.addr(),
            &[
                "--upstream-tls",
                "--upstream-ca",
                upstream_ca,
                "--upstream-cert",
                path(&gateway.cert),
                "--upstream-key",
                path(&gateway.key),
            ],
        );
        produce_fails(&eg.addr(), "mtls", &[]);
        log_has(&eg, "the name mismatch to be logged", |log| {
            let l = log.to_ascii_lowercase();
            l.contains("notvalidforname") || l.contains("not valid for name")
        });
    }

    // Without its certificate eventgate is refused by the broker's side.
    {
        let eg = Eventgate::start(
            &term.addr(),
            &["--upstream-tls", "--upstream-ca", upstream_ca, "--upstream-tls-server-name", "kafka.internal"],
        );
        produce_fails(&eg.addr(), "mtls", &[]);
    }
}

#[test]
fn client_certificate_required_and_missing_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "ca");
    let server = ca.issue("server", pki::LOOPBACK);
    let clients = pki::Ca::root(dir.path(), "clients");
    let alice = clients.issue("alice", &["DNS:alice"]);
    let tansu = Tansu::start();
    tansu.create_topic("guarded", 1);
    // `required` is the default once a client CA is given.
    let eg = Eventgate::start(&tansu.addr(), &tls_args(&server, &["--tls-client-ca", path(&clients.cert)]));

    // No certificate: the handshake is refused (with TLS 1.3 the client sees it at its first read).
    for version in ["1.2", "1.3"] {
        let p = run("tls-probe", &["--bootstrap", &eg.addr(), "--tls-version", version], &ssl(&ca.cert, None));
        assert_eq!(p["ok"], false, "TLS {version} without a certificate: {p}");
    }
    produce_fails(&eg.addr(), "guarded", &ssl(&ca.cert, None));

    // A certificate the client CA signed: accepted.
    let with_cert = ssl(&ca.cert, Some(&alice));
    let p = probe(&eg.addr(), &with_cert);
    assert_eq!(p["ok"], true, "{p}");
    let p = run("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "guarded", "--count", "100"], &with_cert);
    assert_delivered(&p, 100);
    assert_eq!(by_key(&consume_with(&eg.addr(), "guarded", 100, 1, &with_cert)).len(), 100);
    let p = run(
        "kp-produce",
        &["--bootstrap", &eg.addr(), "--topic", "guarded", "--count", "10", "--prefix", "kp"],
        &with_cert,
    );
    assert_delivered(&p, 10);
}

#[test]
fn requested_mode_refuses_an_invalid_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "ca");
    let server = ca.issue("server", pki::LOOPBACK);
    let clients = pki::Ca::root(dir.path(), "clients");
    let alice = clients.issue("alice", &["DNS:alice"]);
    let other = pki::Ca::root(dir.path(), "other");
    let mallory = other.issue("mallory", &["DNS:mallory"]);
    let tansu = Tansu::start();
    let eg = Eventgate::start(
        &tansu.addr(),
        &tls_args(&server, &["--tls-client-ca", path(&clients.cert), "--tls-client-auth", "requested"]),
    );

    let p = probe(&eg.addr(), &ssl(&ca.cert, None));
    assert_eq!(p["ok"], true, "no certificate is fine when only requested: {p}");
    let p = probe(&eg.addr(), &ssl(&ca.cert, Some(&alice)));
    assert_eq!(p["ok"], true, "a valid certificate: {p}");
    for version in ["1.2", "1.3"] {
        let p =
            run("tls-probe", &["--bootstrap", &eg.addr(), "--tls-version", version], &ssl(&ca.cert, Some(&mallory)));
        assert_eq!(p["ok"], false, "TLS {version}, a certificate of another CA must be refused: {p}");
    }
    // A self-signed certificate is no better.
    let selfish = pki::Ca::root(dir.path(), "selfish");
    let selfish = pki::Leaf { cert: selfish.cert.clone(), key: selfish.key.clone(), chain: selfish.cert.clone() };
    let p = probe(&eg.addr(), &ssl(&ca.cert, Some(&selfish)));
    assert_eq!(p["ok"], false, "a self-signed certificate must be refused: {p}");
}

/// Replaces `dest` with the contents of `src` the way rotation tools do: write aside, rename.
fn replace_file(src: &Path, dest: &Path) {
    let aside = dest.with_extension("new");
    std::fs::copy(src, &aside).expect("copy");
    std::fs::rename(&aside, dest).expect("rename");
}

#[test]
fn certificate_rotation_keeps_open_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca1 = pki::Ca::root(dir.path(), "ca1");
    let ca2 = pki::Ca::root(dir.path(), "ca2");
    let a = ca1.issue("a", pki::LOOPBACK);
    let b = ca2.issue("b", pki::LOOPBACK);
    let (cert, key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&a.cert, &cert).expect("copy");
    std::fs::copy(&a.key, &key).expect("copy");
    let tansu = Tansu::start();
    tansu.create_topic("rotating", 1);
    let eg = Eventgate::start(
        &tansu.addr(),
        &["--tls-cert", path(&cert), "--tls-key", path(&key), "--tls-reload-ms", "200"],
    );

    // A connection opened with certificate A, kept open across the rotation.
    let hold_args = with_config(&["--bootstrap", &eg.addr(), "--timeout", "10"], &ssl(&ca1.cert, None));
    let mut held = ClientSession::spawn("tls-hold", &hold_args.iter().map(String::as_str).collect::<Vec<_>>());
    let hello = held.read();
    assert_eq!(hello["handshake"], true, "{hello}");
    assert_eq!(hello["peer_sha256"].as_str(), Some(pki::sha256(&a.cert).as_str()), "{hello}");
    let r = held.send("api-versions");
    assert_eq!(r["ok"], true, "{r}");

    replace_file(&b.key, &key);
    replace_file(&b.cert, &cert);
    let fingerprint_b = pki::sha256(&b.cert);
    wait_until("a new handshake to present certificate B", Duration::from_secs(30), || {
        let p = probe(&eg.addr(), &ssl(&ca2.cert, None));
        p["ok"] == true && p["peer_sha256"].as_str() == Some(fingerprint_b.as_str())
    });
    log_has(&eg, "the reload to be logged", |log| log.contains("TLS certificate reloaded"));

    // The open connection keeps working, on its old session.
    for _ in 0..3 {
        let r = held.send("api-versions");
        assert_eq!(r["ok"], true, "{r}");
    }
    // New connections trust only B now, on the broker listener too.
    let p = probe(&eg.addr(), &ssl(&ca1.cert, None));
    assert_eq!(p["ok"], false, "a new connection still got certificate A: {p}");
    let p =
        run("ck-produce", &["--bootstrap", &eg.addr(), "--topic", "rotating", "--count", "20"], &ssl(&ca2.cert, None));
    assert_delivered(&p, 20);
    let p = probe(&format!("127.0.0.1:{}", eg.node_port), &ssl(&ca2.cert, None));
    assert_eq!(p["ok"], true, "broker listener after the rotation: {p}");
}

/// `--http-tls-cert`: the admin API speaks HTTPS only.
#[test]
fn the_admin_listener_speaks_https() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "admin-ca");
    let leaf = ca.issue("admin", pki::LOOPBACK);
    let eg = Eventgate::start(
        &tansu.addr(),
        &["--http-tls-cert", leaf.chain.to_str().expect("utf-8"), "--http-tls-key", leaf.key.to_str().expect("utf-8")],
    );
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl").args(["-s", "-m", "5"]).args(args).output().expect("curl runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let https = format!("https://127.0.0.1:{}/healthz", eg.http_port);
    let (ok, body) = curl(&["--cacert", ca.cert.to_str().expect("utf-8"), &https]);
    assert!(ok && body.contains("ok"), "{body}");
    let (ok, body) = curl(&[&format!("http://127.0.0.1:{}/healthz", eg.http_port)]);
    assert!(!ok || !body.contains("ok"), "plain HTTP must not be served: {body}");
}
