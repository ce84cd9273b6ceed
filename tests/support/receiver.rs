//! A CloudEvents webhook for subscription tests: `tests/clients/receiver.py`, an HTTP server that
//! parses every delivery (binary, structured or batch) with the official CloudEvents SDK, records
//! it, and answers as the test scripted (statuses, `Retry-After`, delays, the abuse-protection
//! handshake). See that file for the JSON `/_received` answers.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, http, python_bin, repo_path, wait_until};

/// A running `receiver.py`, killed on drop.
pub struct Receiver {
    pub proc: Proc,
    pub port: u16,
}

/// The port in the `{"port": N}` line the receiver prints once it listens.
fn announced_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| serde_json::from_str::<Value>(l).ok()?.get("port")?.as_u64()?.try_into().ok())
}

impl Receiver {
    /// A receiver on a port it picks itself (no window in which another process can take it).
    pub fn start() -> Receiver {
        Self::start_on(0)
    }

    /// A receiver on `port` (0: any), e.g. to bring one back after [`Receiver::stop`] at the
    /// address a subscription points to. What the old one recorded is gone.
    pub fn start_on(port: u16) -> Receiver {
        let mut proc = Proc::spawn(
            "receiver",
            Command::new(python_bin()).arg(repo_path("tests/clients/receiver.py")).args(["--port", &port.to_string()]),
        );
        let mut bound = None;
        wait_until("the receiver to listen", Duration::from_secs(30), || {
            bound = announced_port(&proc.log_text());
            // Checked after reading the log, so a receiver that printed and then died is seen.
            assert!(bound.is_some() || proc.is_running(), "the receiver exited:\n{}", proc.log_text());
            bound.is_some()
        });
        let bound = bound.expect("announced port");
        assert!(port == 0 || bound == port, "asked for port {port}, the receiver took {bound}");
        Receiver { proc, port: bound }
    }

    /// Kills the receiver (SIGKILL): deliveries then find nothing listening.
    pub fn stop(&mut self) {
        let status = self.proc.signal_and_wait("KILL", Duration::from_secs(10));
        assert!(status.is_some(), "the receiver (pid {}) did not exit", self.proc.pid());
    }

    /// Stops the receiver and starts a fresh one on the same port (nothing recorded, default
    /// script and handshake).
    pub fn restart(&mut self) {
        self.stop();
        *self = Receiver::start_on(self.port);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// A control request; the receiver answers 200 with JSON or the test fails.
    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let text = body.map(Value::to_string);
        let (status, answer) = http(method, &self.url(path), text.as_deref(), &["Content-Type: application/json"]);
        assert_eq!(status, 200, "receiver {method} {path} failed: {answer}");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("receiver {path} answered no JSON ({e}): {answer}"))
    }

    /// Replaces the answer script, e.g.
    /// `{"answers": [{"status": 500, "times": 2, "headers": {"Retry-After": "1"}}], "then": {"status": 200}}`
    /// (an answer also takes `delay_ms` and `body`; `then` defaults to 200).
    pub fn script(&self, script: Value) {
        self.control("POST", "/_script", Some(&script));
    }

    /// How to answer the abuse-protection handshake (`OPTIONS` with `WebHook-Request-Origin`):
    /// `{"allowed_origin": "*" | "<origin>" | null (answer 403), "allowed_rate": "120" | null}`.
    pub fn handshake(&self, config: Value) {
        self.control("POST", "/_handshake", Some(&config));
    }

    /// Forgets every request and handshake recorded so far (the script stays).
    pub fn reset(&self) {
        self.control("POST", "/_reset", None);
    }

    /// Everything recorded: `{"requests": [...], "handshakes": [...], "accepted_ids": [...],
    /// "distinct_accepted": n, "duplicates": n}`.
    pub fn received(&self) -> Value {
        self.control("GET", "/_received", None)
    }

    /// Polls until at least `n_distinct` distinct event ids were accepted (answered 2xx); returns
    /// what the receiver recorded, or fails with it after `deadline`.
    pub fn wait_accepted(&self, n_distinct: usize, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let got = self.received();
            let distinct = got["distinct_accepted"].as_u64().unwrap_or(0);
            if distinct >= n_distinct as u64 {
                return got;
            }
            if Instant::now() >= end {
                panic!(
                    "timed out after {deadline:?} waiting for {n_distinct} distinct accepted events ({distinct} so far); \
                     the receiver recorded:\n{}",
                    serde_json::to_string_pretty(&got).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The events of the requests answered 2xx, in the order they were answered (duplicates kept).
pub fn accepted_events(received: &Value) -> Vec<Value> {
    let requests = received["requests"].as_array().map(Vec::as_slice).unwrap_or_default();
    requests
        .iter()
        .filter(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
        .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
        .collect()
}
