//! Bounded memory of successful requests, for idempotency.

use crate::error::Rejection;
use crate::limits;
use crate::types::{Line, Millis, RequestId};
use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

/// What is remembered of one successful request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered<T> {
    /// Fingerprint of the request's content, to tell a retry from a reuse.
    pub fingerprint: u64,
    /// What the request produced (e.g. the reservation it created).
    pub value: T,
}

/// Request ids remembered for a bounded logical time and count. Only
/// successful requests are remembered: a refused request changed nothing, so
/// retrying it is safe. Persistent collections (`imbl`), so the state that
/// holds it clones in O(1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMemory<T: Clone> {
    entries: OrdMap<RequestId, Remembered<T>>,
    /// Ids in the order they were remembered, with the logical time; logical
    /// time never goes backwards, so this queue is sorted.
    order: Vector<(Millis, RequestId)>,
}

impl<T: Clone> Default for RequestMemory<T> {
    fn default() -> Self {
        RequestMemory {
            entries: OrdMap::new(),
            order: Vector::new(),
        }
    }
}

impl<T: Clone> RequestMemory<T> {
    /// The remembered outcome of `request_id`, if any.
    pub fn get(&self, request_id: &str) -> Option<&Remembered<T>> {
        self.entries.get(request_id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers a new request. The caller checked it is not remembered yet.
    pub fn remember(&mut self, request_id: RequestId, fingerprint: u64, value: T, now_ms: Millis) {
        self.order.push_back((now_ms, request_id.clone()));
        let old = self.entries.insert(request_id, Remembered { fingerprint, value });
        assert!(old.is_none(), "request id remembered twice");
    }

    /// Validates a stock adjustment and tells a new one from a retry: the
    /// new one's fingerprint, to remember once applied; `None` for a retry of
    /// an adjustment already applied; `REQUEST_ID_REUSED` for another
    /// adjustment under the same id.
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
        match self.get(request_id) {
            None => Ok(Some(fingerprint)),
            Some(seen) if seen.fingerprint == fingerprint => Ok(None),
            Some(_) => Err(Rejection::RequestIdReused {
                request_id: request_id.to_string(),
            }),
        }
    }

    /// Forgets at most `budget` ids that are older than `retention_ms` or
    /// beyond `count_max`, oldest first.
    pub fn prune(&mut self, now_ms: Millis, retention_ms: Millis, count_max: usize, budget: usize) {
        for _ in 0..budget {
            let Some((at_ms, _)) = self.order.front() else {
                break;
            };
            let too_old = at_ms.saturating_add(retention_ms) <= now_ms;
            if !too_old && self.order.len() <= count_max {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.entries.remove(&id);
            }
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

    /// Ids are forgotten once older than the retention, or beyond the count.
    #[test]
    fn prunes_by_age_and_count() {
        let mut m = RequestMemory::default();
        for i in 0..10u64 {
            m.remember(format!("r{i}"), i, i, i * 100);
        }
        m.prune(500, 1_000, 100, 64);
        assert_eq!(m.len(), 10);
        m.prune(1_250, 1_000, 100, 64); // r0 (0), r1 (100), r2 (200) are >= 1000 old
        assert_eq!(m.len(), 7);
        assert!(m.get("r2").is_none() && m.get("r3").is_some());
        m.prune(1_250, 1_000, 5, 1); // budget 1
        assert_eq!(m.len(), 6);
        m.prune(1_250, 1_000, 5, 64);
        assert_eq!(m.len(), 5);
        assert!(m.get("r4").is_none() && m.get("r5").is_some());
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
