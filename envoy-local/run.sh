#!/usr/bin/env bash
# The local demo, end to end: builds the filter, installs Envoy and the demo
# IdPs, starts two authorization servers (oidc-provider): the MCP AS (:9001)
# and the backend AS (:9002), which exchanges MCP tokens for backend tokens;
# a backend (:9100) that verifies the token it receives against the backend
# AS; and Envoy (:8080, admin :9901) with envoy-local/envoy.yaml. Then it shows
# a request refused without a token, and one whose MCP token is exchanged so
# the backend sees its own audience. Ctrl-C stops everything.
#   envoy-local/run.sh           run until Ctrl-C
#   envoy-local/run.sh --check   run the requests, check them, stop (for tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
check=0
[ "${1:-}" = "--check" ] && check=1

tests/bootstrap.sh

for port in 8080 9001 9002 9100 9901; do
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
# The gateway's client secret at the backend AS: made up per run, handed to
# Envoy through its environment (vm_config.environment_variables).
TOKEN_EXCHANGE_CLIENT_SECRET="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
export TOKEN_EXCHANGE_CLIENT_SECRET
(cd tests/idp && exec env IDP_PORT=9002 IDP_KEYS="$work/backend-as-keys.json" \
  IDP_TRUST_ISSUER=http://127.0.0.1:9001 IDP_TRUST_AUDIENCE=mcpserver \
  IDP_RESOURCES='{"https://api.example.com/": {"audience": "backend", "scope": "backend:read backend:write"}}' \
  IDP_CLIENTS="[{\"client_id\": \"mcp-gateway\", \"client_secret\": \"$TOKEN_EXCHANGE_CLIENT_SECRET\", \"grant_types\": [\"urn:ietf:params:oauth:grant-type:token-exchange\"]}]" \
  node server.mjs >"$work/backend-as.log" 2>&1) &
pids+=($!)
BACKEND_JWKS_URL=http://127.0.0.1:9002/jwks BACKEND_ISSUER=http://127.0.0.1:9002 BACKEND_AUDIENCE=backend \
  .venv/bin/python tests/backend.py 9100 >"$work/backend.log" 2>&1 &
pids+=($!)
.venv/bin/envoy -c envoy-local/envoy.yaml --concurrency 2 --disable-hot-restart -l info >"$work/envoy.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9001/jwks "the MCP authorization server"
wait_for http://127.0.0.1:9002/jwks "the backend authorization server"
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
claims='import json,sys,base64; p=sys.stdin.read().strip().split(".")[1]; c=json.loads(base64.urlsafe_b64decode(p+"==")); print("   ", {k: c.get(k) for k in ("iss","aud","sub","scope")})'
echo "3) A token from the MCP authorization server; its audience is the MCP server:"
echo "   TOKEN=\$($get_token)"
echo "$TOKEN" | python3 -c "$claims"
echo
echo "4) Envoy validates it, exchanges it at the backend AS (RFC 8693), and the"
echo "   backend verifies what it receives: same user, the backend's audience:"
echo "   curl -H \"Authorization: Bearer \$TOKEN\" $resource"
with_token="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" "$resource")"
echo "   HTTP $(echo "$with_token" | tail -1); the backend verified:"
echo "$with_token" | head -1 | python3 -c 'import json,sys; c=json.load(sys.stdin).get("verified_claims") or {}; print("   ", {k: c.get(k) for k in ("iss","aud","sub","scope")})'
echo
echo "5) Again: served from the exchange cache, no second call to the backend AS:"
curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "$resource"
echo "   backend AS exchanges so far: $(curl -s http://127.0.0.1:9002/_stats)"
echo
echo "Logs: $work/{idp,backend-as,backend,envoy}.log"

if [ "$check" = 1 ]; then
  echo "$no_token" | head -1 | grep -q " 401" || { echo "FAIL: expected 401 without a token" >&2; exit 1; }
  [ "$(echo "$with_token" | tail -1)" = 200 ] || { echo "FAIL: expected 200 with a token" >&2; exit 1; }
  echo "$with_token" | head -1 | grep -q '"aud": "backend"' || { echo "FAIL: the backend did not get a backend token" >&2; exit 1; }
  [ "$(curl -s http://127.0.0.1:9002/_stats)" = '{"token_exchange":1}' ] || { echo "FAIL: expected exactly one exchange" >&2; exit 1; }
  echo "demo check passed"
  exit 0
fi
echo "Running. Press Ctrl-C to stop."
wait
