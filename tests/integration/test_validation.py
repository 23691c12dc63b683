"""Issue 2: the caller's JWT is validated in real Envoy against a real IdP."""

import json
import time

from constants import CLIENT, MCP_AUDIENCE, MCP_SCOPE, SECRET
from harness import (
    IdP,
    call,
    decode_part,
    forge_hs256_with_public_key,
    forge_none,
    public_pem,
    tamper_signature,
)
from stacks import Stack, clients_for


def assert_rejected(stack, status, token, *, error=None, description=None):
    before = stack.backend.requests()
    code, headers, body = stack.envoy.get(token=token)
    assert code == status, body
    challenge = headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), headers
    assert f'resource_metadata="http://127.0.0.1:{stack.envoy_port}/.well-known/oauth-protected-resource/mcp"' in challenge
    doc = json.loads(body)
    if error:
        assert f'error="{error}"' in challenge
        assert doc["error"] == error
    if description:
        assert doc["error_description"] == description
        if error:
            assert f'error_description="{description}"' in challenge
    if token:
        assert token not in body and token[-20:] not in body, "the token is never echoed"
    assert stack.backend.requests() == before, "a rejected request never reaches the upstream"
    return challenge


def test_good_token_reaches_the_backend(stack):
    token = stack.token()
    code, _, body = stack.envoy.get(token=token)
    assert code == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/mcp"
    auth = [v for k, v in seen["headers"] if k == "authorization"]
    assert auth == [f"Bearer {token}"], "validation only: the token passes unchanged"
    assert seen["token_claims"]["aud"] == MCP_AUDIENCE
    # The scheme is case-insensitive.
    code, _, _ = stack.envoy.get(headers={"authorization": f"bearer {token}"})
    assert code == 200


def test_missing_token_gets_a_plain_challenge(stack):
    challenge = assert_rejected(stack, 401, None, description="missing bearer token")
    assert "error=" not in challenge, "RFC 6750 §3.1: no error code without credentials"
    assert f'scope="{MCP_SCOPE}"' in challenge


def test_expired_token(stack):
    token = stack.token(resource="urn:test:short")
    assert stack.envoy.get(token=token)[0] == 200
    exp = decode_part(token, 1)["exp"]
    # Past exp plus the configured 1 s skew.
    time.sleep(max(0.0, exp + 2 - time.time()))
    assert_rejected(stack, 401, token, error="invalid_token", description="token expired")


def test_wrong_issuer(stack, cleanup):
    # Another authorization server with the very same signing key: the signature
    # verifies, the issuer must not.
    rogue = IdP(cleanup, "rogue-as", keys=stack.mcp_as.keys, resources=stack.mcp_as.resources,
                clients=clients_for(CLIENT)).start()
    token = rogue.token(CLIENT, SECRET, stack.resource, MCP_SCOPE)
    assert decode_part(token, 0)["kid"] == decode_part(stack.token(), 0)["kid"]
    assert_rejected(stack, 401, token, error="invalid_token", description="issuer not accepted")


def test_wrong_audience(stack):
    token = stack.token(resource="urn:test:other")
    assert decode_part(token, 1)["aud"] == "some-other-api"
    assert_rejected(stack, 401, token, error="invalid_token", description="audience not accepted")


def test_bad_signature(stack):
    assert_rejected(stack, 401, tamper_signature(stack.token()), error="invalid_token",
                    description="invalid signature")


def test_alg_none(stack):
    assert_rejected(stack, 401, forge_none(stack.token()), error="invalid_token",
                    description="unsupported signing algorithm")


def test_hs256_signed_with_the_rsa_public_key(stack):
    token = stack.token()
    kid = decode_part(token, 0)["kid"]
    jwk = next(k for k in stack.mcp_as.jwks()["keys"] if k["kid"] == kid)
    for secret in (public_pem(jwk), json.dumps(jwk)):
        forged = forge_hs256_with_public_key(token, secret)
        assert_rejected(stack, 401, forged, error="invalid_token", description="unsupported signing algorithm")


def test_missing_scope(stack):
    token = stack.token(scope="openid")
    assert MCP_SCOPE not in (decode_part(token, 1).get("scope") or "")
    challenge = assert_rejected(stack, 403, token, error="insufficient_scope")
    assert f'scope="{MCP_SCOPE}"' in challenge


def test_malformed_and_repeated_authorization(stack):
    assert_rejected(stack, 401, "not-a-jwt", error="invalid_token", description="malformed token")
    before = stack.backend.requests()
    token = stack.token()
    code, headers, _ = call(stack.envoy_port, "/mcp",
                            header_list=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")])
    assert code == 400
    assert 'error="invalid_request"' in headers["www-authenticate"]
    assert stack.backend.requests() == before


def test_non_utf8_authorization_is_refused_without_a_crash(stack):
    """Envoy lets obs-text bytes (0x80-0xff) through in header values. They
    must get a 400, not a trap: a trapped VM stops the filter for its worker."""
    before = stack.backend.requests()
    for _ in range(6):
        code, headers, _ = call(stack.envoy_port, "/mcp", header_list=[("authorization", "Bearer abc\xff\xfe")])
        assert code == 400
        assert 'error="invalid_request"' in headers["www-authenticate"]
    assert stack.backend.requests() == before
    for _ in range(6):
        assert stack.envoy.get(token=stack.token())[0] == 200
    assert "panicked" not in stack.envoy.proc.text()


def test_token_in_query_string_is_ignored(stack):
    code, _, _ = call(stack.envoy_port, f"/mcp?access_token={stack.token()}")
    assert code == 401


def test_metadata_endpoint(stack):
    path = "/.well-known/oauth-protected-resource/mcp"
    before = stack.backend.requests()
    code, headers, body = call(stack.envoy_port, path)
    assert code == 200
    assert headers["content-type"] == "application/json"
    assert headers["access-control-allow-origin"] == "*"
    assert json.loads(body) == {
        "resource": stack.resource,
        "authorization_servers": [stack.mcp_as.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": [MCP_SCOPE],
    }
    code, headers, _ = call(stack.envoy_port, path, method="OPTIONS",
                            headers={"origin": "http://x", "access-control-request-method": "GET"})
    assert code == 204
    assert "GET" in headers["access-control-allow-methods"]
    assert stack.backend.requests() == before


def test_key_rotation_to_an_unseen_kid(cleanup):
    s = Stack(cleanup)
    old = s.token()
    assert s.envoy.get(token=old)[0] == 200
    s.mcp_as.restart(rotate=True)
    new = s.token()
    assert decode_part(new, 0)["kid"] != decode_part(old, 0)["kid"]
    # A kid refetch is allowed once the keys are 5 s old.
    time.sleep(5.5)
    code, _, body = s.envoy.get(token=new)
    assert code == 200, body
    assert s.envoy.get(token=old)[0] == 200, "the old key is still published"


def test_idp_down_at_start_then_recovery(cleanup):
    # Mint a token, then take the IdP down before this Envoy starts.
    probe = Stack(cleanup)
    token = probe.token()
    probe.mcp_as.stop()
    s = Stack(cleanup, mcp_as=probe.mcp_as)
    code, headers, body = s.envoy.get(token=token)
    assert code == 503, body
    assert headers.get("retry-after")
    assert json.loads(body)["error"] == "temporarily_unavailable"
    assert s.backend.requests() == 0
    # The IdP comes up; the filter recovers without a restart.
    probe.mcp_as.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, _, body = s.envoy.get(token=token)
        if code == 200:
            break
        assert code == 503, body
        time.sleep(0.5)
    assert code == 200, body


def test_bad_config_fails_closed_naming_the_field(cleanup):
    from harness import Envoy

    bad = {"oidc": {"issuer": "http://127.0.0.1:1", "audience": MCP_AUDIENCE, "jwksUrl": "keys"}}
    envoy = Envoy(cleanup, 1, bad, {})
    try:
        envoy.proc.proc.wait(timeout=20)
    except Exception:
        raise AssertionError("Envoy kept running with a bad filter config")
    assert envoy.proc.proc.returncode != 0
    lines = [l for l in envoy.proc.text().splitlines() if "invalid configuration" in l]
    assert len(lines) == 1, lines
    assert 'oidc.jwksUrl: must be an absolute http(s) URL, got "keys"' in lines[0]


def test_concurrent_requests_wait_for_slow_keys(cleanup):
    """Requests on both workers arrive before the (slow) JWKS does: all wait,
    one fetch serves them, and each is resumed, whichever context got the answer."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    s = Stack(cleanup, jwks_delay_ms=2500)
    token = s.token()
    # A client that gives up while waiting must not disturb the others.
    quitter = socket.create_connection(("127.0.0.1", s.envoy_port))
    quitter.sendall(f"GET /mcp HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode())
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(s.envoy.get, token=token) for _ in range(20)]
        quitter.close()
        codes = [f.result()[0] for f in futures]
    assert codes == [200] * 20
    assert s.backend.requests() == 20
    log = s.envoy.proc.text()
    assert "panicked" not in log and "re-entrant" not in log
    assert token not in log, "tokens are never logged"
