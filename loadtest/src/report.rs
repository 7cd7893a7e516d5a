//! The report: every figure of a run, as JSON, as a terminal summary, and
//! (in [`crate::html`]) as a self-contained HTML page.
//!
//! Definitions used throughout:
//! - *sold* of a SKU: the larger of what the tester saw confirmed and what
//!   the target's books say was sold (Reservoir: settled plus confirmed not
//!   yet settled), so neither side can hide an oversell;
//! - *oversell*: `max(0, sold − stocked)`, per SKU and summed;
//! - *demand*: units asked for by buyer (reserve → confirm) sessions;
//! - *sell-through*: `Σ sold / Σ min(demand, stocked)` (units sold over the
//!   demand for units that existed);
//! - *local-hit ratio*: local hits / (OK reserves + INSUFFICIENT_STOCK
//!   answers given while the tester's books said stock existed globally).
//!   With `max_wait_ms = 0` (the default) every OK reserve is a local hit:
//!   Reservoir answered it from the region's own tokens without waiting for a
//!   top-up. With `max_wait_ms > 0`, an OK reserve is a local hit only when
//!   answered within `local_threshold_ms` of being sent;
//! - *servers* (Reservoir): each node's `/status` once a second (see
//!   [`crate::servers`]); RSS first / peak / last over every sample, and
//!   min / max over the samples of the last half of the load
//!   (`load_s / 2 ..= load_s`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::acknowledged::AckReport;
use crate::metrics::{LatencySummary, OUTCOME_OK, Op, RegionCounters, SecondRow, merge};
use crate::runner::{Mark, RunOutput};
use crate::scenario::Scenario;
use crate::servers::{SNAPSHOT_EVENTS_SHOWN_MAX, ServersReport};
use crate::target::ServerView;

/// `max(0, sold − stocked)`.
pub fn oversell(sold: u64, stocked: u64) -> u64 {
    sold.saturating_sub(stocked)
}

/// Units sold over the demand for units that existed; `None` when nothing
/// could have been sold.
pub fn sell_through(sold: u64, demand: u64, stocked: u64) -> Option<f64> {
    let possible = demand.min(stocked);
    (possible > 0).then(|| sold as f64 / possible as f64)
}

/// Local hits over reserves that could have been served locally; `None`
/// when there were none.
pub fn local_hit_ratio(local_hits: u64, remote_hits: u64, local_misses: u64) -> Option<f64> {
    let total = local_hits + remote_hits + local_misses;
    (total > 0).then(|| local_hits as f64 / total as f64)
}

/// One histogram's figures with its labels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyRow {
    /// `reserve`, `confirm` or `release`.
    pub op: Op,
    /// A region, or `all` for the merge over regions.
    pub region: String,
    /// `OK`, a reason, or `all` for the merge over outcomes.
    pub outcome: String,
    /// The figures, from the intended send time.
    #[serde(flatten)]
    pub latency: LatencySummary,
}

/// One region's headline figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionSummary {
    /// The region.
    pub region: String,
    /// Event counters.
    pub counters: RegionCounters,
    /// Reserves answered (any outcome) per second of load.
    pub reserves_per_s: f64,
    /// OK reserves per second of load.
    pub reserves_ok_per_s: f64,
    /// Requests of every operation answered per second of load.
    pub requests_per_s: f64,
    /// The busiest second's answered reserves.
    pub reserves_peak_per_s: u64,
    /// Reserve latency over every answer.
    pub reserve: LatencySummary,
    /// Reserve latency of OK answers.
    pub reserve_ok: LatencySummary,
    /// Errors by reason, every operation.
    pub errors: BTreeMap<String, u64>,
    /// This region's local-hit ratio.
    pub local_hit_ratio: Option<f64>,
}

/// One SKU's reconciliation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkuReport {
    /// The SKU.
    pub sku: String,
    /// Popularity rank.
    pub rank: usize,
    /// Whether it is a hot SKU.
    pub hot: bool,
    /// Units stocked (the target's figure when it has one).
    pub stocked: u64,
    /// Units buyers asked for.
    pub demand: u64,
    /// Units the tester saw confirmed.
    pub confirmed_seen: u64,
    /// Units whose confirm had no answer.
    pub confirmed_unknown: u64,
    /// Units sold by the target's books.
    pub sold_server: u64,
    /// Units settled at the system of record.
    pub settled: u64,
    /// Units held when the books were read.
    pub held_end: u64,
    /// `max(0, sold − stocked)`.
    pub oversell: u64,
    /// `sold / min(demand, stocked)`.
    pub sell_through: Option<f64>,
    /// Stranded tokens when the books were read.
    pub stranded: u64,
}

/// The run's totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Totals {
    /// Units stocked.
    pub stocked: u64,
    /// Units buyers asked for.
    pub demand: u64,
    /// Units sold (per-SKU larger of tester and target).
    pub sold: u64,
    /// Σ oversell.
    pub oversell_units: u64,
    /// SKUs oversold.
    pub oversell_skus: u64,
    /// Σ sold / Σ min(demand, stocked).
    pub sell_through: Option<f64>,
    /// Over every region.
    pub local_hit_ratio: Option<f64>,
    /// How local hits were counted.
    pub local_hit_definition: String,
    /// The target's own books balance (Reservoir: the audit).
    pub audit_balanced: bool,
    /// Settlement caught up and holds drained within the deadline.
    pub settled_caught_up: bool,
    /// Every SKU's settled units match what the tester saw confirmed
    /// (within the units of unknown outcome).
    pub settled_matches_confirmed: bool,
    /// Most stranded tokens seen during the run (Reservoir).
    pub stranded_max: u64,
    /// Stranded tokens when the books were read.
    pub stranded_end: u64,
    /// Answers of every operation, every region.
    pub requests: u64,
    /// Sessions that arrived.
    pub sessions: u64,
    /// Late requests.
    pub late: u64,
    /// Dropped requests and sessions.
    pub dropped: u64,
    /// Retries.
    pub retries: u64,
    /// Errors by reason.
    pub errors: BTreeMap<String, u64>,
    /// Requests that failed with an error a retry would not change, by
    /// reason, other than the refusals the workload expects (stock ran out,
    /// a hold expired before its confirm).
    pub failed_not_retryable: BTreeMap<String, u64>,
    /// Every acknowledged reservation read back (`--check-acknowledged`).
    pub acknowledged: Option<AckReport>,
}

/// One region's reserve latency during one window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowLatency {
    /// The window's index in `windows`.
    pub window: usize,
    /// The region.
    pub region: String,
    /// First whole second counted.
    pub from_s: u64,
    /// Second after the last one counted.
    pub to_s: u64,
    /// Reserves answered per second in those seconds.
    pub reserves_per_s: f64,
    /// Their latency.
    pub reserve: LatencySummary,
}

/// Reserve latency per (applied window, region): the whole seconds from the
/// window's start (rounded up) to its end (rounded down).
pub fn window_latency(
    marks: &[Mark],
    regions: &[String],
    stats: &[crate::metrics::RegionStats],
) -> Vec<WindowLatency> {
    let mut out = Vec::new();
    for (i, mark) in marks.iter().enumerate().filter(|(_, m)| m.applied) {
        let from_s = mark.start_s.max(0.0).ceil() as u64;
        let to_s = mark.end_s.max(0.0).floor() as u64;
        if to_s <= from_s {
            continue;
        }
        for (name, s) in regions.iter().zip(stats) {
            let end = (to_s as usize).min(s.second_reserves.len());
            let start = (from_s as usize).min(end);
            let h = merge(s.second_reserves[start..end].iter());
            out.push(WindowLatency {
                window: i,
                region: name.clone(),
                from_s,
                to_s,
                reserves_per_s: h.len() as f64 / (to_s - from_s) as f64,
                reserve: LatencySummary::of(&h),
            });
        }
    }
    out
}

/// Everything, as written to `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The scenario as run.
    pub scenario: Scenario,
    /// The target.
    pub target: String,
    /// The seed.
    pub seed: u64,
    /// Unix ms when the load started.
    pub started_unix_ms: u64,
    /// Seconds of load.
    pub load_s: f64,
    /// Windows as they ran.
    pub windows: Vec<Mark>,
    /// Reserve latency (any outcome) in each region during each applied
    /// window, merged exactly from the window's whole seconds.
    pub window_latency: Vec<WindowLatency>,
    /// Per region.
    pub regions: Vec<RegionSummary>,
    /// Totals.
    pub totals: Totals,
    /// Every (op, region, outcome) histogram, plus merges over regions and
    /// over outcomes.
    pub latency: Vec<LatencyRow>,
    /// Per-second rows, per region.
    pub timeline: BTreeMap<String, Vec<SecondRow>>,
    /// `(second, stranded tokens)` samples.
    pub stranded_timeline: Vec<(u64, u64)>,
    /// Each node's `/status` once a second, its RSS figures and the
    /// snapshot events (Reservoir only; `null` for the baselines).
    pub servers: Option<ServersReport>,
    /// Per SKU (every SKU with stock, demand or sales).
    pub skus: Vec<SkuReport>,
    /// The target's books as read, or why they could not be.
    pub server_notes: Vec<String>,
    /// Seconds spent waiting for settlement.
    pub reconcile_waited_s: f64,
    /// Notes on the run.
    pub notes: Vec<String>,
}

impl Report {
    /// Builds the report of a run.
    pub fn build(run: &RunOutput) -> Report {
        let load_s = run.load_s.max(1e-9);
        let mut latency = Vec::new();
        let mut regions = Vec::new();
        let mut totals_errors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut late, mut dropped, mut retries, mut sessions, mut requests) = (0, 0, 0, 0, 0);
        let (mut hits, mut remote, mut misses) = (0, 0, 0);
        for (name, stats) in run.scenario.regions.iter().zip(&run.stats) {
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            for ((op, outcome), h) in &stats.histograms {
                latency.push(LatencyRow {
                    op: *op,
                    region: name.clone(),
                    outcome: outcome.clone(),
                    latency: LatencySummary::of(h),
                });
                requests += h.len();
                if outcome != OUTCOME_OK {
                    *errors.entry(outcome.clone()).or_insert(0) += h.len();
                    *totals_errors.entry(outcome.clone()).or_insert(0) += h.len();
                }
            }
            let reserve_all = merge(
                stats
                    .histograms
                    .iter()
                    .filter(|((op, _), _)| *op == Op::Reserve)
                    .map(|(_, h)| h),
            );
            let reserve_ok = stats
                .histograms
                .get(&(Op::Reserve, OUTCOME_OK.to_string()))
                .map(LatencySummary::of)
                .unwrap_or_default();
            let answered_all: u64 = stats.histograms.values().map(|h| h.len()).sum();
            let c = &stats.counters;
            late += c.late;
            dropped += c.dropped_late + c.dropped_sessions;
            retries += c.retries;
            sessions += c.arrivals;
            hits += c.local_hits;
            remote += c.remote_hits;
            misses += c.local_misses;
            regions.push(RegionSummary {
                region: name.clone(),
                counters: c.clone(),
                reserves_per_s: reserve_all.len() as f64 / load_s,
                reserves_ok_per_s: reserve_ok.count as f64 / load_s,
                requests_per_s: answered_all as f64 / load_s,
                reserves_peak_per_s: stats.timeline.iter().map(|r| r.reserves).max().unwrap_or(0),
                reserve: LatencySummary::of(&reserve_all),
                reserve_ok,
                errors,
                local_hit_ratio: local_hit_ratio(c.local_hits, c.remote_hits, c.local_misses),
            });
        }
        // Merges over regions, per (op, outcome) and per op.
        for op in Op::ALL {
            let mut outcomes: Vec<&String> = run
                .stats
                .iter()
                .flat_map(|s| s.histograms.keys().filter(|(o, _)| *o == op).map(|(_, r)| r))
                .collect();
            outcomes.sort();
            outcomes.dedup();
            for outcome in outcomes {
                let key = (op, outcome.clone());
                let merged = merge(run.stats.iter().filter_map(|s| s.histograms.get(&key)));
                latency.push(LatencyRow {
                    op,
                    region: "all".into(),
                    outcome: outcome.clone(),
                    latency: LatencySummary::of(&merged),
                });
            }
            let all = merge(
                run.stats
                    .iter()
                    .flat_map(|s| s.histograms.iter().filter(|((o, _), _)| *o == op).map(|(_, h)| h)),
            );
            if !all.is_empty() {
                latency.push(LatencyRow {
                    op,
                    region: "all".into(),
                    outcome: "all".into(),
                    latency: LatencySummary::of(&all),
                });
            }
        }

        let empty = ServerView::default();
        let (server, server_notes, waited) = match &run.server {
            Ok(v) => (v, v.notes.clone(), v.waited_s),
            Err(e) => (
                &empty,
                vec![format!("the target's books could not be read: {e}")],
                0.0,
            ),
        };
        let mut skus = Vec::new();
        let (mut stocked_total, mut demand_total, mut sold_total, mut possible_total) = (0, 0, 0, 0);
        let (mut oversell_units, mut oversell_skus) = (0, 0);
        let mut settled_matches = run.server.is_ok();
        for (s, b) in run.catalog.skus.iter().zip(&run.books) {
            let seen = b.confirmed.load(Ordering::Relaxed);
            let unknown = b.unknown.load(Ordering::Relaxed);
            let demand = b.demand.load(Ordering::Relaxed);
            let srv = server.skus.get(&s.sku).cloned().unwrap_or_default();
            let stocked = if run.server.is_ok() && srv.stocked > 0 {
                srv.stocked
            } else {
                s.stock
            };
            let sold = seen.max(srv.sold);
            if run.server.is_ok() && (srv.settled < seen || srv.settled > seen + unknown) {
                settled_matches = false;
            }
            let over = oversell(sold, stocked);
            oversell_units += over;
            oversell_skus += u64::from(over > 0);
            stocked_total += stocked;
            demand_total += demand;
            sold_total += sold;
            possible_total += demand.min(stocked);
            skus.push(SkuReport {
                sku: s.sku.clone(),
                rank: s.rank,
                hot: s.hot,
                stocked,
                demand,
                confirmed_seen: seen,
                confirmed_unknown: unknown,
                sold_server: srv.sold,
                settled: srv.settled,
                held_end: srv.held,
                oversell: over,
                sell_through: sell_through(sold, demand, stocked),
                stranded: srv.stranded,
            });
        }
        let s = &run.scenario.sessions;
        let local_hit_definition = if !run.local_tokens {
            "not counted: the target has no regional tokens (one server, or one group every region \
             reaches across the WAN)"
                .to_string()
        } else if s.reserve_max_wait_ms == 0 {
            "reserves sent with max_wait_ms=0; local hit = OK answer (served from the region's own \
             tokens, no top-up wait); ratio = OK / (OK + INSUFFICIENT_STOCK while the tester's books \
             said stock existed globally)"
                .to_string()
        } else {
            format!(
                "reserves sent with max_wait_ms={}; local hit = OK answered within {} ms of sending; \
                 ratio = local hits / (OK + INSUFFICIENT_STOCK while the tester's books said stock \
                 existed globally)",
                s.reserve_max_wait_ms, s.local_threshold_ms
            )
        };
        let totals = Totals {
            stocked: stocked_total,
            demand: demand_total,
            sold: sold_total,
            oversell_units,
            oversell_skus,
            sell_through: (possible_total > 0).then(|| sold_total as f64 / possible_total as f64),
            local_hit_ratio: local_hit_ratio(hits, remote, misses),
            local_hit_definition,
            audit_balanced: run.server.as_ref().is_ok_and(|v| v.balanced),
            settled_caught_up: run.server.as_ref().is_ok_and(|v| v.settled_caught_up),
            settled_matches_confirmed: settled_matches,
            stranded_max: run.stranded.iter().map(|(_, n)| *n).max().unwrap_or(0),
            stranded_end: server.skus.values().map(|s| s.stranded).sum(),
            requests,
            sessions,
            late,
            dropped,
            retries,
            errors: totals_errors,
            failed_not_retryable: run.failed_not_retryable.clone(),
            acknowledged: run.acknowledged.clone(),
        };
        let timeline = run
            .scenario
            .regions
            .iter()
            .zip(&run.stats)
            .map(|(r, s)| (r.clone(), s.timeline.clone()))
            .collect();
        Report {
            scenario: run.scenario.clone(),
            target: run.target.clone(),
            seed: run.seed,
            started_unix_ms: run.started_unix_ms,
            load_s: run.load_s,
            windows: run.marks.clone(),
            window_latency: window_latency(&run.marks, &run.scenario.regions, &run.stats),
            regions,
            totals,
            latency,
            timeline,
            stranded_timeline: run.stranded.clone(),
            servers: run.servers.as_ref().map(|s| ServersReport::build(s, run.load_s)),
            skus,
            server_notes,
            reconcile_waited_s: waited,
            notes: run.notes.clone(),
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| e.to_string())
    }

    /// Reserve figures per region, a header row first (the terminal summary
    /// and the HTML page show the same table).
    pub fn region_rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![
            [
                "region",
                "sessions",
                "reserve/s",
                "ok/s",
                "peak/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "errors",
                "late",
                "dropped",
                "local hit",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &self.regions {
            rows.push(vec![
                r.region.clone(),
                r.counters.arrivals.to_string(),
                format!("{:.1}", r.reserves_per_s),
                format!("{:.1}", r.reserves_ok_per_s),
                r.reserves_peak_per_s.to_string(),
                ms(r.reserve.p50_us),
                ms(r.reserve.p99_us),
                ms(r.reserve.p999_us),
                ms(r.reserve.max_us),
                r.errors.values().sum::<u64>().to_string(),
                r.counters.late.to_string(),
                (r.counters.dropped_late + r.counters.dropped_sessions).to_string(),
                pct(r.local_hit_ratio),
            ]);
        }
        rows
    }

    /// Reserve latency per (window, region), a header row first.
    pub fn window_rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![
            [
                "window",
                "seconds",
                "region",
                "reserve/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for w in &self.window_latency {
            let mark = &self.windows[w.window];
            rows.push(vec![
                format!("{:?} {}", mark.kind, mark.region.as_deref().unwrap_or("all")),
                format!("{}-{}", w.from_s, w.to_s),
                w.region.clone(),
                format!("{:.1}", w.reserves_per_s),
                ms(w.reserve.p50_us),
                ms(w.reserve.p99_us),
                ms(w.reserve.p999_us),
                ms(w.reserve.max_us),
            ]);
        }
        rows
    }

    /// A readable terminal summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {} — {:.1} s of load, seed {}, baseline {}/s per region",
            self.scenario.name, self.target, self.load_s, self.seed, self.scenario.rate_per_region
        );
        for w in &self.windows {
            let _ = writeln!(
                out,
                "  window {:?} {} {:.1}-{:.1} s: {}",
                w.kind,
                w.region.as_deref().unwrap_or("all regions"),
                w.start_s,
                w.end_s,
                w.note
            );
        }
        out.push_str("reserve latency from the intended send time, every answer:\n");
        out.push_str(&table(&upper_header(self.region_rows())));
        if !self.window_latency.is_empty() {
            out.push_str("reserve latency during each window, every answer:\n");
            out.push_str(&table(&upper_header(self.window_rows())));
        }
        let mut rows = vec![vec![
            "OP".to_string(),
            "OUTCOME".into(),
            "COUNT".into(),
            "P50 MS".into(),
            "P99 MS".into(),
            "P99.9 MS".into(),
            "MAX MS".into(),
        ]];
        for l in self.latency.iter().filter(|l| l.region == "all") {
            rows.push(vec![
                l.op.name().to_string(),
                l.outcome.clone(),
                l.latency.count.to_string(),
                ms(l.latency.p50_us),
                ms(l.latency.p99_us),
                ms(l.latency.p999_us),
                ms(l.latency.max_us),
            ]);
        }
        out.push_str("every operation, all regions:\n");
        out.push_str(&table(&rows));
        let t = &self.totals;
        let _ = writeln!(
            out,
            "oversell: {} units in {} SKUs   (stocked {}, demand {}, sold {})",
            t.oversell_units, t.oversell_skus, t.stocked, t.demand, t.sold
        );
        let failed: u64 = t.failed_not_retryable.values().sum();
        let _ = writeln!(
            out,
            "failed, not retryable (beyond stock and expiry refusals): {failed} {:?}",
            t.failed_not_retryable
        );
        if let Some(a) = &t.acknowledged {
            let _ = writeln!(
                out,
                "acknowledged reservations read back: {} filed, {} found, {} lost, {} in a wrong state, \
                 {} unread, {} not filed   {:?}",
                a.filed, a.found, a.lost, a.wrong_state, a.unread, a.not_filed, a.states
            );
            for e in &a.examples {
                let _ = writeln!(out, "  {e}");
            }
        }
        let _ = writeln!(
            out,
            "audit balanced: {}   settled caught up: {}   settled = confirmed: {}   (waited {:.1} s)",
            yes(t.audit_balanced),
            yes(t.settled_caught_up),
            yes(t.settled_matches_confirmed),
            self.reconcile_waited_s
        );
        let _ = writeln!(
            out,
            "sell-through: {}   local-hit ratio: {}   stranded tokens: max {} during, {} at the end",
            pct(t.sell_through),
            pct(t.local_hit_ratio),
            t.stranded_max,
            t.stranded_end
        );
        let _ = writeln!(
            out,
            "requests {}   late {}   dropped {}   retries {}",
            t.requests, t.late, t.dropped, t.retries
        );
        if !t.errors.is_empty() {
            let errors: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "errors: {}", errors.join(", "));
        }
        if let Some(servers) = &self.servers {
            out.push_str(&servers_summary(servers));
        }
        let hot: Vec<&SkuReport> = self
            .skus
            .iter()
            .filter(|s| s.hot || s.oversell > 0)
            .take(10)
            .collect();
        if !hot.is_empty() {
            let mut rows = vec![vec![
                "SKU".to_string(),
                "STOCKED".into(),
                "DEMAND".into(),
                "SOLD(SEEN)".into(),
                "SOLD(SERVER)".into(),
                "OVERSELL".into(),
                "SELL-THROUGH".into(),
            ]];
            for s in hot {
                rows.push(vec![
                    s.sku.clone(),
                    s.stocked.to_string(),
                    s.demand.to_string(),
                    s.confirmed_seen.to_string(),
                    s.sold_server.to_string(),
                    s.oversell.to_string(),
                    pct(s.sell_through),
                ]);
            }
            out.push_str("hot SKUs:\n");
            out.push_str(&table(&rows));
        }
        for n in self.server_notes.iter().chain(&self.notes).take(20) {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// The terminal lines of the servers section: one per node, then the
/// snapshot events (at most [`SNAPSHOT_EVENTS_SHOWN_MAX`]).
pub fn servers_summary(s: &ServersReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "servers (GET /status every {} ms; RSS in MB of 10^6 bytes, last half = {:.0}-{:.0} s):",
        s.interval_ms, s.last_half_from_s, s.last_half_to_s
    );
    for n in &s.nodes {
        let counters = match (n.snapshots_built, n.snapshots_installed) {
            (Some(b), Some(i)) => format!(" (built {b}, installed {i})"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  node {} {} {}: RSS first {} / peak {} / last {} MB, last half {}-{} MB{}; {} snapshots{}; {} of {} samples missing",
            n.id,
            n.region,
            n.role_last.map_or("-", |r| r.as_str()),
            mb(n.rss_first_bytes),
            mb(n.rss_peak_bytes),
            mb(n.rss_last_bytes),
            mb(n.rss_last_half_min_bytes),
            mb(n.rss_last_half_max_bytes),
            match n.rss_source {
                Some(crate::servers::RssSource::Proc) => " (from /proc)",
                _ => "",
            },
            n.snapshot_events,
            counters,
            n.samples_missing,
            n.samples_missing + n.samples_answered,
        );
    }
    if s.snapshot_events.is_empty() {
        out.push_str("snapshot events: none\n");
    } else {
        let _ = writeln!(out, "snapshot events ({}):", s.snapshot_events.len());
        for e in s.snapshot_events.iter().take(SNAPSHOT_EVENTS_SHOWN_MAX) {
            let index = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
            let mut line = format!(
                "  {:>7.1} s  node {}  index {} -> {}",
                e.t_s,
                e.node,
                index(e.previous_index),
                index(e.index)
            );
            if let Some(kind) = &e.kind {
                let _ = write!(line, "  {kind}");
            }
            if let (Some(ms), Some(bytes)) = (e.build_ms, e.bytes) {
                let _ = write!(line, "  build {ms} ms, {} MB", mb(Some(bytes)));
            }
            let _ = writeln!(out, "{line}");
        }
        if s.snapshot_events.len() > SNAPSHOT_EVENTS_SHOWN_MAX {
            let _ = writeln!(
                out,
                "  ... and {} more in report.json",
                s.snapshot_events.len() - SNAPSHOT_EVENTS_SHOWN_MAX
            );
        }
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// Bytes as MB (10^6 bytes) with one decimal, `-` when unknown.
pub fn mb(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1e6))
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A ratio as a percentage with two decimals, `-` when undefined.
pub fn pct(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
}

/// The rows with their header row in capitals (the terminal's style).
fn upper_header(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    if let Some(header) = rows.first_mut() {
        for cell in header {
            *cell = cell.to_uppercase();
        }
    }
    rows
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// `rows` as a table indented by two spaces, columns two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    reservoir_client::text::table(rows, "  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Oversell is what was sold beyond stock, never negative.
    #[test]
    fn oversell_math() {
        assert_eq!(oversell(10, 12), 0);
        assert_eq!(oversell(12, 12), 0);
        assert_eq!(oversell(15, 12), 3);
        assert_eq!(oversell(0, 0), 0);
    }

    /// Sell-through divides by the smaller of demand and stock, and is
    /// undefined when neither allowed a sale.
    #[test]
    fn sell_through_math() {
        // Demand above stock: sold / stocked.
        assert_eq!(sell_through(90, 1_000, 100), Some(0.9));
        // Stock above demand: sold / demand.
        assert_eq!(sell_through(40, 50, 100), Some(0.8));
        assert_eq!(sell_through(0, 0, 100), None);
        assert_eq!(sell_through(0, 10, 0), None);
    }

    /// The local-hit ratio counts remote hits and local misses against it.
    #[test]
    fn local_hit_math() {
        assert_eq!(local_hit_ratio(99, 0, 1), Some(0.99));
        assert_eq!(local_hit_ratio(8, 1, 1), Some(0.8));
        assert_eq!(local_hit_ratio(0, 0, 0), None);
    }

    /// A window's latency merges exactly its whole seconds, per region, and
    /// a skipped window gets none.
    #[tokio::test(start_paused = true)]
    async fn window_latency_counts_only_its_seconds() {
        use crate::metrics::{Op, Recorder};
        use std::time::Duration;
        let rec = Recorder::new(2, tokio::time::Instant::now());
        for (at_ms, region, latency_ms) in [(500, 0, 1), (1_500, 0, 100), (1_700, 1, 7), (2_500, 0, 5)] {
            tokio::time::advance(Duration::from_millis(at_ms) - rec.start().elapsed()).await;
            rec.answer(region, Op::Reserve, OUTCOME_OK, Duration::from_millis(latency_ms));
        }
        tokio::time::advance(Duration::from_millis(1_000)).await;
        rec.tick();
        let stats = rec.finish();
        let mark = |start_s: f64, end_s: f64, applied: bool| Mark {
            kind: crate::scenario::WindowKind::Spike,
            region: Some("a".into()),
            start_s,
            end_s,
            rate_factor: 10.0,
            note: String::new(),
            applied,
        };
        let regions = ["a".to_string(), "b".to_string()];
        // 0.5-2.9 s counts second 1 only (whole seconds).
        let w = window_latency(&[mark(0.5, 2.9, true), mark(0.0, 3.0, false)], &regions, &stats);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].from_s, w[0].to_s, w[0].reserve.count), (1, 2, 1));
        assert!((99_000..=101_000).contains(&w[0].reserve.p99_us), "{w:?}");
        assert_eq!((w[1].region.as_str(), w[1].reserve.count), ("b", 1));
        // 0-3 s counts all three of region a.
        let w = window_latency(&[mark(0.0, 3.0, true)], &regions, &stats);
        assert_eq!(w[0].reserve.count, 3);
        assert_eq!(w[0].reserves_per_s, 1.0);
    }

    /// The terminal's servers lines: one per node with RSS first / peak /
    /// last in MB (10^6 bytes) and its snapshot count, then every event.
    #[test]
    fn servers_lines() {
        use crate::servers::{NodeStatus, Observation, ServerSamples, ServersReport};
        use crate::target::reservoir::ClusterNode;
        let node = ClusterNode {
            id: 7,
            region: "us-east".into(),
            grpc: "127.0.0.1:1".parse().unwrap(),
            peer: None,
            http: None,
            pid: None,
            cmd: Vec::new(),
        };
        let seen = |index: Option<u64>, rss: u64| Observation {
            status: Ok(NodeStatus {
                node_id: 7,
                role: "leader".into(),
                snapshot_index: index,
                rss_bytes: Some(rss),
                ..NodeStatus::default()
            }),
            proc_rss_bytes: None,
        };
        let mut samples = ServerSamples::new(&[node]);
        samples.record(0.0, vec![seen(None, 50_000_000)]);
        samples.record(4.0, vec![seen(Some(100_000), 250_000_000)]);
        samples.record(8.0, vec![seen(Some(100_000), 200_000_000)]);
        let text = servers_summary(&ServersReport::build(&samples, 8.0));
        assert!(
            text.contains(
                "node 7 us-east leader: RSS first 50.0 / peak 250.0 / last 200.0 MB, \
                 last half 200.0-250.0 MB; 1 snapshots; 0 of 3 samples missing"
            ),
            "{text}"
        );
        assert!(text.contains("    4.0 s  node 7  index - -> 100000\n"), "{text}");
    }

    /// The table pads columns to their widest cell.
    #[test]
    fn table_layout() {
        let t = table(&[vec!["A".into(), "BB".into()], vec!["CCC".into(), "D".into()]]);
        assert_eq!(t, "  A    BB\n  CCC  D\n");
    }
}
