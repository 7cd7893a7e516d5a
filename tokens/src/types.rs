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
/// A client-chosen idempotency key.
pub type RequestId = String;
/// The shop's order id a reservation is confirmed under.
pub type OrderId = String;
/// Milliseconds since the Unix epoch, as stamped by a proposer.
pub type Millis = u64;

/// The number of a reservation within its region. Its public form is
/// region-qualified, `us-east-000042`, so an id names the region that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReservationId(pub u64);

impl ReservationId {
    /// The public, region-qualified form: `{region}-{number:06}`.
    pub fn display(self, region: &str) -> String {
        format!("{region}-{:06}", self.0)
    }

    /// Parses a public id. `None` if it is not of the form `{region}-{digits}`
    /// (for any region); `Some((region, id))` otherwise.
    pub fn parse(public: &str) -> Option<(&str, ReservationId)> {
        let (region, digits) = public.rsplit_once('-')?;
        if region.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok().map(|n| (region, ReservationId(n)))
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
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
        let id = ReservationId(42);
        assert_eq!(id.display("us-east"), "us-east-000042");
        assert_eq!(ReservationId::parse("us-east-000042"), Some(("us-east", id)));
        assert_eq!(
            ReservationId::parse("ap-south-1234567"),
            Some(("ap-south", ReservationId(1234567)))
        );
        assert_eq!(ReservationId::parse("us-east-"), None);
        assert_eq!(ReservationId::parse("-12"), None);
        assert_eq!(ReservationId::parse("us-east-12a"), None);
        assert_eq!(ReservationId::parse("12"), None);
        assert_eq!(ReservationId::parse("us-east-99999999999999999999999"), None);
    }
}
