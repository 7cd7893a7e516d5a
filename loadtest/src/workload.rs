//! The workload model: a catalog of SKUs with Zipf popularity, carts of a
//! few distinct lines, and sessions that end in a confirm, a release or an
//! abandoned hold.
//!
//! Everything random about a session (its cart, how it ends, its think time)
//! is drawn when it arrives, from its region's seeded generator, so a seed
//! replays the same offered load whatever the server answers.

use serde::Serialize;

use crate::rng::{Rng, Zipf};
use crate::scenario::Scenario;

/// Longest SKU prefix; with the rank suffix a name stays well under
/// Reservoir's 64-byte SKU limit.
pub const SKU_PREFIX_BYTES_MAX: usize = 32;
/// Draws a cart may take to find distinct SKUs before it settles for fewer
/// lines (the hot SKUs make repeats common).
pub const CART_DRAWS_MAX: usize = 32;

/// One SKU of the catalog.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CatalogSku {
    /// Its name, e.g. `lt-123456-00001`.
    pub sku: String,
    /// Its popularity rank, 1 = hottest.
    pub rank: usize,
    /// Units stocked before the run.
    pub stock: u64,
    /// Whether it is one of the scenario's hot SKUs.
    pub hot: bool,
}

/// The catalog of a run.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// SKUs by rank (index 0 = rank 1).
    pub skus: Vec<CatalogSku>,
    zipf: Zipf,
    lines_max: usize,
    qty_max: u64,
}

/// One line of a cart: index into the catalog, and units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CartLine {
    /// Index into [`Catalog::skus`].
    pub sku: usize,
    /// Units, ≥ 1.
    pub qty: u64,
}

/// How a session ends after its reserve succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Buys: confirm after the think time.
    Confirm,
    /// Changes its mind: release after the think time.
    Release,
    /// Walks away: the hold is left to expire.
    Abandon,
}

/// One session, drawn at its arrival.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionPlan {
    /// Distinct SKUs, sorted by catalog index.
    pub lines: Vec<CartLine>,
    /// How it ends.
    pub kind: SessionKind,
    /// Milliseconds between the reserve's answer and the follow-up.
    pub think_ms: u64,
}

impl Catalog {
    /// The catalog of `scenario`, SKUs named `{prefix}-{rank:05}`.
    pub fn new(scenario: &Scenario, prefix: &str) -> Catalog {
        let c = &scenario.catalog;
        let prefix: String = prefix.chars().take(SKU_PREFIX_BYTES_MAX).collect();
        let skus = scenario
            .stock_plan()
            .into_iter()
            .enumerate()
            .map(|(i, stock)| CatalogSku {
                sku: format!("{prefix}-{:05}", i + 1),
                rank: i + 1,
                stock,
                hot: i < c.hot_skus,
            })
            .collect();
        Catalog {
            skus,
            zipf: Zipf::new(c.skus, c.zipf_s),
            lines_max: c.lines_max,
            qty_max: c.qty_max,
        }
    }

    /// Total units stocked.
    pub fn stock_total(&self) -> u64 {
        self.skus.iter().map(|s| s.stock).sum()
    }

    /// A cart: 1..=lines_max distinct SKUs by popularity, 1..=qty_max each.
    pub fn cart(&self, rng: &mut Rng) -> Vec<CartLine> {
        let want = rng.range_inclusive(1, self.lines_max as u64) as usize;
        let mut lines: Vec<CartLine> = Vec::with_capacity(want);
        for _ in 0..CART_DRAWS_MAX {
            if lines.len() == want {
                break;
            }
            let sku = self.zipf.sample(rng) - 1;
            if lines.iter().all(|l| l.sku != sku) {
                lines.push(CartLine {
                    sku,
                    qty: rng.range_inclusive(1, self.qty_max),
                });
            }
        }
        lines.sort_by_key(|l| l.sku);
        lines
    }
}

/// Session weights, normalised once.
#[derive(Clone, Debug)]
pub struct SessionMix {
    confirm: f64,
    release: f64,
    think_ms: u64,
}

impl SessionMix {
    /// The mix of `scenario` (weights need not add up to 1).
    pub fn new(scenario: &Scenario) -> SessionMix {
        let s = &scenario.sessions;
        let total = s.confirm + s.release + s.abandon;
        SessionMix {
            confirm: s.confirm / total,
            release: s.release / total,
            think_ms: s.think_ms,
        }
    }

    /// Draws a whole session.
    pub fn session(&self, catalog: &Catalog, rng: &mut Rng) -> SessionPlan {
        let lines = catalog.cart(rng);
        let u = rng.next_f64();
        let kind = if u < self.confirm {
            SessionKind::Confirm
        } else if u < self.confirm + self.release {
            SessionKind::Release
        } else {
            SessionKind::Abandon
        };
        let think_ms = rng.range_inclusive(0, 2 * self.think_ms);
        SessionPlan {
            lines,
            kind,
            think_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::BuiltIn;

    /// Carts have 1..=3 distinct, sorted lines of 1..=qty_max units, and the
    /// session mix follows its weights within 2 %.
    #[test]
    fn carts_and_mix() {
        let scenario = Scenario::built_in(BuiltIn::BlackFriday);
        let catalog = Catalog::new(&scenario, "lt-test");
        let mix = SessionMix::new(&scenario);
        let mut rng = Rng::new(9);
        let n = 20_000;
        let mut confirms = 0;
        for _ in 0..n {
            let s = mix.session(&catalog, &mut rng);
            assert!((1..=3).contains(&s.lines.len()));
            assert!(s.lines.windows(2).all(|w| w[0].sku < w[1].sku));
            assert!(s.lines.iter().all(|l| (1..=2).contains(&l.qty)));
            assert!(s.think_ms <= 200);
            confirms += usize::from(s.kind == SessionKind::Confirm);
        }
        let share = confirms as f64 / n as f64;
        assert!((share - 0.6).abs() < 0.02, "confirm share {share}");
        assert_eq!(catalog.skus[0].sku, "lt-test-00001");
        assert!(catalog.skus[0].hot && !catalog.skus[3].hot);
    }
}
