"""Issue 10: MCP clients end to end, through Envoy and the filter.

The official TypeScript SDK's MCP server (tests/mcp/server.mjs) sits behind
Envoy (2 workers) with the filter; its `whoami` tool calls tests/backend.py
with the Authorization header the MCP request carried, and the backend
verifies it against the backend authorization server. Two oidc-provider
servers as in test_exchange.py: the MCP AS, here interactive (authorization
code + PKCE, dynamic client registration, login and consent pages driven by
login.py), and the backend AS, which trusts it and exchanges its tokens
(RFC 8693).

  3. the official Python SDK (PyPI `mcp`) with its OAuth client provider;
  4. mcp-remote, headless: its "browser" is a script that hands the URL to
     the test, which logs in and calls mcp-remote's loopback callback;
  5. two users at once, each seeing only their own identity;
  6. the Streamable HTTP GET event stream stays open through Envoy past 30 s
     (Envoy's default route timeout is 15 s) and delivers a notification.
"""

import http.client
import json
import os
import queue
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from constants import BACKEND_AUDIENCE, MCP_AUDIENCE
from harness import MCP_DIR, Cleanup, call, decode_part, free_port, stop_process
from login import login
from sdk_user import User
from stacks import Stack, sole_resource


@pytest.fixture(scope="module")
def ms(module_cleanup):
    # The MCP AS's only resource is the MCP URL: it gives it to code flows that name none.
    return Stack(module_cleanup, exchange=True, mcp_server=True, interactive=True, resources=sole_resource())


def assert_backend_identity(ms, text, user):
    """`text` is whoami's answer: what the backend verified."""
    claims = json.loads(text)["verified_claims"]
    assert claims["sub"] == user
    assert claims["iss"] == ms.backend_as.issuer
    assert claims["aud"] == BACKEND_AUDIENCE


def assert_never_reached_server(ms, token):
    for value in ms.mcp.seen():
        assert value is None or token not in value, "the caller's token reached the MCP server"
        if value is not None:
            assert decode_part(value.split(" ", 1)[1], 1)["aud"] == BACKEND_AUDIENCE


# --- the official Python SDK --------------------------------------------------


async def whoami(session):
    result = await session.call_tool("whoami", {})
    assert not result.is_error, result
    return result.content[0].text


def test_python_sdk_authorization_code_flow(ms):
    client = User("alice")

    async def run():
        async with AsyncExitStack() as stack:
            session = await client.session(stack, ms.resource)
            tools = {t.name for t in (await session.list_tools()).tools}
            assert {"whoami", "ping"} <= tools
            return await whoami(session)

    text = anyio.run(run)
    assert client.logins == 1
    assert_backend_identity(ms, text, "alice")
    token = client.storage.tokens.access_token
    claims = decode_part(token, 1)
    assert claims["aud"] == MCP_AUDIENCE and claims["sub"] == "alice"
    assert client.storage.client_info.client_id, "registered dynamically"
    assert_never_reached_server(ms, token)


def test_two_users_at_once(ms):
    users = {"carol": User("carol"), "dave": User("dave")}
    answers = {u: [] for u in users}

    async def run():
        async with AsyncExitStack() as stack:
            sessions = {u: await c.session(stack, ms.resource) for u, c in users.items()}

            async def calls(user):
                for _ in range(15):
                    answers[user].append(await whoami(sessions[user]))

            async with anyio.create_task_group() as tg:
                for user in users:
                    for _ in range(4):  # four concurrent callers per user
                        tg.start_soon(calls, user)

    anyio.run(run)
    for user, texts in answers.items():
        assert users[user].logins == 1
        assert len(texts) == 60
        for text in texts:
            assert_backend_identity(ms, text, user)
        assert_never_reached_server(ms, users[user].storage.tokens.access_token)


# --- mcp-remote ---------------------------------------------------------------


class McpRemote:
    """mcp-remote as an MCP host runs it: a child process spoken to over stdio
    (newline-delimited JSON-RPC). Its home and config dir are `home`; its
    browser is a script that writes the URL it is given to a file."""

    def __init__(self, cleanup, resource, home, callback_port):
        home.mkdir(parents=True, exist_ok=True)
        self.opened = home / "opened-url"
        browser = home / "browser.sh"
        browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{self.opened}.tmp" && mv "{self.opened}.tmp" "{self.opened}"\n')
        browser.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP")}
        env.update({"HOME": str(home), "MCP_REMOTE_CONFIG_DIR": str(home / "mcp-auth"), "BROWSER": str(browser)})
        self.stderr_log = home / "stderr.log"
        self._stderr = open(self.stderr_log, "wb")
        cmd = ["node", str(MCP_DIR / "node_modules" / "mcp-remote" / "dist" / "proxy.js"),
               resource, str(callback_port), "--transport", "http-only", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, cwd=home)
        cleanup.add(self)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 0

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def stop(self):
        stop_process(self.proc)
        self._stderr.close()

    def stderr(self):
        return self.stderr_log.read_text(errors="replace")

    def send(self, message):
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method, params, timeout=60):
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            assert msg is not None, f"mcp-remote exited; stderr:\n{self.stderr()}"
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
        raise AssertionError(f"no answer to {method} in {timeout}s; stderr:\n{self.stderr()}")

    def wait_opened(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.opened.exists():
                return self.opened.read_text()
            assert self.proc.poll() is None, f"mcp-remote exited; stderr:\n{self.stderr()}"
            time.sleep(0.1)
        raise AssertionError(f"mcp-remote opened no browser in {timeout}s; stderr:\n{self.stderr()}")


def test_mcp_remote_headless(ms, tmp_path):
    cleanup = Cleanup()
    try:
        callback_port = free_port()
        remote = McpRemote(cleanup, ms.resource, tmp_path / "home", callback_port)
        authorization_url = remote.wait_opened()
        redirect = login(authorization_url, "erin")
        parts = urllib.parse.urlsplit(redirect)
        assert (parts.hostname, parts.port) == ("127.0.0.1", callback_port), redirect
        assert "code=" in parts.query, redirect
        # The browser following the IdP's redirect to mcp-remote's callback.
        with urllib.request.urlopen(redirect, timeout=30) as resp:
            assert resp.status == 200
        init = remote.request("initialize", {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "pytest", "version": "1"},
        })
        assert init["serverInfo"]["name"] == "token-exchange-test"
        remote.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        result = remote.request("tools/call", {"name": "whoami", "arguments": {}})
        assert not result.get("isError"), result
        assert_backend_identity(ms, result["content"][0]["text"], "erin")
        stored = list(Path(tmp_path / "home" / "mcp-auth").rglob("*_tokens.json"))
        assert stored, "mcp-remote keeps its tokens in MCP_REMOTE_CONFIG_DIR"
        token = json.loads(stored[0].read_text())["access_token"]
        assert decode_part(token, 1)["aud"] == MCP_AUDIENCE
        assert_never_reached_server(ms, token)
    finally:
        cleanup.close()


# --- the GET event stream ---------------------------------------------------


class EventStream:
    """The session's GET stream (Accept: text/event-stream), read in a thread:
    each `data:` line's JSON goes to `events`; `ended` is set when the
    response ends or breaks."""

    def __init__(self, port, headers):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", "/mcp", headers={**headers, "accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        self.events = queue.Queue()
        self.ended = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    self.events.put(json.loads(line[5:]))
        except (OSError, http.client.HTTPException):
            pass
        finally:
            self.ended.set()

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end
        self._reader.join(5)
        self.conn.close()


def post(port, headers, message):
    """One JSON-RPC message POSTed; the answer's JSON-RPC messages (SSE or JSON)."""
    status, h, body = call(port, "/mcp", method="POST",
                           headers={**headers, "content-type": "application/json",
                                    "accept": "application/json, text/event-stream"},
                           body=json.dumps(message))
    assert status in (200, 202), (status, body)
    if h.get("content-type", "").startswith("text/event-stream"):
        return h, [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    return h, [json.loads(body)] if body.strip() else []


def test_event_stream_stays_open_past_30s(ms):
    token = ms.token()
    headers = {"authorization": f"Bearer {token}"}
    h, [init] = post(ms.envoy_port, headers, {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "pytest", "version": "1"}}})
    headers["mcp-session-id"] = h["mcp-session-id"]
    headers["mcp-protocol-version"] = init["result"]["protocolVersion"]
    post(ms.envoy_port, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})

    stream = EventStream(ms.envoy_port, headers)
    try:
        assert stream.resp.status == 200
        assert stream.resp.getheader("content-type").startswith("text/event-stream")
        # Past Envoy's default 15 s route timeout, twice over.
        assert not stream.ended.wait(35), "Envoy closed the event stream"
        _, answers = post(ms.envoy_port, headers, {
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "ping", "arguments": {"notify": True}}})
        assert answers[-1]["result"]["content"][0]["text"] == "pong"
        event = stream.events.get(timeout=10)
        assert event["method"] == "notifications/message"
        assert event["params"]["data"] == "notified"
        assert not stream.ended.is_set()
    finally:
        stream.close()
