#!/usr/bin/env bash
# The local demo, end to end: builds the filter, installs Envoy, the demo IdPs
# and the MCP server, then starts
#   :9001  the MCP authorization server (oidc-provider, interactive: login
#          page, authorization code + PKCE, dynamic client registration,
#          and client_credentials for scripts)
#   :9002  the backend authorization server, which exchanges MCP tokens for
#          backend tokens (RFC 8693)
#   :9100  the backend API, which verifies every token against the backend AS
#   :9200  the MCP server (official TypeScript SDK, tests/mcp/server.mjs); its
#          `whoami` tool calls the backend with the token it was given
#   :8080  Envoy with the filter in front of the MCP server (admin :9901),
#          envoy-local/envoy.yaml
# It shows a request refused without a token, the RFC 9728 metadata, MCP over
# curl with a token that Envoy exchanges so the backend sees its own audience,
# and a real MCP client (the TypeScript SDK) doing the same; then it prints
# how to log in yourself with mcp-remote, VS Code, Claude Code or the SDK.
# Ctrl-C stops everything. The MCP authorization server keeps its signing
# keys, client registrations, grants and sessions under tests/.work/demo, so
# clients that registered before a restart (mcp-remote, VS Code, Claude Code
# all cache their registration) still log in after it.
#   envoy-local/run.sh           run until Ctrl-C
#   envoy-local/run.sh --check   run the requests and clients, check them, stop
#                                (tests/integration/test_demo.py); it also logs
#                                in through the login page as a scripted user
#   envoy-local/run.sh --reset   start clean: forget keys, registrations and
#                                grants (clients then register again); combines
#                                with --check
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
check=0
reset=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --reset) reset=1 ;;
    *) echo "unknown argument: $arg (use --check and/or --reset)" >&2; exit 2 ;;
  esac
done

tests/bootstrap.sh

for port in 8080 9001 9002 9100 9200 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; stop whatever listens there and try again" >&2
    exit 1
  fi
done

work="$root/tests/.work/demo"
[ "$reset" = 1 ] && rm -rf "$work"
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
fail() { echo "FAIL: $*" >&2; exit 1; }

resource="http://127.0.0.1:8080/mcp"
# IDP_INTERACTIVE=1: the login and consent pages (any user name and password;
# the name becomes `sub`), code flow with PKCE, open dynamic registration.
# demo-client is a confidential client for scripts (client_credentials).
(cd tests/idp && exec env IDP_PORT=9001 IDP_KEYS="$work/mcp-as-keys.json" IDP_STATE_DIR="$work/mcp-as-state" IDP_INTERACTIVE=1 \
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
(cd tests/mcp && exec env MCP_PORT=9200 BACKEND_URL=http://127.0.0.1:9100 node server.mjs >"$work/mcp-server.log" 2>&1) &
pids+=($!)
.venv/bin/envoy -c envoy-local/envoy.yaml --concurrency 2 --disable-hot-restart -l info >"$work/envoy.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9001/jwks "the MCP authorization server"
wait_for http://127.0.0.1:9002/jwks "the backend authorization server"
wait_for http://127.0.0.1:9100/_requests "the backend"
wait_for http://127.0.0.1:9200/_seen "the MCP server"
wait_for http://127.0.0.1:9901/ready "Envoy"

exchanges() { curl -s http://127.0.0.1:9002/_stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_exchange"])'; }
# The text of the first tools/call result in an MCP answer (SSE or JSON).
tool_text='import json,sys
for line in sys.stdin.read().splitlines():
    line = line[5:] if line.startswith("data:") else line
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if "result" in msg:
        print(msg["result"]["content"][0]["text"]); break
    if "error" in msg:
        print(json.dumps(msg["error"])); break'
backend_saw='import json,sys
raw = sys.stdin.read()
try:
    c = json.loads(raw).get("verified_claims") or {}
except ValueError:
    c = {}
print("   ", {k: c.get(k) for k in ("iss", "aud", "sub", "scope")} if c else raw.strip())'
claims='import json,sys,base64; p=sys.stdin.read().strip().split(".")[1]; c=json.loads(base64.urlsafe_b64decode(p+"==")); print("   ", {k: c.get(k) for k in ("iss","aud","sub","scope")})'

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
echo "3) A token from the MCP authorization server; its audience is the MCP server:"
echo "   TOKEN=\$($get_token)"
echo "$TOKEN" | python3 -c "$claims"
echo
echo "4) MCP over curl with that token. Envoy validates it and exchanges it at the"
echo "   backend AS (RFC 8693); the MCP server only ever sees the exchanged token,"
echo "   and its whoami tool passes it to the backend, which verifies it:"
mcp_headers=(-H "Authorization: Bearer $TOKEN" -H "content-type: application/json"
  -H "accept: application/json, text/event-stream")
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
call='{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
echo "   H=(-H \"Authorization: Bearer \$TOKEN\" -H 'content-type: application/json' -H 'accept: application/json, text/event-stream')"
echo "   SESSION=\$(curl -s -D - -o /dev/null \"\${H[@]}\" -d '$init' $resource | sed -n 's/^mcp-session-id: *//Ip' | tr -d '\\r')"
init_answer="$(curl -s -D - -o /dev/null -w '%{http_code}' "${mcp_headers[@]}" -d "$init" "$resource")"
SESSION="$(echo "$init_answer" | sed -n 's/^mcp-session-id: *//Ip' | tr -d '\r')"
echo "   initialize: HTTP $(echo "$init_answer" | tail -1), mcp-session-id: $SESSION"
echo "   curl -s \"\${H[@]}\" -H \"mcp-session-id: \$SESSION\" -d '$call' $resource"
whoami_text="$(curl -s "${mcp_headers[@]}" -H "mcp-session-id: $SESSION" \
  -d "$call" "$resource" | python3 -c "$tool_text")"
echo "   the backend verified:"
echo "$whoami_text" | python3 -c "$backend_saw"
echo
echo "5) Again: the exchanged token comes from the cache, no second call to the backend AS:"
curl -s -o /dev/null "${mcp_headers[@]}" -H "mcp-session-id: $SESSION" -d "$call" "$resource"
exchanges_after_curl="$(exchanges)"
echo "   backend AS exchanges so far: $exchanges_after_curl"
echo
echo "6) A real MCP client: the official TypeScript SDK as an agent (client_credentials),"
echo "   told only the MCP URL; it finds the authorization server from the 401 and RFC 9728:"
agent_cmd="MCP_URL=$resource MCP_CLIENT_ID=demo-client MCP_CLIENT_SECRET=demo-secret MCP_ISSUER=http://127.0.0.1:9001 MCP_SCOPE=mcp:tools:call MCP_CALLS=1 node tests/mcp/client-credentials.mjs"
echo "   $agent_cmd"
agent_out="$(env MCP_URL="$resource" MCP_CLIENT_ID=demo-client MCP_CLIENT_SECRET=demo-secret \
  MCP_ISSUER=http://127.0.0.1:9001 MCP_SCOPE=mcp:tools:call MCP_CALLS=1 \
  node tests/mcp/client-credentials.mjs 2>"$work/agent.log")" || fail "the TypeScript SDK client failed; see $work/agent.log"
agent_whoami="$(echo "$agent_out" | python3 -c 'import json,sys
for line in sys.stdin:
    e = json.loads(line)
    if e["event"] == "whoami":
        print(json.dumps(e["result"])); break')"
echo "   whoami, as the backend verified it:"
echo "$agent_whoami" | python3 -c "$backend_saw"

user_whoami=""
if [ "$check" = 1 ]; then
  echo
  echo "7) (--check) A user logs in: the SDK's code flow client (tests/mcp/client-oauth.mjs),"
  echo "   dynamic registration, PKCE, and a scripted user at the login page (tests/integration/login.py):"
  user_whoami="$(cd tests/integration && MCP_URL="$resource" ../../.venv/bin/python - 2>"$work/user.log" <<'EOF'
import json, os, subprocess
from login import login

proc = subprocess.Popen(["node", "client-oauth.mjs"], cwd="../mcp", env={**os.environ, "MCP_CALLS": "1"},
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
for line in proc.stdout:
    event = json.loads(line)
    if event["event"] == "authorize":
        proc.stdin.write(login(event["url"], "demo-user") + "\n")
        proc.stdin.flush()
    elif event["event"] == "whoami":
        print(json.dumps(event["result"]))
proc.wait(timeout=60)
EOF
)" || fail "the code flow client failed; see $work/user.log"
  echo "   whoami for demo-user, as the backend verified it:"
  echo "$user_whoami" | python3 -c "$backend_saw"
fi

cat <<EOF

Log in yourself: the MCP endpoint is $resource. Clients find the
authorization server (http://127.0.0.1:9001) from the 401, register themselves
and open its login page in your browser: any user name and password work, and
the name becomes your \`sub\`. Then ask for the whoami tool: the backend answers
with the identity it verified (iss http://127.0.0.1:9002, aud backend, your sub).

  mcp-remote (a stdio bridge, as Claude Desktop and other stdio-only hosts run it):
    npx -y mcp-remote $resource
    host config: {"mcpServers": {"demo": {"command": "npx", "args": ["-y", "mcp-remote", "$resource"]}}}
    (a one-shot check that logs in and lists the tools:
     node tests/mcp/node_modules/mcp-remote/dist/client.js $resource)
  VS Code, .vscode/mcp.json:
    {"servers": {"demo": {"type": "http", "url": "$resource"}}}
  Claude Code:
    claude mcp add --transport http demo $resource     then /mcp in a session to log in
  The TypeScript SDK's code flow client in this repository:
    MCP_URL=$resource node tests/mcp/client-oauth.mjs
    open the URL it prints, log in, and paste the address your browser lands on
    (http://127.0.0.1:33418/callback?code=..., a page that does not load) back into it.

Clients keep their registration and tokens, and so does the demo: stop it and
start it again, and they carry on. envoy-local/run.sh --reset starts clean.
Logs: $work/{idp,backend-as,backend,mcp-server,envoy}.log
EOF

if [ "$check" = 1 ]; then
  echo "$no_token" | head -1 | grep -q " 401" || fail "expected 401 without a token"
  echo "$no_token" | grep -qi '^www-authenticate: Bearer .*resource_metadata="http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"' \
    || fail "the 401 has no challenge naming the metadata"
  [ -n "$SESSION" ] || fail "initialize over curl got no session"
  verified() { # whoami text, sub
    echo "$1" | python3 -c 'import json,sys
c = json.load(sys.stdin)["verified_claims"]
assert c["iss"] == "http://127.0.0.1:9002" and c["aud"] == "backend" and c["sub"] == sys.argv[1], c' "$2"
  }
  verified "$whoami_text" demo-client || fail "curl's whoami: the backend did not verify a backend token for demo-client"
  [ "$exchanges_after_curl" = 1 ] || fail "expected exactly one exchange for curl's two calls, got $exchanges_after_curl"
  verified "$agent_whoami" demo-client || fail "the SDK agent's whoami: no backend token for demo-client"
  verified "$user_whoami" demo-user || fail "the logged-in user's whoami: no backend token for demo-user"
  # A tool result is what the backend verified, never a token.
  for result in "$whoami_text" "$agent_whoami" "$user_whoami"; do
    echo "$result" | python3 -c 'import json,re,sys
raw = sys.stdin.read()
assert list(json.loads(raw)) == ["verified_claims"], raw
assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", raw) and "bearer" not in raw.lower(), raw' \
      || fail "a tool result carries more than the verified claims: $result"
  done
  # The MCP server never saw a caller's token: only the backend AS's.
  curl -s http://127.0.0.1:9200/_seen | python3 -c 'import json,sys,base64
for v in json.load(sys.stdin):
    p = v.split(" ", 1)[1].split(".")[1]
    assert json.loads(base64.urlsafe_b64decode(p + "=="))["iss"] == "http://127.0.0.1:9002", v' \
    || fail "the MCP server received a token that was not exchanged"
  echo "demo check passed"
  exit 0
fi
echo "Running. Press Ctrl-C to stop."
wait
