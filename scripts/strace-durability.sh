#!/usr/bin/env bash
# Shows, on a real standalone region under load, which syscalls put the Raft
# log on the disk: starts `reservoir up --standalone`, attaches
#   strace -f -y -T -e trace=fdatasync,fsync,sync_file_range
# to every node (leader and followers: a write is acknowledged by a quorum,
# and each node's append must be on its disk before it counts), runs the
# load tester's closed loop for a few seconds, and prints per node the
# calls per syscall and file, their time inside the kernel, and the
# committed log entries per fdatasync of the log file (from /metrics).
#   scripts/strace-durability.sh [OUT_DIR]
# Environment: RESERVOIR_BIN (the node binary, default target/release/reservoir),
# RESERVOIR_RELEASE_DIR (where reservoir-loadtest is, default target/release),
# CLIENTS (16), SECONDS_LOAD (5).
# Exits non-zero if a node's log file (sled's `{data}/db`) saw no fdatasync
# while the load ran, or saw sync_file_range (stock sled's only per-flush
# sync, which leaves the data in the disk's volatile cache: see
# vendor/sled/PATCHES.md). strace slows the traced nodes a lot: the figures
# show where the syncs are, not what they cost at full speed (for that:
# scripts/bench-ab.sh, BENCHMARKS.md "What durability costs").
# Leaves no process behind.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RESERVOIR_RELEASE_DIR:-$root/target/release}
node_bin=${RESERVOIR_BIN:-$bin/reservoir}
loadtest=$bin/reservoir-loadtest
clients=${CLIENTS:-16}
seconds=${SECONDS_LOAD:-5}
out=${1:-$(mktemp -d /tmp/strace-durability-XXXXXX)}
mkdir -p "$out"
command -v strace >/dev/null || { echo "strace is not installed (apt-get install strace)" >&2; exit 2; }
for b in "$node_bin" "$loadtest"; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release -p reservoir-node -p reservoir-loadtest" >&2; exit 2; }
done

dir=$(mktemp -d /tmp/reservoir-strace-XXXXXX)
up=
tracers=()
cleanup() {
  for t in ${tracers[@]+"${tracers[@]}"}; do kill -INT "$t" 2>/dev/null || true; done
  for t in ${tracers[@]+"${tracers[@]}"}; do wait "$t" 2>/dev/null || true; done
  if [ -n "$up" ]; then kill -TERM "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$node_bin" up --standalone --dir "$dir" > "$out/up.log" 2>&1 &
up=$!
for _ in $(seq 1 300); do [ -f "$dir/cluster.json" ] && break; sleep 0.2; done
[ -f "$dir/cluster.json" ] || { echo "the region did not start; see $out/up.log" >&2; exit 1; }

# id pid http, one node a line.
mapfile -t nodes < <(python3 -c '
import json, sys
for n in json.load(open(sys.argv[1]))["nodes"]:
    print(n["id"], n["pid"], n["http"])
' "$dir/cluster.json")

metric() { # HTTP_ADDR NAME: the sum of the metric's lines (a standalone region's node has one group), or 0.
  curl -s "http://$1/metrics" | awk -v name="$2" '{ n = $1; sub(/\{.*/, "", n) } n == name { s += $NF; found = 1 } END { print found ? s : 0 }'
}

# Wait for a leader, then attach strace to every node.
leader=
for _ in $(seq 1 100); do
  for n in "${nodes[@]}"; do
    read -r id pid http <<< "$n"
    [ "$(metric "$http" reservoir_raft_is_leader)" = 1 ] && leader=$id
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "no leader elected" >&2; exit 1; }

declare -A applied_before
for n in "${nodes[@]}"; do
  read -r id pid http <<< "$n"
  strace -f -y -T -qq -e signal=none -e trace=fdatasync,fsync,sync_file_range \
    -o "$out/strace-node-$id.txt" -p "$pid" &
  tracers+=($!)
done
# strace attaches to each thread in turn; wait until every tracer's node
# shows as traced before counting from here.
for n in "${nodes[@]}"; do
  read -r id pid http <<< "$n"
  for _ in $(seq 1 50); do
    tracer=$(awk '/^TracerPid:/ { print $2 }' "/proc/$pid/status")
    [ "$tracer" != 0 ] && break
    sleep 0.1
  done
  applied_before[$id]=$(metric "$http" reservoir_raft_applied_index)
done

mkdir -p "$out/load"
echo "== load: $clients closed-loop clients, $seconds s (loadtest/scenarios/throughput.toml)"
"$loadtest" --scenario-file "$root/loadtest/scenarios/throughput.toml" --target reservoir \
  --cluster "$dir/cluster.json" --clients "$clients" --duration-s "$seconds" \
  --out "$out/load" --quiet > "$out/load/summary.txt" 2>"$out/load.err" || {
    echo "load tester failed; see $out/load.err" >&2; exit 1; }
sed -n '1,12p' "$out/load/summary.txt"

declare -A applied_after
for n in "${nodes[@]}"; do
  read -r id pid http <<< "$n"
  applied_after[$id]=$(metric "$http" reservoir_raft_applied_index)
done
for t in "${tracers[@]}"; do kill -INT "$t" 2>/dev/null || true; done
for t in "${tracers[@]}"; do wait "$t" 2>/dev/null || true; done
tracers=()

failed=0
for n in "${nodes[@]}"; do
  read -r id pid http <<< "$n"
  role=follower
  [ "$id" = "$leader" ] && role=leader
  entries=$(( ${applied_after[$id]%.*} - ${applied_before[$id]%.*} ))
  echo "== node $id ($role, pid $pid): $entries log entries committed and applied while traced"
  # Lines look like `1234  fdatasync(7</tmp/.../data/db>) = 0 <0.000412>`;
  # with -f a call can be split into `... <unfinished ...>` and
  # `<... fdatasync resumed>) = 0 <0.000412>`: count the first half, time the
  # second.
  python3 - "$out/strace-node-$id.txt" "$entries" <<'EOF' || failed=1
import collections, re, statistics, sys
path, entries = sys.argv[1], int(sys.argv[2])
calls = collections.Counter()
times = collections.defaultdict(list)
pending = {}
call_re = re.compile(r'^(\d+)\s+(fdatasync|fsync|sync_file_range)\((\d+)<([^>]*)>')
resumed_re = re.compile(r'^(\d+)\s+<\.\.\. (\w+) resumed>.*<([\d.]+)>$')
done_re = re.compile(r'<([\d.]+)>$')
def kind(p):
    if p.endswith('/data/db'): return 'db (the log)'
    if '/blobs/' in p: return 'blobs/* (large entries)'
    if p.endswith('/blobs'): return 'blobs/ (directory)'
    if '/raft-snapshots/' in p: return 'raft-snapshots/*'
    return p.rsplit('/', 1)[-1] or p
for line in open(path):
    m = call_re.match(line)
    if m:
        pid, call, _fd, p = m.groups()
        key = (call, kind(p))
        calls[key] += 1
        if '<unfinished ...>' in line:
            pending[(pid, call)] = key
        else:
            t = done_re.search(line.strip())
            if t: times[key].append(float(t.group(1)))
        continue
    m = resumed_re.match(line.strip())
    if m and (m.group(1), m.group(2)) in pending:
        times[pending.pop((m.group(1), m.group(2)))].append(float(m.group(3)))
for (call, what), n in sorted(calls.items()):
    ts = times[(call, what)]
    med = f"{statistics.median(ts) * 1e3:.3f} ms median in the kernel" if ts else ""
    print(f"   {call:16} {what:28} {n:7}  {med}")
db_syncs = calls[('fdatasync', 'db (the log)')]
srf = calls[('sync_file_range', 'db (the log)')]
if db_syncs:
    print(f"   {entries / db_syncs:.2f} committed entries per fdatasync of the log file")
ok = db_syncs > 0 and srf == 0
if not ok:
    print(f"   FAIL: {db_syncs} fdatasync and {srf} sync_file_range on the log file", file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
  flush_count=$(metric "$http" reservoir_raft_flush_seconds_count)
  flush_sum=$(metric "$http" reservoir_raft_flush_seconds_sum)
  python3 -c "
import sys
n, s = float(sys.argv[1]), float(sys.argv[2])
if n: print(f'   flusher: {n:.0f} group-committed flushes since start, {s / n * 1e3:.3f} ms mean (reservoir_raft_flush_seconds)')
" "$flush_count" "$flush_sum"
done
echo "traces and the load report: $out"
if [ "$failed" != 0 ]; then
  echo "FAIL: a node's log file was not fdatasynced, or was synced with sync_file_range" >&2
  exit 1
fi
echo "OK: every node fdatasyncs its log file; no sync_file_range"
