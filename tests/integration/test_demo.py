"""The README's demo command works: envoy-local/run.sh --check."""

import subprocess

from harness import ROOT


def test_demo_script_runs_end_to_end():
    out = subprocess.run(
        [str(ROOT / "envoy-local" / "run.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo check passed" in out.stdout
    assert "HTTP/1.1 401" in out.stdout
    assert "'aud': 'mcpserver'" in out.stdout
