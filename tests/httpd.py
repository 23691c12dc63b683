"""A small HTTP/1.1 server on 127.0.0.1 (standard library only): the echo
backend (tests/backend.py) and every stand-in the tests run in their own
process (the token-endpoint failures, the Google and Entra stand-ins, an
upstream that records, a metadata server, a module server) are one of these
with their own `answer`.

`answer(request)` gets a `Request` (method, path, headers, body: the body is
read already, chunked or not) and returns (status, headers, body bytes), or
None to close the connection without answering. Content-Length is set here.
"""

import json
import mimetypes
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: object  # the handler's message: get() ignores case, items() keeps the order
    body: bytes


def json_answer(doc, status=200, headers=None):
    """An `answer` result carrying `doc` as JSON."""
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(doc).encode()


def files(directory):
    """An `answer` serving the files directly in `directory` to GET (the
    query ignored), typed by their names."""
    root = Path(directory)

    def answer(req):
        name = urllib.parse.unquote(urllib.parse.urlsplit(req.path).path).lstrip("/")
        if req.method != "GET" or "/" in name or not (root / name).is_file():
            return 404, {"content-type": "text/plain"}, b"not found"
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return 200, {"content-type": ctype}, (root / name).read_bytes()

    return answer


def read_body(handler):
    """The request body, framed by Content-Length or chunked."""
    if "chunked" in (handler.headers.get("transfer-encoding") or "").lower():
        raw = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return raw
            raw += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("content-length") or 0))


class HttpServer:
    """Serves `answer` on 127.0.0.1:`port` (0: any free port, see `.port`) in a
    daemon thread, one thread per connection. `backlog`: the listen queue (the
    default of 5 drops connections when Envoy opens dozens at once)."""

    def __init__(self, answer, port=0, backlog=5):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                reply = answer(Request(self.command, self.path, self.headers, read_body(self)))
                if reply is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, body = reply
                self.send_response(status)
                for k, v in (headers.items() if isinstance(headers, dict) else headers):
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_any

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = backlog

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def join(self):
        """Serves until the process ends."""
        self._thread.join()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
