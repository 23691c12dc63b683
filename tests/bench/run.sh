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

# shellcheck source=tests/lib.sh
. tests/lib.sh
command -v wrk >/dev/null || apt_install wrk
if [[ " $* " == *" --profile "* ]]; then
  command -v perf >/dev/null || apt_install linux-perf
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
