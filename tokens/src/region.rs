//! `RegionState`: one region's buckets, holds, expiry, idempotency table,
//! outbox and applied transfers. Replicated by the region's Raft group.

use crate::error::{Field, Rejection};
use crate::limits::{self, *};
use crate::memory::{Fnv, RequestMemory};
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A region's tokens for one SKU (DESIGN.md §1), plus the running totals
/// that let the bucket check its own books:
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
}

/// The outcome of one region command: what it produced, or why it changed
/// nothing (except the logical clock).
pub type RegionOutcome = Result<RegionApplied, Rejection>;

/// One region's replicated state. Deterministic: two replicas that apply the
/// same commands are equal, and serialize to the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    region: RegionId,
    /// Logical time: the largest `now_ms` seen.
    clock_ms: Millis,
    buckets: BTreeMap<Sku, Bucket>,
    reservations: BTreeMap<ReservationId, Reservation>,
    next_reservation: u64,
    /// Live holds by expiry, oldest first.
    expiry: BTreeSet<(Millis, ReservationId)>,
    /// Ended reservations by end time, for pruning.
    ended: VecDeque<(Millis, ReservationId)>,
    reserves: RequestMemory<ReservationId>,
    adjustments: RequestMemory<Sku>,
    outbox: BTreeMap<u64, OutboxEntry>,
    next_outbox_seq: u64,
    settled_up_to: u64,
    transfers: BTreeMap<TransferId, AppliedTransfer>,
    /// Transfers below this id are complete at the ledger and forgotten here.
    transfer_floor: TransferId,
}

impl RegionState {
    /// An empty region.
    pub fn new(region: impl Into<RegionId>) -> RegionState {
        RegionState {
            region: region.into(),
            clock_ms: 0,
            buckets: BTreeMap::new(),
            reservations: BTreeMap::new(),
            next_reservation: 1,
            expiry: BTreeSet::new(),
            ended: VecDeque::new(),
            reserves: RequestMemory::default(),
            adjustments: RequestMemory::default(),
            outbox: BTreeMap::new(),
            next_outbox_seq: 1,
            settled_up_to: 0,
            transfers: BTreeMap::new(),
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
        };
        self.prune();
        outcome
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
        if let Some(seen) = self.reserves.get(&request_id) {
            if seen.fingerprint != fingerprint {
                return Err(Rejection::RequestIdReused { request_id });
            }
            let id = seen.value;
            return match self.reservations.get(&id) {
                Some(r) => Ok(RegionApplied::Reservation(r.clone())),
                None => Err(Rejection::ReservationNotFound {
                    id: id.display(&self.region),
                }),
            };
        }

        // Decide what to take before touching anything: all or nothing.
        let mut taken = Vec::with_capacity(lines.len());
        for line in &lines {
            let available = self.buckets.get(&line.sku).map_or(0, |b| b.available);
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

        let mut held = Vec::with_capacity(lines.len());
        for (mut line, take) in lines.into_iter().zip(taken) {
            if take == 0 {
                continue;
            }
            let bucket = self
                .buckets
                .get_mut(&line.sku)
                .expect("a line with tokens to take has a bucket");
            bucket.available -= take;
            bucket.held += take;
            line.quantity = take;
            held.push(line);
        }
        let id = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        let expires_at_ms = self.clock_ms.saturating_add(ttl_ms);
        let reservation = Reservation {
            id,
            lines: held,
            state: ReservationState::Held,
            created_at_ms: self.clock_ms,
            expires_at_ms,
            order_id: None,
            ended_at_ms: 0,
        };
        self.expiry.insert((expires_at_ms, id));
        self.reserves.remember(request_id, fingerprint, id, self.clock_ms);
        self.reservations.insert(id, reservation.clone());
        Ok(RegionApplied::Reservation(reservation))
    }

    fn release(&mut self, id: ReservationId) -> RegionOutcome {
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.reservation_mut(id)?;
        match r.state {
            ReservationState::Held => {
                // A hold past its expiry is expired, swept or not.
                let to = if clock_ms >= r.expires_at_ms {
                    ReservationState::Expired
                } else {
                    ReservationState::Released
                };
                Ok(RegionApplied::Reservation(self.end_hold(id, to)))
            }
            ReservationState::Released | ReservationState::Expired => {
                Ok(RegionApplied::Reservation(r.clone()))
            }
            ReservationState::Confirmed | ReservationState::Settled => Err(Rejection::ReservationConfirmed {
                id: public,
                order_id: r.order_id.clone().unwrap_or_default(),
            }),
        }
    }

    fn confirm(&mut self, id: ReservationId, order_id: OrderId, lines: Vec<Line>) -> RegionOutcome {
        limits::check_order_id(&order_id)?;
        limits::check_confirm_lines(&lines)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.reservation_mut(id)?;
        match r.state {
            ReservationState::Held if clock_ms >= r.expires_at_ms => {
                return Err(Rejection::ReservationExpired { id: public });
            }
            ReservationState::Held => {}
            ReservationState::Confirmed | ReservationState::Settled => {
                let confirmed_as = r.order_id.clone().unwrap_or_default();
                return if confirmed_as == order_id {
                    Ok(RegionApplied::Reservation(r.clone()))
                } else {
                    Err(Rejection::ReservationConfirmed {
                        id: public,
                        order_id: confirmed_as,
                    })
                };
            }
            ReservationState::Released => return Err(Rejection::ReservationReleased { id: public }),
            ReservationState::Expired => return Err(Rejection::ReservationExpired { id: public }),
        }
        // How much of each held line is sold.
        let mut sold = Vec::with_capacity(r.lines.len());
        if lines.is_empty() {
            sold.extend(r.lines.iter().map(|l| l.quantity));
        } else {
            if let Some(stray) = lines.iter().find(|l| !r.lines.iter().any(|h| h.sku == l.sku)) {
                return Err(Rejection::invalid(
                    Field::Lines,
                    format!("SKU {} is not held by reservation {public}", stray.sku),
                ));
            }
            for held in &r.lines {
                let want = lines.iter().find(|l| l.sku == held.sku).map_or(0, |l| l.quantity);
                sold.push(want.min(held.quantity));
            }
        }

        let held_lines = std::mem::take(&mut r.lines);
        let expires_at_ms = r.expires_at_ms;
        let mut sold_lines = Vec::with_capacity(held_lines.len());
        for (line, sold_qty) in held_lines.into_iter().zip(sold) {
            let bucket = self.buckets.get_mut(&line.sku).expect("a held line has a bucket");
            assert!(
                bucket.held >= line.quantity,
                "held {} < {} of {} in {public}",
                bucket.held,
                line.quantity,
                line.sku
            );
            bucket.held -= line.quantity;
            bucket.confirmed += sold_qty;
            bucket.available += line.quantity - sold_qty;
            if sold_qty > 0 {
                sold_lines.push(Line {
                    sku: line.sku,
                    quantity: sold_qty,
                });
            }
        }
        self.expiry.remove(&(expires_at_ms, id));
        let seq = self.next_outbox_seq;
        self.next_outbox_seq += 1;
        self.outbox.insert(
            seq,
            OutboxEntry {
                seq,
                reservation: id,
                order_id: order_id.clone(),
                lines: sold_lines.clone(),
                confirmed_at_ms: clock_ms,
            },
        );
        let r = self.reservations.get_mut(&id).expect("looked up above");
        r.lines = sold_lines;
        r.state = ReservationState::Confirmed;
        r.order_id = Some(order_id);
        Ok(RegionApplied::Reservation(r.clone()))
    }

    fn extend(&mut self, id: ReservationId, ttl_ms: Millis) -> RegionOutcome {
        let ttl_ms = limits::effective_ttl_ms(ttl_ms)?;
        let clock_ms = self.clock_ms;
        let public = id.display(&self.region);
        let r = self.reservation_mut(id)?;
        match r.state {
            ReservationState::Held if clock_ms < r.expires_at_ms => {
                let old = r.expires_at_ms;
                r.expires_at_ms = clock_ms.saturating_add(ttl_ms);
                let new = r.expires_at_ms;
                let out = r.clone();
                self.expiry.remove(&(old, id));
                self.expiry.insert((new, id));
                Ok(RegionApplied::Reservation(out))
            }
            ReservationState::Held | ReservationState::Expired => {
                Err(Rejection::ReservationExpired { id: public })
            }
            ReservationState::Released => Err(Rejection::ReservationReleased { id: public }),
            ReservationState::Confirmed | ReservationState::Settled => Err(Rejection::ReservationConfirmed {
                id: public,
                order_id: r.order_id.clone().unwrap_or_default(),
            }),
        }
    }

    fn expire(&mut self) -> RegionApplied {
        let mut count = 0;
        while count < EXPIRE_PER_COMMAND_MAX {
            let Some(&(at_ms, id)) = self.expiry.first() else {
                break;
            };
            if at_ms > self.clock_ms {
                break;
            }
            self.end_hold(id, ReservationState::Expired);
            count += 1;
        }
        let more_due = self
            .expiry
            .first()
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
            self.transfers = self.transfers.split_off(&done_below);
        }
        let moved = match kind {
            TransferKind::Grant => {
                let bucket = self.buckets.entry(sku.clone()).or_default();
                bucket.available += asked;
                bucket.received += asked;
                asked
            }
            TransferKind::Revoke => match self.buckets.get_mut(&sku) {
                Some(bucket) => {
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
        while let Some(entry) = self.outbox.first_entry() {
            if *entry.key() > up_to_seq {
                break;
            }
            let entry = entry.remove();
            for line in &entry.lines {
                let bucket = self.buckets.get_mut(&line.sku).expect("a sold line has a bucket");
                assert!(
                    bucket.confirmed >= line.quantity,
                    "confirmed {} < settled {} of {}",
                    bucket.confirmed,
                    line.quantity,
                    line.sku
                );
                bucket.confirmed -= line.quantity;
                bucket.settled += line.quantity;
            }
            let r = self
                .reservations
                .get_mut(&entry.reservation)
                .expect("a confirmed reservation is kept");
            assert_eq!(
                r.state,
                ReservationState::Confirmed,
                "outbox entry {} for a {:?} reservation",
                entry.seq,
                r.state
            );
            r.state = ReservationState::Settled;
            r.ended_at_ms = self.clock_ms;
            self.ended.push_back((self.clock_ms, entry.reservation));
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
            let bucket = self.buckets.entry(sku.clone()).or_default();
            bucket.available += units;
            bucket.received += units;
        } else {
            let removable = self.buckets.get(&sku).map_or(0, |b| b.available);
            if units > removable {
                return Err(Rejection::StockNotRemovable {
                    sku,
                    requested: units,
                    removable,
                });
            }
            let bucket = self.buckets.get_mut(&sku).expect("removable > 0 means a bucket");
            bucket.available -= units;
            bucket.returned += units;
        }
        self.adjustments
            .remember(request_id, fingerprint, sku.clone(), self.clock_ms);
        Ok(self.stock_figures(sku))
    }

    fn stock_figures(&self, sku: Sku) -> RegionApplied {
        let b = self.buckets.get(&sku).cloned().unwrap_or_default();
        RegionApplied::Stock {
            sku,
            stocked_total: b.received - b.returned,
            available: b.available,
        }
    }

    /// Ends a held reservation (released or expired): its tokens go back to
    /// `available`.
    fn end_hold(&mut self, id: ReservationId, to: ReservationState) -> Reservation {
        let r = self
            .reservations
            .get_mut(&id)
            .expect("end_hold of a known reservation");
        assert_eq!(
            r.state,
            ReservationState::Held,
            "end_hold of {id} in state {:?}",
            r.state
        );
        for line in &r.lines {
            let bucket = self.buckets.get_mut(&line.sku).expect("a held line has a bucket");
            assert!(
                bucket.held >= line.quantity,
                "held {} < {} of {}",
                bucket.held,
                line.quantity,
                line.sku
            );
            bucket.held -= line.quantity;
            bucket.available += line.quantity;
        }
        r.state = to;
        r.ended_at_ms = self.clock_ms;
        self.expiry.remove(&(r.expires_at_ms, id));
        self.ended.push_back((self.clock_ms, id));
        r.clone()
    }

    fn reservation_mut(&mut self, id: ReservationId) -> Result<&mut Reservation, Rejection> {
        match self.reservations.get_mut(&id) {
            Some(r) => Ok(r),
            None => Err(Rejection::ReservationNotFound {
                id: id.display(&self.region),
            }),
        }
    }

    /// Forgets old request ids and ended reservations, a bounded amount per
    /// command.
    fn prune(&mut self) {
        let now = self.clock_ms;
        self.reserves
            .prune(now, REQUEST_RETENTION_MS, REQUEST_IDS_MAX, PRUNE_PER_COMMAND_MAX);
        self.adjustments
            .prune(now, REQUEST_RETENTION_MS, REQUEST_IDS_MAX, PRUNE_PER_COMMAND_MAX);
        for _ in 0..PRUNE_PER_COMMAND_MAX {
            let Some(&(at_ms, id)) = self.ended.front() else {
                break;
            };
            if at_ms.saturating_add(RESERVATION_RETENTION_MS) > now
                && self.ended.len() <= ENDED_RESERVATIONS_MAX
            {
                break;
            }
            self.ended.pop_front();
            self.reservations.remove(&id);
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

    /// Parses a public reservation id and checks it names this region.
    pub fn parse_reservation_id(&self, public: &str) -> Result<ReservationId, Rejection> {
        parse_reservation_id(&self.region, public)
    }

    /// A reservation by number, if it is known (not pruned).
    pub fn reservation(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    /// Every reservation still kept, by number.
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// One SKU's bucket.
    pub fn bucket(&self, sku: &str) -> Option<&Bucket> {
        self.buckets.get(sku)
    }

    /// Every bucket, by SKU.
    pub fn buckets(&self) -> &BTreeMap<Sku, Bucket> {
        &self.buckets
    }

    /// Outbox entries after `seq`, oldest first.
    pub fn outbox_after(&self, seq: u64) -> impl Iterator<Item = &OutboxEntry> {
        self.outbox.range(seq.saturating_add(1)..).map(|(_, e)| e)
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
        self.expiry.first().map(|&(at_ms, _)| at_ms)
    }

    /// Number of live holds.
    pub fn holds(&self) -> usize {
        self.expiry.len()
    }

    /// How this region applied a transfer, if it did and still remembers.
    pub fn transfer(&self, transfer_id: TransferId) -> Option<&AppliedTransfer> {
        self.transfers.get(&transfer_id)
    }

    /// Number of remembered reserve request ids.
    pub fn remembered_requests(&self) -> usize {
        self.reserves.len()
    }
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
