"""Real processes for the integration tests: Envoy with the built filter, the
oidc-provider IdP, and the echo backend. Everything listens on 127.0.0.1 on a
free port, logs to a file under tests/.work/, and is stopped when the test
ends, pass or fail.
"""

import base64
import copy
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# tests/: httpd.py, faults.py and standins/ are imported from there.
sys.path.insert(0, str(ROOT / "tests"))

from constants import SHIPPED_SECRET_ENV  # noqa: E402
from httpd import HttpServer  # noqa: E402

WORK = ROOT / "tests" / ".work"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "token_exchange_filter.wasm"
# The venv's Envoy; TEST_ENVOY names another binary (tests/run.sh runs a
# slice of the suite on the oldest supported Envoy that way).
ENVOY = Path(os.environ.get("TEST_ENVOY") or Path(sys.prefix) / "bin" / "envoy")
MCP_DIR = ROOT / "tests" / "mcp"
# What the filter must never log, gathered as the tests run: every token an
# IdP issued to a test, and every value passed to an Envoy's environment
# (where the secrets are). test_zz_no_secrets_in_logs.py scans for them.
ISSUED_TOKENS = set()
ENVOY_SECRETS = set()


_HANDED_OUT = set()
# Ports handed out come from below the kernel's ephemeral range. A port is
# only reserved until the stand-in binds it, and a port inside that range
# can meanwhile be taken by the kernel: as the local end of an outbound
# connection (a client's, an Envoy's to its upstream) or for a stand-in that
# binds port 0 (HttpServer). Its listener then fails with "Address already
# in use", as an Envoy did in CI. The kernel never picks a port outside the
# range on its own.
LOWEST_PORT = 10000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _port_pool():
    """Ports no outbound connection takes: those between LOWEST_PORT and the
    ephemeral range, starting at a random one (two runs on one machine then
    rarely try the same ports), or none if the range leaves no room."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    pool = list(range(LOWEST_PORT, first_ephemeral))
    if len(pool) < 1000:
        return []
    start = random.randrange(len(pool))
    return pool[start:] + pool[:start]


_POOL = iter(_port_pool())


def free_port():
    """A port nothing is bound to now, that this run has not handed out
    before (two listeners of one Envoy given the same port fail its start),
    and that no outbound connection can take before its stand-in binds it
    (see LOWEST_PORT). Falls back to a kernel-chosen port when the ephemeral
    range leaves no room below it."""
    for port in _POOL:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# A stand-in normally listens within a second. The wait allows for a loaded
# machine; a process that is still silent after it is stuck, and the error
# says where (its threads' kernel waits), as it did for the IdP's keygen
# deadlock on Node 20 (tests/idp/server.mjs, newKey).
START_TIMEOUT_S = 30.0


def wait_port(port, proc, log, timeout=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}; log:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s; {waits(proc.pid)}; log:\n{tail(log)}")


def waits(pid):
    """What each thread of `pid` waits on in the kernel (state and wchan):
    enough to tell a stuck process from a slow one."""
    seen = {}
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            where = f"{state}:{(task / 'wchan').read_text() or '-'}"
        except (OSError, IndexError):
            continue
        seen[where] = seen.get(where, 0) + 1
    return "threads " + (", ".join(f"{n}x {w}" for w, n in seen.items()) or "unknown")


def wait_for(predicate, what, timeout=15.0):
    """Waits until `predicate()` holds; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def tail(path, n=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_process(proc):
    """Terminates `proc` (a Popen) if it still runs; kills it after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proc:
    """A child process with its log file; stop() is idempotent."""

    def __init__(self, name, cmd, env=None, cwd=None):
        WORK.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = WORK / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._fh = open(self.log, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)

    def stop(self):
        stop_process(self.proc)
        self._fh.close()

    def text(self):
        return self.log.read_text(errors="replace")


class Cleanup:
    """Stops everything registered, in reverse order."""

    def __init__(self):
        self.procs = []

    def add(self, p):
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            p.stop()


class IdP:
    """One oidc-provider authorization server (tests/idp/server.mjs)."""

    def __init__(self, cleanup, name, port=None, keys=None, issuer=None, resources=None, clients=None,
                 jwks_delay_ms=0, extra_env=None):
        self.cleanup = cleanup
        self.jwks_delay_ms = jwks_delay_ms
        self.extra_env = extra_env or {}
        self.name = name
        self.port = port or free_port()
        self.issuer = issuer or f"http://127.0.0.1:{self.port}"
        self.keys = keys or (WORK / f"{name}-{self.port}-keys.json")
        self.resources = resources or {}
        self.clients = clients or []
        self.proc = None

    def start(self, rotate=False):
        env = {
            "IDP_PORT": str(self.port),
            "IDP_ISSUER": self.issuer,
            "IDP_KEYS": str(self.keys),
            "IDP_RESOURCES": json.dumps(self.resources),
            "IDP_CLIENTS": json.dumps(self.clients),
            "IDP_ROTATE": "1" if rotate else "0",
            "IDP_JWKS_DELAY_MS": str(self.jwks_delay_ms),
            **self.extra_env,
        }
        self.proc = self.cleanup.add(Proc(self.name, ["node", "server.mjs"], env=env, cwd=ROOT / "tests" / "idp"))
        wait_port(self.port, self.proc.proc, self.proc.log)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def restart(self, rotate=False):
        self.stop()
        return self.start(rotate=rotate)

    def token(self, client, secret, resource, scope=None):
        form = {"grant_type": "client_credentials", "resource": resource}
        if scope:
            form["scope"] = scope
        basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
        status, _, body = call(
            self.port,
            "/token",
            method="POST",
            headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
            body=urllib.parse.urlencode(form),
        )
        assert status == 200, body
        token = json.loads(body)["access_token"]
        ISSUED_TOKENS.add(token)
        return token

    def jwks(self):
        status, _, body = call(self.port, "/jwks")
        assert status == 200
        return json.loads(body)

    def stats(self):
        """What this IdP counts (tests/idp/server.mjs, GET /_stats)."""
        return json.loads(call(self.port, "/_stats")[2])

    def exchanges(self, target=None):
        """Token exchanges this IdP has handled; with `target`, those that
        asked for that resource or audience."""
        s = self.stats()
        return s["token_exchange"] if target is None else s["token_exchange_by_target"].get(target, 0)

    def grants(self, grant_type):
        """Grants of `grant_type` this IdP has issued a token for."""
        return json.loads(call(self.port, "/_stats")[2])["grants"].get(grant_type, 0)


class Backend:
    """tests/backend.py; with `verify_with` (an IdP), it verifies the tokens it
    receives against that IdP's keys, issuer and `audience` (comma-separated:
    any of them), and with `act_sub` that they name that actor."""

    def __init__(self, cleanup, verify_with=None, audience=None, marker=None, act_sub=None):
        self.port = free_port()
        env = {"BACKEND_MARKER_HEADER": marker} if marker else {}
        if act_sub:
            env["BACKEND_ACT_SUB"] = act_sub
        if verify_with is not None:
            env = {
                "BACKEND_JWKS_URL": f"http://127.0.0.1:{verify_with.port}/jwks",
                "BACKEND_ISSUER": verify_with.issuer,
                "BACKEND_AUDIENCE": audience,
                **env,
            }
        cmd = [sys.executable, str(ROOT / "tests" / "backend.py"), str(self.port)]
        self.proc = cleanup.add(Proc("backend", cmd, env=env))
        wait_port(self.port, self.proc.proc, self.proc.log)

    def requests(self):
        return json.loads(call(self.port, "/_requests")[2])["requests"]

    def mismatches(self):
        """Requests whose token's sub was not the user marker they carried."""
        return json.loads(call(self.port, "/_requests")[2])["mismatches"]


def envoy_config(listeners, admin_port, backend_port, clusters, direct_response=False, env_keys=()):
    """envoy-local/envoy.yaml, re-pointed at this test's ports: the shipped
    file is what the tests run. `listeners` is a list of (port, plugin config):
    each gets a copy of the shipped listener, all in one VM (so they share
    shared data, as plugins on one proxy do). With `direct_response`, Envoy
    itself answers 200 in place of the backend (for measurements)."""
    doc = yaml.safe_load((ROOT / "envoy-local" / "envoy.yaml").read_text())
    doc["admin"]["address"]["socket_address"]["port_value"] = admin_port
    shipped = doc["static_resources"]["listeners"][0]
    doc["static_resources"]["listeners"] = []
    for i, (port, plugin_config) in enumerate(listeners):
        listener = copy.deepcopy(shipped)
        listener["name"] = f"{shipped['name']}-{i}"
        listener["address"]["socket_address"]["port_value"] = port
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        wasm = hcm["http_filters"][0]["typed_config"]["config"]
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        keys = wasm["vm_config"]["environment_variables"]["host_env_keys"]
        keys.extend(k for k in env_keys if k not in keys)
        wasm["configuration"]["value"] = json.dumps(plugin_config)
        if direct_response:
            route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
            del route["route"]
            route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
        doc["static_resources"]["listeners"].append(listener)
    template = doc["static_resources"]["clusters"][0]
    out = []
    for name, port in [("backend", backend_port)] + list(clusters.items()):
        c = copy.deepcopy(template)
        c["name"] = name
        c["load_assignment"]["cluster_name"] = name
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"
        ] = port
        out.append(c)
    doc["static_resources"]["clusters"] = out
    return doc


class EnvoyProcess:
    """Envoy running bootstrap `doc` (written to tests/.work/<name>-<admin>.yaml),
    its admin API on `admin`; `env` is its process environment."""

    def __init__(self, cleanup, name, doc, admin, concurrency=2, log_level="info", env=None):
        self.admin = admin
        WORK.mkdir(parents=True, exist_ok=True)
        self.config_path = WORK / f"{name}-{admin}.yaml"
        self.config_path.write_text(yaml.safe_dump(doc))
        cmd = [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency),
               "--disable-hot-restart", "-l", log_level]
        if log_level == "info":
            # The filter at its most verbose: what it logs is what is scanned.
            cmd += ["--component-log-level", "wasm:trace"]
        ENVOY_SECRETS.update(v for v in (env or {}).values() if len(v) >= 8)
        self.proc = cleanup.add(Proc(name, cmd, env=env))

    def wait_ready(self, ports=(), timeout=30.0):
        """Waits for /ready and for every port in `ports` to listen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.proc.returncode}:\n{tail(self.proc.log)}")
            try:
                if call(self.admin, "/ready")[0] == 200:
                    for port in ports:
                        wait_port(port, self.proc.proc, self.proc.log)
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy not ready after {timeout}s:\n{tail(self.proc.log)}")


class Envoy(EnvoyProcess):
    """Envoy with the filter on `port`, and on each of `extra_listeners`
    ((port, plugin config) pairs); `env` is its process environment, where
    the filter reads secrets from."""

    def __init__(self, cleanup, backend_port, plugin_config, clusters, port=None, concurrency=2,
                 direct_response=False, log_level="info", extra_listeners=(), env=None):
        self.port = port or free_port()
        admin = free_port()
        env = dict(env or {})
        env.setdefault(SHIPPED_SECRET_ENV, "unused")
        listeners = [(self.port, plugin_config)] + list(extra_listeners)
        doc = envoy_config(listeners, admin, backend_port, clusters, direct_response, env_keys=env)
        super().__init__(cleanup, "envoy", doc, admin, concurrency, log_level, env)

    def wait_ready(self, timeout=30.0):
        return super().wait_ready([self.port], timeout)

    def get(self, path="/mcp", token=None, headers=None, method="GET", port=None):
        h = dict(headers or {})
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        return call(port or self.port, path, method=method, headers=h)


# What each path of BrokenTokenEndpoint answers: (status, content type, body).
BROKEN_ANSWERS = {
    "garbage": (200, "text/plain", b"this is not json"),
    "oversize": (200, "application/json", json.dumps({
        "access_token": "x" * 100_000, "token_type": "Bearer",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}).encode()),
    "500": (500, "application/json", b'{"error":"server_error"}'),
    "hang": (200, "application/json", b"{}"),
    "odd-header": (400, "application/json", b'{"error":"invalid_grant"}'),
}


class BrokenTokenEndpoint(HttpServer):
    """A token endpoint that misbehaves as its path says, for the failure rows
    no real IdP produces on demand: /garbage (200, not JSON), /oversize (200,
    100 KB of JSON), /500, /hang (answers after 5 s), /reset (closes the
    connection without answering), /odd-header (invalid_grant, with bytes
    above 0x7f in a header value). Runs in a thread of the test process."""

    def __init__(self):
        super().__init__(self.answer)

    @staticmethod
    def answer(req):
        mode = req.path.strip("/")
        if mode == "reset":
            return None
        if mode == "hang":
            time.sleep(5)
        status, ctype, body = BROKEN_ANSWERS.get(mode, (404, "text/plain", b""))
        headers = [("content-type", ctype)]
        if mode == "odd-header":
            headers.insert(0, ("x-odd", "caf\xe9 \xff"))  # sent as latin-1 bytes
        return status, headers, body


class McpServer:
    """The MCP server (tests/mcp/server.mjs, the official TypeScript SDK on
    Express): its `whoami` tool calls the backend on `backend_port` with the
    Authorization header the MCP request carried."""

    def __init__(self, cleanup, backend_port):
        self.port = free_port()
        self.proc = cleanup.add(Proc("mcp-server", ["node", "server.mjs"], cwd=MCP_DIR, env={
            "MCP_PORT": str(self.port), "BACKEND_URL": f"http://127.0.0.1:{backend_port}"}))
        wait_port(self.port, self.proc.proc, self.proc.log)

    def seen(self):
        """Every Authorization value the MCP server received."""
        return json.loads(call(self.port, "/_seen")[2])


def run_client(script, env, on_event=None, timeout=60):
    """Runs tests/mcp/<script> (an SDK client); returns its JSON lines.
    `on_event(event)` may answer a line for the client's stdin."""
    WORK.mkdir(parents=True, exist_ok=True)
    err = WORK / f"{script}-{free_port()}.log"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(["node", script], cwd=MCP_DIR, env={**os.environ, **env},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, text=True)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        events = []
        try:
            for line in proc.stdout:
                event = json.loads(line)
                events.append(event)
                reply = on_event(event) if on_event else None
                if reply is not None:
                    proc.stdin.write(reply + "\n")
                    proc.stdin.flush()
            code = proc.wait()
        finally:
            watchdog.cancel()
            proc.kill()
    assert code == 0, f"{script} exited with {code}:\n{err.read_text()}\nevents: {events}"
    return events


def call(port, path, method="GET", headers=None, body=None, header_list=None, timeout=30):
    """One HTTP/1.1 request; returns (status, {lower-case header: value}, body text).
    `header_list` sends headers verbatim, repeats included."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = list((headers or {}).items()) + list(header_list or [])
        own_host = any(k.lower() == "host" for k, _ in sent)
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host=own_host)
        for k, v in sent:
            conn.putheader(k, v)
        data = body.encode() if isinstance(body, str) else body
        if data is not None:
            conn.putheader("content-length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace")
    finally:
        conn.close()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def decode_part(token, i):
    part = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def forge_none(token):
    """The token's own claims under `alg: none`, without a signature."""
    header = decode_part(token, 0)
    header["alg"] = "none"
    return f"{b64url_json(header)}.{token.split('.')[1]}."


def forge_hs256_with_public_key(token, public_pem):
    """The classic confusion attack: HS256 keyed with the RSA public key."""
    header = decode_part(token, 0)
    header["alg"] = "HS256"
    signing_input = f"{b64url_json(header)}.{token.split('.')[1]}"
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def public_pem(jwk):
    """PEM of an RSA public JWK, exported by Node's crypto (already installed for the IdP)."""
    script = (
        "const c=require('crypto');"
        "const k=c.createPublicKey({key:JSON.parse(process.argv[1]),format:'jwk'});"
        "process.stdout.write(k.export({type:'spki',format:'pem'}))"
    )
    return subprocess.run(["node", "-e", script, json.dumps(jwk)], check=True, capture_output=True, text=True).stdout


def tamper_signature(token):
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"

