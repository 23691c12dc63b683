#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a bounded time:
#
#   tests/fuzz.sh [--seconds N] [--jobs J] [target...]
#
# N seconds per target (default 30), J targets at a time (default: the
# number of cores), every target unless some are named. Prints executions
# and crashes per target; exits non-zero if any target crashed (the input
# is left in fuzz/artifacts/<target>/; replay it with
# `cd fuzz && cargo fuzz run -O -s none <target> <file>`).
#
# libFuzzer through cargo-fuzz, on the stable toolchain: `-s none` (no
# sanitizer) is what stable can build, and safe Rust needs no ASan to turn a
# bug into a crash. Debug assertions and overflow checks are on for the
# project's crates, off for dependencies (fuzz/Cargo.toml's profile). Installs
# cargo-fuzz itself; safe to run repeatedly. Each run starts from the
# checked-in seeds (fuzz/corpus/<target>) plus what earlier runs on this
# machine found, and adds only to the latter. That corpus and the logs live
# in $FUZZ_CACHE (default ~/.cache/token-exchange-filter-fuzz), outside the
# tree, so they outlive a clone; the build is fuzz/target, as cargo-fuzz
# has it (one target directory shared by two checkouts mixes their crates up).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"
cache="${FUZZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/token-exchange-filter-fuzz}"

CARGO_FUZZ_VERSION=0.13.2
seconds=30
jobs="$(nproc 2>/dev/null || echo 1)"
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --jobs=*) jobs="${1#*=}"; shift ;;
    -h|--help) sed -n '2,21p' "$root/tests/fuzz.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz >&2
fi

all=$(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$all"
fi
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$all"; then
    echo "fuzz.sh: no target $t (have: $(echo $all))" >&2
    exit 2
  fi
done

echo "==> building fuzz targets (cargo fuzz build -O -s none)" >&2
start=$(date +%s)
cargo fuzz build -O -s none >&2
echo "    built in $(( $(date +%s) - start ))s" >&2

# Logs and exit codes are this run's own: two runs at once (two checkouts,
# one cache) must not read each other's results. The corpus is shared.
mkdir -p "$cache/logs"
logs="$(mktemp -d "$cache/logs/run.XXXXXX")"
# Keep the last few runs' logs, not every run's.
ls -dt "$cache"/logs/run.* 2>/dev/null | tail -n +6 | xargs -r rm -rf

host="$(rustc -vV | sed -n 's/^host: //p')"
bin="$root/fuzz/target/$host/release"

run_one() {
  local t="$1" work="$cache/corpus/$1"
  mkdir -p "$work" "$root/fuzz/artifacts/$t"
  # The binaries as built above (what `cargo fuzz run` would start, without
  # a cargo call per target). New inputs go to the first corpus directory
  # only; the seeds stay as checked in. Inputs up to 8 KiB: a large JWKS or
  # config still fits.
  local rc=0
  rm -f "$logs/$t.rc"
  "$bin/$t" -artifact_prefix="$root/fuzz/artifacts/$t/" \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$work" "$root/fuzz/corpus/$t" >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
}

echo "==> running ${#targets[@]} targets, ${seconds}s each, $jobs at a time" >&2
start=$(date +%s)
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_one "$t" &
done
wait

failed=0
printf '%-14s %12s %9s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  rc=$(cat "$logs/$t.rc" 2>/dev/null || echo "?")
  log="$logs/$t.log"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  if [ "$rc" = 0 ]; then
    result=ok
  else
    failed=1
    artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //' || true)
    result="CRASH (exit $rc) ${artifact:-see $log}"
  fi
  printf '%-14s %12s %9s  %s\n' "$t" "${runs:-?}" "${speed:-?}" "$result"
done
echo "    ran in $(( $(date +%s) - start ))s; logs in $logs" >&2

if [ "$failed" -ne 0 ]; then
  for t in "${targets[@]}"; do
    log="$logs/$t.log"
    if grep -q 'panicked at\|ERROR: libFuzzer\|ERROR: AddressSanitizer' "$log"; then
      echo "==> $t" >&2
      grep -m1 -A6 'panicked at\|ERROR: libFuzzer' "$log" >&2 || true
    fi
  done
  exit 1
fi
