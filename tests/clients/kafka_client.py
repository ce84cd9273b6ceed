#!/usr/bin/env python3
"""Real Kafka clients driven by the Rust integration tests.

Each subcommand runs one client operation against a bootstrap address and prints one JSON document
on stdout, so the Rust test can assert on exactly what the client saw. Two client libraries are used:
confluent-kafka (librdkafka, `ck-*`) and kafka-python (pure Python, `kp-*`).
"""

import argparse
import base64
import hashlib
import json
import sys
import time


def out(doc):
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def payload(i, size, prefix):
    """A JSON-ish value of about `size` bytes that names its own index."""
    head = f'{{"i":{i},"p":"{prefix}","pad":"'
    pad = max(0, size - len(head) - 2)
    return (head + ("x" * pad) + '"}').encode()


def text_or_none(v):
    if v is None:
        return None
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return None


def rec_summary(key, value, headers, partition, offset, topic=None):
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None if key is None else key.decode("utf-8", "replace"),
        "value_len": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "value": None if value is None or len(value) > 4096 else value.decode("utf-8", "replace"),
        # [name, value as text (None when null or not UTF-8), value as base64]
        "headers": [[k, text_or_none(v), None if v is None else base64.b64encode(v).decode()]
                    for k, v in (headers or [])],
    }


# ---------------------------------------------------------------- confluent-kafka (librdkafka)

def parse_config(a):
    """`--config KEY=VALUE` options, in order (librdkafka names)."""
    conf = {}
    for item in a.config or []:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--config {item!r}: expected KEY=VALUE")
        conf[key.strip()] = value
    return conf


def ck_conf(a, **extra):
    conf = {"bootstrap.servers": a.bootstrap, "broker.address.family": "v4"}
    if a.debug:
        conf["debug"] = a.debug
    conf.update(extra)
    # --config comes last: the test has the final word on every setting.
    conf.update(parse_config(a))
    return conf


def ck_produce(a):
    from confluent_kafka import Producer

    extra = {"compression.type": a.compression, "linger.ms": a.linger_ms, "acks": a.acks,
             "message.max.bytes": max(1_000_000, a.size * 2 + 10_000)}
    if a.idempotent:
        extra["enable.idempotence"] = True
    p = Producer(ck_conf(a, **extra))
    delivered, errors = [], []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append({"partition": msg.partition(), "offset": msg.offset(),
                              "key": msg.key().decode() if msg.key() else None})

    values = [line.rstrip("\n").encode() for line in open(a.values_file)] if a.values_file else None
    n = len(values) if values is not None else a.count
    if values is not None and a.count > n:
        values = [values[i % n] for i in range(a.count)]
        n = a.count
    start = time.time()
    for i in range(n):
        if a.rate:
            ahead = start + i / a.rate - time.time()
            if ahead > 0:
                p.poll(ahead)
        value = values[i] if values is not None else payload(i, a.size, a.prefix)
        headers = [tuple(h.split("=", 1)) for h in a.header] if a.header else None
        kwargs = {"value": value, "key": f"{a.prefix}-{i}".encode(), "on_delivery": cb}
        if headers:
            kwargs["headers"] = headers
        if a.partition is not None:
            kwargs["partition"] = a.partition
        while True:
            try:
                p.produce(a.topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(a.timeout)
    out({"delivered": len(delivered), "errors": errors, "unflushed": left, "records": delivered})


def ck_produce_many(a):
    """`--producers` concurrent librdkafka producers, each with its own connections, producing
    `--count` records each with keys `<prefix><producer>-<i>`."""
    from concurrent.futures import ThreadPoolExecutor
    from confluent_kafka import Producer

    def one(n):
        p = Producer(ck_conf(a, **{"linger.ms": a.linger_ms, "acks": a.acks}))
        ok, errors = [0], []

        def cb(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                ok[0] += 1

        for i in range(a.count):
            p.produce(a.topic, key=f"{a.prefix}{n}-{i}".encode(), value=payload(i, a.size, f"{a.prefix}{n}"),
                      on_delivery=cb)
            p.poll(0)
        left = p.flush(a.timeout)
        return ok[0], errors, left

    with ThreadPoolExecutor(max_workers=a.producers) as pool:
        results = list(pool.map(one, range(a.producers)))
    out({"delivered": sum(r[0] for r in results), "errors": [e for r in results for e in r[1]],
         "unflushed": sum(r[2] for r in results)})


def ck_consume(a):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(ck_conf(a, **{"group.id": a.group, "auto.offset.reset": "earliest",
                               "enable.auto.commit": False, "fetch.message.max.bytes": 20_000_000}))
    if a.assign is not None:
        c.assign([TopicPartition(a.topic, p, 0) for p in range(a.assign)])
    else:
        c.subscribe([a.topic])
    got, errors = [], []
    deadline = time.time() + a.timeout
    while len(got) < a.count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            errors.append(str(m.error()))
            continue
        got.append(rec_summary(m.key(), m.value(), m.headers(), m.partition(), m.offset(), m.topic()))
    c.close()
    out({"records": got, "errors": errors})


def ck_metadata(a):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(ck_conf(a))
    md = admin.list_topics(timeout=a.timeout)
    out({"brokers": [{"id": b.id, "host": b.host, "port": b.port} for b in md.brokers.values()],
         "topics": sorted(md.topics.keys())})


# ---------------------------------------------------------------- kafka-python

# librdkafka setting -> kafka-python keyword, where the names differ.
KP_NAMES = {
    "security.protocol": "security_protocol",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "ssl.crl.location": "ssl_crlfile",
    "ssl.cipher.suites": "ssl_ciphers",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "client.id": "client_id",
    "request.timeout.ms": "request_timeout_ms",
}


def kp_value(key, value):
    if key == "ssl.endpoint.identification.algorithm":
        return "ssl_check_hostname", value.lower() == "https"
    name = KP_NAMES.get(key, key.replace(".", "_"))
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    if value.lstrip("-").isdigit():
        return name, int(value)
    return name, value


def kp_conf(a):
    """The `--config` settings as kafka-python keywords (an unknown one fails the client loudly)."""
    return dict(kp_value(k, v) for k, v in parse_config(a).items())


def kp_produce(a):
    from kafka import KafkaProducer

    kw = {"bootstrap_servers": a.bootstrap, "acks": int(a.acks) if a.acks != "all" else "all",
          "linger_ms": a.linger_ms, "max_request_size": max(1_048_576, a.size * 2 + 10_000)}
    if a.compression != "none":
        kw["compression_type"] = a.compression
    kw.update(kp_conf(a))
    p = KafkaProducer(**kw)
    values = [line.rstrip("\n").encode() for line in open(a.values_file)] if a.values_file else None
    futures = []
    for i in range(a.count):
        value = values[i % len(values)] if values else payload(i, a.size, a.prefix)
        futures.append(p.send(a.topic, key=f"{a.prefix}-{i}".encode(), value=value, partition=a.partition))
    p.flush(a.timeout)
    delivered, errors = 0, []
    for f in futures:
        try:
            f.get(timeout=a.timeout)
            delivered += 1
        except Exception as e:  # noqa: BLE001 - report every failure to the test
            errors.append(repr(e))
    p.close()
    out({"delivered": delivered, "errors": errors})


def kp_consume_group(a):
    from kafka import KafkaConsumer

    c = KafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=a.group,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=int(a.timeout * 1000), **kp_conf(a))
    got = []
    deadline = time.time() + a.timeout
    while len(got) < a.count and time.time() < deadline:
        batch = c.poll(timeout_ms=500)
        for _, msgs in batch.items():
            for m in msgs:
                got.append(rec_summary(m.key, m.value, m.headers, m.partition, m.offset, m.topic))
    c.commit()
    committed = {}
    for tp in c.assignment():
        committed[str(tp.partition)] = c.committed(tp)
    c.close()
    out({"records": got, "committed": committed})


def kp_admin(a):
    from kafka.admin import KafkaAdminClient, NewTopic

    kw = {"request_timeout_ms": int(a.timeout * 1000)}
    kw.update(kp_conf(a))
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, **kw)
    result = {}
    if a.create:
        admin.create_topics([NewTopic(name=t, num_partitions=a.partitions, replication_factor=1) for t in a.create])
        result["created"] = a.create
    result["topics_after_create"] = sorted(admin.list_topics())
    if a.delete:
        admin.delete_topics(a.delete)
        result["deleted"] = a.delete
    result["topics"] = sorted(admin.list_topics())
    cluster = admin.describe_cluster()
    result["cluster"] = cluster
    result["brokers"] = [{"id": b.get("node_id", b.get("broker_id")), "host": b["host"], "port": b["port"]}
                         for b in cluster["brokers"]]
    admin.close()
    out(result)


# ---------------------------------------------------------------- raw TLS (python's ssl module)
#
# Handshakes and one hand-built ApiVersions v0 exchange, to see exactly what a TLS listener accepts.
# The same --config names as the Kafka clients: ssl.ca.location (absent: no verification at all),
# ssl.certificate.location and ssl.key.location (a client certificate),
# ssl.endpoint.identification.algorithm (none: no host name check).

def tls_context(a):
    import ssl

    conf = parse_config(a)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = conf.get("ssl.ca.location")
    if ca:
        ctx.load_verify_locations(ca)
        ctx.check_hostname = conf.get("ssl.endpoint.identification.algorithm", "https").lower() == "https"
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert = conf.get("ssl.certificate.location")
    if cert:
        ctx.load_cert_chain(cert, conf.get("ssl.key.location"))
    if a.tls_version:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[a.tls_version]
        ctx.minimum_version = ctx.maximum_version = v
    return ctx


def tls_connect(a):
    """Connects and handshakes: (the TLS socket or None, a report)."""
    import socket

    host, port = a.bootstrap.rsplit(":", 1)
    report = {"handshake": False}
    raw = None
    try:
        raw = socket.create_connection((host, int(port)), timeout=a.timeout)
        s = tls_context(a).wrap_socket(raw, server_hostname=host)
    except OSError as e:  # ssl.SSLError is an OSError
        if raw is not None:
            raw.close()
        report["error"] = f"{type(e).__name__}: {e}"
        return None, report
    der = s.getpeercert(binary_form=True)
    report.update(handshake=True, version=s.version(), cipher=s.cipher()[0],
                  peer_sha256=hashlib.sha256(der).hexdigest() if der else None)
    return s, report


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def api_versions_v0(s, correlation_id):
    """One ApiVersions v0 request built by hand (size, key 18, version 0, correlation id, client
    id, empty body) and its answer: correlation id, error code, number of API keys."""
    import struct

    client_id = b"tls-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    s.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", recv_exact(s, 4))
    resp = recv_exact(s, size)
    cid, err, n = struct.unpack(">ihi", resp[:10])
    return {"correlation_id": cid, "error_code": err, "api_keys": n}


def exchange(s, correlation_id):
    try:
        r = api_versions_v0(s, correlation_id)
        r["ok"] = r["correlation_id"] == correlation_id and r["error_code"] == 0
    except (OSError, EOFError, ValueError) as e:
        r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return r


def tls_probe(a):
    """Handshake, then one ApiVersions exchange (with TLS 1.3 a refused client certificate only
    shows at the first read). `ok`: both worked."""
    s, report = tls_connect(a)
    if s is not None:
        report["exchange"] = exchange(s, 1)
        s.close()
    report["ok"] = report["handshake"] and report["exchange"]["ok"]
    out(report)


def tls_hold(a):
    """Handshakes, prints the report, then keeps the connection: each `api-versions` line on stdin
    makes one exchange on it (one JSON line each); `close` or end of input ends."""
    s, report = tls_connect(a)
    out(report)
    if s is None:
        return
    n = 0
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "close":
            break
        if line.strip() == "api-versions":
            n += 1
            out(exchange(s, n))
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--prefix", default="r")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--partition", type=int)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0, help="records per second (0: as fast as possible)")
    ap.add_argument("--assign", type=int, help="assign partitions 0..N-1 instead of subscribing")
    ap.add_argument("--group", default="eventgate-test")
    ap.add_argument("--header", action="append")
    ap.add_argument("--values-file")
    ap.add_argument("--create", action="append")
    ap.add_argument("--delete", action="append")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--debug")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka setting (repeatable); mapped to kafka-python's names for kp-*")
    ap.add_argument("--tls-version", choices=["1.2", "1.3"], help="tls-*: only this TLS version")
    a = ap.parse_args()
    {
        "ck-produce": ck_produce,
        "ck-produce-many": ck_produce_many,
        "ck-consume": ck_consume,
        "ck-metadata": ck_metadata,
        "kp-produce": kp_produce,
        "kp-consume-group": kp_consume_group,
        "kp-admin": kp_admin,
        "tls-probe": tls_probe,
        "tls-hold": tls_hold,
    }[a.command](a)


if __name__ == "__main__":
    main()
