//! `LedgerState`: the single-writer system of record for stock. Replicated by
//! the ledger's Raft group; only its leader proposes.

use crate::error::{Field, Rejection};
use crate::limits::{self, *};
use crate::memory::AdjustmentMemory;
use crate::types::*;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The ledger's books for one SKU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSku {
    /// Stock ever added minus stock removed.
    pub stocked_total: Units,
    /// Units not allocated to any region.
    pub pool: Units,
    /// Units sold and settled.
    pub settled_total: Units,
    /// Units ever removed by negative adjustments. With `stocked_total` it
    /// gives the units ever in (`stocked_total + removed_total`) and ever
    /// out (`removed_total + settled_total`), by which the adjustment memory
    /// tells when an adjustment's stock has left.
    pub removed_total: Units,
    /// What the ledger believes each region holds: completed grants minus
    /// completed revokes minus settled sales. Signed, because a region may
    /// sell (and settle) tokens of a grant the ledger has not completed yet.
    pub granted: BTreeMap<RegionId, i64>,
}

impl LedgerSku {
    /// Units ever in: added by adjustments.
    pub fn in_total(&self) -> Units {
        self.stocked_total + self.removed_total
    }

    /// Units ever out: removed by adjustments, or sold and settled.
    pub fn out_total(&self) -> Units {
        self.removed_total + self.settled_total
    }

    /// Units in flight to regions for this SKU are kept in the transfer
    /// table; this checks the rest: `stocked = pool + Σ granted + in_flight +
    /// settled`. Returns the difference (zero when balanced).
    pub fn books_drift(&self, grants_in_flight: Units) -> i128 {
        let found = self.pool as i128
            + self.granted.values().map(|&g| g as i128).sum::<i128>()
            + grants_in_flight as i128
            + self.settled_total as i128;
        found - self.stocked_total as i128
    }
}

/// A grant or revoke the ledger has begun and not completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its id.
    pub id: TransferId,
    /// Grant or revoke.
    pub kind: TransferKind,
    /// The region it is to or from.
    pub region: RegionId,
    /// The SKU.
    pub sku: Sku,
    /// A grant's units (already out of the pool), or a revoke's `units_max`.
    pub units: Units,
    /// Logical time it began.
    pub began_at_ms: Millis,
}

/// One confirmed sale as the reconciler hands it to the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleEntry {
    /// The region's outbox sequence number.
    pub seq: u64,
    /// Units sold.
    pub lines: Vec<Line>,
}

/// What a ledger command does. Time comes in [`LedgerCommand::now_ms`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOp {
    /// Add stock to the pool (delta > 0) or remove it from the pool (< 0).
    AdjustStock {
        /// Idempotency key.
        request_id: RequestId,
        /// The SKU.
        sku: Sku,
        /// Units.
        delta: i64,
    },
    /// Step 1 of a grant: take units out of the pool, in flight to a region.
    BeginGrant {
        /// Destination.
        region: RegionId,
        /// The SKU.
        sku: Sku,
        /// Units.
        units: Units,
    },
    /// Step 3 of a grant: the region has applied it.
    CompleteGrant {
        /// The transfer.
        transfer_id: TransferId,
    },
    /// Step 1 of a revoke: record the intent.
    BeginRevoke {
        /// Source.
        region: RegionId,
        /// The SKU.
        sku: Sku,
        /// Most units to take.
        units_max: Units,
    },
    /// Step 3 of a revoke: the region took `units`; they enter the pool.
    CompleteRevoke {
        /// The transfer.
        transfer_id: TransferId,
        /// Units the region actually took.
        units: Units,
    },
    /// Apply a region's confirmed sales, idempotent by sequence watermark.
    Settle {
        /// The region.
        region: RegionId,
        /// Outbox entries in sequence order.
        entries: Vec<SettleEntry>,
    },
}

/// A command for the ledger group: an op and the proposer's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCommand {
    /// The proposer's wall clock; the state keeps `clock = max(clock, now_ms)`.
    pub now_ms: Millis,
    /// What to do.
    pub op: LedgerOp,
}

/// What an applied ledger command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerApplied {
    /// AdjustStock: the SKU's figures after the change.
    Stock {
        /// The SKU.
        sku: Sku,
        /// Stock ever added minus removed.
        stocked_total: Units,
        /// Units in the pool.
        pool: Units,
    },
    /// BeginGrant / BeginRevoke: the transfer now in flight.
    Begun(Transfer),
    /// CompleteGrant / CompleteRevoke.
    Completed {
        /// The transfer.
        transfer_id: TransferId,
        /// It had been completed before; nothing changed now.
        duplicate: bool,
    },
    /// Settle: the region's watermark after it, and how many entries were new.
    Settled {
        /// The region.
        region: RegionId,
        /// Highest sequence number settled.
        watermark: u64,
        /// Entries applied by this command.
        applied: usize,
    },
}

/// The outcome of one ledger command.
pub type LedgerOutcome = Result<LedgerApplied, Rejection>;

/// The ledger's replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    clock_ms: Millis,
    skus: OrdMap<Sku, LedgerSku>,
    /// Transfers in flight, by id.
    transfers: OrdMap<TransferId, Transfer>,
    /// The next transfer id; ids below it that are not in flight are complete.
    next_transfer_id: TransferId,
    /// Per region, the highest outbox sequence number settled.
    watermarks: OrdMap<RegionId, u64>,
    /// Request ids of applied stock adjustments.
    adjustments: AdjustmentMemory,
}

impl LedgerState {
    /// An empty ledger.
    pub fn new() -> LedgerState {
        LedgerState {
            clock_ms: 0,
            skus: OrdMap::new(),
            transfers: OrdMap::new(),
            next_transfer_id: 1,
            watermarks: OrdMap::new(),
            adjustments: AdjustmentMemory::default(),
        }
    }

    /// Applies one command. A rejection changes nothing but the clock.
    pub fn apply(&mut self, cmd: LedgerCommand) -> LedgerOutcome {
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        // Before the command, so an adjustment finds the room made.
        self.adjustments.prune(self.clock_ms, PRUNE_PER_COMMAND_MAX);
        match cmd.op {
            LedgerOp::AdjustStock {
                request_id,
                sku,
                delta,
            } => self.adjust_stock(request_id, sku, delta),
            LedgerOp::BeginGrant { region, sku, units } => {
                self.begin(TransferKind::Grant, region, sku, units)
            }
            LedgerOp::BeginRevoke {
                region,
                sku,
                units_max,
            } => self.begin(TransferKind::Revoke, region, sku, units_max),
            LedgerOp::CompleteGrant { transfer_id } => self.complete(TransferKind::Grant, transfer_id, 0),
            LedgerOp::CompleteRevoke { transfer_id, units } => {
                self.complete(TransferKind::Revoke, transfer_id, units)
            }
            LedgerOp::Settle { region, entries } => self.settle(region, entries),
        }
    }

    fn adjust_stock(&mut self, request_id: RequestId, sku: Sku, delta: i64) -> LedgerOutcome {
        let Some(fingerprint) = self.adjustments.check_adjustment(&request_id, &sku, delta)? else {
            return Ok(self.stock_figures(sku));
        };
        let units = delta.unsigned_abs();
        if delta > 0 {
            let s = self.skus.entry(sku.clone()).or_default();
            s.pool += units;
            s.stocked_total += units;
        } else {
            let removable = self.skus.get(&sku).map_or(0, |s| s.pool);
            if units > removable {
                return Err(Rejection::StockNotRemovable {
                    sku,
                    requested: units,
                    removable,
                });
            }
            let s = self
                .skus
                .get_mut(&sku)
                .expect("removable > 0 means the SKU is known");
            s.pool -= units;
            s.stocked_total -= units;
            s.removed_total += units;
        }
        let s = self.skus.get(&sku).cloned().unwrap_or_default();
        self.adjustments
            .remember(&request_id, fingerprint, &sku, s.in_total(), self.clock_ms);
        if delta < 0 {
            let mut budget = PRUNE_PER_COMMAND_MAX;
            self.adjustments.stock_left(&sku, s.out_total(), &mut budget);
        }
        Ok(self.stock_figures(sku))
    }

    fn stock_figures(&self, sku: Sku) -> LedgerApplied {
        let s = self.skus.get(&sku).cloned().unwrap_or_default();
        LedgerApplied::Stock {
            sku,
            stocked_total: s.stocked_total,
            pool: s.pool,
        }
    }

    fn begin(&mut self, kind: TransferKind, region: RegionId, sku: Sku, units: Units) -> LedgerOutcome {
        limits::check_region(&region)?;
        limits::check_sku(&sku)?;
        limits::check_transfer_units(units)?;
        if self.transfers.len() >= TRANSFERS_IN_FLIGHT_MAX {
            return Err(Rejection::TransfersFull {
                in_flight: self.transfers.len(),
            });
        }
        // One transfer per region and SKU at a time keeps the region's
        // figures easy to reason about, and stops a stuck region from
        // piling up transfers.
        if self
            .transfers
            .values()
            .any(|t| t.region == region && t.sku == sku)
        {
            return Err(Rejection::TransferInFlight { region, sku });
        }
        if kind == TransferKind::Grant {
            let available = self.skus.get(&sku).map_or(0, |s| s.pool);
            if units > available {
                return Err(Rejection::InsufficientPool {
                    sku,
                    requested: units,
                    available,
                });
            }
            self.skus
                .get_mut(&sku)
                .expect("pool > 0 means the SKU is known")
                .pool -= units;
        }
        let id = self.next_transfer_id;
        self.next_transfer_id += 1;
        let t = Transfer {
            id,
            kind,
            region,
            sku,
            units,
            began_at_ms: self.clock_ms,
        };
        self.transfers.insert(id, t.clone());
        Ok(LedgerApplied::Begun(t))
    }

    fn complete(&mut self, kind: TransferKind, transfer_id: TransferId, units: Units) -> LedgerOutcome {
        let Some(t) = self.transfers.get(&transfer_id) else {
            return if transfer_id > 0 && transfer_id < self.next_transfer_id {
                Ok(LedgerApplied::Completed {
                    transfer_id,
                    duplicate: true,
                })
            } else {
                Err(Rejection::TransferNotFound { transfer_id })
            };
        };
        if t.kind != kind {
            return Err(Rejection::TransferMismatch {
                transfer_id,
                detail: format!("it is a {:?}, completed as a {kind:?}", t.kind),
            });
        }
        if kind == TransferKind::Revoke && units > t.units {
            return Err(Rejection::invalid(
                Field::Units,
                format!(
                    "revoke {transfer_id} took {units}, more than its units_max {}",
                    t.units
                ),
            ));
        }
        let t = self.transfers.remove(&transfer_id).expect("looked up above");
        let s = self.skus.entry(t.sku.clone()).or_default();
        let granted = s.granted.entry(t.region.clone()).or_default();
        match kind {
            TransferKind::Grant => *granted += t.units as i64,
            TransferKind::Revoke => {
                *granted -= units as i64;
                s.pool += units;
            }
        }
        Ok(LedgerApplied::Completed {
            transfer_id,
            duplicate: false,
        })
    }

    fn settle(&mut self, region: RegionId, entries: Vec<SettleEntry>) -> LedgerOutcome {
        limits::check_region(&region)?;
        if entries.len() > SETTLE_BATCH_MAX {
            return Err(Rejection::invalid(
                Field::Entries,
                format!(
                    "at most {SETTLE_BATCH_MAX} entries per batch, got {}",
                    entries.len()
                ),
            ));
        }
        for pair in entries.windows(2) {
            // Checked: a batch from `u64::MAX` must be refused, not wrap to 0.
            if pair[0].seq.checked_add(1) != Some(pair[1].seq) {
                return Err(Rejection::invalid(
                    Field::Entries,
                    "sequence numbers must be consecutive",
                ));
            }
        }
        for e in &entries {
            if e.lines.is_empty() {
                return Err(Rejection::invalid(
                    Field::Entries,
                    format!("entry {} has no lines", e.seq),
                ));
            }
            for l in &e.lines {
                limits::check_sku(&l.sku)?;
                limits::check_quantity(l.quantity)?;
            }
        }
        let watermark = self.watermarks.get(&region).copied().unwrap_or(0);
        let fresh: Vec<&SettleEntry> = entries.iter().filter(|e| e.seq > watermark).collect();
        if let Some(first) = fresh.first()
            && first.seq != watermark + 1
        {
            return Err(Rejection::SettlementGap {
                region,
                watermark,
                first: first.seq,
            });
        }
        let applied = fresh.len();
        let mut new_watermark = watermark;
        let mut budget = PRUNE_PER_COMMAND_MAX;
        for e in fresh {
            for l in &e.lines {
                let s = self.skus.entry(l.sku.clone()).or_default();
                s.settled_total += l.quantity;
                *s.granted.entry(region.clone()).or_default() -= l.quantity as i64;
                let out_total = s.out_total();
                self.adjustments.stock_left(&l.sku, out_total, &mut budget);
            }
            new_watermark = e.seq;
        }
        if new_watermark > watermark {
            self.watermarks.insert(region.clone(), new_watermark);
        }
        Ok(LedgerApplied::Settled {
            region,
            watermark: new_watermark,
            applied,
        })
    }

    // ----- reads -----

    /// Logical time: the largest `now_ms` applied.
    pub fn clock_ms(&self) -> Millis {
        self.clock_ms
    }

    /// One SKU's books.
    pub fn sku(&self, sku: &str) -> Option<&LedgerSku> {
        self.skus.get(sku)
    }

    /// Every SKU's books.
    pub fn skus(&self) -> &OrdMap<Sku, LedgerSku> {
        &self.skus
    }

    /// Transfers in flight, by id.
    pub fn transfers(&self) -> &OrdMap<TransferId, Transfer> {
        &self.transfers
    }

    /// How many transfers were ever begun.
    pub fn transfers_begun(&self) -> u64 {
        self.next_transfer_id - 1
    }

    /// Every transfer to `region` with an id below this is complete. The
    /// rebalancer passes it to the region as `done_below`.
    pub fn done_below(&self, region: &str) -> TransferId {
        self.transfers
            .values()
            .filter(|t| t.region == region)
            .map(|t| t.id)
            .min()
            .unwrap_or(self.next_transfer_id)
    }

    /// The highest outbox sequence number of `region` settled here.
    pub fn watermark(&self, region: &str) -> u64 {
        self.watermarks.get(region).copied().unwrap_or(0)
    }

    /// Every region the ledger has a settlement watermark for.
    pub fn watermarks(&self) -> &OrdMap<RegionId, u64> {
        &self.watermarks
    }

    /// Units of `sku` in grants not yet completed.
    pub fn grants_in_flight(&self, sku: &str) -> Units {
        self.transfers
            .values()
            .filter(|t| t.kind == TransferKind::Grant && t.sku == sku)
            .map(|t| t.units)
            .sum()
    }

    /// The ledger's own books: per SKU, found minus stocked (zero when balanced).
    pub fn books_drift(&self) -> BTreeMap<Sku, i128> {
        self.skus
            .iter()
            .map(|(sku, s)| (sku.clone(), s.books_drift(self.grants_in_flight(sku))))
            .collect()
    }
}

impl Default for LedgerState {
    fn default() -> Self {
        LedgerState::new()
    }
}

impl crate::StateMachine for LedgerState {
    type Command = LedgerCommand;
    type Outcome = LedgerOutcome;

    fn apply(&mut self, cmd: LedgerCommand) -> LedgerOutcome {
        LedgerState::apply(self, cmd)
    }
}
