"""Issue 10, browsers: a real browser (headless Chromium, Debian's `chromium`)
reads the filter's challenge cross-origin.

A page (tests/browser/cors.html) is served from one origin (a file server
in this process) and calls the MCP endpoint, Envoy with the filter, at another. Its
POST with content-type application/json is not a "simple" request, so
Chromium sends a CORS preflight first. The filter lets preflights through
(they carry no credentials) and the upstream answers them, as an MCP server
with CORS enabled does; here the upstream is a small server in this process
that allows every origin, so whatever a page may not read is the filter's
doing. The filter's own 401 carries Access-Control-Allow-Origin and
Access-Control-Expose-Headers: WWW-Authenticate for the origins in
`cors.allowedOrigins`: only then can the page read the challenge, find
`resource_metadata` in it, and fetch the RFC 9728 document (which any origin
may read).

Chromium runs with --headless=new --dump-dom and a virtual time budget: the
page writes what it saw into <pre id="result"> and the test reads the DOM.
"""

import html
import json
import re
import shutil
import subprocess
from urllib.parse import quote

import pytest

from constants import MCP_SCOPE
from harness import ROOT
from httpd import HttpServer, files, json_answer
from stacks import Stack

PAGES = ROOT / "tests" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class CorsUpstream(HttpServer):
    """The MCP server's stand-in: answers preflights for any origin (echoing
    the origin, methods and headers asked for) and POSTs with JSON saying
    what arrived, readable by that origin. Records every request."""

    def __init__(self):
        self.seen = []
        super().__init__(self.answer)

    def answer(self, req):
        origin = req.headers.get("origin")
        cors = {"access-control-allow-origin": origin, "vary": "Origin"} if origin else {}
        if req.method == "OPTIONS":
            asked = req.headers.get("access-control-request-headers")
            self.seen.append({"method": "OPTIONS", "origin": origin, "request_headers": asked})
            headers = {**cors, "access-control-allow-methods": "GET, POST, DELETE"}
            if asked:
                headers["access-control-allow-headers"] = asked
            return 204, {**headers, "access-control-max-age": "0"}, b""
        if req.method != "POST":
            return 501, {}, b""
        auth = req.headers.get("authorization")
        self.seen.append({"method": "POST", "origin": origin, "authorization": auth})
        return json_answer({"upstream": "reached", "bearer": bool(auth and auth.startswith("Bearer "))},
                           headers=cors)


class PageServer(HttpServer):
    """tests/browser/ served from origin http://127.0.0.1:<port>."""

    def __init__(self):
        super().__init__(files(PAGES))

    def url(self, page, **query):
        return f"{self.origin}/{page}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())


class BrowserStack(Stack):
    """The validation stack, its upstream the CORS stand-in, with two page
    origins of which `cors.allowedOrigins` names one."""

    def __init__(self, cleanup):
        assert shutil.which(CHROMIUM), "no chromium: run tests/bootstrap.sh --browser"
        self.allowed = cleanup.add(PageServer())
        self.other = cleanup.add(PageServer())  # same host, another port: another origin
        self.upstream = cleanup.add(CorsUpstream())
        super().__init__(cleanup, upstream=self.upstream.port,
                         sections={"cors": {"allowedOrigins": [self.allowed.origin]}})


@pytest.fixture(scope="module")
def bs(module_cleanup):
    return BrowserStack(module_cleanup)


def chromium_dom(url, profile):
    """The page's DOM after its scripts ran, from headless Chromium."""
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", f"--user-data-dir={profile}",
           # Virtual time runs ahead only while nothing is pending, so the
           # page's fetches finish first; 20 s of it is an upper bound.
           "--virtual-time-budget=20000", "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, f"chromium exited with {out.returncode}:\n{out.stderr[-3000:]}"
    return out.stdout


def page_result(url, profile):
    dom = chromium_dom(url, profile)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert title and title.group(1) == "done", f"the page did not finish:\n{dom[:3000]}"
    return json.loads(html.unescape(found.group(1)))


def test_an_allowed_origin_reads_the_challenge_and_the_metadata(bs, tmp_path):
    before = len(bs.upstream.seen)
    got = page_result(bs.allowed.url("cors.html", mcp=bs.resource), tmp_path / "profile")

    assert got["origin"] == bs.allowed.origin
    assert got["status"] == 401, got
    challenge = got["www_authenticate"]
    assert challenge and challenge.startswith("Bearer "), got
    assert f'scope="{MCP_SCOPE}"' in challenge
    metadata_url = f"http://127.0.0.1:{bs.envoy_port}/.well-known/oauth-protected-resource/mcp"
    assert got["resource_metadata"] == metadata_url
    assert got["metadata_status"] == 200
    assert got["metadata"]["resource"] == bs.resource
    assert got["metadata"]["authorization_servers"] == [bs.mcp_as.issuer]
    # The preflight went through the filter to the upstream, which answered
    # it; the POST itself never got past the filter.
    new = bs.upstream.seen[before:]
    assert [r["method"] for r in new] == ["OPTIONS"], new
    assert new[0]["origin"] == bs.allowed.origin
    assert "content-type" in new[0]["request_headers"]


def test_an_allowed_origin_calls_with_a_token(bs, tmp_path):
    before = len(bs.upstream.seen)
    got = page_result(bs.allowed.url("cors.html", mcp=bs.resource, token=bs.token()), tmp_path / "profile")
    assert got["status"] == 401 and got["resource_metadata"], got
    assert got["authorized_status"] == 200, got
    assert got["authorized_body"] == {"upstream": "reached", "bearer": True}
    new = bs.upstream.seen[before:]
    # Two preflights (without, then with the authorization header), one POST.
    assert [r["method"] for r in new] == ["OPTIONS", "OPTIONS", "POST"], new
    assert "authorization" in new[1]["request_headers"]


def test_another_origin_cannot_read_the_challenge(bs, tmp_path):
    before = len(bs.upstream.seen)
    got = page_result(bs.other.url("cors.html", mcp=bs.resource), tmp_path / "profile")
    assert got["origin"] == bs.other.origin
    # The upstream allowed the preflight (it allows any origin), but the
    # filter's 401 names no origin for this page: the browser withholds the
    # whole response and the fetch rejects.
    assert [r["method"] for r in bs.upstream.seen[before:]] == ["OPTIONS"]
    assert "challenge_error" in got, got
    assert "TypeError" in got["challenge_error"]
    assert "www_authenticate" not in got and "resource_metadata" not in got
