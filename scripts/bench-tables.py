#!/usr/bin/env python3
"""Prints the BENCHMARKS.md tables from the reports scripts/bench-scenarios.sh wrote.

    scripts/bench-tables.py OUT_DIR

OUT_DIR holds SCENARIO-TARGET/report.json (black-friday, steady) and
tp1/, tp2/, tp3/ with throughput-TARGET/report.json.
"""
import json
import os
import statistics
import sys

out = sys.argv[1]
TARGETS = ["tokens", "single-writer", "global-consensus", "redis", "redis-nopersist", "postgres"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def ms(us):
    return f"{us / 1000:.1f}" if us < 100_000 else f"{us / 1000:.0f}"


def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f} %"


def window_of(d, kind):
    """Per region, the latency of the first applied window of `kind`, and OK reserves/s in it."""
    marks = d["windows"]
    out = {}
    for w in d.get("window_latency", []):
        if marks[w["window"]]["kind"] == kind and w["region"] not in out:
            rows = [x for x in d["timeline"][w["region"]] if w["from_s"] <= x["t_s"] < w["to_s"]]
            ok = sum(x["ok"][0] for x in rows) / max(1, w["to_s"] - w["from_s"])
            out[w["region"]] = (w, ok)
    return out


def latency_table(scenario):
    print(f"\n#### {scenario}\n")
    kind = {"black-friday": "spike", "partition": "partition"}.get(scenario)
    spike = kind is not None
    head = "| target | region | reserves/s | p50 ms | p99 ms | p99.9 ms | max ms |"
    if spike:
        head += f" {kind}: reserves/s | OK/s | p50 ms | p99 ms | p99.9 ms |"
    head += " local hit |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    totals = []
    for t in TARGETS + (["tokens-take_half"] if spike else []):
        d = load(os.path.join(out, f"{scenario}-{t}", "report.json"))
        if d is None:
            continue
        windows = window_of(d, kind) if spike else {}
        for r in d["regions"]:
            row = (f"| {t} | {r['region']} | {r['reserves_per_s']:.0f} | {ms(r['reserve']['p50_us'])} | "
                   f"{ms(r['reserve']['p99_us'])} | {ms(r['reserve']['p999_us'])} | {ms(r['reserve']['max_us'])} |")
            if spike:
                found = windows.get(r["region"])
                if found:
                    w, ok = found
                    row += (f" {w['reserves_per_s']:.0f} | {ok:.0f} | {ms(w['reserve']['p50_us'])} | "
                            f"{ms(w['reserve']['p99_us'])} | {ms(w['reserve']['p999_us'])} |")
                else:
                    row += " | | | | |"
            row += f" {pct(r['local_hit_ratio'])} |"
            print(row)
        totals.append((t, d["totals"]))
    print("\n| target | oversell (units) | sold / stocked | sell-through | audit balanced | settled = confirmed | stranded max | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for t, x in totals:
        # single-writer and global-consensus have no ledger: nothing settles.
        settled = "n/a" if t in ("single-writer", "global-consensus") else ("yes" if x["settled_matches_confirmed"] else "NO")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(x["errors"].items())) or "none"
        print(f"| {t} | {x['oversell_units']} | {x['sold']} / {x['stocked']} | {pct(x['sell_through'])} | "
              f"{'yes' if x['audit_balanced'] else 'NO'} | {settled} | "
              f"{x['stranded_max']} | {errors} |")


def throughput_table():
    names = {"region": "Reservoir, one region (3 nodes)", "redis": "Redis, appendfsync always",
             "redis-nopersist": "Redis, no persistence", "postgres": "PostgreSQL, synchronous commit"}
    rounds = sorted(x for x in os.listdir(out) if x.startswith("tp"))
    if not rounds:
        return
    print("\n#### throughput (OK reserves/s, 64 closed-loop clients)\n")
    print("| target | " + " | ".join(f"round {r[2:]}" for r in rounds) + " | median | p50 / p99 ms at the median run |")
    print("|---|" + "---|" * (len(rounds) + 2))
    medians = {}
    for t in names:
        figures = []
        for rd in rounds:
            d = load(os.path.join(out, rd, f"throughput-{t}", "report.json"))
            if d:
                r = d["regions"][0]
                figures.append((r["reserves_ok_per_s"], r["reserve_ok"]["p50_us"], r["reserve_ok"]["p99_us"]))
        if not figures:
            continue
        med = statistics.median(f[0] for f in figures)
        at = min(figures, key=lambda f: abs(f[0] - med))
        medians[t] = med
        cells = " | ".join(f"{f[0]:,.0f}" for f in figures)
        print(f"| {names[t]} | {cells} | **{med:,.0f}** | {ms(at[1])} / {ms(at[2])} |")
    if "region" in medians:
        print()
        for base in ["redis", "redis-nopersist", "postgres"]:
            if base in medians:
                print(f"- Reservoir region / {names[base]}: {medians['region'] / medians[base]:.2f}x")


for scenario in ["black-friday", "steady", "partition"]:
    # (a run kept aside, e.g. black-friday-global-consensus-slots4, is not listed)
    latency_table(scenario)
throughput_table()
