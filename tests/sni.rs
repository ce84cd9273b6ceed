//! SNI routing (`--sni-host-pattern`): every broker on the bootstrap port, told apart by the TLS
//! server name, with real tansu and kafka-python. The names `gw.test` and `broker-N.gw.test` are
//! resolved to 127.0.0.1 inside the client process (no DNS here), as a wildcard DNS record would.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

const CLIENT: &str = r#"
import json, socket, ssl, struct, sys
port, ca, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3]
real = socket.getaddrinfo
def fake(host, *a, **k):
    if isinstance(host, str) and (host == "gw.test" or host.endswith(".gw.test")):
        host = "127.0.0.1"
    return real(host, *a, **k)
socket.getaddrinfo = fake

def metadata(server_name):
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=server_name)
    cid = b"sni-test"
    req = struct.pack(">hhih", 3, 1, 7, len(cid)) + cid + struct.pack(">i", -1)
    s.sendall(struct.pack(">i", len(req)) + req)
    n = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    s.close()
    # v1: correlation id, [node id, host, port, rack]
    brokers, at = struct.unpack(">i", data[4:8])[0], 8
    out = []
    for _ in range(brokers):
        node, hl = struct.unpack(">ih", data[at:at + 6]); at += 6
        host = data[at:at + hl].decode(); at += hl
        (bport,) = struct.unpack(">i", data[at:at + 4]); at += 4
        rl = struct.unpack(">h", data[at:at + 2])[0]; at += 2 + max(rl, 0)
        out.append([node, host, bport])
    return out

result = {"bootstrap": metadata("gw.test"), "by_broker_name": metadata("broker-111.gw.test")}
# A broker no answer has named: eventgate has nowhere to send it, and closes the connection.
try:
    metadata("broker-5.gw.test")
    result["unknown_broker"] = "answered"
except Exception as e:
    result["unknown_broker"] = type(e).__name__
from kafka import KafkaConsumer, KafkaProducer
common = dict(bootstrap_servers=f"gw.test:{port}", security_protocol="SSL", ssl_cafile=ca)
p = KafkaProducer(**common)
for i in range(5):
    p.send(topic, f"sni-{i}".encode())
p.flush(timeout=30)
p.close()
c = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=15000, group_id=None, **common)
got = []
for m in c:
    got.append(m.value.decode())
    if len(got) == 5:
        break
c.close()
result["consumed"] = got
print(json.dumps(result))
"#;

#[test]
fn every_broker_is_served_on_the_bootstrap_port_by_server_name() {
    let tansu = Tansu::start();
    tansu.create_topic("sni", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::root(dir.path(), "sni-ca");
    let leaf = ca.issue("gw", &["DNS:gw.test", "DNS:*.gw.test", "IP:127.0.0.1"]);
    let eg = Eventgate::start(
        &tansu.addr(),
        &[
            "--tls-cert",
            leaf.chain.to_str().expect("utf-8"),
            "--tls-key",
            leaf.key.to_str().expect("utf-8"),
            "--sni-host-pattern",
            "broker-$(nodeId).gw.test",
        ],
    );
    let out = Command::new(python_bin())
        .args(["-c", CLIENT, &eg.port.to_string(), ca.cert.to_str().expect("utf-8"), "sni"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // Brokers are named by the pattern, at the bootstrap port: no per-broker listener exists.
    let advertised = serde_json::json!([[TANSU_NODE_ID, format!("broker-{TANSU_NODE_ID}.gw.test"), eg.port]]);
    assert_eq!(r["bootstrap"], advertised, "{r}");
    assert_eq!(r["by_broker_name"], advertised, "{r}");
    assert_ne!(r["unknown_broker"], "answered", "{r}");
    assert!(eg.proc.log_text().contains("broker 5 is not known yet"), "{}", eg.proc.log_text());
    let consumed: Vec<&str> = r["consumed"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    assert_eq!(consumed, vec!["sni-0", "sni-1", "sni-2", "sni-3", "sni-4"], "{r}");
}

#[test]
fn an_sni_pattern_needs_tls_and_a_placeholder() {
    for (args, why) in [
        (vec!["--sni-host-pattern", "broker-$(nodeId).gw.test"], "needs TLS"),
        (vec!["--tls-cert", "x.pem", "--tls-key", "x.key", "--sni-host-pattern", "gw.test"], "no $(nodeId)"),
    ] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_eventgate")).arg("serve").args(&args).output().expect("eventgate runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("sni_host_pattern"), "{args:?} ({why}): {err}");
    }
}
