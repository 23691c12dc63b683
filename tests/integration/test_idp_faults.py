"""The IdP misbehaving, on real Envoy: a fault-injecting proxy
(tests/faults.py) sits in front of the real authorization servers, on the
JWKS endpoint and on the token endpoint, one proxy and one listener per
(endpoint, mode), so every scenario runs at once and none sees another's
back-off or cache.

For each: one request made while the fault is on ends within a bound (the
8 s key wait + 3 s for JWKS, `timeoutMs` + 3 s for the exchange) with the
README's status, and never reaches the upstream; then the proxy passes
through again and a later request succeeds, with Envoy never restarted.

Statuses (README "What the filter does", and the code where it is silent):

- JWKS: any failure to get usable keys is `503` (`keys could not be
  fetched`): refused, no answer within the 5 s fetch timeout, 5xx, an HTML
  page, truncated JSON, a document over the 256 KiB limit, a reset.
- Exchange: 5xx, refused, reset: `503`; no answer within `timeoutMs`: `504`;
  HTML, truncated JSON, an answer over 64 KiB: `502`. A non-positive or
  non-integer `expires_in` is `502` too (the filter would otherwise cache an
  already-expired token, or guess a lifetime).
- A wrong `Content-Type` (`text/plain`) on a valid JSON body: accepted, for
  both callouts. Neither `keys/cache.rs` nor `exchange/` reads the answer's
  content type (they parse the body as JSON and judge that), and IdPs and
  proxies in the wild do send JSON as `text/plain` or `text/html`; so the
  request passes (200).

Also: an unknown-kid storm while the JWKS endpoint fails, keys rotated
without pre-publication, and 200 clients leaving while their requests are
paused on each kind of callout, after which Envoy still serves and V8 has
reported no failure.
"""

import json
import random
import re
import socket
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from constants import CLIENT, MCP_AUDIENCE, MCP_SCOPE, SECRET
from faults import FaultProxy  # tests/faults.py
from harness import IdP, b64url, call, decode_part, free_port
from httpd import HttpServer, json_answer
from stacks import Stack, exchange_client

# The filter's fixed JWKS limits (filter/src/keys/cache.rs, request/).
FETCH_TIMEOUT_S = 5.0
MAX_WAIT_S = 8.0
MARGIN_S = 3.0
JWKS_BOUND_S = MAX_WAIT_S + MARGIN_S
JWKS_DELAY_S = FETCH_TIMEOUT_S + 1.5
EXCHANGE_TIMEOUT_MS = 1500
EXCHANGE_BOUND_S = EXCHANGE_TIMEOUT_MS / 1000 + MARGIN_S
EXCHANGE_DELAY_S = EXCHANGE_TIMEOUT_MS / 1000 + 1.5
# Back-off after failed fetches reaches 10 s; a fetch in flight when the
# proxy is fixed may still take its 5 s timeout.
RECOVERY_S = 25.0

ERRORS = {200: None, 502: "bad_gateway", 503: "temporarily_unavailable", 504: "gateway_timeout"}

JWKS_MODES = {
    "refused": 503, "delay": 503, "500": 503, "503": 503, "html": 503, "truncated": 503,
    "huge": 503, "wrong-type": 200, "reset": 503,
}
EXCHANGE_MODES = {
    "refused": 503, "delay": 504, "500": 503, "503": 503, "html": 502, "truncated": 502,
    "huge": 502, "wrong-type": 200, "reset": 503,
    "expires=0": 502, "expires=-1": 502, "expires=2.5": 502, 'expires="soon"': 502,
}


def scenario_id(endpoint, mode):
    return f"{endpoint}-" + mode.replace("=", "-").replace('"', "").replace(".", "_")


SCENARIOS = [(scenario_id("jwks", m), "jwks", m, s) for m, s in JWKS_MODES.items()] + [
    (scenario_id("exchange", m), "exchange", m, s) for m, s in EXCHANGE_MODES.items()
]


class Recorder(HttpServer):
    """The upstream: answers 200 and records every path that reached it."""

    def __init__(self):
        self.paths = []
        super().__init__(self.answer)

    def answer(self, req):
        if req.method != "GET":
            return 501, {}, b""
        self.paths.append(req.path)
        return json_answer({"ok": True})

    def reached(self, prefix):
        return [p for p in list(self.paths) if p.startswith(prefix)]


class Faults(Stack):
    """Three authorization servers (MCP AS, backend AS, and one that only the
    rotation test restarts), the proxies, the recorder as the upstream, and
    one Envoy with a listener per scenario and per test below."""

    def __init__(self, cleanup):
        self.recorder = cleanup.add(Recorder())
        self.proxies = {}
        names = [sid for sid, *_ in SCENARIOS] + ["storm", "rotate", "rotate-race", "leave-cold", "leave-jwks",
                                                  "leave-exchange"]
        super().__init__(cleanup, listeners=names, prefix="faults-", exchange=True,
                         backend_as={"clients": [exchange_client(token_endpoint_auth_method="client_secret_basic")]},
                         token_exchange={"timeoutMs": EXCHANGE_TIMEOUT_MS}, upstream=self.recorder.port, envoy=False)
        self.rotate_as = IdP(cleanup, "faults-rotate-as", resources=self.mcp_as.resources,
                             clients=self.mcp_as.clients).start()
        self.add_cluster(self.rotate_as.port)
        self.start_envoy()
        self.started = time.monotonic()
        self.vm_created = vm_stats(self.envoy.admin).get("wasm.envoy.wasm.runtime.v8.created")
        # While that first fetch is pending (here, not in a test, so that it
        # is still pending whichever tests run): 200 clients come and go.
        token = self.token()
        socks = open_paused(self.ports["leave-cold"], [token], 200)
        time.sleep(0.5)
        self.cold_early = answered(socks)
        self.cold_fetches = dict(self.proxies["leave-cold"].by_mode)
        leave(socks)

    def proxy(self, name, idp, mode, delay):
        """A fault proxy in front of `idp`, with its cluster; returns its origin."""
        proxy = FaultProxy(idp.port, free_port(), mode=mode, delay=delay, name=name)
        p = self.proxies[name] = self.cleanup.add(proxy)
        self.add_cluster(p.port)
        return f"http://127.0.0.1:{p.port}"

    def jwks_via(self, name, mode, delay, idp=None):
        """Validation only, of `idp`'s tokens (the MCP AS's by default), its keys through a proxy."""
        idp = idp or self.mcp_as
        jwks = self.proxy(name, idp, mode, delay) + "/jwks"
        return self.config(oidc={"issuer": idp.issuer, "jwksUrl": jwks}, exchange=False)

    def exchange_via(self, name, mode, delay, timeout_ms=EXCHANGE_TIMEOUT_MS):
        token_url = self.proxy(name, self.backend_as, mode, delay) + "/token"
        return self.config(exchange={"tokenUrl": token_url, "timeoutMs": timeout_ms})

    def configure(self, name):
        endpoint, mode = next(((e, m) for sid, e, m, _ in SCENARIOS if sid == name), (None, None))
        if endpoint == "jwks":
            # Faulty from the start: the first fetch is the root context's, on its first tick.
            return self.jwks_via(name, mode, JWKS_DELAY_S)
        if endpoint == "exchange":
            return self.exchange_via(name, mode, EXCHANGE_DELAY_S)
        if name == "rotate":
            return self.config(oidc={"issuer": self.rotate_as.issuer, "jwksUrl": f"{self.rotate_as.issuer}/jwks"},
                               exchange=False)
        if name == "rotate-race":
            return self.jwks_via(name, "pass", 0, self.rotate_as)
        if name == "leave-cold":
            # The first fetch, on Envoy's first tick, answers after 4 s.
            return self.jwks_via(name, "delay", 4.0)
        if name == "leave-exchange":
            return self.exchange_via(name, "delay", 2.5, timeout_ms=5000)
        return self.jwks_via(name, "pass", 0)  # storm, leave-jwks

    def rotated_token(self):
        return self.rotate_as.token(CLIENT, SECRET, self.resource, MCP_SCOPE)

    def timed(self, name, token, phase, timeout=30):
        """(status, headers, body, seconds) of GET /mcp/<name>/<phase>/<n> on that listener."""
        t0 = time.monotonic()
        path = f"/mcp/{name}/{phase}/{uuid.uuid4().hex[:8]}"
        status, headers, body = call(self.ports[name], path, headers={"authorization": f"Bearer {token}"},
                                     timeout=timeout)
        return status, headers, body, time.monotonic() - t0

    def log(self):
        return self.envoy.proc.text()


@pytest.fixture(scope="module")
def fx(module_cleanup):
    return Faults(module_cleanup)


@dataclass
class Outcome:
    status: int = 0
    headers: dict = field(default_factory=dict)
    body: str = ""
    took: float = 0.0
    upstream: list = field(default_factory=list)
    hits: dict = field(default_factory=dict)
    recovered: int = 0
    recovery_s: float = 0.0
    slowest_retry: float = 0.0
    error: str = ""


def run_scenario(fx, sid, endpoint, mode):
    o = Outcome()
    proxy = fx.proxies[sid]
    try:
        token = fx.token()
        if endpoint == "jwks":
            # Let the root context's first fetch meet the fault.
            time.sleep(max(0.0, fx.started + 1.0 - time.monotonic()))
        o.status, o.headers, o.body, o.took = fx.timed(sid, token, "fault")
        o.hits = dict(proxy.by_mode)
        proxy.set("pass")
        t0 = time.monotonic()
        while True:
            o.recovered, _, body, took = fx.timed(sid, token, "recover")
            o.slowest_retry = max(o.slowest_retry, took)
            if o.recovered == 200 or time.monotonic() - t0 > RECOVERY_S:
                break
            time.sleep(0.3)
        o.recovery_s = time.monotonic() - t0
    except Exception as e:  # reported by the test of this scenario
        o.error = f"{type(e).__name__}: {e}"
    o.upstream = fx.recorder.reached(f"/mcp/{sid}/fault/")
    return sid, o


@pytest.fixture(scope="module")
def outcomes(fx):
    """Every (endpoint, mode) scenario, run at once: {id: Outcome}."""
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        done = dict(pool.map(lambda s: run_scenario(fx, *s[:3]), SCENARIOS))
    return done


@pytest.mark.parametrize("sid,endpoint,mode,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_fault(fx, outcomes, sid, endpoint, mode, expected):
    o = outcomes[sid]
    assert not o.error, o.error
    bound = JWKS_BOUND_S if endpoint == "jwks" else EXCHANGE_BOUND_S
    assert o.took <= bound, f"{sid}: the request took {o.took:.1f}s (bound {bound}s)"
    assert o.slowest_retry <= bound, f"{sid}: a request while recovering took {o.slowest_retry:.1f}s"
    assert o.status == expected, f"{sid}: got {o.status}, expected {expected}: {o.body[:200]} (proxy saw {o.hits})"
    if expected == 200:
        assert len(o.upstream) == 1
    else:
        assert o.upstream == [], f"{sid}: reached the upstream"
        doc = json.loads(o.body)
        assert doc["error"] == ERRORS[expected], doc
        if expected == 503:
            assert o.headers.get("retry-after"), o.headers
    if mode != "refused":
        assert o.hits.get(mode, 0) >= 1, f"{sid}: the filter never met the fault (proxy saw {o.hits})"
    assert o.recovered == 200, f"{sid}: not recovered {RECOVERY_S}s after the IdP was fixed (last {o.recovered})"


def forged_unknown_kid(fx, issuer=None):
    """A well-formed RS256-looking token whose kid no JWKS has, claiming
    `issuer` (the MCP AS's by default): only a token that claims the
    route's issuer can make it fetch keys."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "storm-" + uuid.uuid4().hex}
    claims = {"iss": issuer or fx.mcp_as.issuer, "sub": "storm", "aud": MCP_AUDIENCE, "iat": now, "exp": now + 300,
              "scope": MCP_SCOPE}
    enc = lambda o: b64url(json.dumps(o, separators=(",", ":")).encode())  # noqa: E731
    return f"{enc(header)}.{enc(claims)}.{b64url(random.randbytes(256))}"


def test_unknown_kid_storm_while_jwks_fails(fx):
    """Keys are loaded; the JWKS endpoint starts failing; random kids arrive
    for 3 s. The IdP sees at most one fetch per 5 s interval (plus one for an
    interval boundary), every request ends in bound with 401 or 503, and a
    good token still passes on the keys already held."""
    good = fx.token()
    assert fx.timed("storm", good, "before")[0] == 200
    proxy = fx.proxies["storm"]
    proxy.set("500")
    before = proxy.hits
    t_start = time.monotonic()

    def one(_):
        time.sleep(random.random() * 3.0)
        status, _, _, took = fx.timed("storm", forged_unknown_kid(fx), "storm")
        return status, took

    with ThreadPoolExecutor(60) as pool:
        results = list(pool.map(one, range(60)))
    elapsed = time.monotonic() - t_start
    fetches = proxy.hits - before
    assert all(took <= JWKS_BOUND_S for _, took in results), max(t for _, t in results)
    assert {s for s, _ in results} <= {401, 503}, sorted({s for s, _ in results})
    allowed = int(elapsed // 5) + 2
    assert fetches <= allowed, f"{fetches} JWKS fetches in {elapsed:.1f}s of unknown kids (at most {allowed})"
    assert fx.recorder.reached("/mcp/storm/storm/") == []
    proxy.set("pass")
    assert fx.timed("storm", good, "after")[0] == 200


def test_rotation_without_prepublication(fx):
    """The IdP restarts with a new signing key it never published before,
    just after the filter fetched keys (an unknown kid forced that fetch).
    A token with the new kid is held until the next allowed refetch and
    passes; it is not refused as signed by an unknown key."""
    old = fx.rotated_token()
    assert fx.timed("rotate", old, "old")[0] == 200
    # Once the keys are 5 s old, an unknown kid makes the filter refetch.
    time.sleep(max(0.0, fx.started + 5.5 - time.monotonic()))
    status, _, _, _ = fx.timed("rotate", forged_unknown_kid(fx, fx.rotate_as.issuer), "force-fetch")
    fetched = time.monotonic()
    assert status == 401
    fx.rotate_as.restart(rotate=True)
    new = fx.rotated_token()
    assert decode_part(new, 0)["kid"] != decode_part(old, 0)["kid"]
    sent = time.monotonic()
    assert sent - fetched < 5.0, "the new kid arrives before the next refetch is allowed (else this proves nothing)"
    status, _, body, took = fx.timed("rotate", new, "new")
    assert took <= JWKS_BOUND_S, took
    assert status == 200, f"a freshly rotated key was refused after {took:.2f}s, sent {sent - fetched:.2f}s " \
                          f"after the last fetch: {status} {body}"
    assert fx.timed("rotate", old, "old-again")[0] == 200, "the old key is still published"


def test_rotation_new_kid_on_every_worker_right_after_a_fetch(fx):
    """The same, without a race: a stale JWKS copy (the proxy replays the
    last one) answers the refetch an unknown kid forces, while the IdP has
    already rotated; the moment that fetch is done the IdP is reachable
    again and 20 requests with the new kid arrive at once, on both workers.
    Every one is held until the next allowed refetch and passes. (A worker
    that adopts the other's copy of the stale keys must not decide its
    held requests against it: that copy is older than they are.)"""
    proxy = fx.proxies["rotate-race"]
    old = fx.rotated_token()
    assert fx.timed("rotate-race", old, "old")[0] == 200
    proxy.set("replay")
    fx.rotate_as.restart(rotate=True)
    new = fx.rotated_token()
    time.sleep(max(0.0, fx.started + 5.5 - time.monotonic()))
    status, _, body, _ = fx.timed("rotate-race", forged_unknown_kid(fx, fx.rotate_as.issuer), "force-fetch")
    assert status == 401, body
    assert proxy.by_mode.get("replay") == 1, proxy.by_mode
    proxy.set("pass")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: fx.timed("rotate-race", new, "new"), range(20)))
    assert all(r[3] <= JWKS_BOUND_S for r in results), [round(r[3], 2) for r in results]
    refused = [(r[0], r[2], round(r[3], 2)) for r in results if r[0] != 200]
    assert not refused, f"{len(refused)} of 20 requests with a just-rotated kid refused: {refused[:3]}"
    assert fx.timed("rotate-race", old, "old-again")[0] == 200


def open_paused(port, tokens, n):
    """n raw connections, each with one request sent; returns the sockets."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /mcp/leave/{i} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {tokens[i % len(tokens)]}\r\n\r\n"
                  .encode())
        socks.append(s)
    return socks


def answered(socks):
    """How many sockets have an answer (or were closed) already."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK) is not None:
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
        finally:
            s.setblocking(True)
    return n


def leave(socks):
    """Half reset (RST), half closed (FIN)."""
    for i, s in enumerate(socks):
        if i % 2 == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def test_clients_leave_while_first_jwks_fetch_pending(fx):
    """No keys yet; the first fetch is pending at the IdP (4 s); 200 clients
    (both workers) send a request and leave while paused on it (done in the
    fixture, right after Envoy started). Envoy keeps serving; the keys come
    and are used."""
    assert fx.cold_fetches.get("delay") == 1, f"one fetch was pending: {fx.cold_fetches}"
    assert fx.cold_early == 0, f"{fx.cold_early} of 200 were answered instead of waiting for the keys"
    token = fx.token()
    deadline = time.monotonic() + RECOVERY_S
    while True:
        status, _, body, took = fx.timed("leave-cold", token, "after")
        assert took <= JWKS_BOUND_S
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == 200, body
    assert fx.recorder.reached("/mcp/leave/") == []
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: fx.timed("leave-cold", token, "after")[0], range(40)))
    assert codes == [200] * 40


def test_clients_leave_while_unknown_kid_refetch_pending(fx):
    """Keys are loaded; a token with an unseen kid makes a request start a
    refetch (so a stream context owns the callout), which the IdP answers
    only after 4 s; 200 such clients, on both workers, leave while paused.
    Envoy keeps serving: known keys pass at once, an unseen kid is still
    decided (401) within the key wait, and a key published later is found."""
    proxy = fx.proxies["leave-jwks"]
    good = fx.token()
    assert fx.timed("leave-jwks", good, "before")[0] == 200
    # Keys 5 s old: an unseen kid may refetch.
    time.sleep(max(0.0, fx.started + 5.5 - time.monotonic()))
    proxy.set("delay", 4.0)
    before = proxy.hits
    socks = open_paused(fx.ports["leave-jwks"], [forged_unknown_kid(fx) for _ in range(50)], 200)
    time.sleep(0.5)
    early = answered(socks)
    started = proxy.hits - before
    leave(socks)
    assert started >= 1, "the unseen kid started a JWKS fetch"
    assert early == 0, f"{early} of 200 were answered while the refetch was pending"
    proxy.set("pass")
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: fx.timed("leave-jwks", good, "after")[0], range(40)))
    assert codes == [200] * 40
    status, _, body, took = fx.timed("leave-jwks", forged_unknown_kid(fx), "after-unknown")
    assert status in (401, 503) and took <= JWKS_BOUND_S, (status, took, body)
    assert fx.recorder.reached("/mcp/leave/") == []


def test_clients_leave_while_exchange_pending(fx):
    """20 new users, 10 requests each, all paused on their exchange (the
    token endpoint answers after 2.5 s); every client leaves. Envoy keeps
    serving: the same users' next requests exchange and pass."""
    proxy = fx.proxies["leave-exchange"]
    tokens = [fx.token() for _ in range(20)]
    before = proxy.hits
    socks = open_paused(fx.ports["leave-exchange"], tokens, 200)
    time.sleep(0.8)
    early = answered(socks)
    started = proxy.hits - before
    leave(socks)
    assert early == 0, f"{early} of 200 answered while their exchanges were pending"
    assert started >= 1, "no exchange reached the IdP"
    time.sleep(3.0)  # the abandoned exchanges answer, to nobody
    proxy.set("pass")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda t: fx.timed("leave-exchange", t, "after"), tokens * 2))
    assert [r[0] for r in results] == [200] * 40, [r[2][:100] for r in results if r[0] != 200]
    assert all(r[3] <= EXCHANGE_BOUND_S + 3.5 for r in results)
    assert fx.recorder.reached("/mcp/leave/") == []


def vm_stats(admin_port):
    """Envoy's own wasm stats (not the filter's `wasmcustom.*` metrics)."""
    stats = call(admin_port, "/stats")[2]
    return dict(l.split(": ", 1) for l in stats.splitlines() if l.startswith("wasm.") and ": " in l)


def vm_failures(admin_port, created_at_start):
    """A trapped VM is torn down and, with Envoy's default failure policy,
    reloaded: `wasm.<vm_id>.vm_reload*` count that, and V8 creates a VM."""
    stats = vm_stats(admin_port)
    bad = {k: v for k, v in stats.items() if re.match(r"wasm\.[^.]+\.vm_reload", k) and v != "0"}
    if stats.get("wasm.envoy.wasm.runtime.v8.created") != created_at_start:
        bad["wasm.envoy.wasm.runtime.v8.created"] = f"{created_at_start} -> {stats.get('wasm.envoy.wasm.runtime.v8.created')}"
    return bad


def test_no_vm_failures_and_everything_still_serves(fx, outcomes):
    """After every fault and every abandoned request: no trap, no panic, V8
    reported no failure, and each listener still serves a good token."""
    assert fx.vm_created, "Envoy reports wasm.envoy.wasm.runtime.v8.created"
    bad = vm_failures(fx.envoy.admin, fx.vm_created)
    assert not bad, bad
    log = fx.log()
    for marker in ("Function: proxy_on_", "wasm trap", "panicked", "Wasm VM failed", "unreachable"):
        assert marker not in log, [l for l in log.splitlines() if marker in l][:5]
    token = fx.token()
    for sid, *_ in SCENARIOS:
        assert fx.timed(sid, token, "final")[0] == 200, sid
    assert "eyJ" not in log, "no token was logged"
