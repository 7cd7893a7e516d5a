//! The ledger host: on the home region's nodes, the ledger's Raft group, and
//! — on its leader only — the rebalancer, the reconciler and the periodic
//! audit, in one loop.
//!
//! A round: read the ledger (linearizable) → ask every region for a report
//! (concurrently, bounded by a timeout; a region that does not answer is
//! unreachable and left out) → per region, concurrently: finish its transfers
//! left in flight, then settle its outbox into the ledger page by page, each
//! page acknowledged to the region before the next is asked for → plan and
//! run new transfers (ledger intent → region apply → ledger complete) →
//! audit when due. Every step is idempotent, so a round cut short by a crash
//! or a lost leadership is simply resumed by the next leader.
//!
//! Rounds are isolated per region: every await on a region call or a ledger
//! proposal is bounded ([`REGION_CALL_TIMEOUT`], [`LEDGER_COMMIT_TIMEOUT`]),
//! and a failure in one region's part of a round (an overloaded or cut-off
//! region, a timed-out proposal about it) is counted for that region
//! (`reservoir_round_region_failures_total{region, reason}`), logged when
//! it starts and ends, and leaves that region out of this round's plan; the
//! other regions are settled and topped up as usual. Only losing the
//! ledger (its leadership, or a linearizable read of it) ends a round for
//! everyone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_raft::{Group, ProposeError};
use reservoir_tokens::audit::{self, BalanceSheet};
use reservoir_tokens::limits::SETTLE_BATCH_MAX;
use reservoir_tokens::rebalance::{self, Policy, RegionView, SkuView};
use reservoir_tokens::{
    LedgerApplied, LedgerCommand, LedgerOp, LedgerState, Millis, RegionApplied, RegionId, RegionOp, Transfer,
    TransferKind,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::server::clock::{self, Clock, GroupClock};
use crate::server::config::RebalanceConfig;
use crate::server::control::{
    ControlClient, LedgerSummary, REPORT_OUTBOX_BYTES_MAX, RegionCall, RegionReply, RegionReport,
    ReportRequest, settle_entries,
};

/// How long one region call of a round may take.
pub const REGION_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one ledger proposal (or linearizable read) may take.
pub const LEDGER_COMMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most settlement pages one round settles for one region; the rest waits
/// for the next round.
pub const SETTLE_PAGES_PER_ROUND_MAX: usize = 16;
/// How long one round may go on settling one region: no page is begun
/// after it (a page begun may take a proposal and two region calls more).
pub const SETTLE_BUDGET: Duration = Duration::from_secs(5);
/// How long a round may go on beginning new transfers: no transfer is
/// begun after it, and the plan's rest waits for the next round.
pub const ROUND_BUDGET: Duration = Duration::from_secs(10);

/// The step of a region's part of a round that failed; its `reason()` is the
/// stable `reason` label of `reservoir_round_region_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The region sent no report (or no next settlement page).
    Report,
    /// Carrying out a transfer: the region's apply, or the ledger's complete.
    Transfer,
    /// Settling a page into the ledger.
    Settle,
    /// Acknowledging a settled page to the region.
    SettledAck,
    /// Beginning a transfer at the ledger.
    Begin,
}

impl Step {
    /// The stable reason, as a metric label and in logs.
    pub fn reason(self) -> &'static str {
        match self {
            Step::Report => "report",
            Step::Transfer => "transfer",
            Step::Settle => "settle",
            Step::SettledAck => "settled_ack",
            Step::Begin => "begin",
        }
    }
}

/// Why a ledger proposal made by the round did not happen.
#[derive(Debug)]
enum LedgerError {
    /// This node no longer leads the ledger.
    NotLeader,
    /// The ledger refused the command (an answer: nothing changed).
    Refused(String),
    /// No answer in time, or the group failed.
    Failed(String),
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerError::NotLeader => write!(f, "lost ledger leadership"),
            LedgerError::Refused(e) => write!(f, "ledger refused: {e}"),
            LedgerError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Why one region's part of a round stopped.
#[derive(Debug)]
enum Failure {
    /// This node no longer leads the ledger: the whole round ends.
    NotLeader,
    /// A step for this region failed: the region is left for this round.
    Region {
        /// The step.
        step: Step,
        /// What went wrong, for the log.
        detail: String,
    },
}

impl Failure {
    fn region(step: Step, detail: impl Into<String>) -> Failure {
        Failure::Region {
            step,
            detail: detail.into(),
        }
    }

    fn ledger(step: Step, e: LedgerError) -> Failure {
        match e {
            LedgerError::NotLeader => Failure::NotLeader,
            other => Failure::region(step, other.to_string()),
        }
    }
}

/// What settling one region in a round came to.
struct Settled {
    /// (unsettled outbox entries, age of the oldest in ms) after the round.
    lag: (u64, u64),
    /// The first failure, if any.
    failure: Option<Failure>,
}

/// The ledger group on this node, and the leader-only loop.
pub struct LedgerHost {
    group: Arc<Group<LedgerState>>,
    control: Arc<ControlClient>,
    /// The ledger group's bounded logical time on this node.
    time: Arc<GroupClock>,
    config: RebalanceConfig,
    policy: Policy,
    wake: Notify,
    summary: Mutex<LedgerSummary>,
    /// Held by a round and by an audit: an audit never sees a transfer or a
    /// settlement of ours half done.
    busy: tokio::sync::Mutex<()>,
    /// Regions whose part of the last round failed, with the step's reason:
    /// a region is logged when it starts failing (or fails at another step)
    /// and when it recovers, not every round.
    failing: Mutex<BTreeMap<RegionId, &'static str>>,
}

/// The `group` label of the ledger's clock metrics.
const LEDGER_GROUP_CLOCK: &str = "ledger";

impl LedgerHost {
    /// A host over a started ledger group.
    pub fn new(
        group: Arc<Group<LedgerState>>,
        control: Arc<ControlClient>,
        clock: Arc<dyn Clock>,
        config: RebalanceConfig,
    ) -> Result<LedgerHost, String> {
        let policy = config.policy();
        let applied_ms = group.read(LedgerState::clock_ms).unwrap_or(0);
        let time = Arc::new(GroupClock::new(LEDGER_GROUP_CLOCK, clock, applied_ms));
        tokio::spawn(clock::observe_forever(
            time.clone(),
            group.clone(),
            LedgerState::clock_ms,
        ));
        Ok(LedgerHost {
            group,
            control,
            time,
            config,
            policy,
            wake: Notify::new(),
            summary: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
            failing: Mutex::default(),
        })
    }

    /// The ledger group's time on this node: the bounded stamp on its
    /// leader (see [`crate::server::clock`]).
    pub fn now_ms(&self) -> u64 {
        clock::group_now(&self.time, &self.group, LedgerState::clock_ms)
    }

    /// The ledger group.
    pub fn group(&self) -> &Group<LedgerState> {
        &self.group
    }

    /// Runs a round now (a region asked for a top-up).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The latest summary: the ledger's books and the last round's view.
    pub fn summary(&self) -> LedgerSummary {
        let mut s = self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Ok((skus, transfers)) = self.group.read(|l| {
            (
                l.skus().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                l.transfers().values().cloned().collect::<Vec<_>>(),
            )
        }) {
            s.skus = skus;
            s.transfers = transfers;
        }
        s.leader_id = self.group.status().leader.unwrap_or(0);
        s
    }

    /// The leader-only loop; returns on shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.interval_ms);
        let audit_every = self.config.audit_interval_ms;
        let mut last_audit_ms: Millis = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if !self.group.is_leader() {
                continue;
            }
            let round = {
                let _busy = self.busy.lock().await;
                self.round().await
            };
            if let Err(e) = round {
                metrics::counter!("reservoir_rebalance_rounds_failed_total").increment(1);
                tracing::warn!(error = %e, "ledger: round stopped");
                continue;
            }
            let now = self.now_ms();
            if now.saturating_sub(last_audit_ms) >= audit_every {
                last_audit_ms = now;
                if let Err(e) = self.audit().await {
                    tracing::warn!(error = %e, "ledger: audit skipped");
                }
            }
        }
    }

    async fn propose(&self, op: LedgerOp) -> Result<LedgerApplied, LedgerError> {
        if !self.group.is_leader() {
            return Err(LedgerError::NotLeader);
        }
        let cmd = LedgerCommand {
            now_ms: self.now_ms(),
            op,
        };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(LEDGER_COMMIT_TIMEOUT, self.group.propose(cmd)).await;
        metrics::histogram!("reservoir_raft_commit_seconds", "group" => self.group.name().to_string())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(rejection))) => Err(LedgerError::Refused(rejection.to_string())),
            Ok(Err(ProposeError::NotLeader { .. })) => Err(LedgerError::NotLeader),
            Ok(Err(e)) => Err(LedgerError::Failed(format!("ledger: {e}"))),
            Err(_) => Err(LedgerError::Failed(format!(
                "ledger commit timed out after {LEDGER_COMMIT_TIMEOUT:?}"
            ))),
        }
    }

    async fn ledger_now(&self) -> Result<LedgerState, String> {
        match tokio::time::timeout(LEDGER_COMMIT_TIMEOUT, self.group.read_linearizable(|l| l.clone())).await {
            Ok(Ok(ledger)) => Ok(ledger),
            Ok(Err(e)) => Err(format!("ledger read: {e}")),
            Err(_) => Err(format!("ledger read timed out after {LEDGER_COMMIT_TIMEOUT:?}")),
        }
    }

    /// Reports from every region, concurrently; an error for a region that
    /// did not answer. For the audit, no outbox entries but the units settled
    /// at the ledger and not yet acknowledged to the region.
    async fn reports(
        &self,
        ledger: &LedgerState,
        for_audit: bool,
    ) -> BTreeMap<RegionId, Result<RegionReport, String>> {
        let regions: Vec<String> = self.control.regions().map(str::to_string).collect();
        let calls = regions.iter().map(|region| {
            let transfers = ledger
                .transfers()
                .values()
                .filter(|t| &t.region == region)
                .map(|t| t.id)
                .collect::<Vec<_>>();
            let request = if for_audit {
                ReportRequest {
                    outbox_after: None,
                    outbox_max: 0,
                    outbox_bytes_max: 0,
                    transfers,
                    unacked_up_to: Some(ledger.watermark(region)),
                }
            } else {
                outbox_request(ledger.watermark(region), transfers)
            };
            async move { self.report(region, request).await }
        });
        let answers = futures_join_all(calls).await;
        regions.into_iter().zip(answers).collect()
    }

    /// One region's report.
    async fn report(&self, region: &str, request: ReportRequest) -> Result<RegionReport, String> {
        match self
            .control
            .region(region, &RegionCall::Report(request), REGION_CALL_TIMEOUT)
            .await
        {
            Ok(RegionReply::Report(r)) => Ok(r),
            Ok(other) => Err(format!("report: region answered {other:?}")),
            Err(status) => Err(format!("report: {}", status.message())),
        }
    }

    /// Notes how a region's part of this round went: counts and (on a
    /// change) logs a failure, logs a recovery.
    fn note(&self, region: &str, failure: Option<(Step, &str)>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some((step, detail)) => {
                metrics::counter!(
                    "reservoir_round_region_failures_total",
                    "region" => region.to_string(),
                    "reason" => step.reason()
                )
                .increment(1);
                metrics::gauge!("reservoir_round_region_failing", "region" => region.to_string()).set(1.0);
                if failing.insert(region.to_string(), step.reason()) != Some(step.reason()) {
                    tracing::warn!(
                        region,
                        reason = step.reason(),
                        %detail,
                        "ledger: region left out of this round; the other regions go on"
                    );
                }
            }
            None => {
                metrics::gauge!("reservoir_round_region_failing", "region" => region.to_string()).set(0.0);
                if let Some(reason) = failing.remove(region) {
                    tracing::info!(
                        region,
                        was_failing_at = reason,
                        "ledger: region back in the round"
                    );
                }
            }
        }
    }

    /// One rebalance + reconcile round.
    async fn round(&self) -> Result<(), String> {
        let started = Instant::now();
        let ledger = self.ledger_now().await?;
        let reports = self.reports(&ledger, false).await;
        let unreachable: Vec<RegionId> = reports
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(name, _)| name.clone())
            .collect();
        let mut failures: BTreeMap<RegionId, (Step, String)> = reports
            .iter()
            .filter_map(|(name, r)| {
                r.as_ref()
                    .err()
                    .map(|e| (name.clone(), (Step::Report, e.clone())))
            })
            .collect();

        // Per region, concurrently: transfers left in flight (by a crash, a
        // timeout, an old leader), then settlement page by page. One region
        // failing does not hold up the others.
        let work = reports.iter().filter_map(|(region, report)| {
            let report = report.as_ref().ok()?;
            let ledger = &ledger;
            Some(async move { (region.clone(), self.reconcile(region, report, ledger).await) })
        });
        let mut lag = BTreeMap::new();
        for (region, settled) in futures_join_all(work).await {
            lag.insert(region.clone(), settled.lag);
            metrics::gauge!("reservoir_settlement_lag_entries", "region" => region.clone())
                .set(settled.lag.0 as f64);
            metrics::gauge!("reservoir_settlement_lag_seconds", "region" => region.clone())
                .set(settled.lag.1 as f64 / 1_000.0);
            match settled.failure {
                Some(Failure::NotLeader) => return Err("lost ledger leadership".into()),
                Some(Failure::Region { step, detail }) => {
                    failures.insert(region, (step, detail));
                }
                None => {}
            }
        }

        // New transfers, from a fresh view of the ledger; a region that
        // failed this round is left out of the plan, as an unreachable one
        // is, so no pool tokens are sent where they would only wait in flight.
        let ledger = self.ledger_now().await?;
        let plan = rebalance::plan(&self.views(&ledger, &reports, &failures), &self.policy);
        let begun = plan.into_iter().filter(|p| {
            !ledger
                .transfers()
                .values()
                .any(|t| t.region == p.region && t.sku == p.sku)
        });
        let mut runs = Vec::new();
        for p in begun {
            if started.elapsed() >= ROUND_BUDGET {
                tracing::info!(budget = ?ROUND_BUDGET, "ledger: round budget spent; the rest of the plan waits");
                break;
            }
            if failures.contains_key(&p.region) {
                continue;
            }
            let op = match p.kind {
                TransferKind::Grant => LedgerOp::BeginGrant {
                    region: p.region.clone(),
                    sku: p.sku.clone(),
                    units: p.units,
                },
                TransferKind::Revoke => LedgerOp::BeginRevoke {
                    region: p.region.clone(),
                    sku: p.sku.clone(),
                    units_max: p.units,
                },
            };
            match self.propose(op).await {
                Ok(LedgerApplied::Begun(t)) => {
                    metrics::counter!("reservoir_transfers_total", "kind" => format!("{:?}", t.kind).to_lowercase())
                        .increment(1);
                    let done_below = ledger.done_below(&t.region);
                    let region = t.region.clone();
                    runs.push(async move { (region, self.carry_out(t, done_below).await) });
                }
                Ok(other) => {
                    failures.insert(p.region.clone(), (Step::Begin, format!("unexpected {other:?}")));
                }
                Err(LedgerError::NotLeader) => return Err("lost ledger leadership".into()),
                Err(LedgerError::Refused(e)) => tracing::warn!(error = %e, "ledger: transfer not begun"),
                Err(e) => {
                    failures.insert(p.region.clone(), (Step::Begin, e.to_string()));
                }
            }
        }
        for (region, result) in futures_join_all(runs).await {
            match result {
                Ok(()) => {}
                Err(Failure::NotLeader) => return Err("lost ledger leadership".into()),
                Err(Failure::Region { step, detail }) => {
                    failures.entry(region).or_insert((step, detail));
                }
            }
        }

        for region in reports.keys() {
            self.note(
                region,
                failures
                    .get(region)
                    .map(|(step, detail)| (*step, detail.as_str())),
            );
        }
        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        summary.regions = reports
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|r| (name.clone(), r.buckets.clone())))
            .collect();
        summary.region_leaders = reports
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|r| (name.clone(), r.leader_id)))
            .collect();
        summary.unreachable = unreachable;
        summary.settlement_lag = lag;
        summary.failing = failures
            .into_iter()
            .map(|(region, (step, _))| (region, step.reason().to_string()))
            .collect();
        Ok(())
    }

    /// One region's part of a round: its transfers left in flight, then its
    /// outbox settled page by page (at most [`SETTLE_PAGES_PER_ROUND_MAX`]
    /// pages, none begun after [`SETTLE_BUDGET`]). A failed transfer does
    /// not keep the region's sales from settling.
    async fn reconcile(&self, region: &str, report: &RegionReport, ledger: &LedgerState) -> Settled {
        let pending = ledger
            .transfers()
            .values()
            .filter(|t| t.region == region)
            .map(|t| self.carry_out(t.clone(), ledger.done_below(region)));
        let mut failure = None;
        for result in futures_join_all(pending).await {
            if let Err(e) = result {
                failure.get_or_insert(e);
            }
        }
        if matches!(failure, Some(Failure::NotLeader)) {
            return Settled {
                lag: lag_of(report, report.settled_up_to, self.now_ms()),
                failure,
            };
        }

        let deadline = Instant::now() + SETTLE_BUDGET;
        let mut watermark = ledger.watermark(region);
        let mut next: Option<RegionReport> = None;
        let mut pages = 0;
        loop {
            let page = next.as_ref().unwrap_or(report);
            let acked = match self.settle(region, page, watermark).await {
                Ok(up_to) => up_to,
                Err(e) => {
                    let acked = page.settled_up_to;
                    return Settled {
                        lag: lag_of(page, acked, self.now_ms()),
                        failure: failure.or(Some(e)),
                    };
                }
            };
            watermark = acked;
            pages += 1;
            if !page.outbox_more || pages >= SETTLE_PAGES_PER_ROUND_MAX || Instant::now() >= deadline {
                return Settled {
                    lag: lag_of(page, acked, self.now_ms()),
                    failure,
                };
            }
            let request = outbox_request(watermark, Vec::new());
            match self.report(region, request).await {
                Ok(r) => next = Some(r),
                Err(e) => {
                    return Settled {
                        lag: lag_of(page, acked, self.now_ms()),
                        failure: failure.or(Some(Failure::region(Step::Report, e))),
                    };
                }
            }
        }
    }

    fn views(
        &self,
        ledger: &LedgerState,
        reports: &BTreeMap<RegionId, Result<RegionReport, String>>,
        failures: &BTreeMap<RegionId, (Step, String)>,
    ) -> Vec<SkuView> {
        ledger
            .skus()
            .iter()
            .map(|(sku, books)| SkuView {
                sku: sku.clone(),
                pool: books.pool,
                regions: reports
                    .iter()
                    .map(|(region, report)| RegionView {
                        region: region.clone(),
                        available: report
                            .as_ref()
                            .ok()
                            .and_then(|r| r.buckets.get(sku))
                            .map_or(0, |b| b.available),
                        demand: report
                            .as_ref()
                            .ok()
                            .and_then(|r| r.demand.get(sku))
                            .copied()
                            .unwrap_or(0),
                        reachable: report.is_ok() && !failures.contains_key(region),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Steps 2 and 3 of a transfer: the region applies it (idempotent by id),
    /// then the ledger completes it with what the region actually moved.
    async fn carry_out(&self, t: Transfer, done_below: u64) -> Result<(), Failure> {
        let op = match t.kind {
            TransferKind::Grant => RegionOp::Grant {
                transfer_id: t.id,
                sku: t.sku.clone(),
                units: t.units,
                done_below,
            },
            TransferKind::Revoke => RegionOp::Revoke {
                transfer_id: t.id,
                sku: t.sku.clone(),
                units_max: t.units,
                done_below,
            },
        };
        let reply = self
            .control
            .region(&t.region, &RegionCall::Apply(op), REGION_CALL_TIMEOUT)
            .await
            .map_err(|s| {
                Failure::region(
                    Step::Transfer,
                    format!("transfer {} to {}: {}", t.id, t.region, s.message()),
                )
            })?;
        let units = match reply {
            RegionReply::Applied(Ok(RegionApplied::Transfer { units, .. })) => units,
            other => {
                return Err(Failure::region(
                    Step::Transfer,
                    format!("transfer {}: region answered {other:?}", t.id),
                ));
            }
        };
        let complete = match t.kind {
            TransferKind::Grant => LedgerOp::CompleteGrant { transfer_id: t.id },
            TransferKind::Revoke => LedgerOp::CompleteRevoke {
                transfer_id: t.id,
                units,
            },
        };
        self.propose(complete)
            .await
            .map(|_| ())
            .map_err(|e| Failure::ledger(Step::Transfer, e))
    }

    /// Settles one page of a region's outbox into the ledger (the entries of
    /// `page` after `watermark`), then acknowledges up to the ledger's
    /// watermark to the region; returns that watermark.
    async fn settle(&self, region: &str, page: &RegionReport, watermark: u64) -> Result<u64, Failure> {
        let entries = settle_entries(page, watermark);
        let mut up_to = watermark;
        if !entries.is_empty() {
            let n = entries.len();
            let settled = self
                .propose(LedgerOp::Settle {
                    region: region.to_string(),
                    entries,
                })
                .await
                .map_err(|e| Failure::ledger(Step::Settle, e))?;
            match settled {
                LedgerApplied::Settled { watermark, .. } => up_to = watermark,
                other => return Err(Failure::region(Step::Settle, format!("unexpected {other:?}"))),
            }
            metrics::counter!("reservoir_settled_entries_total", "region" => region.to_string())
                .increment(n as u64);
        }
        if page.settled_up_to < up_to {
            let call = RegionCall::Apply(RegionOp::Settled { up_to_seq: up_to });
            match self.control.region(region, &call, REGION_CALL_TIMEOUT).await {
                Ok(RegionReply::Applied(Ok(_))) => {}
                Ok(other) => {
                    return Err(Failure::region(
                        Step::SettledAck,
                        format!("settled ack to {region}: region answered {other:?}"),
                    ));
                }
                Err(s) => {
                    return Err(Failure::region(
                        Step::SettledAck,
                        format!("settled ack to {region}: {}", s.message()),
                    ));
                }
            }
        }
        Ok(up_to)
    }

    /// A consistent backup of the ledger and every region (see
    /// [`crate::server::backup`] for why the cut is consistent): taken
    /// holding the lock rounds and audits take, so no transfer or
    /// settlement of this leader's is half done; the ledger read
    /// linearizably first, then every region on its leader. Fails when a
    /// region cannot be read (a backup without it could not restore the
    /// cluster) or the backup is over [`CLUSTER_BACKUP_BYTES_MAX`].
    ///
    /// [`CLUSTER_BACKUP_BYTES_MAX`]: crate::server::backup::CLUSTER_BACKUP_BYTES_MAX
    pub async fn backup(&self, created_at_ms: u64) -> Result<Vec<u8>, tonic::Status> {
        use crate::server::backup::{
            CLUSTER, CLUSTER_BACKUP_BYTES_MAX, GroupKind, GroupState, backup_error, encode, encode_state,
        };
        let _busy = self.busy.lock().await;
        let term = self.group.leader_term();
        self.ledger_now()
            .await
            .map_err(|e| backup_error(false, format!("reading the ledger: {e}")))?;
        let (ledger, index) = self
            .group
            .read_indexed(encode_state)
            .map_err(|e| backup_error(false, format!("reading the ledger: {e}")))?;
        let ledger = ledger.map_err(|e| backup_error(true, e))?;
        let mut groups = vec![GroupState {
            name: crate::server::LEDGER_GROUP.to_string(),
            kind: GroupKind::Ledger,
            applied_index: index.unwrap_or(0),
            state: ledger,
        }];
        let regions: Vec<String> = self.control.regions().map(str::to_string).collect();
        let calls = regions.iter().map(|region| async move {
            let reply = self
                .control
                .region(region, &RegionCall::Backup, REGION_CALL_TIMEOUT)
                .await;
            (region.clone(), reply)
        });
        for (region, reply) in futures_join_all(calls).await {
            match reply {
                Ok(RegionReply::Backup(state)) if state.name == region => groups.push(state),
                Ok(other) => {
                    return Err(backup_error(false, format!("region {region} answered {other:?}")));
                }
                Err(status)
                    if reservoir_client::reason_of(&status).as_deref() == Some("BACKUP_TOO_LARGE") =>
                {
                    return Err(status);
                }
                Err(status) => {
                    return Err(backup_error(
                        false,
                        format!("region {region} could not be read: {}", status.message()),
                    ));
                }
            }
        }
        // Still the leader of the same term, confirmed by a quorum after the
        // regions were read: no other ledger leader can have settled or
        // transferred anything since the ledger was read.
        let confirmed = self.ledger_now().await.is_ok() && self.group.leader_term() == term;
        if term.is_none() || !confirmed {
            return Err(backup_error(
                false,
                "the ledger's leadership changed while the backup was taken; take it again".into(),
            ));
        }
        let file = encode(CLUSTER, created_at_ms, &groups).map_err(|e| backup_error(true, e))?;
        if file.len() > CLUSTER_BACKUP_BYTES_MAX {
            return Err(backup_error(
                true,
                format!(
                    "the backup is {} bytes, over {CLUSTER_BACKUP_BYTES_MAX}",
                    file.len()
                ),
            ));
        }
        Ok(file)
    }

    /// The conservation audit over the ledger and every region's report.
    /// Runs between rounds on the leader, so no transfer or settlement of
    /// ours is half done; a region's own reserves and confirms do not move
    /// tokens between places the audit tells apart.
    pub async fn audit(&self) -> Result<BalanceSheet, String> {
        let _busy = self.busy.lock().await;
        let ledger = self.ledger_now().await?;
        let reports = self.reports(&ledger, true).await;
        let available: Vec<&RegionReport> = reports.values().filter_map(|r| r.as_ref().ok()).collect();
        let sheet = audit::balance(&ledger, &available);
        metrics::gauge!("reservoir_audit_drift_units").set(sheet.total_drift() as f64);
        metrics::gauge!("reservoir_audit_balanced").set(if sheet.balanced() { 1.0 } else { 0.0 });
        metrics::gauge!("reservoir_audit_missing_regions").set(sheet.missing_regions.len() as f64);
        if sheet.total_drift() != 0 {
            tracing::error!(drift_units = sheet.total_drift(), ?sheet, "ledger: AUDIT DRIFT");
        }
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).last_audit =
            Some((self.now_ms(), sheet.clone()));
        Ok(sheet)
    }
}

/// A round's report request: the outbox after `watermark`, one page of it.
fn outbox_request(watermark: u64, transfers: Vec<reservoir_tokens::TransferId>) -> ReportRequest {
    ReportRequest {
        outbox_after: Some(watermark),
        outbox_max: SETTLE_BATCH_MAX,
        outbox_bytes_max: REPORT_OUTBOX_BYTES_MAX,
        transfers,
        unacked_up_to: None,
    }
}

/// (unsettled outbox entries, age of the oldest in ms) of a region whose
/// outbox is acknowledged up to `acked`, as its last report shows it.
fn lag_of(report: &RegionReport, acked: u64, now_ms: Millis) -> (u64, u64) {
    let unsettled = report
        .last_outbox_seq
        .saturating_sub(acked.max(report.settled_up_to));
    if unsettled == 0 {
        return (0, 0);
    }
    // The oldest entry not acknowledged: in the page; or, when the page was
    // acknowledged whole, after it and not seen yet, confirmed no earlier
    // than the page's last entry, whose age is then an upper bound.
    let oldest = report
        .outbox
        .iter()
        .find(|e| e.seq > acked)
        .or(report.outbox.last())
        .map(|e| e.confirmed_at_ms)
        .or(report.oldest_unsettled_ms);
    (unsettled, oldest.map_or(0, |t| now_ms.saturating_sub(t)))
}

/// Runs futures concurrently and collects their outputs in order.
pub async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futures.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => {
                outputs[*i] = Some(out);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
