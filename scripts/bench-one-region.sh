#!/usr/bin/env bash
# The "one region" table of BENCHMARKS.md: the load tester's closed-loop
# throughput scenario (loadtest/scenarios/throughput.toml: one hot SKU, one
# unit per reserve, holds left to expire) against a standalone Reservoir
# region (3 nodes, fsync, TLS, API keys) and the baselines, back to back,
# ROUNDS rounds (default 3), each row on a fresh region or server:
#   unary-leader   64 clients, calls to the leader
#   unary-spread   64 clients, each call to the region's nodes in turn
#                  (followers forward)
#   unary-hinted   64 clients, started at a follower, following its leader hint
#   batched        1,024 clients, reserves gathered into ReserveBatch calls of <= 256
#   one-client     1 client, calls to the leader
#   redis          Redis, appendfsync always, Lua check-and-decrement + hold key, 64 clients
#                  on 64 connections (one each, as in "Throughput of one region")
#   redis-1        the same, 1 client
#   postgres       PostgreSQL, synchronous commit, conditional UPDATE + hold row, 64 clients
#                  on a pool of 16 connections (64 was slower; BENCHMARKS.md)
#   scripts/bench-one-region.sh OUT_DIR [SECONDS]        (default 15 s a run)
# then: scripts/bench-one-region.py OUT_DIR
# Uses the release binaries (cargo build --release -p reservoir-node -p
# reservoir-loadtest) and redis-server / postgres from the system, as the
# load tester starts them. Leaves no process behind (bench-scenarios.sh).
set -euo pipefail
out=$1
seconds=${2:-15}
rounds=${ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
scenario=$root/loadtest/scenarios/throughput.toml
mkdir -p "$out"

run() {
  local round=$1 row=$2 target=$3
  shift 3
  echo "== round $round: $row ($(date -u +%H:%M:%S))"
  "$root/scripts/bench-scenarios.sh" "$out/r$round/$row" "$scenario" "$target" \
    --duration-s "$seconds" "$@" | grep -A1 REGION | tail -1 || echo "   (failed; see $out/r$round/$row)"
}

for round in $(seq 1 "$rounds"); do
  run "$round" unary-leader region --clients 64
  run "$round" unary-spread region --clients 64 --spread
  run "$round" unary-hinted region --clients 64 --start-at-follower
  run "$round" batched region --clients 1024 --batch 256
  run "$round" one-client region --clients 1
  run "$round" redis redis --clients 64 --connections 64
  run "$round" redis-1 redis --clients 1 --connections 1
  run "$round" postgres postgres --clients 64
done
