#!/usr/bin/env bash
# End-to-end load comparison, all in one run on this machine:
#   direct      the bench client talks to tansu itself
#   socat       through a bare byte-forwarding TCP relay (the floor any proxy pays)
#   tansu-proxy through `tansu proxy`, a simple Rust Kafka proxy
#   eventgate   through eventgate (release build), passthrough: no document loaded
#   eventgate-valid     eventgate validating every record against benches/bench-asyncapi.yaml (all valid)
#   eventgate-annotate  the same, with every record invalid, so every batch is rebuilt with annotations
#   eventgate-mirror    eventgate (no documents) mirroring every record into a local nats-server
#   eventgate-ws        eventgate-mirror with WS_CLIENTS websocket clients watching (events/s delivered)
#   socat-tls   a bare TLS-terminating relay (socat OPENSSL-LISTEN) in front of tansu; the client speaks TLS
#   eventgate-tls       eventgate terminating TLS (--tls-cert/--tls-key), passthrough; the client speaks TLS
#   baseline, baseline-valid, baseline-annotate, baseline-mirror
#                       the eventgate modes with BASELINE_BIN (an earlier build), for before/after
# Each round starts a fresh in-memory tansu per target, so no run inherits another's log. Rounds
# rotate the target order; the median of the rounds is reported, with ratios against direct and
# socat and the proxy's CPU time per MB moved (produce + consume), read from /proc.
#
#   ROUNDS=3 RECORDS=400000 RECORD_SIZE=1024 ./scripts/bench.sh
#   PARTITIONS=12 PER_REQUEST=12 BATCH=1200 ./scripts/bench.sh   # requests naming 12 partitions
#
# Results: a table on stdout and every raw run in target/bench/e2e-<time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${EVENTGATE_BIN:-target/release/eventgate}
ROUNDS=${ROUNDS:-3}
RECORDS=${RECORDS:-400000}
RECORD_SIZE=${RECORD_SIZE:-1024}
BATCH=${BATCH:-100}
IN_FLIGHT=${IN_FLIGHT:-8}
# Partitions of the throughput topic, and how many of them each Produce request names (BATCH
# records shared out among them), as clients that gather a broker's partitions into one request do.
PARTITIONS=${PARTITIONS:-1}
PER_REQUEST=${PER_REQUEST:-1}
# tansu's in-memory fetch path is slow (about 20k records/s here), so only part is read back.
CONSUME_RECORDS=${CONSUME_RECORDS:-100000}
# Latency at moderate load: records/s spread over small batches.
LAT_RATE=${LAT_RATE:-20000}
LAT_BATCH=${LAT_BATCH:-10}
LAT_RECORDS=${LAT_RECORDS:-60000}
TARGETS=${TARGETS:-"direct socat tansu-proxy eventgate eventgate-valid eventgate-annotate eventgate-mirror"}
WS_CLIENTS=${WS_CLIENTS:-100}
# Niceness of the bench's nats-server: 10 approximates NATS on machines of its own, which separates
# eventgate's own cost from NATS competing for the same two cores.
NATS_NICE=${NATS_NICE:-0}
WS_RECORDS=${WS_RECORDS:-20000}
# Extra arguments for every eventgate run.
EVENTGATE_ARGS=${EVENTGATE_ARGS:-}
OUT_DIR=target/bench
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/e2e-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
WS_RESULTS="${RESULTS%.jsonl}-ws.jsonl"
: >"$RESULTS"
: >"$WS_RESULTS"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# utime + stime + the same for reaped children (socat forks one per connection).
cpu_ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
# CPU ticks of process $1's mirror worker thread (named `eventgate-mirror`, cut to 15 characters).
mirror_ticks() {
  local t v n=0
  [ -n "$1" ] || { echo 0; return; }
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = eventgate-mirro ] || continue
    v=$(awk '{print $14+$15}' "$t/stat" 2>/dev/null) || v=0
    n=$((n + ${v:-0}))
  done
  echo "$n"
}
TICKS=$(getconf CLK_TCK)

# A CA and a certificate for 127.0.0.1, for the *-tls targets (made once per run with openssl).
tls_dir=""
if [[ $TARGETS == *-tls* ]]; then
  tls_dir=$(mktemp -d)
  trap 'cleanup; rm -rf "$tls_dir"' EXIT
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.pem" -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$tls_dir/server.key" -out "$tls_dir/server.csr" -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls_dir/ext.cnf"
  openssl x509 -req -in "$tls_dir/server.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca.key" -CAcreateserial \
    -out "$tls_dir/server.pem" -days 2 -extfile "$tls_dir/ext.cnf" 2>/dev/null
fi

# run_target NAME MODE: starts tansu (+ the proxy), runs throughput and latency, prints JSON lines.
run_target() {
  local name=$1 tport pport proxy_pid="" nats_pid="" addr
  tport=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$tport" --advertised-listener-url "tcp://127.0.0.1:$tport" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$tport"
  tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions "$PARTITIONS" tput >/dev/null
  tansu topic create --broker "tcp://127.0.0.1:$tport" --partitions 1 lat >/dev/null
  pport=$(free_port)
  case $name in
    direct) addr="127.0.0.1:$tport" ;;
    socat)
      socat "TCP-LISTEN:$pport,bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:127.0.0.1:$tport,nodelay" &
      proxy_pid=$!; addr="127.0.0.1:$pport" ;;
    socat-tls)
      socat "OPENSSL-LISTEN:$pport,bind=127.0.0.1,reuseaddr,fork,nodelay,cert=$tls_dir/server.pem,key=$tls_dir/server.key,verify=0" \
        "TCP:127.0.0.1:$tport,nodelay" &
      proxy_pid=$!; addr="127.0.0.1:$pport" ;;
    tansu-proxy)
      tansu proxy --listener-url "tcp://127.0.0.1:$pport" --advertised-listener-url "tcp://127.0.0.1:$pport" \
        --origin-url "tcp://127.0.0.1:$tport" >/dev/null 2>&1 &
      proxy_pid=$!; addr="127.0.0.1:$pport" ;;
    eventgate*|baseline*)
      local mode_args="" hport bin=$BIN
      hport=$(free_port)
      # baseline, baseline-valid, ...: the same modes with BASELINE_BIN (e.g. the previous release).
      case $name in baseline*) bin=${BASELINE_BIN:?set BASELINE_BIN for the baseline targets} ;; esac
      case $name in
        eventgate-valid|eventgate-annotate|baseline-valid|baseline-annotate) mode_args="--spec benches/bench-asyncapi.yaml" ;;
        *-tls) mode_args="--tls-cert $tls_dir/server.pem --tls-key $tls_dir/server.key" ;;
        *-mirror|*-ws)
          local nport ndir
          nport=$(free_port); new_scratch ndir
          nice -n "$NATS_NICE" "$(nats_server)" -js -a 127.0.0.1 -p "$nport" -sd "$ndir" >/dev/null 2>&1 &
          nats_pid=$!
          pids+=($!)
          wait_port "$nport"
          mode_args="--nats-url nats://127.0.0.1:$nport --mirror-max-bytes -1" ;;
      esac
      # shellcheck disable=SC2086
      RUST_LOG=warn "$bin" serve --upstream "127.0.0.1:$tport" --listen "127.0.0.1:$pport" --spec-dir "" \
        --http-listen "127.0.0.1:$hport" --node-port "111=$(free_port)" --node-id-max 0 --node-port-base "$(free_port)" $mode_args $EVENTGATE_ARGS >/dev/null 2>&1 &
      proxy_pid=$!; addr="127.0.0.1:$pport" ;;
  esac

  pids+=(${proxy_pid:+$proxy_pid})
  wait_port "${addr##*:}"
  local invalid=0 client_tls=()
  case $name in eventgate-annotate|baseline-annotate) invalid=1 ;; esac
  case $name in *-tls) client_tls=(--tls-ca "$tls_dir/ca.pem") ;; esac
  if [ "$name" = eventgate-ws ]; then
    wait_port "$hport"
    "$BIN" bench --bootstrap "$addr" --topic tput --records "$WS_RECORDS" --record-size "$RECORD_SIZE" \
      --partitions "$PARTITIONS" --partitions-per-request "$PER_REQUEST" \
      --batch-records "$BATCH" --in-flight "$IN_FLIGHT" --no-consume --label "$name" \
      --ws "ws://127.0.0.1:$hport/ws?topic=tput" --ws-clients "$WS_CLIENTS" >>"$WS_RESULTS"
    cleanup
    return
  fi
  local before after nats_before nats_after mirror_before mirror_after
  before=$(proc_cpu "$name" "$proxy_pid")
  nats_before=$(proc_cpu "$name" "$nats_pid")
  mirror_before=$(mirror_ticks "$proxy_pid")
  "$BIN" bench --bootstrap "$addr" --topic tput --records "$RECORDS" --record-size "$RECORD_SIZE" \
    --partitions "$PARTITIONS" --partitions-per-request "$PER_REQUEST" \
    --batch-records "$BATCH" --in-flight "$IN_FLIGHT" --consume-records "$CONSUME_RECORDS" \
    --invalid-every "$invalid" --label "$name" "${client_tls[@]}" >"$OUT_DIR/.tput.json"
  after=$(proc_cpu "$name" "$proxy_pid")
  nats_after=$(proc_cpu "$name" "$nats_pid")
  # The mirror publishes asynchronously: let it catch up before the latency run, and time it.
  local drained=0
  if [[ $name == *-mirror ]]; then
    local t0 q
    t0=$(date +%s.%N)
    for _ in $(seq 1 1200); do
      q=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '/^eventgate_mirror_queued_bytes /{print $2}')
      [ "${q:-1}" = 0 ] && break
      sleep 0.1
    done
    drained=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$t0")
    after=$(proc_cpu "$name" "$proxy_pid")
    nats_after=$(proc_cpu "$name" "$nats_pid")
  fi
  mirror_after=$(mirror_ticks "$proxy_pid")
  "$BIN" bench --bootstrap "$addr" --topic lat --records "$LAT_RECORDS" --record-size "$RECORD_SIZE" \
    --batch-records "$LAT_BATCH" --in-flight "$IN_FLIGHT" --rate "$LAT_RATE" --no-consume \
    --invalid-every "$invalid" --label "$name" "${client_tls[@]}" >"$OUT_DIR/.lat.json"
  python3 - "$OUT_DIR/.tput.json" "$OUT_DIR/.lat.json" "$before" "$after" "$TICKS" "$drained" \
    "$nats_before" "$nats_after" "$mirror_before" "$mirror_after" "$round" >>"$RESULTS" <<'PY'
import json, sys
t, l = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
t["mirror_drain_seconds"] = float(sys.argv[6])
cpu = (float(sys.argv[4]) - float(sys.argv[3])) / float(sys.argv[5])
nats_cpu = (float(sys.argv[8]) - float(sys.argv[7])) / float(sys.argv[5])
mirror_cpu = (float(sys.argv[10]) - float(sys.argv[9])) / float(sys.argv[5])
mb = (t["produce"]["records"] + t["consume"]["records"]) * t["record_size"] / 1e6
print(json.dumps({"target": t["label"], "round": int(sys.argv[11]), "tput": t, "lat": l, "proxy_cpu_s": cpu,
                  "nats_cpu_s": nats_cpu, "mirror_thread_cpu_s": mirror_cpu,
                  "mb_moved": mb, "mirror_drain_seconds": float(sys.argv[6])}))
PY
  cleanup
}

proc_cpu() {
  if [ -z "$2" ]; then echo 0; else cpu_ticks "$2"; fi
}

read -r -a targets <<<"$TARGETS"
for round in $(seq 1 "$ROUNDS"); do
  n=${#targets[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${targets[$(((i + round - 1) % n))]}
    echo "round $round: $t" >&2
    run_target "$t"
  done
done

if [ -s "$WS_RESULTS" ]; then
  python3 - "$WS_RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l)["ws"] for l in open(sys.argv[1])]
print(f"\nwebsocket fan-out: {runs[0]['clients']} clients, median of {len(runs)} runs: "
      f"{statistics.median(r['events_per_sec'] for r in runs):.0f} events/s delivered "
      f"({min(r['events_received'] for r in runs)} of {runs[0]['events_expected']} events received in the worst run)")
PY
fi
[ -s "$RESULTS" ] || exit 0
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    # Results written before rounds were recorded are in round order.
    r.setdefault("round", len(by.get(r["target"], [])) + 1)
    by.setdefault(r["target"], []).append(r)
def med(rs, f):
    return statistics.median(f(r) for r in rs)
def cost(r):
    return 1000 * r["proxy_cpu_s"] / r["mb_moved"]
def rps(r):
    return r["tput"]["produce"]["records_per_sec"]
rows = {}
for name, rs in by.items():
    rows[name] = {
        "produce_rps": med(rs, rps),
        "produce_mbs": med(rs, lambda r: r["tput"]["produce"]["mb_per_sec"]),
        "consume_rps": med(rs, lambda r: r["tput"]["consume"]["records_per_sec"]),
        "p50": med(rs, lambda r: r["lat"]["produce"]["latency"]["p50_us"]),
        "p99": med(rs, lambda r: r["lat"]["produce"]["latency"]["p99_us"]),
        "cpu_ms_per_mb": med(rs, cost),
        "errors": sum(r["tput"]["produce"]["errors"] + r["lat"]["produce"]["errors"] for r in rs),
        "drain": med(rs, lambda r: r.get("mirror_drain_seconds", 0)),
        "nats_ms_per_mb": med(rs, lambda r: 1000 * r.get("nats_cpu_s", 0) / r["mb_moved"]),
        "mirror_thread_ms_per_mb": med(rs, lambda r: 1000 * r.get("mirror_thread_cpu_s", 0) / r["mb_moved"]),
    }
base = rows.get("direct"); relay = rows.get("socat")
print(f"\n{len(runs)} runs, median of {len(next(iter(by.values())))} rounds per target; results in {sys.argv[1]}\n")
print("| target | produce rec/s | produce MB/s | vs direct | vs socat | consume rec/s | p50 µs | p99 µs | added p99 µs | proxy CPU ms/MB | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    vd = r["produce_rps"] / base["produce_rps"] if base else float("nan")
    vs = r["produce_rps"] / relay["produce_rps"] if relay else float("nan")
    added = r["p99"] - base["p99"] if base else float("nan")
    print(f"| {name} | {r['produce_rps']:.0f} | {r['produce_mbs']:.1f} | {vd:.3f} | {vs:.3f} | {r['consume_rps']:.0f} "
          f"| {r['p50']:.0f} | {r['p99']:.0f} | {added:+.0f} | {r['cpu_ms_per_mb']:.2f} | {r['errors']} |")
for name, r in rows.items():
    if r["drain"]:
        rs = by[name]
        n = rs[0]["tput"]["produce"]["records"]
        secs = statistics.median(x["tput"]["produce"]["seconds"] for x in rs) + r["drain"]
        print(f"\n{name}: the mirror finished {r['drain']:.1f} s after the producer "
              f"({n / secs:.0f} events/s into JetStream end to end, CPU above includes it); "
              f"nats-server CPU {r['nats_ms_per_mb']:.2f} ms/MB")
off, on = rows.get("eventgate"), rows.get("eventgate-mirror")
if off and on:
    print(f"\nmirror vs mirror-off, same run: throughput {on['produce_rps'] / off['produce_rps']:.2f}, "
          f"eventgate's mirror cost {on['cpu_ms_per_mb'] - off['cpu_ms_per_mb']:.2f} ms/MB "
          f"(µs per KiB event, roughly): the mirror's own thread {on['mirror_thread_ms_per_mb']:.2f}, the Kafka "
          f"path's extra {on['cpu_ms_per_mb'] - off['cpu_ms_per_mb'] - on['mirror_thread_ms_per_mb']:.2f}; "
          f"nats-server {on['nats_ms_per_mb']:.2f} ms/MB")
# The same figures pair by pair: each round's mirror run against the same round's mirror-off run
# (a few runs apart, so they share more of the machine's state than runs rounds apart), a steadier
# comparison on a noisy machine than the difference of the medians above.
for off_name, on_name in [("eventgate", "eventgate-mirror"), ("baseline", "baseline-mirror")]:
    off_by_round = {r["round"]: r for r in by.get(off_name, [])}
    pairs = [(off_by_round[r["round"]], r) for r in by.get(on_name, []) if r["round"] in off_by_round]
    if not pairs:
        continue
    costs = sorted(cost(b) - cost(a) for a, b in pairs)
    ratios = sorted(rps(b) / rps(a) for a, b in pairs)
    print(f"{on_name} per round against {off_name}: mirror cost median {statistics.median(costs):.2f} ms/MB "
          f"({costs[0]:.2f}-{costs[-1]:.2f}), throughput ratio median {statistics.median(ratios):.2f} "
          f"({ratios[0]:.2f}-{ratios[-1]:.2f}), {len(pairs)} rounds")
PY
