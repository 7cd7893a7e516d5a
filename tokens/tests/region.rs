//! Unit tests for every command of `RegionState`, through the public API only.
//!
//! Every helper that applies a command also checks that each bucket's books
//! balance (`books_drift() == 0`), so every step of every test is audited.
//! Refusals are checked with [`refused`], which asserts that the command
//! changed nothing but the logical clock.
//!
//! Holds belong to [`OWNER`] unless a test says otherwise ([`by`]), and a
//! test reserve draws its nonce from its request id ([`nonce_of`]: `req-7`
//! asks for id 7), so tests can name holds by number.

use reservoir_tokens::limits::{
    self, ADJUSTMENT_WINDOW_MS, ENDED_RESERVATIONS_LIMIT, ENDED_RESERVATIONS_MIN, EXPIRE_PER_COMMAND_MAX,
    LINES_PER_RESERVATION_MAX, ORDER_ID_BYTES_MAX, OWNER_BYTES_MAX, PRUNE_PER_COMMAND_MAX, QUANTITY_MAX,
    REQUEST_ID_BYTES_MAX, RESERVATION_RETENTION_MS, RESERVATION_RETENTION_MS_LIMIT,
    RESERVATION_RETENTION_MS_MIN, SKU_BYTES_MAX, STOCK_DELTA_MAX, TRANSFER_UNITS_MAX, TTL_DEFAULT_MS,
    TTL_MAX_MS,
};
use reservoir_tokens::{
    ErrorKind, Line, Millis, RegionApplied, RegionCommand, RegionOp, RegionOutcome, RegionState, Rejection,
    Reservation, ReservationId, ReservationState, Retention, TransferKind, Units,
};
use serde_json::Value;

const REGION: &str = "us-east";
/// The owner of every hold a test makes, unless it says otherwise.
const OWNER: &str = "alice";
/// Another principal, who must not see or touch [`OWNER`]'s holds.
const OTHER: &str = "bob";
/// A start time far from zero, so that times in assertions are not confused
/// with durations.
const T0: Millis = 1_700_000_000_000;

// ----- helpers -----

/// Applies `op` at `now_ms`, then checks every bucket's own books.
fn apply(r: &mut RegionState, now_ms: Millis, op: RegionOp) -> RegionOutcome {
    let out = r.apply(RegionCommand { now_ms, op });
    assert_books(r);
    out
}

/// Every bucket's books balance: `received - returned - settled = total`.
fn assert_books(r: &RegionState) {
    for (sku, b) in r.buckets() {
        assert_eq!(b.books_drift(), 0, "books of {sku} drift: {b:?}");
    }
}

/// The state as JSON, without the logical clock.
fn snapshot(r: &RegionState) -> Value {
    let mut v = serde_json::to_value(r).expect("a region state serializes");
    v.as_object_mut()
        .expect("a struct")
        .remove("clock_ms")
        .expect("has a clock");
    v
}

/// Applies `op` one ms after the clock and expects it refused with `reason`,
/// with nothing changed but the clock.
fn refused(r: &mut RegionState, op: RegionOp, reason: &str) -> Rejection {
    let before = snapshot(r);
    let now_ms = r.clock_ms() + 1;
    let err = apply(r, now_ms, op.clone()).expect_err(&format!("{op:?} should be refused"));
    assert_eq!(err.reason(), reason, "{op:?} refused as {err}");
    assert_eq!(snapshot(r), before, "refused {op:?} changed the state");
    assert_eq!(r.clock_ms(), now_ms, "the clock still moves on a refusal");
    err
}

/// Applies `op` one ms after the clock, expects success, and that the state
/// did not change apart from the clock (an idempotent replay).
fn replayed(r: &mut RegionState, op: RegionOp) -> RegionApplied {
    let before = snapshot(r);
    let now_ms = r.clock_ms() + 1;
    let out = apply(r, now_ms, op.clone()).unwrap_or_else(|e| panic!("{op:?} refused: {e}"));
    assert_eq!(snapshot(r), before, "replayed {op:?} changed the state");
    out
}

/// Applies `op` at `now_ms` and expects it refused with `reason`.
fn refused_at(r: &mut RegionState, now_ms: Millis, op: RegionOp, reason: &str) {
    let err = apply(r, now_ms, op).expect_err("refused");
    assert_eq!(err.reason(), reason, "{err}");
}

/// A command at `now_ms`.
fn cmd(now_ms: Millis, op: RegionOp) -> RegionCommand {
    RegionCommand { now_ms, op }
}

/// Unwraps a reservation outcome.
fn res(out: RegionOutcome) -> Reservation {
    match out {
        Ok(RegionApplied::Reservation(r)) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

/// A bucket's `(available, held, confirmed)`, zeros if there is none.
fn levels(r: &RegionState, sku: &str) -> (Units, Units, Units) {
    r.bucket(sku)
        .map_or((0, 0, 0), |b| (b.available, b.held, b.confirmed))
}

fn lines(spec: &[(&str, Units)]) -> Vec<Line> {
    spec.iter().map(|&(sku, q)| Line::new(sku, q)).collect()
}

/// The nonce a test reserve draws: the number after the request id's last
/// dash (`req-7` → 7), or, for ids without one, a fixed number far from the
/// small ones. A real proposer draws 64 random bits.
fn nonce_of(request_id: &str) -> u64 {
    request_id
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1 << 40)
}

/// The public id of reservation number `id` in [`REGION`].
fn public(id: u64) -> String {
    ReservationId(id).display(REGION)
}

fn reserve(request_id: &str, spec: &[(&str, Units)], ttl_ms: Millis) -> RegionOp {
    RegionOp::Reserve {
        owner: OWNER.into(),
        request_id: request_id.into(),
        lines: lines(spec),
        ttl_ms,
        allow_partial: false,
        nonce: nonce_of(request_id),
    }
}

fn reserve_partial(request_id: &str, spec: &[(&str, Units)], ttl_ms: Millis) -> RegionOp {
    RegionOp::Reserve {
        owner: OWNER.into(),
        request_id: request_id.into(),
        lines: lines(spec),
        ttl_ms,
        allow_partial: true,
        nonce: nonce_of(request_id),
    }
}

fn release(id: u64) -> RegionOp {
    RegionOp::Release {
        id: ReservationId(id),
        owner: OWNER.into(),
    }
}

fn confirm(id: u64, order_id: &str) -> RegionOp {
    RegionOp::Confirm {
        id: ReservationId(id),
        owner: OWNER.into(),
        order_id: order_id.into(),
        lines: Vec::new(),
    }
}

fn confirm_lines(id: u64, order_id: &str, spec: &[(&str, Units)]) -> RegionOp {
    RegionOp::Confirm {
        id: ReservationId(id),
        owner: OWNER.into(),
        order_id: order_id.into(),
        lines: lines(spec),
    }
}

fn extend(id: u64, ttl_ms: Millis) -> RegionOp {
    RegionOp::Extend {
        id: ReservationId(id),
        owner: OWNER.into(),
        ttl_ms,
    }
}

/// `op` (a reserve, release, confirm or extend) on behalf of `owner`.
fn by(owner: &str, mut op: RegionOp) -> RegionOp {
    match &mut op {
        RegionOp::Reserve { owner: o, .. }
        | RegionOp::Release { owner: o, .. }
        | RegionOp::Confirm { owner: o, .. }
        | RegionOp::Extend { owner: o, .. } => *o = owner.into(),
        other => panic!("{other:?} has no owner"),
    }
    op
}

/// A reserve `op` drawing `nonce` instead of its request id's.
fn with_nonce(nonce: u64, mut op: RegionOp) -> RegionOp {
    match &mut op {
        RegionOp::Reserve { nonce: n, .. } => *n = nonce,
        other => panic!("{other:?} has no nonce"),
    }
    op
}

fn grant(transfer_id: u64, sku: &str, units: Units, done_below: u64) -> RegionOp {
    RegionOp::Grant {
        transfer_id,
        sku: sku.into(),
        units,
        done_below,
    }
}

fn revoke(transfer_id: u64, sku: &str, units_max: Units, done_below: u64) -> RegionOp {
    RegionOp::Revoke {
        transfer_id,
        sku: sku.into(),
        units_max,
        done_below,
    }
}

fn adjust(request_id: &str, sku: &str, delta: i64) -> RegionOp {
    RegionOp::AdjustStock {
        request_id: request_id.into(),
        sku: sku.into(),
        delta,
    }
}

/// A region at clock `T0` whose buckets were granted `stock` (transfer ids 1..).
fn stocked(stock: &[(&str, Units)]) -> RegionState {
    let mut r = RegionState::new(REGION);
    for (i, &(sku, units)) in stock.iter().enumerate() {
        apply(&mut r, T0, grant(i as u64 + 1, sku, units, 0)).expect("grant");
    }
    r
}

fn expired(out: RegionOutcome) -> (usize, bool) {
    match out {
        Ok(RegionApplied::Expired { count, more_due }) => (count, more_due),
        other => panic!("expected Expired, got {other:?}"),
    }
}

fn transfer(out: RegionOutcome) -> (u64, Units, bool) {
    match out {
        Ok(RegionApplied::Transfer {
            transfer_id,
            units,
            duplicate,
        }) => (transfer_id, units, duplicate),
        other => panic!("expected Transfer, got {other:?}"),
    }
}

fn settled(out: RegionOutcome) -> usize {
    match out {
        Ok(RegionApplied::Settled { reservations }) => reservations,
        other => panic!("expected Settled, got {other:?}"),
    }
}

fn stock(out: RegionOutcome) -> (String, Units, Units) {
    match out {
        Ok(RegionApplied::Stock {
            sku,
            stocked_total,
            available,
        }) => (sku, stocked_total, available),
        other => panic!("expected Stock, got {other:?}"),
    }
}

fn meta(e: &Rejection) -> Vec<(&'static str, String)> {
    e.metadata()
}

fn kv(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|&(k, v)| (k, v.to_string())).collect()
}

fn state_of(r: &RegionState, id: u64) -> ReservationState {
    r.reservation(ReservationId(id))
        .expect("reservation is kept")
        .state
}

// ----- Reserve -----

/// A reserve moves every line's tokens from available to held and records the hold.
#[test]
fn reserve_holds_every_line() {
    let mut r = stocked(&[("a", 10), ("b", 5)]);
    let got = res(apply(
        &mut r,
        T0 + 10,
        reserve("req-1", &[("a", 3), ("b", 5)], 60_000),
    ));
    assert_eq!(got.id, ReservationId(1));
    assert_eq!(got.owner, OWNER);
    assert_eq!(got.lines, lines(&[("a", 3), ("b", 5)]));
    assert_eq!(got.state, ReservationState::Held);
    assert_eq!(got.created_at_ms, T0 + 10);
    assert_eq!(got.expires_at_ms, T0 + 10 + 60_000);
    assert_eq!(got.order_id, None);
    assert_eq!(got.ended_at_ms, 0);
    assert_eq!(levels(&r, "a"), (7, 3, 0));
    assert_eq!(levels(&r, "b"), (0, 5, 0));
    assert_eq!(r.reservation(ReservationId(1)), Some(got.clone()));
    assert_eq!(r.reservation_of(ReservationId(1), OWNER), Some(got.clone()));
    assert_eq!(r.holds(), 1);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 10 + 60_000));
    assert_eq!(r.remembered_requests(), 1);
}

/// A new reservation's id is the proposer's nonce (`us-east-` and 16 hex
/// digits); a taken one, or 0, is probed upwards to the next free number;
/// a refused reserve takes no id.
#[test]
fn reserve_ids_come_from_the_nonce() {
    let mut r = stocked(&[("a", 10)]);
    let nonce = 0x9e37_79b9_7f4a_7c15;
    let first = res(apply(
        &mut r,
        T0,
        with_nonce(nonce, reserve("req-1", &[("a", 1)], 0)),
    ));
    assert_eq!(first.id, ReservationId(nonce));
    assert_eq!(first.id.display(REGION), "us-east-9e3779b97f4a7c15");
    assert_eq!(
        r.parse_reservation_id("us-east-9e3779b97f4a7c15"),
        Ok(ReservationId(nonce))
    );
    // Refused: takes nothing, so the same nonce is still free after it.
    refused(
        &mut r,
        with_nonce(nonce + 1, reserve("req-x", &[("a", 50)], 0)),
        "INSUFFICIENT_STOCK",
    );
    // The same nonce again: the next free number.
    let second = res(apply(
        &mut r,
        T0,
        with_nonce(nonce, reserve("req-2", &[("a", 1)], 0)),
    ));
    assert_eq!(second.id, ReservationId(nonce + 1));
    let third = res(apply(
        &mut r,
        T0,
        with_nonce(nonce, reserve("req-3", &[("a", 1)], 0)),
    ));
    assert_eq!(third.id, ReservationId(nonce + 2));
    // 0 is never an id; u64::MAX is, and the probe wraps past it to 1.
    let zero = res(apply(&mut r, T0, with_nonce(0, reserve("req-4", &[("a", 1)], 0))));
    assert_eq!(zero.id, ReservationId(1));
    let max = res(apply(
        &mut r,
        T0,
        with_nonce(u64::MAX, reserve("req-5", &[("a", 1)], 0)),
    ));
    assert_eq!(max.id, ReservationId(u64::MAX));
    assert_eq!(max.id.display(REGION), "us-east-ffffffffffffffff");
    let wrapped = res(apply(
        &mut r,
        T0,
        with_nonce(u64::MAX, reserve("req-6", &[("a", 1)], 0)),
    ));
    assert_eq!(wrapped.id, ReservationId(2));
    assert_eq!(r.holds(), 6);
    for x in [first, second, third, zero, max, wrapped] {
        assert_eq!(r.reservation_of(x.id, OWNER), Some(x));
    }
}

/// A reserve with one short line holds nothing and names that line, requested and available.
#[test]
fn reserve_is_all_or_nothing() {
    let mut r = stocked(&[("a", 10), ("b", 2)]);
    let err = refused(
        &mut r,
        reserve("req-1", &[("a", 4), ("b", 3)], 0),
        "INSUFFICIENT_STOCK",
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(
        meta(&err),
        kv(&[("sku", "b"), ("requested", "3"), ("available", "2")])
    );
    assert_eq!(levels(&r, "a"), (10, 0, 0));
    assert_eq!(levels(&r, "b"), (2, 0, 0));
    assert_eq!(r.holds(), 0);
    assert_eq!(r.remembered_requests(), 0);
}

/// A SKU the region has never had is simply out of stock.
#[test]
fn reserve_unknown_sku_is_insufficient_stock() {
    let mut r = stocked(&[("a", 10)]);
    let err = refused(&mut r, reserve("req-1", &[("nope", 1)], 0), "INSUFFICIENT_STOCK");
    assert_eq!(
        meta(&err),
        kv(&[("sku", "nope"), ("requested", "1"), ("available", "0")])
    );
    assert!(r.bucket("nope").is_none(), "a refused reserve creates no bucket");
}

/// allow_partial takes what each line has and drops lines with nothing available.
#[test]
fn reserve_partial_takes_what_is_available() {
    let mut r = stocked(&[("a", 3), ("b", 10)]);
    let got = res(apply(
        &mut r,
        T0,
        reserve_partial("req-1", &[("a", 5), ("b", 2), ("c", 4)], 0),
    ));
    assert_eq!(got.lines, lines(&[("a", 3), ("b", 2)]));
    assert_eq!(levels(&r, "a"), (0, 3, 0));
    assert_eq!(levels(&r, "b"), (8, 2, 0));
    assert!(r.bucket("c").is_none());
    // A partial reserve of a line with nothing left, next to one with stock.
    let got = res(apply(
        &mut r,
        T0,
        reserve_partial("req-2", &[("a", 1), ("b", 1)], 0),
    ));
    assert_eq!(got.lines, lines(&[("b", 1)]));
    assert_eq!(levels(&r, "b"), (7, 3, 0));
}

/// allow_partial that gets nothing at all is INSUFFICIENT_STOCK naming the first line.
#[test]
fn reserve_partial_of_nothing_is_insufficient_stock() {
    let mut r = stocked(&[("a", 1)]);
    res(apply(&mut r, T0, reserve("req-0", &[("a", 1)], 0)));
    let err = refused(
        &mut r,
        reserve_partial("req-1", &[("a", 2), ("zzz", 3)], 0),
        "INSUFFICIENT_STOCK",
    );
    assert_eq!(
        meta(&err),
        kv(&[("sku", "a"), ("requested", "2"), ("available", "0")])
    );
    assert_eq!(levels(&r, "a"), (0, 1, 0));
}

/// ttl_ms 0 means the 15-minute default; the maximum TTL is accepted as is.
#[test]
fn reserve_ttl_zero_is_the_default() {
    let mut r = stocked(&[("a", 10)]);
    let got = res(apply(&mut r, T0 + 5, reserve("req-1", &[("a", 1)], 0)));
    assert_eq!(got.expires_at_ms, T0 + 5 + TTL_DEFAULT_MS);
    assert_eq!(TTL_DEFAULT_MS, 15 * 60 * 1000);
    let got = res(apply(&mut r, T0 + 5, reserve("req-2", &[("a", 1)], TTL_MAX_MS)));
    assert_eq!(got.expires_at_ms, T0 + 5 + TTL_MAX_MS);
    let got = res(apply(&mut r, T0 + 5, reserve("req-3", &[("a", 1)], 1)));
    assert_eq!(got.expires_at_ms, T0 + 6);
}

/// A retry (same id, same cart in any line order) returns the original and holds nothing more.
#[test]
fn reserve_retry_returns_the_original() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    let first = res(apply(&mut r, T0, reserve("req-1", &[("a", 2), ("b", 3)], 0)));
    let again = res(Ok(replayed(&mut r, reserve("req-1", &[("a", 2), ("b", 3)], 0))));
    assert_eq!(again, first);
    let swapped = res(Ok(replayed(&mut r, reserve("req-1", &[("b", 3), ("a", 2)], 0))));
    assert_eq!(swapped, first);
    let explicit = res(Ok(replayed(
        &mut r,
        reserve("req-1", &[("a", 2), ("b", 3)], TTL_DEFAULT_MS),
    )));
    assert_eq!(explicit, first);
    // A retry is a new proposal with a new nonce: still the original.
    let renonced = res(Ok(replayed(
        &mut r,
        with_nonce(77, reserve("req-1", &[("a", 2), ("b", 3)], 0)),
    )));
    assert_eq!(renonced, first);
    assert_eq!(levels(&r, "a"), (8, 2, 0));
    assert_eq!(levels(&r, "b"), (7, 3, 0));
    assert_eq!(r.holds(), 1);
    let next = res(apply(&mut r, T0, reserve("req-2", &[("a", 1)], 0)));
    assert_eq!(next.id, ReservationId(2), "retries take no ids");
    assert_eq!(r.reservation(ReservationId(77)), None);
}

/// A retried reserve of a since-released hold returns it released and holds nothing again.
#[test]
fn reserve_retry_after_release_holds_nothing() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 0)));
    res(apply(&mut r, T0, release(1)));
    let again = res(Ok(replayed(&mut r, reserve("req-1", &[("a", 4)], 0))));
    assert_eq!(again.id, ReservationId(1));
    assert_eq!(again.state, ReservationState::Released);
    assert_eq!(levels(&r, "a"), (10, 0, 0));
}

/// The same request_id with any other request is REQUEST_ID_REUSED and changes nothing.
#[test]
fn reserve_request_id_reused_for_another_request() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 2)], 1_000)));
    for op in [
        reserve("req-1", &[("a", 3)], 1_000),
        reserve("req-1", &[("b", 2)], 1_000),
        reserve("req-1", &[("a", 2), ("b", 1)], 1_000),
        reserve("req-1", &[("a", 2)], 2_000),
        reserve("req-1", &[("a", 2)], 0),
        reserve_partial("req-1", &[("a", 2)], 1_000),
    ] {
        let err = refused(&mut r, op, "REQUEST_ID_REUSED");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(meta(&err), kv(&[("request_id", "req-1")]));
    }
    assert_eq!(levels(&r, "a"), (8, 2, 0));
    assert_eq!(levels(&r, "b"), (10, 0, 0));
}

/// A refused reserve is not remembered: its request_id succeeds once stock has arrived.
#[test]
fn reserve_refusal_is_not_remembered() {
    let mut r = stocked(&[("a", 1)]);
    refused(&mut r, reserve("req-1", &[("a", 5)], 0), "INSUFFICIENT_STOCK");
    assert_eq!(r.remembered_requests(), 0);
    apply(&mut r, T0 + 10, grant(50, "a", 4, 0)).expect("grant");
    let got = res(apply(&mut r, T0 + 20, reserve("req-1", &[("a", 5)], 0)));
    assert_eq!(got.id, ReservationId(1));
    assert_eq!(got.lines, lines(&[("a", 5)]));
    assert_eq!(levels(&r, "a"), (0, 5, 0));
    // A request refused for bad input is not remembered either.
    refused(&mut r, reserve("req-2", &[("a", 0)], 0), "INVALID_QUANTITY");
    apply(&mut r, T0 + 30, grant(51, "a", 1, 0)).expect("grant");
    res(apply(&mut r, T0 + 40, reserve("req-2", &[("a", 1)], 0)));
}

/// Every reserve input limit gives its INVALID_* reason and changes nothing; the limits pass.
#[test]
fn reserve_input_limits() {
    let mut r = stocked(&[("a", QUANTITY_MAX + 100), ("b", 10)]);
    let many = |n: usize| (0..n).map(|i| Line::new(format!("s{i}"), 1)).collect::<Vec<_>>();
    let with_lines = |l: Vec<Line>| RegionOp::Reserve {
        owner: OWNER.into(),
        request_id: "req".into(),
        lines: l,
        ttl_ms: 0,
        allow_partial: false,
        nonce: 1,
    };
    let long_sku = "s".repeat(SKU_BYTES_MAX + 1);
    let mut dup_many = many(20);
    dup_many.push(Line::new("s7", 2));
    let cases: Vec<(RegionOp, &str)> = vec![
        (reserve("", &[("a", 1)], 0), "INVALID_REQUEST_ID"),
        (
            reserve(&"r".repeat(REQUEST_ID_BYTES_MAX + 1), &[("a", 1)], 0),
            "INVALID_REQUEST_ID",
        ),
        (reserve("req\n1", &[("a", 1)], 0), "INVALID_REQUEST_ID"),
        (reserve("req-é", &[("a", 1)], 0), "INVALID_REQUEST_ID"),
        (reserve("req", &[("", 1)], 0), "INVALID_SKU"),
        (reserve("req", &[(&long_sku, 1)], 0), "INVALID_SKU"),
        (reserve("req", &[("a b", 1)], 0), "INVALID_SKU"),
        (reserve("req", &[("a/b", 1)], 0), "INVALID_SKU"),
        (with_lines(Vec::new()), "INVALID_LINES"),
        (with_lines(many(LINES_PER_RESERVATION_MAX + 1)), "INVALID_LINES"),
        (reserve("req", &[("a", 1), ("a", 2)], 0), "INVALID_LINES"),
        (with_lines(dup_many), "INVALID_LINES"),
        (reserve("req", &[("a", 0)], 0), "INVALID_QUANTITY"),
        (reserve("req", &[("a", QUANTITY_MAX + 1)], 0), "INVALID_QUANTITY"),
        (reserve("req", &[("a", 1)], TTL_MAX_MS + 1), "INVALID_TTL_MS"),
        (reserve("req", &[("a", 1)], Millis::MAX), "INVALID_TTL_MS"),
        (reserve_partial("req", &[("a", 0)], 0), "INVALID_QUANTITY"),
    ];
    for (op, reason) in cases {
        let err = refused(&mut r, op, reason);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(r.holds(), 0);
    assert_eq!(r.remembered_requests(), 0);

    // The limits themselves are accepted.
    let max_id = "r".repeat(REQUEST_ID_BYTES_MAX);
    res(apply(
        &mut r,
        T0,
        reserve(&max_id, &[("a", QUANTITY_MAX)], TTL_MAX_MS),
    ));
    let max_sku = "k".repeat(SKU_BYTES_MAX);
    apply(&mut r, T0, grant(90, &max_sku, 1, 0)).expect("grant");
    res(apply(&mut r, T0, reserve("req-sku", &[(&max_sku, 1)], 0)));
    let got = res(apply(&mut r, T0, reserve_partial("req-lines", &[("a", 1)], 0)));
    assert_eq!(got.lines, lines(&[("a", 1)]));
    let mut full = many(LINES_PER_RESERVATION_MAX - 1);
    full.push(Line::new("b", 1));
    let got = res(apply(
        &mut r,
        T0,
        RegionOp::Reserve {
            owner: OWNER.into(),
            request_id: "req-64".into(),
            lines: full,
            ttl_ms: 0,
            allow_partial: true,
            nonce: 64,
        },
    ));
    assert_eq!(got.lines, lines(&[("b", 1)]));
    assert_eq!(levels(&r, "a"), (99, QUANTITY_MAX + 1, 0));
}

// ----- Release -----

/// Releasing a live hold gives its tokens back and ends it as Released.
#[test]
fn release_returns_tokens() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4), ("b", 1)], 60_000)));
    let got = res(apply(&mut r, T0 + 100, release(1)));
    assert_eq!(got.state, ReservationState::Released);
    assert_eq!(got.ended_at_ms, T0 + 100);
    assert_eq!(got.lines, lines(&[("a", 4), ("b", 1)]));
    assert_eq!(levels(&r, "a"), (10, 0, 0));
    assert_eq!(levels(&r, "b"), (10, 0, 0));
    assert_eq!(r.holds(), 0);
    assert_eq!(r.next_expiry_ms(), None);
    assert_eq!(r.reservation(ReservationId(1)), Some(got.clone()));
}

/// Releasing a released or expired reservation returns it unchanged.
#[test]
fn release_of_ended_hold_is_unchanged() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 60_000)));
    let released = res(apply(&mut r, T0 + 1, release(1)));
    let again = res(Ok(replayed(&mut r, release(1))));
    assert_eq!(again, released);

    res(apply(&mut r, T0 + 10, reserve("req-2", &[("a", 3)], 100)));
    assert_eq!(expired(apply(&mut r, T0 + 110, RegionOp::Expire)), (1, false));
    let again = res(Ok(replayed(&mut r, release(2))));
    assert_eq!(again.state, ReservationState::Expired);
    assert_eq!(again.ended_at_ms, T0 + 110);
    assert_eq!(levels(&r, "a"), (10, 0, 0));
}

/// Releasing a confirmed or settled reservation is RESERVATION_CONFIRMED, naming its order.
#[test]
fn release_of_confirmed_is_refused() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 0)));
    res(apply(&mut r, T0, confirm(1, "order-1")));
    let err = refused(&mut r, release(1), "RESERVATION_CONFIRMED");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        meta(&err),
        kv(&[("reservation_id", &public(1)), ("order_id", "order-1")])
    );
    assert_eq!(levels(&r, "a"), (6, 0, 4));
    assert_eq!(
        settled(apply(&mut r, T0 + 5, RegionOp::Settled { up_to_seq: 1 })),
        1
    );
    refused(&mut r, release(1), "RESERVATION_CONFIRMED");
}

/// A held hold past its expiry that no sweep has ended releases as Expired.
#[test]
fn release_past_expiry_is_expired() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 1_000)));
    let got = res(apply(&mut r, T0 + 1_000, release(1)));
    assert_eq!(got.state, ReservationState::Expired);
    assert_eq!(got.ended_at_ms, T0 + 1_000);
    assert_eq!(levels(&r, "a"), (10, 0, 0));
    assert_eq!(r.holds(), 0);
    // One ms before expiry, it is a plain release.
    res(apply(&mut r, T0 + 2_000, reserve("req-2", &[("a", 1)], 1_000)));
    let got = res(apply(&mut r, T0 + 2_999, release(2)));
    assert_eq!(got.state, ReservationState::Released);
}

/// Releasing an id the region never issued is RESERVATION_NOT_FOUND.
#[test]
fn release_unknown_is_not_found() {
    let mut r = stocked(&[("a", 10)]);
    let err = refused(&mut r, release(42), "RESERVATION_NOT_FOUND");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(meta(&err), kv(&[("reservation_id", &public(42))]));
}

// ----- Confirm -----

/// A confirm moves held tokens to confirmed and writes an outbox entry with the next seq.
#[test]
fn confirm_moves_tokens_and_writes_outbox() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 2), ("b", 1)], 60_000)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 3)], 30_000)));
    assert_eq!(r.last_outbox_seq(), 0);
    let got = res(apply(&mut r, T0 + 50, confirm(1, "order-1")));
    assert_eq!(got.state, ReservationState::Confirmed);
    assert_eq!(got.order_id.as_deref(), Some("order-1"));
    assert_eq!(got.lines, lines(&[("a", 2), ("b", 1)]));
    assert_eq!(got.ended_at_ms, 0, "a confirmed sale has not ended");
    assert_eq!(levels(&r, "a"), (5, 3, 2));
    assert_eq!(levels(&r, "b"), (9, 0, 1));
    assert_eq!(r.holds(), 1);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 30_000));

    res(apply(&mut r, T0 + 60, confirm(2, "order-2")));
    assert_eq!(levels(&r, "a"), (5, 0, 5));
    assert_eq!(r.holds(), 0);
    assert_eq!(r.next_expiry_ms(), None);
    assert_eq!(r.last_outbox_seq(), 2);
    let outbox: Vec<_> = r.outbox_after(0).collect();
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[0].seq, 1);
    assert_eq!(outbox[0].reservation, ReservationId(1));
    assert_eq!(outbox[0].order_id, "order-1");
    assert_eq!(outbox[0].lines, lines(&[("a", 2), ("b", 1)]));
    assert_eq!(outbox[0].confirmed_at_ms, T0 + 50);
    assert_eq!(outbox[1].seq, 2);
    assert_eq!(outbox[1].reservation, ReservationId(2));
    assert_eq!(outbox[1].lines, lines(&[("a", 3)]));
    assert_eq!(r.outbox_after(1).map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(r.outbox_after(2).count(), 0);
}

/// A confirm 1 ms before expires_at_ms succeeds; at it, RESERVATION_EXPIRED without a sweep.
#[test]
fn confirm_expiry_is_exact() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 1_000)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 1_000)));
    let got = res(apply(&mut r, T0 + 999, confirm(1, "order-1")));
    assert_eq!(got.state, ReservationState::Confirmed);

    apply(&mut r, T0 + 999, RegionOp::Settled { up_to_seq: 0 }).expect("no-op settle");
    // `refused` applies one ms after the clock: exactly T0 + 1000.
    let err = refused(&mut r, confirm(2, "order-2"), "RESERVATION_EXPIRED");
    assert_eq!(r.clock_ms(), T0 + 1_000);
    assert_eq!(meta(&err), kv(&[("reservation_id", &public(2))]));
    assert_eq!(state_of(&r, 2), ReservationState::Held, "no sweep ran");
    assert_eq!(levels(&r, "a"), (7, 2, 1));
    assert_eq!(r.last_outbox_seq(), 1);
    // After the sweep it is still expired, and the tokens are back.
    assert_eq!(expired(apply(&mut r, T0 + 1_000, RegionOp::Expire)), (1, false));
    refused(&mut r, confirm(2, "order-2"), "RESERVATION_EXPIRED");
    assert_eq!(levels(&r, "a"), (9, 0, 1));
}

/// A confirm under the same order is idempotent (one outbox entry); another order is refused.
#[test]
fn confirm_is_idempotent_by_order() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 1_000)));
    let first = res(apply(&mut r, T0, confirm(1, "order-1")));
    let again = res(Ok(replayed(&mut r, confirm(1, "order-1"))));
    assert_eq!(again, first);
    // Even after the hold's TTL has passed.
    apply(&mut r, T0 + 5_000, RegionOp::Expire).expect("expire");
    let again = res(Ok(replayed(&mut r, confirm(1, "order-1"))));
    assert_eq!(again, first);
    assert_eq!(r.last_outbox_seq(), 1);
    assert_eq!(levels(&r, "a"), (6, 0, 4));

    let err = refused(&mut r, confirm(1, "order-2"), "RESERVATION_CONFIRMED");
    assert_eq!(
        meta(&err),
        kv(&[("reservation_id", &public(1)), ("order_id", "order-1")])
    );

    assert_eq!(
        settled(apply(&mut r, T0 + 6_000, RegionOp::Settled { up_to_seq: 1 })),
        1
    );
    let again = res(Ok(replayed(&mut r, confirm(1, "order-1"))));
    assert_eq!(again.state, ReservationState::Settled);
    refused(&mut r, confirm(1, "order-2"), "RESERVATION_CONFIRMED");
    assert_eq!(r.last_outbox_seq(), 1);
}

/// Confirm refuses released, expired and unknown reservations with their own reasons.
#[test]
fn confirm_of_ended_or_unknown_is_refused() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 1_000)));
    res(apply(&mut r, T0, release(1)));
    let err = refused(&mut r, confirm(1, "order-1"), "RESERVATION_RELEASED");
    assert_eq!(meta(&err), kv(&[("reservation_id", &public(1))]));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 4)], 1_000)));
    assert_eq!(expired(apply(&mut r, T0 + 2_000, RegionOp::Expire)), (1, false));
    assert_eq!(state_of(&r, 2), ReservationState::Expired);
    refused(&mut r, confirm(2, "order-2"), "RESERVATION_EXPIRED");
    refused(&mut r, confirm(3, "order-3"), "RESERVATION_NOT_FOUND");
    assert_eq!(levels(&r, "a"), (10, 0, 0));
    assert_eq!(r.last_outbox_seq(), 0);
}

/// A partial confirm sells at most the given units, frees the rest and drops unsold lines.
#[test]
fn confirm_partial_returns_the_rest() {
    let mut r = stocked(&[("a", 10), ("b", 10), ("c", 10)]);
    res(apply(
        &mut r,
        T0,
        reserve("req-1", &[("a", 5), ("b", 3), ("c", 2)], 0),
    ));
    let got = res(apply(
        &mut r,
        T0 + 1,
        confirm_lines(1, "order-1", &[("a", 2), ("c", 9)]),
    ));
    assert_eq!(
        got.lines,
        lines(&[("a", 2), ("c", 2)]),
        "c is capped at what was held"
    );
    assert_eq!(levels(&r, "a"), (8, 0, 2));
    assert_eq!(levels(&r, "b"), (10, 0, 0));
    assert_eq!(levels(&r, "c"), (8, 0, 2));
    let entry = r.outbox_after(0).next().expect("an outbox entry").clone();
    assert_eq!(entry.lines, lines(&[("a", 2), ("c", 2)]));
    assert_eq!(r.holds(), 0);
    // The idempotent replay returns the sale as made.
    let again = res(Ok(replayed(
        &mut r,
        confirm_lines(1, "order-1", &[("a", 2), ("c", 9)]),
    )));
    assert_eq!(again, got);
}

/// A partial confirm of a SKU the reservation does not hold is INVALID_LINES, changing nothing.
#[test]
fn confirm_stray_sku_is_invalid_lines() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 5)], 0)));
    let err = refused(
        &mut r,
        confirm_lines(1, "order-1", &[("a", 1), ("b", 1)]),
        "INVALID_LINES",
    );
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    assert_eq!(levels(&r, "a"), (5, 5, 0));
}

/// Every confirm input limit (order_id, lines) gives its INVALID_* reason and changes nothing.
#[test]
fn confirm_input_limits() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 5)], 0)));
    let many = (0..=LINES_PER_RESERVATION_MAX)
        .map(|i| Line::new(format!("s{i}"), 1))
        .collect::<Vec<_>>();
    let cases: Vec<(RegionOp, &str)> = vec![
        (confirm(1, ""), "INVALID_ORDER_ID"),
        (
            confirm(1, &"o".repeat(ORDER_ID_BYTES_MAX + 1)),
            "INVALID_ORDER_ID",
        ),
        (confirm(1, "order\t1"), "INVALID_ORDER_ID"),
        (confirm(9, ""), "INVALID_ORDER_ID"),
        (confirm_lines(1, "order-1", &[("a", 0)]), "INVALID_QUANTITY"),
        (
            confirm_lines(1, "order-1", &[("a", QUANTITY_MAX + 1)]),
            "INVALID_QUANTITY",
        ),
        (confirm_lines(1, "order-1", &[("a b", 1)]), "INVALID_SKU"),
        (
            confirm_lines(1, "order-1", &[("a", 1), ("a", 1)]),
            "INVALID_LINES",
        ),
        (
            RegionOp::Confirm {
                id: ReservationId(1),
                owner: OWNER.into(),
                order_id: "order-1".into(),
                lines: many,
            },
            "INVALID_LINES",
        ),
    ];
    for (op, reason) in cases {
        refused(&mut r, op, reason);
    }
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    let got = res(apply(&mut r, T0, confirm(1, &"o".repeat(ORDER_ID_BYTES_MAX))));
    assert_eq!(got.state, ReservationState::Confirmed);
}

// ----- Extend -----

/// Extend sets a live hold's expiry to clock + ttl (0: the default) and the sweep follows it.
#[test]
fn extend_moves_a_live_hold() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 2)], 1_000)));
    let got = res(apply(&mut r, T0 + 500, extend(1, 5_000)));
    assert_eq!(got.expires_at_ms, T0 + 5_500);
    assert_eq!(got.state, ReservationState::Held);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 5_500));
    // The old expiry passes without effect.
    assert_eq!(expired(apply(&mut r, T0 + 1_000, RegionOp::Expire)), (0, false));
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    // ttl 0 is the default; an extend may also shorten a hold.
    let got = res(apply(&mut r, T0 + 2_000, extend(1, 0)));
    assert_eq!(got.expires_at_ms, T0 + 2_000 + TTL_DEFAULT_MS);
    let got = res(apply(&mut r, T0 + 2_000, extend(1, 10)));
    assert_eq!(got.expires_at_ms, T0 + 2_010);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 2_010));
    assert_eq!(r.holds(), 1);
    assert_eq!(expired(apply(&mut r, T0 + 2_010, RegionOp::Expire)), (1, false));
    assert_eq!(levels(&r, "a"), (10, 0, 0));
}

/// Extend refuses expired, released, confirmed and unknown reservations and a TTL over the limit.
#[test]
fn extend_errors() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 1_000)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 1)], 60_000)));
    res(apply(&mut r, T0, reserve("req-3", &[("a", 1)], 60_000)));
    res(apply(&mut r, T0, reserve("req-4", &[("a", 1)], 60_000)));
    res(apply(&mut r, T0, release(2)));
    res(apply(&mut r, T0, confirm(3, "order-3")));

    refused(&mut r, extend(4, TTL_MAX_MS + 1), "INVALID_TTL_MS");
    refused(&mut r, extend(1, TTL_MAX_MS + 1), "INVALID_TTL_MS");
    refused(&mut r, extend(2, 1_000), "RESERVATION_RELEASED");
    let err = refused(&mut r, extend(3, 1_000), "RESERVATION_CONFIRMED");
    assert_eq!(
        meta(&err),
        kv(&[("reservation_id", &public(3)), ("order_id", "order-3")])
    );
    refused(&mut r, extend(99, 1_000), "RESERVATION_NOT_FOUND");
    // Hold 1 expires at T0 + 1000: one ms before, it can be extended...
    apply(&mut r, T0 + 998, RegionOp::Settled { up_to_seq: 0 }).expect("no-op");
    let mut copy = r.clone();
    res(apply(&mut copy, T0 + 999, extend(1, 1_000)));
    // ...at it, not even before a sweep.
    apply(&mut r, T0 + 999, RegionOp::Settled { up_to_seq: 0 }).expect("no-op");
    refused(&mut r, extend(1, 1_000), "RESERVATION_EXPIRED");
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    apply(&mut r, T0 + 1_000, RegionOp::Expire).expect("expire");
    refused(&mut r, extend(1, 1_000), "RESERVATION_EXPIRED");
    // The TTL limit itself is accepted.
    let now = r.clock_ms();
    let got = res(apply(&mut r, now, extend(4, TTL_MAX_MS)));
    assert_eq!(got.expires_at_ms, now + TTL_MAX_MS);
}

// ----- Expire -----

/// Expire ends exactly the due holds, frees their tokens, and leaves everything else alone.
#[test]
fn expire_ends_due_holds_only() {
    let mut r = stocked(&[("a", 100)]);
    assert_eq!(r.next_expiry_ms(), None);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 300)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 100)));
    res(apply(&mut r, T0, reserve("req-3", &[("a", 4)], 200)));
    res(apply(&mut r, T0, reserve("req-4", &[("a", 8)], 150)));
    res(apply(&mut r, T0, reserve("req-5", &[("a", 16)], 50)));
    res(apply(&mut r, T0, confirm(4, "order-4")));
    res(apply(&mut r, T0, release(5)));
    assert_eq!(r.next_expiry_ms(), Some(T0 + 100));
    assert_eq!(expired(apply(&mut r, T0 + 99, RegionOp::Expire)), (0, false));
    assert_eq!(levels(&r, "a"), (100 - 15, 7, 8));

    assert_eq!(expired(apply(&mut r, T0 + 200, RegionOp::Expire)), (2, false));
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    assert_eq!(state_of(&r, 2), ReservationState::Expired);
    assert_eq!(state_of(&r, 3), ReservationState::Expired);
    assert_eq!(state_of(&r, 4), ReservationState::Confirmed);
    assert_eq!(state_of(&r, 5), ReservationState::Released);
    let three = r.reservation(ReservationId(3)).expect("kept");
    assert_eq!(three.ended_at_ms, T0 + 200);
    assert_eq!(three.lines, lines(&[("a", 4)]));
    assert_eq!(levels(&r, "a"), (91, 1, 8));
    assert_eq!(r.holds(), 1);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 300));

    assert_eq!(expired(apply(&mut r, T0 + 1_000, RegionOp::Expire)), (1, false));
    assert_eq!(r.next_expiry_ms(), None);
    assert_eq!(levels(&r, "a"), (92, 0, 8));
    assert_eq!(expired(apply(&mut r, T0 + 2_000, RegionOp::Expire)), (0, false));
}

/// Expire ends at most EXPIRE_PER_COMMAND_MAX holds, earliest first, with more_due when more remain.
#[test]
fn expire_is_bounded_and_oldest_first() {
    let extra = 4u64;
    let n = EXPIRE_PER_COMMAND_MAX as u64 + extra;
    let mut r = stocked(&[("a", n)]);
    // Later reservations expire earlier, so "oldest first" means by expiry,
    // not by id.
    for i in 1..=n {
        let op = reserve(&format!("req-{i}"), &[("a", 1)], 10_000 + (n - i));
        let got = res(apply(&mut r, T0, op));
        assert_eq!(got.id, ReservationId(i));
    }
    assert_eq!(r.holds() as u64, n);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 10_000));

    let now = T0 + 10_000 + n;
    assert_eq!(
        expired(apply(&mut r, now, RegionOp::Expire)),
        (EXPIRE_PER_COMMAND_MAX, true)
    );
    assert_eq!(r.holds() as u64, extra);
    for i in 1..=extra {
        assert_eq!(state_of(&r, i), ReservationState::Held, "hold {i}");
    }
    assert_eq!(state_of(&r, extra + 1), ReservationState::Expired);
    assert_eq!(state_of(&r, n), ReservationState::Expired);
    assert_eq!(r.next_expiry_ms(), Some(T0 + 10_000 + n - extra));
    assert_eq!(levels(&r, "a"), (n - extra, extra, 0));

    assert_eq!(
        expired(apply(&mut r, now, RegionOp::Expire)),
        (extra as usize, false)
    );
    assert_eq!(r.holds(), 0);
    assert_eq!(levels(&r, "a"), (n, 0, 0));
}

// ----- Clock -----

/// An older now_ms does not move the clock back, and expiry is judged by the largest clock.
#[test]
fn clock_never_goes_back() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 1_000)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 1)], 1_000)));
    apply(&mut r, T0 + 5_000, grant(10, "a", 1, 0)).expect("grant");
    assert_eq!(r.clock_ms(), T0 + 5_000);

    // A proposer with a slow clock: expiry is judged at T0 + 5000.
    let before = snapshot(&r);
    refused_at(&mut r, T0 + 10, confirm(1, "order-1"), "RESERVATION_EXPIRED");
    assert_eq!(snapshot(&r), before);
    assert_eq!(r.clock_ms(), T0 + 5_000);
    refused_at(&mut r, T0 + 10, extend(1, 60_000), "RESERVATION_EXPIRED");
    let got = res(apply(&mut r, T0 + 10, release(2)));
    assert_eq!(got.state, ReservationState::Expired);
    assert_eq!(got.ended_at_ms, T0 + 5_000);
    assert_eq!(expired(apply(&mut r, 0, RegionOp::Expire)), (1, false));
    assert_eq!(state_of(&r, 1), ReservationState::Expired);
    assert_eq!(r.clock_ms(), T0 + 5_000);

    // New holds are stamped with the logical clock, not the slow now_ms.
    let got = res(apply(&mut r, T0, reserve("req-3", &[("a", 1)], 1_000)));
    assert_eq!(got.created_at_ms, T0 + 5_000);
    assert_eq!(got.expires_at_ms, T0 + 6_000);
    assert_eq!(r.clock_ms(), T0 + 5_000);
}

// ----- Grant / Revoke -----

/// A grant credits available tokens; its duplicate reports the recorded units, changing nothing.
#[test]
fn grant_credits_and_is_idempotent() {
    let mut r = RegionState::new(REGION);
    assert_eq!(transfer(apply(&mut r, T0, grant(7, "a", 40, 0))), (7, 40, false));
    assert_eq!(levels(&r, "a"), (40, 0, 0));
    let b = r.bucket("a").expect("bucket");
    assert_eq!((b.received, b.returned, b.settled), (40, 0, 0));
    let t = r.transfer(7).expect("recorded");
    assert_eq!(
        (t.kind, t.sku.as_str(), t.asked, t.moved),
        (TransferKind::Grant, "a", 40, 40)
    );

    res(apply(&mut r, T0, reserve("req-1", &[("a", 15)], 0)));
    let dup = replayed(&mut r, grant(7, "a", 40, 0));
    assert_eq!(transfer(Ok(dup)), (7, 40, true));
    assert_eq!(levels(&r, "a"), (25, 15, 0));
    // A grant to a second SKU adds a bucket.
    assert_eq!(transfer(apply(&mut r, T0, grant(8, "b", 1, 7))), (8, 1, false));
    assert_eq!(levels(&r, "b"), (1, 0, 0));
}

/// A transfer id reused with other units, SKU or kind is TRANSFER_MISMATCH, changing nothing.
#[test]
fn transfer_id_reuse_is_a_mismatch() {
    let mut r = RegionState::new(REGION);
    apply(&mut r, T0, grant(7, "a", 40, 0)).expect("grant");
    apply(&mut r, T0, revoke(8, "a", 5, 0)).expect("revoke");
    for op in [
        grant(7, "a", 41, 0),
        grant(7, "b", 40, 0),
        revoke(7, "a", 40, 0),
        revoke(8, "a", 6, 0),
        grant(8, "a", 5, 0),
    ] {
        let err = refused(&mut r, op, "TRANSFER_MISMATCH");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(levels(&r, "a"), (35, 0, 0));
}

/// A revoke takes min(units_max, available) and reports it, also when replayed later.
#[test]
fn revoke_takes_what_is_available() {
    let mut r = stocked(&[("a", 20)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 5)], 0)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 3)], 0)));
    res(apply(&mut r, T0, confirm(2, "order-2")));
    assert_eq!(levels(&r, "a"), (12, 5, 3));

    assert_eq!(transfer(apply(&mut r, T0, revoke(10, "a", 4, 0))), (10, 4, false));
    assert_eq!(levels(&r, "a"), (8, 5, 3));
    assert_eq!(
        transfer(apply(&mut r, T0, revoke(11, "a", 100, 0))),
        (11, 8, false)
    );
    assert_eq!(levels(&r, "a"), (0, 5, 3));
    assert_eq!(r.bucket("a").expect("bucket").returned, 12);
    let t = r.transfer(11).expect("recorded");
    assert_eq!((t.kind, t.asked, t.moved), (TransferKind::Revoke, 100, 8));

    apply(&mut r, T0, grant(12, "a", 50, 0)).expect("grant");
    assert_eq!(
        transfer(Ok(replayed(&mut r, revoke(11, "a", 100, 0)))),
        (11, 8, true)
    );
    assert_eq!(levels(&r, "a"), (50, 5, 3));
    // Nothing available: the revoke takes nothing, and is recorded so.
    assert_eq!(
        transfer(apply(&mut r, T0, revoke(13, "zz", 9, 0))),
        (13, 0, false)
    );
    assert!(r.bucket("zz").is_none());
    assert_eq!(r.transfer(13).map(|t| t.moved), Some(0));
}

/// done_below drops older transfer records; ids below the floor are duplicates that change nothing.
#[test]
fn done_below_prunes_transfer_records() {
    let mut r = RegionState::new(REGION);
    apply(&mut r, T0, grant(1, "a", 10, 0)).expect("grant");
    apply(&mut r, T0, grant(2, "a", 10, 1)).expect("grant");
    apply(&mut r, T0, revoke(3, "a", 5, 1)).expect("revoke");
    assert!(r.transfer(1).is_some() && r.transfer(2).is_some() && r.transfer(3).is_some());

    apply(&mut r, T0, grant(5, "a", 1, 3)).expect("grant");
    assert!(r.transfer(1).is_none());
    assert!(r.transfer(2).is_none());
    assert!(r.transfer(3).is_some());
    assert!(r.transfer(5).is_some());
    assert_eq!(levels(&r, "a"), (16, 0, 0));

    for op in [
        grant(1, "a", 10, 0),
        grant(2, "zz", 999, 0),
        revoke(1, "a", 10, 0),
    ] {
        let (_, units, dup) = transfer(Ok(replayed(&mut r, op)));
        assert!(dup);
        assert_eq!(units, 0, "a forgotten transfer reports nothing moved");
    }
    // A transfer at or above the floor is still matched against its record.
    assert_eq!(transfer(Ok(replayed(&mut r, revoke(3, "a", 5, 0)))), (3, 5, true));
    // A new transfer between the floor and the records is applied.
    assert_eq!(transfer(apply(&mut r, T0, grant(4, "a", 2, 3))), (4, 2, false));
    // A lower done_below does not lower the floor.
    apply(&mut r, T0, grant(6, "a", 1, 0)).expect("grant");
    assert_eq!(transfer(Ok(replayed(&mut r, grant(2, "a", 10, 0)))), (2, 0, true));
    assert_eq!(levels(&r, "a"), (19, 0, 0));
}

/// done_below above the transfer's own id is TRANSFER_MISMATCH.
#[test]
fn done_below_above_the_transfer_is_a_mismatch() {
    let mut r = RegionState::new(REGION);
    apply(&mut r, T0, grant(1, "a", 10, 0)).expect("grant");
    let err = refused(&mut r, grant(2, "a", 5, 3), "TRANSFER_MISMATCH");
    assert_eq!(meta(&err), kv(&[("transfer_id", "2")]));
    refused(&mut r, revoke(2, "a", 5, 3), "TRANSFER_MISMATCH");
    assert!(r.transfer(1).is_some(), "the floor did not move");
    // done_below equal to the id is fine.
    assert_eq!(transfer(apply(&mut r, T0, grant(2, "a", 5, 2))), (2, 5, false));
    assert!(r.transfer(1).is_none());
}

/// Transfer inputs: a valid SKU and 1..=TRANSFER_UNITS_MAX units.
#[test]
fn transfer_input_limits() {
    let mut r = stocked(&[("a", 10)]);
    refused(&mut r, grant(10, "a b", 1, 0), "INVALID_SKU");
    refused(&mut r, grant(10, "", 1, 0), "INVALID_SKU");
    refused(&mut r, grant(10, "a", 0, 0), "INVALID_UNITS");
    refused(&mut r, grant(10, "a", TRANSFER_UNITS_MAX + 1, 0), "INVALID_UNITS");
    refused(&mut r, revoke(10, "a", 0, 0), "INVALID_UNITS");
    refused(
        &mut r,
        revoke(10, "a", TRANSFER_UNITS_MAX + 1, 0),
        "INVALID_UNITS",
    );
    refused(&mut r, revoke(10, "a/b", 1, 0), "INVALID_SKU");
    assert!(r.transfer(10).is_none());
    assert_eq!(
        transfer(apply(&mut r, T0, grant(10, "a", TRANSFER_UNITS_MAX, 0))),
        (10, TRANSFER_UNITS_MAX, false)
    );
}

// ----- Settled -----

/// Settled drops the outbox up to seq, settles its reservations, and moves confirmed to settled.
#[test]
fn settled_drops_outbox_and_settles() {
    let mut r = stocked(&[("a", 10), ("b", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 3), ("b", 1)], 0)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 0)));
    res(apply(&mut r, T0, reserve("req-3", &[("a", 1)], 0)));
    res(apply(&mut r, T0, confirm(1, "order-1")));
    res(apply(&mut r, T0, confirm(2, "order-2")));
    assert_eq!(levels(&r, "a"), (4, 1, 5));

    assert_eq!(
        settled(apply(&mut r, T0 + 7, RegionOp::Settled { up_to_seq: 1 })),
        1
    );
    assert_eq!(r.settled_up_to(), 1);
    assert_eq!(r.outbox_after(0).map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(levels(&r, "a"), (4, 1, 2));
    assert_eq!(levels(&r, "b"), (9, 0, 0));
    assert_eq!(r.bucket("a").expect("bucket").settled, 3);
    assert_eq!(r.bucket("b").expect("bucket").settled, 1);
    let one = r.reservation(ReservationId(1)).expect("kept");
    assert_eq!(one.state, ReservationState::Settled);
    assert_eq!(one.ended_at_ms, T0 + 7);
    assert_eq!(state_of(&r, 2), ReservationState::Confirmed);
    assert_eq!(state_of(&r, 3), ReservationState::Held);

    assert_eq!(
        settled(apply(&mut r, T0 + 8, RegionOp::Settled { up_to_seq: 2 })),
        1
    );
    assert_eq!(r.outbox_after(0).count(), 0);
    assert_eq!(levels(&r, "a"), (4, 1, 0));
    assert_eq!(r.bucket("a").expect("bucket").settled, 5);
    assert_eq!(r.last_outbox_seq(), 2);
    // The next confirm continues the sequence.
    res(apply(&mut r, T0 + 9, confirm(3, "order-3")));
    assert_eq!(r.outbox_after(2).map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
}

/// Settled again with the same or a lower seq changes nothing and settles nothing.
#[test]
fn settled_is_idempotent() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 3)], 0)));
    res(apply(&mut r, T0, confirm(1, "order-1")));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 0)));
    res(apply(&mut r, T0, confirm(2, "order-2")));
    assert_eq!(settled(apply(&mut r, T0, RegionOp::Settled { up_to_seq: 2 })), 2);
    assert_eq!(
        settled(Ok(replayed(&mut r, RegionOp::Settled { up_to_seq: 2 }))),
        0
    );
    assert_eq!(
        settled(Ok(replayed(&mut r, RegionOp::Settled { up_to_seq: 1 }))),
        0
    );
    assert_eq!(
        settled(Ok(replayed(&mut r, RegionOp::Settled { up_to_seq: 0 }))),
        0
    );
    assert_eq!(r.settled_up_to(), 2);
    assert_eq!(levels(&r, "a"), (5, 0, 0));
    assert_eq!(r.bucket("a").expect("bucket").settled, 5);
}

/// Settled beyond the last seq written is SETTLEMENT_AHEAD and changes nothing.
#[test]
fn settled_ahead_is_refused() {
    let mut r = stocked(&[("a", 10)]);
    let err = refused(&mut r, RegionOp::Settled { up_to_seq: 1 }, "SETTLEMENT_AHEAD");
    assert_eq!(meta(&err), kv(&[("up_to_seq", "1"), ("last_seq", "0")]));
    assert_eq!(
        settled(Ok(replayed(&mut r, RegionOp::Settled { up_to_seq: 0 }))),
        0
    );
    res(apply(&mut r, T0, reserve("req-1", &[("a", 3)], 0)));
    res(apply(&mut r, T0, confirm(1, "order-1")));
    let err = refused(&mut r, RegionOp::Settled { up_to_seq: 2 }, "SETTLEMENT_AHEAD");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(meta(&err), kv(&[("up_to_seq", "2"), ("last_seq", "1")]));
    refused(
        &mut r,
        RegionOp::Settled { up_to_seq: u64::MAX },
        "SETTLEMENT_AHEAD",
    );
    assert_eq!(levels(&r, "a"), (7, 0, 3));
    assert_eq!(r.settled_up_to(), 0);
}

// ----- AdjustStock (standalone) -----

/// AdjustStock adds stock, and removes it only from available tokens.
#[test]
fn adjust_stock_adds_and_removes_available_only() {
    let mut r = RegionState::new(REGION);
    assert_eq!(
        stock(apply(&mut r, T0, adjust("adj-1", "a", 10))),
        ("a".into(), 10, 10)
    );
    let b = r.bucket("a").expect("bucket");
    assert_eq!((b.received, b.returned), (10, 0));
    res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 0)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 0)));
    res(apply(&mut r, T0, confirm(2, "order-2")));
    assert_eq!(levels(&r, "a"), (4, 4, 2));

    let err = refused(&mut r, adjust("adj-2", "a", -5), "STOCK_NOT_REMOVABLE");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        meta(&err),
        kv(&[("sku", "a"), ("requested", "5"), ("removable", "4")])
    );
    let err = refused(&mut r, adjust("adj-3", "zz", -1), "STOCK_NOT_REMOVABLE");
    assert_eq!(
        meta(&err),
        kv(&[("sku", "zz"), ("requested", "1"), ("removable", "0")])
    );
    assert!(r.bucket("zz").is_none());

    assert_eq!(
        stock(apply(&mut r, T0, adjust("adj-4", "a", -4))),
        ("a".into(), 6, 0)
    );
    assert_eq!(levels(&r, "a"), (0, 4, 2));
    assert_eq!(r.bucket("a").expect("bucket").returned, 4);
    // The refused request ids were not remembered.
    assert_eq!(
        stock(apply(&mut r, T0, adjust("adj-2", "a", 5))),
        ("a".into(), 11, 5)
    );
}

/// AdjustStock is idempotent by request_id; another request under the id is REQUEST_ID_REUSED.
#[test]
fn adjust_stock_is_idempotent() {
    let mut r = RegionState::new(REGION);
    apply(&mut r, T0, adjust("adj-1", "a", 10)).expect("adjust");
    assert_eq!(
        stock(Ok(replayed(&mut r, adjust("adj-1", "a", 10)))),
        ("a".into(), 10, 10)
    );
    res(apply(&mut r, T0, reserve("req-1", &[("a", 3)], 0)));
    assert_eq!(
        stock(Ok(replayed(&mut r, adjust("adj-1", "a", 10)))),
        ("a".into(), 10, 7)
    );
    for op in [
        adjust("adj-1", "a", 11),
        adjust("adj-1", "b", 10),
        adjust("adj-1", "a", -10),
    ] {
        let err = refused(&mut r, op, "REQUEST_ID_REUSED");
        assert_eq!(meta(&err), kv(&[("request_id", "adj-1")]));
    }
    // Reserve and adjust request ids are separate tables.
    apply(&mut r, T0, adjust("req-1", "a", 1)).expect("adjust");
    assert_eq!(levels(&r, "a"), (8, 3, 0));
}

/// Every AdjustStock input limit (request_id, sku, delta) gives its INVALID_* reason.
#[test]
fn adjust_stock_input_limits() {
    let mut r = RegionState::new(REGION);
    apply(&mut r, T0, adjust("adj-0", "a", 10)).expect("adjust");
    let max = STOCK_DELTA_MAX as i64;
    let cases = [
        (adjust("adj-1", "a", 0), "INVALID_DELTA"),
        (adjust("adj-1", "a", max + 1), "INVALID_DELTA"),
        (adjust("adj-1", "a", -max - 1), "INVALID_DELTA"),
        (adjust("adj-1", "a", i64::MIN), "INVALID_DELTA"),
        (adjust("adj-1", "a", i64::MAX), "INVALID_DELTA"),
        (adjust("adj-1", "a b", 1), "INVALID_SKU"),
        (adjust("adj-1", "", 1), "INVALID_SKU"),
        (adjust("", "a", 1), "INVALID_REQUEST_ID"),
        (
            adjust(&"r".repeat(REQUEST_ID_BYTES_MAX + 1), "a", 1),
            "INVALID_REQUEST_ID",
        ),
    ];
    for (op, reason) in cases {
        refused(&mut r, op, reason);
    }
    assert_eq!(
        stock(apply(&mut r, T0, adjust("adj-1", "a", max))),
        ("a".into(), 10 + STOCK_DELTA_MAX, 10 + STOCK_DELTA_MAX)
    );
}

// ----- Pruning -----

/// Ended reservations are forgotten RESERVATION_RETENTION_MS after they ended, not before.
#[test]
fn ended_reservations_are_forgotten_after_retention() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 100)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 1)], 0)));
    res(apply(&mut r, T0, reserve("req-3", &[("a", 1)], 0)));
    res(apply(&mut r, T0, release(2)));
    res(apply(&mut r, T0, confirm(3, "order-3")));
    assert_eq!(expired(apply(&mut r, T0 + 100, RegionOp::Expire)), (1, false));
    assert_eq!(
        settled(apply(&mut r, T0 + 200, RegionOp::Settled { up_to_seq: 1 })),
        1
    );
    // Ended at: 2 at T0, 1 at T0 + 100, 3 at T0 + 200.

    apply(&mut r, T0 + RESERVATION_RETENTION_MS - 1, RegionOp::Expire).expect("expire");
    assert_eq!(r.reservations().count(), 3);
    apply(&mut r, T0 + RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert!(r.reservation(ReservationId(2)).is_none());
    assert_eq!(r.reservations().count(), 2);
    apply(&mut r, T0 + 100 + RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert!(r.reservation(ReservationId(1)).is_none());
    apply(&mut r, T0 + 199 + RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert!(r.reservation(ReservationId(3)).is_some());
    apply(&mut r, T0 + 200 + RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert_eq!(r.reservations().count(), 0);

    refused(&mut r, release(2), "RESERVATION_NOT_FOUND");
    refused(&mut r, release(1), "RESERVATION_NOT_FOUND");
    refused(&mut r, confirm(3, "order-3"), "RESERVATION_NOT_FOUND");
    // Forgetting reservations changes no bucket.
    assert_eq!(levels(&r, "a"), (9, 0, 0));
    assert_eq!(r.bucket("a").expect("bucket").settled, 1);
    // A forgotten id is free again: a nonce that names it gets it, as a
    // new hold (random nonces make that vanishingly rare).
    let now = r.clock_ms();
    let got = res(apply(
        &mut r,
        now,
        with_nonce(2, reserve("req-4", &[("a", 1)], 0)),
    ));
    assert_eq!(got.id, ReservationId(2));
    assert_eq!(got.state, ReservationState::Held);
    assert_eq!(got.created_at_ms, now);
}

/// Pruning forgets at most PRUNE_PER_COMMAND_MAX items per command and catches up after.
#[test]
fn pruning_is_bounded_per_command() {
    let n = PRUNE_PER_COMMAND_MAX as u64 + 10;
    let mut r = stocked(&[("a", n)]);
    for i in 1..=n {
        res(apply(&mut r, T0, reserve(&format!("req-{i}"), &[("a", 1)], 0)));
        res(apply(&mut r, T0, release(i)));
    }
    assert_eq!(r.reservations().count() as u64, n);
    assert_eq!(r.remembered_requests() as u64, n);
    let later = T0 + RESERVATION_RETENTION_MS;
    apply(&mut r, later, RegionOp::Expire).expect("expire");
    assert_eq!(r.reservations().count() as u64, n - PRUNE_PER_COMMAND_MAX as u64);
    assert_eq!(r.remembered_requests() as u64, n - PRUNE_PER_COMMAND_MAX as u64);
    // The oldest went first.
    assert!(r.reservation(ReservationId(1)).is_none());
    assert!(r.reservation(ReservationId(n)).is_some());
    apply(&mut r, later, RegionOp::Expire).expect("expire");
    assert_eq!(r.reservations().count(), 0);
    assert_eq!(r.remembered_requests(), 0);
}

/// A reserve's request id is remembered as long as its reservation: while
/// the hold lives (however long), and for the retention after it ends.
#[test]
fn request_ids_live_as_long_as_their_reservation() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], TTL_MAX_MS)));
    assert_eq!(r.remembered_requests(), 1);

    // The hold lives on past the retention, and so does its id.
    apply(&mut r, T0 + 2 * RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert_eq!(state_of(&r, 1), ReservationState::Held);
    assert_eq!(r.remembered_requests(), 1);
    refused(&mut r, reserve("req-1", &[("a", 2)], 0), "REQUEST_ID_REUSED");
    let now = r.clock_ms();
    let again = res(apply(&mut r, now, reserve("req-1", &[("a", 1)], TTL_MAX_MS)));
    assert_eq!(again.id, ReservationId(1), "a retry finds the live hold");

    // Once the hold ends, its id is kept for the retention, then forgotten.
    // Refusals apply one ms after the clock, and pruning runs after a
    // command: stay clear of the boundary.
    let released_at = r.clock_ms() + 1;
    res(apply(&mut r, released_at, release(1)));
    apply(
        &mut r,
        released_at + RESERVATION_RETENTION_MS - 10,
        RegionOp::Expire,
    )
    .expect("expire");
    refused(&mut r, reserve("req-1", &[("a", 2)], 0), "REQUEST_ID_REUSED");
    apply(&mut r, released_at + RESERVATION_RETENTION_MS, RegionOp::Expire).expect("expire");
    assert_eq!(r.remembered_requests(), 0);
    assert!(r.reservation(ReservationId(1)).is_none());
    let now = r.clock_ms();
    let got = res(apply(
        &mut r,
        now,
        with_nonce(2, reserve("req-1", &[("a", 2)], 0)),
    ));
    assert_eq!(got.id, ReservationId(2), "a forgotten id is a new request");
    assert_eq!(got.lines, lines(&[("a", 2)]));
    assert_eq!(levels(&r, "a"), (8, 2, 0));
}

/// Issue 12: a retry of a request id 11 minutes (logical) after the reserve,
/// after 1,000,001 later reserves, finds its reservation, whether the hold
/// is still live (1 h TTL) or was released 9 minutes before the retry. The
/// later holds are all released after it, so more than `ended_max` (1,000,000)
/// reservations end within the retention: none is forgotten early for that.
#[test]
fn retry_after_eleven_minutes_and_a_million_reserves_finds_the_reservation() {
    const LATER: u64 = 1_000_001;
    const MIN: Millis = 60 * 1000;
    let mut r = stocked(&[("a", 10), ("b", LATER)]);
    // Ten minutes and a million: the 1,000,001 later reserves are more than
    // the count, and the retry comes nine minutes after the hold ended.
    let retention = Retention {
        ended_ms: 10 * MIN,
        ended_max: 1_000_000,
    };
    apply(&mut r, T0, RegionOp::SetRetention { retention }).expect("set");
    let live = res(apply(&mut r, T0, reserve("live-1", &[("a", 1)], 60 * MIN)));
    let ended = res(apply(&mut r, T0, reserve("ended-2", &[("a", 2)], 60 * MIN)));
    // Without the per-step books check of `apply`: two million steps.
    for i in 0..LATER {
        let now = T0 + 1 + i * (9 * MIN) / LATER;
        if now >= T0 + 2 * MIN && r.reservation(ended.id).expect("kept").state == ReservationState::Held {
            res(r.apply(cmd(now, release(ended.id.0))));
        }
        let op = with_nonce(1_000 + i, reserve(&format!("later-{i}"), &[("b", 1)], 0));
        res(r.apply(cmd(now, op)));
    }
    for i in 0..LATER {
        res(r.apply(cmd(T0 + 10 * MIN, release(1_000 + i))));
    }
    assert_books(&r);
    assert!(r.ended_kept() as u64 > LATER, "{} ended", r.ended_kept());
    let at = T0 + 11 * MIN;
    let again = res(apply(&mut r, at, reserve("live-1", &[("a", 1)], 60 * MIN)));
    assert_eq!(again, live, "the live hold, unchanged");
    let again = res(apply(&mut r, at, reserve("ended-2", &[("a", 2)], 60 * MIN)));
    assert_eq!((again.id, again.state), (ended.id, ReservationState::Released));
    assert_eq!(levels(&r, "a"), (9, 1, 0), "nothing reserved twice");
}

/// The retention's count bound never forgets early: while `ended_max`
/// reservations ended within the retention are kept, a new reserve is
/// RETENTION_FULL (resource exhausted, nothing changed), retries of
/// remembered ids are still answered, and once the oldest age out of the
/// retention new reserves are taken again.
#[test]
fn retention_count_refuses_new_reserves_rather_than_forget() {
    let mut r = stocked(&[("a", 10)]);
    let short = Retention {
        ended_ms: RESERVATION_RETENTION_MS_MIN,
        ended_max: ENDED_RESERVATIONS_MIN,
    };
    apply(&mut r, T0, RegionOp::SetRetention { retention: short }).expect("set");
    for i in 1..=ENDED_RESERVATIONS_MIN {
        res(apply(
            &mut r,
            T0 + i,
            reserve(&format!("req-{i}"), &[("a", 1)], 0),
        ));
        res(apply(&mut r, T0 + i, release(i)));
    }
    assert_eq!(r.ended_kept() as u64, ENDED_RESERVATIONS_MIN);
    let err = refused(&mut r, reserve("req-new", &[("a", 1)], 0), "RETENTION_FULL");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(
        err.metadata(),
        vec![("ended", ENDED_RESERVATIONS_MIN.to_string())]
    );
    // The oldest is still remembered: its retry is answered, not refused.
    let again = res(Ok(replayed(&mut r, reserve("req-1", &[("a", 1)], 0))));
    assert_eq!(
        (again.id, again.state),
        (ReservationId(1), ReservationState::Released)
    );

    // A minute after the first ended, it may be forgotten: there is room.
    let got = res(apply(
        &mut r,
        T0 + 1 + RESERVATION_RETENTION_MS_MIN,
        reserve("req-new", &[("a", 1)], 0),
    ));
    assert_eq!(got.state, ReservationState::Held);
    assert!(r.reservation(ReservationId(1)).is_none(), "aged out, pruned");
    assert!(
        r.reservation(ReservationId(2)).is_some(),
        "still within its minute"
    );
}

/// Issue 12: a confirm retried after settlement, with the same order id,
/// answers with the settled sale, even after more than `ended_max` other
/// reservations ended since; another order id is refused as before. Past
/// the retention after settlement, the record is forgotten and the retry is
/// RESERVATION_NOT_FOUND.
#[test]
fn confirm_retried_after_settlement_answers_the_sale() {
    let n = ENDED_RESERVATIONS_MIN;
    let mut r = stocked(&[("a", n + 10)]);
    let short = Retention {
        ended_ms: RESERVATION_RETENTION_MS_MIN,
        ended_max: n,
    };
    apply(&mut r, T0, RegionOp::SetRetention { retention: short }).expect("set");
    // Holds taken first, so that they may all end after the sale settles.
    for i in 1..=n {
        res(apply(&mut r, T0, reserve(&format!("req-{i}"), &[("a", 1)], 0)));
    }
    let sold = res(apply(
        &mut r,
        T0,
        reserve(&format!("req-{}", n + 1), &[("a", 2)], 0),
    ));
    let confirmed = res(apply(&mut r, T0, confirm(n + 1, "order-1")));
    assert_eq!(
        settled(apply(&mut r, T0 + 1, RegionOp::Settled { up_to_seq: 1 })),
        1
    );
    for i in 1..=n {
        res(apply(&mut r, T0 + 2, release(i)));
    }
    assert_eq!(
        r.ended_kept() as u64,
        n + 1,
        "ended_max plus the holds live when it filled"
    );

    let again = res(Ok(replayed(&mut r, confirm(n + 1, "order-1"))));
    assert_eq!(again.id, sold.id);
    assert_eq!(again.state, ReservationState::Settled);
    assert_eq!(
        (again.lines.clone(), again.order_id.clone()),
        (confirmed.lines, confirmed.order_id)
    );
    refused(&mut r, confirm(n + 1, "order-2"), "RESERVATION_CONFIRMED");
    assert_eq!(r.last_outbox_seq(), 1);

    // Forgotten a retention after it settled: not found, like any unknown id.
    let later = T0 + 2 + RESERVATION_RETENTION_MS_MIN;
    while r.ended_kept() > 0 {
        apply(&mut r, later, RegionOp::Expire).expect("expire");
    }
    refused(&mut r, confirm(n + 1, "order-1"), "RESERVATION_NOT_FOUND");
    assert_eq!(r.bucket("a").expect("bucket").settled, 2);
}

/// Issue 12: a standalone region's AdjustStock retried 11 minutes later,
/// after many other adjustments, is not applied twice while the stock it
/// added is there; once that stock has left (removed, or sold and settled)
/// and the window has passed, its id is forgotten.
#[test]
fn adjust_stock_retried_late_is_not_applied_twice() {
    const ELEVEN_MIN: Millis = 11 * 60 * 1000;
    let mut r = RegionState::new(REGION);
    assert_eq!(stock(apply(&mut r, T0, adjust("adj-1", "a", 10))).1, 10);
    for i in 0..2_000u64 {
        let sku = if i % 2 == 0 { "a" } else { "b" };
        apply(&mut r, T0 + 1 + i * 301, adjust(&format!("other-{i}"), sku, 1)).expect("adjust");
    }
    assert!(r.clock_ms() > T0 + ADJUSTMENT_WINDOW_MS);
    let before = r.bucket("a").expect("bucket").clone();
    let out = stock(Ok(replayed(&mut r, adjust("adj-1", "a", 10))));
    assert_eq!(out, ("a".into(), 1_010, 1_010), "the figures, not applied again");
    apply(&mut r, T0 + ELEVEN_MIN, RegionOp::Expire).expect("expire");
    stock(Ok(replayed(&mut r, adjust("adj-1", "a", 10))));
    assert_eq!(r.bucket("a"), Some(&before));
    refused(&mut r, adjust("adj-1", "a", 11), "REQUEST_ID_REUSED");

    // The first ten units of a leave (sold and settled; first in, first
    // out): adj-1's stock is gone and its window long past, so it is
    // forgotten, and the same id is a new adjustment.
    res(apply(&mut r, T0 + ELEVEN_MIN, reserve("req-1", &[("a", 10)], 0)));
    res(apply(&mut r, T0 + ELEVEN_MIN, confirm(1, "order-1")));
    apply(&mut r, T0 + ELEVEN_MIN, RegionOp::Settled { up_to_seq: 1 }).expect("settle");
    assert_eq!(
        stock(apply(&mut r, T0 + ELEVEN_MIN, adjust("adj-1", "a", 11))),
        ("a".into(), 1_021, 1_011),
        "forgotten: a new adjustment"
    );
    // other-0 (11 units in right after it) still has its unit in stock.
    refused(&mut r, adjust("other-0", "a", 2), "REQUEST_ID_REUSED");
}

/// In a standalone region (which never settles), a restock's id is
/// forgotten once its units are sold and its window has passed: sales count
/// as units out, so restock ids do not pile up to `ADJUSTMENT_IDS_FULL`.
#[test]
fn standalone_sales_free_restock_ids() {
    const ELEVEN_MIN: Millis = 11 * 60 * 1000;
    let mut r = RegionState::new(REGION);
    stock(apply(&mut r, T0, adjust("restock-1", "a", 10)));
    res(apply(&mut r, T0 + 1, reserve("req-1", &[("a", 10)], 0)));
    res(apply(&mut r, T0 + 1, confirm(1, "order-1")));
    apply(&mut r, T0 + ELEVEN_MIN, RegionOp::Expire).expect("expire");
    assert_eq!(
        stock(apply(&mut r, T0 + ELEVEN_MIN, adjust("restock-1", "a", 5))),
        ("a".into(), 15, 5),
        "sold out and past its window: the id is free for a new restock"
    );
}

/// A region's retention is replicated state: SetRetention changes how long
/// ended reservations are kept, and settings outside the bounds are refused
/// and change nothing.
#[test]
fn retention_is_set_by_command() {
    let mut r = stocked(&[("a", 10_000)]);
    let short = Retention {
        ended_ms: RESERVATION_RETENTION_MS_MIN,
        ended_max: ENDED_RESERVATIONS_MIN,
    };
    apply(&mut r, T0, RegionOp::SetRetention { retention: short }).expect("set");
    assert_eq!(r.retention(), short);
    let n = ENDED_RESERVATIONS_MIN;
    for i in 1..=n {
        res(apply(&mut r, T0, reserve(&format!("req-{i}"), &[("a", 1)], 0)));
        res(apply(&mut r, T0, release(i)));
    }
    // ENDED_RESERVATIONS_MIN ended reservations are kept: the next reserve
    // is refused rather than one forgotten early.
    assert_eq!(r.ended_kept() as u64, ENDED_RESERVATIONS_MIN);
    refused(&mut r, reserve("req-more", &[("a", 1)], 0), "RETENTION_FULL");
    // Pruning takes at most PRUNE_PER_COMMAND_MAX per command.
    let later = T0 + RESERVATION_RETENTION_MS_MIN;
    while r.ended_kept() > 0 {
        apply(&mut r, later, RegionOp::Expire).expect("expire");
    }
    assert_eq!(r.remembered_requests(), 0, "kept a minute of logical time");

    for bad in [
        Retention {
            ended_ms: RESERVATION_RETENTION_MS_LIMIT + 1,
            ended_max: ENDED_RESERVATIONS_MIN,
        },
        Retention {
            ended_ms: RESERVATION_RETENTION_MS_MIN - 1,
            ended_max: ENDED_RESERVATIONS_MIN,
        },
        Retention {
            ended_ms: RESERVATION_RETENTION_MS_MIN,
            ended_max: ENDED_RESERVATIONS_LIMIT + 1,
        },
        Retention {
            ended_ms: RESERVATION_RETENTION_MS_MIN,
            ended_max: ENDED_RESERVATIONS_MIN - 1,
        },
    ] {
        refused(
            &mut r,
            RegionOp::SetRetention { retention: bad },
            "INVALID_RETENTION",
        );
    }
    assert_eq!(r.retention(), short);
}

/// Live holds and unsettled sales are never pruned, however much time passes.
#[test]
fn live_holds_and_unsettled_sales_are_never_pruned() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], TTL_MAX_MS)));
    res(apply(&mut r, T0, reserve("req-2", &[("a", 2)], 0)));
    res(apply(&mut r, T0, confirm(2, "order-2")));
    let step = RESERVATION_RETENTION_MS;
    let mut now = T0;
    while now + step < T0 + TTL_MAX_MS {
        now += step;
        assert_eq!(expired(apply(&mut r, now, RegionOp::Expire)), (0, false));
        assert_eq!(state_of(&r, 1), ReservationState::Held);
        assert_eq!(state_of(&r, 2), ReservationState::Confirmed);
    }
    assert_eq!(r.outbox_after(0).count(), 1);
    // The hold expires on time and is only then on the way out.
    assert_eq!(
        expired(apply(&mut r, T0 + TTL_MAX_MS, RegionOp::Expire)),
        (1, false)
    );
    apply(
        &mut r,
        T0 + TTL_MAX_MS + RESERVATION_RETENTION_MS,
        RegionOp::Expire,
    )
    .expect("expire");
    assert!(r.reservation(ReservationId(1)).is_none());
    assert_eq!(state_of(&r, 2), ReservationState::Confirmed);
    // The sale can still be settled an arbitrarily long time later.
    let now = r.clock_ms();
    assert_eq!(settled(apply(&mut r, now, RegionOp::Settled { up_to_seq: 1 })), 1);
    assert_eq!(levels(&r, "a"), (8, 0, 0));
}

// ----- Owners -----

/// Another owner's release, confirm and extend of a hold are refused exactly
/// as for an id that does not exist (same reason, same message, nothing
/// about the owner) and change nothing; the owner's own then work.
#[test]
fn another_owners_hold_is_not_found() {
    let mut r = stocked(&[("a", 10)]);
    let mine = res(apply(&mut r, T0, reserve("req-1", &[("a", 4)], 60_000)));
    // What anyone gets for a number that is nobody's.
    let missing = refused(&mut r, release(99), "RESERVATION_NOT_FOUND");
    assert_eq!(
        missing.to_string(),
        format!("reservation {} not found", public(99))
    );

    // Bob is known to the region (he has a hold of his own); carol is not.
    res(apply(
        &mut r,
        T0,
        by(OTHER, reserve("req-2", &[("a", 1)], 60_000)),
    ));
    for stranger in [OTHER, "carol"] {
        for op in [
            release(1),
            confirm(1, "order-1"),
            confirm_lines(1, "order-1", &[("a", 1)]),
            extend(1, 1_000),
        ] {
            let err = refused(&mut r, by(stranger, op), "RESERVATION_NOT_FOUND");
            assert_eq!(err, Rejection::ReservationNotFound { id: public(1) });
            assert_eq!(err.kind(), ErrorKind::NotFound);
            assert_eq!(err.to_string(), format!("reservation {} not found", public(1)));
            assert_eq!(meta(&err), kv(&[("reservation_id", &public(1))]));
            assert!(!err.to_string().contains(OWNER) && !err.to_string().contains(stranger));
        }
        assert_eq!(r.reservation_of(ReservationId(1), stranger), None);
    }
    assert_eq!(levels(&r, "a"), (5, 5, 0));
    assert_eq!(r.reservation_of(ReservationId(1), OWNER), Some(mine.clone()));
    assert_eq!(r.reservation(ReservationId(1)), Some(mine));

    // The owner confirms fine; the sale stays hers alone.
    let sold = res(apply(&mut r, T0 + 10, confirm(1, "order-1")));
    assert_eq!(sold.state, ReservationState::Confirmed);
    assert_eq!(sold.owner, OWNER);
    assert_eq!(levels(&r, "a"), (5, 1, 4));
    // A stranger learns nothing from a confirmed hold either: not
    // RESERVATION_CONFIRMED, not an idempotent replay of her order.
    refused(&mut r, by(OTHER, release(1)), "RESERVATION_NOT_FOUND");
    refused(&mut r, by(OTHER, confirm(1, "order-1")), "RESERVATION_NOT_FOUND");
    refused(&mut r, by(OTHER, extend(1, 1_000)), "RESERVATION_NOT_FOUND");
    // Nor from a released one, while the owner's release replays.
    res(apply(&mut r, T0 + 20, by(OTHER, release(2))));
    refused(&mut r, release(2), "RESERVATION_NOT_FOUND");
    refused(&mut r, confirm(2, "order-2"), "RESERVATION_NOT_FOUND");
    res(Ok(replayed(&mut r, by(OTHER, release(2)))));
}

/// Request ids are remembered per owner: another owner's reserve under the
/// same request id is a new reservation of their own, never the first
/// owner's, and REQUEST_ID_REUSED only ever compares within one owner.
#[test]
fn request_ids_are_per_owner() {
    let mut r = stocked(&[("a", 10)]);
    let alices = res(apply(&mut r, T0, reserve("req-1", &[("a", 2)], 0)));
    // Bob, same request id, another cart: not a reuse, a new hold.
    let bobs = res(apply(
        &mut r,
        T0,
        by(OTHER, with_nonce(50, reserve("req-1", &[("a", 3)], 0))),
    ));
    assert_eq!((bobs.id, bobs.owner.as_str()), (ReservationId(50), OTHER));
    // Carol, same request id and exactly Alice's cart: still her own.
    let carols = res(apply(
        &mut r,
        T0,
        by("carol", with_nonce(60, reserve("req-1", &[("a", 2)], 0))),
    ));
    assert_eq!((carols.id, carols.owner.as_str()), (ReservationId(60), "carol"));
    assert_eq!(levels(&r, "a"), (3, 7, 0));
    assert_eq!(r.remembered_requests(), 3);

    // Each owner's retry finds their own reservation, whatever the nonce.
    for (owner, mine, cart) in [(OWNER, &alices, 2), (OTHER, &bobs, 3), ("carol", &carols, 2)] {
        let again = res(Ok(replayed(
            &mut r,
            by(owner, with_nonce(99, reserve("req-1", &[("a", cart)], 0))),
        )));
        assert_eq!(&again, mine, "{owner}'s retry");
    }
    // A reuse is judged against the owner's own request only: Bob's cart
    // under Alice's name, and Alice's under Bob's, are reuses.
    refused(&mut r, reserve("req-1", &[("a", 3)], 0), "REQUEST_ID_REUSED");
    refused(
        &mut r,
        by(OTHER, reserve("req-1", &[("a", 2)], 0)),
        "REQUEST_ID_REUSED",
    );

    // Once Alice's reservation is forgotten, Bob's is still remembered,
    // and Alice's request id is free for a new reserve of hers.
    let released_at = r.clock_ms();
    res(apply(&mut r, released_at, release(1)));
    let later = released_at + RESERVATION_RETENTION_MS;
    apply(&mut r, later, RegionOp::Expire).expect("expire");
    assert!(r.reservation(ReservationId(1)).is_none());
    assert_eq!(r.remembered_requests(), 2);
    res(Ok(replayed(&mut r, by(OTHER, reserve("req-1", &[("a", 3)], 0)))));
    let fresh = res(apply(
        &mut r,
        later,
        with_nonce(70, reserve("req-1", &[("a", 3)], 0)),
    ));
    assert_eq!((fresh.id, fresh.owner.as_str()), (ReservationId(70), OWNER));
}

/// An owner is 1–128 bytes of [A-Za-z0-9._:@-]; a bad one is INVALID_OWNER
/// on every command that names one, and changes nothing.
#[test]
fn owner_input_limits() {
    let mut r = stocked(&[("a", 10)]);
    res(apply(&mut r, T0, reserve("req-1", &[("a", 1)], 0)));
    let long = "o".repeat(OWNER_BYTES_MAX + 1);
    for bad in ["", long.as_str(), "a b", "a/b", "caf\u{e9}", "a\nb"] {
        for op in [
            reserve("req-2", &[("a", 1)], 0),
            release(1),
            confirm(1, "order-1"),
            extend(1, 0),
        ] {
            let err = refused(&mut r, by(bad, op), "INVALID_OWNER");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        }
    }
    assert_eq!(r.owners_known(), 1);
    let max = "o".repeat(OWNER_BYTES_MAX);
    let got = res(apply(&mut r, T0, by(&max, reserve("req-2", &[("a", 1)], 0))));
    assert_eq!(got.owner, max);
    let got = res(apply(
        &mut r,
        T0,
        by("svc:shop-1.eu_west@example.com", reserve("req-3", &[("a", 1)], 0)),
    ));
    res(apply(&mut r, T0, by(&got.owner, confirm(3, "order-3"))));
    assert_eq!(r.owners_known(), 3);
    // Owners are numbered once: more holds add none.
    res(apply(&mut r, T0, reserve("req-4", &[("a", 1)], 0)));
    assert_eq!(r.owners_known(), 3);
}

// ----- Reads and determinism -----

/// Public ids parse only for this region; others are not found, malformed ones are invalid.
#[test]
fn parse_reservation_id_checks_the_region() {
    let r = RegionState::new(REGION);
    assert_eq!(r.region(), REGION);
    assert_eq!(r.parse_reservation_id(&public(42)), Ok(ReservationId(42)));
    assert_eq!(
        r.parse_reservation_id("us-east-000000000000002a"),
        Ok(ReservationId(42))
    );
    assert_eq!(
        r.parse_reservation_id("eu-west-000000000000002a")
            .map_err(|e| e.reason()),
        Err("RESERVATION_NOT_FOUND")
    );
    for bad in [
        "",
        "us-east",
        "us-east-",
        "us-east-12x",
        // The counter's old form, and 16 digits in upper case.
        "us-east-000042",
        "us-east-000000000000002A",
        "us-east-0000000000000002a",
        &"x".repeat(100),
    ] {
        assert_eq!(
            r.parse_reservation_id(bad).map_err(|e| e.reason()),
            Err("INVALID_RESERVATION_ID"),
            "{bad:?}"
        );
    }
}

/// Two replicas applying the same commands, colliding nonces and several
/// owners among them, are equal and serialize to the same bytes (JSON, and
/// the bincode of snapshots and the log).
#[test]
fn replicas_are_byte_for_byte_equal() {
    let n = 0xdead_beef_0000_0001;
    let ops = vec![
        (T0, grant(1, "a", 10, 0)),
        (T0 + 1, with_nonce(n, reserve("req-1", &[("a", 3)], 100))),
        (T0 + 2, reserve("req-2", &[("a", 30)], 100)),
        (
            T0 + 3,
            by(OTHER, with_nonce(n, reserve("req-1", &[("a", 1)], 100))),
        ),
        (T0 + 3, with_nonce(n + 1, reserve("req-9", &[("a", 1)], 100))),
        (T0 + 3, by(OTHER, release(n))),
        (T0 + 3, confirm(n, "order-1")),
        (T0 + 4, reserve("req-3", &[("a", 2)], 100)),
        (T0 + 4, by(OTHER, confirm(n + 1, "order-x"))),
        (T0 + 1, adjust("adj-1", "b", 7)),
        (T0 + 500, RegionOp::Expire),
        (T0 + 501, RegionOp::Settled { up_to_seq: 1 }),
        (T0 + 502, revoke(2, "a", 4, 1)),
    ];
    let mut one = RegionState::new(REGION);
    let mut two = RegionState::new(REGION);
    for (now_ms, op) in ops {
        let a = apply(&mut one, now_ms, op.clone());
        let b = apply(&mut two, now_ms, op);
        assert_eq!(a, b);
    }
    assert_eq!(one, two);
    assert_eq!(
        serde_json::to_string(&one).expect("serializes"),
        serde_json::to_string(&two).expect("serializes")
    );
    assert_eq!(
        bincode::serialize(&one).expect("serializes"),
        bincode::serialize(&two).expect("serializes")
    );
    // The colliding nonce was probed alike: Alice has n, Bob n + 1 (his
    // reserve came second), Alice's next (nonce n + 1, taken by then) n + 2.
    let owner_of = |id: u64| one.reservation(ReservationId(id)).map(|x| x.owner);
    assert_eq!(owner_of(n).as_deref(), Some(OWNER));
    assert_eq!(owner_of(n + 1).as_deref(), Some(OTHER));
    assert_eq!(owner_of(n + 2).as_deref(), Some(OWNER));
    // A state read back from its bytes is the same state.
    let bytes = bincode::serialize(&one).expect("serializes");
    let back: RegionState = bincode::deserialize(&bytes).expect("deserializes");
    assert_eq!(back, one);
    // 10 granted; 3 sold and settled, Bob's 1 sold, 4 revoked.
    assert_eq!(levels(&one, "a"), (2, 0, 1));
    assert_eq!(levels(&one, "b"), (7, 0, 0));
    assert_eq!(one.bucket("a").expect("bucket").settled, 3);
    // The validators the edge uses are the ones apply uses.
    assert_eq!(
        limits::check_sku("a b").map_err(|e| e.reason()),
        Err("INVALID_SKU")
    );
}
