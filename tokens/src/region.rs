//! `RegionState`: one region's buckets, holds, expiry, idempotency table,
//! outbox and applied transfers. Replicated by the region's Raft group.

use crate::error::{Field, Rejection};
use crate::limits::{self, *};
use crate::memory::{Fnv, RequestMemory};
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
        /// Idempotency key.
        request_id: RequestId,
        /// What to hold.
        lines: Vec<Line>,
        /// Hold time; 0 means [`TTL_DEFAULT_MS`].
        ttl_ms: Millis,
        /// Take what is available of each line.
        allow_partial: bool,
    },
    /// Give a hold's tokens back.
    Release {
        /// Which reservation.
        id: ReservationId,
    },
    /// Turn a hold into a sale.
    Confirm {
        /// Which reservation.
        id: ReservationId,
        /// The shop's order.
        order_id: OrderId,
        /// Empty: everything held. Otherwise at most these quantities.
        lines: Vec<Line>,
    },
    /// Move a live hold's expiry to now + ttl.
    Extend {
        /// Which reservation.
        id: ReservationId,
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
/// id that made it. Part of the replicated state, so every replica prunes
/// alike; changed by [`RegionOp::SetRetention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Logical time an ended (released, expired, settled) reservation is
    /// kept after it ends.
    pub ended_ms: Millis,
    /// Most ended reservations kept; past it the oldest are forgotten.
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

/// What the state keeps of one reservation: the compact form of
/// [`Reservation`], with the request id that made it (remembered exactly as
/// long as the reservation). Shared between the live state and a snapshot
/// being written (`Arc`), so copying a tree node copies pointers, not
/// records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    state: ReservationState,
    /// Held lines, or sold lines once confirmed; one or two lines are kept
    /// inline, without a heap allocation.
    lines: SmallVec<[RecordLine; 2]>,
    created_at_ms: Millis,
    expires_at_ms: Millis,
    /// 0 while live.
    ended_at_ms: Millis,
    order_id: Option<Box<str>>,
    /// The reserve's idempotency key.
    request_id: Box<str>,
    /// The reserve's fingerprint, to tell a retry from a reuse of the key.
    fingerprint: u64,
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
    next_reservation: u64,
    /// Live holds by expiry, oldest first.
    expiry: OrdSet<(Millis, ReservationId)>,
    /// Ended reservations by end time, for pruning.
    ended: Vector<(Millis, ReservationId)>,
    /// Reservations by the hash of their request id (FNV-1a); a lookup
    /// compares the full id kept in the record, so a hash collision costs a
    /// comparison, never a wrong answer.
    requests: OrdSet<(u64, ReservationId)>,
    adjustments: RequestMemory<Sku>,
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
            next_reservation: 1,
            expiry: OrdSet::new(),
            ended: Vector::new(),
            requests: OrdSet::new(),
            adjustments: RequestMemory::default(),
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
        let outcome = match cmd.op {
            RegionOp::Reserve {
                request_id,
                lines,
                ttl_ms,
                allow_partial,
            } => self.reserve(request_id, lines, ttl_ms, allow_partial),
            RegionOp::Release { id } => self.release(id),
            RegionOp::Confirm { id, order_id, lines } => self.confirm(id, order_id, lines),
            RegionOp::Extend { id, ttl_ms } => self.extend(id, ttl_ms),
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

    /// The reservation a remembered request id made, if any.
    fn remembered(&self, request_id: &str) -> Option<(ReservationId, &Record)> {
        let hash = request_hash(request_id);
        self.requests
            .range((hash, ReservationId(0))..=(hash, ReservationId(u64::MAX)))
            .filter_map(|&(_, id)| self.reservations.get(&id).map(|r| (id, r.as_ref())))
            .find(|(_, r)| &*r.request_id == request_id)
    }

    fn reserve(
        &mut self,
        request_id: RequestId,
        lines: Vec<Line>,
        ttl_ms: Millis,
        allow_partial: bool,
    ) -> RegionOutcome {
        limits::check_request_id(&request_id)?;
        limits::check_lines(&lines)?;
        let ttl_ms = limits::effective_ttl_ms(ttl_ms)?;
        let fingerprint = Fnv::new()
            .lines(&lines)
            .u64(ttl_ms)
            .u64(u64::from(allow_partial))
            .finish();
        if let Some((id, seen)) = self.remembered(&request_id) {
            if seen.fingerprint != fingerprint {
                return Err(Rejection::RequestIdReused { request_id });
            }
            return Ok(RegionApplied::Reservation(self.materialize(id, seen)));
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
        let id = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        let expires_at_ms = self.clock_ms.saturating_add(ttl_ms);
        let record = Record {
            state: ReservationState::Held,
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
        self.requests.insert((request_hash(&record.request_id), id));
        self.reservations.insert(id, Arc::new(record));
        Ok(RegionApplied::Reservation(reservation))
    }

    fn release(&mut self, id: ReservationId) -> RegionOutcome {
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record(id)?;
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

    fn confirm(&mut self, id: ReservationId, order_id: OrderId, lines: Vec<Line>) -> RegionOutcome {
        limits::check_order_id(&order_id)?;
        limits::check_confirm_lines(&lines)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record(id)?;
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

    fn extend(&mut self, id: ReservationId, ttl_ms: Millis) -> RegionOutcome {
        let ttl_ms = limits::effective_ttl_ms(ttl_ms)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.record(id)?;
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
        if let Some(t) = self.transfers.get(&transfer_id) {
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
        self.adjustments
            .remember(request_id, fingerprint, sku.clone(), self.clock_ms);
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

    fn record(&self, id: ReservationId) -> Result<Arc<Record>, Rejection> {
        match self.reservations.get(&id) {
            Some(r) => Ok(r.clone()),
            None => Err(Rejection::ReservationNotFound {
                id: id.display(&self.region),
            }),
        }
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

    /// Forgets old adjustment request ids and ended reservations (with their
    /// request ids), a bounded amount per command.
    fn prune(&mut self) {
        let now = self.clock_ms;
        self.adjustments
            .prune(now, REQUEST_RETENTION_MS, REQUEST_IDS_MAX, PRUNE_PER_COMMAND_MAX);
        for _ in 0..PRUNE_PER_COMMAND_MAX {
            let Some(&(at_ms, id)) = self.ended.front() else {
                break;
            };
            if at_ms.saturating_add(self.retention.ended_ms) > now
                && self.ended.len() as u64 <= self.retention.ended_max
            {
                break;
            }
            self.ended.pop_front();
            if let Some(r) = self.reservations.remove(&id) {
                self.requests.remove(&(request_hash(&r.request_id), id));
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

    /// A reservation by number, if it is known (not pruned).
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
}

/// The hash a request id is indexed by (FNV-1a: fixed, so every replica
/// computes the same).
fn request_hash(request_id: &str) -> u64 {
    Fnv::new().bytes(request_id.as_bytes()).finish()
}

/// A validated quantity in a record's 32 bits.
fn record_quantity(quantity: Units) -> u32 {
    u32::try_from(quantity)
        .unwrap_or_else(|_| panic!("quantity {quantity} over {QUANTITY_MAX} reached a record"))
}

/// Parses a public reservation id (`us-east-000042`) for `region`:
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
            format!("{public:?} is not of the form <region>-<number>"),
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
