//! Named bounds on every input and every table, and the validators that
//! enforce them. The node calls these at the edge; `apply` calls them again
//! so that a command that slipped past the edge still changes nothing.

use crate::error::{Field, Rejection};
use crate::types::{Line, Millis, ReservationId};
use std::collections::BTreeSet;

/// Longest `request_id`, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest `order_id`, in bytes.
pub const ORDER_ID_BYTES_MAX: usize = 128;
/// Longest SKU, in bytes.
pub const SKU_BYTES_MAX: usize = 64;
/// Longest region name, in bytes.
pub const REGION_BYTES_MAX: usize = 32;
/// Longest public reservation id, in bytes (a region name, a dash, 16 hex
/// digits).
pub const RESERVATION_ID_BYTES_MAX: usize = REGION_BYTES_MAX + 1 + ReservationId::HEX_DIGITS;
/// Longest owner (principal name), in bytes.
pub const OWNER_BYTES_MAX: usize = 128;
/// Most distinct owners a region remembers. Owners are numbered in the
/// state so that a record keeps a number, not a name; a reserve by a new
/// owner past this many is `TOO_MANY_OWNERS`. Owners are never forgotten.
pub const OWNERS_MAX: usize = 65_536;
/// Most lines in one reservation.
pub const LINES_PER_RESERVATION_MAX: usize = 64;
/// Most units of one line.
pub const QUANTITY_MAX: u64 = 1_000_000;
/// The hold time used when a request asks for `ttl_ms = 0`.
pub const TTL_DEFAULT_MS: Millis = 15 * 60 * 1000;
/// The longest hold time.
pub const TTL_MAX_MS: Millis = 4 * 60 * 60 * 1000;
/// The longest a reserve may wait for a top-up.
pub const MAX_WAIT_MS_MAX: Millis = 5_000;
/// Largest encoded request the public API accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Most reserves in one `ReserveBatch` call (whose encoded request is
/// bounded by [`MESSAGE_BYTES_MAX`] too: 256 bytes a reserve on average).
pub const RESERVE_BATCH_MAX: usize = 256;
/// Largest magnitude of one stock adjustment.
pub const STOCK_DELTA_MAX: u64 = 1_000_000_000;
/// Largest single transfer.
pub const TRANSFER_UNITS_MAX: u64 = 1_000_000_000;

/// Shortest time, in logical time, a stock adjustment's request id is
/// remembered, whatever became of its stock: the window for a client's
/// retry. After it, the id is kept for as long as the stock of its SKU that
/// was there right after it ([`crate::memory::AdjustmentMemory`]).
pub const ADJUSTMENT_WINDOW_MS: Millis = 10 * 60 * 1000;
/// Most stock-adjustment request ids remembered at once. None is forgotten
/// early to make room: a new adjustment past this many is
/// `ADJUSTMENT_IDS_FULL` and changes nothing.
pub const ADJUSTMENT_IDS_MAX: usize = 1_000_000;
/// How long, in logical time, a released, expired or settled reservation (and
/// with it the request id that made it) is kept, by default: sized for a
/// client's retries (the client library gives up on a call after 15 s).
pub const RESERVATION_RETENTION_MS: Millis = 5 * 60 * 1000;
/// Most reservations a region keeps that ended within the retention, by
/// default. None is forgotten early to make room: while this many are kept,
/// a new reserve is `RETENTION_FULL` and changes nothing. With the default
/// retention it takes 16,667 reservations ending per second, sustained,
/// to fill (more than a region commits: about 13,000 reserves/s on the
/// reference machine), and it costs at most about 1.1 GB (222 B each).
pub const ENDED_RESERVATIONS_MAX: usize = 5_000_000;
/// Shortest retention a region may be configured with.
pub const RESERVATION_RETENTION_MS_MIN: Millis = 60 * 1000;
/// Longest retention a region may be configured with.
pub const RESERVATION_RETENTION_MS_LIMIT: Millis = 24 * 60 * 60 * 1000;
/// Fewest ended reservations a region may be configured to keep.
pub const ENDED_RESERVATIONS_MIN: u64 = 1_000;
/// Most ended reservations a region may be configured to keep.
pub const ENDED_RESERVATIONS_LIMIT: u64 = 100_000_000;
/// Most items (adjustment ids or ended reservations) pruned by one command,
/// so no single apply stalls; pruning gets ahead because most commands add
/// at most one of each (an `Expire` or `Settled` that ends many is caught up
/// with by the commands after it).
pub const PRUNE_PER_COMMAND_MAX: usize = 64;
/// Most holds one `Expire` command expires.
pub const EXPIRE_PER_COMMAND_MAX: usize = 4_096;
/// Most transfers the ledger has in flight at once.
pub const TRANSFERS_IN_FLIGHT_MAX: usize = 4_096;
/// Most outbox entries in one settlement batch.
pub const SETTLE_BATCH_MAX: usize = 4_096;

/// True for printable ASCII, space to tilde.
fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn check_id(s: &str, max: usize, field: Field) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > max {
        return Err(Rejection::invalid(
            field,
            format!("must be 1-{max} bytes, got {}", s.len()),
        ));
    }
    if !printable_ascii(s) {
        return Err(Rejection::invalid(field, "must be printable ASCII"));
    }
    Ok(())
}

/// A `request_id`: 1–128 bytes of printable ASCII.
pub fn check_request_id(s: &str) -> Result<(), Rejection> {
    check_id(s, REQUEST_ID_BYTES_MAX, Field::RequestId)
}

/// An `order_id`: 1–128 bytes of printable ASCII.
pub fn check_order_id(s: &str) -> Result<(), Rejection> {
    check_id(s, ORDER_ID_BYTES_MAX, Field::OrderId)
}

/// A public reservation id: printable ASCII of bounded length. Whether it
/// names a reservation of this region is the state machine's business.
pub fn check_reservation_id(s: &str) -> Result<(), Rejection> {
    check_id(s, RESERVATION_ID_BYTES_MAX, Field::ReservationId)
}

/// An owner (the principal a reservation belongs to): 1–128 bytes of
/// `[A-Za-z0-9._:@-]`.
pub fn check_owner(s: &str) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > OWNER_BYTES_MAX {
        return Err(Rejection::invalid(
            Field::Owner,
            format!("must be 1-{OWNER_BYTES_MAX} bytes, got {}", s.len()),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
    {
        return Err(Rejection::invalid(Field::Owner, "must match [A-Za-z0-9._:@-]+"));
    }
    Ok(())
}

/// A SKU: 1–64 bytes of `[A-Za-z0-9._:-]`.
pub fn check_sku(s: &str) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > SKU_BYTES_MAX {
        return Err(Rejection::invalid(
            Field::Sku,
            format!("must be 1-{SKU_BYTES_MAX} bytes, got {}", s.len()),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Rejection::invalid(Field::Sku, "must match [A-Za-z0-9._:-]+"));
    }
    Ok(())
}

/// A region name: 1–32 bytes of `[a-z0-9-]`, not starting or ending with `-`.
pub fn check_region(s: &str) -> Result<(), Rejection> {
    let ok = !s.is_empty()
        && s.len() <= REGION_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid(
            Field::Region,
            format!("{s:?} must be 1-{REGION_BYTES_MAX} bytes of [a-z0-9-]"),
        ))
    }
}

/// A line's quantity: 1 to [`QUANTITY_MAX`].
pub fn check_quantity(q: u64) -> Result<(), Rejection> {
    if q == 0 || q > QUANTITY_MAX {
        return Err(Rejection::invalid(
            Field::Quantity,
            format!("must be 1-{QUANTITY_MAX}, got {q}"),
        ));
    }
    Ok(())
}

/// The lines of a reservation: 1–64 of them, distinct valid SKUs, valid
/// quantities.
pub fn check_lines(lines: &[Line]) -> Result<(), Rejection> {
    if lines.is_empty() || lines.len() > LINES_PER_RESERVATION_MAX {
        return Err(Rejection::invalid(
            Field::Lines,
            format!(
                "must have 1-{LINES_PER_RESERVATION_MAX} lines, got {}",
                lines.len()
            ),
        ));
    }
    check_line_items(lines)
}

/// The number of reserves in one batch: 1–[`RESERVE_BATCH_MAX`].
pub fn check_batch_size(reserves: usize) -> Result<(), Rejection> {
    if reserves == 0 || reserves > RESERVE_BATCH_MAX {
        return Err(Rejection::invalid(
            Field::Reserves,
            format!("a batch must have 1-{RESERVE_BATCH_MAX} reserves, got {reserves}"),
        ));
    }
    Ok(())
}

/// Lines of a partial confirm: 0–64 of them (0 means everything), distinct
/// valid SKUs, valid quantities.
pub fn check_confirm_lines(lines: &[Line]) -> Result<(), Rejection> {
    if lines.len() > LINES_PER_RESERVATION_MAX {
        return Err(Rejection::invalid(
            Field::Lines,
            format!(
                "must have at most {LINES_PER_RESERVATION_MAX} lines, got {}",
                lines.len()
            ),
        ));
    }
    check_line_items(lines)
}

fn check_line_items(lines: &[Line]) -> Result<(), Rejection> {
    for line in lines {
        check_sku(&line.sku)?;
        check_quantity(line.quantity)?;
    }
    // A linear scan beats a set for the usual one to three lines.
    if lines.len() <= 8 {
        for (i, a) in lines.iter().enumerate() {
            if lines[..i].iter().any(|b| b.sku == a.sku) {
                return Err(Rejection::invalid(
                    Field::Lines,
                    format!("SKU {} appears twice", a.sku),
                ));
            }
        }
    } else {
        let mut seen = BTreeSet::new();
        for line in lines {
            if !seen.insert(line.sku.as_str()) {
                return Err(Rejection::invalid(
                    Field::Lines,
                    format!("SKU {} appears twice", line.sku),
                ));
            }
        }
    }
    Ok(())
}

/// A hold time: 0 (the default) up to [`TTL_MAX_MS`]. Returns the effective TTL.
pub fn effective_ttl_ms(ttl_ms: Millis) -> Result<Millis, Rejection> {
    match ttl_ms {
        0 => Ok(TTL_DEFAULT_MS),
        t if t <= TTL_MAX_MS => Ok(t),
        t => Err(Rejection::invalid(
            Field::TtlMs,
            format!("must be at most {TTL_MAX_MS}, got {t}"),
        )),
    }
}

/// A top-up wait: 0 up to [`MAX_WAIT_MS_MAX`].
pub fn check_max_wait_ms(ms: Millis) -> Result<(), Rejection> {
    if ms > MAX_WAIT_MS_MAX {
        return Err(Rejection::invalid(
            Field::MaxWaitMs,
            format!("must be at most {MAX_WAIT_MS_MAX}, got {ms}"),
        ));
    }
    Ok(())
}

/// A stock adjustment: non-zero, magnitude at most [`STOCK_DELTA_MAX`].
pub fn check_delta(delta: i64) -> Result<(), Rejection> {
    if delta == 0 || delta.unsigned_abs() > STOCK_DELTA_MAX {
        return Err(Rejection::invalid(
            Field::Delta,
            format!("must be non-zero with magnitude at most {STOCK_DELTA_MAX}, got {delta}"),
        ));
    }
    Ok(())
}

/// A transfer's units: 1 to [`TRANSFER_UNITS_MAX`].
pub fn check_transfer_units(units: u64) -> Result<(), Rejection> {
    if units == 0 || units > TRANSFER_UNITS_MAX {
        return Err(Rejection::invalid(
            Field::Units,
            format!("must be 1-{TRANSFER_UNITS_MAX}, got {units}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<(), Rejection>) -> &'static str {
        r.err().map(|e| e.reason()).unwrap_or("OK")
    }

    /// request_id and order_id accept 1–128 printable ASCII bytes and nothing else.
    #[test]
    fn ids_are_bounded_printable_ascii() {
        assert_eq!(reason(check_request_id("r-1")), "OK");
        assert_eq!(reason(check_request_id(&"x".repeat(128))), "OK");
        assert_eq!(reason(check_request_id(&"x".repeat(129))), "INVALID_REQUEST_ID");
        assert_eq!(reason(check_request_id("")), "INVALID_REQUEST_ID");
        assert_eq!(reason(check_request_id("a\nb")), "INVALID_REQUEST_ID");
        assert_eq!(reason(check_request_id("é")), "INVALID_REQUEST_ID");
        assert_eq!(reason(check_order_id(&"o".repeat(128))), "OK");
        assert_eq!(reason(check_order_id(&"o".repeat(129))), "INVALID_ORDER_ID");
        assert_eq!(reason(check_order_id("")), "INVALID_ORDER_ID");
        assert_eq!(reason(check_order_id("\u{7f}")), "INVALID_ORDER_ID");
        assert_eq!(reason(check_reservation_id("")), "INVALID_RESERVATION_ID");
        assert_eq!(
            reason(check_reservation_id(&"r".repeat(RESERVATION_ID_BYTES_MAX + 1))),
            "INVALID_RESERVATION_ID"
        );
    }

    /// SKUs accept 1–64 bytes of [A-Za-z0-9._:-] and nothing else.
    #[test]
    fn skus_are_bounded_and_restricted() {
        assert_eq!(reason(check_sku("SKU-1.a_b:c")), "OK");
        assert_eq!(reason(check_sku(&"s".repeat(64))), "OK");
        assert_eq!(reason(check_sku(&"s".repeat(65))), "INVALID_SKU");
        assert_eq!(reason(check_sku("")), "INVALID_SKU");
        assert_eq!(reason(check_sku("a b")), "INVALID_SKU");
        assert_eq!(reason(check_sku("a/b")), "INVALID_SKU");
    }

    /// Owners accept 1–128 bytes of [A-Za-z0-9._:@-] and nothing else.
    #[test]
    fn owners_are_bounded_and_restricted() {
        assert_eq!(reason(check_owner("anonymous")), "OK");
        assert_eq!(reason(check_owner("svc:shop-1.eu_west@example.com")), "OK");
        assert_eq!(reason(check_owner(&"o".repeat(OWNER_BYTES_MAX))), "OK");
        assert_eq!(
            reason(check_owner(&"o".repeat(OWNER_BYTES_MAX + 1))),
            "INVALID_OWNER"
        );
        for bad in ["", "a b", "a/b", "a\nb", "caf\u{e9}", "a\u{0}", "a,b", "a#b"] {
            assert_eq!(reason(check_owner(bad)), "INVALID_OWNER", "{bad:?}");
        }
        assert_eq!(
            check_owner("a b").unwrap_err().kind(),
            crate::error::ErrorKind::InvalidArgument
        );
    }

    /// Quantities are 1 to 1,000,000.
    #[test]
    fn quantities_are_bounded() {
        assert_eq!(reason(check_quantity(1)), "OK");
        assert_eq!(reason(check_quantity(QUANTITY_MAX)), "OK");
        assert_eq!(reason(check_quantity(0)), "INVALID_QUANTITY");
        assert_eq!(reason(check_quantity(QUANTITY_MAX + 1)), "INVALID_QUANTITY");
    }

    /// A reservation has 1–64 lines with distinct SKUs.
    #[test]
    fn lines_are_bounded_and_distinct() {
        let many = |n: usize| (0..n).map(|i| Line::new(format!("s{i}"), 1)).collect::<Vec<_>>();
        assert_eq!(reason(check_lines(&many(1))), "OK");
        assert_eq!(reason(check_lines(&many(64))), "OK");
        assert_eq!(reason(check_lines(&many(65))), "INVALID_LINES");
        assert_eq!(reason(check_lines(&[])), "INVALID_LINES");
        assert_eq!(
            reason(check_lines(&[Line::new("a", 1), Line::new("a", 2)])),
            "INVALID_LINES"
        );
        let mut dup = many(20);
        dup.push(Line::new("s3", 1));
        assert_eq!(reason(check_lines(&dup)), "INVALID_LINES");
        assert_eq!(reason(check_lines(&[Line::new("a", 0)])), "INVALID_QUANTITY");
        assert_eq!(reason(check_lines(&[Line::new("a b", 1)])), "INVALID_SKU");
        assert_eq!(reason(check_confirm_lines(&[])), "OK");
        assert_eq!(reason(check_confirm_lines(&many(65))), "INVALID_LINES");
    }

    /// ttl_ms 0 means 15 minutes; at most 4 hours. max_wait_ms at most 5 s.
    #[test]
    fn times_are_bounded() {
        assert_eq!(effective_ttl_ms(0), Ok(TTL_DEFAULT_MS));
        assert_eq!(effective_ttl_ms(1), Ok(1));
        assert_eq!(effective_ttl_ms(TTL_MAX_MS), Ok(TTL_MAX_MS));
        assert_eq!(
            effective_ttl_ms(TTL_MAX_MS + 1).unwrap_err().reason(),
            "INVALID_TTL_MS"
        );
        assert_eq!(reason(check_max_wait_ms(MAX_WAIT_MS_MAX)), "OK");
        assert_eq!(
            reason(check_max_wait_ms(MAX_WAIT_MS_MAX + 1)),
            "INVALID_MAX_WAIT_MS"
        );
    }

    /// Stock deltas are non-zero and bounded; regions are lowercase names.
    #[test]
    fn deltas_and_regions_are_bounded() {
        assert_eq!(reason(check_delta(5)), "OK");
        assert_eq!(reason(check_delta(-5)), "OK");
        assert_eq!(reason(check_delta(0)), "INVALID_DELTA");
        assert_eq!(reason(check_delta(i64::MIN)), "INVALID_DELTA");
        assert_eq!(reason(check_delta(STOCK_DELTA_MAX as i64 + 1)), "INVALID_DELTA");
        assert_eq!(reason(check_region("us-east")), "OK");
        assert_eq!(reason(check_region("US")), "INVALID_REGION");
        assert_eq!(reason(check_region("-a")), "INVALID_REGION");
        assert_eq!(reason(check_region("")), "INVALID_REGION");
        assert_eq!(reason(check_transfer_units(0)), "INVALID_UNITS");
    }
}
