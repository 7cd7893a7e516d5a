#!/usr/bin/env bash
# A/B benchmark of two `reservoir` binaries in one session: alternates them,
# each run on a fresh standalone region (fsync on), benchmarking the leader.
#   scripts/bench-ab.sh BASE_BINARY NEW_BINARY
# Prints reserves/s and latency (ms) per run. Leaves no process behind.
set -uo pipefail
base=$1
new=$2

run() {
  local bin=$1 clients=$2 dur=$3 tag=$4
  local d
  d=$(mktemp -d /tmp/bench-ab-XXXXXX)
  "$bin" up --standalone --dir "$d" > "$d.log" 2>&1 &
  local up=$!
  for _ in $(seq 1 150); do [ -f "$d/cluster.json" ] && break; sleep 0.2; done
  local leader=""
  for _ in $(seq 1 50); do
    for h in $(python3 -c "import json;print(' '.join(n['http']+','+n['grpc'] for n in json.load(open('$d/cluster.json'))['nodes']))"); do
      if curl -s "${h%,*}/status" | grep -q '"role":"leader"'; then leader=${h#*,}; fi
    done
    [ -n "$leader" ] && break
    sleep 0.2
  done
  "$bin" bench --addr "$leader" --clients "$clients" --duration-s "$dur" --json 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$tag', 'clients=$clients', round(d['reserves_per_s']), d['latency_ms'])"
  kill -TERM "$up"
  wait "$up" 2>/dev/null
  rm -rf "$d" "$d.log"
}

for _ in 1 2 3; do
  run "$base" 64 12 base
  run "$new" 64 12 new
done
run "$base" 1 10 base
run "$new" 1 10 new
