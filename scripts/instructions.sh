#!/usr/bin/env bash
# Instructions eventgate executes for a fixed load, counted by callgrind: repeatable whatever else
# the machine is doing, so two builds can be compared on a shared machine.
#
#   ./scripts/instructions.sh BIN [eventgate serve arguments...]
#   ./scripts/instructions.sh /tmp/eventgate-before --spec benches/bench-asyncapi.yaml
#
# Load: `eventgate bench` produces RECORDS (default 50,000) records of 1 KiB to a fresh tansu through
# BIN. Prints the instructions counted (startup and shutdown included, the same for both builds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1; shift
RECORDS=${RECORDS:-50000}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
tport=$(free_port); lport=$(free_port); hport=$(free_port); nport=$(free_port)
out=$(mktemp -d)
tansu broker --listener-url "tcp://127.0.0.1:$tport" --advertised-listener-url "tcp://127.0.0.1:$tport" \
  --storage-engine memory://tansu/ >/dev/null 2>&1 &
pids+=($!)
wait_port "$tport"
tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions 1 tput >/dev/null
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$BIN" serve --upstream "127.0.0.1:$tport" \
  --listen "127.0.0.1:$lport" --http-listen "127.0.0.1:$hport" --node-port "111=$nport" --node-id-max 0 \
  --node-port-base "$nport" --spec-dir "" "$@" >/dev/null 2>"$out/valgrind.log" &
vg=$!
wait_port "$lport"
target/release/eventgate bench --bootstrap "127.0.0.1:$lport" --topic tput --records "$RECORDS" --no-consume >"$out/bench.json"
kill -INT "$vg"; wait "$vg" || true
grep -o '"errors":[0-9]*' "$out/bench.json" | head -1
grep -o "Collected : [0-9]*" "$out/valgrind.log"
echo "profile: $out/callgrind.out" >&2
