# Shared by the scripts that start servers for a measurement: sourced, not run.
# Background processes go in `pids`; `cleanup` (run on exit) stops them and waits for them.

pids=()
scratch=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  # The servers are gone: their data (a JetStream store holds every event of a run) goes too.
  for d in "${scratch[@]}"; do rm -rf "$d"; done
  scratch=()
}
trap cleanup EXIT

# Makes a temporary directory that `cleanup` removes, and puts its path in the variable named $1
# (not `$(...)`: a subshell could not record it).
new_scratch() {
  local d; d=$(mktemp -d)
  scratch+=("$d")
  printf -v "$1" '%s' "$d"
}

# A loopback port nobody listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (15 s at most) until something listens on loopback port $1.
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
# The nats-server to run: the current one deps.sh put in .venv, else one on PATH.
nats_server() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -x "$root/.venv/bin/nats-server" ]; then echo "$root/.venv/bin/nats-server"; else command -v nats-server || echo /usr/sbin/nats-server; fi
}

# Starts an in-memory tansu and a nats-server with JetStream on free ports, their logs and data in
# directory $1; sets `tport` and `nport`.
start_tansu_nats() {
  local dir=$1
  tport=$(free_port); nport=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$tport" --advertised-listener-url "tcp://127.0.0.1:$tport" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  pids+=($!)
  "$(nats_server)" -js -a 127.0.0.1 -p "$nport" -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
  pids+=($!)
  wait_port "$tport"; wait_port "$nport"
}

# Starts eventgate binary $1 in front of `tport`, mirroring to `nport`, with its log in $2 and any
# further arguments; sets `lport` (Kafka) and `hport` (admin) and waits until both listen.
start_eventgate() {
  local bin=$1 log=$2; shift 2
  lport=$(free_port); hport=$(free_port)
  RUST_LOG=info "$bin" serve --upstream "127.0.0.1:$tport" --listen "127.0.0.1:$lport" --http-listen "127.0.0.1:$hport" \
    --spec-dir "" --node-port "111=$(free_port)" --node-id-max 0 --node-port-base "$(free_port)" \
    --nats-url "nats://127.0.0.1:$nport" "$@" >"$log" 2>&1 &
  pids+=($!)
  wait_port "$lport"; wait_port "$hport"
}
