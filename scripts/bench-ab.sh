#!/usr/bin/env bash
# A/B benchmark of two `reservoir` binaries in one session: alternates them,
# each run on a fresh standalone region (fsync on), loaded by the load
# tester's closed-loop throughput scenario (one hot SKU, one unit per
# reserve; loadtest/scenarios/throughput.toml).
#   scripts/bench-ab.sh BASE_BINARY NEW_BINARY [OUT_DIR]
# Needs the release load tester: cargo build --release -p reservoir-loadtest
# Prints each run's summary; the reports land in OUT_DIR/TAG-N/. Leaves no
# process behind (bench-scenarios.sh stops each region). Both binaries run
# secure regions unless INSECURE=1 (passed on to bench-scenarios.sh; a binary
# older than `up --insecure` cannot run then).
set -euo pipefail
base=$1
new=$2
out=${3:-$(mktemp -d /tmp/bench-ab-XXXXXX)}
root=$(cd "$(dirname "$0")/.." && pwd)
scenario=$root/loadtest/scenarios/throughput.toml

run() {
  local tag=$1 bin=$2 clients=$3 seconds=$4
  local dir=$out/$tag-clients$clients-$(date +%s)
  echo "== $tag, $clients clients"
  RESERVOIR_BIN=$bin "$root/scripts/bench-scenarios.sh" "$dir" "$scenario" region \
    --clients "$clients" --duration-s "$seconds"
}

for _ in 1 2 3; do
  run base "$base" 64 12
  run new "$new" 64 12
done
run base "$base" 1 10
run new "$new" 1 10
