#!/usr/bin/env bash
# The benchmarks, in one command (a measurement, not a test): installs what the
# tests need plus wrk and matplotlib, builds the filter and the wasm floor,
# then runs tests/bench/perf.py, which prints markdown tables and writes
# docs/bench.md and docs/bench.png. Arguments go to perf.py, e.g.
#   tests/bench/run.sh --memory          also the 100k/300k-user memory run
#   tests/bench/run.sh --rounds 5
#   tests/bench/run.sh --profile         also split Envoy's CPU by code (perf)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

tests/bootstrap.sh

# need <command> <Debian package>: installs the package if the command is missing.
need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1 is missing: sudo apt-get install $2" >&2
    exit 1
  fi
  echo "==> installing $2 (Debian package)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
if [[ " $* " == *" --profile "* ]]; then
  need perf linux-perf
fi

stamp=".venv/.bench-requirements.sha256"
want="$(sha256sum tests/bench/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing matplotlib into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -r tests/bench/requirements.txt >&2
  echo "$want" > "$stamp"
fi

echo "==> building the wasm floor" >&2
cargo build --release --target wasm32-wasip1 -p wasm-floor >&2

exec .venv/bin/python tests/bench/perf.py "$@"
