//! Unit tests for `rebalance::plan` under both policies: tokens flow towards
//! demand, and every plan keeps the safety bounds (grants within the pool,
//! revokes within what is available and never below demand, unreachable
//! regions untouched, one transfer per region and SKU, shortfall never up).

use proptest::prelude::*;
use reservoir_tokens::TransferKind;
use reservoir_tokens::rebalance::{
    self, PlannedTransfer, Policy, Proportional, RegionView, SkuView, TakeHalf, after, shortfall,
};
use std::collections::BTreeSet;

fn region(name: &str, available: u64, demand: u64) -> RegionView {
    RegionView {
        region: name.into(),
        available,
        demand,
        reachable: true,
    }
}

fn unreachable(name: &str, available: u64, demand: u64) -> RegionView {
    RegionView {
        reachable: false,
        ..region(name, available, demand)
    }
}

fn view(sku: &str, pool: u64, regions: Vec<RegionView>) -> SkuView {
    SkuView {
        sku: sku.into(),
        pool,
        regions,
    }
}

fn proportional() -> Policy {
    Policy::Proportional(Proportional::default())
}

fn take_half() -> Policy {
    Policy::TakeHalf(TakeHalf::default())
}

fn policies() -> [Policy; 2] {
    [proportional(), take_half()]
}

/// Plans and checks every safety bound; returns the plan.
fn checked_plan(views: &[SkuView], policy: &Policy) -> Vec<PlannedTransfer> {
    let plan = rebalance::plan(views, policy);
    check_safety(views, &plan, policy);
    plan
}

/// The bounds every plan keeps, whatever the policy.
fn check_safety(views: &[SkuView], plan: &[PlannedTransfer], policy: &Policy) {
    let mut pairs = BTreeSet::new();
    for t in plan {
        let v = views
            .iter()
            .find(|v| v.sku == t.sku)
            .unwrap_or_else(|| panic!("{policy:?}: {t:?} for an unknown SKU"));
        let r = v
            .regions
            .iter()
            .find(|r| r.region == t.region)
            .unwrap_or_else(|| panic!("{policy:?}: {t:?} for an unknown region"));
        assert!(r.reachable, "{policy:?}: {t:?} touches an unreachable region");
        assert!(t.units > 0, "{policy:?}: empty transfer {t:?}");
        assert!(
            pairs.insert((t.region.clone(), t.sku.clone())),
            "{policy:?}: two transfers for {} {}",
            t.region,
            t.sku
        );
        if t.kind == TransferKind::Revoke {
            assert!(
                t.units <= r.available,
                "{policy:?}: {t:?} takes more than {r:?} has"
            );
            assert!(
                r.available - t.units >= r.demand.min(r.available),
                "{policy:?}: {t:?} takes {r:?} below its demand"
            );
        }
    }
    for v in views {
        let grants: u64 = plan
            .iter()
            .filter(|t| t.sku == v.sku && t.kind == TransferKind::Grant)
            .map(|t| t.units)
            .sum();
        assert!(
            grants <= v.pool,
            "{policy:?}: grants {grants} > pool {} of {}",
            v.pool,
            v.sku
        );
        let next = after(v, plan);
        assert!(
            shortfall(&next) <= shortfall(v),
            "{policy:?}: shortfall of {} up from {} to {}",
            v.sku,
            shortfall(v),
            shortfall(&next)
        );
        // Unreachable regions are exactly as they were.
        for (a, b) in v.regions.iter().zip(&next.regions) {
            if !a.reachable {
                assert_eq!(a, b);
            }
        }
    }
}

fn units_for(plan: &[PlannedTransfer], kind: TransferKind, region: &str) -> u64 {
    plan.iter()
        .filter(|t| t.kind == kind && t.region == region)
        .map(|t| t.units)
        .sum()
}

/// Proportional splits the pool by demand over a floor: the most demand gets the most.
#[test]
fn proportional_grants_follow_demand() {
    let v = vec![view(
        "a",
        100,
        vec![region("us", 0, 80), region("eu", 0, 0), region("ap", 0, 20)],
    )];
    let plan = checked_plan(&v, &proportional());
    // Floor 10 each, the other 70 by demand 80:0:20 = 56:0:14.
    assert_eq!(units_for(&plan, TransferKind::Grant, "us"), 66);
    assert_eq!(units_for(&plan, TransferKind::Grant, "eu"), 10);
    assert_eq!(units_for(&plan, TransferKind::Grant, "ap"), 24);
    assert!(plan.iter().all(|t| t.kind == TransferKind::Grant && t.sku == "a"));
    // The floor kept for eu leaves us 14 short of its demand.
    assert_eq!(shortfall(&v[0]), 100);
    assert_eq!(shortfall(&after(&v[0], &plan)), 14);
}

/// TakeHalf grants a region under the threshold half the pool when the pool is richest.
#[test]
fn take_half_grants_half_the_pool() {
    let v = vec![view("a", 101, vec![region("us", 0, 50), region("eu", 40, 0)])];
    let plan = checked_plan(&v, &take_half());
    assert_eq!(
        plan,
        vec![PlannedTransfer {
            kind: TransferKind::Grant,
            region: "us".into(),
            sku: "a".into(),
            units: 51,
        }]
    );
    // Two poor regions: the poorer first, each half of what is left.
    let v = vec![view(
        "a",
        100,
        vec![region("us", 5, 0), region("eu", 2, 0), region("ap", 20, 0)],
    )];
    let plan = checked_plan(&v, &take_half());
    assert_eq!(units_for(&plan, TransferKind::Grant, "eu"), 50);
    assert_eq!(units_for(&plan, TransferKind::Grant, "us"), 25);
    assert_eq!(plan.len(), 2);
}

/// When the richest region cannot give, a poor region is served from the pool.
#[test]
fn take_half_falls_back_to_the_pool() {
    let v = vec![view("a", 10, vec![region("us", 0, 50), region("eu", 100, 100)])];
    for policy in policies() {
        let plan = checked_plan(&v, &policy);
        assert!(
            units_for(&plan, TransferKind::Grant, "us") > 0,
            "{policy:?}: {plan:?}"
        );
        assert_eq!(
            units_for(&plan, TransferKind::Revoke, "eu"),
            0,
            "{policy:?}: {plan:?}"
        );
    }
    let plan = checked_plan(&v, &take_half());
    assert_eq!(
        plan,
        vec![PlannedTransfer {
            kind: TransferKind::Grant,
            region: "us".into(),
            sku: "a".into(),
            units: 5,
        }]
    );
}

/// With an empty pool, surplus is revoked from regions, never below their demand.
#[test]
fn surplus_is_revoked_when_the_pool_is_empty() {
    let v = vec![view("a", 0, vec![region("us", 0, 100), region("eu", 100, 0)])];
    let plan = checked_plan(&v, &proportional());
    // Targets: us 90 (floor 10 + all 80 by demand), eu 10.
    assert_eq!(
        plan,
        vec![PlannedTransfer {
            kind: TransferKind::Revoke,
            region: "eu".into(),
            sku: "a".into(),
            units: 90,
        }]
    );
    let plan = checked_plan(&v, &take_half());
    assert_eq!(units_for(&plan, TransferKind::Revoke, "eu"), 50);
    assert_eq!(plan.len(), 1);

    // A donor with demand of its own keeps it.
    let v = vec![view("a", 0, vec![region("us", 0, 100), region("eu", 100, 70)])];
    for policy in policies() {
        let plan = checked_plan(&v, &policy);
        assert!(
            units_for(&plan, TransferKind::Revoke, "eu") <= 30,
            "{policy:?}: {plan:?}"
        );
    }
}

/// Over rounds of plan and carry out, tokens reach the region with demand under both policies.
#[test]
fn tokens_flow_to_demand_over_rounds() {
    for policy in policies() {
        let mut v = view(
            "a",
            0,
            vec![region("us", 0, 80), region("eu", 150, 0), region("ap", 50, 0)],
        );
        let start = shortfall(&v);
        assert_eq!(start, 80);
        for _ in 0..4 {
            let plan = checked_plan(std::slice::from_ref(&v), &policy);
            v = after(&v, &plan);
        }
        let us = &v.regions[0];
        assert!(
            us.available > 0,
            "{policy:?}: us has nothing after four rounds: {v:?}"
        );
        assert!(shortfall(&v) < start, "{policy:?}");
        if let Policy::Proportional(_) = policy {
            assert_eq!(shortfall(&v), 0, "proportional meets all demand: {v:?}");
        }
        let total: u64 = v.pool + v.regions.iter().map(|r| r.available).sum::<u64>();
        assert_eq!(total, 200, "{policy:?}: a plan neither makes nor loses tokens");
    }
}

/// Unreachable regions are never touched, and their tokens are not counted as free.
#[test]
fn unreachable_regions_are_never_touched() {
    let v = vec![view(
        "a",
        30,
        vec![
            unreachable("us", 1_000, 0),
            unreachable("eu", 0, 500),
            region("ap", 0, 10),
        ],
    )];
    for policy in policies() {
        let plan = checked_plan(&v, &policy);
        assert!(plan.iter().all(|t| t.region == "ap"), "{policy:?}: {plan:?}");
        assert!(
            !plan.is_empty(),
            "{policy:?}: ap needs tokens and the pool has them"
        );
    }
    // Every region cut off: nothing to do.
    let v = vec![view(
        "a",
        100,
        vec![unreachable("us", 0, 50), unreachable("eu", 0, 50)],
    )];
    for policy in policies() {
        assert!(checked_plan(&v, &policy).is_empty(), "{policy:?}");
    }
}

/// Grants never add up to more than the pool, however many regions need tokens.
#[test]
fn grants_never_exceed_the_pool() {
    let needy: Vec<RegionView> = (0..8).map(|i| region(&format!("r{i}"), 0, 100)).collect();
    for pool in [0, 1, 3, 7, 100] {
        let v = vec![view("a", pool, needy.clone())];
        for policy in policies() {
            let plan = checked_plan(&v, &policy);
            let granted: u64 = plan.iter().map(|t| t.units).sum();
            assert!(granted <= pool, "{policy:?}: {granted} > {pool}");
            if pool > 0 {
                assert!(granted > 0, "{policy:?}: the pool of {pool} is left idle");
            }
        }
    }
}

/// Each (region, SKU) gets at most one transfer, and each SKU is planned from its own pool.
#[test]
fn one_transfer_per_region_and_sku() {
    let v = vec![
        view("a", 100, vec![region("us", 0, 50), region("eu", 0, 50)]),
        view("b", 0, vec![region("us", 200, 0), region("eu", 0, 100)]),
        view("c", 10, vec![region("us", 0, 0), region("eu", 0, 0)]),
    ];
    for policy in policies() {
        let plan = checked_plan(&v, &policy);
        assert!(
            plan.iter().any(|t| t.sku == "a" && t.kind == TransferKind::Grant),
            "{policy:?}: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|t| t.sku == "b" && t.kind == TransferKind::Revoke && t.region == "us"),
            "{policy:?}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|t| t.sku == "b" && t.kind == TransferKind::Grant),
            "{policy:?}: b has no pool: {plan:?}"
        );
    }
}

/// A balanced view (demand met, within thresholds and slack) needs no transfers.
#[test]
fn balanced_view_needs_nothing() {
    let v = vec![view("a", 0, vec![region("us", 50, 50), region("eu", 50, 50)])];
    for policy in policies() {
        assert!(checked_plan(&v, &policy).is_empty(), "{policy:?}");
    }
    // Within the slack (25% of the target), no revoke churns tokens.
    let v = vec![view("a", 0, vec![region("us", 55, 50), region("eu", 45, 50)])];
    assert!(checked_plan(&v, &proportional()).is_empty());
    // Empty views plan nothing.
    for policy in policies() {
        assert!(checked_plan(&[], &policy).is_empty());
        assert!(checked_plan(&[view("a", 0, Vec::new())], &policy).is_empty());
    }
}

/// shortfall counts reachable unmet demand; after applies grants and revokes to the view.
#[test]
fn shortfall_and_after() {
    let v = view(
        "a",
        10,
        vec![
            region("us", 5, 20),
            region("eu", 30, 10),
            unreachable("ap", 0, 99),
        ],
    );
    assert_eq!(shortfall(&v), 15);
    let plan = vec![
        PlannedTransfer {
            kind: TransferKind::Grant,
            region: "us".into(),
            sku: "a".into(),
            units: 10,
        },
        PlannedTransfer {
            kind: TransferKind::Revoke,
            region: "eu".into(),
            sku: "a".into(),
            units: 20,
        },
        PlannedTransfer {
            kind: TransferKind::Grant,
            region: "us".into(),
            sku: "other".into(),
            units: 1_000,
        },
    ];
    let next = after(&v, &plan);
    assert_eq!(next.pool, 20);
    assert_eq!(next.regions[0].available, 15);
    assert_eq!(next.regions[1].available, 10);
    assert_eq!(shortfall(&next), 5);
}

fn region_strategy(i: usize) -> impl Strategy<Value = RegionView> {
    (0..300u64, 0..300u64, prop::bool::weighted(0.8)).prop_map(move |(available, demand, reachable)| {
        RegionView {
            region: format!("r{i}"),
            available,
            demand,
            reachable,
        }
    })
}

fn sku_strategy(i: usize) -> impl Strategy<Value = SkuView> {
    (0..600u64, 0usize..5).prop_flat_map(move |(pool, n)| {
        (0..n)
            .map(region_strategy)
            .collect::<Vec<_>>()
            .prop_map(move |regions| SkuView {
                sku: format!("s{i}"),
                pool,
                regions,
            })
    })
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (0..30u64, 0..30u64, 0..150u64).prop_map(|(floor, low_water, revoke_slack_pct)| {
            Policy::Proportional(Proportional {
                floor,
                low_water,
                revoke_slack_pct,
            })
        }),
        (0..60u64).prop_map(|threshold| Policy::TakeHalf(TakeHalf { threshold })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every plan of either policy keeps every safety bound for random views.
    #[test]
    fn every_plan_is_safe(
        views in (1usize..4).prop_flat_map(|n| (0..n).map(sku_strategy).collect::<Vec<_>>()),
        policy in policy_strategy(),
    ) {
        checked_plan(&views, &policy);
    }
}

/// Tokens stay where they are while no region is short: demand that swings
/// from round to round (each region's own demand always covered) moves no
/// token, although every swing changes the proportional shares.
#[test]
fn swinging_demand_moves_nothing_while_no_region_is_short() {
    let demands = [[5, 0, 0], [0, 3, 0], [0, 0, 4], [1, 1, 0], [0, 0, 0], [2, 0, 5]];
    let mut v = view(
        "a",
        0,
        vec![region("us", 100, 0), region("eu", 100, 0), region("ap", 100, 0)],
    );
    for round in demands.iter().cycle().take(60) {
        for (r, d) in v.regions.iter_mut().zip(round) {
            r.demand = *d;
        }
        let plan = checked_plan(std::slice::from_ref(&v), &proportional());
        assert!(plan.is_empty(), "demand {round:?} moved tokens: {plan:?}");
        v = after(&v, &plan);
    }
}

/// A short region is served from the pool first, and a revoke takes only
/// what the pool cannot cover.
#[test]
fn revokes_cover_only_what_the_pool_cannot() {
    // us needs 60 (demand 60, has 0); the pool has 20, eu has 200 spare.
    let v = vec![view("a", 20, vec![region("us", 0, 60), region("eu", 200, 0)])];
    let plan = checked_plan(&v, &proportional());
    let granted = units_for(&plan, TransferKind::Grant, "us");
    let revoked = units_for(&plan, TransferKind::Revoke, "eu");
    assert_eq!(granted, 20, "the pool goes to the short region: {plan:?}");
    // us's target: floor 10 + all the rest by demand = 210; it lacks 210,
    // the pool covers 20.
    assert_eq!(revoked, 190, "{plan:?}");
    // Without a short region, nothing is revoked however uneven the split.
    let v = vec![view("a", 0, vec![region("us", 10, 5), region("eu", 200, 0)])];
    assert!(checked_plan(&v, &proportional()).is_empty());
}
