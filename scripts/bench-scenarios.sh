#!/usr/bin/env bash
# Runs one load-test scenario against one target, in the same way for every
# target, and leaves no process behind:
#   scripts/bench-scenarios.sh OUT_DIR SCENARIO TARGET [LOADTEST_ARGS...]
# TARGET is one of
#   tokens | single-writer | global-consensus   (`reservoir up --architecture
#       TARGET --wan aws`, 3 nodes per region; global-consensus: 1 per region)
#   tokens-take_half                            (tokens with `--policy take_half`)
#   region                                      (`reservoir up --standalone`: one
#       us-east region of 3 nodes, for one-region scenarios)
#   redis | redis-nopersist | postgres          (servers the load tester starts)
# SCENARIO is a built-in name or a TOML file. The report lands in
# OUT_DIR/SCENARIO-TARGET/ (report.json, report.html, summary.txt).
# Uses the release binaries: cargo build --release -p reservoir-node -p reservoir-loadtest
# RESERVOIR_RELEASE_DIR=DIR takes both binaries from another target dir.
# RESERVOIR_BIN=PATH runs the nodes from another build (a before/after
# comparison with the same load tester). RUNS=N (Reservoir targets) runs the
# scenario N times in a row on the same cluster, into OUT_DIR/NAME/run-1..N.
# The cluster is secure (TLS, API keys), as `up` makes it by default; the
# load tester takes its CA, keys and control token from its cluster.json.
# INSECURE=1 starts it with `up --insecure` instead (plaintext, no keys), to
# measure what security costs.
set -euo pipefail
out=$1 scenario=$2 target=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RESERVOIR_RELEASE_DIR:-$root/target/release}
node_bin=${RESERVOIR_BIN:-$bin/reservoir}
name=$(basename "$scenario" .toml)-$target
mkdir -p "$out/$name"
if [ -f "$scenario" ]; then scen=(--scenario-file "$scenario"); else scen=("$scenario"); fi

case $target in
  redis | redis-nopersist | postgres)
    "$bin/reservoir-loadtest" "${scen[@]}" --target "$target" --out "$out/$name" --quiet "$@" \
      > "$out/$name/summary.txt"
    ;;
  tokens | single-writer | global-consensus | tokens-take_half | region)
    dir=$(mktemp -d /tmp/reservoir-bench-XXXXXX)
    security=()
    [ "${INSECURE:-0}" = 1 ] && security=(--insecure)
    if [ "$target" = region ]; then
      "$node_bin" up --standalone --dir "$dir" ${security[@]+"${security[@]}"} > "$out/$name/up.log" 2>&1 &
    else
      arch=${target%-take_half}
      policy=proportional
      [ "$target" = tokens-take_half ] && policy=take_half
      "$node_bin" up --dir "$dir" --architecture "$arch" --policy "$policy" --wan aws --no-demo \
        ${security[@]+"${security[@]}"} > "$out/$name/up.log" 2>&1 &
    fi
    up=$!
    trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
    for _ in $(seq 1 300); do [ -f "$dir/cluster.json" ] && break; sleep 0.2; done
    [ -f "$dir/cluster.json" ] || { echo "the cluster did not start; see $out/$name/up.log" >&2; exit 1; }
    runs=${RUNS:-1}
    if [ "$runs" = 1 ]; then
      "$bin/reservoir-loadtest" "${scen[@]}" --target reservoir --cluster "$dir/cluster.json" \
        --out "$out/$name" --quiet "$@" > "$out/$name/summary.txt"
    else
      for i in $(seq 1 "$runs"); do
        mkdir -p "$out/$name/run-$i"
        "$bin/reservoir-loadtest" "${scen[@]}" --target reservoir --cluster "$dir/cluster.json" \
          --out "$out/$name/run-$i" --quiet "$@" > "$out/$name/run-$i/summary.txt" || true
        cat "$out/$name/run-$i/summary.txt"
      done
      exit 0
    fi
    ;;
  *)
    echo "unknown target $target" >&2
    exit 2
    ;;
esac
cat "$out/$name/summary.txt"
