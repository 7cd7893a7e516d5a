#!/usr/bin/env bash
# CPU per reserve in one region: starts `reservoir up --standalone` (one
# us-east region of 3 nodes; fsync, TLS, API keys), loads it with the
# closed-loop throughput scenario (loadtest/scenarios/throughput.toml: one
# hot SKU, one unit per reserve, calls to the leader) and prints, for a
# measurement window inside the load, OK reserves/s and CPU microseconds per
# OK reserve of the leader, each follower and the load tester. Leaves no
# process behind.
#   scripts/cpu-per-reserve.sh [CLIENTS [WINDOW_S]]     (defaults: 64, 12)
# The window starts 2 s after the leader answers its first reserve and lasts
# WINDOW_S; the load runs WINDOW_S + 5 s. In the window:
#   - OK reserves: the leader's counter reservoir_requests_total{rpc="reserve",
#     outcome="ok"} (its /metrics), read at both ends;
#   - CPU: utime + stime of each process (/proc/PID/stat, all threads), read
#     at both ends; the leader is the node whose /status says so.
# It also prints the load tester's own figures for the whole load from its
# report.json (OK reserves/s, OK reserve p50 and p99).
# Uses the release binaries: cargo build --release -p reservoir-node -p reservoir-loadtest
# RESERVOIR_RELEASE_DIR=DIR takes both binaries from another target dir;
# RESERVOIR_BIN=PATH runs the nodes from another build (A/B with the same
# load tester). OUT=DIR keeps the logs and the report there (default: a
# temporary folder, printed), with each node's /metrics at the window's end. Needs curl, jq and bc.
# BATCHES_IN_FLIGHT=N restarts the region with [raft] batches_in_flight = N
# in every node config before the load.
# PERF=leader|follower records that node with `perf record -e cpu-clock` for
# the window (PERF_ARGS, default `-F 999 -g`) into OUT/perf-ROLE.data; its
# figures then include perf's own cost: profile, do not compare.
set -euo pipefail
clients=${1:-64}
window_s=${2:-12}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RESERVOIR_RELEASE_DIR:-$root/target/release}
node_bin=${RESERVOIR_BIN:-$bin/reservoir}
out=${OUT:-$(mktemp -d /tmp/cpu-per-reserve-XXXXXX)}
mkdir -p "$out"
dir=$(mktemp -d /tmp/reservoir-cpu-XXXXXX)
ticks_per_s=$(getconf CLK_TCK)

up=
load=
cleanup() {
  [ -n "$load" ] && kill -TERM "$load" 2>/dev/null && wait "$load" 2>/dev/null
  [ -n "$up" ] && kill -TERM "$up" 2>/dev/null && wait "$up" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

start_region() {
  "$node_bin" up --standalone --dir "$dir" >> "$out/up.log" 2>&1 &
  up=$!
  for _ in $(seq 1 300); do [ -f "$dir/cluster.json" ] && break; sleep 0.2; done
  [ -f "$dir/cluster.json" ] || { echo "the region did not start; see $out/up.log" >&2; exit 1; }
}
start_region
if [ -n "${BATCHES_IN_FLIGHT:-}" ]; then
  # The node configs `up` wrote, with another [raft] batches_in_flight;
  # `up` brings the region back on the same directory with them.
  kill -TERM "$up" && wait "$up" || true
  up=
  sed -i "s/^batches_in_flight = .*/batches_in_flight = $BATCHES_IN_FLIGHT/" "$dir"/node-*.toml
  grep -q "^batches_in_flight = $BATCHES_IN_FLIGHT\$" "$dir/node-1.toml" ||
    { echo "no batches_in_flight in $dir/node-1.toml" >&2; exit 1; }
  rm -f "$dir/cluster.json"
  start_region
fi

# id pid http, one node a line.
mapfile -t nodes < <(jq -r '.nodes[] | "\(.id) \(.pid) \(.http)"' "$dir/cluster.json")

leader_of() { curl -sf --max-time 1 "http://$1/status" | jq -r '.leader // "none"' 2>/dev/null || echo none; }

# The leader every node names (a restarted region's old leader may still
# call itself leader for a moment).
leader_http=
for _ in $(seq 1 100); do
  seen=()
  for n in "${nodes[@]}"; do
    read -r _ _ http <<< "$n"
    seen+=("$(leader_of "$http")")
  done
  if [ "${seen[0]}" != none ] && [ "$(printf '%s\n' "${seen[@]}" | sort -u | wc -l)" = 1 ]; then
    for n in "${nodes[@]}"; do
      read -r id _ http <<< "$n"
      [ "$id" = "${seen[0]}" ] && leader_http=$http
    done
    [ -n "$leader_http" ] && break
  fi
  sleep 0.1
done
[ -n "$leader_http" ] || { echo "no leader within 10 s; see $out/up.log" >&2; exit 1; }

# The leader's OK reserves, and the sum and count of its Raft batch sizes
# (reservoir_raft_batch_commands: commands per log entry).
leader_counts() {
  curl -sf --max-time 2 "http://$leader_http/metrics" | awk '
    /^reservoir_requests_total\{/ && /rpc="reserve"/ && /outcome="ok"/ { n += $NF }
    /^reservoir_raft_batch_commands_sum/ { s += $NF }
    /^reservoir_raft_batch_commands_count/ { c += $NF }
    END { printf "%d %d %d\n", n, s, c }'
}
ok_reserves() { leader_counts | awk '{ print $1 }'; }

# utime + stime of PID, in clock ticks (field 14 and 15; the name field
# cannot hold a space here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

"$bin/reservoir-loadtest" --scenario-file "$root/loadtest/scenarios/throughput.toml" --target reservoir \
  --cluster "$dir/cluster.json" --clients "$clients" --duration-s "$((window_s + 5))" --no-wait-for-holds \
  --out "$out/report" --quiet > "$out/summary.txt" 2> "$out/loadtest.log" &
load=$!

for _ in $(seq 1 300); do [ "$(ok_reserves)" -gt 0 ] && break; sleep 0.1; done
[ "$(ok_reserves)" -gt 0 ] || { echo "no reserve answered within 30 s; see $out/" >&2; exit 1; }
sleep 2

sample() {
  local line=""
  for n in "${nodes[@]}"; do
    read -r _ pid _ <<< "$n"
    line+="$(cpu_ticks "$pid") "
  done
  echo "$line$(cpu_ticks "$load") $(leader_counts) $(date +%s.%N)"
}
perf_pid=
if [ -n "${PERF:-}" ]; then
  for n in "${nodes[@]}"; do
    read -r _ pid http <<< "$n"
    if { [ "$PERF" = leader ] && [ "$http" = "$leader_http" ]; } ||
      { [ "$PERF" = follower ] && [ "$http" != "$leader_http" ]; }; then
      perf_pid=$pid
      break
    fi
  done
fi
read -r -a before <<< "$(sample)"
if [ -n "$perf_pid" ]; then
  # shellcheck disable=SC2086
  perf record -e cpu-clock ${PERF_ARGS:--F 999 -g} -o "$out/perf-$PERF.data" -p "$perf_pid" -- sleep "$window_s" \
    > "$out/perf.log" 2>&1
else
  sleep "$window_s"
fi
read -r -a after <<< "$(sample)"
for n in "${nodes[@]}"; do
  read -r id _ http <<< "$n"
  curl -sf --max-time 2 "http://$http/metrics" > "$out/metrics-node-$id.txt" || true
done

wait "$load"
load=

count=${#nodes[@]}
reserves=$(( after[count + 1] - before[count + 1] ))
seconds=$(echo "${after[count + 4]} - ${before[count + 4]}" | bc -l)
batches=$(( after[count + 3] - before[count + 3] ))
batch_commands=$(( after[count + 2] - before[count + 2] ))
[ "$reserves" -gt 0 ] || { echo "no OK reserve in the window" >&2; exit 1; }
per_reserve_us() { echo "$1 * 1000000 / $ticks_per_s / $reserves" | bc -l; }

echo "clients $clients, window ${seconds%.*} s, node binary $node_bin, out $out"
printf 'ok_reserves_per_s %.0f\n' "$(echo "$reserves / $seconds" | bc -l)"
total=0
for i in $(seq 0 $((count - 1))); do
  read -r id _ http <<< "${nodes[$i]}"
  d=$(( after[i] - before[i] ))
  total=$(( total + d ))
  role=follower
  [ "$http" = "$leader_http" ] && role=leader
  printf 'cpu_us_per_reserve %-8s node-%s %6.1f\n' "$role" "$id" "$(per_reserve_us "$d")"
done
d=$(( after[count] - before[count] ))
total=$(( total + d ))
printf 'cpu_us_per_reserve %-8s %-6s %6.1f\n' loadtest "" "$(per_reserve_us "$d")"
printf 'cpu_us_per_reserve %-8s %-6s %6.1f   (%.2f of %s cores busy)\n' total "" "$(per_reserve_us "$total")" \
  "$(echo "$total / $ticks_per_s / $seconds" | bc -l)" "$(nproc)"
jq -r '.regions[0] | "loadtest_whole_run ok_reserves_per_s \(.reserves_ok_per_s | floor) p50_us \(.reserve_ok.p50_us) p99_us \(.reserve_ok.p99_us)"' \
  "$out/report/report.json"
[ "$batches" -gt 0 ] && printf 'raft_batch_commands_mean %.1f   (%d batches in the window, leader)\n' \
  "$(echo "$batch_commands / $batches" | bc -l)" "$batches"
exit 0
