"""Issue 11: nothing secret in any log line the filter writes.

Runs last (file order): it scans every line the wasm module wrote in every
Envoy this test session started (the filter logs at trace there, its most
verbose) for any token an IdP issued to a test, any 16-character fragment of
one, anything JWT-shaped, a Google access token, any value passed in an
Envoy's environment (the client secrets and private keys) or a fragment of
it, and private-key material.

Envoy's own debug and trace logging is another matter (it prints request
headers and callout requests, tokens and Basic credentials included): the
README's operations section says not to run the `http`/`router` components at
debug in production. Only the filter's lines are scanned here.
"""

import os
import re

from harness import ENVOY_SECRETS, ISSUED_TOKENS, WORK

WINDOW = 16
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
GOOGLE_TOKEN = re.compile(r"ya29\.[A-Za-z0-9_.-]{8,}")


def windows(values):
    out = set()
    for v in values:
        for line in v.splitlines():
            line = line.strip()
            if line.startswith("-----"):
                continue
            out.update(line[i:i + WINDOW] for i in range(0, max(len(line) - WINDOW + 1, 0)))
    return out


def test_the_filter_never_logs_a_token_or_a_secret():
    logs = [p for p in WORK.glob(f"*-{os.getpid()}-*.log")]
    lines = [l for p in logs for l in p.read_text(errors="replace").splitlines() if "wasm log" in l]
    if len(ISSUED_TOKENS) < 10 or len(lines) < 500:
        # Run alone, there is nothing to scan: this test is for the end of the suite.
        import pytest

        pytest.skip("run with the integration suite (it scans the logs the other tests made)")
    forbidden = windows(ISSUED_TOKENS) | windows(ENVOY_SECRETS)
    hits = []
    for line in lines:
        text = line.split("wasm log", 1)[1]
        if JWT_SHAPED.search(text) or GOOGLE_TOKEN.search(text) or "PRIVATE KEY" in text:
            hits.append(line)
            continue
        if any(text[i:i + WINDOW] in forbidden for i in range(len(text) - WINDOW + 1)):
            hits.append(line)
    print(f"scanned {len(lines)} filter log lines from {len(logs)} logs against {len(ISSUED_TOKENS)} tokens "
          f"and {len(ENVOY_SECRETS)} secrets")
    assert not hits, "\n".join(hits[:5])
