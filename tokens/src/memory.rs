//! Memory of applied stock adjustments, for idempotency: an adjustment's
//! request id is kept for as long as the stock of its SKU that was there
//! right after it, and at least [`ADJUSTMENT_WINDOW_MS`].

use crate::error::Rejection;
use crate::limits::{self, ADJUSTMENT_IDS_MAX, ADJUSTMENT_WINDOW_MS};
use crate::types::{Line, Millis, Sku, Units};
use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One remembered adjustment, in its SKU's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// Logical time it was applied.
    at_ms: Millis,
    /// The SKU's units ever in (received, or stocked) right after it. Units
    /// leave first in, first out, so once the SKU's units ever out reach
    /// this, every unit that was in stock right after the adjustment has
    /// left.
    in_after: Units,
    /// Its request id (shared with the index).
    request_id: Arc<str>,
}

/// The request ids of applied stock adjustments (`AdjustStock`, ledger and
/// standalone region), with the fingerprint of each, to tell a retry from a
/// reuse of the id. Only applied adjustments are remembered: a refused one
/// changed nothing, so retrying it is safe.
///
/// An id is forgotten only when both hold: [`ADJUSTMENT_WINDOW_MS`] of
/// logical time has passed since it was applied, and every unit of its SKU
/// that was in stock right after it has left (sold, removed, or revoked;
/// first in, first out; the ledger counts a sale once settled). So a retry can never add the stock twice
/// while the stock it added is still there. At most [`ADJUSTMENT_IDS_MAX`]
/// ids are kept: when that many are and a new adjustment comes, it is
/// refused (`ADJUSTMENT_IDS_FULL`) rather than any id forgotten early.
///
/// Per SKU, ids wait in the order they were applied; `in_after` only grows
/// along a queue, so the ids whose stock has left are a prefix. When units
/// of a SKU leave, the state calls [`Self::stock_left`], which moves that
/// prefix to `leaving`, ordered by time; [`Self::prune`] forgets from there
/// once the window has passed. Persistent collections (`imbl`), so the state
/// that holds it clones in O(1); ordered, so replicas serialize alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentMemory {
    /// Fingerprint by request id.
    entries: OrdMap<Arc<str>, u64>,
    /// Per SKU, its adjustments whose stock may still be there, oldest
    /// first. A SKU with none has no queue.
    by_sku: OrdMap<Sku, Vector<Kept>>,
    /// Adjustments whose stock has left, by the time they were applied.
    leaving: OrdSet<(Millis, Arc<str>)>,
}

impl Default for AdjustmentMemory {
    fn default() -> Self {
        AdjustmentMemory {
            entries: OrdMap::new(),
            by_sku: OrdMap::new(),
            leaving: OrdSet::new(),
        }
    }
}

impl AdjustmentMemory {
    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `request_id` is remembered.
    pub fn contains(&self, request_id: &str) -> bool {
        self.entries.contains_key(request_id)
    }

    /// Validates a stock adjustment and tells a new one from a retry: the
    /// new one's fingerprint, to remember once applied; `None` for a retry of
    /// an adjustment already applied; `REQUEST_ID_REUSED` for another
    /// adjustment under the same id; `ADJUSTMENT_IDS_FULL` for a new one
    /// when [`ADJUSTMENT_IDS_MAX`] ids are remembered.
    pub fn check_adjustment(
        &self,
        request_id: &str,
        sku: &str,
        delta: i64,
    ) -> Result<Option<u64>, Rejection> {
        limits::check_request_id(request_id)?;
        limits::check_sku(sku)?;
        limits::check_delta(delta)?;
        let fingerprint = Fnv::new().bytes(sku.as_bytes()).u64(delta as u64).finish();
        match self.entries.get(request_id) {
            None if self.entries.len() >= ADJUSTMENT_IDS_MAX => Err(Rejection::AdjustmentIdsFull {
                remembered: self.entries.len(),
            }),
            None => Ok(Some(fingerprint)),
            Some(&seen) if seen == fingerprint => Ok(None),
            Some(_) => Err(Rejection::RequestIdReused {
                request_id: request_id.to_string(),
            }),
        }
    }

    /// Remembers an applied adjustment of `sku`, whose units ever in are
    /// `in_after` right after it. The caller checked it is new.
    pub fn remember(
        &mut self,
        request_id: &str,
        fingerprint: u64,
        sku: &str,
        in_after: Units,
        now_ms: Millis,
    ) {
        let request_id: Arc<str> = Arc::from(request_id);
        let old = self.entries.insert(request_id.clone(), fingerprint);
        assert!(old.is_none(), "adjustment {request_id} remembered twice");
        let kept = Kept {
            at_ms: now_ms,
            in_after,
            request_id,
        };
        match self.by_sku.get_mut(sku) {
            Some(queue) => {
                let last = queue.back().expect("a queue is never empty");
                assert!(
                    last.in_after <= in_after,
                    "adjustments of {sku} out of order: {} units in, then {in_after}",
                    last.in_after,
                );
                queue.push_back(kept);
            }
            None => {
                self.by_sku.insert(sku.to_string(), Vector::unit(kept));
            }
        }
    }

    /// Units of `sku` have left: its units ever out are now `out_total`.
    /// Moves the adjustments whose stock is all gone (`in_after <=
    /// out_total`) to those waiting out their window, oldest first, at most
    /// `budget` of them (taken from it). Any left over move when units of
    /// the SKU next leave or it is next adjusted.
    pub fn stock_left(&mut self, sku: &str, out_total: Units, budget: &mut usize) {
        let Some(queue) = self.by_sku.get_mut(sku) else {
            return;
        };
        while *budget > 0 {
            match queue.front() {
                Some(front) if front.in_after <= out_total => {}
                _ => break,
            }
            let front = queue.pop_front().expect("looked at above");
            self.leaving.insert((front.at_ms, front.request_id));
            *budget -= 1;
        }
        if queue.is_empty() {
            self.by_sku.remove(sku);
        }
    }

    /// Forgets, oldest first and at most `budget`, the adjustments whose
    /// stock has left and whose window has passed.
    pub fn prune(&mut self, now_ms: Millis, budget: usize) {
        for _ in 0..budget {
            let Some((at_ms, _)) = self.leaving.get_min() else {
                break;
            };
            if at_ms.saturating_add(ADJUSTMENT_WINDOW_MS) > now_ms {
                break;
            }
            let (_, request_id) = self.leaving.remove_min().expect("looked at above");
            self.entries.remove(&request_id);
        }
    }
}

/// A 64-bit FNV-1a hasher: fixed, so every replica computes the same
/// fingerprint, unlike std's randomly seeded hashers.
pub struct Fnv(u64);

impl Fnv {
    /// A fresh hasher.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Mixes bytes in.
    pub fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// Mixes a number in.
    pub fn u64(self, n: u64) -> Fnv {
        self.bytes(&n.to_le_bytes())
    }

    /// Mixes lines in, in SKU order so that the order of a cart's lines does
    /// not matter.
    pub fn lines(mut self, lines: &[Line]) -> Fnv {
        if lines.windows(2).all(|w| w[0].sku < w[1].sku) {
            for l in lines {
                self = self.bytes(l.sku.as_bytes()).u64(u64::MAX).u64(l.quantity);
            }
        } else {
            let mut sorted: Vec<&Line> = lines.iter().collect();
            sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
            for l in sorted {
                self = self.bytes(l.sku.as_bytes()).u64(u64::MAX).u64(l.quantity);
            }
        }
        self.u64(lines.len() as u64)
    }

    /// The hash.
    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id is forgotten only after the window and once the units in stock
    /// right after it have left, oldest first, per SKU.
    #[test]
    fn forgets_after_the_window_once_the_stock_left() {
        let mut m = AdjustmentMemory::default();
        // a: +10 (in 10) at 0, +5 (in 15) at 100; b: +3 (in 3) at 200.
        m.remember("a1", 1, "a", 10, 0);
        m.remember("a2", 2, "a", 15, 100);
        m.remember("b1", 3, "b", 3, 200);
        let w = ADJUSTMENT_WINDOW_MS;
        let mut budget = 64;
        m.stock_left("a", 9, &mut budget);
        m.prune(w + 1_000, 64);
        assert_eq!(m.len(), 3, "a unit of a1 is still there");
        m.stock_left("a", 10, &mut budget);
        m.stock_left("b", 3, &mut budget);
        assert_eq!(budget, 62);
        m.prune(w - 1, 64);
        assert_eq!(m.len(), 3, "inside the window");
        m.prune(w, 64);
        assert!(!m.contains("a1") && m.contains("a2") && m.contains("b1"));
        m.prune(w + 200, 64);
        assert!(!m.contains("b1") && m.contains("a2"));
        let mut budget = 0;
        m.stock_left("a", 15, &mut budget);
        m.prune(w + 1_000, 64);
        assert!(m.contains("a2"), "no budget, not moved");
    }

    /// The fingerprint ignores line order but not content.
    #[test]
    fn fingerprint_is_order_free() {
        let a = [Line::new("a", 1), Line::new("b", 2)];
        let b = [Line::new("b", 2), Line::new("a", 1)];
        let c = [Line::new("a", 2), Line::new("b", 1)];
        assert_eq!(Fnv::new().lines(&a).finish(), Fnv::new().lines(&b).finish());
        assert_ne!(Fnv::new().lines(&a).finish(), Fnv::new().lines(&c).finish());
    }
}
