//! Unit tests for every command of `LedgerState`, through the public API only.
//!
//! Every helper that applies a command also checks the ledger's own books
//! (`books_drift()` zero for every SKU), so every step of every test is
//! audited. Refusals are checked with [`refused`], which asserts that the
//! command changed nothing but the logical clock.

use reservoir_tokens::ledger::LedgerSku;
use reservoir_tokens::limits::{
    ADJUSTMENT_IDS_MAX, ADJUSTMENT_WINDOW_MS, REQUEST_ID_BYTES_MAX, SETTLE_BATCH_MAX, STOCK_DELTA_MAX,
    TRANSFER_UNITS_MAX, TRANSFERS_IN_FLIGHT_MAX,
};
use reservoir_tokens::{
    ErrorKind, LedgerApplied, LedgerCommand, LedgerOp, LedgerOutcome, LedgerState, Line, Millis, Rejection,
    SettleEntry, Transfer, TransferKind, Units,
};
use serde_json::Value;

const T0: Millis = 1_700_000_000_000;
const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";

// ----- helpers -----

/// Applies `op` at `now_ms`, then checks the ledger's books.
fn apply(l: &mut LedgerState, now_ms: Millis, op: LedgerOp) -> LedgerOutcome {
    let out = l.apply(LedgerCommand { now_ms, op });
    assert_books(l);
    out
}

/// Per SKU: stocked = pool + Σ granted + grants in flight + settled.
fn assert_books(l: &LedgerState) {
    for (sku, drift) in l.books_drift() {
        assert_eq!(drift, 0, "ledger books of {sku} drift: {:?}", l.sku(&sku));
    }
}

/// The state as JSON, without the logical clock.
fn snapshot(l: &LedgerState) -> Value {
    let mut v = serde_json::to_value(l).expect("a ledger state serializes");
    v.as_object_mut()
        .expect("a struct")
        .remove("clock_ms")
        .expect("has a clock");
    v
}

/// Applies `op` one ms after the clock and expects it refused with `reason`,
/// with nothing changed but the clock.
fn refused(l: &mut LedgerState, op: LedgerOp, reason: &str) -> Rejection {
    let before = snapshot(l);
    let now_ms = l.clock_ms() + 1;
    let err = apply(l, now_ms, op.clone()).expect_err(&format!("{op:?} should be refused"));
    assert_eq!(err.reason(), reason, "{op:?} refused as {err}");
    assert_eq!(snapshot(l), before, "refused {op:?} changed the state");
    assert_eq!(l.clock_ms(), now_ms, "the clock still moves on a refusal");
    err
}

/// Applies `op` one ms after the clock, expects success and no change apart
/// from the clock (an idempotent replay).
fn replayed(l: &mut LedgerState, op: LedgerOp) -> LedgerApplied {
    let before = snapshot(l);
    let now_ms = l.clock_ms() + 1;
    let out = apply(l, now_ms, op.clone()).unwrap_or_else(|e| panic!("{op:?} refused: {e}"));
    assert_eq!(snapshot(l), before, "replayed {op:?} changed the state");
    out
}

fn adjust(request_id: &str, sku: &str, delta: i64) -> LedgerOp {
    LedgerOp::AdjustStock {
        request_id: request_id.into(),
        sku: sku.into(),
        delta,
    }
}

fn begin_grant(region: &str, sku: &str, units: Units) -> LedgerOp {
    LedgerOp::BeginGrant {
        region: region.into(),
        sku: sku.into(),
        units,
    }
}

fn begin_revoke(region: &str, sku: &str, units_max: Units) -> LedgerOp {
    LedgerOp::BeginRevoke {
        region: region.into(),
        sku: sku.into(),
        units_max,
    }
}

fn complete_grant(transfer_id: u64) -> LedgerOp {
    LedgerOp::CompleteGrant { transfer_id }
}

fn complete_revoke(transfer_id: u64, units: Units) -> LedgerOp {
    LedgerOp::CompleteRevoke { transfer_id, units }
}

fn entry(seq: u64, spec: &[(&str, Units)]) -> SettleEntry {
    SettleEntry {
        seq,
        lines: spec.iter().map(|&(sku, q)| Line::new(sku, q)).collect(),
    }
}

fn settle(region: &str, entries: Vec<SettleEntry>) -> LedgerOp {
    LedgerOp::Settle {
        region: region.into(),
        entries,
    }
}

fn stock(out: LedgerOutcome) -> (String, Units, Units) {
    match out {
        Ok(LedgerApplied::Stock {
            sku,
            stocked_total,
            pool,
        }) => (sku, stocked_total, pool),
        other => panic!("expected Stock, got {other:?}"),
    }
}

fn begun(out: LedgerOutcome) -> Transfer {
    match out {
        Ok(LedgerApplied::Begun(t)) => t,
        other => panic!("expected Begun, got {other:?}"),
    }
}

fn completed(out: LedgerOutcome) -> (u64, bool) {
    match out {
        Ok(LedgerApplied::Completed {
            transfer_id,
            duplicate,
        }) => (transfer_id, duplicate),
        other => panic!("expected Completed, got {other:?}"),
    }
}

fn settled(out: LedgerOutcome) -> (String, u64, usize) {
    match out {
        Ok(LedgerApplied::Settled {
            region,
            watermark,
            applied,
        }) => (region, watermark, applied),
        other => panic!("expected Settled, got {other:?}"),
    }
}

fn kv(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|&(k, v)| (k, v.to_string())).collect()
}

fn books(l: &LedgerState, sku: &str) -> LedgerSku {
    l.sku(sku).cloned().unwrap_or_default()
}

fn granted(l: &LedgerState, sku: &str, region: &str) -> i64 {
    books(l, sku).granted.get(region).copied().unwrap_or(0)
}

/// A ledger at `T0` with `stock` in its pool.
fn stocked(stock: &[(&str, i64)]) -> LedgerState {
    let mut l = LedgerState::new();
    for &(sku, units) in stock {
        apply(&mut l, T0, adjust(&format!("seed-{sku}"), sku, units)).expect("seed stock");
    }
    l
}

// ----- AdjustStock -----

/// AdjustStock adds to, and removes from, both the pool and the stocked total.
#[test]
fn adjust_stock_adds_and_removes() {
    let mut l = LedgerState::new();
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-1", "a", 100))),
        ("a".into(), 100, 100)
    );
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-2", "a", 50))),
        ("a".into(), 150, 150)
    );
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-3", "a", -30))),
        ("a".into(), 120, 120)
    );
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-4", "b", 7))),
        ("b".into(), 7, 7)
    );
    let a = books(&l, "a");
    assert_eq!((a.stocked_total, a.pool, a.settled_total), (120, 120, 0));
    assert!(a.granted.is_empty());
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-5", "a", -120))),
        ("a".into(), 0, 0)
    );
}

/// Stock is removed only from the pool, never from granted or in-flight units.
#[test]
fn adjust_stock_removes_only_from_the_pool() {
    let mut l = stocked(&[("a", 100)]);
    begun(apply(&mut l, T0, begin_grant(US, "a", 60)));
    let err = refused(&mut l, adjust("adj-1", "a", -41), "STOCK_NOT_REMOVABLE");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        err.metadata(),
        kv(&[("sku", "a"), ("requested", "41"), ("removable", "40")])
    );
    completed(apply(&mut l, T0, complete_grant(1)));
    refused(&mut l, adjust("adj-1", "a", -41), "STOCK_NOT_REMOVABLE");
    let err = refused(&mut l, adjust("adj-2", "zz", -1), "STOCK_NOT_REMOVABLE");
    assert_eq!(
        err.metadata(),
        kv(&[("sku", "zz"), ("requested", "1"), ("removable", "0")])
    );
    assert!(l.sku("zz").is_none(), "a refusal creates no SKU");
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-1", "a", -40))),
        ("a".into(), 60, 0)
    );
    assert_eq!(granted(&l, "a", US), 60);
}

/// AdjustStock is idempotent by request_id; another request under the id is REQUEST_ID_REUSED.
#[test]
fn adjust_stock_is_idempotent() {
    let mut l = LedgerState::new();
    apply(&mut l, T0, adjust("adj-1", "a", 100)).expect("adjust");
    assert_eq!(
        stock(Ok(replayed(&mut l, adjust("adj-1", "a", 100)))),
        ("a".into(), 100, 100)
    );
    begun(apply(&mut l, T0, begin_grant(US, "a", 30)));
    assert_eq!(
        stock(Ok(replayed(&mut l, adjust("adj-1", "a", 100)))),
        ("a".into(), 100, 70)
    );
    for op in [
        adjust("adj-1", "a", 99),
        adjust("adj-1", "b", 100),
        adjust("adj-1", "a", -100),
    ] {
        let err = refused(&mut l, op, "REQUEST_ID_REUSED");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(err.metadata(), kv(&[("request_id", "adj-1")]));
    }
    refused(&mut l, adjust("adj-2", "a", -80), "STOCK_NOT_REMOVABLE");
    apply(&mut l, T0, adjust("adj-3", "a", 10)).expect("adjust");
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-2", "a", -80))),
        ("a".into(), 30, 0)
    );
}

/// Every AdjustStock input limit (request_id, sku, delta) gives its INVALID_* reason.
#[test]
fn adjust_stock_input_limits() {
    let mut l = stocked(&[("a", 10)]);
    let max = STOCK_DELTA_MAX as i64;
    let cases = [
        (adjust("adj-1", "a", 0), "INVALID_DELTA"),
        (adjust("adj-1", "a", max + 1), "INVALID_DELTA"),
        (adjust("adj-1", "a", -max - 1), "INVALID_DELTA"),
        (adjust("adj-1", "a", i64::MIN), "INVALID_DELTA"),
        (adjust("adj-1", "a b", 1), "INVALID_SKU"),
        (adjust("adj-1", "", 1), "INVALID_SKU"),
        (adjust("", "a", 1), "INVALID_REQUEST_ID"),
        (
            adjust(&"r".repeat(REQUEST_ID_BYTES_MAX + 1), "a", 1),
            "INVALID_REQUEST_ID",
        ),
        (adjust("adj\u{7f}", "a", 1), "INVALID_REQUEST_ID"),
    ];
    for (op, reason) in cases {
        let err = refused(&mut l, op, reason);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    let expected = 10 + STOCK_DELTA_MAX;
    assert_eq!(
        stock(apply(&mut l, T0, adjust("adj-1", "a", max))),
        ("a".into(), expected, expected)
    );
}

/// Issue 12: an AdjustStock retried 11 minutes later, after many other
/// adjustments, is not applied twice while the stock it added is there;
/// once that stock has left (first in, first out) and the window has
/// passed, its id is forgotten and the same id is a new adjustment.
#[test]
fn adjust_stock_retried_late_is_not_applied_twice() {
    const ELEVEN_MIN: Millis = 11 * 60 * 1000;
    let mut l = LedgerState::new();
    assert_eq!(stock(apply(&mut l, T0, adjust("adj-1", "a", 10))).1, 10);
    for i in 0..2_000u64 {
        let sku = if i % 2 == 0 { "a" } else { "b" };
        apply(&mut l, T0 + 1 + i * 301, adjust(&format!("other-{i}"), sku, 1)).expect("adjust");
    }
    assert!(l.clock_ms() > T0 + ADJUSTMENT_WINDOW_MS);
    apply(&mut l, T0 + ELEVEN_MIN, complete_grant(99)).expect_err("no such transfer");
    let out = stock(Ok(replayed(&mut l, adjust("adj-1", "a", 10))));
    assert_eq!(out, ("a".into(), 1_010, 1_010), "the figures, not applied again");
    refused(&mut l, adjust("adj-1", "a", 11), "REQUEST_ID_REUSED");

    // Ten units leave (removed): adj-1's stock is gone, and it is forgotten.
    apply(&mut l, T0 + ELEVEN_MIN, adjust("remove-1", "a", -10)).expect("remove");
    assert_eq!(books(&l, "a").removed_total, 10);
    assert_eq!(
        stock(apply(&mut l, T0 + ELEVEN_MIN, adjust("adj-1", "a", 11))),
        ("a".into(), 1_011, 1_011),
        "forgotten: a new adjustment"
    );
    // other-0 (11 units in right after it) still has its unit in stock, and
    // remove-1 (1,010 in) has all of them.
    refused(&mut l, adjust("other-0", "a", 2), "REQUEST_ID_REUSED");
    refused(&mut l, adjust("remove-1", "a", -9), "REQUEST_ID_REUSED");
}

/// ADJUSTMENT_IDS_MAX ids remembered, none of which may be forgotten: a new
/// adjustment is ADJUSTMENT_IDS_FULL and changes nothing, a retry is still
/// answered, and ids whose stock left make room once their window passes.
#[test]
fn adjustment_ids_are_bounded_and_never_forgotten_early() {
    let mut l = LedgerState::new();
    apply(&mut l, T0, adjust("first", "z", 1)).expect("adjust");
    apply(&mut l, T0, adjust("z-out", "z", -1)).expect("adjust");
    for i in 2..ADJUSTMENT_IDS_MAX {
        // Without the per-step books check of `apply`: a million steps.
        let op = adjust(&format!("adj-{i}"), "a", 1);
        l.apply(LedgerCommand { now_ms: T0, op }).expect("adjust");
    }
    // A million entries: compare the figures that could change, not the
    // whole state as JSON (as `refused` does).
    let before = (l.skus().clone(), l.transfers().clone());
    let err = apply(&mut l, T0 + 1, adjust("one-more", "b", 1)).expect_err("full");
    assert_eq!(err.reason(), "ADJUSTMENT_IDS_FULL");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(
        err.metadata(),
        kv(&[("remembered", &ADJUSTMENT_IDS_MAX.to_string())])
    );
    let err = apply(&mut l, T0 + 1, adjust("first", "z", 2)).expect_err("a reuse");
    assert_eq!(err.reason(), "REQUEST_ID_REUSED");
    assert_eq!(
        stock(apply(&mut l, T0 + 1, adjust("adj-2", "a", 1))).1,
        ADJUSTMENT_IDS_MAX as u64 - 2
    );
    assert_eq!(
        (l.skus().clone(), l.transfers().clone()),
        before,
        "nothing changed"
    );
    // z's stock left at once; after the window its two ids are forgotten.
    let at = T0 + ADJUSTMENT_WINDOW_MS;
    assert_eq!(stock(apply(&mut l, at, adjust("one-more", "b", 1))).1, 1);
    assert_eq!(
        stock(apply(&mut l, at, adjust("first", "z", 2))).1,
        2,
        "forgotten"
    );
    let err = apply(&mut l, at, adjust("two-more", "b", 1)).expect_err("full");
    assert_eq!(err.reason(), "ADJUSTMENT_IDS_FULL");
    assert_eq!(books(&l, "a").stocked_total, ADJUSTMENT_IDS_MAX as u64 - 2);
}

// ----- BeginGrant -----

/// BeginGrant takes its units out of the pool at once, in flight until completed.
#[test]
fn begin_grant_takes_from_the_pool() {
    let mut l = stocked(&[("a", 100)]);
    let t = begun(apply(&mut l, T0 + 5, begin_grant(US, "a", 30)));
    assert_eq!(
        t,
        Transfer {
            id: 1,
            kind: TransferKind::Grant,
            region: US.into(),
            sku: "a".into(),
            units: 30,
            began_at_ms: T0 + 5,
        }
    );
    assert_eq!(books(&l, "a").pool, 70);
    assert_eq!(books(&l, "a").stocked_total, 100);
    assert_eq!(granted(&l, "a", US), 0, "not granted until completed");
    assert_eq!(l.grants_in_flight("a"), 30);
    assert_eq!(l.transfers().get(&1), Some(&t));
    let t2 = begun(apply(&mut l, T0 + 6, begin_grant(EU, "a", 70)));
    assert_eq!(t2.id, 2);
    assert_eq!(books(&l, "a").pool, 0);
    assert_eq!(l.grants_in_flight("a"), 100);
}

/// A grant beyond the pool is INSUFFICIENT_POOL, changing nothing and using no id.
#[test]
fn begin_grant_beyond_the_pool_is_refused() {
    let mut l = stocked(&[("a", 10)]);
    let err = refused(&mut l, begin_grant(US, "a", 11), "INSUFFICIENT_POOL");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        err.metadata(),
        kv(&[("sku", "a"), ("requested", "11"), ("available", "10")])
    );
    let err = refused(&mut l, begin_grant(US, "zz", 1), "INSUFFICIENT_POOL");
    assert_eq!(
        err.metadata(),
        kv(&[("sku", "zz"), ("requested", "1"), ("available", "0")])
    );
    assert!(l.transfers().is_empty());
    // A refused begin uses no transfer id.
    assert_eq!(begun(apply(&mut l, T0, begin_grant(US, "a", 10))).id, 1);
}

/// Each (region, SKU) gets at most one transfer, and each SKU is planned from its own pool.
#[test]
fn one_transfer_per_region_and_sku() {
    let mut l = stocked(&[("a", 100), ("b", 100)]);
    let t = begun(apply(&mut l, T0, begin_grant(US, "a", 10)));
    let err = refused(&mut l, begin_grant(US, "a", 1), "TRANSFER_IN_FLIGHT");
    assert_eq!(err.metadata(), kv(&[("region", US), ("sku", "a")]));
    refused(&mut l, begin_revoke(US, "a", 1), "TRANSFER_IN_FLIGHT");
    begun(apply(&mut l, T0, begin_grant(EU, "a", 10)));
    begun(apply(&mut l, T0, begin_grant(US, "b", 10)));
    let r = begun(apply(&mut l, T0, begin_revoke(AP, "a", 10)));
    refused(&mut l, begin_grant(AP, "a", 1), "TRANSFER_IN_FLIGHT");
    refused(&mut l, begin_revoke(AP, "a", 1), "TRANSFER_IN_FLIGHT");
    assert_eq!(l.transfers().len(), 4);

    completed(apply(&mut l, T0, complete_grant(t.id)));
    begun(apply(&mut l, T0, begin_revoke(US, "a", 5)));
    completed(apply(&mut l, T0, complete_revoke(r.id, 0)));
    begun(apply(&mut l, T0, begin_grant(AP, "a", 5)));
}

/// At TRANSFERS_IN_FLIGHT_MAX in flight a begin is TRANSFERS_FULL; a completion makes room.
#[test]
fn transfers_full_at_the_limit() {
    let mut l = stocked(&[("a", 100)]);
    begun(apply(&mut l, T0, begin_grant(US, "a", 1)));
    // Filling the table is set-up: the books are checked once, after it.
    for i in 1..TRANSFERS_IN_FLIGHT_MAX {
        let op = begin_revoke(EU, &format!("s{i}"), 1);
        begun(l.apply(LedgerCommand { now_ms: T0, op }));
    }
    assert_books(&l);
    assert_eq!(l.transfers().len(), TRANSFERS_IN_FLIGHT_MAX);
    let err = refused(&mut l, begin_grant(AP, "a", 1), "TRANSFERS_FULL");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        err.metadata(),
        kv(&[("in_flight", &TRANSFERS_IN_FLIGHT_MAX.to_string())])
    );
    refused(&mut l, begin_revoke(AP, "a", 1), "TRANSFERS_FULL");
    completed(apply(&mut l, T0, complete_grant(1)));
    begun(apply(&mut l, T0, begin_grant(AP, "a", 1)));
    assert_eq!(books(&l, "a").pool, 98);
}

/// Every BeginGrant/BeginRevoke input limit (region, sku, units) gives its INVALID_* reason.
#[test]
fn begin_input_limits() {
    let mut l = stocked(&[("a", 10)]);
    for op in [begin_grant as fn(&str, &str, Units) -> LedgerOp, begin_revoke] {
        refused(&mut l, op("US", "a", 1), "INVALID_REGION");
        refused(&mut l, op("", "a", 1), "INVALID_REGION");
        refused(&mut l, op("-us", "a", 1), "INVALID_REGION");
        refused(&mut l, op(&"r".repeat(33), "a", 1), "INVALID_REGION");
        refused(&mut l, op(US, "a b", 1), "INVALID_SKU");
        refused(&mut l, op(US, "a", 0), "INVALID_UNITS");
        refused(&mut l, op(US, "a", TRANSFER_UNITS_MAX + 1), "INVALID_UNITS");
    }
    assert!(l.transfers().is_empty());
    let t = begun(apply(&mut l, T0, begin_revoke(US, "a", TRANSFER_UNITS_MAX)));
    assert_eq!(t.units, TRANSFER_UNITS_MAX);
}

// ----- CompleteGrant -----

/// CompleteGrant credits the region's granted total; completing again is a duplicate.
#[test]
fn complete_grant_credits_granted() {
    let mut l = stocked(&[("a", 100)]);
    let t = begun(apply(&mut l, T0, begin_grant(US, "a", 30)));
    assert_eq!(
        completed(apply(&mut l, T0 + 1, complete_grant(t.id))),
        (t.id, false)
    );
    assert_eq!(granted(&l, "a", US), 30);
    assert_eq!(books(&l, "a").pool, 70);
    assert_eq!(l.grants_in_flight("a"), 0);
    assert!(l.transfers().is_empty());
    assert_eq!(
        completed(Ok(replayed(&mut l, complete_grant(t.id)))),
        (t.id, true)
    );
    // A duplicate completion as the other kind cannot be told apart any more.
    assert_eq!(
        completed(Ok(replayed(&mut l, complete_revoke(t.id, 5)))),
        (t.id, true)
    );
    // A second grant adds up.
    let t2 = begun(apply(&mut l, T0 + 2, begin_grant(US, "a", 20)));
    completed(apply(&mut l, T0 + 3, complete_grant(t2.id)));
    assert_eq!(granted(&l, "a", US), 50);
    assert_eq!(books(&l, "a").pool, 50);
}

/// Completing a transfer the ledger never began is TRANSFER_NOT_FOUND.
#[test]
fn complete_unknown_transfer_is_not_found() {
    let mut l = stocked(&[("a", 100)]);
    begun(apply(&mut l, T0, begin_grant(US, "a", 30)));
    for id in [0, 2, 99, u64::MAX] {
        let err = refused(&mut l, complete_grant(id), "TRANSFER_NOT_FOUND");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.metadata(), kv(&[("transfer_id", &id.to_string())]));
        refused(&mut l, complete_revoke(id, 0), "TRANSFER_NOT_FOUND");
    }
}

/// Completing a transfer as the wrong kind is TRANSFER_MISMATCH and changes nothing.
#[test]
fn complete_as_the_wrong_kind_is_a_mismatch() {
    let mut l = stocked(&[("a", 100)]);
    let g = begun(apply(&mut l, T0, begin_grant(US, "a", 30)));
    let r = begun(apply(&mut l, T0, begin_revoke(EU, "a", 10)));
    let err = refused(&mut l, complete_revoke(g.id, 1), "TRANSFER_MISMATCH");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    refused(&mut l, complete_grant(r.id), "TRANSFER_MISMATCH");
    assert_eq!(l.transfers().len(), 2);
    assert_eq!(l.grants_in_flight("a"), 30);
}

// ----- BeginRevoke / CompleteRevoke -----

/// BeginRevoke moves nothing; CompleteRevoke moves the units taken from granted to the pool.
#[test]
fn revoke_moves_taken_units_to_the_pool() {
    let mut l = stocked(&[("a", 100)]);
    let g = begun(apply(&mut l, T0, begin_grant(US, "a", 60)));
    completed(apply(&mut l, T0, complete_grant(g.id)));
    let before = snapshot(&l);
    let r = begun(apply(&mut l, T0 + 9, begin_revoke(US, "a", 50)));
    assert_eq!(
        r,
        Transfer {
            id: 2,
            kind: TransferKind::Revoke,
            region: US.into(),
            sku: "a".into(),
            units: 50,
            began_at_ms: T0 + 9,
        }
    );
    assert_eq!(books(&l, "a").pool, 40, "a begun revoke moves nothing");
    assert_eq!(granted(&l, "a", US), 60);
    assert_eq!(l.grants_in_flight("a"), 0);
    assert_ne!(snapshot(&l), before, "only the transfer table changed");

    assert_eq!(
        completed(apply(&mut l, T0 + 10, complete_revoke(r.id, 35))),
        (r.id, false)
    );
    assert_eq!(books(&l, "a").pool, 75);
    assert_eq!(granted(&l, "a", US), 25);
    assert!(l.transfers().is_empty());
    assert_eq!(
        completed(Ok(replayed(&mut l, complete_revoke(r.id, 35)))),
        (r.id, true)
    );
    assert_eq!(
        completed(Ok(replayed(&mut l, complete_revoke(r.id, 1)))),
        (r.id, true)
    );
    assert_eq!(books(&l, "a").pool, 75);
}

/// CompleteRevoke accepts 0..=units_max units; more is INVALID_UNITS, changing nothing.
#[test]
fn complete_revoke_units_are_bounded_by_units_max() {
    let mut l = stocked(&[("a", 100)]);
    let g = begun(apply(&mut l, T0, begin_grant(US, "a", 60)));
    completed(apply(&mut l, T0, complete_grant(g.id)));
    let r = begun(apply(&mut l, T0, begin_revoke(US, "a", 20)));
    let err = refused(&mut l, complete_revoke(r.id, 21), "INVALID_UNITS");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(l.transfers().contains_key(&r.id));
    completed(apply(&mut l, T0, complete_revoke(r.id, 20)));
    assert_eq!(books(&l, "a").pool, 60);
    assert_eq!(granted(&l, "a", US), 40);

    let r = begun(apply(&mut l, T0, begin_revoke(US, "a", 20)));
    completed(apply(&mut l, T0, complete_revoke(r.id, 0)));
    assert_eq!(books(&l, "a").pool, 60);
    assert_eq!(granted(&l, "a", US), 40);
}

// ----- Settle -----

/// Settle raises settled_total, lowers the region's granted total and moves its watermark.
#[test]
fn settle_applies_sales() {
    let mut l = stocked(&[("a", 100), ("b", 100)]);
    for (sku, units) in [("a", 50), ("b", 20)] {
        let g = begun(apply(&mut l, T0, begin_grant(US, sku, units)));
        completed(apply(&mut l, T0, complete_grant(g.id)));
    }
    assert_eq!(l.watermark(US), 0);
    let out = settled(apply(
        &mut l,
        T0,
        settle(US, vec![entry(1, &[("a", 3), ("b", 1)]), entry(2, &[("a", 2)])]),
    ));
    assert_eq!(out, (US.into(), 2, 2));
    assert_eq!(l.watermark(US), 2);
    assert_eq!(l.watermarks().get(US), Some(&2));
    assert_eq!(books(&l, "a").settled_total, 5);
    assert_eq!(books(&l, "b").settled_total, 1);
    assert_eq!(granted(&l, "a", US), 45);
    assert_eq!(granted(&l, "b", US), 19);
    assert_eq!(books(&l, "a").stocked_total, 100);
    assert_eq!(books(&l, "a").pool, 50);
    // Watermarks are per region.
    assert_eq!(l.watermark(EU), 0);
    let g = begun(apply(&mut l, T0, begin_grant(EU, "a", 10)));
    completed(apply(&mut l, T0, complete_grant(g.id)));
    assert_eq!(
        settled(apply(&mut l, T0, settle(EU, vec![entry(1, &[("a", 4)])]))),
        (EU.into(), 1, 1)
    );
    assert_eq!(granted(&l, "a", EU), 6);
    assert_eq!(books(&l, "a").settled_total, 9);
}

/// Settle applies only entries above the watermark: replays and empty batches apply nothing.
#[test]
fn settle_is_idempotent_by_watermark() {
    let mut l = stocked(&[("a", 100)]);
    let g = begun(apply(&mut l, T0, begin_grant(US, "a", 50)));
    completed(apply(&mut l, T0, complete_grant(g.id)));
    let batch = vec![entry(1, &[("a", 1)]), entry(2, &[("a", 2)])];
    settled(apply(&mut l, T0, settle(US, batch.clone())));
    assert_eq!(
        settled(Ok(replayed(&mut l, settle(US, batch)))),
        (US.into(), 2, 0)
    );
    assert_eq!(
        settled(Ok(replayed(&mut l, settle(US, vec![entry(2, &[("a", 2)])])))),
        (US.into(), 2, 0)
    );
    assert_eq!(
        settled(Ok(replayed(&mut l, settle(US, Vec::new())))),
        (US.into(), 2, 0)
    );
    assert_eq!(
        settled(Ok(replayed(&mut l, settle(EU, Vec::new())))),
        (EU.into(), 0, 0)
    );
    assert!(
        !l.watermarks().contains_key(EU),
        "an empty batch records no region"
    );

    let out = settled(apply(
        &mut l,
        T0,
        settle(
            US,
            vec![
                entry(2, &[("a", 2)]),
                entry(3, &[("a", 4)]),
                entry(4, &[("a", 8)]),
            ],
        ),
    ));
    assert_eq!(out, (US.into(), 4, 2));
    assert_eq!(books(&l, "a").settled_total, 15);
    assert_eq!(granted(&l, "a", US), 35);
}

/// A batch whose first new entry skips past the watermark is SETTLEMENT_GAP, changing nothing.
#[test]
fn settle_gap_is_refused() {
    let mut l = stocked(&[("a", 100)]);
    let err = refused(&mut l, settle(US, vec![entry(2, &[("a", 1)])]), "SETTLEMENT_GAP");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        err.metadata(),
        kv(&[("region", US), ("watermark", "0"), ("first", "2")])
    );
    settled(apply(&mut l, T0, settle(US, vec![entry(1, &[("a", 1)])])));
    let err = refused(
        &mut l,
        settle(US, vec![entry(3, &[("a", 1)]), entry(4, &[("a", 1)])]),
        "SETTLEMENT_GAP",
    );
    assert_eq!(
        err.metadata(),
        kv(&[("region", US), ("watermark", "1"), ("first", "3")])
    );
    assert_eq!(l.watermark(US), 1);
    assert_eq!(books(&l, "a").settled_total, 1);
}

/// Malformed settle batches (sequence, lines, size, region) are refused and change nothing.
#[test]
fn settle_input_limits() {
    let mut l = stocked(&[("a", 100)]);
    let too_many = (1..=SETTLE_BATCH_MAX as u64 + 1)
        .map(|s| entry(s, &[("a", 1)]))
        .collect();
    let cases: Vec<(LedgerOp, &str)> = vec![
        (
            settle(US, vec![entry(1, &[("a", 1)]), entry(3, &[("a", 1)])]),
            "INVALID_ENTRIES",
        ),
        (
            settle(US, vec![entry(2, &[("a", 1)]), entry(1, &[("a", 1)])]),
            "INVALID_ENTRIES",
        ),
        (
            settle(US, vec![entry(1, &[("a", 1)]), entry(1, &[("a", 1)])]),
            "INVALID_ENTRIES",
        ),
        (
            settle(US, vec![entry(u64::MAX, &[("a", 1)]), entry(0, &[("a", 1)])]),
            "INVALID_ENTRIES",
        ),
        (settle(US, vec![entry(1, &[])]), "INVALID_ENTRIES"),
        (settle(US, too_many), "INVALID_ENTRIES"),
        (settle(US, vec![entry(1, &[("a b", 1)])]), "INVALID_SKU"),
        (settle(US, vec![entry(1, &[("a", 0)])]), "INVALID_QUANTITY"),
        (settle("US", vec![entry(1, &[("a", 1)])]), "INVALID_REGION"),
        (settle("", Vec::new()), "INVALID_REGION"),
    ];
    for (op, reason) in cases {
        refused(&mut l, op, reason);
    }
    assert_eq!(l.watermark(US), 0);
    // A full batch is accepted.
    let full: Vec<_> = (1..=SETTLE_BATCH_MAX as u64)
        .map(|s| entry(s, &[("a", 1)]))
        .collect();
    assert_eq!(
        settled(apply(&mut l, T0, settle(US, full))),
        (US.into(), SETTLE_BATCH_MAX as u64, SETTLE_BATCH_MAX)
    );
}

// ----- done_below, clock, determinism -----

/// done_below(region) is the oldest id in flight to that region, else the next id.
#[test]
fn done_below_is_the_oldest_in_flight() {
    let mut l = stocked(&[("a", 100), ("b", 100)]);
    assert_eq!(l.done_below(US), 1);
    let t1 = begun(apply(&mut l, T0, begin_grant(US, "a", 1)));
    let t2 = begun(apply(&mut l, T0, begin_grant(EU, "a", 1)));
    let t3 = begun(apply(&mut l, T0, begin_revoke(US, "b", 1)));
    assert_eq!(l.done_below(US), t1.id);
    assert_eq!(l.done_below(EU), t2.id);
    assert_eq!(l.done_below(AP), 4);
    completed(apply(&mut l, T0, complete_grant(t1.id)));
    assert_eq!(l.done_below(US), t3.id);
    completed(apply(&mut l, T0, complete_revoke(t3.id, 0)));
    assert_eq!(l.done_below(US), 4);
    assert_eq!(l.done_below(EU), t2.id);
    completed(apply(&mut l, T0, complete_grant(t2.id)));
    assert_eq!(l.done_below(EU), 4);
}

/// An older now_ms does not move the clock back, and expiry is judged by the largest clock.
#[test]
fn clock_never_goes_back() {
    let mut l = stocked(&[("a", 100)]);
    apply(&mut l, T0 + 1_000, adjust("adj-1", "a", 1)).expect("adjust");
    assert_eq!(l.clock_ms(), T0 + 1_000);
    let t = begun(apply(&mut l, T0, begin_grant(US, "a", 1)));
    assert_eq!(t.began_at_ms, T0 + 1_000);
    assert_eq!(l.clock_ms(), T0 + 1_000);
    apply(&mut l, 0, complete_grant(99)).expect_err("no such transfer");
    assert_eq!(l.clock_ms(), T0 + 1_000);
}

/// Two replicas applying the same commands are equal and serialize to the same bytes.
#[test]
fn replicas_are_byte_for_byte_equal() {
    let ops = vec![
        adjust("adj-1", "a", 100),
        begin_grant(US, "a", 40),
        begin_grant(US, "a", 1),
        complete_grant(1),
        begin_revoke(US, "a", 10),
        settle(US, vec![entry(1, &[("a", 3)])]),
        complete_revoke(2, 7),
        adjust("adj-2", "a", -5),
        settle(US, vec![entry(3, &[("a", 3)])]),
    ];
    let mut one = LedgerState::default();
    let mut two = LedgerState::new();
    for (i, op) in ops.into_iter().enumerate() {
        let a = apply(&mut one, T0 + i as u64, op.clone());
        let b = apply(&mut two, T0 + i as u64, op);
        assert_eq!(a, b);
    }
    assert_eq!(one, two);
    assert_eq!(
        serde_json::to_string(&one).expect("serializes"),
        serde_json::to_string(&two).expect("serializes")
    );
    let a = books(&one, "a");
    assert_eq!((a.stocked_total, a.pool, a.settled_total), (95, 62, 3));
    assert_eq!(a.granted.get(US), Some(&30));
}
