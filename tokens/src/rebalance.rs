//! The rebalancer's policy: a pure function from what each region has and
//! needs to a list of grants and revokes.
//!
//! Safety bounds every plan keeps, whatever the policy: grants never add up
//! to more than the pool; a revoke never asks for more than the region has
//! available; an unreachable region is never touched; at most one transfer
//! per region and SKU; and no revoke takes a region below its own demand, so
//! a plan never increases the total shortfall (see [`shortfall`]).

use crate::types::*;
use serde::{Deserialize, Serialize};

/// What the rebalancer knows of one region, for one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionView {
    /// The region.
    pub region: RegionId,
    /// Its available tokens.
    pub available: Units,
    /// Units it is expected to need before the plan after next: recent
    /// reserve rate times the planning horizon.
    pub demand: Units,
    /// Whether the ledger leader can reach it now.
    pub reachable: bool,
}

/// What the rebalancer knows of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuView {
    /// The SKU.
    pub sku: Sku,
    /// Units in the ledger's pool.
    pub pool: Units,
    /// Every region, reachable or not.
    pub regions: Vec<RegionView>,
}

/// Our policy: aim each reachable region at a floor plus a share of the free
/// tokens proportional to its demand, but move tokens only where they are
/// short (see [`plan`]'s notes in `plan_proportional`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proportional {
    /// Tokens every reachable region keeps at least (when there are enough).
    pub floor: Units,
    /// A region under this many available tokens is topped up first.
    pub low_water: Units,
    /// A region gives back surplus only beyond this percentage of its target
    /// (or `low_water`, if larger), and a region that is not short gets pool
    /// tokens only when it lacks more than that, so tokens do not churn.
    pub revoke_slack_pct: u64,
}

impl Default for Proportional {
    fn default() -> Self {
        Proportional {
            floor: 10,
            low_water: 5,
            revoke_slack_pct: 25,
        }
    }
}

/// The Bounded Counter baseline (Balegas et al., 2015): a region under the
/// threshold takes half of the richest holder's tokens (the pool counts as a
/// holder). A donor region never gives below its own demand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeHalf {
    /// Regions with fewer available tokens ask for more.
    pub threshold: Units,
}

impl Default for TakeHalf {
    fn default() -> Self {
        TakeHalf { threshold: 10 }
    }
}

/// Which policy to plan with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// [`Proportional`], the default.
    Proportional(Proportional),
    /// [`TakeHalf`], the literature baseline.
    TakeHalf(TakeHalf),
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Proportional(Proportional::default())
    }
}

/// One transfer the plan asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTransfer {
    /// Grant (pool → region) or revoke (region → pool).
    pub kind: TransferKind,
    /// The region.
    pub region: RegionId,
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub units: Units,
}

/// The plan for every SKU in `view`.
pub fn plan(view: &[SkuView], policy: &Policy) -> Vec<PlannedTransfer> {
    let mut out = Vec::new();
    for sku in view {
        match policy {
            Policy::Proportional(p) => plan_proportional(sku, p, &mut out),
            Policy::TakeHalf(p) => plan_take_half(sku, p, &mut out),
        }
    }
    out
}

/// Units the reachable regions need and do not have: `Σ max(0, demand - available)`.
pub fn shortfall(view: &SkuView) -> Units {
    view.regions
        .iter()
        .filter(|r| r.reachable)
        .map(|r| r.demand.saturating_sub(r.available))
        .sum()
}

/// The view after a plan has been carried out: grants arrive, revoked units
/// go to the pool.
pub fn after(view: &SkuView, plan: &[PlannedTransfer]) -> SkuView {
    let mut v = view.clone();
    for t in plan.iter().filter(|t| t.sku == v.sku) {
        let r = v
            .regions
            .iter_mut()
            .find(|r| r.region == t.region)
            .expect("planned for a known region");
        match t.kind {
            TransferKind::Grant => {
                r.available += t.units;
                v.pool -= t.units;
            }
            TransferKind::Revoke => {
                r.available -= t.units;
                v.pool += t.units;
            }
        }
    }
    v
}

/// The most a region can give without going under its own demand.
fn spare(r: &RegionView, keep: Units) -> Units {
    r.available.saturating_sub(keep.max(r.demand))
}

fn plan_proportional(view: &SkuView, p: &Proportional, out: &mut Vec<PlannedTransfer>) {
    let reachable: Vec<&RegionView> = view.regions.iter().filter(|r| r.reachable).collect();
    if reachable.is_empty() {
        return;
    }
    let n = reachable.len() as u128;
    let free: u128 = view.pool as u128 + reachable.iter().map(|r| r.available as u128).sum::<u128>();
    let floor = (p.floor as u128).min(free / n);
    let rest = free - floor * n;
    let demand: u128 = reachable.iter().map(|r| r.demand as u128).sum();

    // Largest-remainder split of `rest` by demand (evenly when there is none).
    let weight = |r: &RegionView| if demand == 0 { 1 } else { r.demand as u128 };
    let total_weight = if demand == 0 { n } else { demand };
    let mut shares: Vec<(u128, u128, usize)> = reachable
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let exact = rest * weight(r);
            (exact / total_weight, exact % total_weight, i)
        })
        .collect();
    let mut left = rest - shares.iter().map(|s| s.0).sum::<u128>();
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|&a, &b| shares[b].1.cmp(&shares[a].1).then(a.cmp(&b)));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        shares[i].0 += 1;
        left -= 1;
    }
    let targets: Vec<Units> = shares
        .iter()
        .map(|s| (floor + s.0).min(u64::MAX as u128) as Units)
        .collect();

    // Tokens move only where they are short: a region is short when its
    // available tokens will not last the horizon (under its own demand, or
    // under the low-water mark). A region merely under its proportional
    // share gets pool tokens only when the gap is beyond the slack, and no
    // region gives tokens back unless a short region needs them and the
    // pool cannot cover it. Proportional shares swing with every burst of
    // demand; moving tokens on every swing (a revoke here, a grant there,
    // and back a round later) cost more than it bought.
    let slack = |target: Units| p.low_water.max(target.saturating_mul(p.revoke_slack_pct) / 100);
    let mut needy = Vec::new();
    for (r, &target) in reachable.iter().zip(&targets) {
        if r.available >= target {
            continue;
        }
        let short = r.available < r.demand.max(p.low_water);
        let need = target - r.available;
        if short || need > slack(target) {
            needy.push((*r, need, short));
        }
    }
    // Short regions first, those under the low-water mark before the rest,
    // then the largest need.
    needy.sort_by(|a, b| {
        (!a.2)
            .cmp(&!b.2)
            .then((a.0.available >= p.low_water).cmp(&(b.0.available >= p.low_water)))
            .then(b.1.cmp(&a.1))
            .then(a.0.region.cmp(&b.0.region))
    });
    let short_need: Units = needy.iter().filter(|n| n.2).map(|n| n.1).sum();
    let mut uncovered = short_need.saturating_sub(view.pool);
    if uncovered > 0 {
        // Revoke from the regions with the most to spare, beyond the slack
        // and never below their own demand, only what the short regions lack.
        let mut donors: Vec<(&RegionView, Units)> = reachable
            .iter()
            .zip(&targets)
            .filter(|(r, target)| r.available > **target && r.available - **target > slack(**target))
            .map(|(r, &target)| (*r, spare(r, target)))
            .filter(|&(_, units)| units > 0)
            .collect();
        donors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.region.cmp(&b.0.region)));
        for (r, units) in donors {
            if uncovered == 0 {
                break;
            }
            let units = units.min(uncovered);
            uncovered -= units;
            out.push(PlannedTransfer {
                kind: TransferKind::Revoke,
                region: r.region.clone(),
                sku: view.sku.clone(),
                units,
            });
        }
    }
    let mut pool = view.pool;
    for (r, need, _) in needy {
        let units = need.min(pool);
        if units == 0 {
            break;
        }
        pool -= units;
        out.push(PlannedTransfer {
            kind: TransferKind::Grant,
            region: r.region.clone(),
            sku: view.sku.clone(),
            units,
        });
    }
}

fn plan_take_half(view: &SkuView, p: &TakeHalf, out: &mut Vec<PlannedTransfer>) {
    let mut poor: Vec<&RegionView> = view
        .regions
        .iter()
        .filter(|r| r.reachable && r.available < p.threshold)
        .collect();
    poor.sort_by(|a, b| a.available.cmp(&b.available).then(a.region.cmp(&b.region)));
    let mut touched: Vec<&str> = Vec::new();
    let mut pool = view.pool;
    for r in poor {
        if touched.contains(&r.region.as_str()) {
            continue;
        }
        touched.push(&r.region);
        // The richest other reachable region not yet in this plan.
        let richest = view
            .regions
            .iter()
            .filter(|d| d.reachable && d.region != r.region && !touched.contains(&d.region.as_str()))
            .max_by(|a, b| a.available.cmp(&b.available).then(b.region.cmp(&a.region)));
        // What the richest region can give without going under its own
        // demand. If that is nothing, the pool is the richest holder that
        // can give: otherwise a pool with tokens would sit idle for ever.
        let donation = richest
            .filter(|d| d.available > pool)
            .map(|d| (d, (d.available / 2).min(spare(d, 0))))
            .filter(|&(_, units)| units > 0);
        match donation {
            Some((d, units)) => {
                touched.push(&d.region);
                out.push(PlannedTransfer {
                    kind: TransferKind::Revoke,
                    region: d.region.clone(),
                    sku: view.sku.clone(),
                    units,
                });
            }
            None => {
                let units = pool.div_ceil(2);
                if units > 0 {
                    pool -= units;
                    out.push(PlannedTransfer {
                        kind: TransferKind::Grant,
                        region: r.region.clone(),
                        sku: view.sku.clone(),
                        units,
                    });
                }
            }
        }
    }
}
