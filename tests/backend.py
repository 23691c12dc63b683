"""Echo backend for the demo and the integration tests.

Answers every request with JSON describing what reached it: method, path,
headers, and the claims of the bearer token it was given. GET /_requests
returns how many requests it has served, so a test can prove the upstream was
never reached.

With BACKEND_JWKS_URL, BACKEND_ISSUER and BACKEND_AUDIENCE set, it behaves
like a real API behind the gateway: it verifies the bearer token (RS256
signature against that JWKS, iss, aud, exp), answers 401 if it does not
verify, and prints one line per request with the token's iss, aud, sub and
scope.

Usage: backend.py PORT
"""

import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWKS_URL = os.environ.get("BACKEND_JWKS_URL")
ISSUER = os.environ.get("BACKEND_ISSUER")
# One audience, or several separated by commas (any of them is accepted).
AUDIENCE = os.environ.get("BACKEND_AUDIENCE", "").split(",")
_jwks = None
if JWKS_URL:
    import jwt  # PyJWT, from tests/requirements.txt

    _jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=True)


def verify(authorization):
    """Verified claims, or an error string."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None, "no bearer token"
    token = authorization.split(" ", 1)[1].strip()
    try:
        key = _jwks.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER), None
    except Exception as e:  # any failure is a 401, as a real API would answer
        return None, f"{type(e).__name__}: {e}"

_count = 0
_lock = threading.Lock()
# With BACKEND_MARKER_HEADER (load tests): every verified request must carry
# that header equal to its token's sub; /_requests reports the mismatches.
MARKER = os.environ.get("BACKEND_MARKER_HEADER")
_mismatches = 0


def claims(authorization):
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    try:
        payload = authorization.split(" ", 1)[1].strip().split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        global _count
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        status = 200
        global _mismatches
        if self.path == "/_requests":
            body = {"requests": _count, "mismatches": _mismatches}
        elif _jwks is not None:
            with _lock:
                _count += 1
            claims_, error = verify(self.headers.get("authorization"))
            if error:
                status, body = 401, {
                    "error": "invalid_token",
                    "detail": error,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                }
                print(f"backend: rejected: {error}", flush=True)
            else:
                if MARKER and self.headers.get(MARKER) != claims_.get("sub"):
                    with _lock:
                        _mismatches += 1
                    print(f"backend: MISMATCH marker={self.headers.get(MARKER)!r} sub={claims_.get('sub')!r}",
                          flush=True)
                body = {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "verified_claims": claims_,
                }
                print("backend: verified token " + " ".join(
                    f"{k}={claims_.get(k)}" for k in ("iss", "aud", "sub", "scope")), flush=True)
        else:
            with _lock:
                _count += 1
            body = {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "token_claims": claims(self.headers.get("authorization")),
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _answer

    def log_message(self, fmt, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when Envoy opens dozens at once.
    request_queue_size = 256


if __name__ == "__main__":
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)
    print(f"backend listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
