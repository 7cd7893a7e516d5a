//! The edge: the one place where `reservoir.v1` messages become domain
//! commands and domain values become messages again.
//!
//! Input is validated here, once, with the validators of
//! [`reservoir_tokens::limits`], so a malformed request is refused before it
//! costs a Raft round trip; `apply` checks again only so that a command that
//! slipped past the edge still changes nothing. Every refusal is a
//! [`Rejection`], which [`crate::server::status::to_status`] turns into a gRPC status.
//!
//! The orphan rule forbids `From`/`TryFrom` between the generated messages and
//! the domain types (both are foreign to this crate), and several conversions
//! need the node's region as an input, so these are plain functions.

use reservoir_proto::v1;
use reservoir_tokens::audit::{BalanceSheet, RegionBalance, SkuBalance};
use reservoir_tokens::ledger::LedgerOp;
use reservoir_tokens::{
    Line, Millis, RegionOp, Rejection, RequestId, Reservation, ReservationId, ReservationState, Sku, limits,
};

// ----- proto → domain -----

/// A validated `ReserveRequest`: the command for the region group, and how
/// long the node may wait for a top-up when local tokens run short (the wait
/// happens in the node, not in the state machine, so it is not part of the op).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedReserve {
    /// Always [`RegionOp::Reserve`], with the effective TTL.
    pub op: RegionOp,
    /// At most [`limits::MAX_WAIT_MS_MAX`].
    pub max_wait_ms: Millis,
}

/// A validated `AdjustStockRequest`. Where the stock goes depends on the
/// deployment (the ledger's pool, or a standalone region), so it is kept
/// neutral until the node picks the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockAdjustment {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The SKU.
    pub sku: Sku,
    /// Units to add (> 0) or remove (< 0); never zero.
    pub delta: i64,
}

impl StockAdjustment {
    /// The command for a standalone region (no ledger).
    pub fn into_region_op(self) -> RegionOp {
        RegionOp::AdjustStock {
            request_id: self.request_id,
            sku: self.sku,
            delta: self.delta,
        }
    }

    /// The command for the ledger group.
    pub fn into_ledger_op(self) -> LedgerOp {
        LedgerOp::AdjustStock {
            request_id: self.request_id,
            sku: self.sku,
            delta: self.delta,
        }
    }
}

/// Validates a `ReserveRequest` by `owner`: the owner, request_id, 1–64
/// lines with distinct valid SKUs and quantities, ttl_ms and max_wait_ms.
/// `nonce` is the proposer's 64 random bits, the new reservation's id.
///
/// The op carries the effective TTL rather than 0, so the log never depends on
/// the default: replaying it under a binary with another default (a rolling
/// upgrade) cannot make replicas diverge.
pub fn reserve_op(req: v1::ReserveRequest, owner: &str, nonce: u64) -> Result<ValidatedReserve, Rejection> {
    limits::check_owner(owner)?;
    limits::check_request_id(&req.request_id)?;
    let lines = lines_from_proto(req.lines);
    limits::check_lines(&lines)?;
    let ttl_ms = limits::effective_ttl_ms(req.ttl_ms)?;
    limits::check_max_wait_ms(req.max_wait_ms)?;
    Ok(ValidatedReserve {
        op: RegionOp::Reserve {
            owner: owner.to_string(),
            request_id: req.request_id,
            lines,
            ttl_ms,
            allow_partial: req.allow_partial,
            nonce,
        },
        max_wait_ms: req.max_wait_ms,
    })
}

/// Validates a `ReleaseRequest` by `owner` for the node's `region`.
pub fn release_op(region: &str, req: v1::ReleaseRequest, owner: &str) -> Result<RegionOp, Rejection> {
    let id = reservation_id(region, &req.reservation_id)?;
    limits::check_owner(owner)?;
    Ok(RegionOp::Release {
        id,
        owner: owner.to_string(),
    })
}

/// Validates a `ConfirmRequest` by `owner` for the node's `region`: the
/// reservation id, the order id, and 0–64 lines (none means everything held).
pub fn confirm_op(region: &str, req: v1::ConfirmRequest, owner: &str) -> Result<RegionOp, Rejection> {
    let id = reservation_id(region, &req.reservation_id)?;
    limits::check_owner(owner)?;
    limits::check_order_id(&req.order_id)?;
    let lines = lines_from_proto(req.lines);
    limits::check_confirm_lines(&lines)?;
    Ok(RegionOp::Confirm {
        id,
        owner: owner.to_string(),
        order_id: req.order_id,
        lines,
    })
}

/// Validates an `ExtendRequest` by `owner` for the node's `region`. The op
/// carries the effective TTL, for the reason given at [`reserve_op`].
pub fn extend_op(region: &str, req: v1::ExtendRequest, owner: &str) -> Result<RegionOp, Rejection> {
    let id = reservation_id(region, &req.reservation_id)?;
    limits::check_owner(owner)?;
    let ttl_ms = limits::effective_ttl_ms(req.ttl_ms)?;
    Ok(RegionOp::Extend {
        id,
        owner: owner.to_string(),
        ttl_ms,
    })
}

/// Validates a `GetReservationRequest` for the node's `region`.
pub fn get_reservation_id(region: &str, req: &v1::GetReservationRequest) -> Result<ReservationId, Rejection> {
    reservation_id(region, &req.reservation_id)
}

/// Validates an `AdjustStockRequest`: request_id, sku and a non-zero, bounded
/// delta.
pub fn adjust_stock(req: v1::AdjustStockRequest) -> Result<StockAdjustment, Rejection> {
    limits::check_request_id(&req.request_id)?;
    limits::check_sku(&req.sku)?;
    limits::check_delta(req.delta)?;
    Ok(StockAdjustment {
        request_id: req.request_id,
        sku: req.sku,
        delta: req.delta,
    })
}

/// Validates a `GetAvailabilityRequest`, returning its SKU.
pub fn availability_sku(req: v1::GetAvailabilityRequest) -> Result<Sku, Rejection> {
    limits::check_sku(&req.sku)?;
    Ok(req.sku)
}

/// Parses a public reservation id for the node's `region` (the rules of
/// [`reservoir_tokens::region::parse_reservation_id`]).
pub fn reservation_id(region: &str, public: &str) -> Result<ReservationId, Rejection> {
    reservoir_tokens::region::parse_reservation_id(region, public)
}

/// Lines as the domain holds them. Not validated: the caller checks them with
/// the validator its request calls for (`check_lines` or `check_confirm_lines`).
fn lines_from_proto(lines: Vec<v1::Line>) -> Vec<Line> {
    lines.into_iter().map(|l| Line::new(l.sku, l.quantity)).collect()
}

// ----- domain → proto -----

/// A reservation of `region` as the API shows it: the public id, and an empty
/// order id until it is confirmed.
pub fn reservation_to_proto(region: &str, r: Reservation) -> v1::Reservation {
    v1::Reservation {
        reservation_id: r.id.display(region),
        region: region.to_string(),
        lines: lines_to_proto(r.lines),
        state: state_to_proto(r.state) as i32,
        expires_at_ms: r.expires_at_ms,
        order_id: r.order_id.unwrap_or_default(),
        created_at_ms: r.created_at_ms,
    }
}

/// A reservation's state as the API names it. The domain has no
/// "unspecified" state, so it is never produced.
pub fn state_to_proto(state: ReservationState) -> v1::ReservationState {
    match state {
        ReservationState::Held => v1::ReservationState::Held,
        ReservationState::Confirmed => v1::ReservationState::Confirmed,
        ReservationState::Released => v1::ReservationState::Released,
        ReservationState::Expired => v1::ReservationState::Expired,
        ReservationState::Settled => v1::ReservationState::Settled,
    }
}

/// Domain lines as API lines.
pub fn lines_to_proto(lines: Vec<Line>) -> Vec<v1::Line> {
    lines
        .into_iter()
        .map(|l| v1::Line {
            sku: l.sku,
            quantity: l.quantity,
        })
        .collect()
}

/// The conservation balance sheet as an `AuditReport`, stamped with the time
/// the audit ran. `balanced` is the sheet's own verdict: every drift zero and
/// no region missing.
pub fn audit_report(sheet: &BalanceSheet, at_ms: Millis) -> v1::AuditReport {
    v1::AuditReport {
        balanced: sheet.balanced(),
        skus: sheet.skus.iter().map(sku_balance_to_proto).collect(),
        at_ms,
        missing_regions: sheet.missing_regions.clone(),
    }
}

fn sku_balance_to_proto(s: &SkuBalance) -> v1::SkuBalance {
    v1::SkuBalance {
        sku: s.sku.clone(),
        stocked_total: s.stocked_total,
        pool: s.pool,
        in_flight_grants: s.in_flight_grants,
        in_flight_revokes: s.in_flight_revokes,
        settled_total: s.settled_total,
        regions: s.regions.iter().map(region_balance_to_proto).collect(),
        drift: s.drift,
        ledger_drift: s.ledger_drift,
    }
}

fn region_balance_to_proto(r: &RegionBalance) -> v1::RegionBalance {
    v1::RegionBalance {
        region: r.region.clone(),
        available: r.available,
        held: r.held,
        confirmed: r.confirmed,
        drift: r.drift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::status::to_status;
    use reservoir_client::reason_of;
    use reservoir_tokens::limits::*;
    use reservoir_tokens::{LedgerCommand, LedgerState, RegionCommand, RegionState, audit};
    use tonic::Code;

    const REGION: &str = "us-east";
    const OWNER: &str = "anonymous";
    const NONCE: u64 = 0x00c0_ffee_5eed_1234;

    /// The code and reason a client would see for a refused conversion.
    fn refusal<T: std::fmt::Debug>(r: Result<T, Rejection>) -> (Code, String) {
        let rejection = r.expect_err("the edge should refuse this request");
        let status = to_status(&rejection);
        let reason = reason_of(&status).expect("every refusal carries an ErrorInfo reason");
        (status.code(), reason)
    }

    fn invalid(reason: &str) -> (Code, String) {
        (Code::InvalidArgument, reason.to_string())
    }

    fn line(sku: &str, quantity: u64) -> v1::Line {
        v1::Line {
            sku: sku.to_string(),
            quantity,
        }
    }

    fn reserve_req(request_id: &str, lines: Vec<v1::Line>) -> v1::ReserveRequest {
        v1::ReserveRequest {
            request_id: request_id.to_string(),
            lines,
            ttl_ms: 0,
            allow_partial: false,
            max_wait_ms: 0,
        }
    }

    fn confirm_req(reservation_id: &str, order_id: &str, lines: Vec<v1::Line>) -> v1::ConfirmRequest {
        v1::ConfirmRequest {
            reservation_id: reservation_id.to_string(),
            order_id: order_id.to_string(),
            lines,
        }
    }

    fn adjust_req(request_id: &str, sku: &str, delta: i64) -> v1::AdjustStockRequest {
        v1::AdjustStockRequest {
            request_id: request_id.to_string(),
            sku: sku.to_string(),
            delta,
        }
    }

    fn distinct_lines(n: usize) -> Vec<v1::Line> {
        (0..n).map(|i| line(&format!("sku-{i}"), 1)).collect()
    }

    /// A valid reserve becomes `RegionOp::Reserve` with the effective TTL and its wait.
    #[test]
    fn valid_reserve_converts() {
        let mut req = reserve_req("r-1", vec![line("A", 2), line("B", 1)]);
        req.allow_partial = true;
        req.max_wait_ms = 250;
        let got = reserve_op(req, "svc:shop@eu", 42).expect("valid");
        assert_eq!(
            got,
            ValidatedReserve {
                op: RegionOp::Reserve {
                    owner: "svc:shop@eu".into(),
                    request_id: "r-1".into(),
                    lines: vec![Line::new("A", 2), Line::new("B", 1)],
                    ttl_ms: TTL_DEFAULT_MS,
                    allow_partial: true,
                    nonce: 42,
                },
                max_wait_ms: 250,
            }
        );
    }

    /// request_id is 1–128 bytes of printable ASCII, on Reserve and AdjustStock.
    #[test]
    fn request_id_limit() {
        let ok = "x".repeat(REQUEST_ID_BYTES_MAX);
        assert!(reserve_op(reserve_req(&ok, vec![line("A", 1)]), OWNER, NONCE).is_ok());
        assert!(adjust_stock(adjust_req(&ok, "A", 1)).is_ok());
        let long = "x".repeat(REQUEST_ID_BYTES_MAX + 1);
        for bad in ["", long.as_str(), "a\nb", "caf\u{e9}", "\u{7f}"] {
            assert_eq!(
                refusal(reserve_op(reserve_req(bad, vec![line("A", 1)]), OWNER, NONCE)),
                invalid("INVALID_REQUEST_ID"),
                "reserve request_id {bad:?}"
            );
            assert_eq!(
                refusal(adjust_stock(adjust_req(bad, "A", 1))),
                invalid("INVALID_REQUEST_ID"),
                "adjust request_id {bad:?}"
            );
        }
    }

    /// order_id is 1–128 bytes of printable ASCII.
    #[test]
    fn order_id_limit() {
        let ok = "o".repeat(ORDER_ID_BYTES_MAX);
        assert!(
            confirm_op(
                REGION,
                confirm_req("us-east-0000000000000001", &ok, vec![]),
                OWNER
            )
            .is_ok()
        );
        let long = "o".repeat(ORDER_ID_BYTES_MAX + 1);
        for bad in ["", long.as_str(), "o\t1", "\u{2603}"] {
            assert_eq!(
                refusal(confirm_op(
                    REGION,
                    confirm_req("us-east-0000000000000001", bad, vec![]),
                    OWNER
                )),
                invalid("INVALID_ORDER_ID"),
                "order_id {bad:?}"
            );
        }
    }

    /// sku is 1–64 bytes of [A-Za-z0-9._:-], in reserve and confirm lines, AdjustStock and GetAvailability.
    #[test]
    fn sku_limit() {
        let ok = "S".repeat(SKU_BYTES_MAX);
        assert!(
            reserve_op(
                reserve_req("r", vec![line(&ok, 1), line("a.B_c:d-9", 1)]),
                OWNER,
                NONCE
            )
            .is_ok()
        );
        assert_eq!(
            availability_sku(v1::GetAvailabilityRequest { sku: ok.clone() }),
            Ok(ok.clone())
        );
        let long = "S".repeat(SKU_BYTES_MAX + 1);
        for bad in ["", long.as_str(), "a b", "a/b", "\u{e9}"] {
            let why = format!("sku {bad:?}");
            assert_eq!(
                refusal(reserve_op(reserve_req("r", vec![line(bad, 1)]), OWNER, NONCE)),
                invalid("INVALID_SKU"),
                "{why}"
            );
            assert_eq!(
                refusal(confirm_op(
                    REGION,
                    confirm_req("us-east-0000000000000001", "o", vec![line(bad, 1)]),
                    OWNER
                )),
                invalid("INVALID_SKU"),
                "{why}"
            );
            assert_eq!(
                refusal(adjust_stock(adjust_req("r", bad, 1))),
                invalid("INVALID_SKU"),
                "{why}"
            );
            assert_eq!(
                refusal(availability_sku(v1::GetAvailabilityRequest { sku: bad.into() })),
                invalid("INVALID_SKU"),
                "{why}"
            );
        }
    }

    /// A reservation has 1–64 lines with distinct SKUs; a confirm 0–64, also distinct.
    #[test]
    fn lines_limit() {
        let max = LINES_PER_RESERVATION_MAX;
        assert!(reserve_op(reserve_req("r", distinct_lines(max)), OWNER, NONCE).is_ok());
        assert_eq!(
            refusal(reserve_op(reserve_req("r", vec![]), OWNER, NONCE)),
            invalid("INVALID_LINES")
        );
        assert_eq!(
            refusal(reserve_op(
                reserve_req("r", distinct_lines(max + 1)),
                OWNER,
                NONCE
            )),
            invalid("INVALID_LINES")
        );
        assert_eq!(
            refusal(reserve_op(
                reserve_req("r", vec![line("A", 1), line("A", 2)]),
                OWNER,
                NONCE
            )),
            invalid("INVALID_LINES")
        );
        // Past the validator's linear-scan size, duplicates are still found.
        let mut many = distinct_lines(30);
        many.push(line("sku-7", 1));
        assert_eq!(
            refusal(reserve_op(reserve_req("r", many), OWNER, NONCE)),
            invalid("INVALID_LINES")
        );

        assert!(
            confirm_op(
                REGION,
                confirm_req("us-east-0000000000000001", "o", distinct_lines(max)),
                OWNER
            )
            .is_ok()
        );
        assert_eq!(
            refusal(confirm_op(
                REGION,
                confirm_req("us-east-0000000000000001", "o", distinct_lines(max + 1)),
                OWNER
            )),
            invalid("INVALID_LINES")
        );
        assert_eq!(
            refusal(confirm_op(
                REGION,
                confirm_req("us-east-0000000000000001", "o", vec![line("A", 1), line("A", 1)]),
                OWNER
            )),
            invalid("INVALID_LINES")
        );
    }

    /// A line's quantity is 1–1,000,000, in reserve and confirm lines.
    #[test]
    fn quantity_limit() {
        assert!(reserve_op(reserve_req("r", vec![line("A", 1)]), OWNER, NONCE).is_ok());
        assert!(reserve_op(reserve_req("r", vec![line("A", QUANTITY_MAX)]), OWNER, NONCE).is_ok());
        for bad in [0, QUANTITY_MAX + 1, u64::MAX] {
            assert_eq!(
                refusal(reserve_op(reserve_req("r", vec![line("A", bad)]), OWNER, NONCE)),
                invalid("INVALID_QUANTITY"),
                "reserve quantity {bad}"
            );
            assert_eq!(
                refusal(confirm_op(
                    REGION,
                    confirm_req("us-east-0000000000000001", "o", vec![line("A", bad)]),
                    OWNER
                )),
                invalid("INVALID_QUANTITY"),
                "confirm quantity {bad}"
            );
        }
    }

    /// ttl_ms is 0 (the 15-minute default) up to 4 hours, on Reserve and Extend.
    #[test]
    fn ttl_limit() {
        let ttl_of = |ttl_ms| {
            let mut req = reserve_req("r", vec![line("A", 1)]);
            req.ttl_ms = ttl_ms;
            reserve_op(req, OWNER, NONCE).map(|v| match v.op {
                RegionOp::Reserve { ttl_ms, .. } => ttl_ms,
                other => panic!("reserve_op gave {other:?}"),
            })
        };
        assert_eq!(ttl_of(0), Ok(TTL_DEFAULT_MS));
        assert_eq!(ttl_of(1), Ok(1));
        assert_eq!(ttl_of(TTL_MAX_MS), Ok(TTL_MAX_MS));
        assert_eq!(refusal(ttl_of(TTL_MAX_MS + 1)), invalid("INVALID_TTL_MS"));

        let extend = |ttl_ms| {
            extend_op(
                REGION,
                v1::ExtendRequest {
                    reservation_id: "us-east-0000000000000007".into(),
                    ttl_ms,
                },
                OWNER,
            )
        };
        assert_eq!(
            extend(0),
            Ok(RegionOp::Extend {
                id: ReservationId(7),
                owner: OWNER.into(),
                ttl_ms: TTL_DEFAULT_MS
            })
        );
        assert_eq!(
            extend(TTL_MAX_MS),
            Ok(RegionOp::Extend {
                id: ReservationId(7),
                owner: OWNER.into(),
                ttl_ms: TTL_MAX_MS
            })
        );
        assert_eq!(refusal(extend(TTL_MAX_MS + 1)), invalid("INVALID_TTL_MS"));
    }

    /// max_wait_ms is at most 5,000.
    #[test]
    fn max_wait_limit() {
        let wait = |max_wait_ms| {
            let mut req = reserve_req("r", vec![line("A", 1)]);
            req.max_wait_ms = max_wait_ms;
            reserve_op(req, OWNER, NONCE).map(|v| v.max_wait_ms)
        };
        assert_eq!(wait(0), Ok(0));
        assert_eq!(wait(MAX_WAIT_MS_MAX), Ok(MAX_WAIT_MS_MAX));
        assert_eq!(refusal(wait(MAX_WAIT_MS_MAX + 1)), invalid("INVALID_MAX_WAIT_MS"));
        assert_eq!(refusal(wait(u64::MAX)), invalid("INVALID_MAX_WAIT_MS"));
    }

    /// A malformed reservation id is INVALID_RESERVATION_ID on every call that takes one.
    #[test]
    fn reservation_id_malformed() {
        let long = format!("us-east-{}", "1".repeat(RESERVATION_ID_BYTES_MAX));
        for bad in [
            // The old counter form, and 16 hex digits in upper case.
            "us-east-000042",
            "us-east-000000000000002A",
            "",
            "us-east",
            "us-east-",
            "-12",
            "12",
            "us-east-12a",
            long.as_str(),
            "us-\u{e9}-1",
        ] {
            let why = format!("reservation id {bad:?}");
            let expected = invalid("INVALID_RESERVATION_ID");
            let id = bad.to_string();
            assert_eq!(
                refusal(release_op(
                    REGION,
                    v1::ReleaseRequest {
                        reservation_id: id.clone()
                    },
                    OWNER
                )),
                expected,
                "{why}"
            );
            assert_eq!(
                refusal(confirm_op(REGION, confirm_req(bad, "o", vec![]), OWNER)),
                expected,
                "{why}"
            );
            assert_eq!(
                refusal(extend_op(
                    REGION,
                    v1::ExtendRequest {
                        reservation_id: id.clone(),
                        ttl_ms: 0
                    },
                    OWNER
                )),
                expected,
                "{why}"
            );
            assert_eq!(
                refusal(get_reservation_id(
                    REGION,
                    &v1::GetReservationRequest { reservation_id: id }
                )),
                expected,
                "{why}"
            );
        }
    }

    /// A well-formed id of another region is RESERVATION_NOT_FOUND; one of ours parses.
    #[test]
    fn reservation_id_of_another_region() {
        assert_eq!(
            reservation_id(REGION, "us-east-000000000000002a"),
            Ok(ReservationId(42))
        );
        assert_eq!(
            release_op(
                REGION,
                v1::ReleaseRequest {
                    reservation_id: "us-east-0000000000000009".into()
                },
                OWNER
            ),
            Ok(RegionOp::Release {
                id: ReservationId(9),
                owner: OWNER.into()
            })
        );
        for other in [
            "eu-west-000000000000002a",
            "us-000000000000002a",
            "us-east-1-000000000000002a",
        ] {
            assert_eq!(
                refusal(reservation_id(REGION, other)),
                (Code::NotFound, "RESERVATION_NOT_FOUND".to_string()),
                "reservation id {other:?}"
            );
        }
    }

    /// The owner is 1–128 bytes of [A-Za-z0-9._:@-], on every call that takes one.
    #[test]
    fn owner_limit() {
        let id = "us-east-0000000000000001";
        let long = "o".repeat(OWNER_BYTES_MAX + 1);
        for bad in ["", long.as_str(), "a b", "a/b", "\u{e9}"] {
            let why = format!("owner {bad:?}");
            let expected = invalid("INVALID_OWNER");
            let reserve = reserve_op(reserve_req("r", vec![line("A", 1)]), bad, NONCE);
            assert_eq!(refusal(reserve), expected, "{why}");
            let release = release_op(
                REGION,
                v1::ReleaseRequest {
                    reservation_id: id.into(),
                },
                bad,
            );
            assert_eq!(refusal(release), expected, "{why}");
            let confirm = confirm_op(REGION, confirm_req(id, "o", vec![]), bad);
            assert_eq!(refusal(confirm), expected, "{why}");
            let extend = extend_op(
                REGION,
                v1::ExtendRequest {
                    reservation_id: id.into(),
                    ttl_ms: 0,
                },
                bad,
            );
            assert_eq!(refusal(extend), expected, "{why}");
        }
        assert!(
            reserve_op(
                reserve_req("r", vec![line("A", 1)]),
                &"o".repeat(OWNER_BYTES_MAX),
                NONCE
            )
            .is_ok()
        );
    }

    /// A stock delta is non-zero with magnitude at most 10^9.
    #[test]
    fn delta_limit() {
        let max = STOCK_DELTA_MAX as i64;
        let got = adjust_stock(adjust_req("r", "A", -max)).expect("valid");
        assert_eq!(
            got.clone().into_region_op(),
            RegionOp::AdjustStock {
                request_id: "r".into(),
                sku: "A".into(),
                delta: -max
            }
        );
        assert_eq!(
            got.into_ledger_op(),
            LedgerOp::AdjustStock {
                request_id: "r".into(),
                sku: "A".into(),
                delta: -max
            }
        );
        for bad in [0, max + 1, -max - 1, i64::MIN, i64::MAX] {
            assert_eq!(
                refusal(adjust_stock(adjust_req("r", "A", bad))),
                invalid("INVALID_DELTA"),
                "delta {bad}"
            );
        }
    }

    /// A valid confirm keeps its order id and lines; an empty line list means everything.
    #[test]
    fn valid_confirm_converts() {
        assert_eq!(
            confirm_op(
                REGION,
                confirm_req("us-east-0000000000000003", "order-9", vec![line("A", 1)]),
                OWNER
            ),
            Ok(RegionOp::Confirm {
                id: ReservationId(3),
                owner: OWNER.into(),
                order_id: "order-9".into(),
                lines: vec![Line::new("A", 1)],
            })
        );
        assert_eq!(
            confirm_op(
                REGION,
                confirm_req("us-east-0000000000000003", "order-9", vec![]),
                OWNER
            ),
            Ok(RegionOp::Confirm {
                id: ReservationId(3),
                owner: OWNER.into(),
                order_id: "order-9".into(),
                lines: vec![],
            })
        );
    }

    /// A reservation shows its public id, region, lines, state, times and order id.
    #[test]
    fn reservation_converts() {
        let held = Reservation {
            id: ReservationId(42),
            owner: OWNER.into(),
            lines: vec![Line::new("A", 2), Line::new("B", 1)],
            state: ReservationState::Held,
            created_at_ms: 1_000,
            expires_at_ms: 901_000,
            order_id: None,
            ended_at_ms: 0,
        };
        assert_eq!(
            reservation_to_proto(REGION, held.clone()),
            v1::Reservation {
                reservation_id: "us-east-000000000000002a".into(),
                region: REGION.into(),
                lines: vec![line("A", 2), line("B", 1)],
                state: v1::ReservationState::Held as i32,
                expires_at_ms: 901_000,
                order_id: String::new(),
                created_at_ms: 1_000,
            }
        );
        let confirmed = Reservation {
            state: ReservationState::Confirmed,
            order_id: Some("order-1".into()),
            ..held
        };
        let p = reservation_to_proto(REGION, confirmed);
        assert_eq!(p.state(), v1::ReservationState::Confirmed);
        assert_eq!(p.order_id, "order-1");
        // The public id parses back to the same reservation.
        assert_eq!(reservation_id(REGION, &p.reservation_id), Ok(ReservationId(42)));
    }

    /// Every domain state maps to its own API state, never UNSPECIFIED.
    #[test]
    fn states_map_one_to_one() {
        let all = [
            (ReservationState::Held, v1::ReservationState::Held),
            (ReservationState::Confirmed, v1::ReservationState::Confirmed),
            (ReservationState::Released, v1::ReservationState::Released),
            (ReservationState::Expired, v1::ReservationState::Expired),
            (ReservationState::Settled, v1::ReservationState::Settled),
        ];
        for (domain, api) in all {
            assert_eq!(state_to_proto(domain), api);
        }
    }

    /// The audit report carries every figure of the balance sheet and its verdict.
    #[test]
    fn audit_report_converts() {
        let mut ledger = LedgerState::new();
        let applied = ledger.apply(LedgerCommand {
            now_ms: 1,
            op: LedgerOp::AdjustStock {
                request_id: "s-1".into(),
                sku: "A".into(),
                delta: 10,
            },
        });
        assert!(applied.is_ok(), "stocking the ledger: {applied:?}");
        let mut region = RegionState::new(REGION);
        let applied = region.apply(RegionCommand {
            now_ms: 1,
            op: RegionOp::Expire,
        });
        assert!(applied.is_ok(), "a no-op expire: {applied:?}");
        let sheet = audit::balance(&ledger, &[&region]);
        let report = audit_report(&sheet, 77);
        assert!(report.balanced);
        assert_eq!(report.at_ms, 77);
        assert_eq!(report.skus.len(), 1);
        let a = &report.skus[0];
        assert_eq!(
            (a.sku.as_str(), a.stocked_total, a.pool, a.drift),
            ("A", 10, 10, 0)
        );
        assert_eq!(a.regions.len(), 1);
        assert_eq!(a.regions[0].region, REGION);

        // A drifting region shows up in the report and flips the verdict.
        let mut drifting = sheet.clone();
        drifting.skus[0].regions[0].drift = -3;
        drifting.skus[0].drift = -3;
        let report = audit_report(&drifting, 78);
        assert!(!report.balanced);
        assert_eq!(report.skus[0].drift, -3);
        assert_eq!(report.skus[0].regions[0].drift, -3);

        // A missing region has no field of its own but still fails the audit.
        let mut missing = sheet;
        missing.missing_regions.push("eu-west".into());
        assert!(!audit_report(&missing, 79).balanced);
    }
}
