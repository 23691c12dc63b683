#!/usr/bin/env bash
# Builds the filter's OCI image for Istio's WasmPlugin (the "compat" variant
# of the Wasm image spec): one layer, application/vnd.oci.image.layer.v1.tar+gzip,
# holding plugin.wasm at its root. Uses umoci; no Docker daemon needed (with
# Docker, istio/Dockerfile builds the same shape).
#
# Usage:
#   istio/build-image.sh [--wasm FILE] [--out DIR] [--name NAME] [--tag TAG]
#
#   --wasm FILE  module to package (env OCI_WASM; default
#                target/wasm32-wasip1/release/token_exchange_filter.wasm)
#   --out DIR    output directory (env OCI_OUT; default target/oci)
#   --name NAME  image name (env OCI_NAME; default token-exchange-filter)
#   --tag TAG    tag (env OCI_TAG; default the crate version from Cargo.toml)
#
# Writes DIR/NAME, an OCI image layout (rebuilt from scratch each run), and
# DIR/NAME-TAG.tar, the same layout as one tarball (skopeo's oci-archive:
# transport reads it). The last line on stdout is the image's manifest digest,
# hex without "sha256:", which is what a WasmPlugin's `sha256` field wants.
# Timestamps are fixed (the one history entry included), so the same .wasm gives the
# same digest.
#
# Push (skopeo; add --dest-tls-verify=false for a plain-http registry):
#   skopeo copy oci:target/oci/token-exchange-filter:0.1.0 \
#     docker://registry.example.com/token-exchange-filter:0.1.0
#   (or: skopeo copy oci-archive:target/oci/token-exchange-filter-0.1.0.tar docker://...)
# skopeo may convert the manifest on the way (e.g. to Docker schema 2 for a
# registry that refuses OCI manifests), which changes the digest. The digest
# that counts is the one the registry serves; take it after the push with
#   skopeo inspect --format '{{.Digest}}' \
#     docker://registry.example.com/token-exchange-filter:0.1.0
# and put its hex part in the WasmPlugin:
#   spec:
#     url: oci://registry.example.com/token-exchange-filter:0.1.0
#     sha256: <hex>
#
# Needs umoci and python3 (skopeo only to push): tests/bootstrap.sh --oci
# installs them, or: apt-get install umoci skopeo. The default module is run
# through wasm-opt first (Debian's binaryen, installed if missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

wasm="${OCI_WASM:-$root/target/wasm32-wasip1/release/token_exchange_filter.wasm}"
out="${OCI_OUT:-$root/target/oci}"
name="${OCI_NAME:-token-exchange-filter}"
tag="${OCI_TAG:-}"

die() { echo "build-image.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --wasm) [ $# -ge 2 ] || die "--wasm needs a value"; wasm="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out="$2"; shift 2 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; name="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

command -v umoci >/dev/null || die "umoci is missing: run tests/bootstrap.sh --oci, or apt-get install umoci skopeo"
command -v python3 >/dev/null || die "python3 is missing"
[ -f "$wasm" ] || die "no module at $wasm (build it: tests/bootstrap.sh, or pass --wasm FILE)"
# The default module ships as tests/bootstrap.sh builds it: after wasm-opt,
# which a bare `cargo build` undoes (tests/lib.sh, optimize_filter).
if [ "$wasm" -ef "$root/target/wasm32-wasip1/release/token_exchange_filter.wasm" ]; then
  # shellcheck source=tests/lib.sh
  (cd "$root" && . tests/lib.sh && optimize_filter)
fi
[[ "$name" =~ ^[a-z0-9]+([._-][a-z0-9]+)*$ ]] || die "--name must be a lower-case image name, got '$name'"
if [ -z "$tag" ]; then
  tag="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")"
  [ -n "$tag" ] || die "no version in $root/Cargo.toml [workspace.package]; pass --tag"
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "--tag is not a valid tag: '$tag'"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
layout="$out/$name"
archive="$out/$name-$tag.tar"
if [ -e "$layout" ]; then
  [ -f "$layout/oci-layout" ] || die "$layout exists and is not an OCI layout; not replacing it"
  rm -rf "$layout"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# The layer: a tar holding only plugin.wasm, with fixed owner, mode and time.
# (Made here rather than with `umoci insert`, whose layers lack the tar
# end-of-archive blocks in umoci < 0.5: opencontainers/umoci#436.)
mkdir "$stage/root"
cp "$wasm" "$stage/root/plugin.wasm"
chmod 0644 "$stage/root/plugin.wasm"
tar --format=ustar --mtime=@0 \
  --owner=0 --group=0 --numeric-owner -C "$stage/root" -cf "$stage/layer.tar" plugin.wasm

epoch="1970-01-01T00:00:00Z"
umoci init --layout "$layout" >&2
umoci new --image "$layout:$tag" >&2
umoci raw add-layer --image "$layout:$tag" --history.created "$epoch" \
  --history.created_by "COPY plugin.wasm ./" "$stage/layer.tar" >&2
umoci config --image "$layout:$tag" --no-history --created "$epoch" \
  --architecture amd64 --os linux >&2
umoci gc --layout "$layout" >&2

# Same layout as a tarball, with fixed order, owners and times.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$archive" .

digest="$(python3 - "$layout/index.json" "$tag" <<'EOF'
import json, sys
index = json.load(open(sys.argv[1]))
for m in index["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]:
        print(m["digest"].removeprefix("sha256:"))
        break
else:
    sys.exit(f"tag {sys.argv[2]} not in {sys.argv[1]}")
EOF
)"

echo "layout:  $layout (tag $tag)" >&2
echo "archive: $archive" >&2
echo "push:    skopeo copy oci:$layout:$tag docker://<registry>/<repo>:$tag" >&2
echo "$digest"
