//! The checkers. The clients' history ([`History`]) is checked as answers
//! arrive; the cluster's state ([`check_state`]) after every step of the
//! checker's clock and at the end:
//!
//! - **No request id reserved twice**: every acknowledged reserve with one
//!   request id names the same reservation.
//! - **Reads that claim to be current are linearizable**: a current read
//!   shows every acknowledged write that finished before it began (a hold,
//!   a confirm, a release).
//! - **Every reservation's history is legal**: held → confirmed → settled,
//!   held → released / expired; what a read shows follows what the reads
//!   before it showed; a confirm acknowledged is never undone; nothing is
//!   confirmed or released that no client asked for.
//! - **No oversell at any instant**: units sold (confirmed or settled, in
//!   every region) never exceed the stock; nor do acknowledged confirms.
//! - **Conservation**: the audit of the ledger and every region balances,
//!   computed from the most advanced replica of each group at one instant
//!   (the simulation can read every node at once: no transfer is ever half
//!   seen).
//! - **Replicas agree**: two replicas of a group that applied the same
//!   index hold the same state, byte for byte.
//! - **No acknowledged reservation lost** (at the end): every one is in its
//!   region's state, in a state that fits what its clients were told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use reservoir_tokens::audit;
use reservoir_tokens::{LedgerState, RegionState, ReservationState};

use crate::cluster::{Directory, REGIONS};
use crate::trace::Trace;

/// What clients were told about one reservation.
#[derive(Clone, Debug, Default)]
pub struct Told {
    /// Its region.
    pub region: String,
    /// Its units per SKU.
    pub lines: Vec<(String, u64)>,
    /// When its reserve was acknowledged (ms).
    pub reserved_at: u64,
    /// When a confirm was acknowledged.
    pub confirmed_at: Option<u64>,
    /// When a release was acknowledged, and the state it answered
    /// (released, or expired before the release came).
    pub released_at: Option<(u64, ReservationState)>,
    /// A confirm was sent (acknowledged or not).
    pub confirm_sent: bool,
    /// A release was sent (acknowledged or not).
    pub release_sent: bool,
    /// The latest-ending read: when it ended and what it showed.
    pub last_read: Option<(u64, ReservationState)>,
}

#[derive(Default)]
struct Record {
    reservations: BTreeMap<String, Told>,
    requests: BTreeMap<String, String>,
    confirmed_units: BTreeMap<String, u64>,
    violations: Vec<String>,
    acked: u64,
    reads: u64,
}

/// The clients' history and the checker's findings, shared.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Record>>,
    stock: Arc<BTreeMap<String, u64>>,
    trace: Trace,
}

/// Whether a reservation seen in state `before` may later be seen in `after`.
fn may_follow(before: ReservationState, after: ReservationState) -> bool {
    use ReservationState::*;
    match before {
        Held => true,
        Confirmed => matches!(after, Confirmed | Settled),
        Settled => after == Settled,
        Released => after == Released,
        Expired => after == Expired,
    }
}

impl History {
    /// An empty history for a cluster stocked with `stock` (SKU → units).
    pub fn new(stock: BTreeMap<String, u64>, trace: Trace) -> History {
        History {
            inner: Arc::new(Mutex::new(Record::default())),
            stock: Arc::new(stock),
            trace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a violation found at `at_ms`.
    pub fn violation(&self, at_ms: u64, what: String) {
        self.trace.event(at_ms, format!("VIOLATION {what}"));
        self.lock().violations.push(format!("at {at_ms} ms: {what}"));
    }

    /// Every violation so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// (acknowledged reserves, current reads) so far.
    pub fn counts(&self) -> (u64, u64) {
        let r = self.lock();
        (r.acked, r.reads)
    }

    /// A reserve with `request_id` was acknowledged as `id` at `at_ms`.
    pub fn reserved(&self, at_ms: u64, request_id: &str, id: &str, region: &str, lines: &[(String, u64)]) {
        let clash = {
            let mut r = self.lock();
            r.acked += 1;
            match r.requests.get(request_id) {
                Some(first) if first != id => Some(first.clone()),
                Some(_) => None,
                None => {
                    r.requests.insert(request_id.to_string(), id.to_string());
                    r.reservations.insert(
                        id.to_string(),
                        Told {
                            region: region.to_string(),
                            lines: lines.to_vec(),
                            reserved_at: at_ms,
                            ..Told::default()
                        },
                    );
                    None
                }
            }
        };
        if let Some(first) = clash {
            self.violation(
                at_ms,
                format!("request id {request_id} reserved twice: {first} and {id}"),
            );
        }
    }

    /// A confirm (or release) of `id` was sent.
    pub fn sent(&self, id: &str, confirm: bool) {
        if let Some(t) = self.lock().reservations.get_mut(id) {
            if confirm {
                t.confirm_sent = true;
            } else {
                t.release_sent = true;
            }
        }
    }

    /// A confirm of `id` was acknowledged at `at_ms`.
    pub fn confirmed(&self, at_ms: u64, id: &str) {
        let over = {
            let mut r = self.lock();
            let Some(t) = r.reservations.get_mut(id) else {
                return;
            };
            if t.confirmed_at.is_some() {
                return;
            }
            t.confirmed_at = Some(at_ms);
            let lines = t.lines.clone();
            let mut over = Vec::new();
            for (sku, units) in lines {
                let total = r.confirmed_units.entry(sku.clone()).or_default();
                *total += units;
                let stock = self.stock.get(&sku).copied().unwrap_or(0);
                if *total > stock {
                    over.push(format!("{sku}: {total} units confirmed, {stock} in stock"));
                }
            }
            over
        };
        for o in over {
            self.violation(at_ms, format!("oversell (acknowledged confirms): {o}"));
        }
    }

    /// A release of `id` was acknowledged at `at_ms`, answering `state`.
    pub fn released(&self, at_ms: u64, id: &str, state: ReservationState) {
        if let Some(t) = self.lock().reservations.get_mut(id) {
            t.released_at.get_or_insert((at_ms, state));
        }
    }

    /// A current read of `id` that began at `start_ms` and ended at
    /// `end_ms` showed `seen` (`None`: not found).
    pub fn read(&self, start_ms: u64, end_ms: u64, id: &str, seen: Option<ReservationState>, node: u64) {
        let problem = {
            let mut r = self.lock();
            r.reads += 1;
            let Some(t) = r.reservations.get_mut(id) else {
                return;
            };
            let problem = match seen {
                None if t.reserved_at < start_ms => {
                    Some("an acknowledged reservation is not found by a current read".to_string())
                }
                None => None,
                Some(state) => {
                    use ReservationState::*;
                    if t.confirmed_at.is_some_and(|at| at < start_ms) && !matches!(state, Confirmed | Settled)
                    {
                        Some(format!(
                            "a current read shows {state:?} after its confirm was acknowledged"
                        ))
                    } else if let Some((at, ended)) = t.released_at
                        && at < start_ms
                        && state != ended
                    {
                        Some(format!(
                            "a current read shows {state:?} after its release was answered {ended:?}"
                        ))
                    } else if matches!(state, Confirmed | Settled) && !t.confirm_sent {
                        Some(format!("shows {state:?} but no client confirmed it"))
                    } else if state == Released && !t.release_sent {
                        Some("shows Released but no client released it".to_string())
                    } else if let Some((_, before)) = t.last_read.filter(|(end, _)| *end < start_ms)
                        && !may_follow(before, state)
                    {
                        Some(format!(
                            "a current read shows {state:?} after an earlier read showed {before:?}"
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(state) = seen
                && t.last_read.is_none_or(|(end, _)| end <= end_ms)
            {
                t.last_read = Some((end_ms, state));
            }
            problem
        };
        if let Some(p) = problem {
            self.violation(end_ms, format!("{id} (read on node {node}): {p}"));
        }
    }

    /// Acknowledged reservations, for clients that read or resend them.
    pub fn reservations_in(&self, region: &str) -> Vec<String> {
        self.lock()
            .reservations
            .iter()
            .filter(|(_, t)| t.region == region)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every acknowledged reservation.
    pub fn all(&self) -> Vec<(String, Told)> {
        self.lock()
            .reservations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The most advanced replica of every group: (applied index, state) by
/// region name, the ledger's, and the replicas that disagree.
pub type Newest = (
    BTreeMap<String, (u64, RegionState)>,
    Option<(u64, LedgerState)>,
    Vec<String>,
);

/// The most advanced replica of every group now: (region states by name,
/// ledger state); `None` for a group with no replica up. Also checks that
/// replicas at the same applied index agree, byte for byte.
pub fn newest_states(directory: &Directory) -> Newest {
    let mut regions: BTreeMap<String, Vec<(u64, u64, RegionState)>> = BTreeMap::new();
    let mut ledgers: Vec<(u64, u64, LedgerState)> = Vec::new();
    for (id, h) in directory.all() {
        if let Ok((state, Some(index))) = h.region.read_indexed(|s| s.clone()) {
            regions
                .entry(state.region().to_string())
                .or_default()
                .push((id, index, state));
        }
        if let Some(l) = &h.ledger
            && let Ok((state, Some(index))) = l.read_indexed(|s| s.clone())
        {
            ledgers.push((id, index, state));
        }
    }
    let mut problems = Vec::new();
    let mut agree = |group: &str, replicas: &[(u64, u64, Vec<u8>)]| {
        for a in replicas {
            for b in replicas {
                if a.0 < b.0 && a.1 == b.1 && a.2 != b.2 {
                    problems.push(format!(
                        "{group}: nodes {} and {} applied index {} and hold different states",
                        a.0, b.0, a.1
                    ));
                }
            }
        }
    };
    let mut newest_regions = BTreeMap::new();
    for (region, replicas) in regions {
        let encoded: Vec<(u64, u64, Vec<u8>)> = replicas
            .iter()
            .map(|(id, i, s)| (*id, *i, bincode::serialize(s).unwrap_or_default()))
            .collect();
        agree(&region, &encoded);
        if let Some((_, index, state)) = replicas.into_iter().max_by_key(|(id, i, _)| (*i, u64::MAX - id)) {
            newest_regions.insert(region, (index, state));
        }
    }
    let encoded: Vec<(u64, u64, Vec<u8>)> = ledgers
        .iter()
        .map(|(id, i, s)| (*id, *i, bincode::serialize(s).unwrap_or_default()))
        .collect();
    agree("ledger", &encoded);
    let ledger = ledgers
        .into_iter()
        .max_by_key(|(id, i, _)| (*i, u64::MAX - id))
        .map(|(_, i, s)| (i, s));
    (newest_regions, ledger, problems)
}

/// Every group's state as its current leader holds it, if every group has
/// one: the leader of the highest term among the nodes up, that heard from
/// a quorum within [`QUORUM_FRESH_MS`] and has applied its whole log. Such
/// a leader's log holds every committed entry (leader completeness) and
/// its state all of them, so the groups' states are what any other group
/// can have learned of them. `None` when some group has no such leader
/// now (a replica that is merely the most advanced may have missed entries
/// that replicas now down had applied).
pub fn leader_states(directory: &Directory) -> Option<(Vec<RegionState>, LedgerState)> {
    fn current<SM: reservoir_raft::GroupMachine + Clone>(
        groups: Vec<&reservoir_raft::Group<SM>>,
    ) -> Option<SM> {
        let mut best: Option<(u64, SM)> = None;
        let mut top_term = 0;
        for g in groups {
            let status = g.status();
            top_term = top_term.max(status.term);
            if status.role != reservoir_raft::Role::Leader
                || status
                    .millis_since_quorum_ack
                    .is_none_or(|ms| ms > QUORUM_FRESH_MS)
                || status.applied_index != status.last_log_index
            {
                continue;
            }
            if best.as_ref().is_none_or(|(term, _)| status.term > *term)
                && let Ok(state) = g.read(|s| s.clone())
            {
                best = Some((status.term, state));
            }
        }
        best.filter(|(term, _)| *term == top_term).map(|(_, s)| s)
    }
    let all = directory.all();
    let mut regions = Vec::new();
    for region in REGIONS {
        let groups = all
            .iter()
            .filter(|(id, _)| crate::cluster::region_of(*id) == region)
            .map(|(_, h)| h.region.as_ref())
            .collect();
        regions.push(current(groups)?);
    }
    let ledger = current(all.iter().filter_map(|(_, h)| h.ledger.as_deref()).collect())?;
    Some((regions, ledger))
}

/// How recently a leader must have heard from a quorum to count as
/// current for [`leader_states`].
pub const QUORUM_FRESH_MS: u64 = 100;

/// The state checks at one instant: replicas agree, no oversell,
/// conservation (when every group has a current leader, see
/// [`leader_states`]). Returns the problems.
pub fn check_state(directory: &Directory, stock: &BTreeMap<String, u64>) -> Vec<String> {
    let (regions, _, mut problems) = newest_states(directory);
    let mut sold: BTreeMap<String, u64> = BTreeMap::new();
    for (_, state) in regions.values() {
        for (sku, bucket) in state.buckets() {
            *sold.entry(sku.clone()).or_default() += bucket.confirmed + bucket.settled;
        }
    }
    for (sku, units) in &sold {
        let stock = stock.get(sku).copied().unwrap_or(0);
        if *units > stock {
            problems.push(format!("oversell: {units} units of {sku} sold, {stock} in stock"));
        }
    }
    if let Some((regions, ledger)) = leader_states(directory) {
        let states: Vec<&RegionState> = regions.iter().collect();
        let sheet = audit::balance(&ledger, &states);
        if !sheet.balanced() {
            let drifting: Vec<String> = sheet
                .skus
                .iter()
                .filter(|s| !s.balanced())
                .map(|s| format!("{} drift {} (ledger {})", s.sku, s.drift, s.ledger_drift))
                .collect();
            problems.push(format!(
                "conservation: the audit does not balance: {} {}",
                drifting.join(", "),
                if sheet.missing_regions.is_empty() {
                    String::new()
                } else {
                    format!("missing {:?}", sheet.missing_regions)
                }
            ));
        }
    }
    problems
}

/// The end checks of acknowledged reservations: each is in its region's
/// newest state, in a state that fits what clients were told. With
/// `settled`, every acknowledged confirm must be settled by now.
pub fn check_acknowledged(directory: &Directory, history: &History, settled: bool) -> Vec<String> {
    let (regions, _, _) = newest_states(directory);
    let mut problems = Vec::new();
    for (id, told) in history.all() {
        let Some((_, state)) = regions.get(&told.region) else {
            problems.push(format!("{id}: no replica of {} is up", told.region));
            continue;
        };
        let Ok(rid) = reservoir_tokens::region::parse_reservation_id(&told.region, &id) else {
            problems.push(format!("{id}: not a reservation id of {}", told.region));
            continue;
        };
        use ReservationState::*;
        match state.reservation(rid).map(|r| r.state) {
            None => problems.push(format!("{id}: acknowledged, and lost (not in {})", told.region)),
            Some(s) if told.confirmed_at.is_some() && !matches!(s, Confirmed | Settled) => {
                problems.push(format!("{id}: confirm acknowledged, now {s:?}"))
            }
            Some(s) if told.confirmed_at.is_some() && settled && s != Settled => {
                problems.push(format!("{id}: confirmed and never settled ({s:?})"))
            }
            Some(s) if told.released_at.is_some_and(|(_, ended)| ended != s) => problems.push(format!(
                "{id}: release answered {:?}, now {s:?}",
                told.released_at
            )),
            Some(s @ (Confirmed | Settled)) if !told.confirm_sent => {
                problems.push(format!("{id}: {s:?} but no client confirmed it"))
            }
            Some(Released) if !told.release_sent => problems.push(format!("{id}: released by no client")),
            Some(_) => {}
        }
    }
    problems
}
