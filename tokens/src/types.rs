//! Names for the domain's ids and quantities (docs/architecture.md, "Words").

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stock-keeping unit: 1–64 bytes of `[A-Za-z0-9._:-]`.
pub type Sku = String;
/// A region's name, e.g. `us-east`.
pub type RegionId = String;
/// A number of tokens (units of stock).
pub type Units = u64;
/// The id of one grant or revoke, allocated by the ledger from a counter.
pub type TransferId = u64;
/// A Raft node id.
pub type NodeId = u64;
/// A client-chosen idempotency key. Remembered per [`Owner`]: two owners
/// may use the same key without meeting.
pub type RequestId = String;
/// The principal a reservation belongs to: 1–128 bytes of
/// `[A-Za-z0-9._:@-]` (checked by [`crate::limits::check_owner`]). Only its
/// owner can release, confirm, extend or read a reservation.
pub type Owner = String;
/// The shop's order id a reservation is confirmed under.
pub type OrderId = String;
/// Milliseconds since the Unix epoch, as stamped by a proposer.
pub type Millis = u64;

/// The number of a reservation within its region: 64 random bits drawn by
/// the proposer (never 0), so that one client cannot guess another's. Its
/// public form is region-qualified, `us-east-00c0ffee5eed1234`, so an id
/// names the region that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReservationId(pub u64);

impl ReservationId {
    /// Hex digits in the public form.
    pub const HEX_DIGITS: usize = 16;

    /// The public, region-qualified form: `{region}-{number:016x}`, 16
    /// lowercase hex digits.
    pub fn display(self, region: &str) -> String {
        format!("{region}-{:016x}", self.0)
    }

    /// Parses a public id. `None` unless it is `{region}-` and exactly 16
    /// lowercase hex digits (for any non-empty region); upper case is
    /// refused, so each id has one spelling. `Some((region, id))` otherwise.
    pub fn parse(public: &str) -> Option<(&str, ReservationId)> {
        let (region, hex) = public.rsplit_once('-')?;
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if region.is_empty() || hex.len() != Self::HEX_DIGITS || !hex.bytes().all(lower_hex) {
            return None;
        }
        u64::from_str_radix(hex, 16)
            .ok()
            .map(|n| (region, ReservationId(n)))
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:016x}", self.0)
    }
}

/// One SKU and a number of units, as in a cart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Line {
    /// The SKU.
    pub sku: Sku,
    /// Units of it.
    pub quantity: Units,
}

impl Line {
    /// A line of `quantity` units of `sku`.
    pub fn new(sku: impl Into<Sku>, quantity: Units) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }
}

/// Which way a transfer moves tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TransferKind {
    /// Ledger pool → region.
    Grant,
    /// Region → ledger pool.
    Revoke,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Public reservation ids round-trip, and malformed ones are refused.
    #[test]
    fn reservation_id_round_trips() {
        let id = ReservationId(0x00c0_ffee_5eed_1234);
        assert_eq!(id.display("us-east"), "us-east-00c0ffee5eed1234");
        assert_eq!(
            ReservationId::parse("us-east-00c0ffee5eed1234"),
            Some(("us-east", id))
        );
        for n in [1, 42, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            let public = ReservationId(n).display("ap-south");
            assert_eq!(public.len(), "ap-south-".len() + ReservationId::HEX_DIGITS);
            assert_eq!(
                ReservationId::parse(&public),
                Some(("ap-south", ReservationId(n)))
            );
        }
        assert_eq!(ReservationId(42).display("eu-west"), "eu-west-000000000000002a");
        assert_eq!(ReservationId(42).to_string(), "#000000000000002a");
    }

    /// Only `{region}-` and exactly 16 lowercase hex digits parse.
    #[test]
    fn malformed_reservation_ids_are_refused() {
        for bad in [
            "",
            "12",
            "us-east",
            "us-east-",
            "-00c0ffee5eed1234",
            // The counter's old form.
            "us-east-000042",
            // 15 and 17 digits.
            "us-east-0c0ffee5eed1234",
            "us-east-000c0ffee5eed1234",
            // Upper case: one id, one spelling.
            "us-east-00C0FFEE5EED1234",
            "us-east-00c0ffee5eed123A",
            // Not hex.
            "us-east-00c0ffee5eed123g",
            "us-east-+0c0ffee5eed1234",
            "us-east- 0c0ffee5eed1234",
            "us-east-0x0ffee5eed12345",
        ] {
            assert_eq!(ReservationId::parse(bad), None, "{bad:?}");
        }
        // The region is everything before the last dash.
        assert_eq!(
            ReservationId::parse("us-east-1-00000000000000ff"),
            Some(("us-east-1", ReservationId(255)))
        );
    }
}
