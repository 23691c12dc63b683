"""The Istio image: istio/build-image.sh builds it, skopeo pushes it to a local
registry, and oci.pull fetches it back the way Istio's agent does before it
hands the module to Envoy (manifest digest checked against the WasmPlugin's
sha256, plugin.wasm taken from the last layer, wasm magic checked)."""

import hashlib
import json
import os
import shutil
import time

import pytest

from harness import WASM, WORK, call
from oci import ACCEPT, DOCKER_MANIFEST, PullError, Registry, build_image, missing_tools, pull, push

REPO = "mcp/token-exchange-filter"


@pytest.fixture(scope="module")
def work():
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run tests/bootstrap.sh --oci")
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    d = WORK / f"oci-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(work, module_cleanup):
    return Registry(module_cleanup)


@pytest.fixture(scope="module")
def image(work):
    """(layout dir, tag, manifest digest) of the release module's image."""
    return build_image(WASM, work / "a")


@pytest.fixture(scope="module")
def pushed(image, registry):
    layout, tag, _ = image
    return push(layout, tag, registry, REPO)


def test_build_is_reproducible(image, work):
    _, tag, digest = image
    again = build_image(WASM, work / "b")
    assert again[1:] == (tag, digest)
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def test_pull_gives_back_the_release_module(image, registry, pushed, work):
    _, tag, built = image
    # skopeo kept the OCI manifest as built, so the digest the build prints
    # is the one to put in the WasmPlugin.
    assert pushed == built
    cache = work / "cache"
    path = pull(f"oci://{registry.host}/{REPO}:{tag}", pushed, cache)
    assert path.read_bytes() == WASM.read_bytes()
    module_dir = hashlib.sha256(f"oci://{registry.host}/{REPO}".encode()).hexdigest()
    assert path == cache / module_dir / f"{pushed}.wasm"


def test_docker_manifest_has_its_own_digest(image, registry, work):
    """Converted to a Docker schema 2 manifest on the way (as pushes to some
    registries are), the image gets another digest: the one the registry
    serves is the one the WasmPlugin needs. The agent takes that shape too."""
    layout, tag, built = image
    served = push(layout, tag, registry, "mcp/docker-shaped", manifest_format="v2s2")
    status, headers, body = call(registry.port, f"/v2/mcp/docker-shaped/manifests/{tag}", headers={"accept": ACCEPT})
    assert status == 200 and json.loads(body)["mediaType"] == DOCKER_MANIFEST
    assert headers["docker-content-digest"] == f"sha256:{served}"
    assert served != built
    with pytest.raises(PullError, match="does not match"):
        pull(f"oci://{registry.host}/mcp/docker-shaped:{tag}", built, work / "cache-docker-wrong")
    path = pull(f"oci://{registry.host}/mcp/docker-shaped:{tag}", served, work / "cache-docker")
    assert path.read_bytes() == WASM.read_bytes()


def test_pull_by_digest_without_sha256(image, registry, pushed, work):
    path = pull(f"oci://{registry.host}/{REPO}@sha256:{pushed}", "", work / "cache-by-digest")
    assert path.name == f"{pushed}.wasm"
    assert path.read_bytes() == WASM.read_bytes()


def test_wrong_sha256_is_refused(image, registry, pushed, work):
    _, tag, _ = image
    wrong = hashlib.sha256(WASM.read_bytes()).hexdigest()  # the module's hash is not the manifest's
    cache = work / "cache-wrong"
    with pytest.raises(PullError, match="does not match"):
        pull(f"oci://{registry.host}/{REPO}:{tag}", wrong, cache)
    assert not cache.exists()


def test_missing_tag_is_refused(registry, pushed, work):
    with pytest.raises(PullError, match="HTTP 404"):
        pull(f"oci://{registry.host}/{REPO}:no-such-tag", "", work / "cache-missing")


def test_image_without_wasm_is_refused(registry, work):
    text = work / "not-a-module.txt"
    text.write_text("this is not WebAssembly, but it is long enough\n")
    layout, tag, _ = build_image(text, work / "text", name="not-wasm", tag="1")
    digest = push(layout, tag, registry, "mcp/not-wasm")
    with pytest.raises(PullError, match=r"is invalid \(no \\0asm magic\)"):
        pull(f"oci://{registry.host}/mcp/not-wasm:{tag}", digest, work / "cache-text")
