//! Time, behind a trait: the wall clock and a monotonic clock ([`Clock`]),
//! which a simulation swaps for simulated ones, and a group's bounded
//! logical time ([`GroupClock`]): what a leader stamps on the commands it
//! proposes. Beside them, the other thing a proposer draws from outside the
//! state machine: a new reservation's nonce.
//!
//! # Bounded time
//!
//! A group's state keeps `clock = max(clock, now_ms)` over the stamps of the
//! commands it applies, and expiry, TTLs and retention all run on that
//! logical clock. A stamp straight from the leader's wall clock would let
//! one node's clock move everyone's time: an hour ahead expires every hold
//! with less than an hour left and ages out every remembered request id at
//! once; a clock in 2100 freezes expiry for good. So a stamp is bounded:
//!
//! - Every node keeps an *estimate* of the group's time: the newest logical
//!   clock it has seen applied, plus the monotonic time since it saw it.
//! - A leader *anchors* on its estimate when its term begins (never below
//!   the state's clock) and from then on lets time run at the rate of its
//!   monotonic clock: its *base* is the anchor plus the monotonic time
//!   since. A stamp is its wall clock clamped to `[base, base +
//!   MAX_LEAD_MS]`. A wall clock behind (or stopped, or before 1970) stamps
//!   `base`: time still runs at the real rate. A wall clock ahead (an hour,
//!   or 2100) stamps at most `base + MAX_LEAD_MS`: the logical clock may
//!   run ahead of real time by at most [`MAX_LEAD_MS`] per term that node
//!   leads, never by its error.
//! - The anchor is not moved by the leader's own stamps (that would let a
//!   fast clock ratchet time forward by `MAX_LEAD_MS` per commit), only by
//!   a new term.
//! - The skew, `wall - base` (or `wall - estimate` on a follower), measured
//!   every [`OBSERVE_INTERVAL`], is the gauge
//!   `reservoir_clock_skew_ms{group}`; beyond `MAX_LEAD_MS` the node logs a
//!   warning (at most one a minute) and counts it in
//!   `reservoir_clock_skew_warnings_total{group}`.
//!
//! A fresh group (its log holds nothing but its start, and no time was
//! stamped) starts on its first leader's wall clock, so its logical time
//! reads as Unix time from the start; that first leader's clock error, if
//! any, is the group's from then on (later leaders keep to the bound).
//!
//! What this gives up: time the *whole* group was down does not count (a
//! node that starts estimates from the clock it replayed), so after an
//! outage of every node of a group its logical clock runs behind the wall
//! clock by the outage, less `MAX_LEAD_MS` per term; holds do not age while
//! nobody could serve them. One node's outage costs at most a second: an
//! idle region's leader moves the logical clock at least every second
//! (`CLOCK_TICK_MS`), and the others keep the estimate. What is compared
//! across groups (gossip markers) uses the wall clock, not group time.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Log entries a group's log holds before anything was ever stamped: its
/// first membership and a leader's blank entry or two.
pub const FRESH_LOG_ENTRIES_MAX: u64 = 3;
/// The most a leader's wall clock may put the group's logical time ahead of
/// the monotonic time since its term began.
pub const MAX_LEAD_MS: u64 = 1_000;
/// How often a node observes its group's applied logical clock.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(50);
/// At most one skew warning per group in this time.
pub const SKEW_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Wall-clock time in milliseconds since the Unix epoch, and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock now (it may jump, run fast or slow, or be wrong).
    fn now_ms(&self) -> u64;
    /// Monotonic milliseconds since an arbitrary start: never goes back.
    fn monotonic_ms(&self) -> u64;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken machine; time 0 keeps the state's
        // logical clock (max of all stamps) moving forward regardless.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// One group's bounded logical time on one node (see the module doc).
pub struct GroupClock {
    group: String,
    clock: Arc<dyn Clock>,
    state: Mutex<Estimate>,
}

#[derive(Debug, Default)]
struct Estimate {
    /// The newest logical clock seen applied, and when (monotonic ms).
    seen_ms: u64,
    seen_at: u64,
    /// The leader's anchor: the term it was taken in, the logical time and
    /// when (monotonic ms).
    term: Option<u64>,
    anchor_ms: u64,
    anchor_at: u64,
    /// When the last skew warning was logged (monotonic ms).
    warned_at: Option<u64>,
}

impl Estimate {
    /// The group's time at monotonic `now`, as last seen applied.
    fn estimate(&self, now: u64) -> u64 {
        self.seen_ms.saturating_add(now.saturating_sub(self.seen_at))
    }

    /// The leader's base at monotonic `now`: its anchor plus the time since.
    fn base(&self, now: u64) -> u64 {
        self.anchor_ms.saturating_add(now.saturating_sub(self.anchor_at))
    }

    /// A logical clock applied at monotonic `now`: moves the estimate only
    /// forward.
    fn observe(&mut self, applied_ms: u64, now: u64) {
        if applied_ms > self.estimate(now) {
            self.seen_ms = applied_ms;
            self.seen_at = now;
        }
    }
}

impl GroupClock {
    /// The clock of `group` over `clock`, starting from the logical time
    /// `applied_ms` the node replayed.
    pub fn new(group: impl Into<String>, clock: Arc<dyn Clock>, applied_ms: u64) -> GroupClock {
        let seen_at = clock.monotonic_ms();
        GroupClock {
            group: group.into(),
            clock,
            state: Mutex::new(Estimate {
                seen_ms: applied_ms,
                seen_at,
                ..Estimate::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's wall clock, as is.
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Notes the group's logical clock as applied here (call often: every
    /// [`OBSERVE_INTERVAL`], and before stamping). Only a clock ahead of the
    /// estimate moves it, so the estimate never steps back.
    pub fn observe(&self, applied_ms: u64) {
        let now = self.clock.monotonic_ms();
        self.lock().observe(applied_ms, now);
    }

    /// This node's estimate of the group's time: the newest logical clock
    /// seen applied plus the monotonic time since. A follower's "now".
    pub fn estimate_ms(&self) -> u64 {
        let now = self.clock.monotonic_ms();
        self.lock().estimate(now)
    }

    /// The stamp for a command this node proposes as leader in `term`, with
    /// the state's logical clock at `applied_ms`: its wall clock, clamped to
    /// `[base, base + MAX_LEAD_MS]` (see the module doc).
    ///
    /// `log_is_new` is asked once per term, when the anchor is taken and
    /// this node has seen no time yet: true when the group's log holds
    /// nothing but its start (see [`FRESH_LOG_ENTRIES_MAX`]), so the group
    /// never had a time. Only then does the anchor take the wall clock; a
    /// node that restarted and has not yet applied its log again is not
    /// fresh, and keeps to the bound.
    pub fn stamp_ms(&self, term: u64, applied_ms: u64, log_is_new: impl FnOnce() -> bool) -> u64 {
        let now = self.clock.monotonic_ms();
        let wall = self.clock.now_ms();
        let mut e = self.lock();
        e.observe(applied_ms, now);
        if e.term != Some(term) {
            e.term = Some(term);
            // A group that never had a time (a fresh one: nothing stamped
            // yet) starts on its first leader's wall clock; every later
            // term anchors on the group's own time.
            e.anchor_ms = if e.seen_ms == 0 && applied_ms == 0 && log_is_new() {
                wall
            } else {
                e.estimate(now).max(applied_ms)
            };
            e.anchor_at = now;
        }
        let base = e.base(now);
        wall.clamp(base, base.saturating_add(MAX_LEAD_MS))
    }

    /// Reports how far this node's wall clock is from the group's time: its
    /// base if it leads in `leader_term` (and has stamped in it), else its
    /// estimate. Called by [`observe_forever`], not on every stamp.
    pub fn report_skew(&self, leader_term: Option<u64>) {
        let now = self.clock.monotonic_ms();
        let wall = self.clock.now_ms();
        let group = {
            let e = self.lock();
            match leader_term {
                Some(term) if e.term == Some(term) => e.base(now),
                _ => e.estimate(now),
            }
        };
        self.skew(wall, group, now);
    }

    /// Records `wall - group` and warns when it is beyond [`MAX_LEAD_MS`].
    fn skew(&self, wall: u64, group: u64, now: u64) {
        let skew = wall as i128 - group as i128;
        metrics::gauge!("reservoir_clock_skew_ms", "group" => self.group.clone()).set(skew as f64);
        if skew.unsigned_abs() <= u128::from(MAX_LEAD_MS) {
            return;
        }
        let mut e = self.lock();
        let interval = SKEW_WARNING_INTERVAL.as_millis() as u64;
        if e.warned_at.is_some_and(|at| now.saturating_sub(at) < interval) {
            return;
        }
        e.warned_at = Some(now);
        drop(e);
        metrics::counter!("reservoir_clock_skew_warnings_total", "group" => self.group.clone()).increment(1);
        tracing::warn!(
            group = %self.group,
            skew_ms = skew as i64,
            group_time_ms = group,
            lead_max_ms = MAX_LEAD_MS,
            "this node's wall clock is skew_ms off the group's time: either this host's clock is wrong \
             (check NTP) or every node of the group was down for that long; stamps are bounded to \
             lead_max_ms ahead of the group's time"
        );
    }
}

/// The time of `group` on this node, from `time`: the bounded stamp if this
/// node leads it, else the estimate. `applied` reads the state's logical
/// clock.
pub fn group_now<SM: reservoir_raft::GroupMachine>(
    time: &GroupClock,
    group: &reservoir_raft::Group<SM>,
    applied: impl FnOnce(&SM) -> u64,
) -> u64 {
    let applied_ms = group.read(applied).unwrap_or(0);
    match group.leader_term() {
        Some(term) => time.stamp_ms(term, applied_ms, || {
            group.status().last_log_index.unwrap_or(0) <= FRESH_LOG_ENTRIES_MAX
        }),
        None => {
            time.observe(applied_ms);
            time.estimate_ms()
        }
    }
}

/// Observes `group`'s applied logical clock into `time` every
/// [`OBSERVE_INTERVAL`], so the estimate is fresh when this node becomes
/// its leader, and reports the skew. Runs until the process ends.
pub async fn observe_forever<SM: reservoir_raft::GroupMachine>(
    time: Arc<GroupClock>,
    group: Arc<reservoir_raft::Group<SM>>,
    applied: impl Fn(&SM) -> u64 + Send + 'static,
) {
    let mut tick = tokio::time::interval(OBSERVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Ok(applied_ms) = group.read(&applied) {
            time.observe(applied_ms);
        }
        time.report_skew(group.leader_term());
    }
}

/// 64 random bits for a reserve's nonce, the new reservation's id (see
/// `RegionOp::Reserve`): drawn here, outside the state machine, by the node
/// that proposes the command, and carried in the log, so every replica
/// applies the same id. From the thread-local generator, seeded from the
/// operating system, so one client cannot guess another's id.
///
/// In the whole-cluster simulation the nonce comes from the simulation's
/// seeded stream instead, so a seed replays the same ids.
pub fn reservation_nonce() -> u64 {
    if reservoir_raft::runtime::simulated() {
        reservoir_raft::runtime::random_u64()
    } else {
        rand::random()
    }
}

#[cfg(test)]
mod tests {
    //! The bounded clock through the `Clock` seam: a region's state driven
    //! by leaders whose wall clocks are right, an hour ahead, an hour
    //! behind, or in 2100, on one simulated monotonic clock.

    use super::*;
    use reservoir_tokens::{
        Line, RegionApplied, RegionCommand, RegionOp, RegionState, ReservationId, ReservationState,
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;
    /// 2026-12-01T00:00:00Z, the true time when the test starts.
    const START_MS: u64 = 1_796_083_200_000;
    /// 2100-01-01T00:00:00Z.
    const YEAR_2100_MS: u64 = 4_102_444_800_000;

    /// One node's clocks: a monotonic clock shared by every node (real
    /// time), and a wall clock that is real time plus this node's error.
    struct FakeClock {
        real: Arc<AtomicU64>,
        wall: Box<dyn Fn(u64) -> u64 + Send + Sync>,
    }

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            (self.wall)(self.real.load(Ordering::SeqCst))
        }
        fn monotonic_ms(&self) -> u64 {
            self.real.load(Ordering::SeqCst)
        }
    }

    /// A group of nodes over one region state: every node observes what is
    /// applied, the leader stamps.
    struct Group {
        real: Arc<AtomicU64>,
        state: RegionState,
        nodes: Vec<GroupClock>,
        term: u64,
        leader: usize,
    }

    impl Group {
        fn new(walls: Vec<Box<dyn Fn(u64) -> u64 + Send + Sync>>) -> Group {
            let real = Arc::new(AtomicU64::new(0));
            let nodes = walls
                .into_iter()
                .map(|wall| {
                    let clock = Arc::new(FakeClock {
                        real: real.clone(),
                        wall,
                    });
                    GroupClock::new("us-east", clock, 0)
                })
                .collect();
            let mut group = Group {
                real,
                state: RegionState::new("us-east"),
                nodes,
                term: 1,
                leader: 0,
            };
            let stock = RegionOp::AdjustStock {
                request_id: "stock".into(),
                sku: "sku".into(),
                delta: 100,
            };
            group.apply(stock).expect("stocked");
            group
        }

        fn advance(&mut self, ms: u64) {
            self.real.fetch_add(ms, Ordering::SeqCst);
            for node in &self.nodes {
                node.observe(self.state.clock_ms());
            }
        }

        fn elect(&mut self, leader: usize) {
            self.term += 1;
            self.leader = leader;
        }

        fn apply(&mut self, op: RegionOp) -> reservoir_tokens::RegionOutcome {
            let now_ms = self.nodes[self.leader].stamp_ms(self.term, self.state.clock_ms(), || true);
            let outcome = self.state.apply(RegionCommand { now_ms, op });
            for node in &self.nodes {
                node.observe(self.state.clock_ms());
            }
            outcome
        }

        fn reserve(&mut self, request_id: &str, ttl_ms: u64) -> ReservationId {
            let op = RegionOp::Reserve {
                owner: "shop".into(),
                request_id: request_id.into(),
                lines: vec![Line {
                    sku: "sku".into(),
                    quantity: 1,
                }],
                ttl_ms,
                allow_partial: false,
                nonce: 7,
            };
            match self.apply(op) {
                Ok(RegionApplied::Reservation(r)) => r.id,
                other => panic!("reserve {request_id}: {other:?}"),
            }
        }

        fn held(&mut self, id: ReservationId) -> bool {
            self.apply(RegionOp::Expire).expect("expire");
            self.state.reservation(id).expect("kept").state == ReservationState::Held
        }
    }

    fn right() -> Box<dyn Fn(u64) -> u64 + Send + Sync> {
        Box::new(|real| START_MS + real)
    }

    /// A 15-minute hold made under a right clock, then led by a node whose
    /// wall clock is `wrong`: it expires when its TTL says (within
    /// `MAX_LEAD_MS`), and a retry of its request id finds it, not a new
    /// hold.
    fn hold_survives_a_wrong_leader(wrong: Box<dyn Fn(u64) -> u64 + Send + Sync>) {
        let mut g = Group::new(vec![right(), wrong, right()]);
        let ttl = 15 * MINUTE;
        let id = g.reserve("cart-1", ttl);
        let made_at = g.state.reservation(id).expect("made").created_at_ms;
        g.advance(MINUTE);
        g.elect(1);
        assert!(g.held(id), "the wrong clock expired a hold with 14 minutes left");
        assert_eq!(g.reserve("cart-1", ttl), id, "a retry reserved twice");
        // Still held just before its TTL (less the lead a term may add) ...
        g.advance(ttl - MINUTE - MAX_LEAD_MS - 1);
        assert!(g.held(id), "expired before its TTL");
        // ... and expired just after it, however wrong the leader's clock.
        g.advance(2 * MAX_LEAD_MS + 1);
        assert!(!g.held(id), "not expired after its TTL");
        let clock = g.state.clock_ms();
        assert!(
            clock <= made_at + ttl + 3 * MAX_LEAD_MS,
            "logical time ran ahead: {} ms after the hold, {ttl} ms passed",
            clock - made_at
        );
        // A right leader takes over: time goes on at the real rate.
        g.elect(2);
        g.advance(HOUR);
        let id2 = g.reserve("cart-2", ttl);
        g.advance(ttl + MAX_LEAD_MS);
        assert!(!g.held(id2), "expiry frozen after the wrong leader");
    }

    #[test]
    fn a_leader_an_hour_ahead_moves_time_at_most_max_lead() {
        hold_survives_a_wrong_leader(Box::new(|real| START_MS + HOUR + real));
    }

    #[test]
    fn a_leader_an_hour_behind_still_expires_holds_on_time() {
        hold_survives_a_wrong_leader(Box::new(|real| START_MS - HOUR + real));
    }

    #[test]
    fn a_leader_in_2100_does_not_freeze_expiry() {
        hold_survives_a_wrong_leader(Box::new(|real| YEAR_2100_MS + real));
    }

    #[test]
    fn a_stopped_clock_before_1970_still_lets_time_run() {
        hold_survives_a_wrong_leader(Box::new(|_| 0));
    }

    /// A fast clock cannot ratchet time forward commit by commit: within
    /// one term the logical clock stays within `MAX_LEAD_MS` of real time.
    #[test]
    fn a_fast_clock_does_not_ratchet_within_a_term() {
        let mut g = Group::new(vec![right(), Box::new(|real| START_MS + HOUR + real)]);
        let start = g.state.clock_ms();
        g.elect(1);
        for _ in 0..1_000 {
            g.apply(RegionOp::Expire).expect("expire");
            g.advance(1);
        }
        assert!(
            g.state.clock_ms() <= start + 1_000 + MAX_LEAD_MS,
            "{}",
            g.state.clock_ms() - start
        );
    }

    /// A fresh group takes its first leader's wall clock: its logical time
    /// is Unix time from the first command, not time since the group began
    /// (which left every node warning of a skew of 56 years).
    #[test]
    fn a_fresh_group_starts_on_its_first_leaders_wall_clock() {
        let walls: Vec<Box<dyn Fn(u64) -> u64 + Send + Sync>> = vec![right(), right(), right()];
        let real = Arc::new(AtomicU64::new(0));
        let nodes: Vec<GroupClock> = walls
            .into_iter()
            .map(|wall| {
                let clock = Arc::new(FakeClock {
                    real: real.clone(),
                    wall,
                });
                GroupClock::new("us-east", clock, 0)
            })
            .collect();
        assert_eq!(nodes[0].stamp_ms(1, 0, || true), START_MS);
        real.store(2_000, Ordering::SeqCst);
        assert_eq!(nodes[0].stamp_ms(1, START_MS, || true), START_MS + 2_000);
        // A new term anchors on the group's time, not a wall clock.
        nodes[1].observe(START_MS + 2_000);
        assert_eq!(nodes[1].stamp_ms(2, START_MS + 2_000, || true), START_MS + 2_000);
        // A node that restarted and has applied nothing yet, in a group
        // whose log goes on: not fresh, it keeps to the bound (its wall
        // clock an hour ahead moves time at most MAX_LEAD_MS).
        let ahead = GroupClock::new(
            "us-east",
            Arc::new(FakeClock {
                real: real.clone(),
                wall: Box::new(|real| START_MS + HOUR + real),
            }),
            0,
        );
        assert!(ahead.stamp_ms(3, 0, || false) <= 2_000 + MAX_LEAD_MS);
    }

    /// A follower's estimate runs on from what it last saw applied.
    #[test]
    fn a_follower_estimates_from_what_it_applied() {
        let mut g = Group::new(vec![right(), Box::new(|_| YEAR_2100_MS)]);
        let applied = g.state.clock_ms();
        g.advance(5_000);
        assert_eq!(g.nodes[1].estimate_ms(), applied + 5_000);
    }
}
