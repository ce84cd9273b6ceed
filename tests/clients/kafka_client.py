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

def ck_conf(a, **extra):
    conf = {"bootstrap.servers": a.bootstrap, "broker.address.family": "v4"}
    if a.debug:
        conf["debug"] = a.debug
    conf.update(extra)
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

def kp_produce(a):
    from kafka import KafkaProducer

    kw = {"bootstrap_servers": a.bootstrap, "acks": int(a.acks) if a.acks != "all" else "all",
          "linger_ms": a.linger_ms, "max_request_size": max(1_048_576, a.size * 2 + 10_000)}
    if a.compression != "none":
        kw["compression_type"] = a.compression
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
                      consumer_timeout_ms=int(a.timeout * 1000))
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

    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=int(a.timeout * 1000))
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
    a = ap.parse_args()
    {
        "ck-produce": ck_produce,
        "ck-produce-many": ck_produce_many,
        "ck-consume": ck_consume,
        "ck-metadata": ck_metadata,
        "kp-produce": kp_produce,
        "kp-consume-group": kp_consume_group,
        "kp-admin": kp_admin,
    }[a.command](a)


if __name__ == "__main__":
    main()
