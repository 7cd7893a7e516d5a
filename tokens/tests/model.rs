//! Property tests: random interleavings of reserve / confirm / release /
//! extend / expire / grant / revoke / settle across a ledger and three
//! regions, checked after every step against a small reference model and the
//! conservation audit.
//!
//! Reserves come from three owners, with nonces that often collide (small
//! numbers, 0, numbers near `u64::MAX`) as well as random ones; releases,
//! confirms and extends sometimes come from a stranger, who must find
//! nothing and change nothing.

use proptest::prelude::*;
use reservoir_tokens::audit;
use reservoir_tokens::*;
use std::collections::BTreeMap;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const SKUS: [&str; 3] = ["hot", "warm", "cold"];
/// Owners that reserve.
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];
/// Who may try someone else's reservation: the owners, and one that never
/// reserves.
const STRANGERS: [&str; 4] = ["alice", "bob", "carol", "mallory"];

/// One random step; small integers are resolved against the current state.
#[derive(Clone, Debug)]
enum Step {
    Stock {
        sku: usize,
        delta: i64,
    },
    BeginGrant {
        region: usize,
        sku: usize,
        units: u64,
    },
    BeginRevoke {
        region: usize,
        sku: usize,
        units: u64,
    },
    Deliver {
        pick: usize,
        twice: bool,
    },
    Complete {
        pick: usize,
    },
    Reserve {
        region: usize,
        owner: usize,
        nonce: u64,
        lines: Vec<(usize, u64)>,
        partial: bool,
        ttl_ms: u64,
        reuse: bool,
    },
    Confirm {
        region: usize,
        pick: usize,
        order: u8,
        partial: bool,
        stranger: Option<usize>,
    },
    Release {
        region: usize,
        pick: usize,
        stranger: Option<usize>,
    },
    Extend {
        region: usize,
        pick: usize,
        ttl_ms: u64,
        stranger: Option<usize>,
    },
    Tick {
        ms: u64,
    },
    Settle {
        region: usize,
    },
    Ack {
        region: usize,
    },
}

/// A proposer's nonce: mostly from a handful of numbers (so ids collide and
/// are probed), 0, numbers at the top (so the probe wraps), or random.
fn nonce() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => (u64::MAX - 2)..=u64::MAX,
        2 => any::<u64>(),
    ]
}

/// Now and then, someone other than the hold's owner asks.
fn stranger() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.2, 0..STRANGERS.len())
}

fn step() -> impl Strategy<Value = Step> {
    let region = 0..REGIONS.len();
    let sku = 0..SKUS.len();
    let owner = 0..OWNERS.len();
    prop_oneof![
        2 => (sku.clone(), -20i64..60).prop_map(|(sku, d)| Step::Stock { sku, delta: if d == 0 { 1 } else { d } }),
        3 => (region.clone(), sku.clone(), 1u64..40).prop_map(|(region, sku, units)| Step::BeginGrant { region, sku, units }),
        1 => (region.clone(), sku.clone(), 1u64..40).prop_map(|(region, sku, units)| Step::BeginRevoke { region, sku, units }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, twice)| Step::Deliver { pick, twice }),
        3 => any::<usize>().prop_map(|pick| Step::Complete { pick }),
        8 => (region.clone(), owner, nonce(), prop::collection::vec((sku.clone(), 1u64..8), 1..4), any::<bool>(), prop_oneof![Just(0u64), 1u64..200], prop::bool::weighted(0.15))
            .prop_map(|(region, owner, nonce, lines, partial, ttl_ms, reuse)| Step::Reserve { region, owner, nonce, lines, partial, ttl_ms, reuse }),
        4 => (region.clone(), any::<usize>(), 0u8..3, any::<bool>(), stranger()).prop_map(|(region, pick, order, partial, stranger)| Step::Confirm { region, pick, order, partial, stranger }),
        2 => (region.clone(), any::<usize>(), stranger()).prop_map(|(region, pick, stranger)| Step::Release { region, pick, stranger }),
        1 => (region.clone(), any::<usize>(), 1u64..300, stranger()).prop_map(|(region, pick, ttl_ms, stranger)| Step::Extend { region, pick, ttl_ms, stranger }),
        2 => (1u64..150).prop_map(|ms| Step::Tick { ms }),
        2 => region.clone().prop_map(|region| Step::Settle { region }),
        2 => region.prop_map(|region| Step::Ack { region }),
    ]
}

/// A modelled reservation: (lines, state, expires_at_ms, order).
type ModelHold = (Vec<(String, u64)>, ReservationState, u64, Option<String>);
/// A remembered request: (lines, allow_partial, ttl_ms, reservation number).
type ModelRequest = (Vec<(usize, u64)>, bool, u64, u64);
/// The last request sent to a region, for replays: (id, lines, allow_partial, ttl_ms).
type LastRequest = (String, Vec<(usize, u64)>, bool, u64);

/// The reference model of one region: plain counters and a list of holds.
#[derive(Default)]
struct ModelRegion {
    available: BTreeMap<&'static str, u64>,
    held: BTreeMap<&'static str, u64>,
    confirmed: BTreeMap<&'static str, u64>,
    /// id → (lines, state, expires_at_ms, order)
    holds: BTreeMap<u64, ModelHold>,
    /// id → its owner (an index into [`OWNERS`])
    owners: BTreeMap<u64, usize>,
    /// (owner, request id) → the request
    requests: BTreeMap<(usize, String), ModelRequest>,
}

impl ModelRegion {
    /// The id a reserve with `nonce` gets: the nonce, or the next number
    /// above it (wrapping, never 0) that no kept reservation has. Nothing is
    /// pruned within a test's logical time, so the model's holds are the
    /// region's reservations.
    fn id_for(&self, nonce: u64) -> u64 {
        let mut id = nonce;
        while id == 0 || self.holds.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    /// The name `stranger` picks among [`STRANGERS`] other than `id`'s owner.
    fn stranger(&self, id: u64, stranger: usize) -> &'static str {
        let owner = OWNERS[self.owners[&id]];
        let others: Vec<&'static str> = STRANGERS.iter().copied().filter(|s| *s != owner).collect();
        others[stranger % others.len()]
    }
}

fn sku_name(s: &str) -> &'static str {
    SKUS.iter().find(|k| **k == s).expect("test SKU")
}

struct World {
    now_ms: u64,
    ledger: LedgerState,
    regions: Vec<RegionState>,
    models: Vec<ModelRegion>,
    /// Transfers begun at the ledger: (transfer, moved at the region if delivered).
    in_flight: Vec<(Transfer, Option<u64>)>,
    log: Vec<Vec<RegionCommand>>,
    ledger_log: Vec<LedgerCommand>,
    next_request: u64,
    last_request: Vec<Option<LastRequest>>,
}

impl World {
    fn new() -> World {
        World {
            now_ms: 1_000,
            ledger: LedgerState::new(),
            regions: REGIONS.iter().map(|r| RegionState::new(*r)).collect(),
            models: REGIONS.iter().map(|_| ModelRegion::default()).collect(),
            in_flight: Vec::new(),
            log: REGIONS.iter().map(|_| Vec::new()).collect(),
            ledger_log: Vec::new(),
            next_request: 0,
            last_request: REGIONS.iter().map(|_| None).collect(),
        }
    }

    /// Who asks about hold `id`: its owner, or the stranger picked.
    fn asker(&self, region: usize, id: u64, stranger: Option<usize>) -> (&'static str, bool) {
        let m = &self.models[region];
        match stranger {
            Some(s) => (m.stranger(id, s), true),
            None => (OWNERS[m.owners[&id]], false),
        }
    }

    /// A stranger's command on hold `id`: refused as not found, as if the
    /// hold did not exist, and the region unchanged but for its clock.
    fn refused_to_stranger(&mut self, region: usize, id: u64, op: RegionOp) {
        let mut before = self.regions[region].clone();
        let out = self.region(region, op);
        assert_eq!(
            out,
            Err(Rejection::ReservationNotFound {
                id: ReservationId(id).display(REGIONS[region])
            }),
            "a stranger's command on {id}"
        );
        // Bring the copy's clock along with a no-op, then compare.
        let now_ms = self.now_ms;
        before
            .apply(RegionCommand {
                now_ms,
                op: RegionOp::Settled { up_to_seq: 0 },
            })
            .expect("no-op");
        assert_eq!(before, self.regions[region], "a stranger changed {id}");
    }

    fn region(&mut self, r: usize, op: RegionOp) -> RegionOutcome {
        let cmd = RegionCommand {
            now_ms: self.now_ms,
            op,
        };
        self.log[r].push(cmd.clone());
        self.regions[r].apply(cmd)
    }

    fn ledger(&mut self, op: LedgerOp) -> LedgerOutcome {
        let cmd = LedgerCommand {
            now_ms: self.now_ms,
            op,
        };
        self.ledger_log.push(cmd.clone());
        self.ledger.apply(cmd)
    }

    fn run(&mut self, s: Step) {
        self.now_ms += 1;
        match s {
            Step::Stock { sku, delta } => {
                let id = format!("adj-{}", self.next_request);
                self.next_request += 1;
                let pool = self.ledger.sku(SKUS[sku]).map_or(0, |s| s.pool);
                let out = self.ledger(LedgerOp::AdjustStock {
                    request_id: id,
                    sku: SKUS[sku].into(),
                    delta,
                });
                let ok = delta > 0 || delta.unsigned_abs() <= pool;
                assert_eq!(out.is_ok(), ok, "adjust {delta} with pool {pool}: {out:?}");
            }
            Step::BeginGrant { region, sku, units } => {
                if let Ok(LedgerApplied::Begun(t)) = self.ledger(LedgerOp::BeginGrant {
                    region: REGIONS[region].into(),
                    sku: SKUS[sku].into(),
                    units,
                }) {
                    self.in_flight.push((t, None));
                }
            }
            Step::BeginRevoke { region, sku, units } => {
                if let Ok(LedgerApplied::Begun(t)) = self.ledger(LedgerOp::BeginRevoke {
                    region: REGIONS[region].into(),
                    sku: SKUS[sku].into(),
                    units_max: units,
                }) {
                    self.in_flight.push((t, None));
                }
            }
            Step::Deliver { pick, twice } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let i = pick % self.in_flight.len();
                let t = self.in_flight[i].0.clone();
                let r = REGIONS.iter().position(|n| *n == t.region).expect("known region");
                let done_below = self.ledger.done_below(&t.region);
                let op = match t.kind {
                    TransferKind::Grant => RegionOp::Grant {
                        transfer_id: t.id,
                        sku: t.sku.clone(),
                        units: t.units,
                        done_below,
                    },
                    TransferKind::Revoke => RegionOp::Revoke {
                        transfer_id: t.id,
                        sku: t.sku.clone(),
                        units_max: t.units,
                        done_below,
                    },
                };
                let times = if twice { 2 } else { 1 };
                for _ in 0..times {
                    let first = self.in_flight[i].1.is_none();
                    let out = self.region(r, op.clone());
                    let Ok(RegionApplied::Transfer { units, duplicate, .. }) = out else {
                        panic!("deliver {t:?}: {out:?}")
                    };
                    assert_eq!(duplicate, !first, "duplicate flag for {t:?}");
                    let m = &mut self.models[r];
                    let sku = sku_name(&t.sku);
                    if first {
                        let avail = m.available.entry(sku).or_default();
                        let moved = match t.kind {
                            TransferKind::Grant => {
                                *avail += t.units;
                                t.units
                            }
                            TransferKind::Revoke => {
                                let take = t.units.min(*avail);
                                *avail -= take;
                                take
                            }
                        };
                        assert_eq!(units, moved, "units moved by {t:?}");
                        self.in_flight[i].1 = Some(moved);
                    } else {
                        assert_eq!(
                            Some(units),
                            self.in_flight[i].1,
                            "a duplicate reports the recorded units"
                        );
                    }
                }
            }
            Step::Complete { pick } => {
                let delivered: Vec<usize> = (0..self.in_flight.len())
                    .filter(|&i| self.in_flight[i].1.is_some())
                    .collect();
                if delivered.is_empty() {
                    return;
                }
                let i = delivered[pick % delivered.len()];
                let (t, moved) = self.in_flight.remove(i);
                let op = match t.kind {
                    TransferKind::Grant => LedgerOp::CompleteGrant { transfer_id: t.id },
                    TransferKind::Revoke => LedgerOp::CompleteRevoke {
                        transfer_id: t.id,
                        units: moved.unwrap_or(0),
                    },
                };
                for dup in [false, true] {
                    let out = self.ledger(op.clone());
                    assert_eq!(
                        out,
                        Ok(LedgerApplied::Completed {
                            transfer_id: t.id,
                            duplicate: dup
                        })
                    );
                }
            }
            Step::Reserve {
                region,
                owner,
                nonce,
                lines,
                partial,
                ttl_ms,
                reuse,
            } => self.reserve(region, owner, nonce, lines, partial, ttl_ms, reuse),
            Step::Confirm {
                region,
                pick,
                order,
                partial,
                stranger,
            } => self.confirm(region, pick, order, partial, stranger),
            Step::Release {
                region,
                pick,
                stranger,
            } => {
                let Some(id) = self.pick(region, pick) else { return };
                let (owner, is_stranger) = self.asker(region, id, stranger);
                let op = RegionOp::Release {
                    id: ReservationId(id),
                    owner: owner.into(),
                };
                if is_stranger {
                    return self.refused_to_stranger(region, id, op);
                }
                let out = self.region(region, op);
                let now = self.now_ms;
                let m = &mut self.models[region];
                let (lines, state, expires, _) = m.holds.get_mut(&id).expect("picked");
                match *state {
                    ReservationState::Held => {
                        *state = if now >= *expires {
                            ReservationState::Expired
                        } else {
                            ReservationState::Released
                        };
                        for (sku, q) in lines.iter() {
                            *m.held.get_mut(sku_name(sku)).expect("held") -= q;
                            *m.available.entry(sku_name(sku)).or_default() += q;
                        }
                        assert!(out.is_ok(), "{out:?}");
                    }
                    ReservationState::Released | ReservationState::Expired => assert!(out.is_ok(), "{out:?}"),
                    _ => assert_eq!(out.unwrap_err().reason(), "RESERVATION_CONFIRMED"),
                }
            }
            Step::Extend {
                region,
                pick,
                ttl_ms,
                stranger,
            } => {
                let Some(id) = self.pick(region, pick) else { return };
                let (owner, is_stranger) = self.asker(region, id, stranger);
                let op = RegionOp::Extend {
                    id: ReservationId(id),
                    owner: owner.into(),
                    ttl_ms,
                };
                if is_stranger {
                    return self.refused_to_stranger(region, id, op);
                }
                let out = self.region(region, op);
                let now = self.now_ms;
                let (_, state, expires, _) = self.models[region].holds.get_mut(&id).expect("picked");
                match *state {
                    ReservationState::Held if now < *expires => {
                        *expires = now + ttl_ms;
                        assert!(out.is_ok(), "{out:?}");
                    }
                    ReservationState::Held | ReservationState::Expired => {
                        assert_eq!(out.unwrap_err().reason(), "RESERVATION_EXPIRED")
                    }
                    ReservationState::Released => {
                        assert_eq!(out.unwrap_err().reason(), "RESERVATION_RELEASED")
                    }
                    _ => assert_eq!(out.unwrap_err().reason(), "RESERVATION_CONFIRMED"),
                }
            }
            Step::Tick { ms } => {
                self.now_ms += ms;
                for r in 0..REGIONS.len() {
                    let out = self.region(r, RegionOp::Expire);
                    let now = self.now_ms;
                    let m = &mut self.models[r];
                    let mut expired = 0;
                    for (lines, state, expires, _) in m.holds.values_mut() {
                        if *state == ReservationState::Held && *expires <= now {
                            *state = ReservationState::Expired;
                            expired += 1;
                            for (sku, q) in lines.iter() {
                                *m.held.get_mut(sku_name(sku)).expect("held") -= q;
                                *m.available.entry(sku_name(sku)).or_default() += q;
                            }
                        }
                    }
                    assert_eq!(
                        out,
                        Ok(RegionApplied::Expired {
                            count: expired,
                            more_due: false
                        })
                    );
                }
            }
            Step::Settle { region } => {
                let watermark = self.ledger.watermark(REGIONS[region]);
                let entries: Vec<SettleEntry> = self.regions[region]
                    .outbox_after(watermark)
                    .map(|e| SettleEntry {
                        seq: e.seq,
                        lines: e.lines.clone(),
                    })
                    .collect();
                if entries.is_empty() {
                    return;
                }
                let n = entries.len();
                // Send the batch twice: the second is a no-op.
                let out = self.ledger(LedgerOp::Settle {
                    region: REGIONS[region].into(),
                    entries: entries.clone(),
                });
                assert!(
                    matches!(out, Ok(LedgerApplied::Settled { applied, .. }) if applied == n),
                    "{out:?}"
                );
                let out = self.ledger(LedgerOp::Settle {
                    region: REGIONS[region].into(),
                    entries,
                });
                assert!(
                    matches!(out, Ok(LedgerApplied::Settled { applied: 0, .. })),
                    "{out:?}"
                );
            }
            Step::Ack { region } => {
                let up_to_seq = self.ledger.watermark(REGIONS[region]);
                let acked = self.regions[region].settled_up_to();
                let out = self.region(region, RegionOp::Settled { up_to_seq });
                assert!(out.is_ok(), "{out:?}");
                let seqs: Vec<(u64, u64)> = self.log_outbox(region, acked, up_to_seq);
                let m = &mut self.models[region];
                for (_, id) in seqs {
                    let (lines, state, _, _) = m.holds.get_mut(&id).expect("confirmed");
                    assert_eq!(*state, ReservationState::Confirmed);
                    *state = ReservationState::Settled;
                    for (sku, q) in lines.iter() {
                        *m.confirmed.get_mut(sku_name(sku)).expect("confirmed") -= q;
                    }
                }
            }
        }
    }

    /// (seq, reservation) of the model's confirmed reservations settled by an ack.
    fn log_outbox(&self, _region: usize, _from: u64, _to: u64) -> Vec<(u64, u64)> {
        // The region has already dropped them; find them through the model:
        // confirmed reservations whose state in the real region is now settled.
        let r = &self.regions[_region];
        self.models[_region]
            .holds
            .iter()
            .filter(|(id, h)| {
                h.1 == ReservationState::Confirmed
                    && r.reservation(ReservationId(**id))
                        .is_some_and(|x| x.state == ReservationState::Settled)
            })
            .map(|(id, _)| (0, *id))
            .collect()
    }

    fn pick(&self, region: usize, pick: usize) -> Option<u64> {
        let holds = &self.models[region].holds;
        if holds.is_empty() {
            return None;
        }
        holds.keys().nth(pick % holds.len()).copied()
    }

    /// A reserve by `owner`. With `reuse`, the region's last request again
    /// (same request id and cart), now by `owner`: a retry when the owner is
    /// the same, a new reservation of `owner`'s when not.
    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &mut self,
        region: usize,
        owner: usize,
        nonce: u64,
        lines: Vec<(usize, u64)>,
        partial: bool,
        ttl_ms: u64,
        reuse: bool,
    ) {
        // Distinct SKUs only (the edge refuses duplicates; tested elsewhere).
        let mut seen = Vec::new();
        let lines: Vec<(usize, u64)> = lines
            .into_iter()
            .filter(|(s, _)| {
                !seen.contains(s) && {
                    seen.push(*s);
                    true
                }
            })
            .collect();
        let (request_id, lines, partial, ttl_ms) = match (&self.last_request[region], reuse) {
            (Some(prev), true) => prev.clone(),
            _ => {
                self.next_request += 1;
                (format!("req-{}", self.next_request), lines, partial, ttl_ms)
            }
        };
        let op_lines: Vec<Line> = lines.iter().map(|(s, q)| Line::new(SKUS[*s], *q)).collect();
        let out = self.region(
            region,
            RegionOp::Reserve {
                owner: OWNERS[owner].into(),
                request_id: request_id.clone(),
                lines: op_lines,
                ttl_ms,
                allow_partial: partial,
                nonce,
            },
        );
        let now = self.now_ms;
        let m = &mut self.models[region];
        let key = (owner, request_id.clone());
        if let Some(&(_, _, _, id)) = m.requests.get(&key) {
            let Ok(RegionApplied::Reservation(r)) = out else {
                panic!("replay: {out:?}")
            };
            assert_eq!(
                r.id,
                ReservationId(id),
                "a replay returns the original reservation"
            );
            assert_eq!(r.owner, OWNERS[owner]);
            return;
        }
        let take: Vec<u64> = lines
            .iter()
            .map(|(s, q)| {
                let a = m.available.get(SKUS[*s]).copied().unwrap_or(0);
                if partial {
                    (*q).min(a)
                } else if *q <= a {
                    *q
                } else {
                    0
                }
            })
            .collect();
        let all = lines.iter().zip(&take).all(|((_, q), t)| q == t);
        let ok = if partial { take.iter().any(|&t| t > 0) } else { all };
        match out {
            Ok(RegionApplied::Reservation(r)) => {
                assert!(ok, "model refuses {lines:?} with {:?}", m.available);
                let id = m.id_for(nonce);
                assert_eq!(r.id, ReservationId(id), "the id for nonce {nonce}");
                assert_eq!(r.owner, OWNERS[owner]);
                let ttl = if ttl_ms == 0 {
                    limits::TTL_DEFAULT_MS
                } else {
                    ttl_ms
                };
                let mut held = Vec::new();
                for ((s, _), t) in lines.iter().zip(&take) {
                    if *t > 0 {
                        *m.available.get_mut(SKUS[*s]).expect("had") -= t;
                        *m.held.entry(SKUS[*s]).or_default() += t;
                        held.push((SKUS[*s].to_string(), *t));
                    }
                }
                let real: Vec<(String, u64)> = r.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
                assert_eq!(real, held);
                m.holds
                    .insert(id, (held, ReservationState::Held, now + ttl, None));
                m.owners.insert(id, owner);
                m.requests.insert(key, (lines.clone(), partial, ttl_ms, id));
                self.last_request[region] = Some((request_id, lines, partial, ttl_ms));
            }
            Err(e) => {
                assert!(
                    !ok,
                    "model accepts {lines:?} with {:?}, real says {e}",
                    m.available
                );
                assert_eq!(e.reason(), "INSUFFICIENT_STOCK");
            }
            other => panic!("{other:?}"),
        }
    }

    fn confirm(&mut self, region: usize, pick: usize, order: u8, partial: bool, stranger: Option<usize>) {
        let Some(id) = self.pick(region, pick) else { return };
        let (owner, is_stranger) = self.asker(region, id, stranger);
        let order_id = format!("order-{order}");
        let held_lines = self.models[region].holds[&id].0.clone();
        let lines: Vec<Line> = if partial {
            held_lines
                .iter()
                .take(1)
                .map(|(s, q)| Line::new(s.clone(), q.div_ceil(2)))
                .collect()
        } else {
            Vec::new()
        };
        let op = RegionOp::Confirm {
            id: ReservationId(id),
            owner: owner.into(),
            order_id: order_id.clone(),
            lines: lines.clone(),
        };
        if is_stranger {
            return self.refused_to_stranger(region, id, op);
        }
        let out = self.region(region, op);
        let now = self.now_ms;
        let m = &mut self.models[region];
        let (hl, state, expires, ord) = m.holds.get_mut(&id).expect("picked");
        match *state {
            ReservationState::Held if now < *expires => {
                let mut sold = Vec::new();
                for (sku, q) in hl.iter() {
                    let want = if lines.is_empty() {
                        *q
                    } else {
                        lines.iter().find(|l| &l.sku == sku).map_or(0, |l| l.quantity)
                    };
                    let s = want.min(*q);
                    let k = sku_name(sku);
                    *m.held.get_mut(k).expect("held") -= q;
                    *m.confirmed.entry(k).or_default() += s;
                    *m.available.entry(k).or_default() += q - s;
                    if s > 0 {
                        sold.push((sku.clone(), s));
                    }
                }
                *hl = sold;
                *state = ReservationState::Confirmed;
                *ord = Some(order_id);
                assert!(out.is_ok(), "{out:?}");
            }
            ReservationState::Held | ReservationState::Expired => {
                assert_eq!(out.unwrap_err().reason(), "RESERVATION_EXPIRED")
            }
            ReservationState::Released => assert_eq!(out.unwrap_err().reason(), "RESERVATION_RELEASED"),
            ReservationState::Confirmed | ReservationState::Settled => {
                if ord.as_deref() == Some(order_id.as_str()) {
                    assert!(out.is_ok(), "{out:?}");
                } else {
                    assert_eq!(out.unwrap_err().reason(), "RESERVATION_CONFIRMED");
                }
            }
        }
    }

    /// Every check that must hold after any step.
    fn check(&self) {
        let refs: Vec<&RegionState> = self.regions.iter().collect();
        let sheet = audit::balance(&self.ledger, &refs);
        assert!(sheet.balanced(), "audit drift: {sheet:#?}");
        for (r, (real, model)) in self.regions.iter().zip(&self.models).enumerate() {
            for sku in SKUS {
                let b = real.bucket(sku).cloned().unwrap_or_default();
                let get = |m: &BTreeMap<&'static str, u64>| m.get(sku).copied().unwrap_or(0);
                assert_eq!(
                    (b.available, b.held, b.confirmed),
                    (get(&model.available), get(&model.held), get(&model.confirmed)),
                    "{} {sku}: real vs model",
                    REGIONS[r]
                );
                // No reservation's units are counted twice: the held and
                // confirmed counters are exactly the sums over reservations.
                let sum = |st: ReservationState| -> u64 {
                    real.reservations()
                        .filter(|x| x.state == st)
                        .flat_map(|x| x.lines)
                        .filter(|l| l.sku == sku)
                        .map(|l| l.quantity)
                        .sum()
                };
                assert_eq!(
                    b.held,
                    sum(ReservationState::Held),
                    "{} {sku}: held vs holds",
                    REGIONS[r]
                );
                assert_eq!(
                    b.confirmed,
                    sum(ReservationState::Confirmed),
                    "{} {sku}: confirmed vs sales",
                    REGIONS[r]
                );
                assert_eq!(b.books_drift(), 0);
            }
            // Each confirmed reservation has exactly one outbox entry.
            let mut outboxed: Vec<ReservationId> = real.outbox_after(0).map(|e| e.reservation).collect();
            outboxed.sort();
            let mut confirmed: Vec<ReservationId> = real
                .reservations()
                .filter(|x| x.state == ReservationState::Confirmed)
                .map(|x| x.id)
                .collect();
            confirmed.sort();
            assert_eq!(outboxed, confirmed, "{}: outbox vs confirmed", REGIONS[r]);
            for (id, (_, state, _, _)) in &model.holds {
                let owner = OWNERS[model.owners[id]];
                let x = real
                    .reservation_of(ReservationId(*id), owner)
                    .expect("kept within retention");
                assert_eq!(x.state, *state, "{} reservation {id}", REGIONS[r]);
                assert_eq!(x.owner, owner);
                for other in STRANGERS.iter().filter(|s| **s != owner) {
                    assert_eq!(real.reservation_of(ReservationId(*id), other), None);
                }
            }
            assert_eq!(real.reservations_kept(), model.holds.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any interleaving keeps the model, the audit and the no-double-count checks.
    #[test]
    fn interleavings_keep_the_books(steps in prop::collection::vec(step(), 1..120)) {
        let mut w = World::new();
        w.check();
        for s in steps {
            w.run(s);
            w.check();
        }
    }

    /// Two replicas that apply the same commands serialize to the same bytes.
    #[test]
    fn replicas_are_identical(steps in prop::collection::vec(step(), 1..80)) {
        let mut w = World::new();
        for s in steps {
            w.run(s);
        }
        for (r, log) in w.log.iter().enumerate() {
            let mut replica = RegionState::new(REGIONS[r]);
            for cmd in log {
                let _ = replica.apply(cmd.clone());
            }
            prop_assert_eq!(serde_json::to_vec(&replica).unwrap(), serde_json::to_vec(&w.regions[r]).unwrap());
            prop_assert_eq!(bincode::serialize(&replica).unwrap(), bincode::serialize(&w.regions[r]).unwrap());
        }
        let mut ledger = LedgerState::new();
        for cmd in &w.ledger_log {
            let _ = ledger.apply(cmd.clone());
        }
        prop_assert_eq!(serde_json::to_vec(&ledger).unwrap(), serde_json::to_vec(&w.ledger).unwrap());
    }
}
