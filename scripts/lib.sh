# Shared by the scripts that start servers for a measurement: sourced, not run.
# Background processes go in `pids`; `cleanup` (run on exit) stops them and waits for them.

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT

# A loopback port nobody listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (15 s at most) until something listens on loopback port $1.
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
# The nats-server to run: the current one deps.sh put in .venv, else one on PATH.
nats_server() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -x "$root/.venv/bin/nats-server" ]; then echo "$root/.venv/bin/nats-server"; else command -v nats-server || echo /usr/sbin/nats-server; fi
}
