#!/usr/bin/env bash
# The hostile-peer table: every attack of `eventgate hostile` against a fresh eventgate (release
# build, tansu upstream, nats-server where the mirror matters), and against a baseline binary too
# when BASELINE_BIN is set, in the same run. For each attack: bytes sent, peak memory growth of
# the target (VmHWM after the attack over VmRSS before), its CPU seconds, descriptors it held, and
# what the attacker saw.
#
#   BASELINE_BIN=/tmp/eventgate-before ./scripts/hostile.sh
#
# Results: a Markdown table on stdout and the raw JSON lines in target/bench/hostile-<time>.jsonl.
# The baseline is run with default settings only, so any older binary works.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${EVENTGATE_BIN:-target/release/eventgate}
BASELINE_BIN=${BASELINE_BIN:-}
ATTACKS=${ATTACKS:-"decompression-bomb mirror-bomb refused-partitions long-topic silent-connections slowloris ws-readers"}
OUT_DIR=target/bench
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/hostile-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$RESULTS"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
NATS=$(nats_server)

# attack LABEL BINARY ATTACK: one attack against a fresh target; appends a JSON line.
attack() {
  local label=$1 bin=$2 name=$3 tport lport hport nport="" args=()
  tport=$(free_port); lport=$(free_port); hport=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$tport" --advertised-listener-url "tcp://127.0.0.1:$tport" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$tport"
  for t in event-gateway-demo hostile-bomb hostile-ws; do
    tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions 1 "$t" >/dev/null
  done
  case $name in
    decompression-bomb) args=(--spec asyncapi/demo.yaml) ;;
    refused-partitions) args=(--unknown-topic reject) ;;
    long-topic) args=(--spec tests/fixtures/asyncapi/recursive-3.0.yaml) ;;
    mirror-bomb|ws-readers)
      nport=$(free_port); new_scratch ndir
      "$NATS" -js -a 127.0.0.1 -p "$nport" -sd "$ndir" >/dev/null 2>&1 &
      pids+=($!)
      wait_port "$nport"
      args=(--nats-url "nats://127.0.0.1:$nport") ;;
  esac
  "$bin" serve --upstream "127.0.0.1:$tport" --listen "127.0.0.1:$lport" --http-listen "127.0.0.1:$hport" \
    --node-port "111=$(free_port)" --node-id-max 0 --node-port-base "$(free_port)" --spec-dir "" "${args[@]}" >"$OUT_DIR/hostile-target.log" 2>&1 &
  local target=$!
  pids+=($target)
  wait_port "$lport"; wait_port "$hport"
  # The mirror connects in the background; give it a moment to be up before attacking it.
  [ -n "$nport" ] && sleep 2
  local line
  local settle=3000
  [ "$name" = ws-readers ] && settle=15000
  line=$("$BIN" hostile --attack "$name" --bootstrap "127.0.0.1:$lport" --http "127.0.0.1:$hport" --pid "$target" \
    --settle-ms "$settle" \
    || echo '{"attack":"'"$name"'","outcome":"the attack tool failed"}')
  if ! kill -0 "$target" 2>/dev/null; then
    line=$(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["outcome"]="TARGET DIED; "+r.get("outcome",""); print(json.dumps(r))')
  fi
  echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["target"]=sys.argv[1]; print(json.dumps(r))' "$label" >>"$RESULTS"
  cleanup
}

for a in $ATTACKS; do
  [ -n "$BASELINE_BIN" ] && attack baseline "$BASELINE_BIN" "$a"
  attack eventgate "$BIN" "$a"
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mib = lambda b: f"{b / 2**20:,.1f} MiB"
print("| attack | target | bytes sent | peak RSS growth | growth / sent | CPU s | fds held | what the attacker saw |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    sent = r.get("bytes_sent", 0)
    growth = r.get("peak_rss_growth_bytes", 0)
    ratio = f"{growth / sent:,.1f}x" if sent else "-"
    print(f"| {r['attack']} | {r['target']} | {sent:,} | {mib(growth)} | {ratio} | {r.get('cpu_seconds', 0):.2f} | "
          f"{r.get('fds_added', 0)} | {r.get('outcome', '')} |")
PY
