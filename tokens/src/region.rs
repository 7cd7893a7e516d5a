//! `RegionState`: one region's buckets, holds, expiry, idempotency table,
//! owners, outbox and applied transfers. Replicated by the region's Raft
//! group.
//!
//! Every reservation belongs to the owner (principal) that reserved it:
//! release, confirm and extend name their owner, and a reservation of
//! another owner is refused exactly as one that does not exist
//! (`RESERVATION_NOT_FOUND`, the same message), so nobody can learn whether
//! someone else's id exists. Request ids are remembered per owner, in
//! their reservation's record: while it lives and for at least
//! `retention.ended_ms` after it ends (a reserve that would need one
//! forgotten sooner is `RETENTION_FULL`). A new
//! reservation's id is the 64-bit nonce the proposer drew (probed upwards
//! past ids in use, and past 0, so every replica picks the same).

use crate::error::{Field, Rejection};
use crate::limits::{self, *};
use crate::memory::{AdjustmentMemory, Fnv};
use crate::types::*;
use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

/// A region's tokens for one SKU (docs/architecture.md, "Words"), plus the
/// running totals that let the bucket check its own books:
/// `received - returned - settled = available + held + confirmed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens free to reserve.
    pub available: Units,
    /// Tokens held by live reservations.
    pub held: Units,
    /// Tokens sold and not yet settled with the ledger.
    pub confirmed: Units,
    /// Units ever received: grants, plus stock added in standalone mode.
    pub received: Units,
    /// Units ever given back: revokes, plus stock removed in standalone mode.
    pub returned: Units,
    /// Units sold and settled (acknowledged by the ledger).
    pub settled: Units,
}

impl Bucket {
    /// Tokens in the bucket: available, held and confirmed.
    pub fn total(&self) -> Units {
        self.available + self.held + self.confirmed
    }

    /// The bucket's own books: zero when balanced.
    pub fn books_drift(&self) -> i128 {
        self.total() as i128 - (self.received as i128 - self.returned as i128 - self.settled as i128)
    }
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReservationState {
    /// Tokens held until `expires_at_ms`.
    Held,
    /// Sold; in the outbox, waiting for settlement.
    Confirmed,
    /// Given back by request.
    Released,
    /// Given back because the TTL passed.
    Expired,
    /// Sold and settled with the ledger.
    Settled,
}

impl ReservationState {
    /// Released, expired and settled reservations change no more.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            ReservationState::Released | ReservationState::Expired | ReservationState::Settled
        )
    }
}

/// One reservation (a hold for one cart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Its number in this region.
    pub id: ReservationId,
    /// The principal it belongs to.
    pub owner: Owner,
    /// Held units (`Held`, `Released`, `Expired`) or sold units (`Confirmed`, `Settled`).
    pub lines: Vec<Line>,
    /// Where it is in its life.
    pub state: ReservationState,
    /// Logical time it was created.
    pub created_at_ms: Millis,
    /// Logical time the hold expires (a confirm at or after it fails).
    pub expires_at_ms: Millis,
    /// The order it was confirmed under.
    pub order_id: Option<OrderId>,
    /// Logical time it ended (released, expired, settled); 0 while live.
    pub ended_at_ms: Millis,
}

/// A confirmed sale waiting to be settled with the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Sequence number in this region's outbox, from 1, without gaps.
    pub seq: u64,
    /// The reservation that was confirmed.
    pub reservation: ReservationId,
    /// The order it was confirmed under.
    pub order_id: OrderId,
    /// Units sold.
    pub lines: Vec<Line>,
    /// Logical time of the confirm.
    pub confirmed_at_ms: Millis,
}

/// A grant or revoke as this region applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTransfer {
    /// Grant or revoke.
    pub kind: TransferKind,
    /// The SKU.
    pub sku: Sku,
    /// Units asked for: a grant's units, a revoke's `units_max`.
    pub asked: Units,
    /// Units moved: a grant's units, or what a revoke took.
    pub moved: Units,
}

/// What a region-group command does. Time comes in [`RegionCommand::now_ms`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionOp {
    /// Hold tokens for every line, or none (with `allow_partial`, what there is).
    Reserve {
        /// Who reserves; the reservation belongs to them.
        owner: Owner,
        /// Idempotency key, remembered per owner.
        request_id: RequestId,
        /// What to hold.
        lines: Vec<Line>,
        /// Hold time; 0 means [`TTL_DEFAULT_MS`].
        ttl_ms: Millis,
        /// Take what is available of each line.
        allow_partial: bool,
        /// 64 random bits drawn by the proposer (outside the state machine)
        /// and carried in the log: the new reservation's id, or, if that is
        /// 0 or taken, the next free one above it (wrapping). A retry that
        /// finds its request id remembered ignores it.
        nonce: u64,
    },
    /// Give a hold's tokens back.
    Release {
        /// Which reservation.
        id: ReservationId,
        /// Who asks; another owner's reservation is not found.
        owner: Owner,
    },
    /// Turn a hold into a sale.
    Confirm {
        /// Which reservation.
        id: ReservationId,
        /// Who asks; another owner's reservation is not found.
        owner: Owner,
        /// The shop's order.
        order_id: OrderId,
        /// Empty: everything held. Otherwise at most these quantities.
        lines: Vec<Line>,
    },
    /// Move a live hold's expiry to now + ttl.
    Extend {
        /// Which reservation.
        id: ReservationId,
        /// Who asks; another owner's reservation is not found.
        owner: Owner,
        /// New hold time from now; 0 means [`TTL_DEFAULT_MS`].
        ttl_ms: Millis,
    },
    /// Expire due holds, oldest first, at most [`EXPIRE_PER_COMMAND_MAX`].
    Expire,
    /// Credit tokens moved here from the ledger's pool.
    Grant {
        /// The ledger's id for this transfer.
        transfer_id: TransferId,
        /// The SKU.
        sku: Sku,
        /// Units granted.
        units: Units,
        /// Every transfer to this region with a smaller id is complete at the
        /// ledger, so its record may be dropped.
        done_below: TransferId,
    },
    /// Debit up to `units_max` available tokens, on their way to the pool.
    Revoke {
        /// The ledger's id for this transfer.
        transfer_id: TransferId,
        /// The SKU.
        sku: Sku,
        /// Most units to take; the region takes `min(units_max, available)`.
        units_max: Units,
        /// As for `Grant`.
        done_below: TransferId,
    },
    /// The ledger has settled the outbox up to this sequence number.
    Settled {
        /// Last settled sequence number.
        up_to_seq: u64,
    },
    /// Standalone mode only (no ledger): add or remove stock directly.
    AdjustStock {
        /// Idempotency key.
        request_id: RequestId,
        /// The SKU.
        sku: Sku,
        /// Units to add (> 0) or remove (< 0, from `available` only).
        delta: i64,
    },
    /// How long ended reservations (and their request ids) are kept. The
    /// region leader proposes it when its configuration differs from the
    /// state's, so every replica prunes alike.
    SetRetention {
        /// The new settings.
        retention: Retention,
    },
}

/// A command for a region group: an op and the proposer's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCommand {
    /// The proposer's wall clock; the state keeps `clock = max(clock, now_ms)`.
    pub now_ms: Millis,
    /// What to do.
    pub op: RegionOp,
}

/// What an applied region command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionApplied {
    /// Reserve, release, confirm, extend: the reservation as it now is.
    Reservation(Reservation),
    /// Expire: how many holds expired, and whether more are already due.
    Expired {
        /// Holds expired by this command.
        count: usize,
        /// More holds are due (the sweep hit its bound).
        more_due: bool,
    },
    /// Grant or revoke.
    Transfer {
        /// The transfer.
        transfer_id: TransferId,
        /// Units moved (a revoke's may be fewer than asked).
        units: Units,
        /// It had been applied before; nothing changed now.
        duplicate: bool,
    },
    /// Settled: how many reservations became settled.
    Settled {
        /// Reservations moved to settled by this command.
        reservations: usize,
    },
    /// AdjustStock: the SKU's figures after the change.
    Stock {
        /// The SKU.
        sku: Sku,
        /// Units received minus returned.
        stocked_total: Units,
        /// Available tokens.
        available: Units,
    },
    /// SetRetention: the settings now in force.
    Retention(Retention),
}

/// The outcome of one region command: what it produced, or why it changed
/// nothing (except the logical clock).
pub type RegionOutcome = Result<RegionApplied, Rejection>;

/// How long a region keeps ended reservations, and with each one the request
/// id that made it: at least `ended_ms` after each ends, never less; the
/// count is a bound on admission, not a reason to forget. Part of the
/// replicated state, so every replica prunes alike; changed by
/// [`RegionOp::SetRetention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Logical time an ended (released, expired, settled) reservation is
    /// kept after it ends.
    pub ended_ms: Millis,
    /// Most reservations kept that ended within `ended_ms`. None is
    /// forgotten early to make room: while this many are kept, a new reserve
    /// is `RETENTION_FULL` (retries of remembered ids are still answered).
    /// Holds live when it fills may still end, so ended reservations within
    /// `ended_ms` number at most `ended_max` plus the most reservations
    /// live at once.
    pub ended_max: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ended_ms: RESERVATION_RETENTION_MS,
            ended_max: ENDED_RESERVATIONS_MAX as u64,
        }
    }
}

impl Retention {
    /// Checks the settings against their bounds: a minute to a day, a
    /// thousand to [`ENDED_RESERVATIONS_LIMIT`]. A reserve's request id lives
    /// as long as its reservation, so the minimum is also how long a retry
    /// after a hold ended is still recognized.
    pub fn check(&self) -> Result<(), Rejection> {
        let ms = RESERVATION_RETENTION_MS_MIN..=RESERVATION_RETENTION_MS_LIMIT;
        let count = ENDED_RESERVATIONS_MIN..=ENDED_RESERVATIONS_LIMIT;
        if !ms.contains(&self.ended_ms) || !count.contains(&self.ended_max) {
            return Err(Rejection::invalid(
                Field::Retention,
                format!(
                    "ended_ms must be {RESERVATION_RETENTION_MS_MIN}-{RESERVATION_RETENTION_MS_LIMIT} and \
                     ended_max {ENDED_RESERVATIONS_MIN}-{ENDED_RESERVATIONS_LIMIT}, got {} and {}",
                    self.ended_ms, self.ended_max
                ),
            ));
        }
        Ok(())
    }
}

/// A SKU's number in one region: the position of its bucket, given in the
/// order the region first received the SKU (so every replica gives the same
/// numbers). Records name SKUs by number, not by string.
type SkuIx = u32;

/// One line of a record: a SKU's number and a quantity (at most
/// [`QUANTITY_MAX`], so it fits in 32 bits).
type RecordLine = (SkuIx, u32);

/// An owner's number in one region: its position in the owner table, given
/// in the order the region first saw it (so every replica gives the same
/// numbers). Records name owners by number, not by string; there are at
/// most [`OWNERS_MAX`].
type OwnerIx = u32;

/// What the state keeps of one reservation: the compact form of
/// [`Reservation`], with the request id that made it (remembered exactly as
/// long as the reservation). Shared between the live state and a snapshot
/// being written (`Arc`), so copying a tree node copies pointers, not
/// records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    state: ReservationState,
    /// The owner's number (4 bytes, in what was padding beside `state`).
    owner: OwnerIx,
    /// Held lines, or sold lines once confirmed; one or two lines are kept
    /// inline, without a heap allocation.
    lines: SmallVec<[RecordLine; 2]>,
    created_at_ms: Millis,
    expires_at_ms: Millis,
    /// 0 while live.
    ended_at_ms: Millis,
    order_id: Option<Box<str>>,
    /// The reserve's idempotency key (remembered per owner).
    request_id: Box<str>,
    /// The reserve's fingerprint, to tell a retry from a reuse of the key.
    fingerprint: u64,
}

/// The request ids of a state read back from a snapshot: as stored, or
/// none with the injected bug [`crate::inject::Bug::ForgetRequestIds`].
fn requests_restored<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<OrdSet<(u64, ReservationId)>, D::Error> {
    let requests = OrdSet::deserialize(d)?;
    if crate::inject::on(crate::inject::Bug::ForgetRequestIds) {
        return Ok(OrdSet::new());
    }
    Ok(requests)
}

/// One region's replicated state. Deterministic: two replicas that apply the
/// same commands are equal, and serialize to the same bytes.
///
/// Every table is a persistent map or vector (`imbl`), so cloning the whole
/// state is O(1) and shares structure with the original: a snapshot is a
/// clone taken between two applies, written out while applying goes on,
/// and only the tree nodes that later applies touch are copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    region: RegionId,
    /// Logical time: the largest `now_ms` seen.
    clock_ms: Millis,
    retention: Retention,
    /// Buckets by SKU number; `sku_ix` maps names to numbers.
    buckets: Vector<(Sku, Bucket)>,
    sku_ix: OrdMap<Sku, SkuIx>,
    reservations: OrdMap<ReservationId, Arc<Record>>,
    /// Owners by number; `owner_ix` maps names to numbers. Never shrinks:
    /// at most [`OWNERS_MAX`].
    owners: Vector<Arc<str>>,
    owner_ix: OrdMap<Arc<str>, OwnerIx>,
    /// Live holds by expiry, oldest first.
    expiry: OrdSet<(Millis, ReservationId)>,
    /// Ended reservations by end time, for pruning.
    ended: Vector<(Millis, ReservationId)>,
    /// Reservations by the hash of their owner's number and request id
    /// (FNV-1a); a lookup compares the owner and the full id kept in the
    /// record, so a hash collision costs a comparison, never a wrong answer.
    #[serde(deserialize_with = "requests_restored")]
    requests: OrdSet<(u64, ReservationId)>,
    /// Request ids of applied stock adjustments (standalone mode).
    adjustments: AdjustmentMemory,
    /// Unsettled sales by sequence number: the reservation and the time of
    /// the confirm (its lines and order are in the record).
    outbox: OrdMap<u64, (ReservationId, Millis)>,
    next_outbox_seq: u64,
    settled_up_to: u64,
    transfers: OrdMap<TransferId, AppliedTransfer>,
    /// Transfers below this id are complete at the ledger and forgotten here.
    transfer_floor: TransferId,
}

impl RegionState {
    /// An empty region, with the default retention.
    pub fn new(region: impl Into<RegionId>) -> RegionState {
        RegionState {
            region: region.into(),
            clock_ms: 0,
            retention: Retention::default(),
            buckets: Vector::new(),
            sku_ix: OrdMap::new(),
            reservations: OrdMap::new(),
            owners: Vector::new(),
            owner_ix: OrdMap::new(),
            expiry: OrdSet::new(),
            ended: Vector::new(),
            requests: OrdSet::new(),
            adjustments: AdjustmentMemory::default(),
            outbox: OrdMap::new(),
            next_outbox_seq: 1,
            settled_up_to: 0,
            transfers: OrdMap::new(),
            transfer_floor: 0,
        }
    }

    /// Applies one command. A rejection changes nothing but the clock.
    pub fn apply(&mut self, cmd: RegionCommand) -> RegionOutcome {
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        // Before the command, so an adjustment finds the room made.
        self.adjustments.prune(self.clock_ms, PRUNE_PER_COMMAND_MAX);
        let outcome = match cmd.op {
            RegionOp::Reserve {
                owner,
                request_id,
                lines,
                ttl_ms,
                allow_partial,
                nonce,
            } => self.reserve(owner, request_id, lines, ttl_ms, allow_partial, nonce),
            RegionOp::Release { id, owner } => self.release(id, &owner),
            RegionOp::Confirm {
                id,
                owner,
                order_id,
                lines,
            } => self.confirm(id, &owner, order_id, lines),
            RegionOp::Extend { id, owner, ttl_ms } => self.extend(id, &owner, ttl_ms),
            RegionOp::Expire => Ok(self.expire()),
            RegionOp::Grant {
                transfer_id,
                sku,
                units,
                done_below,
            } => self.apply_transfer(TransferKind::Grant, transfer_id, sku, units, done_below),
            RegionOp::Revoke {
                transfer_id,
                sku,
                units_max,
                done_below,
            } => self.apply_transfer(TransferKind::Revoke, transfer_id, sku, units_max, done_below),
            RegionOp::Settled { up_to_seq } => self.settled(up_to_seq),
            RegionOp::AdjustStock {
                request_id,
                sku,
                delta,
            } => self.adjust_stock(request_id, sku, delta),
            RegionOp::SetRetention { retention } => self.set_retention(retention),
        };
        self.prune();
        outcome
    }

    /// The reservation that owner number `owner` made with a remembered
    /// request id, if any. Another owner's use of the same request id is not
    /// this owner's.
    fn remembered(&self, owner: OwnerIx, request_id: &str) -> Option<(ReservationId, &Record)> {
        let hash = request_hash(owner, request_id);
        self.requests
            .range((hash, ReservationId(0))..=(hash, ReservationId(u64::MAX)))
            .filter_map(|&(_, id)| self.reservations.get(&id).map(|r| (id, r.as_ref())))
            .find(|(_, r)| r.owner == owner && &*r.request_id == request_id)
    }

    /// The id a new reservation gets from the proposer's `nonce`: the nonce
    /// itself, or, if that is 0 or in use, the next free number above it
    /// (wrapping past `u64::MAX` to 1). Deterministic, so every replica
    /// picks the same; with random nonces a probe past the first is rare.
    fn free_id(&self, nonce: u64) -> ReservationId {
        let mut n = nonce;
        // Fewer than 2^64 - 1 reservations are kept, so this ends.
        while n == 0 || self.reservations.contains_key(&ReservationId(n)) {
            n = n.wrapping_add(1);
        }
        ReservationId(n)
    }

    /// The number of `owner`, numbering it first if the region has not seen
    /// it. The caller checked there is room ([`OWNERS_MAX`]).
    fn owner_ix_or_new(&mut self, owner: &str) -> OwnerIx {
        if let Some(&ix) = self.owner_ix.get(owner) {
            return ix;
        }
        assert!(self.owners.len() < OWNERS_MAX, "owner table full");
        let ix = OwnerIx::try_from(self.owners.len()).expect("OWNERS_MAX fits in 32 bits");
        let name: Arc<str> = Arc::from(owner);
        self.owners.push_back(name.clone());
        self.owner_ix.insert(name, ix);
        ix
    }

    fn owner_name(&self, ix: OwnerIx) -> &str {
        self.owners
            .get(ix as usize)
            .expect("an owner number names an owner")
    }

    fn reserve(
        &mut self,
        owner: Owner,
        request_id: RequestId,
        lines: Vec<Line>,
        ttl_ms: Millis,
        allow_partial: bool,
        nonce: u64,
    ) -> RegionOutcome {
        limits::check_owner(&owner)?;
        limits::check_request_id(&request_id)?;
        limits::check_lines(&lines)?;
        let ttl_ms = limits::effective_ttl_ms(ttl_ms)?;
        let fingerprint = Fnv::new()
            .lines(&lines)
            .u64(ttl_ms)
            .u64(u64::from(allow_partial))
            .finish();
        let known_owner = self.owner_ix.get(owner.as_str()).copied();
        match known_owner {
            Some(ix) => {
                if let Some((id, seen)) = self.remembered(ix, &request_id) {
                    if seen.fingerprint != fingerprint {
                        return Err(Rejection::RequestIdReused { request_id });
                    }
                    return Ok(RegionApplied::Reservation(self.materialize(id, seen)));
                }
            }
            None if self.owners.len() >= OWNERS_MAX => {
                return Err(Rejection::TooManyOwners {
                    owners: self.owners.len(),
                });
            }
            None => {}
        }
        // Room for this reservation's record (and request id) once it ends,
        // without forgetting another's before its retention has passed.
        let ended = self.ended_within_retention();
        if ended >= self.retention.ended_max {
            return Err(Rejection::RetentionFull { ended });
        }

        // Decide what to take before touching anything: all or nothing.
        let mut taken = Vec::with_capacity(lines.len());
        for line in &lines {
            let available = self.bucket(&line.sku).map_or(0, |b| b.available);
            if allow_partial {
                taken.push(line.quantity.min(available));
            } else if line.quantity > available {
                return Err(Rejection::InsufficientStock {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available,
                });
            } else {
                taken.push(line.quantity);
            }
        }
        if taken.iter().all(|&t| t == 0) {
            let first = &lines[0];
            return Err(Rejection::InsufficientStock {
                sku: first.sku.clone(),
                requested: first.quantity,
                available: 0,
            });
        }

        let mut held = SmallVec::with_capacity(lines.len());
        for (line, take) in lines.iter().zip(taken) {
            if take == 0 {
                continue;
            }
            let ix = *self
                .sku_ix
                .get(&line.sku)
                .expect("a line with tokens to take has a bucket");
            let bucket = self.bucket_mut(ix);
            bucket.available -= take;
            bucket.held += take;
            held.push((ix, record_quantity(take)));
        }
        let owner = self.owner_ix_or_new(&owner);
        let id = self.free_id(nonce);
        let expires_at_ms = self.clock_ms.saturating_add(ttl_ms);
        let record = Record {
            state: ReservationState::Held,
            owner,
            lines: held,
            created_at_ms: self.clock_ms,
            expires_at_ms,
            ended_at_ms: 0,
            order_id: None,
            request_id: request_id.into_boxed_str(),
            fingerprint,
        };
        let reservation = self.materialize(id, &record);
        self.expiry.insert((expires_at_ms, id));
        self.requests
            .insert((request_hash(owner, &record.request_id), id));
        self.reservations.insert(id, Arc::new(record));
        Ok(RegionApplied::Reservation(reservation))
    }

    fn release(&mut self, id: ReservationId, owner: &str) -> RegionOutcome {
        limits::check_owner(owner)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record_of(id, owner)?;
        match r.state {
            ReservationState::Held => {
                // A hold past its expiry is expired, swept or not.
                let to = if clock_ms >= r.expires_at_ms {
                    ReservationState::Expired
                } else {
                    ReservationState::Released
                };
                // Our clone of the record must be gone before it is changed,
                // or `Arc::make_mut` copies it.
                drop(r);
                Ok(RegionApplied::Reservation(self.end_hold(id, to)))
            }
            ReservationState::Released | ReservationState::Expired => {
                Ok(RegionApplied::Reservation(self.materialize(id, &r)))
            }
            ReservationState::Confirmed | ReservationState::Settled => Err(Rejection::ReservationConfirmed {
                id: public,
                order_id: r.order_id.as_deref().unwrap_or_default().to_string(),
            }),
        }
    }

    fn confirm(
        &mut self,
        id: ReservationId,
        owner: &str,
        order_id: OrderId,
        lines: Vec<Line>,
    ) -> RegionOutcome {
        limits::check_owner(owner)?;
        limits::check_order_id(&order_id)?;
        limits::check_confirm_lines(&lines)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record_of(id, owner)?;
        match r.state {
            ReservationState::Held if clock_ms >= r.expires_at_ms => {
                return Err(Rejection::ReservationExpired { id: public });
            }
            ReservationState::Held => {}
            ReservationState::Confirmed | ReservationState::Settled => {
                let confirmed_as = r.order_id.as_deref().unwrap_or_default();
                return if confirmed_as == order_id {
                    Ok(RegionApplied::Reservation(self.materialize(id, &r)))
                } else {
                    Err(Rejection::ReservationConfirmed {
                        id: public,
                        order_id: confirmed_as.to_string(),
                    })
                };
            }
            ReservationState::Released => return Err(Rejection::ReservationReleased { id: public }),
            ReservationState::Expired => return Err(Rejection::ReservationExpired { id: public }),
        }
        // How much of each held line is sold.
        let mut sold = Vec::with_capacity(r.lines.len());
        if lines.is_empty() {
            sold.extend(r.lines.iter().map(|&(_, q)| u64::from(q)));
        } else {
            if let Some(stray) = lines
                .iter()
                .find(|l| !r.lines.iter().any(|&(ix, _)| self.sku_name(ix) == l.sku))
            {
                return Err(Rejection::invalid(
                    Field::Lines,
                    format!("SKU {} is not held by reservation {public}", stray.sku),
                ));
            }
            for &(ix, held) in &r.lines {
                let name = self.sku_name(ix);
                let want = lines.iter().find(|l| l.sku == name).map_or(0, |l| l.quantity);
                sold.push(want.min(u64::from(held)));
            }
        }

        let held_lines = r.lines.clone();
        let expires_at_ms = r.expires_at_ms;
        // Gone before the record is changed, or `Arc::make_mut` copies it.
        drop(r);
        let mut sold_lines = SmallVec::with_capacity(held_lines.len());
        for (&(ix, held), sold_qty) in held_lines.iter().zip(sold) {
            let held = u64::from(held);
            let bucket = self.bucket_mut(ix);
            assert!(
                bucket.held >= held,
                "held {} < {held} of SKU #{ix} in {public}",
                bucket.held,
            );
            bucket.held -= held;
            bucket.confirmed += sold_qty;
            bucket.available += held - sold_qty;
            if sold_qty > 0 {
                sold_lines.push((ix, record_quantity(sold_qty)));
            }
        }
        // Sold units have left the stock (a standalone region never settles).
        let mut budget = PRUNE_PER_COMMAND_MAX;
        for &(ix, _) in &sold_lines {
            self.stock_left(ix, &mut budget);
        }
        self.expiry.remove(&(expires_at_ms, id));
        let seq = self.next_outbox_seq;
        self.next_outbox_seq += 1;
        self.outbox.insert(seq, (id, clock_ms));
        let r = self.record_mut(id);
        r.lines = sold_lines;
        r.state = ReservationState::Confirmed;
        r.order_id = Some(order_id.into_boxed_str());
        let r = self.reservations.get(&id).expect("updated above").clone();
        Ok(RegionApplied::Reservation(self.materialize(id, &r)))
    }

    fn extend(&mut self, id: ReservationId, owner: &str, ttl_ms: Millis) -> RegionOutcome {
        limits::check_owner(owner)?;
        let ttl_ms = limits::effective_ttl_ms(ttl_ms)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record_of(id, owner)?;
        match r.state {
            ReservationState::Held if clock_ms < r.expires_at_ms => {
                let old = r.expires_at_ms;
                let new = clock_ms.saturating_add(ttl_ms);
                // Gone before the record is changed, or `Arc::make_mut` copies it.
                drop(r);
                self.record_mut(id).expires_at_ms = new;
                self.expiry.remove(&(old, id));
                self.expiry.insert((new, id));
                let r = self.reservations.get(&id).expect("updated above").clone();
                Ok(RegionApplied::Reservation(self.materialize(id, &r)))
            }
            ReservationState::Held | ReservationState::Expired => {
                Err(Rejection::ReservationExpired { id: public })
            }
            ReservationState::Released => Err(Rejection::ReservationReleased { id: public }),
            ReservationState::Confirmed | ReservationState::Settled => Err(Rejection::ReservationConfirmed {
                id: public,
                order_id: r.order_id.as_deref().unwrap_or_default().to_string(),
            }),
        }
    }

    fn expire(&mut self) -> RegionApplied {
        let mut count = 0;
        while count < EXPIRE_PER_COMMAND_MAX {
            let Some(&(at_ms, id)) = self.expiry.get_min() else {
                break;
            };
            if at_ms > self.clock_ms {
                break;
            }
            self.end_hold_quietly(id, ReservationState::Expired);
            count += 1;
        }
        let more_due = self
            .expiry
            .get_min()
            .is_some_and(|&(at_ms, _)| at_ms <= self.clock_ms);
        RegionApplied::Expired { count, more_due }
    }

    fn apply_transfer(
        &mut self,
        kind: TransferKind,
        transfer_id: TransferId,
        sku: Sku,
        asked: Units,
        done_below: TransferId,
    ) -> RegionOutcome {
        limits::check_sku(&sku)?;
        limits::check_transfer_units(asked)?;
        if done_below > transfer_id {
            return Err(Rejection::TransferMismatch {
                transfer_id,
                detail: format!("done_below {done_below} is above the transfer itself"),
            });
        }
        if transfer_id < self.transfer_floor {
            // Complete at the ledger, so applied here before; forgotten since.
            return Ok(RegionApplied::Transfer {
                transfer_id,
                units: 0,
                duplicate: true,
            });
        }
        let applied = self
            .transfers
            .get(&transfer_id)
            .filter(|_| !(kind == TransferKind::Grant && crate::inject::on(crate::inject::Bug::GrantTwice)));
        if let Some(t) = applied {
            if t.kind != kind || t.sku != sku || t.asked != asked {
                return Err(Rejection::TransferMismatch {
                    transfer_id,
                    detail: format!("applied as {:?} of {} {}", t.kind, t.asked, t.sku),
                });
            }
            return Ok(RegionApplied::Transfer {
                transfer_id,
                units: t.moved,
                duplicate: true,
            });
        }
        if done_below > self.transfer_floor {
            self.transfer_floor = done_below;
            let (_, kept) = self.transfers.split(&done_below);
            let at = self.transfers.get(&done_below).cloned();
            self.transfers = kept;
            if let Some(t) = at {
                self.transfers.insert(done_below, t);
            }
        }
        let moved = match kind {
            TransferKind::Grant => {
                let ix = self.bucket_ix_or_new(&sku);
                let bucket = self.bucket_mut(ix);
                bucket.available += asked;
                bucket.received += asked;
                asked
            }
            TransferKind::Revoke => match self.sku_ix.get(&sku).copied() {
                Some(ix) => {
                    let bucket = self.bucket_mut(ix);
                    let take = asked.min(bucket.available);
                    bucket.available -= take;
                    bucket.returned += take;
                    let mut budget = PRUNE_PER_COMMAND_MAX;
                    self.stock_left(ix, &mut budget);
                    take
                }
                None => 0,
            },
        };
        self.transfers.insert(
            transfer_id,
            AppliedTransfer {
                kind,
                sku,
                asked,
                moved,
            },
        );
        Ok(RegionApplied::Transfer {
            transfer_id,
            units: moved,
            duplicate: false,
        })
    }

    fn settled(&mut self, up_to_seq: u64) -> RegionOutcome {
        let last_seq = self.next_outbox_seq - 1;
        if up_to_seq > last_seq {
            return Err(Rejection::SettlementAhead { up_to_seq, last_seq });
        }
        let mut reservations = 0;
        let mut budget = PRUNE_PER_COMMAND_MAX;
        while let Some(&(seq, (id, _))) = self.outbox.get_min() {
            if seq > up_to_seq {
                break;
            }
            self.outbox.remove(&seq);
            let lines = self
                .reservations
                .get(&id)
                .expect("a confirmed reservation is kept")
                .lines
                .clone();
            for (ix, quantity) in lines {
                let quantity = u64::from(quantity);
                let bucket = self.bucket_mut(ix);
                assert!(
                    bucket.confirmed >= quantity,
                    "confirmed {} < settled {quantity} of SKU #{ix}",
                    bucket.confirmed,
                );
                bucket.confirmed -= quantity;
                bucket.settled += quantity;
                self.stock_left(ix, &mut budget);
            }
            let clock_ms = self.clock_ms;
            let r = self.record_mut(id);
            assert_eq!(
                r.state,
                ReservationState::Confirmed,
                "outbox entry {seq} for a {:?} reservation",
                r.state
            );
            r.state = ReservationState::Settled;
            r.ended_at_ms = clock_ms;
            self.ended.push_back((clock_ms, id));
            reservations += 1;
        }
        self.settled_up_to = self.settled_up_to.max(up_to_seq);
        Ok(RegionApplied::Settled { reservations })
    }

    fn adjust_stock(&mut self, request_id: RequestId, sku: Sku, delta: i64) -> RegionOutcome {
        let Some(fingerprint) = self.adjustments.check_adjustment(&request_id, &sku, delta)? else {
            return Ok(self.stock_figures(sku));
        };
        let units = delta.unsigned_abs();
        if delta > 0 {
            let ix = self.bucket_ix_or_new(&sku);
            let bucket = self.bucket_mut(ix);
            bucket.available += units;
            bucket.received += units;
        } else {
            let removable = self.bucket(&sku).map_or(0, |b| b.available);
            if units > removable {
                return Err(Rejection::StockNotRemovable {
                    sku,
                    requested: units,
                    removable,
                });
            }
            let ix = *self.sku_ix.get(&sku).expect("removable > 0 means a bucket");
            let bucket = self.bucket_mut(ix);
            bucket.available -= units;
            bucket.returned += units;
        }
        let ix = self.bucket_ix_or_new(&sku);
        let received = self.bucket_mut(ix).received;
        self.adjustments
            .remember(&request_id, fingerprint, &sku, received, self.clock_ms);
        let mut budget = PRUNE_PER_COMMAND_MAX;
        self.stock_left(ix, &mut budget);
        Ok(self.stock_figures(sku))
    }

    fn set_retention(&mut self, retention: Retention) -> RegionOutcome {
        retention.check()?;
        self.retention = retention;
        Ok(RegionApplied::Retention(retention))
    }

    fn stock_figures(&self, sku: Sku) -> RegionApplied {
        let b = self.bucket(&sku).cloned().unwrap_or_default();
        RegionApplied::Stock {
            sku,
            stocked_total: b.received - b.returned,
            available: b.available,
        }
    }

    /// Ends a held reservation (released or expired): its tokens go back to
    /// `available`. Returns it as it now is.
    fn end_hold(&mut self, id: ReservationId, to: ReservationState) -> Reservation {
        self.end_hold_quietly(id, to);
        let r = self.reservations.get(&id).expect("ended above").clone();
        self.materialize(id, &r)
    }

    /// [`Self::end_hold`] without building the answer (the expiry sweep).
    fn end_hold_quietly(&mut self, id: ReservationId, to: ReservationState) {
        let clock_ms = self.clock_ms;
        let r = self.record_mut(id);
        assert_eq!(
            r.state,
            ReservationState::Held,
            "end_hold of {id} in state {:?}",
            r.state
        );
        r.state = to;
        r.ended_at_ms = clock_ms;
        let expires_at_ms = r.expires_at_ms;
        let lines = r.lines.clone();
        for (ix, quantity) in lines {
            let quantity = u64::from(quantity);
            let bucket = self.bucket_mut(ix);
            assert!(
                bucket.held >= quantity,
                "held {} < {quantity} of SKU #{ix}",
                bucket.held,
            );
            bucket.held -= quantity;
            bucket.available += quantity;
        }
        self.expiry.remove(&(expires_at_ms, id));
        self.ended.push_back((clock_ms, id));
    }

    /// The record of reservation `id` if it belongs to `owner`. One that
    /// does not exist and one of another owner are refused alike, with the
    /// same rejection and message, so a caller learns nothing about ids that
    /// are not theirs.
    fn record_of(&self, id: ReservationId, owner: &str) -> Result<Arc<Record>, Rejection> {
        match self.owned(id, owner) {
            Some(r) => Ok(r.clone()),
            None => Err(Rejection::ReservationNotFound {
                id: id.display(&self.region),
            }),
        }
    }

    /// Reservation `id`'s record, if it exists and belongs to `owner`.
    fn owned(&self, id: ReservationId, owner: &str) -> Option<&Arc<Record>> {
        let r = self.reservations.get(&id)?;
        let ix = *self.owner_ix.get(owner)?;
        (r.owner == ix).then_some(r)
    }

    /// The record of a known reservation, to change (copied first if a
    /// snapshot still shares it).
    fn record_mut(&mut self, id: ReservationId) -> &mut Record {
        Arc::make_mut(self.reservations.get_mut(&id).expect("a known reservation"))
    }

    fn bucket_mut(&mut self, ix: SkuIx) -> &mut Bucket {
        &mut self
            .buckets
            .get_mut(ix as usize)
            .expect("a SKU number names a bucket")
            .1
    }

    /// The number of `sku`'s bucket, making an empty bucket first if the
    /// region has none.
    fn bucket_ix_or_new(&mut self, sku: &str) -> SkuIx {
        if let Some(&ix) = self.sku_ix.get(sku) {
            return ix;
        }
        let ix = SkuIx::try_from(self.buckets.len()).expect("fewer than 2^32 SKUs in a region");
        self.buckets.push_back((sku.to_string(), Bucket::default()));
        self.sku_ix.insert(sku.to_string(), ix);
        ix
    }

    fn sku_name(&self, ix: SkuIx) -> &str {
        &self
            .buckets
            .get(ix as usize)
            .expect("a SKU number names a bucket")
            .0
    }

    /// A record as the public [`Reservation`].
    fn materialize(&self, id: ReservationId, r: &Record) -> Reservation {
        Reservation {
            id,
            owner: self.owner_name(r.owner).to_string(),
            lines: r
                .lines
                .iter()
                .map(|&(ix, q)| Line::new(self.sku_name(ix), u64::from(q)))
                .collect(),
            state: r.state,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            order_id: r.order_id.as_deref().map(str::to_string),
            ended_at_ms: r.ended_at_ms,
        }
    }

    /// Ended reservations kept that ended less than `retention.ended_ms`
    /// ago (the rest are due to be pruned). `ended` is sorted by end time, so
    /// a binary search finds them.
    fn ended_within_retention(&self) -> u64 {
        let (now, keep_ms) = (self.clock_ms, self.retention.ended_ms);
        let due = self
            .ended
            .binary_search_by(|&(at_ms, _)| {
                if at_ms.saturating_add(keep_ms) <= now {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
            .unwrap_or_else(|at| at);
        (self.ended.len() - due) as u64
    }

    /// Units of SKU number `ix` left (given back, or sold): the
    /// adjustment memory learns which adjustments' stock is now gone.
    fn stock_left(&mut self, ix: SkuIx, budget: &mut usize) {
        let (sku, b) = self
            .buckets
            .get(ix as usize)
            .expect("a SKU number names a bucket");
        self.adjustments.stock_left(sku, bucket_out_total(b), budget);
    }

    /// Forgets ended reservations (with their request ids) whose retention
    /// has passed, a bounded amount per command. Only by age: the count bound
    /// (`retention.ended_max`) refuses new reserves instead of forgetting
    /// early (`RETENTION_FULL`).
    fn prune(&mut self) {
        let now = self.clock_ms;
        for _ in 0..PRUNE_PER_COMMAND_MAX {
            let Some(&(at_ms, id)) = self.ended.front() else {
                break;
            };
            if at_ms.saturating_add(self.retention.ended_ms) > now {
                break;
            }
            self.ended.pop_front();
            if let Some(r) = self.reservations.remove(&id) {
                self.requests.remove(&(request_hash(r.owner, &r.request_id), id));
            }
        }
    }

    // ----- reads -----

    /// The region's name.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Logical time: the largest `now_ms` applied.
    pub fn clock_ms(&self) -> Millis {
        self.clock_ms
    }

    /// How long ended reservations are kept.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Parses a public reservation id and checks it names this region.
    pub fn parse_reservation_id(&self, public: &str) -> Result<ReservationId, Rejection> {
        parse_reservation_id(&self.region, public)
    }

    /// A reservation by number, if it is known (not pruned) and belongs to
    /// `owner`: `None` both for an id that does not exist and for another
    /// owner's, so an answer tells a caller nothing about others' ids. The
    /// read for the API.
    pub fn reservation_of(&self, id: ReservationId, owner: &str) -> Option<Reservation> {
        self.owned(id, owner).map(|r| self.materialize(id, r))
    }

    /// A reservation by number, if it is known (not pruned), whoever owns
    /// it: for audits, tests and operators, never for a client's request
    /// (see [`Self::reservation_of`]).
    pub fn reservation(&self, id: ReservationId) -> Option<Reservation> {
        self.reservations.get(&id).map(|r| self.materialize(id, r))
    }

    /// Every reservation still kept, by number.
    pub fn reservations(&self) -> impl Iterator<Item = Reservation> + '_ {
        self.reservations.iter().map(|(id, r)| self.materialize(*id, r))
    }

    /// Number of reservations kept: live, confirmed and ended.
    pub fn reservations_kept(&self) -> usize {
        self.reservations.len()
    }

    /// Number of ended reservations kept (released, expired, settled).
    pub fn ended_kept(&self) -> usize {
        self.ended.len()
    }

    /// One SKU's bucket.
    pub fn bucket(&self, sku: &str) -> Option<&Bucket> {
        let ix = *self.sku_ix.get(sku)?;
        self.buckets.get(ix as usize).map(|(_, b)| b)
    }

    /// Every bucket, by SKU.
    pub fn buckets(&self) -> impl Iterator<Item = (&Sku, &Bucket)> + '_ {
        self.sku_ix.iter().map(|(sku, &ix)| {
            let (_, b) = self
                .buckets
                .get(ix as usize)
                .expect("a SKU number names a bucket");
            (sku, b)
        })
    }

    /// Number of SKUs with a bucket.
    pub fn sku_count(&self) -> usize {
        self.buckets.len()
    }

    /// Outbox entries after `seq`, oldest first.
    pub fn outbox_after(&self, seq: u64) -> impl Iterator<Item = OutboxEntry> + '_ {
        self.outbox
            .range(seq.saturating_add(1)..)
            .map(|(&seq, &(id, confirmed_at_ms))| {
                let r = self
                    .reservations
                    .get(&id)
                    .expect("a confirmed reservation is kept");
                OutboxEntry {
                    seq,
                    reservation: id,
                    order_id: r.order_id.as_deref().unwrap_or_default().to_string(),
                    lines: r
                        .lines
                        .iter()
                        .map(|&(ix, q)| Line::new(self.sku_name(ix), u64::from(q)))
                        .collect(),
                    confirmed_at_ms,
                }
            })
    }

    /// The last outbox sequence number written (0 if none).
    pub fn last_outbox_seq(&self) -> u64 {
        self.next_outbox_seq - 1
    }

    /// The outbox sequence number the ledger has acknowledged up to.
    pub fn settled_up_to(&self) -> u64 {
        self.settled_up_to
    }

    /// When the earliest live hold falls due, if any.
    pub fn next_expiry_ms(&self) -> Option<Millis> {
        self.expiry.get_min().map(|&(at_ms, _)| at_ms)
    }

    /// Number of live holds.
    pub fn holds(&self) -> usize {
        self.expiry.len()
    }

    /// How this region applied a transfer, if it did and still remembers.
    pub fn transfer(&self, transfer_id: TransferId) -> Option<&AppliedTransfer> {
        self.transfers.get(&transfer_id)
    }

    /// Number of remembered reserve request ids: one per reservation kept.
    pub fn remembered_requests(&self) -> usize {
        self.requests.len()
    }

    /// Number of owners the region has numbered (at most [`OWNERS_MAX`];
    /// never shrinks).
    pub fn owners_known(&self) -> usize {
        self.owners.len()
    }
}

/// The hash a request id is indexed by, with its owner's number, so that
/// two owners' uses of one request id are told apart (FNV-1a: fixed, so
/// every replica computes the same).
fn request_hash(owner: OwnerIx, request_id: &str) -> u64 {
    Fnv::new()
        .u64(u64::from(owner))
        .bytes(request_id.as_bytes())
        .finish()
}

/// A bucket's units ever out: given back (removed, revoked) or sold
/// (confirmed, settled or not: a sale is never undone, and a standalone
/// region never settles). Its units ever in are `received`.
fn bucket_out_total(b: &Bucket) -> Units {
    b.returned + b.settled + b.confirmed
}

/// A validated quantity in a record's 32 bits.
fn record_quantity(quantity: Units) -> u32 {
    u32::try_from(quantity)
        .unwrap_or_else(|_| panic!("quantity {quantity} over {QUANTITY_MAX} reached a record"))
}

/// Parses a public reservation id (`us-east-00c0ffee5eed1234`) for `region`:
/// malformed is `INVALID_RESERVATION_ID`; well formed but of another region
/// is `RESERVATION_NOT_FOUND`, since this region holds no such reservation
/// and the client must not take it for bad input.
pub fn parse_reservation_id(region: &str, public: &str) -> Result<ReservationId, Rejection> {
    limits::check_reservation_id(public)?;
    match ReservationId::parse(public) {
        Some((owner, id)) if owner == region => Ok(id),
        Some(_) => Err(Rejection::ReservationNotFound {
            id: public.to_string(),
        }),
        None => Err(Rejection::invalid(
            Field::ReservationId,
            format!("{public:?} is not of the form <region>-<16 lowercase hex digits>"),
        )),
    }
}

impl crate::StateMachine for RegionState {
    type Command = RegionCommand;
    type Outcome = RegionOutcome;

    fn apply(&mut self, cmd: RegionCommand) -> RegionOutcome {
        RegionState::apply(self, cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(owner: &str, request_id: &str, nonce: u64) -> RegionCommand {
        RegionCommand {
            now_ms: 1_000,
            op: RegionOp::Reserve {
                owner: owner.into(),
                request_id: request_id.into(),
                lines: vec![Line::new("a", 1)],
                ttl_ms: 0,
                allow_partial: false,
                nonce,
            },
        }
    }

    fn stocked() -> RegionState {
        let mut r = RegionState::new("us-east");
        let op = RegionOp::AdjustStock {
            request_id: "stock".into(),
            sku: "a".into(),
            delta: 100,
        };
        r.apply(RegionCommand { now_ms: 1_000, op }).expect("stocked");
        r
    }

    /// The owner's number sits in what was padding: a record is no bigger
    /// than before owners (96 bytes on 64-bit targets).
    #[test]
    fn record_stays_small() {
        assert!(
            std::mem::size_of::<Record>() <= 96,
            "Record is {} bytes",
            std::mem::size_of::<Record>()
        );
    }

    /// With OWNERS_MAX owners known, a new owner's reserve is
    /// TOO_MANY_OWNERS and changes nothing; known owners still reserve.
    #[test]
    fn owner_table_is_bounded() {
        let mut r = stocked();
        r.apply(reserve("alice", "req-1", 7)).expect("alice reserves");
        // Fill the table directly: OWNERS_MAX reserves would be slow here.
        for i in r.owners.len()..OWNERS_MAX {
            r.owner_ix_or_new(&format!("owner-{i}"));
        }
        assert_eq!(r.owners_known(), OWNERS_MAX);
        let before = r.clone();
        let err = r.apply(reserve("bob", "req-1", 8)).expect_err("no room for bob");
        assert_eq!(err.reason(), "TOO_MANY_OWNERS");
        assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        assert_eq!(err.metadata(), vec![("owners", OWNERS_MAX.to_string())]);
        assert_eq!(r, before, "a refused reserve numbers no owner");
        let got = r.apply(reserve("alice", "req-2", 9)).expect("alice again");
        let RegionApplied::Reservation(got) = got else {
            panic!("{got:?}")
        };
        assert_eq!((got.id, got.owner.as_str()), (ReservationId(9), "alice"));
        let got = r.apply(reserve("owner-9", "req-1", 10)).expect("a known owner");
        assert!(matches!(got, RegionApplied::Reservation(ref x) if x.owner == "owner-9"));
        assert_eq!(r.owners_known(), OWNERS_MAX);
    }

    /// Probing skips 0 and ids in use, and wraps past u64::MAX.
    #[test]
    fn free_id_probes_upwards_and_wraps() {
        let mut r = stocked();
        let id = |out: RegionOutcome| match out {
            Ok(RegionApplied::Reservation(x)) => x.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id(r.apply(reserve("o", "r1", 0))), ReservationId(1));
        assert_eq!(id(r.apply(reserve("o", "r2", u64::MAX))), ReservationId(u64::MAX));
        assert_eq!(id(r.apply(reserve("o", "r3", u64::MAX))), ReservationId(2));
        assert_eq!(
            id(r.apply(reserve("o", "r4", u64::MAX - 1))),
            ReservationId(u64::MAX - 1)
        );
        assert_eq!(id(r.apply(reserve("o", "r5", u64::MAX - 1))), ReservationId(3));
        assert_eq!(id(r.apply(reserve("o", "r6", 0))), ReservationId(4));
    }
}
