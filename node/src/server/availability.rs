//! The availability view: every region's available tokens per SKU, shared
//! between regions as CRDTs, so `GetAvailability` answers from any node with
//! no cross-region call on the request path.
//!
//! Each figure is a last-writer-wins register (`crdts::LWWReg`) whose marker
//! is the publishing group's applied log index, then the time it was read:
//! a later index is a later state of that region, so merging in any order,
//! any number of times, converges on the newest figure. Nodes publish their
//! own region's figures (and, on ledger hosts, the pool) from their local
//! replica and exchange digests with one node of every other region.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crdts::CvRDT;
use crdts::LWWReg;
use reservoir_tokens::{Millis, RegionId, Sku, Units};
use serde::{Deserialize, Serialize};

/// The pseudo-region under which ledger hosts publish the pool.
pub const POOL: &str = "ledger-pool";

/// One published figure: available units, marked by (applied index, read at).
pub type Figure = LWWReg<Units, (u64, Millis)>;

/// Most SKUs of one region taken from one digest.
pub const GOSSIP_SKUS_MAX: usize = 100_000;
/// How far ahead of the receiver's clock a figure's read time may be.
pub const GOSSIP_AHEAD_MAX_MS: Millis = 60_000;

/// Every known figure: region → SKU → figure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The figures.
    pub figures: BTreeMap<RegionId, BTreeMap<Sku, Figure>>,
    /// The sender's applied index in each group it speaks for (its region,
    /// and the pool's ledger group on a ledger node), when it sent this: no
    /// figure of that group may be marked later.
    pub applied: BTreeMap<RegionId, u64>,
}

impl Digest {
    /// What a sender of `region` may speak for: that region's figures, and
    /// the pool's if it is a ledger node (`ledger`); of those, at most
    /// [`GOSSIP_SKUS_MAX`] per region with valid SKU names, none marked
    /// after the applied index the sender states or more than
    /// [`GOSSIP_AHEAD_MAX_MS`] after `now_ms`.
    /// The rest is dropped, so a node can neither speak for another region
    /// nor plant a marker that wins for good.
    pub fn only_from(mut self, region: &str, ledger: bool, now_ms: Millis) -> Digest {
        let mut kept = BTreeMap::new();
        for name in [region, POOL] {
            if name == POOL && !ledger {
                continue;
            }
            let (Some(skus), Some(&applied)) = (self.figures.remove(name), self.applied.get(name)) else {
                continue;
            };
            let skus: BTreeMap<Sku, Figure> = skus
                .into_iter()
                .filter(|(sku, f)| {
                    reservoir_tokens::limits::check_sku(sku).is_ok()
                        && f.marker.0 <= applied
                        && f.marker.1 <= now_ms.saturating_add(GOSSIP_AHEAD_MAX_MS)
                })
                .take(GOSSIP_SKUS_MAX)
                .collect();
            kept.insert(name.to_string(), skus);
        }
        Digest {
            figures: kept,
            applied: BTreeMap::new(),
        }
    }

    /// Merges another digest in (commutative, associative, idempotent),
    /// keeping at most [`GOSSIP_SKUS_MAX`] SKUs per region: past it, SKUs
    /// not yet known are not added.
    pub fn merge(&mut self, other: Digest) {
        for (region, skus) in other.figures {
            let mine = self.figures.entry(region).or_default();
            for (sku, figure) in skus {
                if let Some(known) = mine.get_mut(&sku) {
                    known.merge(figure);
                } else if mine.len() < GOSSIP_SKUS_MAX {
                    mine.insert(sku, figure);
                }
            }
        }
    }
}

/// A node's view of availability everywhere.
#[derive(Default)]
pub struct AvailabilityView {
    digest: Mutex<Digest>,
}

/// What `GetAvailability` reports for one SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Per region (and the pool, under [`POOL`]), the last known figure.
    pub by_region: BTreeMap<RegionId, Units>,
    /// The sum of them.
    pub total: Units,
    /// Age of the oldest figure used, in ms.
    pub staleness_ms: u64,
}

impl AvailabilityView {
    /// An empty view.
    pub fn new() -> AvailabilityView {
        AvailabilityView::default()
    }

    /// Publishes figures of `region` read at applied index `index`.
    pub fn publish(
        &self,
        region: &str,
        index: u64,
        now_ms: Millis,
        figures: impl IntoIterator<Item = (Sku, Units)>,
    ) {
        let mut d = self.digest.lock().unwrap_or_else(|e| e.into_inner());
        let mine = d.figures.entry(region.to_string()).or_default();
        for (sku, units) in figures {
            mine.entry(sku).or_default().update(units, (index, now_ms));
        }
    }

    /// Merges a digest received from another region.
    pub fn merge(&self, other: Digest) {
        self.digest.lock().unwrap_or_else(|e| e.into_inner()).merge(other);
    }

    /// A copy of everything known, to send.
    pub fn digest(&self) -> Digest {
        self.digest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The estimate for `sku`, with this region's exact figure in place of
    /// its published one.
    pub fn estimate(&self, sku: &str, region: &str, local: Units, now_ms: Millis) -> Estimate {
        let d = self.digest.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_region = BTreeMap::new();
        let mut oldest = now_ms;
        for (r, skus) in &d.figures {
            if r == region {
                continue;
            }
            if let Some(f) = skus.get(sku) {
                by_region.insert(r.clone(), f.val);
                oldest = oldest.min(f.marker.1);
            }
        }
        by_region.insert(region.to_string(), local);
        let total = by_region.values().fold(0u64, |a, b| a.saturating_add(*b));
        Estimate {
            by_region,
            total,
            staleness_ms: now_ms.saturating_sub(oldest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging digests in any order converges on the newest figures.
    #[test]
    fn merge_converges_on_the_newest() {
        let a = AvailabilityView::new();
        let b = AvailabilityView::new();
        a.publish("us-east", 5, 100, [("hot".to_string(), 10)]);
        b.publish("us-east", 7, 90, [("hot".to_string(), 4)]);
        b.publish("eu-west", 3, 95, [("hot".to_string(), 8)]);
        let (da, db) = (a.digest(), b.digest());
        a.merge(db.clone());
        b.merge(da.clone());
        b.merge(da); // idempotent
        assert_eq!(a.digest(), b.digest());
        let e = a.estimate("hot", "ap-south", 2, 200);
        assert_eq!(e.by_region.get("us-east"), Some(&4), "index 7 beats index 5");
        assert_eq!(e.total, 4 + 8 + 2);
        assert_eq!(e.staleness_ms, 200 - 90);
    }

    /// The answering region's exact figure replaces its published one.
    #[test]
    fn local_figure_is_exact() {
        let v = AvailabilityView::new();
        v.publish("us-east", 1, 10, [("hot".to_string(), 100)]);
        let e = v.estimate("hot", "us-east", 42, 20);
        assert_eq!(e.by_region.get("us-east"), Some(&42));
        assert_eq!(e.total, 42);
        assert_eq!(e.staleness_ms, 0);
    }

    /// A sender speaks only for its own region (and the pool, from a ledger
    /// node); a figure marked after the sender's applied index, or far ahead
    /// of the receiver's clock, is dropped.
    #[test]
    fn a_sender_speaks_only_for_itself() {
        let v = AvailabilityView::new();
        v.publish(
            "eu-west",
            7,
            1_000,
            [("hot".to_string(), 5), ("cold".to_string(), 1)],
        );
        v.publish("us-east", 9, 1_000, [("hot".to_string(), 1_000_000)]);
        v.publish(POOL, 3, 1_000, [("hot".to_string(), 1_000_000)]);
        let mut d = v.digest();
        d.applied.insert("eu-west".into(), 7);
        d.applied.insert("us-east".into(), 9);
        d.applied.insert(POOL.into(), 3);
        // A forged marker that would win for good, and one from the future.
        let forged = d.figures.get_mut("eu-west").unwrap();
        forged.get_mut("hot").unwrap().update(999, (u64::MAX, 1_000));
        forged
            .get_mut("cold")
            .unwrap()
            .update(999, (7, 1_000 + GOSSIP_AHEAD_MAX_MS + 1));
        let kept = d.only_from("eu-west", false, 1_000);
        assert_eq!(kept.figures.keys().collect::<Vec<_>>(), vec!["eu-west"]);
        assert!(kept.figures["eu-west"].is_empty(), "{kept:?}");
        let mut d = v.digest();
        d.applied.insert("eu-west".into(), 7);
        let kept = d.only_from("eu-west", true, 1_000);
        assert_eq!(kept.figures["eu-west"].len(), 2);
        assert!(
            !kept.figures.contains_key(POOL),
            "no applied index for the pool: nothing of it"
        );
    }

    /// The view keeps at most GOSSIP_SKUS_MAX SKUs of one region.
    #[test]
    fn skus_per_region_are_bounded() {
        let mut d = Digest::default();
        let many = (0..GOSSIP_SKUS_MAX + 10).map(|i| {
            (
                format!("s{i}"),
                Figure {
                    val: 1,
                    marker: (1, 1),
                },
            )
        });
        d.figures.insert("eu-west".into(), many.collect());
        let v = AvailabilityView::new();
        v.merge(d);
        assert_eq!(v.digest().figures["eu-west"].len(), GOSSIP_SKUS_MAX);
    }
}
