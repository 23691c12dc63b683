# Shell helpers the scripts under tests/ share; source it, do not run it.

say() { printf '==> %s\n' "$*" >&2; }

# apt_install <package>...: installs Debian packages as root, or says what is missing.
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then
    say "installing Debian packages: $*"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* (install them, e.g. sudo apt-get install $*)" >&2
    exit 1
  fi
}

# The release module, as shipped: cargo's build, then Binaryen's wasm-opt.
FILTER_WASM="target/wasm32-wasip1/release/token_exchange_filter.wasm"

# wasm-opt -Os shrinks the module by about a fifth. Its default inlines every
# function that has one caller, however large, which builds functions of
# 30-70 KB; Envoy's V8 compiles each function with TurboFan up front, and
# such functions cost it more memory than the bytes saved. Capping one-caller
# inlining at 50 keeps every function near its size in cargo's build (the
# largest 15 KB) and measured lowest RSS (tests/bench/footprint.py).
# The features are those rustc's wasm32-wasip1 output uses (the stripped
# module has no target_features section to detect them from).
WASM_OPT_FLAGS=(-Os --one-caller-inline-max-function-size=50
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int)

# optimize_filter: runs wasm-opt over $FILTER_WASM in place, once per cargo
# build. cargo re-links its output over the file on every `cargo build`, so
# this runs after each one; an output it made before is reused (.wasm-opt
# beside the module keeps it, with the hashes of its input and output).
optimize_filter() {
  local wasm="$FILTER_WASM" cache="$FILTER_WASM.wasm-opt"
  command -v wasm-opt >/dev/null || apt_install binaryen
  local now
  now="$(sha256sum "$wasm" | cut -d' ' -f1)"
  if [ -f "$cache" ] && [ -f "$cache.sha256" ]; then
    local input output
    read -r input output < "$cache.sha256"
    [ "$now" = "$output" ] && return 0
    if [ "$now" = "$input" ]; then
      cp "$cache" "$wasm.tmp" && mv "$wasm.tmp" "$wasm"
      return 0
    fi
  fi
  say "wasm-opt ${WASM_OPT_FLAGS[*]} $wasm"
  wasm-opt "${WASM_OPT_FLAGS[@]}" "$wasm" -o "$cache"
  echo "$now $(sha256sum "$cache" | cut -d' ' -f1)" > "$cache.sha256"
  # A new file, not a write through cargo's hard link into deps/.
  cp "$cache" "$wasm.tmp" && mv "$wasm.tmp" "$wasm"
}

# build_filter: the release module at $FILTER_WASM, built and optimized.
build_filter() {
  say "building $FILTER_WASM"
  cargo build --release --target wasm32-wasip1 -p token-exchange-filter >&2
  optimize_filter
}
