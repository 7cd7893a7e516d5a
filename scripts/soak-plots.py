#!/usr/bin/env python3
"""Copies the server charts of a load-test report (report.html's "Servers"
section: latency per second with snapshot markers, live holds, RSS per node)
into SVG files, for BENCHMARKS.md:

    scripts/soak-plots.py OUT/soak-region/report.html docs/bench/soak-after

writes docs/bench/soak-after-latency.svg, -holds.svg and -rss.svg.
"""
import sys

NAMES = ["latency", "holds", "rss"]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    html = open(sys.argv[1], encoding="utf-8").read()
    start = html.find(">Servers<")
    if start < 0:
        print(f"{sys.argv[1]} has no Servers section (not a Reservoir run?)", file=sys.stderr)
        return 1
    pos = start
    for name in NAMES:
        s = html.find("<svg", pos)
        if s < 0:
            print(f"{sys.argv[1]}: no chart for {name}", file=sys.stderr)
            return 1
        e = html.index("</svg>", s) + len("</svg>")
        with open(f"{sys.argv[2]}-{name}.svg", "w", encoding="utf-8") as out:
            out.write(html[s:e] + "\n")
        pos = e
    return 0


if __name__ == "__main__":
    sys.exit(main())
