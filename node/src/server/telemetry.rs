//! A node's metrics: the Prometheus recorder (`/metrics` renders it), the
//! catalog of every metric the node exports ([`CATALOG`]), described at
//! startup and, where the label values are known then, registered at zero
//! so a fresh node already shows them; the gauges sampled at each scrape;
//! and the bound on per-SKU series ([`SkuLabels`], `[metrics]` in the
//! config).
//!
//! Labels: every Raft metric has `group` (the region group's name, or
//! `ledger`), except `reservoir_raft_flush_seconds`, which is the node's
//! (one flusher serves every group on the node). Which region and node a
//! series comes from is the scraper's to add (`deploy/prometheus`).
//!
//! Caveats: a gauge that only a leader sets (settlement lag, the audit)
//! keeps its last value on a node that has lost the lead; dashboards and
//! alerts select the ledger leader's series
//! (`and on (instance) reservoir_raft_is_leader{group="ledger"} == 1`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

use crate::server::ledger::Step;
use crate::server::node::Node;
use reservoir_raft::Role;

/// How often the recorder folds recorded histogram samples into its buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Buckets of every histogram in seconds: 0.1 ms to 5 s.
pub const SECONDS_BUCKETS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of `reservoir_raft_batch_commands`: powers of two up to the most
/// commands one log entry holds ([`reservoir_raft::group::BATCH_COMMANDS_MAX`]).
pub const BATCH_COMMANDS_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Default of `[metrics] sku_labels`.
pub const SKU_LABELS_DEFAULT: usize = 100;
/// Most SKUs a config may give their own series.
pub const SKU_LABELS_LIMIT: usize = 10_000;
/// The `sku` label of the series that sums every SKU without one of its
/// own. Not a valid SKU (`[A-Za-z0-9._:-]+`), so it names no real one.
pub const OTHER_SKUS: &str = "(other)";
/// Version of this build, as `reservoir_build_info` shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this build was made from, when the build said
/// (`RESERVOIR_COMMIT` in the environment of `cargo build`).
pub const COMMIT: &str = match option_env!("RESERVOIR_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// What a node exports per SKU (`[metrics]` in its config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most SKUs with series of their own (`reservoir_bucket_tokens{sku}`);
    /// every other SKU is summed into `sku="(other)"`. SKUs get theirs in
    /// the order this node first sees them at a scrape (by name within one
    /// scrape), after `skus`, and keep it while the node runs. 0: every SKU
    /// in `(other)`.
    pub sku_labels: usize,
    /// SKUs that get their own series first (the hot ones a dashboard
    /// follows); at most `sku_labels` of them.
    pub skus: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            sku_labels: SKU_LABELS_DEFAULT,
            skus: Vec::new(),
        }
    }
}

impl MetricsConfig {
    /// Checks the bounds; what is wrong if not.
    pub fn check(&self) -> Result<(), String> {
        if self.sku_labels > SKU_LABELS_LIMIT {
            return Err(format!("sku_labels must be at most {SKU_LABELS_LIMIT}"));
        }
        if self.skus.len() > self.sku_labels {
            return Err(format!(
                "skus lists {} SKUs, more than sku_labels ({})",
                self.skus.len(),
                self.sku_labels
            ));
        }
        for sku in &self.skus {
            reservoir_tokens::limits::check_sku(sku).map_err(|e| format!("skus: {sku:?}: {e}"))?;
        }
        Ok(())
    }
}

/// The kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
    /// A distribution in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Every metric a node exports: name, kind, labels and what it means.
pub const CATALOG: &[(&str, Kind, &str)] = &[
    // The node.
    (
        "reservoir_build_info",
        Kind::Gauge,
        "1, labelled with this build's version, commit and profile",
    ),
    (
        "reservoir_ready",
        Kind::Gauge,
        "1 while /readyz and gRPC health say ready, 0 while not or draining",
    ),
    (
        "reservoir_process_resident_bytes",
        Kind::Gauge,
        "the node's resident set size",
    ),
    (
        "reservoir_log_lines_dropped_total",
        Kind::Counter,
        "lines calls would have logged past the per-second budget",
    ),
    // Calls.
    (
        "reservoir_requests_total",
        Kind::Counter,
        "Inventory and Admin calls by rpc, outcome (ok or the reason) and plane (client, or peer: forwarded to this leader)",
    ),
    (
        "reservoir_request_seconds",
        Kind::Histogram,
        "latency of Inventory and Admin calls by rpc, outcome and plane",
    ),
    (
        "reservoir_batch_reserves_total",
        Kind::Counter,
        "reserves of ReserveBatch calls by outcome",
    ),
    (
        "reservoir_reserve_hits_total",
        Kind::Counter,
        "reserves proposed on this leader by result: local (the region's own tokens), after_topup (after waiting for a top-up), short (refused for want of tokens)",
    ),
    (
        "reservoir_reserves_waited_total",
        Kind::Counter,
        "reserves that waited for a top-up",
    ),
    (
        "reservoir_topup_requests_total",
        Kind::Counter,
        "top-ups this node asked the ledger for",
    ),
    (
        "reservoir_expired_total",
        Kind::Counter,
        "holds expired by this leader",
    ),
    (
        "reservoir_background_propose_timeouts_total",
        Kind::Counter,
        "background proposals (expiry, retention) that timed out, by task",
    ),
    (
        "reservoir_refused_total",
        Kind::Counter,
        "calls refused before they ran, by plane and reason",
    ),
    (
        "reservoir_connections_refused_total",
        Kind::Counter,
        "connections closed at once: too many from one address, by plane",
    ),
    // The region's state.
    ("reservoir_holds", Kind::Gauge, "holds in the region's state"),
    (
        "reservoir_reservations_kept",
        Kind::Gauge,
        "reservations the region's state remembers",
    ),
    (
        "reservoir_outbox_entries",
        Kind::Gauge,
        "confirmed sales not yet settled with the ledger",
    ),
    (
        "reservoir_bucket_tokens",
        Kind::Gauge,
        "the region's tokens by sku (bounded: see [metrics]) and kind (available, held, confirmed)",
    ),
    (
        "reservoir_clock_skew_ms",
        Kind::Gauge,
        "this node's wall clock minus its group's time, by group",
    ),
    (
        "reservoir_clock_skew_warnings_total",
        Kind::Counter,
        "clock skew warnings, by group",
    ),
    // The ledger leader's loop.
    (
        "reservoir_ledger_tokens",
        Kind::Gauge,
        "the ledger's books over every SKU, on its hosts, by kind: stocked, pool (in no region), settled",
    ),
    (
        "reservoir_transfers_in_flight",
        Kind::Gauge,
        "grants and revokes begun and not completed, on the ledger's hosts",
    ),
    (
        "reservoir_transfers_total",
        Kind::Counter,
        "transfers begun by the ledger leader, by kind (grant, revoke)",
    ),
    (
        "reservoir_settled_entries_total",
        Kind::Counter,
        "outbox entries settled into the ledger, by region",
    ),
    (
        "reservoir_settlement_lag_entries",
        Kind::Gauge,
        "a region's confirmed sales not yet settled, as the ledger leader last saw them",
    ),
    (
        "reservoir_settlement_lag_seconds",
        Kind::Gauge,
        "age of a region's oldest sale not yet settled, as the ledger leader last saw it",
    ),
    (
        "reservoir_rebalance_rounds_failed_total",
        Kind::Counter,
        "rebalance rounds that ended for every region",
    ),
    (
        "reservoir_round_region_failures_total",
        Kind::Counter,
        "a region's part of a round failed, by region and reason",
    ),
    (
        "reservoir_round_region_failing",
        Kind::Gauge,
        "1 while a region's part of the rounds fails, by region",
    ),
    (
        "reservoir_audit_drift_units",
        Kind::Gauge,
        "units the last audit could not account for (must be 0)",
    ),
    (
        "reservoir_audit_balanced",
        Kind::Gauge,
        "1 when the last audit balanced",
    ),
    (
        "reservoir_audit_missing_regions",
        Kind::Gauge,
        "regions the last audit could not reach",
    ),
    // Raft, by group.
    (
        "reservoir_raft_term",
        Kind::Gauge,
        "the group's current term on this node",
    ),
    (
        "reservoir_raft_is_leader",
        Kind::Gauge,
        "1 when this node leads the group",
    ),
    (
        "reservoir_raft_applied_index",
        Kind::Gauge,
        "the last log index this node applied",
    ),
    (
        "reservoir_proposal_queue_depth",
        Kind::Gauge,
        "proposals waiting to be batched",
    ),
    (
        "reservoir_raft_commit_seconds",
        Kind::Histogram,
        "time from proposing a write to its outcome",
    ),
    (
        "reservoir_raft_batch_commands",
        Kind::Histogram,
        "commands per log entry (group commit)",
    ),
    (
        "reservoir_raft_apply_seconds",
        Kind::Histogram,
        "time to apply one log entry",
    ),
    (
        "reservoir_raft_flush_seconds",
        Kind::Histogram,
        "time of one flush of the node's log store (every group's)",
    ),
    (
        "reservoir_raft_propose_timeouts_total",
        Kind::Counter,
        "proposals that got no outcome in time",
    ),
    (
        "reservoir_raft_read_timeouts_total",
        Kind::Counter,
        "linearizable reads that got no answer in time",
    ),
    (
        "reservoir_raft_read_quorum_retries_total",
        Kind::Counter,
        "leadership checks of linearizable reads asked again after too few replies in time",
    ),
    (
        "reservoir_raft_batch_timeouts_total",
        Kind::Counter,
        "batches whose write got no outcome in time",
    ),
    (
        "reservoir_raft_campaigns_total",
        Kind::Counter,
        "elections this node started early, by reason",
    ),
    (
        "reservoir_raft_snapshots_built_total",
        Kind::Counter,
        "snapshots this node built",
    ),
    (
        "reservoir_raft_snapshot_build_seconds",
        Kind::Histogram,
        "time to build a snapshot",
    ),
    (
        "reservoir_raft_snapshot_bytes",
        Kind::Gauge,
        "size of the last snapshot built",
    ),
    (
        "reservoir_raft_snapshot_failures_total",
        Kind::Counter,
        "snapshot builds that failed (skipped)",
    ),
    (
        "reservoir_raft_snapshots_installed_total",
        Kind::Counter,
        "snapshots installed from the leader",
    ),
    (
        "reservoir_raft_snapshot_install_seconds",
        Kind::Histogram,
        "time to install a snapshot",
    ),
];

/// Installs the process-wide recorder with the node's buckets, describes
/// every metric of [`CATALOG`], sets `reservoir_build_info`, and starts the
/// upkeep task on the current runtime; returns the handle that renders it.
///
/// The recorder keeps every histogram sample until upkeep (or a scrape)
/// folds it into buckets; without a task doing it, a node that nobody
/// scrapes grew by every sample it recorded (~0.25 MB/s on a region leader
/// at 5,000 reserves/s, seen in the soak).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("reservoir_raft_batch_commands".into()),
                &BATCH_COMMANDS_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    describe();
    metrics::gauge!(
        "reservoir_build_info",
        "version" => VERSION,
        "commit" => COMMIT,
        "profile" => if cfg!(debug_assertions) { "debug" } else { "release" },
    )
    .set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Gives every metric of [`CATALOG`] its `# HELP` line.
fn describe() {
    for &(name, kind, help) in CATALOG {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Registers at zero the series whose labels are known at startup, so a
/// fresh node shows them (a dashboard's panels and `rate()` have a series
/// from the first scrape): the node's counters, each hosted group's Raft
/// series, and on ledger hosts the ledger loop's series for every region.
pub fn register(node: &Node) {
    for name in [
        "reservoir_expired_total",
        "reservoir_topup_requests_total",
        "reservoir_reserves_waited_total",
        "reservoir_log_lines_dropped_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for result in ["local", "after_topup", "short"] {
        metrics::counter!("reservoir_reserve_hits_total", "result" => result).absolute(0);
    }
    metrics::gauge!("reservoir_ready").set(0.0);
    for plane in ["client", "peer"] {
        metrics::counter!("reservoir_connections_refused_total", "plane" => plane).absolute(0);
    }
    for reason in [
        "MISSING_CREDENTIALS",
        "INVALID_CREDENTIALS",
        "ROLE_NOT_ALLOWED",
        "OVERLOADED",
    ] {
        metrics::counter!("reservoir_refused_total", "plane" => "client", "reason" => reason).absolute(0);
    }
    for reason in ["PEER_NOT_AUTHENTICATED", "PEER_NOT_ALLOWED"] {
        metrics::counter!("reservoir_refused_total", "plane" => "peer", "reason" => reason).absolute(0);
    }
    // Registering is enough for a histogram to show (its buckets at 0).
    let _ = metrics::histogram!("reservoir_raft_flush_seconds");
    let mut groups = vec![node.region().to_string()];
    if let Some(host) = node.ledger() {
        groups.push(host.group().name().to_string());
        metrics::counter!("reservoir_rebalance_rounds_failed_total").absolute(0);
        for kind in ["grant", "revoke"] {
            metrics::counter!("reservoir_transfers_total", "kind" => kind).absolute(0);
        }
        for region in node.control().regions() {
            metrics::counter!("reservoir_settled_entries_total", "region" => region.to_string()).absolute(0);
            for step in ROUND_STEPS {
                metrics::counter!(
                    "reservoir_round_region_failures_total",
                    "region" => region.to_string(),
                    "reason" => step.reason()
                )
                .absolute(0);
            }
        }
    }
    for group in groups {
        for name in [
            "reservoir_raft_propose_timeouts_total",
            "reservoir_raft_read_timeouts_total",
            "reservoir_raft_read_quorum_retries_total",
            "reservoir_raft_batch_timeouts_total",
            "reservoir_raft_snapshots_built_total",
            "reservoir_raft_snapshots_installed_total",
            "reservoir_raft_snapshot_failures_total",
        ] {
            metrics::counter!(name, "group" => group.clone()).absolute(0);
        }
        for name in [
            "reservoir_raft_commit_seconds",
            "reservoir_raft_batch_commands",
            "reservoir_raft_apply_seconds",
        ] {
            let _ = metrics::histogram!(name, "group" => group.clone());
        }
    }
}

/// Sets the gauges sampled at scrape time: each hosted group's Raft
/// position, the region's state, per-SKU tokens within `skus`' bound, and
/// the process's memory.
pub fn sample(node: &Node, skus: &SkuLabels) {
    sample_group(node.group());
    if let Some(host) = node.ledger() {
        sample_group(host.group());
        let _ = host.group().read(|ledger| {
            let mut books = [0u64; 3];
            for sku in ledger.skus().values() {
                for (sum, units) in books
                    .iter_mut()
                    .zip([sku.stocked_total, sku.pool, sku.settled_total])
                {
                    *sum = sum.saturating_add(units);
                }
            }
            for (kind, units) in ["stocked", "pool", "settled"].into_iter().zip(books) {
                metrics::gauge!("reservoir_ledger_tokens", "kind" => kind).set(units as f64);
            }
            metrics::gauge!("reservoir_transfers_in_flight").set(ledger.transfers().len() as f64);
        });
    }
    if let Some(rss) = rss_bytes() {
        metrics::gauge!("reservoir_process_resident_bytes").set(rss as f64);
    }
    let _ = node.group().read(|state| {
        metrics::gauge!("reservoir_holds").set(state.holds() as f64);
        metrics::gauge!("reservoir_reservations_kept").set(state.reservations_kept() as f64);
        metrics::gauge!("reservoir_outbox_entries")
            .set((state.last_outbox_seq() - state.settled_up_to()) as f64);
        let mut other = [0u64; 3];
        let mut any_other = false;
        for (sku, b) in state.buckets() {
            let counts = [b.available, b.held, b.confirmed];
            if skus.has_series(sku) {
                for (kind, count) in TOKEN_KINDS.iter().zip(counts) {
                    metrics::gauge!("reservoir_bucket_tokens", "sku" => sku.clone(), "kind" => *kind)
                        .set(count as f64);
                }
            } else {
                any_other = true;
                for (sum, count) in other.iter_mut().zip(counts) {
                    *sum = sum.saturating_add(count);
                }
            }
        }
        if skus.other_used(any_other) {
            for (kind, sum) in TOKEN_KINDS.iter().zip(other) {
                metrics::gauge!("reservoir_bucket_tokens", "sku" => OTHER_SKUS, "kind" => *kind)
                    .set(sum as f64);
            }
        }
    });
}

/// Every step of a region's part of a round (the `reason` label of
/// `reservoir_round_region_failures_total`).
const ROUND_STEPS: [Step; 5] = [
    Step::Report,
    Step::Transfer,
    Step::Settle,
    Step::SettledAck,
    Step::Begin,
];

/// The `kind` labels of `reservoir_bucket_tokens`, in bucket order.
const TOKEN_KINDS: [&str; 3] = ["available", "held", "confirmed"];

/// One group's Raft gauges, labelled with its name.
fn sample_group<SM: reservoir_raft::GroupMachine>(group: &reservoir_raft::Group<SM>) {
    let status = group.status();
    let name = group.name().to_string();
    metrics::gauge!("reservoir_proposal_queue_depth", "group" => name.clone())
        .set(group.queue_depth() as f64);
    metrics::gauge!("reservoir_raft_term", "group" => name.clone()).set(status.term as f64);
    metrics::gauge!("reservoir_raft_is_leader", "group" => name.clone())
        .set(if status.role == Role::Leader { 1.0 } else { 0.0 });
    metrics::gauge!("reservoir_raft_applied_index", "group" => name)
        .set(status.applied_index.unwrap_or(0) as f64);
}

/// Which SKUs have series of their own (`[metrics]`): at most `sku_labels`,
/// the configured ones first, then each SKU as first seen, for as long as
/// the node runs (a series never moves to `(other)` and back).
pub struct SkuLabels {
    max: usize,
    chosen: Mutex<Chosen>,
}

struct Chosen {
    skus: BTreeSet<String>,
    /// Some SKU has been summed into `(other)`: its series is kept set.
    other: bool,
}

impl SkuLabels {
    /// The bound `config` gives.
    pub fn new(config: &MetricsConfig) -> SkuLabels {
        let skus: BTreeSet<String> = config.skus.iter().take(config.sku_labels).cloned().collect();
        SkuLabels {
            max: config.sku_labels,
            chosen: Mutex::new(Chosen { skus, other: false }),
        }
    }

    /// True when `sku` has a series of its own (given one now if it had none
    /// and the bound allows).
    pub fn has_series(&self, sku: &str) -> bool {
        let mut chosen = self.lock();
        if chosen.skus.contains(sku) {
            return true;
        }
        if chosen.skus.len() < self.max {
            chosen.skus.insert(sku.to_string());
            return true;
        }
        false
    }

    /// Whether the `(other)` series is set at this scrape: from the first
    /// scrape that summed a SKU into it (`now`), on.
    pub fn other_used(&self, now: bool) -> bool {
        let mut chosen = self.lock();
        chosen.other |= now;
        chosen.other
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chosen> {
        self.chosen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configured SKUs come first, then SKUs as first seen up to the bound;
    /// a SKU keeps its series, the rest go to `(other)` from then on.
    #[test]
    fn sku_series_are_bounded_and_sticky() {
        let skus = SkuLabels::new(&MetricsConfig {
            sku_labels: 2,
            skus: vec!["hot".into()],
        });
        assert!(!skus.other_used(false));
        assert!(skus.has_series("a"), "a free slot");
        assert!(!skus.has_series("b"), "the bound is reached");
        assert!(skus.has_series("hot"), "configured first");
        assert!(skus.has_series("a"), "kept");
        assert!(skus.other_used(true));
        assert!(skus.other_used(false), "(other) stays set once used");
        let none = SkuLabels::new(&MetricsConfig {
            sku_labels: 0,
            skus: Vec::new(),
        });
        assert!(!none.has_series("a"));
    }

    /// The bounds of `[metrics]` are checked, naming what is wrong.
    #[test]
    fn metrics_config_is_checked() {
        MetricsConfig::default().check().unwrap();
        let bad = |sku_labels, skus: &[&str]| {
            MetricsConfig {
                sku_labels,
                skus: skus.iter().map(|s| s.to_string()).collect(),
            }
            .check()
            .unwrap_err()
        };
        assert!(bad(SKU_LABELS_LIMIT + 1, &[]).contains("sku_labels"));
        assert!(bad(1, &["a", "b"]).contains("more than sku_labels"));
        assert!(bad(2, &["no spaces"]).contains("skus"));
    }

    /// The catalog names each metric once, every name Prometheus-valid and
    /// Reservoir's, counters ending in `_total` and nothing else does.
    #[test]
    fn the_catalog_is_well_formed() {
        let mut seen = BTreeSet::new();
        for &(name, kind, help) in CATALOG {
            assert!(seen.insert(name), "{name} twice");
            assert!(name.starts_with("reservoir_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.is_empty(), "{name}");
        }
    }
}
