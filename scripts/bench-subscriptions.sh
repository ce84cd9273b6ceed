#!/usr/bin/env bash
# Subscriptions end to end, in one run on this machine: records produced through eventgate (release
# build) into tansu, mirrored into a current nats-server, delivered by a subscription to
# `eventgate bench-sink` (a counting webhook). Three measurements, each on a topic of its own:
#   binary      RECORDS records, binary mode, unordered, concurrency 32: events/s at the sink
#   batch       BATCH_RECORDS records, batch mode (BATCH_EVENTS per request): events/s at the sink
#   latency     LAT_RATE records/s for LAT_SECONDS s, binary mode: p50/p99 from the record's
#               timestamp (stamped when the producer sends it) to its arrival at the sink
# The throughput measurements deliver a backlog: the records are produced and mirrored first, then
# the subscription is applied (start: all), so the sink's rate is the delivery engine's, not the
# producer's or the mirror's (scripts/bench.sh measures those). The latency one is live: the
# subscription exists before the first record is produced.
#
#   RECORDS=100000 BATCH_RECORDS=300000 ./scripts/bench-subscriptions.sh
#
# Result: one JSON line per measurement on stdout, all in target/bench/subscriptions-<time>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${EVENTGATE_BIN:-target/release/eventgate}
RECORDS=${RECORDS:-100000}
BATCH_RECORDS=${BATCH_RECORDS:-300000}
BATCH_EVENTS=${BATCH_EVENTS:-500}
RECORD_SIZE=${RECORD_SIZE:-1024}
CONCURRENCY=${CONCURRENCY:-32}
LAT_RATE=${LAT_RATE:-1000}
LAT_SECONDS=${LAT_SECONDS:-20}
MEASURES=${MEASURES:-"binary batch latency"}
OUT_DIR=target/bench
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/subscriptions-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$OUT"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
work=$(mktemp -d)
trap 'cleanup; rm -rf "$work"' EXIT

start_tansu_nats "$work"
for t in sub-binary sub-batch sub-latency; do
  tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions 1 "$t" >/dev/null
done
start_eventgate "$BIN" "$work/eventgate.log" --mirror-buffer-bytes 2000000000

mirrored() { curl -s "http://127.0.0.1:$hport/metrics" | awk '/^eventgate_mirror_events_total/ { s += $NF } END { print s + 0 }'; }
total=0

# measure backlog|live NAME TOPIC RECORDS CHANNEL_SPEC BENCH_ARGS...
measure() {
  local how=$1 name=$2 topic=$3 records=$4 channel=$5; shift 5
  local sport bench; sport=$(free_port)
  total=$((total + records))
  if [ "$how" = backlog ]; then
    bench=$("$BIN" bench --bootstrap "127.0.0.1:$lport" --topic "$topic" --records "$records" \
      --record-size "$RECORD_SIZE" --no-consume "$@")
    # Every record built into an event (publishing follows within the mirror's window).
    for _ in $(seq 1 1200); do [ "$(mirrored)" -ge "$total" ] && break; sleep 0.1; done
  fi
  "$BIN" bench-sink --listen "127.0.0.1:$sport" --expect "$records" --idle-ms 20000 >"$work/sink-$name.json" &
  local sink=$!
  wait_port "$sport"
  curl -sf -X POST "http://127.0.0.1:$hport/apply" --data-binary @- >/dev/null <<YAML
apiVersion: eventgate/v1
kind: Channel
metadata: {name: $name}
spec: {url: "http://127.0.0.1:$sport/in", $channel}
---
apiVersion: eventgate/v1
kind: Subscription
metadata: {name: $name}
spec: {channel: $name, topics: [$topic], start: all, delivery: {concurrency: $CONCURRENCY}}
YAML
  if [ "$how" = live ]; then
    bench=$("$BIN" bench --bootstrap "127.0.0.1:$lport" --topic "$topic" --records "$records" \
      --record-size "$RECORD_SIZE" --no-consume "$@")
  fi
  wait "$sink"
  printf '{"measure":"%s","records":%s,"record_size":%s,"concurrency":%s,"channel":"%s","nats_server":"%s","sink":%s,"produce":%s}\n' \
    "$name" "$records" "$RECORD_SIZE" "$CONCURRENCY" "$channel" "$("$(nats_server)" --version)" \
    "$(cat "$work/sink-$name.json")" "$bench" | tee -a "$OUT"
}

for m in $MEASURES; do
  case $m in
    binary) measure backlog binary sub-binary "$RECORDS" "mode: binary" ;;
    batch) measure backlog batch sub-batch "$BATCH_RECORDS" "mode: batch, batch: {maxEvents: $BATCH_EVENTS, maxWait: 50ms}" ;;
    latency) measure live latency sub-latency $((LAT_RATE * LAT_SECONDS)) "mode: binary" \
      --rate "$LAT_RATE" --batch-records 1 --in-flight 1 --stamp ;;
  esac
done
