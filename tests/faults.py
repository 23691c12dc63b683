"""A fault-injecting HTTP/1.1 proxy for the integration tests (stdlib only).

One `FaultProxy` listens on one port of 127.0.0.1 and forwards every request
to one upstream port (the real IdP), misbehaving as its current `mode` says.
It listens again on that port after `refused`, so the port it is given must
be one no outbound connection takes meanwhile (harness.free_port).
The mode can be changed at any time, including back to `pass`, so a test can
show that the filter recovers by itself.

Modes (the answer to each request received while the mode is set):

    pass        the upstream's answer, unchanged
    refused     nothing listens on the port: connections are refused (set
                this and the listening socket and every open connection are
                closed; any other mode listens again on the same port)
    delay       the upstream's answer, after `delay` seconds
    500, 503    that status, with a short body; the upstream is not asked
    html        200 with an HTML page (a login page or captive portal)
    truncated   the first half of the upstream's body, framed as complete
                (Content-Length of that half): invalid JSON, valid HTTP
    huge        the upstream's JSON object with a 2 MiB string member added
    wrong-type  the upstream's body unchanged, with `Content-Type: text/plain`
    reset       headers announcing the whole body, half of it, then a TCP RST
    replay      the last answer this proxy passed through for that path,
                without asking the upstream (a stale copy: an IdP cache or
                CDN that has not seen a key rotation yet)
    expires=X   the upstream's JSON object with `expires_in` replaced by the
                JSON text X (token endpoint only: `expires=0`, `expires=-1`,
                `expires=2.5`, `expires="soon"`)

`hits` counts requests received (per mode in `by_mode`).
"""

import http.client
import json
import socket
import struct
import threading
import time

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}
HUGE_BYTES = 2 * 1024 * 1024
HTML = (b"<!doctype html><html><head><title>Sign in</title></head>"
        b"<body><form method=post><input name=user></form></body></html>")


class FaultProxy:
    def __init__(self, upstream_port, port, mode="pass", delay=0.0, name="fault"):
        self.name = name
        self.upstream_port = upstream_port
        self.mode = mode
        self.delay = delay
        self.hits = 0
        self.by_mode = {}
        self._lock = threading.Lock()
        self._conns = set()
        self._listener = None
        self._closed = False
        self._last = {}
        self.port = port
        self._listen()
        if mode == "refused":
            self._unlisten()

    # -- control ----------------------------------------------------------

    def set(self, mode, delay=None):
        """Switches to `mode` (and `delay`, for `delay`)."""
        with self._lock:
            self.mode = mode
            if delay is not None:
                self.delay = delay
        if mode == "refused":
            self._unlisten()
        elif self._listener is None and not self._closed:
            self._listen()

    def close(self):
        self._closed = True
        self._unlisten()

    stop = close

    # -- sockets ----------------------------------------------------------

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(512)
        s.settimeout(0.1)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True, name=f"{self.name}-accept").start()

    def _unlisten(self):
        s, self._listener = self._listener, None
        if s is not None:
            s.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            _abort(c)

    def _accept(self, s):
        while self._listener is s:
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True, name=f"{self.name}-conn").start()

    def _serve(self, c):
        reader = c.makefile("rb")
        try:
            while True:
                req = _read_request(reader)
                if req is None:
                    return
                with self._lock:
                    mode, delay = self.mode, self.delay
                    self.hits += 1
                    self.by_mode[mode] = self.by_mode.get(mode, 0) + 1
                if not self._answer(c, mode, delay, *req):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(c)
            try:
                reader.close()
                c.close()
            except OSError:
                pass

    # -- answers ----------------------------------------------------------

    def _answer(self, c, mode, delay, method, path, headers, body):
        """Answers one request; False when the connection is done."""
        if mode == "refused":
            # Arrived on a connection accepted just before the switch.
            _abort(c)
            return False
        if mode == "500":
            return _send(c, 500, [("content-type", "application/json")], b'{"error":"server_error"}')
        if mode == "503":
            return _send(c, 503, [("content-type", "text/plain"), ("retry-after", "1")], b"overloaded")
        if mode == "html":
            return _send(c, 200, [("content-type", "text/html; charset=utf-8")], HTML)
        if mode == "delay":
            time.sleep(delay)
        if mode == "replay" and path in self._last:
            status, up_headers, up_body = self._last[path]
        else:
            status, up_headers, up_body = self._forward(method, path, headers, body)
        if mode in ("pass", "delay"):
            self._last[path] = (status, up_headers, up_body)
        ctype = [(k, v) for k, v in up_headers if k == "content-type"] or [("content-type", "application/json")]
        keep = [(k, v) for k, v in up_headers if k not in HOP_BY_HOP]
        if mode in ("pass", "delay", "replay"):
            return _send(c, status, keep, up_body)
        if mode == "wrong-type":
            return _send(c, status, [(k, v) for k, v in keep if k != "content-type"]
                         + [("content-type", "text/plain")], up_body)
        if mode == "truncated":
            return _send(c, status, ctype, up_body[: max(1, len(up_body) // 2)])
        if mode == "huge":
            doc = json.loads(up_body)
            doc["padding"] = "x" * HUGE_BYTES
            return _send(c, status, ctype, json.dumps(doc).encode())
        if mode.startswith("expires="):
            doc = json.loads(up_body)
            doc["expires_in"] = "@EXPIRES@"
            text = json.dumps(doc).replace('"@EXPIRES@"', mode.split("=", 1)[1])
            return _send(c, status, ctype, text.encode())
        if mode == "reset":
            head = _head(status, ctype + [("content-length", str(len(up_body)))])
            c.sendall(head + up_body[: len(up_body) // 2])
            time.sleep(0.05)
            _abort(c)
            return False
        raise ValueError(f"unknown fault mode {mode!r}")

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k not in HOP_BY_HOP:
                    conn.putheader(k, v)
            conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, [(k.lower(), v) for k, v in resp.getheaders()], resp.read()
        finally:
            conn.close()


def _read_request(reader):
    line = reader.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while True:
        h = reader.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers.append((k.strip().lower(), v.strip()))
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = reader.read(length) if length else b""
    return method, path, headers, body


def _head(status, headers):
    reason = http.client.responses.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send(c, status, headers, body):
    c.sendall(_head(status, headers + [("content-length", str(len(body)))]) + body)
    return True


def _abort(c):
    """Closes with a TCP RST rather than a FIN."""
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        c.close()
    except OSError:
        pass
