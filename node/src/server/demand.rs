//! Demand per SKU: units asked for in Reserve calls (met or not) over a
//! sliding window, which the region reports to the rebalancer.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reservoir_tokens::{Millis, Sku, Units};

/// Width of one slot of the window.
pub const SLOT_MS: Millis = 100;
/// Most SKUs tracked; past it new SKUs are not counted (the oldest entries
/// are dropped when the window rolls).
pub const SKUS_MAX: usize = 100_000;

/// A sliding-window counter of requested units per SKU.
pub struct DemandMeter {
    window_ms: Millis,
    slots: Mutex<BTreeMap<Sku, Vec<(Millis, Units)>>>,
}

impl DemandMeter {
    /// A meter over `window_ms`.
    pub fn new(window_ms: Millis) -> DemandMeter {
        DemandMeter {
            window_ms: window_ms.max(SLOT_MS),
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts `units` of `sku` asked for at `now_ms`.
    pub fn record(&self, sku: &str, units: Units, now_ms: Millis) {
        let slot = now_ms / SLOT_MS;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(sku) && slots.len() >= SKUS_MAX {
            return;
        }
        let entry = slots.entry(sku.to_string()).or_default();
        match entry.last_mut() {
            Some((s, n)) if *s == slot => *n += units,
            _ => entry.push((slot, units)),
        }
        let oldest = slot.saturating_sub(self.window_ms / SLOT_MS);
        let stale = entry.iter().take_while(|(s, _)| *s < oldest).count();
        entry.drain(..stale);
    }

    /// Units asked for per SKU within the window ending at `now_ms`.
    pub fn demand(&self, now_ms: Millis) -> BTreeMap<Sku, Units> {
        let oldest = (now_ms / SLOT_MS).saturating_sub(self.window_ms / SLOT_MS);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, v| v.last().is_some_and(|(s, _)| *s >= oldest));
        slots
            .iter()
            .map(|(sku, v)| {
                (
                    sku.clone(),
                    v.iter().filter(|(s, _)| *s >= oldest).map(|(_, n)| n).sum(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units inside the window count; older ones fall out.
    #[test]
    fn window_slides() {
        let m = DemandMeter::new(1_000);
        m.record("hot", 3, 10_000);
        m.record("hot", 2, 10_050);
        m.record("cold", 1, 10_500);
        assert_eq!(m.demand(10_600).get("hot"), Some(&5));
        assert_eq!(m.demand(11_050).get("hot"), Some(&5));
        assert_eq!(m.demand(11_200).get("hot"), None);
        assert_eq!(m.demand(11_200).get("cold"), Some(&1));
    }
}
