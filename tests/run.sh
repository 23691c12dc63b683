#!/usr/bin/env bash
# Runs every test: formatting, unit tests of both crates, the no-panic lints
# on the wasm build, and the integration tests on real Envoy with a real IdP.
# Installs what it needs first (tests/bootstrap.sh); safe to run repeatedly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tests/bootstrap.sh --oci --browser

# Minimal rustup profiles come without these two.
for component in clippy rustfmt; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "==> adding Rust component $component" >&2
    rustup component add "$component" >&2
  fi
done

echo "==> formatting (rustfmt.toml)" >&2
cargo fmt --all --check

echo "==> structure: file and function sizes, no import cycles (tests/structure.py)" >&2
python3 tests/structure.py

echo "==> unit tests" >&2
cargo test --workspace

echo "==> clippy: no unwrap/expect/panic in filter code (wasm32 build)" >&2
cargo clippy --release --target wasm32-wasip1 -p token-exchange-filter -p plugin-config -- -D warnings

echo "==> fuzzing (10 s a target, from the checked-in seeds)" >&2
tests/fuzz.sh --seconds 10

echo "==> integration tests (Envoy $(.venv/bin/envoy --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1))" >&2
.venv/bin/pytest tests/integration -v "$@"
