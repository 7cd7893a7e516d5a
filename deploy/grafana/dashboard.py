#!/usr/bin/env python3
"""Writes the Reservoir Grafana dashboard (deploy/grafana/reservoir-dashboard.json).

    python3 deploy/grafana/dashboard.py > deploy/grafana/reservoir-dashboard.json

Every query reads the metrics a node exports (node/src/server/telemetry.rs,
CATALOG), with the `region` label the scrape config adds
(deploy/prometheus/prometheus.yml); `cargo test -p reservoir-tests --test
cluster dashboard` checks that every metric named here exists on a real
cluster. Series only the ledger leader keeps current (settlement lag, the
audit) are taken from the node that leads the ledger group now.
"""

import json

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SEL = 'region=~"$region"'
LEDGER_LEADER = 'and on (instance) (reservoir_raft_is_leader{group="ledger"} == 1)'


class Layout:
    """Places panels left to right, 24 columns wide, rows of equal height."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.next_id = 1

    def row(self, title):
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def panel(self, title, targets, unit="short", w=8, kind="timeseries", description="", **extra):
        if self.x + w > 24:
            self.x = 0
            self.y += 8
        panel = {
            "type": kind,
            "id": self._id(),
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": 8, "w": w, "x": self.x, "y": self.y},
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        }
        panel.update(extra)
        self.panels.append(panel)
        self.x += w

    def _id(self):
        self.next_id += 1
        return self.next_id - 1


def quantile(q, metric, by, selector):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def build():
    d = Layout()

    d.row("Reserves")
    reserve = f'rpc="reserve", plane="client", {SEL}'
    d.panel("Reserve rate by region", [
        (f"sum by (region) (rate(reservoir_requests_total{{{reserve}}}[{RATE}]))", "{{region}}"),
    ], unit="reqps", description="Reserve calls clients made, by the region of the node they called (forwarded calls counted once).")
    d.panel("Reserve latency by region", [
        (quantile(0.5, "reservoir_request_seconds", "region", reserve), "p50 {{region}}"),
        (quantile(0.99, "reservoir_request_seconds", "region", reserve), "p99 {{region}}"),
    ], unit="s", description="Time a node took to answer a reserve, forwarding included (buckets 0.1 ms to 5 s).")
    d.panel("Local-hit ratio by region", [
        (f'sum by (region) (rate(reservoir_reserve_hits_total{{result="local", {SEL}}}[{RATE}])) '
         f"/ sum by (region) (rate(reservoir_reserve_hits_total{{{SEL}}}[{RATE}]))", "{{region}}"),
    ], unit="percentunit", description="Reserves served from the region's own tokens at once, of all reserves its leader proposed (the rest waited for a top-up or were short).")
    d.panel("Refusals and failures by reason", [
        (f'sum by (outcome) (rate(reservoir_requests_total{{outcome!="ok", plane="client", {SEL}}}[{RATE}]))', "{{outcome}}"),
        (f"sum by (reason) (rate(reservoir_refused_total{{{SEL}}}[{RATE}]))", "refused before running: {{reason}}"),
    ], unit="reqps", w=12, description="Calls that did not succeed, by the reason a client reads (INSUFFICIENT_STOCK, NO_LEADER, OVERLOADED, ...), and calls refused before they ran (authentication, peer policy).")
    d.panel("Calls by method", [
        (f'sum by (rpc) (rate(reservoir_requests_total{{plane="client", {SEL}}}[{RATE}]))', "{{rpc}}"),
        (f'sum(rate(reservoir_requests_total{{plane="peer", {SEL}}}[{RATE}]))', "forwarded to a leader"),
    ], unit="reqps", w=12)

    d.row("Tokens, transfers and settlement")
    d.panel("Tokens by region", [
        (f"max by (region, kind) (sum by (region, instance, kind) (reservoir_bucket_tokens{{{SEL}}}))", "{{region}} {{kind}}"),
    ], description="A region's available, held and confirmed tokens over every SKU (each node holds a replica; the most any node reports).")
    d.panel("Ledger books", [
        ("max by (kind) (reservoir_ledger_tokens)", "{{kind}}"),
        ("max(reservoir_transfers_in_flight)", "transfers in flight"),
    ], description="Over every SKU: units ever stocked, in the ledger's pool (in no region), sold and settled; transfers begun and not completed.")
    d.panel("Transfers and settlement", [
        (f"sum by (kind) (rate(reservoir_transfers_total[{RATE}]))", "{{kind}}s begun"),
        (f"sum by (region) (rate(reservoir_settled_entries_total[{RATE}]))", "settled from {{region}}"),
        (f"sum(rate(reservoir_topup_requests_total{{{SEL}}}[{RATE}]))", "top-ups asked"),
    ], unit="ops", description="Grants and revokes the ledger leader began, sales it settled per region, top-ups regions asked for.")
    d.panel("Settlement lag", [
        (f"max by (region) (reservoir_settlement_lag_entries {LEDGER_LEADER})", "entries {{region}}"),
        (f"max by (region) (reservoir_settlement_lag_seconds {LEDGER_LEADER})", "oldest (s) {{region}}"),
    ], description="Confirmed sales not yet settled into the ledger, and the age of the oldest, as the ledger leader last saw each region.")
    d.panel("Audit", [
        (f"max(reservoir_audit_drift_units {LEDGER_LEADER})", "drift (units, must be 0)"),
        (f"max(reservoir_audit_balanced {LEDGER_LEADER})", "balanced"),
        (f"max(reservoir_audit_missing_regions {LEDGER_LEADER})", "regions unreachable"),
    ], description="The ledger leader's last conservation audit.")
    d.panel("Regions failing in rounds", [
        (f"max by (region) (reservoir_round_region_failing {LEDGER_LEADER})", "{{region}}"),
        (f"sum by (region, reason) (rate(reservoir_round_region_failures_total[{RATE}]))", "{{region}} {{reason}}"),
    ], description="A region whose part of the ledger's rounds fails (unreachable, overloaded) is left out of the plan.")
    d.panel("Holds and outbox", [
        (f"max by (region) (reservoir_holds{{{SEL}}})", "holds {{region}}"),
        (f"max by (region) (reservoir_outbox_entries{{{SEL}}})", "outbox {{region}}"),
        (f"sum by (region) (rate(reservoir_expired_total{{{SEL}}}[{RATE}]))", "expired/s {{region}}"),
    ])

    d.row("Raft")
    d.panel("Leader by group", [
        (f"max by (group, instance) (reservoir_raft_is_leader{{{SEL}}}) == 1", "{{group}}: {{instance}}"),
    ], description="Which node leads each group (a region group, or the ledger).")
    d.panel("Term by group", [
        (f"max by (group) (reservoir_raft_term{{{SEL}}})", "{{group}}"),
    ], description="A term that climbs means elections.")
    d.panel("Commit latency by group", [
        (quantile(0.5, "reservoir_raft_commit_seconds", "group", SEL), "p50 {{group}}"),
        (quantile(0.99, "reservoir_raft_commit_seconds", "group", SEL), "p99 {{group}}"),
    ], unit="s", description="From proposing a write to its outcome, on the node that proposed it.")
    d.panel("Commands per log entry", [
        (quantile(0.5, "reservoir_raft_batch_commands", "group", SEL), "p50 {{group}}"),
        (quantile(0.99, "reservoir_raft_batch_commands", "group", SEL), "p99 {{group}}"),
        (f"sum by (group) (rate(reservoir_raft_batch_commands_sum{{{SEL}}}[{RATE}])) / "
         f"sum by (group) (rate(reservoir_raft_batch_commands_count{{{SEL}}}[{RATE}]))", "mean {{group}}"),
    ], description="Group commit: commands batched into one log entry (buckets 1 to 512).")
    d.panel("Log flush latency", [
        (quantile(0.99, "reservoir_raft_flush_seconds", "instance", SEL), "p99 {{instance}}"),
    ], unit="s", description="One fdatasync-ended flush of a node's log store, shared by its groups.")
    d.panel("Proposal queue and timeouts", [
        (f"max by (group) (reservoir_proposal_queue_depth{{{SEL}}})", "queued {{group}}"),
        (f"sum by (group) (rate(reservoir_raft_propose_timeouts_total{{{SEL}}}[{RATE}]))", "propose timeouts {{group}}"),
        (f"sum by (group) (rate(reservoir_raft_batch_timeouts_total{{{SEL}}}[{RATE}]))", "batch timeouts {{group}}"),
    ])
    d.panel("Applied entries by group", [
        (f"max by (group) (deriv(reservoir_raft_applied_index{{{SEL}}}[1m]))", "{{group}}"),
    ], unit="ops")
    d.panel("Apply time", [
        (quantile(0.99, "reservoir_raft_apply_seconds", "group", SEL), "p99 {{group}}"),
    ], unit="s")

    d.row("Nodes")
    d.panel("Ready", [
        (f"reservoir_ready{{{SEL}}}", "{{instance}}"),
        (f'up{{job="reservoir", {SEL}}}', "scraped {{instance}}"),
    ], description="1 while /readyz and gRPC health say ready (0 while not, or draining before a stop).")
    d.panel("Resident memory", [
        (f"reservoir_process_resident_bytes{{{SEL}}}", "{{instance}}"),
    ], unit="bytes")
    d.panel("Builds", [
        (f"count by (version, commit, profile) (reservoir_build_info{{{SEL}}})", "{{version}} {{commit}} {{profile}}"),
    ], description="Nodes per build: more than one line during a rolling upgrade.")
    d.panel("Clock skew", [
        (f"max by (instance, group) (reservoir_clock_skew_ms{{{SEL}}})", "{{instance}} {{group}}"),
    ], unit="ms")
    d.panel("Log lines dropped", [
        (f"sum by (instance) (rate(reservoir_log_lines_dropped_total{{{SEL}}}[{RATE}]))", "{{instance}}"),
    ], description="Lines calls would have logged past the per-second budget.")
    d.panel("Connections refused", [
        (f"sum by (instance, plane) (rate(reservoir_connections_refused_total{{{SEL}}}[{RATE}]))", "{{instance}} {{plane}}"),
    ])

    return {
        "title": "Reservoir",
        "uid": "reservoir-overview",
        "description": "Reserves, tokens, settlement, the audit and Raft across a Reservoir cluster.",
        "tags": ["reservoir"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "utc",
        "annotations": {"list": []},
        "templating": {"list": [
            {
                "name": "datasource", "label": "Prometheus", "type": "datasource",
                "query": "prometheus", "current": {}, "hide": 0,
            },
            {
                "name": "region", "label": "Region", "type": "query", "datasource": DS,
                "query": {"query": "label_values(reservoir_build_info, region)", "refId": "region"},
                "definition": "label_values(reservoir_build_info, region)",
                "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0,
            },
        ]},
        "panels": d.panels,
    }


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
