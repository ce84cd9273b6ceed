#!/usr/bin/env bash
# The mirror's exactly-once run: RECORDS records through eventgate (release build, default mirror
# settings) into tansu, mirrored into a current nats-server, then `eventgate audit` reads the
# stream back and counts messages, distinct ids, duplicates and gaps. Also reports the publish
# retries eventgate counted.
#
#   RECORDS=1000000 RECORD_SIZE=100 ./scripts/exactly-once.sh
#
# Result: one JSON line on stdout, also kept in target/bench/exactly-once-<time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${EVENTGATE_BIN:-target/release/eventgate}
# The gateway measured (e.g. an earlier build, for before/after); the load and the audit use BIN.
SERVE_BIN=${SERVE_BIN:-$BIN}
RECORDS=${RECORDS:-1000000}
RECORD_SIZE=${RECORD_SIZE:-100}
PARTITIONS=${PARTITIONS:-4}
# Extra arguments for eventgate (none: the defaults are what is measured).
EVENTGATE_ARGS=${EVENTGATE_ARGS:-}
OUT_DIR=target/bench
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/exactly-once-$(date -u +%Y%m%dT%H%M%SZ).json"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
work=$(mktemp -d)
trap 'cleanup; rm -rf "$work"' EXIT

start_tansu_nats "$work"
tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions "$PARTITIONS" once >/dev/null
# shellcheck disable=SC2086
start_eventgate "$SERVE_BIN" "$work/eventgate.log" $EVENTGATE_ARGS

bench=$("$BIN" bench --bootstrap "127.0.0.1:$lport" --topic once --partitions "$PARTITIONS" \
  --records "$RECORDS" --record-size "$RECORD_SIZE" --no-consume)
audit=$("$BIN" audit --nats-url "nats://127.0.0.1:$nport" --expect "$RECORDS" --wait-secs 600)
metrics=$(curl -s "http://127.0.0.1:$hport/metrics")
metric() { awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }' <<<"$metrics"; }
server=$("$(nats_server)" --version)
printf '{"records":%s,"record_size":%s,"nats_server":"%s","bench":%s,"audit":%s,"retries_no_ack":%s,"retries_refused":%s,"found_stored":%s,"refused":%s,"dropped":%s}\n' \
  "$RECORDS" "$RECORD_SIZE" "$server" "$bench" "$audit" \
  "$(metric 'eventgate_mirror_publish_retries_total{reason="no_ack"}')" \
  "$(metric 'eventgate_mirror_publish_retries_total{reason="refused"}')" \
  "$(metric eventgate_mirror_unanswered_found_stored_total)" \
  "$(metric eventgate_mirror_refused_events_total)" \
  "$(metric eventgate_mirror_dropped_records_total)" | tee "$OUT"
