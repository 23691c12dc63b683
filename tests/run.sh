#!/usr/bin/env bash
# Runs every test: formatting, unit tests of both crates, the no-panic lints
# on the wasm build, and the integration tests on real Envoy with a real IdP.
# Installs what it needs first (tests/bootstrap.sh); safe to run repeatedly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tests/bootstrap.sh --oci --browser --oldest-envoy

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

envoy_version() { "$1" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1; }

echo "==> integration tests (Envoy $(envoy_version .venv/bin/envoy))" >&2
.venv/bin/pytest tests/integration -v "$@"

# The oldest supported Envoy (README, "Which Envoy"): a representative slice,
# core validation and keys, exchange and cache, CORS, the tool gate, claim
# headers, metrics and audit, path readings under both path settings, and
# one provider (the Okta translation, as Istio delivers it, with an MCP
# client's discovery); then the log scan.
oldest="$root/.venv-oldest-envoy/bin/envoy"
echo "==> integration tests, a slice, on the oldest supported Envoy ($(envoy_version "$oldest"))" >&2
TEST_ENVOY="$oldest" .venv/bin/pytest -v \
  tests/integration/test_validation.py \
  tests/integration/test_exchange.py \
  tests/integration/test_edge.py \
  tests/integration/test_path_readings.py \
  tests/integration/test_providers.py::test_seed_okta_two_authorization_servers_runs_as_written \
  tests/integration/test_envoy_version.py \
  tests/integration/test_zz_no_secrets_in_logs.py
