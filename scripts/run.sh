#!/usr/bin/env bash
# `make run`: a complete local eventgate on loopback.
#   tansu (in-memory Kafka broker)   127.0.0.1:9192   (upstream, not for clients)
#   eventgate Kafka bootstrap        127.0.0.1:9092   (point clients here)
#   eventgate broker listener        127.0.0.1:9204   (tansu's node id 111 -> 9093 + 111)
#   eventgate admin HTTP             127.0.0.1:8080   (specs API, /metrics, /ws live events)
#   nats-server 2.15 with JetStream  127.0.0.1:4222   (CloudEvents mirror, shared documents)
#   demo webhook receiver            127.0.0.1:8090   (resources/demo.yaml delivers invalid events here)
# Everything started here stops when eventgate stops (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${EVENTGATE_BIN:-target/release/eventgate}
RUN_DIR=.run
TANSU_PORT=${TANSU_PORT:-9192}
KAFKA_PORT=${KAFKA_PORT:-9092}
HTTP_PORT=${HTTP_PORT:-8080}
NATS_PORT=${NATS_PORT:-4222}
RECEIVER_PORT=${RECEIVER_PORT:-8090}
TOPIC=event-gateway-demo

mkdir -p "$RUN_DIR"
pids=()
# Stop in reverse order of start: eventgate first, so it never sees its broker or NATS vanish.
cleanup() { for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done; }
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 300); do port_busy "$1" && return 0; sleep 0.1; done
  echo "timed out waiting for $2 on port $1 (log: $RUN_DIR/$2.log)" >&2; exit 1
}
for p in "$TANSU_PORT" "$KAFKA_PORT" "$HTTP_PORT" "$NATS_PORT" "$RECEIVER_PORT"; do
  if port_busy "$p"; then echo "port $p is already in use: stop what holds it, or set TANSU_PORT/KAFKA_PORT/HTTP_PORT/NATS_PORT/RECEIVER_PORT" >&2; exit 1; fi
done

# The current nats-server that deps.sh installed into .venv (Debian's 2.9 only as a fallback).
NATS=.venv/bin/nats-server
[ -x "$NATS" ] || NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
mkdir -p "$RUN_DIR/nats"
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$RUN_DIR/nats" >"$RUN_DIR/nats.log" 2>&1 &
pids+=($!)
wait_port "$NATS_PORT" nats

tansu broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
  --storage-engine memory://tansu/ >"$RUN_DIR/tansu.log" 2>&1 &
pids+=($!)
wait_port "$TANSU_PORT" tansu
tansu topic create --broker "tcp://127.0.0.1:$TANSU_PORT" --partitions 3 "$TOPIC" >/dev/null

python3 scripts/demo_receiver.py "$RECEIVER_PORT" >"$RUN_DIR/receiver.log" 2>&1 &
pids+=($!)
wait_port "$RECEIVER_PORT" receiver

DEMO_HOOK_URL="http://127.0.0.1:$RECEIVER_PORT/events" \
"$BIN" serve --resources resources/demo.yaml --upstream "127.0.0.1:$TANSU_PORT" --listen "127.0.0.1:$KAFKA_PORT" \
  --http-listen "127.0.0.1:$HTTP_PORT" --spec asyncapi/demo.yaml --nats-url "nats://127.0.0.1:$NATS_PORT" "$@" &
eg=$!
pids+=($eg)
wait_port "$KAFKA_PORT" eventgate

cat <<MSG

eventgate is running in front of a local tansu broker, validating topic $TOPIC against
asyncapi/demo.yaml (lumens: integer >= 0, sentAt: date-time). Try, in another terminal:

  # produce a valid and an invalid record (key:value per line)
  printf 'k1:{"lumens":42,"sentAt":"2026-01-01T00:00:00Z"}\nk2:{"lumens":-1,"sentAt":"soon"}\n' \
    | kcat -b 127.0.0.1:$KAFKA_PORT -P -t $TOPIC -K:
  # consume: the invalid record carries an _asyncapi_eg_validation_error header
  kcat -b 127.0.0.1:$KAFKA_PORT -C -t $TOPIC -o beginning -e -f 'partition %p offset %o key %k headers [%h]: %s\n'
  # every record as a CloudEvent, live (any websocket client; replay with ?start=all)
  curl -sN -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: ZXZlbnRnYXRlZGVtbzEyMw==' "http://127.0.0.1:$HTTP_PORT/ws?start=all" --output -
  # the invalid record, delivered as a CloudEvent (binary mode) by the subscription in resources/demo.yaml
  tail -f $RUN_DIR/receiver.log
  curl -s http://127.0.0.1:$HTTP_PORT/subscriptions/invalid-demo-events   # its status
  # the documents in force, and a dry run of a message
  curl -s http://127.0.0.1:$HTTP_PORT/specs
  curl -s -H 'content-type: application/json' -d '{"value":{"lumens":-5}}' http://127.0.0.1:$HTTP_PORT/specs/demo/validate
  # list brokers and topics (addresses are eventgate's)
  kcat -b 127.0.0.1:$KAFKA_PORT -L
  # health and Prometheus metrics
  curl -s http://127.0.0.1:$HTTP_PORT/healthz; curl -s http://127.0.0.1:$HTTP_PORT/metrics

Press Ctrl-C to stop eventgate, the broker and NATS.

MSG
wait "$eg"
