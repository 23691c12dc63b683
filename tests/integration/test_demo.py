"""The README's demo command works (envoy-local/run.sh --check), and the demo
holds up as a daily tool: stopped and started again, it still knows the
clients that registered with it, so mcp-remote carries on from its cache
(refreshing its token, or logging in again with its registration); --reset
starts clean; and no tool result, nor anything the demo prints, carries a
token."""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

from harness import ROOT, free_port
from login import login

RUN = ROOT / "envoy-local" / "run.sh"
DEMO_MCP = "http://127.0.0.1:8080/mcp"
STORE = ROOT / "tests" / ".work" / "demo" / "mcp-as-state" / "store.json"
MCP_REMOTE_CLIENT = ROOT / "tests" / "mcp" / "node_modules" / "mcp-remote" / "dist" / "client.js"
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*")


def test_demo_script_runs_end_to_end():
    out = subprocess.run([str(RUN), "--check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo check passed" in out.stdout
    assert "HTTP/1.1 401" in out.stdout
    assert "'aud': 'mcpserver'" in out.stdout
    assert not JWT.search(out.stdout), "the demo prints claims, never a token"


def interruptible():
    """Ctrl-C reaches the demo as in a terminal: a runner that starts the
    tests in the background (a non-interactive shell's `&`) hands them
    SIGINT ignored, and a shell started with a signal ignored cannot trap
    it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """envoy-local/run.sh running until stopped, as a person runs it."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([str(RUN), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, preexec_fn=interruptible)
        self.output = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("Running."):
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(timeout=300)
        assert self.proc.poll() is None and "".join(self.output).count("Running."), "".join(self.output)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C: the script stops what it started
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        assert not JWT.search("".join(self.output)), "the demo prints claims, never a token"


class McpRemote:
    """mcp-remote's one-shot client (connect, log in if it must, list the
    tools), with its cache in `home`; its "browser" hands the URL it is told
    to open to a person at the login page (login.py). One callback port for
    all its runs, as mcp-remote picks by default: it drops a cached
    registration whose redirect URI names another port."""

    def __init__(self, home, user):
        self.home, self.user = home, user
        self.cache = home / "mcp-auth"
        self.callback_port = free_port()
        home.mkdir(parents=True, exist_ok=True)

    def files(self, suffix):
        return list(self.cache.rglob(f"*_{suffix}"))

    def client_id(self):
        (info,) = self.files("client_info.json")
        return json.loads(info.read_text())["client_id"]

    def run(self):
        """Returns (mcp-remote's output, whether it opened the login page)."""
        opened = self.home / "opened-url"
        opened.unlink(missing_ok=True)
        browser = self.home / "browser.sh"
        browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{opened}.tmp" && mv "{opened}.tmp" "{opened}"\n')
        browser.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update({"HOME": str(self.home), "MCP_REMOTE_CONFIG_DIR": str(self.cache), "BROWSER": str(browser)})
        # stdin stays open until it is done: mcp-remote stops when its stdin ends.
        proc = subprocess.Popen(["node", str(MCP_REMOTE_CLIENT), DEMO_MCP, str(self.callback_port), "--host", "127.0.0.1"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=self.home)
        lines = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        deadline, logged_in = time.monotonic() + 60, False
        while proc.poll() is None and time.monotonic() < deadline and not any("Exiting OK" in x for x in lines):
            if opened.exists() and not logged_in:
                redirect = login(opened.read_text(), self.user)
                with urllib.request.urlopen(redirect, timeout=30) as resp:  # the browser, back at mcp-remote
                    assert resp.status == 200
                logged_in = True
            time.sleep(0.1)
        proc.stdin.close()
        proc.wait(timeout=30)
        out = "".join(lines)
        assert proc.returncode == 0, out
        assert "Connected successfully" in out and '"whoami"' in out, out
        return out, opened.exists()


def test_demo_restarted_keeps_what_clients_cached(tmp_path):
    remote = McpRemote(tmp_path / "home", "frank")
    with Demo("--reset"):
        _, logged_in = remote.run()
        assert logged_in, "a new client logs in"
        client_id = remote.client_id()
        assert client_id in STORE.read_text(), "the registration is kept on disk"

    with Demo():
        # Its access token looks expired: mcp-remote refreshes it with its
        # cached registration and refresh token, no login page.
        (tokens,) = remote.files("tokens.json")
        before = json.loads(tokens.read_text())
        tokens.write_text(json.dumps({**before, "expires_at": 1}))
        _, logged_in = remote.run()
        assert not logged_in, "refreshed without a login"
        assert json.loads(tokens.read_text())["access_token"] != before["access_token"]
        # No tokens at all: it logs in again as the client it registered as
        # (before, the demo answered invalid_client here).
        tokens.unlink()
        _, logged_in = remote.run()
        assert logged_in and remote.client_id() == client_id

    with Demo("--reset"):
        assert not STORE.exists() or client_id not in STORE.read_text(), "--reset forgets registrations"
