"""Echo backend for the demo and the integration tests.

Answers every request with JSON describing what reached it: method, path,
headers, and the claims of the bearer token it was given. GET /_requests
returns how many requests it has served, so a test can prove the upstream was
never reached.

With BACKEND_JWKS_URL, BACKEND_ISSUER and BACKEND_AUDIENCE set, it behaves
like a real API behind the gateway: it verifies the bearer token (RS256
signature against that JWKS, iss, aud, exp), answers 401 if it does not
verify, and prints one line per request with the token's iss, aud, sub and
scope. With BACKEND_ACT_SUB too, the token must also name that actor
(`act.sub`, RFC 8693 §4.1): the party the exchange was made by.

Usage: backend.py PORT
"""

import base64
import json
import os
import sys
import threading

from httpd import HttpServer, json_answer  # tests/httpd.py

JWKS_URL = os.environ.get("BACKEND_JWKS_URL")
ISSUER = os.environ.get("BACKEND_ISSUER")
# One audience, or several separated by commas (any of them is accepted).
AUDIENCE = os.environ.get("BACKEND_AUDIENCE", "").split(",")
_jwks = None
if JWKS_URL:
    import jwt  # PyJWT, from tests/requirements.txt

    _jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=True)


ACT_SUB = os.environ.get("BACKEND_ACT_SUB")


def verify(authorization):
    """Verified claims, or an error string."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None, "no bearer token"
    token = authorization.split(" ", 1)[1].strip()
    try:
        key = _jwks.get_signing_key_from_jwt(token)
        claims_ = jwt.decode(token, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    except Exception as e:  # any failure is a 401, as a real API would answer
        return None, f"{type(e).__name__}: {e}"
    if ACT_SUB and (claims_.get("act") or {}).get("sub") != ACT_SUB:
        return None, f"act {claims_.get('act')!r} does not name {ACT_SUB}"
    return claims_, None

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


def answer(req):
    global _count, _mismatches
    headers = [[k.lower(), v] for k, v in req.headers.items()]
    if req.path == "/_requests":
        return json_answer({"requests": _count, "mismatches": _mismatches})
    with _lock:
        _count += 1
    if _jwks is None:
        return json_answer({
            "method": req.method,
            "path": req.path,
            "headers": headers,
            "token_claims": claims(req.headers.get("authorization")),
        })
    claims_, error = verify(req.headers.get("authorization"))
    if error:
        print(f"backend: rejected: {error}", flush=True)
        return json_answer({"error": "invalid_token", "detail": error, "headers": headers}, 401)
    if MARKER and req.headers.get(MARKER) != claims_.get("sub"):
        with _lock:
            _mismatches += 1
        print(f"backend: MISMATCH marker={req.headers.get(MARKER)!r} sub={claims_.get('sub')!r}", flush=True)
    print("backend: verified token " + " ".join(
        f"{k}={claims_.get(k)}" for k in ("iss", "aud", "sub", "scope")), flush=True)
    return json_answer({"method": req.method, "path": req.path, "headers": headers, "verified_claims": claims_})


if __name__ == "__main__":
    port = int(sys.argv[1])
    # A backlog of 256: Envoy opens dozens of connections at once.
    server = HttpServer(answer, port=port, backlog=256)
    print(f"backend listening on 127.0.0.1:{port}", flush=True)
    server.join()
