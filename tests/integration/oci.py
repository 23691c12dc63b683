"""OCI helpers for the Istio image tests: a local registry (Debian's
docker-registry), istio/build-image.sh, a skopeo push, and `pull`, which does
in Python what Istio's agent does before it hands a WasmPlugin module to Envoy
(istio/istio pkg/wasm: cache.go getOrFetch, imagefetcher.go PrepareFetch, with
go-containerregistry's remote fetcher). Plain http, loopback registries only.
"""

import gzip
import hashlib
import io
import ipaddress
import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import ROOT, WORK, Proc, free_port, tail

TOOLS = ("umoci", "skopeo", "docker-registry")
BUILD_IMAGE = ROOT / "istio" / "build-image.sh"

# What the agent asks for, in its order (go-containerregistry remote.Get).
ACCEPT = ",".join([
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEXES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_WASM = 256 * 1024 * 1024  # ISTIO_WASM_MAX_BINARY_SIZE_BYTES default

# No proxy: these requests go to 127.0.0.1 only.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PullError(Exception):
    """The agent would refuse this module (and apply its fail-open/closed RBAC filter)."""


def missing_tools():
    return [t for t in TOOLS if shutil.which(t) is None]


class Registry:
    """docker-registry on 127.0.0.1:<free port>, storage under tests/.work/."""

    def __init__(self, cleanup):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = WORK / f"registry-{self.port}"
        self.storage.mkdir(parents=True, exist_ok=True)
        config = WORK / f"registry-{self.port}.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }))
        self.proc = Proc("registry", ["docker-registry", "serve", str(config)])
        cleanup.add(self)
        deadline = time.monotonic() + 20
        while True:
            try:
                with _http.open(f"http://{self.host}/v2/", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not answer /v2/; log:\n{tail(self.proc.log)}")
            time.sleep(0.1)

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.storage, ignore_errors=True)


def _run(cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    return p.stdout


def build_image(wasm_path, out_dir, name="token-exchange-filter", tag=None):
    """istio/build-image.sh; returns (layout dir, tag, manifest digest hex)."""
    cmd = [BUILD_IMAGE, "--wasm", wasm_path, "--out", out_dir, "--name", name] + (["--tag", tag] if tag else [])
    digest = _run(cmd).strip().splitlines()[-1]
    layout = Path(out_dir) / name
    refs = [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads((layout / "index.json").read_text())["manifests"]]
    return layout, refs[0], digest


def push(layout_dir, tag, registry, repo, manifest_format=None):
    """skopeo copy to the registry (`manifest_format`: skopeo's --format, e.g.
    "v2s2" to convert to a Docker manifest); returns the digest hex the
    registry serves."""
    dest = f"docker://{registry.host}/{repo}:{tag}"
    fmt = ["--format", manifest_format] if manifest_format else []
    _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *fmt, f"oci:{layout_dir}:{tag}", dest])
    digest = _run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", dest]).strip()
    return digest.removeprefix("sha256:")


def _get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _http.open(req, timeout=30) as r:
            return r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raise PullError(f"GET {url}: HTTP {e.code} {e.read()[:200]!r}") from None
    except OSError as e:
        raise PullError(f"GET {url}: {e}") from None


def _blob(base, desc):
    data, _ = _get(f"{base}/blobs/{desc['digest']}")
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != desc["digest"] or len(data) != desc["size"]:
        raise PullError(f"blob {desc['digest']}: content does not match its descriptor")
    return data


def _plugin_wasm(layer):
    """The first tar entry named plugin.wasm, in any directory."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r|") as tar:
            for entry in tar:
                if Path(entry.name).name == "plugin.wasm":
                    if entry.size > MAX_WASM:
                        raise PullError("plugin.wasm is larger than the agent's limit")
                    return tar.extractfile(entry).read() if entry.isfile() else b""
    except (OSError, EOFError, tarfile.TarError) as e:
        raise PullError(f"layer is not a tar.gz: {e}") from None
    raise PullError("plugin.wasm not found in the archive")


def _manifest(base, ident):
    """(manifest JSON, digest hex) of the image `ident` names; an index
    resolves to its linux/amd64 image, as the agent's client does."""
    body, ctype = _get(f"{base}/manifests/{ident}", ACCEPT)
    digest = hashlib.sha256(body).hexdigest()
    if ident.startswith("sha256:") and ident != f"sha256:{digest}":
        raise PullError(f"manifest digest sha256:{digest} does not match the requested {ident}")
    if ctype in SCHEMA1:
        raise PullError(f"schema 1 manifests are not supported ({ctype})")
    doc = json.loads(body)
    if ctype in INDEXES or doc.get("mediaType") in INDEXES:
        for child in doc.get("manifests", []):
            p = child.get("platform") or {"os": "linux", "architecture": "amd64"}
            if (p.get("os"), p.get("architecture")) == ("linux", "amd64"):
                return _manifest(base, child["digest"])
        raise PullError("index has no linux/amd64 image")
    return doc, digest


def _module(base, manifest):
    layers = manifest.get("layers") or []
    if manifest.get("mediaType") == DOCKER_MANIFEST:
        if not layers or layers[-1]["mediaType"] != DOCKER_LAYER:
            raise PullError(f"docker image: last layer must be {DOCKER_LAYER}")
        return _plugin_wasm(_blob(base, layers[-1]))
    try:  # compat: last layer, a tar.gz holding plugin.wasm
        if not layers or layers[-1]["mediaType"] != OCI_LAYER:
            raise PullError(f"last layer must be {OCI_LAYER}")
        return _plugin_wasm(_blob(base, layers[-1]))
    except PullError as compat:
        wasm = [d for d in layers if d["mediaType"] == WASM_LAYER]
        if len(layers) != 2 or not wasm:  # artifact: 2 layers, one the raw module
            raise PullError(f"image is neither compat ({compat}) nor a 2-layer {WASM_LAYER} artifact") from None
        return _blob(base, wasm[0])[:MAX_WASM]


def pull(ref, sha256, cache_dir):
    """Fetch `ref` (oci://127.0.0.1:PORT/repo[:tag|@sha256:...]) as the agent
    would, check the manifest digest against `sha256` (hex; "" = any), write
    the module where the agent puts it, and return that path:
    cache_dir/<sha256 hex of "oci://host/repo">/<manifest digest hex>.wasm"""
    name = ref.removeprefix("oci://")
    host, _, path = name.partition("/")
    try:
        loopback = host.split(":")[0] == "localhost" or ipaddress.ip_address(host.split(":")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not path:
        raise PullError(f"{ref}: only loopback registries (http) are supported here")
    if "@" in path:
        repo, ident = path.split("@", 1)
    elif ":" in path.rsplit("/", 1)[-1]:
        repo, ident = path.rsplit(":", 1)
    else:
        repo, ident = path, "latest"
    base = f"http://{host}/v2/{repo}"
    manifest, digest = _manifest(base, ident)
    if sha256 and digest != sha256:
        raise PullError(f"module downloaded from {ref} has checksum {digest}, which does not match: {sha256}")
    module = _module(base, manifest)
    if len(module) < 8 or module[:4] != b"\0asm":
        raise PullError(f"fetched Wasm binary from {ref} is invalid (no \\0asm magic)")
    out = Path(cache_dir) / hashlib.sha256(f"oci://{host}/{repo}".encode()).hexdigest() / f"{digest}.wasm"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(module)
    return out
