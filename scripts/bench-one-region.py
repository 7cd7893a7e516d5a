#!/usr/bin/env python3
"""Prints the "one region" table from what scripts/bench-one-region.sh wrote.

    scripts/bench-one-region.py OUT_DIR

One row per run kind: OK reserves/s, p50 and p99 of every round, their
medians, and the ratios of the medians to durable Redis (64 clients) and
PostgreSQL, and of the spread and hinted rows to calls to the leader.
"""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
ROWS = [
    ("unary-leader", "Reservoir region, unary, calls to the leader", 64),
    ("unary-spread", "Reservoir region, unary, calls spread over the 3 nodes (followers forward)", 64),
    ("unary-hinted", "Reservoir region, unary, started at a follower, following its leader hint", 64),
    ("batched", "Reservoir region, ReserveBatch of <= 256", 1024),
    ("one-client", "Reservoir region, unary, calls to the leader", 1),
    ("redis", "Redis 7, appendfsync always, Lua check-and-decrement + hold key", 64),
    ("redis-1", "Redis 7, same", 1),
    ("postgres", "PostgreSQL 15, synchronous commit, conditional UPDATE + hold row", 64),
]


def runs(row):
    found = []
    for path in sorted(glob.glob(os.path.join(out, "r*", row, "*", "report.json"))):
        with open(path) as f:
            r = json.load(f)
        region = r["regions"][0]
        ok = region["reserve_ok"]
        errors = sum(region["errors"].values()) if region["errors"] else 0
        found.append((region["reserves_ok_per_s"], ok["p50_us"] / 1000, ok["p99_us"] / 1000, errors))
    return found


medians = {}
print("| target | clients | reserves/s (rounds) | median | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|---|")
for key, name, clients in ROWS:
    rs = runs(key)
    if not rs:
        continue
    tput = statistics.median(r[0] for r in rs)
    p50 = statistics.median(r[1] for r in rs)
    p99 = statistics.median(r[2] for r in rs)
    medians[key] = tput
    each = ", ".join(f"{r[0]:,.0f}" for r in rs)
    errors = sum(r[3] for r in rs)
    print(f"| {name} | {clients} | {each} | **{tput:,.0f}** | {p50:.2f} | {p99:.2f} | {errors} |")

print()


def ratio(a, b):
    if a in medians and b in medians and medians[b] > 0:
        return f"{medians[a] / medians[b]:.2f}x"
    return "-"


print(f"- unary to the leader / durable Redis: {ratio('unary-leader', 'redis')}")
print(f"- unary to the leader / PostgreSQL: {ratio('unary-leader', 'postgres')}")
print(f"- spread / to the leader: {ratio('unary-spread', 'unary-leader')}")
print(f"- started at a follower, hint followed / to the leader: {ratio('unary-hinted', 'unary-leader')}")
print(f"- batched / durable Redis: {ratio('batched', 'redis')}")
print(f"- one client, Reservoir / Redis: {ratio('one-client', 'redis-1')}")
