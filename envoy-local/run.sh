#!/usr/bin/env bash
# The local demo, end to end: builds the filter, installs Envoy and the demo
# IdP, starts the IdP (oidc-provider, :9001), an echo backend (:9100) and
# Envoy (:8080, admin :9901) with envoy-local/envoy.yaml, then shows a request
# refused without a token and passed with one. Ctrl-C stops everything.
#   envoy-local/run.sh           run until Ctrl-C
#   envoy-local/run.sh --check   run the requests, check them, stop (for tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
check=0
[ "${1:-}" = "--check" ] && check=1

tests/bootstrap.sh

for port in 8080 9001 9100 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; stop whatever listens there and try again" >&2
    exit 1
  fi
done

work="$root/tests/.work/demo"
mkdir -p "$work"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_for() { # url, what
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "$2 did not come up; see $work/*.log" >&2
  exit 1
}

resource="http://127.0.0.1:8080/mcp"
(cd tests/idp && exec env IDP_PORT=9001 IDP_KEYS="$work/mcp-as-keys.json" \
  IDP_RESOURCES="{\"$resource\": {\"audience\": \"mcpserver\", \"scope\": \"mcp:tools:call\"}}" \
  IDP_CLIENTS='[{"client_id": "demo-client", "client_secret": "demo-secret"}]' \
  node server.mjs >"$work/idp.log" 2>&1) &
pids+=($!)
.venv/bin/python tests/backend.py 9100 >"$work/backend.log" 2>&1 &
pids+=($!)
.venv/bin/envoy -c envoy-local/envoy.yaml --concurrency 2 --disable-hot-restart -l info >"$work/envoy.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9001/jwks "the IdP"
wait_for http://127.0.0.1:9100/_requests "the backend"
wait_for http://127.0.0.1:9901/ready "Envoy"

get_token='curl -s -u demo-client:demo-secret -d grant_type=client_credentials -d resource='"$resource"' -d scope=mcp:tools:call http://127.0.0.1:9001/token | python3 -c "import json,sys; print(json.load(sys.stdin)[\"access_token\"])"'
TOKEN="$(eval "$get_token")"

echo
echo "1) Without a token, Envoy answers 401 with an RFC 6750 challenge:"
echo "   curl -i $resource"
no_token="$(curl -s -i "$resource")"
echo "$no_token" | sed -n '1p;/^www-authenticate/Ip' | sed 's/^/   /'
echo
echo "2) The challenge points at RFC 9728 metadata, served by the filter:"
echo "   curl http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
echo "   $(curl -s http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp)"
echo
echo "3) With a token from the IdP, the request reaches the backend:"
echo "   TOKEN=\$($get_token)"
echo "   curl -H \"Authorization: Bearer \$TOKEN\" $resource"
with_token="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" "$resource")"
echo "   HTTP $(echo "$with_token" | tail -1); the backend saw token claims:"
echo "$with_token" | head -1 | python3 -c 'import json,sys; c=json.load(sys.stdin)["token_claims"]; print("   ", {k: c[k] for k in ("iss","aud","sub","scope")})'
echo
echo "Logs: $work/{idp,backend,envoy}.log"

if [ "$check" = 1 ]; then
  echo "$no_token" | head -1 | grep -q " 401" || { echo "FAIL: expected 401 without a token" >&2; exit 1; }
  [ "$(echo "$with_token" | tail -1)" = 200 ] || { echo "FAIL: expected 200 with a token" >&2; exit 1; }
  echo "demo check passed"
  exit 0
fi
echo "Running. Press Ctrl-C to stop."
wait
