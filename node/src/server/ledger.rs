//! The ledger host: on the home region's nodes, the ledger's Raft group, and
//! — on its leader only — the rebalancer, the reconciler and the periodic
//! audit, in one loop.
//!
//! A round: read the ledger (linearizable) → ask every region for a report
//! (concurrently, bounded by a timeout; a region that does not answer is
//! unreachable and left out) → finish transfers left in flight → settle each
//! region's outbox into the ledger, then acknowledge it to the region → plan
//! and run new transfers (ledger intent → region apply → ledger complete) →
//! audit when due. Every step is idempotent, so a round cut short by a crash
//! or a lost leadership is simply resumed by the next leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_raft::{Group, ProposeError};
use reservoir_tokens::audit::{self, BalanceSheet};
use reservoir_tokens::rebalance::{self, Policy, RegionView, SkuView};
use reservoir_tokens::{
    LedgerApplied, LedgerCommand, LedgerOp, LedgerState, Millis, RegionApplied, RegionId, RegionOp,
    SettleEntry, Transfer, TransferKind,
};
use tokio::sync::{Notify, watch};

use crate::server::clock::Clock;
use crate::server::config::RebalanceConfig;
use crate::server::control::{
    ControlClient, LedgerSummary, RegionCall, RegionReply, RegionReport, ReportRequest,
};

/// How long one region call of a round may take.
pub const REGION_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one ledger proposal may take.
pub const LEDGER_COMMIT_TIMEOUT: Duration = Duration::from_secs(3);

/// The ledger group on this node, and the leader-only loop.
pub struct LedgerHost {
    group: Arc<Group<LedgerState>>,
    control: Arc<ControlClient>,
    clock: Arc<dyn Clock>,
    config: RebalanceConfig,
    policy: Policy,
    wake: Notify,
    summary: Mutex<LedgerSummary>,
    /// Held by a round and by an audit: an audit never sees a transfer or a
    /// settlement of ours half done.
    busy: tokio::sync::Mutex<()>,
}

impl LedgerHost {
    /// A host over a started ledger group.
    pub fn new(
        group: Arc<Group<LedgerState>>,
        control: Arc<ControlClient>,
        clock: Arc<dyn Clock>,
        config: RebalanceConfig,
    ) -> Result<LedgerHost, String> {
        let policy = config.policy();
        Ok(LedgerHost {
            group,
            control,
            clock,
            config,
            policy,
            wake: Notify::new(),
            summary: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
        })
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
                eprintln!("ledger: round stopped: {e}");
                continue;
            }
            let now = self.clock.now_ms();
            if now.saturating_sub(last_audit_ms) >= audit_every {
                last_audit_ms = now;
                if let Err(e) = self.audit().await {
                    eprintln!("ledger: audit skipped: {e}");
                }
            }
        }
    }

    async fn propose(&self, op: LedgerOp) -> Result<LedgerApplied, String> {
        if !self.group.is_leader() {
            return Err("lost ledger leadership".into());
        }
        let cmd = LedgerCommand {
            now_ms: self.clock.now_ms(),
            op,
        };
        match tokio::time::timeout(LEDGER_COMMIT_TIMEOUT, self.group.propose(cmd)).await {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(rejection))) => Err(format!("ledger refused: {rejection}")),
            Ok(Err(ProposeError::NotLeader { .. })) => Err("lost ledger leadership".into()),
            Ok(Err(e)) => Err(format!("ledger: {e}")),
            Err(_) => Err("ledger commit timed out".into()),
        }
    }

    async fn ledger_now(&self) -> Result<LedgerState, String> {
        self.group
            .read_linearizable(|l| l.clone())
            .await
            .map_err(|e| format!("ledger read: {e}"))
    }

    /// Reports from every region, concurrently; `None` for unreachable ones.
    async fn reports(
        &self,
        ledger: &LedgerState,
        for_audit: bool,
    ) -> BTreeMap<RegionId, Option<RegionReport>> {
        let regions: Vec<String> = self.control.regions().map(str::to_string).collect();
        let calls = regions.iter().map(|region| {
            let transfers = ledger
                .transfers()
                .values()
                .filter(|t| &t.region == region)
                .map(|t| t.id)
                .collect::<Vec<_>>();
            let request = ReportRequest {
                outbox_after: if for_audit {
                    None
                } else {
                    Some(ledger.watermark(region))
                },
                outbox_max: reservoir_tokens::limits::SETTLE_BATCH_MAX,
                transfers,
            };
            async move {
                let reply = self
                    .control
                    .region(region, &RegionCall::Report(request), REGION_CALL_TIMEOUT)
                    .await;
                match reply {
                    Ok(RegionReply::Report(r)) => Some(r),
                    _ => None,
                }
            }
        });
        let answers = futures_join_all(calls).await;
        regions.into_iter().zip(answers).collect()
    }

    /// One rebalance + reconcile round.
    async fn round(&self) -> Result<(), String> {
        let ledger = self.ledger_now().await?;
        let reports = self.reports(&ledger, false).await;
        let unreachable: Vec<RegionId> = reports
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(name, _)| name.clone())
            .collect();

        // Transfers left in flight (by a crash, a timeout, an old leader).
        let pending: Vec<Transfer> = ledger
            .transfers()
            .values()
            .filter(|t| reports.get(&t.region).is_some_and(Option::is_some))
            .cloned()
            .collect();
        let finishing = pending
            .iter()
            .map(|t| self.carry_out(t.clone(), ledger.done_below(&t.region)));
        for result in futures_join_all(finishing).await {
            result?;
        }

        // Settlement: outbox → ledger → acknowledgement.
        let mut lag = BTreeMap::new();
        for (region, report) in &reports {
            let Some(report) = report else { continue };
            self.settle(region, report, ledger.watermark(region)).await?;
            let now = self.clock.now_ms();
            let unsettled = report.last_outbox_seq.saturating_sub(report.settled_up_to);
            lag.insert(
                region.clone(),
                (
                    unsettled,
                    report.oldest_unsettled_ms.map_or(0, |t| now.saturating_sub(t)),
                ),
            );
            metrics::gauge!("reservoir_settlement_lag_entries", "region" => region.clone())
                .set(unsettled as f64);
        }

        // New transfers, from a fresh view of the ledger.
        let ledger = self.ledger_now().await?;
        let plan = rebalance::plan(&self.views(&ledger, &reports), &self.policy);
        let begun = plan.into_iter().filter(|p| {
            !ledger
                .transfers()
                .values()
                .any(|t| t.region == p.region && t.sku == p.sku)
        });
        let mut runs = Vec::new();
        for p in begun {
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
                    runs.push(self.carry_out(t, done_below));
                }
                Ok(other) => return Err(format!("begin transfer: unexpected {other:?}")),
                Err(e) if e.contains("refused") => eprintln!("ledger: transfer not begun: {e}"),
                Err(e) => return Err(e),
            }
        }
        for result in futures_join_all(runs).await {
            result?;
        }

        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        summary.regions = reports
            .iter()
            .filter_map(|(name, r)| r.as_ref().map(|r| (name.clone(), r.buckets.clone())))
            .collect();
        summary.region_leaders = reports
            .iter()
            .filter_map(|(name, r)| r.as_ref().map(|r| (name.clone(), r.leader_id)))
            .collect();
        summary.unreachable = unreachable;
        summary.settlement_lag = lag;
        Ok(())
    }

    fn views(
        &self,
        ledger: &LedgerState,
        reports: &BTreeMap<RegionId, Option<RegionReport>>,
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
                            .and_then(|r| r.buckets.get(sku))
                            .map_or(0, |b| b.available),
                        demand: report
                            .as_ref()
                            .and_then(|r| r.demand.get(sku))
                            .copied()
                            .unwrap_or(0),
                        reachable: report.is_some(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Steps 2 and 3 of a transfer: the region applies it (idempotent by id),
    /// then the ledger completes it with what the region actually moved.
    async fn carry_out(&self, t: Transfer, done_below: u64) -> Result<(), String> {
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
            .map_err(|s| format!("transfer {} to {}: {}", t.id, t.region, s.message()))?;
        let units = match reply {
            RegionReply::Applied(Ok(RegionApplied::Transfer { units, .. })) => units,
            other => return Err(format!("transfer {}: region answered {other:?}", t.id)),
        };
        let complete = match t.kind {
            TransferKind::Grant => LedgerOp::CompleteGrant { transfer_id: t.id },
            TransferKind::Revoke => LedgerOp::CompleteRevoke {
                transfer_id: t.id,
                units,
            },
        };
        self.propose(complete).await.map(|_| ())
    }

    /// Settles a region's reported outbox into the ledger, then acknowledges
    /// up to the ledger's watermark to the region.
    async fn settle(&self, region: &str, report: &RegionReport, watermark: u64) -> Result<(), String> {
        let entries: Vec<SettleEntry> = report
            .outbox
            .iter()
            .filter(|e| e.seq > watermark)
            .map(|e| SettleEntry {
                seq: e.seq,
                lines: e.lines.clone(),
            })
            .collect();
        let mut up_to = watermark;
        if !entries.is_empty() {
            let n = entries.len();
            match self
                .propose(LedgerOp::Settle {
                    region: region.to_string(),
                    entries,
                })
                .await?
            {
                LedgerApplied::Settled { watermark, .. } => up_to = watermark,
                other => return Err(format!("settle: unexpected {other:?}")),
            }
            metrics::counter!("reservoir_settled_entries_total", "region" => region.to_string())
                .increment(n as u64);
        }
        if report.settled_up_to < up_to {
            let call = RegionCall::Apply(RegionOp::Settled { up_to_seq: up_to });
            self.control
                .region(region, &call, REGION_CALL_TIMEOUT)
                .await
                .map_err(|s| format!("settled ack to {region}: {}", s.message()))?;
        }
        Ok(())
    }

    /// The conservation audit over the ledger and every region's report.
    /// Runs between rounds on the leader, so no transfer or settlement of
    /// ours is half done; a region's own reserves and confirms do not move
    /// tokens between places the audit tells apart.
    pub async fn audit(&self) -> Result<BalanceSheet, String> {
        let _busy = self.busy.lock().await;
        let ledger = self.ledger_now().await?;
        let reports = self.reports(&ledger, true).await;
        let available: Vec<&RegionReport> = reports.values().filter_map(Option::as_ref).collect();
        let sheet = audit::balance(&ledger, &available);
        metrics::gauge!("reservoir_audit_drift_units").set(sheet.total_drift() as f64);
        metrics::gauge!("reservoir_audit_balanced").set(if sheet.balanced() { 1.0 } else { 0.0 });
        metrics::gauge!("reservoir_audit_missing_regions").set(sheet.missing_regions.len() as f64);
        if sheet.total_drift() != 0 {
            eprintln!("ledger: AUDIT DRIFT {sheet:?}");
        }
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).last_audit =
            Some((self.clock.now_ms(), sheet.clone()));
        Ok(sheet)
    }
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
