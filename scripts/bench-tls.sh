#!/usr/bin/env bash
# What security costs: the load tester's closed loop (one hot SKU, one unit
# per reserve; loadtest/scenarios/throughput.toml) against a fresh
# standalone region started by `reservoir up` with TLS on both planes, mutual
# TLS between nodes and API keys (the default), and against one started with
# `up --insecure` (plaintext, no authentication), alternating, back to back.
#   scripts/bench-tls.sh [OUT_DIR]
# Uses the release binaries: cargo build --release -p reservoir-node -p reservoir-loadtest
# (RESERVOIR_RELEASE_DIR=DIR takes them from another target dir). ROUNDS=N
# (default 3) rounds of c=64, then of c=1; odd rounds run TLS first, even
# rounds plaintext first. Prints one line per run.
set -euo pipefail
out=${1:-$(mktemp -d /tmp/bench-tls-XXXXXX)}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
scenario=$root/loadtest/scenarios/throughput.toml
rounds=${ROUNDS:-3}

run() {
  local mode=$1 clients=$2 seconds=$3 round=$4
  local dir=$out/$mode-c$clients-r$round
  local insecure=0
  [ "$mode" = plaintext ] && insecure=1
  INSECURE=$insecure "$root/scripts/bench-scenarios.sh" "$dir" "$scenario" region \
    --clients "$clients" --duration-s "$seconds" > "$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
  echo "== $mode c=$clients round $round"
  grep -E "^  us-east " "$dir"/*/summary.txt | head -1
}

# Odd rounds run TLS first, even rounds plaintext first.
pair() {
  local clients=$1 seconds=$2 round=$3
  if [ $((round % 2)) = 1 ]; then
    run tls "$clients" "$seconds" "$round"
    run plaintext "$clients" "$seconds" "$round"
  else
    run plaintext "$clients" "$seconds" "$round"
    run tls "$clients" "$seconds" "$round"
  fi
}
for round in $(seq 1 "$rounds"); do pair 64 15 "$round"; done
for round in $(seq 1 "$rounds"); do pair 1 12 "$round"; done
echo "reports: $out"
