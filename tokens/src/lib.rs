//! reservoir-tokens: the pure reservation domain of Reservoir.
//!
//! Stock is split into reservation tokens (docs/architecture.md, "Words"
//! and "The one invariant"). Each region keeps its tokens in buckets
//! (`available`, `held`, `confirmed`); a ledger is the single-writer system
//! of record that grants tokens to regions, revokes them, and settles
//! confirmed sales. This crate holds the deterministic state machines that
//! Raft replicates, and two pure functions over them:
//!
//! - [`RegionState::apply`]: reserve, release, confirm, extend, expire,
//!   grant, revoke, settled, and (standalone only) adjust stock;
//! - [`LedgerState::apply`]: adjust stock, begin/complete grant and revoke,
//!   settle;
//! - [`audit::balance`]: the conservation balance sheet — every unit ever
//!   stocked is in exactly one place — with any difference as drift;
//! - [`rebalance::plan`]: grants and revokes from each region's available
//!   tokens, demand and reachability (`proportional` and `take_half`).
//!
//! Invariants:
//! - No I/O, no clock, no async, no randomness. Every command carries the
//!   proposer's `now_ms`, and a state keeps `clock = max(clock, now_ms)`, so
//!   a leader with a slow clock cannot move time backwards. A reservation's
//!   id is the 64-bit nonce its proposer drew and put in the command (probed
//!   deterministically past ids in use): drawn at random, one client cannot
//!   guess another's. Other ids
//!   (transfers, outbox sequence numbers) come from counters in the state.
//! - Every reservation belongs to its owner (the principal that reserved
//!   it). Release, confirm, extend and the API's read name their owner, and
//!   another owner's reservation is refused exactly as a missing one
//!   (`RESERVATION_NOT_FOUND`). Request ids are remembered per owner.
//! - Two replicas that apply the same commands are equal and serialize to the
//!   same bytes (ordered maps only).
//! - Every table is a persistent map or vector (`imbl`), so a whole state
//!   clones in O(1), sharing structure: a snapshot is such a clone, written
//!   out while applying goes on.
//! - A rejected command changes nothing but the logical clock.
//! - Every table is bounded, and nothing is forgotten early to stay
//!   within a bound: a full table refuses new entries instead, with a
//!   stable reason. A reserve's request id lives in its reservation's
//!   record: while the reservation lives, and at least `ended_ms` after it
//!   ends (the region's replicated [`Retention`]); ended reservations are
//!   pruned by age only, a bounded amount per command, and `ended_max` of
//!   them within the retention make a new reserve `RETENTION_FULL`. A
//!   stock adjustment's id is kept at least 10 minutes and until the stock
//!   of its SKU present right after it has left (first in, first out); at
//!   [`limits::ADJUSTMENT_IDS_MAX`] a new adjustment is
//!   `ADJUSTMENT_IDS_FULL`. Live holds and unsettled sales are bounded by the
//!   stock itself, owners by [`limits::OWNERS_MAX`] (never forgotten).
//! - Every transfer and settlement step is idempotent by its id or sequence
//!   number, so retries never count a unit twice.
//!
//! Layout:
//! - [`types`]: ids and quantities; [`error`]: [`Rejection`] and its stable
//!   reasons; [`limits`]: named bounds and input validators;
//! - [`region`], [`ledger`]: the state machines; [`memory`]: the bounded
//!   memory of stock-adjustment request ids (kept while their stock lasts);
//! - [`audit`], [`rebalance`]: the pure functions over them;
//! - [`inject`]: bugs the whole-cluster simulation injects to prove its
//!   checkers catch them (compiled in only with the `inject` feature).
//!
//! Caveats: the audit needs every region's state; a region that cannot be
//! read is reported missing, not guessed. Demand is whatever the caller
//! measures (the node counts requested units); the plan trusts it.

pub mod audit;
pub mod error;
pub mod inject;
pub mod ledger;
pub mod limits;
pub mod memory;
pub mod rebalance;
pub mod region;
pub mod types;

pub use error::{ErrorKind, Field, Rejection};
pub use ledger::{LedgerApplied, LedgerCommand, LedgerOp, LedgerOutcome, LedgerState, SettleEntry, Transfer};
pub use region::{
    AppliedTransfer, Bucket, OutboxEntry, RegionApplied, RegionCommand, RegionOp, RegionOutcome, RegionState,
    Reservation, ReservationState, Retention,
};
pub use types::*;

/// A deterministic state machine that a Raft group can host.
pub trait StateMachine {
    /// What the log carries.
    type Command;
    /// What applying one command produces, handed back to its proposer.
    type Outcome;

    /// Applies one command. Must be deterministic: no I/O, clock or randomness.
    fn apply(&mut self, cmd: Self::Command) -> Self::Outcome;
}
