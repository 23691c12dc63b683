#!/usr/bin/env bash
# Instructions per RS256 check: the filter's PKCS#1 v1.5 check (keys/rsa.rs)
# against the `rsa` crate's own, on the same key and token, counted by
# valgrind's callgrind (steadier than wall time on a shared machine). Each
# is run for 1 and for N+1 checks; the difference over N is one check
# without the setup. Native code, the release profile; under V8 the ratio
# is similar or wider. Prints a markdown table.
#
#   tests/bench/rsa_cost.sh [N]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
n="${1:-20}"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; } >&2
cargo build --release --example rsa_cost -p token-exchange-filter >&2
bin=target/release/examples/rsa_cost
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| RS256 check (RSA-2048) | instructions per check |"
echo "|---|---:|"
for which in filter crate; do
  one=$(count "$which" 1)
  many=$(count "$which" $((n + 1)))
  label="the filter's (keys/rsa.rs)"
  [ "$which" = crate ] && label="the rsa crate's (pkcs1v15::VerifyingKey)"
  printf '| %s | %s |\n' "$label" "$(( (many - one) / n ))"
done
