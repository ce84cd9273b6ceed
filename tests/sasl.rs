//! SASL through eventgate, against a tansu broker that authenticates (SCRAM-SHA-512 and -256 users
//! in a SQLite store, since tansu's in-memory store cannot keep users across the restart that
//! turns authentication on) and real clients: SASL_PLAINTEXT and SASL_SSL (TLS to eventgate and
//! from eventgate to a TLS terminator in front of the broker), produce, consume in a group, an
//! idempotent producer, a wrong password, and the principal on the mirrored events.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::stream::read_stream;
use support::*;

/// The tansu built with SQLite storage (`scripts/deps.sh test` builds it), unless `TANSU_SASL`
/// names another.
fn tansu_sasl() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_SASL") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cargo/tansu-sasl/bin/tansu");
    assert!(p.is_file(), "{} not found: run `make test`, which builds it, or set TANSU_SASL", p.display());
    p
}

/// A tansu broker with authentication on and two users: alice (SCRAM-SHA-512) and bob
/// (SCRAM-SHA-256). Its advertised address can be a TLS terminator's.
struct SaslBroker {
    port: u16,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    advertised: String,
}

impl SaslBroker {
    fn start(topic: &str, advertised_port: Option<u16>) -> SaslBroker {
        let port = free_port();
        let advertised = format!("127.0.0.1:{}", advertised_port.unwrap_or(port));
        let mut b = SaslBroker { port, proc: None, dir: tempfile::tempdir().expect("tempdir"), advertised };
        // Users are created with authentication off; they live in the SQLite store.
        b.run(false);
        let broker = format!("tcp://127.0.0.1:{port}");
        let tansu = |args: &[&str]| {
            let out = Command::new(tansu_sasl()).args(args).output().expect("tansu runs");
            assert!(out.status.success(), "tansu {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        tansu(&["topic", "create", "--broker", &broker, "--partitions", "1", topic]);
        tansu(&["user", "create", "--broker", &broker, "--mechanism", "scram512", "alice", "alice-secret"]);
        tansu(&["user", "create", "--broker", &broker, "--mechanism", "scram256", "bob", "bob-secret"]);
        b.run(true);
        b
    }

    fn run(&mut self, authentication: bool) {
        if let Some(mut p) = self.proc.take() {
            p.signal_and_wait("TERM", Duration::from_secs(10));
        }
        let mut cmd = Command::new(tansu_sasl());
        cmd.current_dir(self.dir.path()).args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{}", self.port),
            "--advertised-listener-url",
            &format!("tcp://{}", self.advertised),
            "--storage-engine",
            "sqlite://tansu.db",
        ]);
        if authentication {
            cmd.arg("--authentication");
        }
        let proc = Proc::spawn("tansu-sasl", &mut cmd);
        wait_until("tansu to listen", Duration::from_secs(30), || port_open(self.port));
        self.proc = Some(proc);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn sasl(mechanism: &str, user: &str, password: &str, protocol: &str) -> Vec<String> {
    [
        format!("security.protocol={protocol}"),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ]
    .into_iter()
    .flat_map(|c| ["--config".to_owned(), c])
    .collect()
}

fn run_client(command: &str, args: &[String]) -> Value {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client(command, &refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_through_eventgate_produce_consume_in_a_group_and_the_principal_is_mirrored() {
    let broker = SaslBroker::start("orders", None);
    let nats = Nats::start();
    let eg = Eventgate::start(&broker.addr(), &["--nats-url", &nats.url()]);
    for (mechanism, user, password) in
        [("SCRAM-SHA-512", "alice", "alice-secret"), ("SCRAM-SHA-256", "bob", "bob-secret")]
    {
        let auth = sasl(mechanism, user, password, "SASL_PLAINTEXT");
        let mut args: Vec<String> =
            ["--bootstrap", &eg.addr(), "--topic", "orders", "--count", "10", "--prefix", user, "--idempotent"]
                .into_iter()
                .map(str::to_owned)
                .collect();
        args.extend(auth.clone());
        let p = run_client("ck-produce", &args);
        assert_eq!(p["delivered"], 10, "{mechanism}: {p}");
        let mut args: Vec<String> = ["--bootstrap", &eg.addr(), "--topic", "orders", "--count", "10", "--group", user]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.extend(auth);
        // A group of its own, from the start of the topic: the first ten records.
        let c = run_client("ck-consume", &args);
        assert_eq!(c["records"].as_array().map(Vec::len), Some(10), "{mechanism}: {c}");
    }
    // Every event says who produced it; nothing says a secret.
    let stored = read_stream(&nats.url(), "eventgate.records.>", 20, Duration::from_secs(30)).await;
    assert_eq!(stored.len(), 20);
    for s in &stored {
        let key = s.event["subject"].as_str().expect("key");
        let who = key.split('-').next().expect("prefix");
        assert_eq!(s.event["principal"], who, "{}", s.event);
        assert!(!s.event.to_string().contains("secret"));
    }
    assert!(eg.metric("eventgate_kafka_authentications_total{mechanism=\"SCRAM\",outcome=\"ok\"}") >= 2.0);
    assert!(eg.metric("eventgate_kafka_produce_requests_total{principal=\"alice\"}") >= 1.0);
}

/// A wrong password fails through eventgate exactly as it fails without it, and as fast: tansu
/// ends a failed SCRAM exchange by closing the connection (no SaslAuthenticate error answer), so
/// the client sees a transport failure either way; eventgate neither hides nor delays it, and
/// records no principal.
#[test]
fn a_wrong_password_fails_as_it_does_without_eventgate() {
    let broker = SaslBroker::start("orders", None);
    let eg = Eventgate::start(&broker.addr(), &[]);
    let attempt = |bootstrap: &str| {
        let mut args: Vec<String> =
            ["--bootstrap", bootstrap, "--topic", "orders", "--timeout", "10"].into_iter().map(str::to_owned).collect();
        args.extend(sasl("SCRAM-SHA-512", "alice", "n0t-alices-p4ssword", "SASL_PLAINTEXT"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let result = try_client("ck-metadata", &refs);
        (result, started.elapsed())
    };
    let (direct, direct_took) = attempt(&broker.addr());
    let (through, through_took) = attempt(&eg.addr());
    let direct = direct.expect_err("the broker refuses the password");
    let through = through.expect_err("and so does it through eventgate");
    assert!(direct.contains("Failed to get metadata") && through.contains("Failed to get metadata"), "{through}");
    assert!(through_took <= direct_took + Duration::from_secs(5), "{through_took:?} against {direct_took:?} direct");
    let log = eg.proc.log_text();
    assert!(!log.contains("client authenticated"), "{log}");
    assert!(!log.contains("n0t-alices-p4ssword"), "the password never reaches a log");
}

#[test]
fn sasl_ssl_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "sasl-ca");
    let leaf = ca.issue("sasl-server", pki::LOOPBACK);
    // The broker is reached through a TLS terminator, which it advertises.
    let tls_port = free_port();
    let broker = SaslBroker::start("orders", Some(tls_port));
    let _terminator = TlsTerminator::start(tls_port, &leaf.chain, &leaf.key, broker.port);
    let eg = Eventgate::start(
        &format!("127.0.0.1:{tls_port}"),
        &[
            "--upstream-tls",
            "--upstream-ca",
            ca.cert.to_str().expect("utf-8"),
            "--tls-cert",
            leaf.chain.to_str().expect("utf-8"),
            "--tls-key",
            leaf.key.to_str().expect("utf-8"),
        ],
    );
    let mut auth = sasl("SCRAM-SHA-512", "alice", "alice-secret", "SASL_SSL");
    auth.extend(["--config".to_owned(), format!("ssl.ca.location={}", ca.cert.display())]);
    let mut args: Vec<String> =
        ["--bootstrap", &eg.addr(), "--topic", "orders", "--count", "5"].into_iter().map(str::to_owned).collect();
    args.extend(auth.clone());
    let p = run_client("ck-produce", &args);
    assert_eq!(p["delivered"], 5, "{p}");
    let mut args: Vec<String> = ["--bootstrap", &eg.addr(), "--topic", "orders", "--count", "5", "--group", "ssl"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(auth);
    let c = run_client("ck-consume", &args);
    assert_eq!(c["records"].as_array().map(Vec::len), Some(5), "{c}");
    assert!(eg.proc.log_text().contains("client authenticated"));
}
