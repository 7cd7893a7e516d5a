//! The conservation audit (docs/architecture.md, "The one invariant"):
//! every unit ever stocked is in exactly one place. [`balance`] builds the
//! balance sheet from the ledger and every region's state; any difference is
//! reported as drift.

use crate::ledger::LedgerState;
use crate::region::{AppliedTransfer, Bucket, RegionState};
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One region's tokens of one SKU, as the audit counts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionBalance {
    /// The region.
    pub region: RegionId,
    /// Tokens free to reserve.
    pub available: Units,
    /// Tokens held.
    pub held: Units,
    /// Tokens sold and not yet settled at the ledger (sales the ledger has
    /// settled but the region has not heard of yet are left out here, since
    /// the ledger counts them as settled).
    pub confirmed: Units,
    /// Tokens the region holds minus what the ledger believes it holds,
    /// corrected for transfers and settlements in flight; plus the bucket's
    /// own books. Zero when both agree.
    pub drift: i64,
}

/// The balance sheet of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuBalance {
    /// The SKU.
    pub sku: Sku,
    /// Stock ever added minus removed.
    pub stocked_total: Units,
    /// Units in the ledger's pool.
    pub pool: Units,
    /// Granted units that have left the pool and not yet reached a region.
    pub in_flight_grants: Units,
    /// Revoked units that have left a region and not yet reached the pool.
    pub in_flight_revokes: Units,
    /// Units sold and settled.
    pub settled_total: Units,
    /// Per region.
    pub regions: Vec<RegionBalance>,
    /// Units found minus units stocked. Zero when the books balance.
    pub drift: i64,
    /// The ledger's own books (pool + granted + in flight + settled against
    /// stocked), found minus stocked.
    pub ledger_drift: i64,
}

impl SkuBalance {
    /// True when every drift is zero.
    pub fn balanced(&self) -> bool {
        self.drift == 0 && self.ledger_drift == 0 && self.regions.iter().all(|r| r.drift == 0)
    }
}

/// The balance sheet of every SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceSheet {
    /// Per SKU, in SKU order.
    pub skus: Vec<SkuBalance>,
    /// Regions the ledger knows of whose state was not supplied: the audit
    /// cannot vouch for them (e.g. cut off), so the sheet is not balanced.
    /// Their tokens are counted at what the ledger believes they hold.
    pub missing_regions: Vec<RegionId>,
}

impl BalanceSheet {
    /// True when every SKU balances and no region is missing.
    pub fn balanced(&self) -> bool {
        self.missing_regions.is_empty() && self.skus.iter().all(SkuBalance::balanced)
    }

    /// The sum of absolute drifts, for a metric.
    pub fn total_drift(&self) -> u64 {
        self.skus
            .iter()
            .map(|s| {
                s.drift.unsigned_abs()
                    + s.ledger_drift.unsigned_abs()
                    + s.regions.iter().map(|r| r.drift.unsigned_abs()).sum::<u64>()
            })
            .sum()
    }
}

/// What the audit needs of a region: its buckets, the transfers it applied,
/// and its sales the ledger has settled but the region has not yet heard of.
/// Implemented by [`RegionState`] and by any summary of one a node ships
/// across the network.
pub trait RegionBooks {
    /// The region's name.
    fn region(&self) -> &str;
    /// The SKUs it has buckets for.
    fn sku_names(&self) -> Vec<&str>;
    /// Its bucket of `sku`, if it has one.
    fn bucket_of(&self, sku: &str) -> Option<Bucket>;
    /// How it applied transfer `id`, if it did (and still remembers).
    fn applied_transfer(&self, id: TransferId) -> Option<&AppliedTransfer>;
    /// Units of `sku` in outbox entries the region still holds with a
    /// sequence number at or below the ledger's `watermark`.
    fn settled_unacked(&self, sku: &str, watermark: u64) -> Units;
}

impl RegionBooks for RegionState {
    fn region(&self) -> &str {
        RegionState::region(self)
    }

    fn sku_names(&self) -> Vec<&str> {
        RegionState::buckets(self).map(|(sku, _)| sku.as_str()).collect()
    }

    fn bucket_of(&self, sku: &str) -> Option<Bucket> {
        RegionState::bucket(self, sku).cloned()
    }

    fn applied_transfer(&self, id: TransferId) -> Option<&AppliedTransfer> {
        self.transfer(id)
    }

    fn settled_unacked(&self, sku: &str, watermark: u64) -> Units {
        self.outbox_after(self.settled_up_to())
            .take_while(|e| e.seq <= watermark)
            .flat_map(|e| e.lines)
            .filter(|l| l.sku == sku)
            .map(|l| l.quantity)
            .sum()
    }
}

fn clamp(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Builds the balance sheet from the ledger and the regions' states.
///
/// Transfers in flight are placed by asking the region whether it applied
/// them: an unapplied grant is in flight (out of the pool, not in a bucket);
/// an applied revoke is in flight (out of a bucket, not in the pool). A
/// confirmed sale the ledger settled but the region has not yet dropped from
/// its outbox is counted once, as settled.
pub fn balance<R: RegionBooks>(ledger: &LedgerState, regions: &[&R]) -> BalanceSheet {
    let by_name: BTreeMap<&str, &R> = regions.iter().map(|r| (r.region(), *r)).collect();
    let mut known: BTreeSet<&str> = ledger.watermarks().keys().map(String::as_str).collect();
    known.extend(ledger.transfers().values().map(|t| t.region.as_str()));
    for s in ledger.skus().values() {
        known.extend(s.granted.keys().map(String::as_str));
    }
    let missing_regions: Vec<String> = known
        .iter()
        .filter(|r| !by_name.contains_key(*r))
        .map(|r| r.to_string())
        .collect();

    let mut skus: BTreeSet<&str> = ledger.skus().keys().map(String::as_str).collect();
    for r in regions {
        skus.extend(r.sku_names());
    }

    let mut sheet = Vec::with_capacity(skus.len());
    for sku in skus {
        let books = ledger.sku(sku).cloned().unwrap_or_default();
        let mut in_flight_grants: Units = 0;
        let mut in_flight_revokes: Units = 0;
        // Per region: applied-but-incomplete grants minus revokes.
        let mut applied_in_flight: BTreeMap<&str, i128> = BTreeMap::new();
        for t in ledger.transfers().values().filter(|t| t.sku == sku) {
            let applied = by_name
                .get(t.region.as_str())
                .and_then(|r| r.applied_transfer(t.id));
            match (t.kind, applied) {
                (TransferKind::Grant, None) => in_flight_grants += t.units,
                (TransferKind::Grant, Some(a)) => {
                    *applied_in_flight.entry(t.region.as_str()).or_default() += a.moved as i128
                }
                (TransferKind::Revoke, None) => {}
                (TransferKind::Revoke, Some(a)) => {
                    in_flight_revokes += a.moved;
                    *applied_in_flight.entry(t.region.as_str()).or_default() -= a.moved as i128;
                }
            }
        }

        let mut region_rows = Vec::with_capacity(regions.len());
        let mut found: i128 = books.pool as i128
            + in_flight_grants as i128
            + in_flight_revokes as i128
            + books.settled_total as i128;
        // A region that could not be read is counted at what the ledger
        // believes it holds, so that drift stays a real discrepancy while a
        // region is cut off (the sheet is still not balanced: it cannot
        // vouch for that region).
        for missing in &missing_regions {
            found += books.granted.get(missing).copied().unwrap_or(0) as i128;
        }
        for r in regions {
            let b = r.bucket_of(sku).unwrap_or_default();
            let settled_unacked = r.settled_unacked(sku, ledger.watermark(r.region()));
            let confirmed = b.confirmed.saturating_sub(settled_unacked);
            found += (b.available + b.held + confirmed) as i128;
            let believed = books.granted.get(r.region()).copied().unwrap_or(0) as i128
                + applied_in_flight.get(r.region()).copied().unwrap_or(0)
                + settled_unacked as i128;
            let drift = (b.total() as i128 - believed) + b.books_drift();
            region_rows.push(RegionBalance {
                region: r.region().to_string(),
                available: b.available,
                held: b.held,
                confirmed,
                drift: clamp(drift),
            });
        }
        let ledger_drift = books.books_drift(ledger.grants_in_flight(sku));
        sheet.push(SkuBalance {
            sku: sku.to_string(),
            stocked_total: books.stocked_total,
            pool: books.pool,
            in_flight_grants,
            in_flight_revokes,
            settled_total: books.settled_total,
            regions: region_rows,
            drift: clamp(found - books.stocked_total as i128),
            ledger_drift: clamp(ledger_drift),
        });
    }
    BalanceSheet {
        skus: sheet,
        missing_regions,
    }
}

/// The balance sheet of a standalone region (no ledger): stock is what was
/// added minus removed, and the region's sales settle nowhere.
pub fn balance_standalone(region: &RegionState) -> BalanceSheet {
    let skus = region
        .buckets()
        .map(|(sku, b)| {
            let drift = clamp(b.books_drift());
            SkuBalance {
                sku: sku.clone(),
                stocked_total: b.received - b.returned,
                pool: 0,
                in_flight_grants: 0,
                in_flight_revokes: 0,
                settled_total: b.settled,
                regions: vec![RegionBalance {
                    region: region.region().to_string(),
                    available: b.available,
                    held: b.held,
                    confirmed: b.confirmed,
                    drift,
                }],
                drift,
                ledger_drift: 0,
            }
        })
        .collect();
    BalanceSheet {
        skus,
        missing_regions: Vec::new(),
    }
}
