//! In-process three-node Raft groups hosting a `RegionState`: real openraft,
//! real sled stores (with real flushes) in temp dirs, and the in-process
//! `LocalNet`, whose links the tests cut, heal, detach and reattach.
//!
//! Every scenario keeps a book of what its clients were told (each
//! acknowledged reservation as last seen, the outbox, the stock) and ends by
//! checking every live replica against it: the replicas serialize to the same
//! bytes at the same applied index, every acknowledged reservation is there,
//! nothing unacknowledged is, and the region's books balance.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::raft::AppendEntriesRequest;
use reservoir_raft::group::BATCH_COMMANDS_MAX;
use reservoir_raft::network::{BoxFuture, RpcKind, WireError, WireMessage, decode};
use reservoir_raft::testing::LocalNet;
use reservoir_raft::{
    Group, GroupConfig, GroupOptions, GroupStatus, NodeId, NodeStorage, ProposeError, Role, Router,
    SNAPSHOT_BYTES_MAX, Wire,
};
use reservoir_tokens::audit::balance_standalone;
use reservoir_tokens::{
    Line, OutboxEntry, RegionApplied, RegionCommand, RegionOp, RegionState, Rejection, Reservation,
    ReservationId, ReservationState,
};
use tempfile::TempDir;

/// The voters of every test group.
const NODES: [NodeId; 3] = [1, 2, 3];
/// How long any condition may take to hold before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long the survivors may take to elect a new leader after a crash.
const FAILOVER_MAX: Duration = Duration::from_secs(5);
/// How long a proposal on an isolated leader is given to (wrongly) succeed.
const UNACKED_WAIT: Duration = Duration::from_secs(1);
/// Pause between polls of a condition.
const POLL: Duration = Duration::from_millis(10);
/// The clock every command carries: holds (15 min by default) never expire.
const NOW_MS: u64 = 1_000;
/// The one SKU of every test.
const SKU: &str = "sku-a";
/// The owner of every reservation.
const OWNER: &str = "shop";
/// Units of stock each test starts with.
const STOCK: u64 = 10_000;
/// Snapshot chunks small enough that even a test's snapshot takes many.
const SMALL_CHUNK_BYTES: usize = 256;

/// A node's address in the group's membership (`LocalNet` ignores it, but a
/// `NotLeader` error must name it).
fn addr(id: NodeId) -> String {
    format!("local-{id}")
}

fn command(op: RegionOp) -> RegionCommand {
    RegionCommand { now_ms: NOW_MS, op }
}

/// The in-process network, counting the messages that got a reply by kind
/// and addressee (to tell a catch-up by snapshot from one by log), with a
/// trap that cuts a leader off right after its followers stored a batch.
#[derive(Clone, Default)]
struct CountingNet {
    net: LocalNet,
    delivered: Arc<Mutex<BTreeMap<(RpcKind, NodeId), u64>>>,
    trap: Arc<Mutex<Option<Trap>>>,
}

/// Cuts `leader` off once both its followers have stored the batch that
/// carries the reserve `request_id`: every AppendEntries still reaches the
/// followers, but from the first one carrying that batch on the leader
/// hears no reply (so it never learns the batch committed), and once both
/// followers have stored it the leader is isolated.
struct Trap {
    leader: NodeId,
    request_id: String,
    /// Followers that have stored the batch.
    stored: BTreeSet<NodeId>,
    /// The leader has been isolated.
    sprung: bool,
}

impl CountingNet {
    /// Messages of `kind` that `to` answered.
    fn delivered(&self, kind: RpcKind, to: NodeId) -> u64 {
        let delivered = self.delivered.lock().unwrap_or_else(PoisonError::into_inner);
        delivered.get(&(kind, to)).copied().unwrap_or(0)
    }

    /// Sets a [`Trap`] for the batch of `leader` carrying reserve `request_id`.
    fn trap_batch(&self, leader: NodeId, request_id: &str) {
        *self.trap.lock().unwrap_or_else(PoisonError::into_inner) = Some(Trap {
            leader,
            request_id: request_id.to_owned(),
            stored: BTreeSet::new(),
            sprung: false,
        });
    }

    /// Whether the trap has isolated its leader.
    fn trap_sprung(&self) -> bool {
        let trap = self.trap.lock().unwrap_or_else(PoisonError::into_inner);
        trap.as_ref().is_some_and(|t| t.sprung)
    }

    /// For an AppendEntries from the trapped leader: whether it carries the
    /// trapped batch. `None` for any other message.
    fn trapped(&self, message: &WireMessage) -> Option<bool> {
        let trap = self.trap.lock().unwrap_or_else(PoisonError::into_inner);
        let trap = trap.as_ref().filter(|t| t.leader == message.from && !t.sprung)?;
        if message.kind != RpcKind::AppendEntries {
            return None;
        }
        let request: AppendEntriesRequest<GroupConfig<RegionState>> =
            decode(&message.payload).expect("an AppendEntries decodes");
        Some(request.entries.iter().any(|entry| match &entry.payload {
            EntryPayload::Normal(batch) => batch.commands.iter().any(
                |c| matches!(&c.op, RegionOp::Reserve { request_id, .. } if *request_id == trap.request_id),
            ),
            _ => false,
        }))
    }

    /// After a trapped message was delivered (or not): whether its reply
    /// must be dropped. Isolates the leader once both followers stored the
    /// batch.
    fn after_trapped(&self, to: NodeId, carried: bool, delivered: bool) -> bool {
        let mut trap = self.trap.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(trap) = trap.as_mut() else { return false };
        if carried && delivered {
            trap.stored.insert(to);
        }
        if trap.stored.len() == NODES.len() - 1 && !trap.sprung {
            trap.sprung = true;
            self.net.isolate(trap.leader);
        }
        !trap.stored.is_empty()
    }
}

impl Wire for CountingNet {
    fn call(
        &self,
        to: NodeId,
        addr: &str,
        message: WireMessage,
    ) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        let kind = message.kind;
        let trapped = self.trapped(&message);
        let reply = self.net.call(to, addr, message);
        Box::pin(async move {
            let reply = reply.await;
            if reply.is_ok() {
                let mut delivered = self.delivered.lock().unwrap_or_else(PoisonError::into_inner);
                *delivered.entry((kind, to)).or_default() += 1;
            }
            if let Some(carried) = trapped
                && self.after_trapped(to, carried, reply.is_ok())
            {
                return Err(WireError::Unreachable("trapped: the reply is lost".into()));
            }
            reply
        })
    }
}

/// What the clients were told, and so what every replica must hold.
#[derive(Default)]
struct Book {
    /// Units of stock added.
    stocked: u64,
    /// Every acknowledged reservation, as its client last saw it.
    reservations: BTreeMap<ReservationId, Reservation>,
    /// Acknowledged reserve requests (each remembered for idempotency).
    reserve_requests: usize,
    /// The outbox entries acknowledged confirms wrote, in order.
    outbox: Vec<OutboxEntry>,
}

impl Book {
    fn units(&self, state: ReservationState) -> u64 {
        self.reservations
            .values()
            .filter(|r| r.state == state)
            .flat_map(|r| &r.lines)
            .map(|l| l.quantity)
            .sum()
    }

    /// Checks one replica against the book: every acknowledged reservation,
    /// outbox entry and unit is there, and nothing else.
    fn check(&self, state: &RegionState, node: NodeId) {
        for (id, reservation) in &self.reservations {
            assert_eq!(
                state.reservation(*id),
                Some(reservation.clone()),
                "node {node}: acknowledged reservation {id}"
            );
        }
        assert_eq!(
            state.reservations().count(),
            self.reservations.len(),
            "node {node}: reservations nobody was told about"
        );
        assert_eq!(
            state.remembered_requests(),
            self.reserve_requests,
            "node {node}: remembered reserve requests"
        );
        let outbox: Vec<OutboxEntry> = state.outbox_after(0).collect();
        assert_eq!(outbox, self.outbox, "node {node}: outbox");
        let bucket = state.bucket(SKU).expect("the SKU was stocked");
        let held = self.units(ReservationState::Held);
        let confirmed = self.units(ReservationState::Confirmed);
        assert_eq!(
            (bucket.available, bucket.held, bucket.confirmed, bucket.received),
            (self.stocked - held - confirmed, held, confirmed, self.stocked),
            "node {node}: bucket levels (available, held, confirmed, received)"
        );
        assert_balanced(state, node);
    }
}

/// The conservation check: every bucket's own books, and the standalone
/// region's balance sheet.
fn assert_balanced(state: &RegionState, node: NodeId) {
    for (sku, bucket) in state.buckets() {
        assert_eq!(
            bucket.books_drift(),
            0,
            "node {node}: books of {sku} drift: {bucket:?}"
        );
    }
    let sheet = balance_standalone(state);
    assert!(
        sheet.balanced(),
        "node {node}: region does not balance: {sheet:?}"
    );
}

/// One running node: its group, its router (attached to the net) and its
/// database.
struct RunningNode {
    group: Arc<Group<RegionState>>,
    _router: Router,
    _storage: NodeStorage,
}

/// Three nodes of one region group on one `LocalNet`, each with its own data
/// directory, which outlives restarts.
struct Cluster {
    net: CountingNet,
    /// Options of every node; `node_id` is set per node.
    options: GroupOptions,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, RunningNode>,
    book: Book,
    /// The cap on every node's snapshot files.
    snapshot_bytes_max: u64,
}

impl Cluster {
    /// Starts three fresh nodes with test timing, changed by `tweak`.
    async fn start(tweak: impl FnOnce(&mut GroupOptions)) -> Cluster {
        Cluster::start_capped(tweak, SNAPSHOT_BYTES_MAX).await
    }

    /// [`Cluster::start`], with every node's snapshots capped at
    /// `snapshot_bytes_max` bytes.
    async fn start_capped(tweak: impl FnOnce(&mut GroupOptions), snapshot_bytes_max: u64) -> Cluster {
        let members = NODES.iter().map(|&id| (id, addr(id))).collect();
        let mut options = GroupOptions::new(common::GROUP, 0, members);
        options.heartbeat_ms = 50;
        options.election_timeout_min_ms = 300;
        options.election_timeout_max_ms = 600;
        tweak(&mut options);
        let mut cluster = Cluster {
            net: CountingNet::default(),
            options,
            dirs: NODES
                .iter()
                .map(|&id| (id, TempDir::new().expect("temp dir")))
                .collect(),
            nodes: BTreeMap::new(),
            book: Book::default(),
            snapshot_bytes_max,
        };
        // Node 1 initializes the group: start it last, so its first
        // election finds its peers listening.
        for id in NODES.into_iter().rev() {
            cluster.start_node(id).await;
        }
        cluster
    }

    /// Starts (or restarts) node `id` on its data directory.
    async fn start_node(&mut self, id: NodeId) {
        self.start_node_with(id, false).await;
    }

    /// Starts node `id` for the first time, on a fresh data directory, to
    /// join the group (it never initializes one: `GroupOptions::join`).
    async fn start_joining(&mut self, id: NodeId) {
        assert!(!self.dirs.contains_key(&id), "node {id} had a data directory");
        self.dirs.insert(id, TempDir::new().expect("temp dir"));
        self.start_node_with(id, true).await;
    }

    /// Deletes node `id`'s data (its disk died). It must not be running.
    fn lose_data(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        self.dirs.remove(&id).expect("node had a data directory");
    }

    async fn start_node_with(&mut self, id: NodeId, join: bool) {
        assert!(!self.nodes.contains_key(&id), "node {id} is already running");
        let (storage, stores) = common::reopen_capped(self.dirs[&id].path(), self.snapshot_bytes_max).await;
        let router = Router::new(id);
        self.net.net.attach(router.clone());
        let mut options = self.options.clone();
        options.node_id = id;
        options.join = join;
        options.members.insert(id, addr(id));
        let wire: Arc<dyn Wire> = Arc::new(self.net.clone());
        let group = Group::start(options, stores, wire, &router)
            .await
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        self.nodes.insert(
            id,
            RunningNode {
                group: Arc::new(group),
                _router: router,
                _storage: storage,
            },
        );
    }

    /// Crashes node `id`: off the network, Raft stopped, storage dropped.
    async fn crash(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node is running");
        self.net.net.detach(id);
        node.group.shutdown().await;
    }

    /// Stops every node.
    async fn shutdown(&mut self) {
        let running: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in running {
            self.crash(id).await;
        }
    }

    /// The running groups (for a task that proposes on its own).
    fn groups(&self) -> BTreeMap<NodeId, Arc<Group<RegionState>>> {
        self.nodes.iter().map(|(id, n)| (*id, n.group.clone())).collect()
    }

    /// Books reservations a [`Writer`] had acknowledged.
    fn book_reserves(&mut self, acknowledged: Vec<Reservation>) {
        for r in acknowledged {
            assert!(self.book.reservations.insert(r.id, r).is_none(), "booked twice");
            self.book.reserve_requests += 1;
        }
    }

    fn group(&self, id: NodeId) -> &Arc<Group<RegionState>> {
        &self.nodes.get(&id).expect("node is running").group
    }

    /// The last log index node `id` has purged.
    fn purged_index(&self, id: NodeId) -> Option<u64> {
        // A short borrow: holding the metrics guard would block the Raft core.
        let purged = self.group(id).raft().metrics().borrow().purged;
        purged.map(|log_id| log_id.index)
    }

    fn statuses(&self, ids: &[NodeId]) -> Vec<GroupStatus> {
        ids.iter().map(|&id| self.group(id).status()).collect()
    }

    /// Waits until exactly one of `among` leads and all of `among` follow it
    /// in its term; returns it.
    async fn wait_for_leader(&self, among: &[NodeId], within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses(among);
            let leaders: Vec<&GroupStatus> = statuses.iter().filter(|s| s.role == Role::Leader).collect();
            if let [leader] = leaders[..]
                && statuses
                    .iter()
                    .all(|s| s.leader == Some(leader.node_id) && s.term == leader.term)
            {
                return leader.node_id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed on among {among:?} within {within:?}: {statuses:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes node `id` the leader of all three: while another leads, cuts
    /// that one off until the rest elect a leader among themselves, then
    /// heals (the staggered election timeouts favour the smallest id).
    async fn lead(&self, id: NodeId) {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_for_leader(&NODES, WAIT).await;
            if leader == id {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} did not come to lead");
            self.net.net.isolate(leader);
            self.wait_for_leader(&others(leader), WAIT).await;
            self.net.net.heal();
        }
    }

    /// Proposes `command` on the leader among `among` until it is
    /// acknowledged (retrying on `NotLeader`; every command here is
    /// idempotent), and returns what it did. A rejection fails the test.
    async fn propose(&self, among: &[NodeId], command: RegionCommand) -> RegionApplied {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self
                .wait_for_leader(among, deadline.saturating_duration_since(Instant::now()))
                .await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.group(leader).propose(command.clone())).await {
                Ok(Ok(Ok(applied))) => return applied,
                Ok(Ok(Err(rejection))) => panic!("{command:?} rejected: {rejection:?}"),
                Ok(Err(e)) => {
                    assert!(e.is_retryable(), "{command:?} on node {leader}: {e}");
                    assert!(
                        Instant::now() < deadline,
                        "{command:?} not acknowledged within {WAIT:?}: {e}"
                    );
                    tokio::time::sleep(POLL).await;
                }
                Err(_) => panic!("{command:?} on node {leader} not acknowledged within {WAIT:?}"),
            }
        }
    }

    /// Adds `units` of stock through the leader among `among`.
    async fn add_stock(&mut self, among: &[NodeId], request_id: &str, units: u64) {
        let op = RegionOp::AdjustStock {
            request_id: request_id.to_owned(),
            sku: SKU.to_owned(),
            delta: i64::try_from(units).expect("test stock fits i64"),
        };
        match self.propose(among, command(op)).await {
            RegionApplied::Stock { .. } => self.book.stocked += units,
            other => panic!("stock adjustment did {other:?}"),
        }
    }

    /// Reserves `quantity` units through the leader among `among`, and books
    /// the acknowledged reservation.
    async fn reserve(&mut self, among: &[NodeId], request_id: &str, quantity: u64) -> ReservationId {
        let op = reserve_op(request_id, quantity);
        match self.propose(among, command(op)).await {
            RegionApplied::Reservation(r) => {
                assert_eq!(r.state, ReservationState::Held, "{r:?}");
                assert_eq!(r.lines, vec![Line::new(SKU, quantity)], "{r:?}");
                let id = r.id;
                assert!(self.book.reservations.insert(id, r).is_none(), "{id} twice");
                self.book.reserve_requests += 1;
                id
            }
            other => panic!("reserve did {other:?}"),
        }
    }

    /// Confirms reservation `id` as `order_id` through the leader among
    /// `among`, and books the sale and its outbox entry.
    async fn confirm(&mut self, among: &[NodeId], id: ReservationId, order_id: &str) {
        let op = RegionOp::Confirm {
            id,
            owner: OWNER.to_owned(),
            order_id: order_id.to_owned(),
            lines: Vec::new(),
        };
        match self.propose(among, command(op)).await {
            RegionApplied::Reservation(r) => {
                assert_eq!(r.state, ReservationState::Confirmed, "{r:?}");
                self.book.outbox.push(OutboxEntry {
                    seq: self.book.outbox.len() as u64 + 1,
                    reservation: id,
                    order_id: order_id.to_owned(),
                    lines: r.lines.clone(),
                    confirmed_at_ms: NOW_MS,
                });
                self.book.reservations.insert(id, r);
            }
            other => panic!("confirm did {other:?}"),
        }
    }

    /// Releases reservation `id` through the leader among `among`.
    async fn release(&mut self, among: &[NodeId], id: ReservationId) {
        let op = RegionOp::Release {
            id,
            owner: OWNER.to_owned(),
        };
        match self.propose(among, command(op)).await {
            RegionApplied::Reservation(r) => {
                assert_eq!(r.state, ReservationState::Released, "{r:?}");
                self.book.reservations.insert(id, r);
            }
            other => panic!("release did {other:?}"),
        }
    }

    /// Waits until `ids` have all applied their whole log, to the same
    /// index; then requires their states to be byte for byte the same and to
    /// match the book. Returns that state.
    async fn wait_converged(&self, ids: &[NodeId]) -> RegionState {
        let deadline = Instant::now() + WAIT;
        loop {
            let before = self.statuses(ids);
            let index = before[0].applied_index;
            let settled = before
                .iter()
                .all(|s| s.applied_index == index && s.last_log_index == index);
            if settled {
                let states: Vec<RegionState> = ids
                    .iter()
                    .map(|&id| self.group(id).read(RegionState::clone).expect("read state"))
                    .collect();
                let after = self.statuses(ids);
                // Nothing was applied while the states were read.
                let unchanged = before
                    .iter()
                    .zip(&after)
                    .all(|(b, a)| (b.applied_index, b.last_log_index) == (a.applied_index, a.last_log_index));
                if unchanged {
                    let json = |state: &RegionState| {
                        String::from_utf8(serde_json::to_vec(state).expect("state serializes"))
                            .expect("JSON is UTF-8")
                    };
                    let first = json(&states[0]);
                    for (id, state) in ids.iter().zip(&states) {
                        assert_eq!(
                            json(state),
                            first,
                            "node {id} and node {} differ at applied index {index:?}",
                            ids[0]
                        );
                        self.book.check(state, *id);
                    }
                    return states.into_iter().next().expect("at least one node");
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} did not converge within {WAIT:?}: {before:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A reserve by [`OWNER`]. Its nonce, which a leader would draw at random,
/// is a hash of the request id here: distinct ids, distinct nonces, and a
/// retried proposal carries the same one.
fn reserve_op(request_id: &str, quantity: u64) -> RegionOp {
    RegionOp::Reserve {
        owner: OWNER.to_owned(),
        request_id: request_id.to_owned(),
        lines: vec![Line::new(SKU, quantity)],
        ttl_ms: 0,
        allow_partial: false,
        nonce: request_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    }
}

fn others(of: NodeId) -> Vec<NodeId> {
    NODES.into_iter().filter(|&id| id != of).collect()
}

/// A three-node group elects one leader; what it commits is readable on the
/// leader at once and on followers eventually, and followers name the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_commit_and_redirect() {
    let mut cluster = Cluster::start(|_| {}).await;
    cluster.wait_for_leader(&NODES, WAIT).await;

    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), i).await);
    }
    cluster.confirm(&NODES, ids[0], "order-1").await;
    cluster.release(&NODES, ids[1]).await;

    let leader = cluster.wait_for_leader(&NODES, WAIT).await;

    let on_leader = cluster
        .group(leader)
        .read_linearizable(RegionState::clone)
        .await
        .expect("linearizable read on the leader");
    cluster.book.check(&on_leader, leader);

    let deadline = Instant::now() + WAIT;
    for follower in others(leader) {
        let group = cluster.group(follower);
        loop {
            let state = group.read(RegionState::clone).expect("read");
            if state.reservations().count() == cluster.book.reservations.len()
                && state.last_outbox_seq() == 1
                && state.reservation(ids[1]).map(|r| r.state) == Some(ReservationState::Released)
            {
                cluster.book.check(&state, follower);
                break;
            }
            assert!(Instant::now() < deadline, "node {follower} did not catch up");
            tokio::time::sleep(POLL).await;
        }

        let expected = ProposeError::NotLeader {
            leader: Some((leader, addr(leader))),
        };
        let proposed = group.propose(command(reserve_op("on-follower", 1))).await;
        assert_eq!(proposed, Err(expected.clone()), "propose on follower {follower}");
        let read = group.read_linearizable(|_| ()).await;
        assert_eq!(read, Err(expected), "linearizable read on follower {follower}");
    }

    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// Commands proposed together commit in one log entry, each with its own
/// outcome in order (a refusal among them refuses only itself, a repeated
/// request id answers the first one's reservation); sets proposed at once
/// with single commands share batches and each caller still gets its own
/// outcomes; a set over one entry's bounds is refused whole, and a follower
/// names the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_proposed_together_commit_in_one_entry_with_their_own_outcomes() {
    let mut cluster = Cluster::start(|_| {}).await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let group = cluster.group(leader).clone();

    let before = group.status().applied_index.expect("applied");
    let ops = [
        reserve_op("set-1", 3),
        reserve_op("set-2", STOCK + 1),
        reserve_op("set-3", 2),
        reserve_op("set-1", 3),
    ];
    let outcomes = group
        .propose_many(ops.into_iter().map(command).collect())
        .await
        .expect("the set committed");
    assert_eq!(
        group.status().applied_index,
        Some(before + 1),
        "the set is one log entry"
    );
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    let held = |o: &Result<RegionApplied, Rejection>| match o {
        Ok(RegionApplied::Reservation(r)) if r.state == ReservationState::Held => r.clone(),
        other => panic!("expected a hold, got {other:?}"),
    };
    let (first, third, again) = (held(&outcomes[0]), held(&outcomes[2]), held(&outcomes[3]));
    assert!(
        matches!(outcomes[1], Err(Rejection::InsufficientStock { .. })),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(first.lines, vec![Line::new(SKU, 3)]);
    assert_eq!(third.lines, vec![Line::new(SKU, 2)]);
    assert_eq!(
        again, first,
        "a repeated request id answers the first reservation"
    );
    for r in [first, third] {
        cluster.book.reservations.insert(r.id, r);
        cluster.book.reserve_requests += 1;
    }

    // Eight sets of eight and 64 single commands at once: quantity k is
    // asked for once, so each outcome names the request it answers.
    let mut tasks = tokio::task::JoinSet::new();
    for set in 0..8u64 {
        let group = group.clone();
        tasks.spawn(async move {
            let asked: Vec<u64> = (1..=8).map(|i| set * 8 + i).collect();
            let commands = asked
                .iter()
                .map(|&k| command(reserve_op(&format!("many-{k}"), k)))
                .collect();
            let outcomes = group.propose_many(commands).await.expect("a set committed");
            asked.into_iter().zip(outcomes).collect::<Vec<_>>()
        });
    }
    for k in 65..=128u64 {
        let group = group.clone();
        tasks.spawn(async move {
            let outcome = group
                .propose(command(reserve_op(&format!("one-{k}"), k)))
                .await
                .expect("a single command committed");
            vec![(k, outcome)]
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        for (k, outcome) in done.expect("task") {
            let r = held(&outcome);
            assert_eq!(r.lines, vec![Line::new(SKU, k)], "the outcome of quantity {k}");
            cluster.book.reservations.insert(r.id, r);
            cluster.book.reserve_requests += 1;
            answered += 1;
        }
    }
    assert_eq!(answered, 128);

    let too_many = (0..=BATCH_COMMANDS_MAX)
        .map(|i| command(reserve_op(&format!("over-{i}"), 1)))
        .collect();
    let at = group.status().applied_index;
    assert!(
        matches!(group.propose_many(too_many).await, Err(ProposeError::TooLarge(_))),
        "a set over one entry's bound is refused"
    );
    assert_eq!(group.status().applied_index, at, "and nothing of it applied");

    for follower in others(leader) {
        let refused = cluster
            .group(follower)
            .propose_many(vec![command(reserve_op("on-follower", 1))])
            .await;
        assert_eq!(
            refused,
            Err(ProposeError::NotLeader {
                leader: Some((leader, addr(leader)))
            })
        );
    }
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// When the leader crashes, the survivors elect a new one within seconds; it
/// has every acknowledged write and commits new ones, and the crashed node
/// catches up when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_elects_new_leader_without_losing_writes() {
    let mut cluster = Cluster::start(|_| {}).await;
    let old = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), i).await);
    }
    cluster.confirm(&NODES, ids[2], "order-1").await;

    // No wait for the followers to apply: acknowledged means on a quorum,
    // and that must be enough.
    cluster.crash(old).await;
    let crashed_at = Instant::now();
    let survivors = others(old);
    let new = cluster.wait_for_leader(&survivors, FAILOVER_MAX).await;
    let failover = crashed_at.elapsed();
    assert_ne!(new, old, "the crashed node cannot lead");
    assert!(failover < FAILOVER_MAX, "failover took {failover:?}");

    let on_new = cluster
        .group(new)
        .read_linearizable(RegionState::clone)
        .await
        .expect("linearizable read on the new leader");
    cluster.book.check(&on_new, new);

    for i in 11..=15 {
        ids.push(cluster.reserve(&survivors, &format!("r{i}"), i).await);
    }
    cluster.confirm(&survivors, ids[12], "order-2").await;
    cluster.wait_converged(&survivors).await;

    cluster.start_node(old).await;
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// An isolated leader acknowledges nothing while the majority elects a new
/// leader and goes on; after healing, the old leader steps down, drops what
/// it could not commit, and all three replicas are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_and_converges() {
    // A bound on proposals longer than the whole test: the stale proposal
    // must be answered by the truncation of its entry, not by the bound.
    let mut cluster = Cluster::start(|options| options.propose_timeout_ms = 60_000).await;
    let old = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), i).await);
    }
    cluster.wait_converged(&NODES).await;

    cluster.net.net.isolate(old);
    // The isolated node still believes it leads, so it takes this proposal;
    // it must not acknowledge it.
    let old_group = cluster.group(old).clone();
    let mut doomed = tokio::spawn(async move { old_group.propose(command(reserve_op("doomed", 77))).await });
    match tokio::time::timeout(UNACKED_WAIT, &mut doomed).await {
        Err(_) => {}
        Ok(Ok(Err(e))) => panic!("refused at once, not queued: {e}"),
        Ok(outcome) => panic!("an isolated leader answered a proposal: {outcome:?}"),
    }

    let majority = others(old);
    let new = cluster.wait_for_leader(&majority, WAIT).await;
    assert_ne!(new, old);
    for i in 6..=10 {
        ids.push(cluster.reserve(&majority, &format!("r{i}"), i).await);
    }
    cluster.confirm(&majority, ids[0], "order-1").await;
    cluster.confirm(&majority, ids[7], "order-2").await;
    cluster.wait_converged(&majority).await;
    let (behind, ahead) = (cluster.group(old).status(), cluster.group(new).status());
    assert!(
        behind.applied_index < ahead.applied_index,
        "the isolated node applied what the majority did: {behind:?}"
    );

    cluster.net.net.heal();
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    assert_ne!(leader, old, "the old leader's log is behind: it cannot win");
    assert!(!cluster.group(old).is_leader(), "old leader stepped down");
    // Its uncommitted entry was overwritten: the waiting proposer is told
    // to go to the new leader, not left waiting.
    let doomed = tokio::time::timeout(WAIT, doomed)
        .await
        .expect("the stale proposal is answered after the step-down")
        .expect("proposal task");
    match doomed {
        Err(ProposeError::NotLeader { leader: hint }) => {
            assert!(
                hint.as_ref()
                    .is_none_or(|(id, at)| *id != old && *at == addr(*id)),
                "stale proposal redirected to {hint:?}"
            );
        }
        other => panic!("stale proposal on the old leader: {other:?}"),
    }
    // The book has no "doomed" reserve: the check fails if it committed.
    cluster.wait_converged(&NODES).await;

    ids.push(cluster.reserve(&NODES, "r11", 11).await);
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// Every hold, confirm and outbox entry survives a restart of all three
/// nodes from their data directories (snapshot plus the log after it, the
/// log before it purged), and the group leads and commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(|options| {
        options.snapshot_logs = 10;
        options.snapshot_logs_to_keep = 2;
    })
    .await;
    cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let mut ids = Vec::new();
    for i in 1..=12 {
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), i).await);
    }
    cluster.confirm(&NODES, ids[0], "order-1").await;
    cluster.confirm(&NODES, ids[5], "order-2").await;
    cluster.release(&NODES, ids[3]).await;
    cluster.confirm(&NODES, ids[9], "order-3").await;
    let before = cluster.wait_converged(&NODES).await;
    assert_eq!(before.last_outbox_seq(), 3);
    assert_eq!(before.holds(), 8);
    // Every node has snapshotted and purged the log before its snapshot, so
    // a restart needs both the snapshot and the log after it.
    let deadline = Instant::now() + WAIT;
    for id in NODES {
        while cluster.purged_index(id).is_none() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not snapshot and purge: {:?}",
                cluster.group(id).status()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    cluster.shutdown().await;
    for id in NODES {
        cluster.start_node(id).await;
    }
    cluster.wait_for_leader(&NODES, WAIT).await;
    let after = cluster.wait_converged(&NODES).await;
    assert_eq!(
        serde_json::to_vec(&after).expect("serializes"),
        serde_json::to_vec(&before).expect("serializes"),
        "state after restart"
    );

    ids.push(cluster.reserve(&NODES, "r13", 13).await);
    cluster.confirm(&NODES, ids[12], "order-4").await;
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// A follower cut off while the leader snapshots and purges the log it
/// lacks catches up from a snapshot once it is reachable again: the
/// snapshot arrives in many small chunks, and the follower's books are then
/// exactly the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot_in_chunks() {
    let mut cluster = Cluster::start(|options| {
        options.snapshot_logs = 20;
        options.snapshot_logs_to_keep = 5;
        options.snapshot_chunk_bytes = SMALL_CHUNK_BYTES;
    })
    .await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    for i in 1..=3 {
        cluster.reserve(&NODES, &format!("r{i}"), i).await;
    }
    cluster.wait_converged(&NODES).await;

    let lagger = others(leader)[0];
    let lagging = cluster.group(lagger).status();
    assert_eq!(lagging.snapshot_index, None, "too few entries for a snapshot yet");
    let lagger_last = lagging.last_log_index.expect("the lagger has a log");
    let term = lagging.term;
    cluster.net.net.isolate(lagger);

    let live = others(lagger);
    for i in 4..=63 {
        cluster.reserve(&live, &format!("r{i}"), 1).await;
    }
    // The leader must have snapshotted and purged past what the lagger has,
    // so the log alone cannot bring it back.
    let deadline = Instant::now() + WAIT;
    let purged = loop {
        let leader = cluster.wait_for_leader(&live, WAIT).await;
        let purged = cluster.purged_index(leader);
        if let Some(purged) = purged.filter(|&p| p > lagger_last) {
            let snapshot = cluster.group(leader).status().snapshot_index;
            assert!(
                snapshot >= Some(purged),
                "purged {purged} past snapshot {snapshot:?}"
            );
            break purged;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} did not purge past {lagger_last}: {:?}, purged {purged:?}",
            cluster.group(leader).status()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(cluster.group(lagger).status().last_log_index, Some(lagger_last));
    assert_eq!(cluster.net.delivered(RpcKind::SnapshotChunk, lagger), 0);
    // Cut off from its leader, the lagger campaigns and raises its term: it
    // comes back disruptive, as a real partitioned follower does.
    let deadline = Instant::now() + WAIT;
    while cluster.group(lagger).status().term <= term {
        assert!(Instant::now() < deadline, "the cut-off lagger never campaigned");
        tokio::time::sleep(POLL).await;
    }

    cluster.net.net.heal();
    cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.wait_converged(&NODES).await;
    let lagging = cluster.group(lagger).status();
    let snapshot = lagging.snapshot_index;
    assert!(
        snapshot >= Some(purged),
        "the lagger's snapshot {snapshot:?} is before the leader's purge {purged}"
    );
    assert!(
        lagging.snapshots.installed >= 1,
        "the lagger installed no snapshot: {lagging:?}"
    );
    // The installed file came in chunks of at most SMALL_CHUNK_BYTES.
    let chunks = cluster.net.delivered(RpcKind::SnapshotChunk, lagger);
    let at_least = lagging.snapshots.last_bytes.div_ceil(SMALL_CHUNK_BYTES as u64);
    assert!(
        at_least > 1 && chunks >= at_least,
        "{chunks} chunks delivered for a {}-byte snapshot",
        lagging.snapshots.last_bytes
    );

    cluster.reserve(&NODES, "r64", 1).await;
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// The wedge of a deposed leader: cut off right after its followers stored a
/// batch, it is later brought up to date by a snapshot of a log purged past
/// that batch, so openraft 0.9 never answers its write (the entry is neither
/// applied nor truncated there). Its caller still gets an answer, its only
/// write slot comes back, and it commits again once it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_caught_up_by_snapshot_answers_and_commits_again() {
    let mut cluster = Cluster::start(|options| {
        options.snapshot_logs = 10;
        options.snapshot_logs_to_keep = 2;
        // One write slot: a slot that never came back would stop every
        // later proposal on this node.
        options.batches_in_flight = 1;
        options.propose_timeout_ms = 2_000;
    })
    .await;
    let old = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    cluster.reserve(&NODES, "r1", 1).await;
    cluster.wait_converged(&NODES).await;

    cluster.net.trap_batch(old, "wedged");
    let old_group = cluster.group(old).clone();
    let wedged = tokio::spawn(async move { old_group.propose(command(reserve_op("wedged", 7))).await });
    let deadline = Instant::now() + WAIT;
    while !cluster.net.trap_sprung() {
        assert!(Instant::now() < deadline, "the followers never stored the batch");
        tokio::time::sleep(POLL).await;
    }
    let wedged_index = cluster
        .group(old)
        .status()
        .last_log_index
        .expect("the old leader has a log");
    // Cut off, it cannot commit, and says so (what `/readyz` reports).
    let deadline = Instant::now() + WAIT;
    while cluster.group(old).commit_stall().is_none() {
        assert!(Instant::now() < deadline, "the cut-off leader reports no stall");
        tokio::time::sleep(POLL).await;
    }

    // The majority elects a new leader, which commits the batch its
    // followers hold: a retry with the same request id finds the hold.
    let majority = others(old);
    let new = cluster.wait_for_leader(&majority, WAIT).await;
    assert_ne!(new, old);
    cluster.reserve(&majority, "wedged", 7).await;
    // It snapshots and purges its log past the batch, so the old leader can
    // only be brought back by a snapshot.
    let deadline = Instant::now() + WAIT;
    let mut i = 2;
    loop {
        cluster.reserve(&majority, &format!("r{i}"), 1).await;
        i += 1;
        let leader = cluster.wait_for_leader(&majority, WAIT).await;
        if cluster.purged_index(leader).is_some_and(|p| p > wedged_index) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} did not purge past {wedged_index}: {:?}",
            cluster.group(leader).status()
        );
    }

    cluster.net.net.heal();
    cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.wait_converged(&NODES).await;
    let caught_up = cluster.group(old).status();
    assert!(
        caught_up.snapshots.installed >= 1 && caught_up.snapshot_index > Some(wedged_index),
        "the old leader was not brought back by a snapshot: {caught_up:?}"
    );
    // Its caller has an answer: the outcome is unknown (the entry is in the
    // log of the group, but this node never applied it), or the hold.
    let answer = tokio::time::timeout(WAIT, wedged)
        .await
        .expect("the deposed leader's proposal was never answered")
        .expect("proposal task");
    match answer {
        Err(ProposeError::Timeout { .. } | ProposeError::NotLeader { .. }) => {}
        Ok(Ok(RegionApplied::Reservation(r))) => assert_eq!(cluster.book.reservations.get(&r.id), Some(&r)),
        other => panic!("the wedged proposal was answered {other:?}"),
    }

    // Leading again, it commits through its one write slot.
    cluster.lead(old).await;
    cluster.reserve(&[old], "after-the-wedge", 1).await;
    let stall = cluster.group(old).commit_stall();
    assert_eq!(stall, None, "a leader that commits reports a stall");
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// A snapshot build that fails (here: every node's snapshots are capped far
/// below the size of any snapshot) does not stop the group: the build is
/// skipped, nothing is purged, and the group goes on committing and
/// converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_snapshot_builds_are_skipped_and_the_group_commits() {
    /// Smaller than a snapshot file's header.
    const SNAPSHOT_CAP_BYTES: u64 = 64;
    let mut cluster = Cluster::start_capped(|options| options.snapshot_logs = 5, SNAPSHOT_CAP_BYTES).await;
    cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let mut ids = Vec::new();
    let mut i = 1;
    let deadline = Instant::now() + WAIT;
    // Every node has tried a snapshot, and failed.
    while NODES.iter().any(|&id| cluster.group(id).snapshot_failures() == 0) {
        assert!(
            Instant::now() < deadline,
            "not every node tried a snapshot: {:?}",
            cluster.statuses(&NODES)
        );
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), 1).await);
        i += 1;
    }
    for _ in 0..10 {
        ids.push(cluster.reserve(&NODES, &format!("r{i}"), 1).await);
        i += 1;
    }
    cluster.confirm(&NODES, ids[0], "order-1").await;
    cluster.wait_converged(&NODES).await;
    for status in cluster.statuses(&NODES) {
        assert_ne!(status.role, Role::Shutdown, "{status:?}");
        assert_eq!(
            status.snapshot_index, None,
            "a snapshot over the cap was kept: {status:?}"
        );
        assert_eq!(status.snapshots.built, 0, "{status:?}");
    }
    for id in NODES {
        assert_eq!(
            cluster.purged_index(id),
            None,
            "node {id} purged its log without a snapshot"
        );
    }
    cluster.shutdown().await;
}

/// Pause between a [`Writer`]'s reserves.
const WRITER_PAUSE: Duration = Duration::from_millis(2);

/// Reserves one unit at a time through whichever of its groups leads, until
/// stopped, each request id retried until it is acknowledged (a reserve is
/// idempotent by request id); hands back every acknowledged reservation.
struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Reservation>>,
}

impl Writer {
    fn start(groups: BTreeMap<NodeId, Arc<Group<RegionState>>>, prefix: &str) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let request_id = format!("{prefix}-{i}");
                let deadline = Instant::now() + WAIT;
                'retry: loop {
                    for group in groups.values().filter(|g| g.is_leader()) {
                        match group.propose(command(reserve_op(&request_id, 1))).await {
                            Ok(Ok(RegionApplied::Reservation(r))) => {
                                acknowledged.push(r);
                                break 'retry;
                            }
                            Ok(other) => panic!("{request_id}: {other:?}"),
                            Err(e) => assert!(e.is_retryable(), "{request_id}: {e}"),
                        }
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{request_id} not acknowledged within {WAIT:?}"
                    );
                    tokio::time::sleep(POLL).await;
                }
                // A steady stream rather than a flood: a learner catches up
                // while the log grows, as in production.
                tokio::time::sleep(WRITER_PAUSE).await;
            }
            acknowledged
        });
        Writer { stop, task }
    }

    /// Stops and returns what was acknowledged.
    async fn finish(self) -> Vec<Reservation> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

/// Waits until `id`'s log is at most `lag` entries behind the leader's (the
/// leader's view), and returns the views seen on the way.
async fn wait_caught_up(group: &Group<RegionState>, id: NodeId, lag: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = group.membership();
        if view.lag(id).is_some_and(|l| l <= lag) {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} did not catch up: {view:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// A node added under writes, to a group whose log was purged, catches up
/// by a snapshot as a learner, is promoted, and votes: with one of the
/// three original voters down, the group of four still elects and commits
/// (three of four, the new node among them). Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_under_writes_catches_up_by_snapshot_and_votes() {
    let mut cluster = Cluster::start(|options| {
        options.snapshot_logs = 20;
        options.snapshot_logs_to_keep = 100;
    })
    .await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let deadline = Instant::now() + WAIT;
    while cluster.purged_index(leader).is_none() {
        assert!(Instant::now() < deadline, "the leader purged nothing");
        cluster
            .reserve(&NODES, &format!("more-{}", cluster.book.reservations.len()), 1)
            .await;
    }

    let writer = Writer::start(cluster.groups(), "w");
    cluster.start_joining(4).await;
    let view = cluster
        .group(leader)
        .add_learner(4, &addr(4), WAIT)
        .await
        .expect("add node 4 as a learner");
    assert!(view.learners.contains(&4), "{view:?}");
    // Asking again changes nothing.
    let again = cluster.group(leader).add_learner(4, &addr(4), WAIT).await;
    assert_eq!(again.map(|v| v.learners), Ok([4].into()));
    wait_caught_up(cluster.group(leader), 4, reservoir_raft::admin::CATCH_UP_LAG_MAX).await;
    let view = cluster
        .group(leader)
        .change_voters(&[4].into(), &BTreeSet::new(), WAIT)
        .await
        .expect("promote node 4");
    assert_eq!(view.voters, [1, 2, 3, 4].into());
    assert!(view.learners.is_empty());
    let acknowledged = writer.finish().await;
    assert!(!acknowledged.is_empty(), "the writer wrote nothing");
    cluster.book_reserves(acknowledged);
    let all = [1, 2, 3, 4];
    cluster.wait_for_leader(&all, WAIT).await;
    cluster.wait_converged(&all).await;
    let joined = cluster.group(4).status();
    assert!(
        joined.snapshots.installed >= 1,
        "node 4 took no snapshot: {joined:?}"
    );

    // It votes: with the leader down, three of four must elect, node 4 among them.
    let leader = cluster.wait_for_leader(&all, WAIT).await;
    cluster.crash(leader).await;
    let rest: Vec<NodeId> = all.into_iter().filter(|&id| id != leader).collect();
    cluster.wait_for_leader(&rest, WAIT).await;
    cluster.reserve(&rest, "after-crash", 1).await;
    cluster.wait_converged(&rest).await;
    cluster.shutdown().await;
}

/// A fresh node started to join, with an empty data directory and the
/// smallest id of its members, never initializes a group of its own: it
/// has no leader and no log until a leader adds it. (Without `join`, the
/// same node initializes and leads alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_never_initializes_a_group() {
    let net = LocalNet::new();
    let start = |id: NodeId, join: bool, dir: &TempDir| {
        let (storage, stores) = common::open(dir.path());
        let router = Router::new(id);
        net.attach(router.clone());
        let mut options = GroupOptions::new(common::GROUP, id, [(id, addr(id)), (9, addr(9))].into());
        options.join = join;
        let wire = net.wire();
        async move {
            let group = Group::start(options, stores, wire, &router).await.expect("start");
            (group, storage, router)
        }
    };
    let joining = TempDir::new().expect("temp dir");
    let (group, _storage, _router) = start(1, true, &joining).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let status = group.status();
    assert_eq!((status.leader, status.last_log_index), (None, None), "{status:?}");
    assert!(status.members.is_empty(), "{status:?}");
    group.shutdown().await;

    let initializing = TempDir::new().expect("temp dir");
    let (group, _storage, _router) = start(2, false, &initializing).await;
    // The metrics show the initialization a moment after it (they are
    // published by openraft's core task).
    let give_up = std::time::Instant::now() + WAIT;
    let mut status = group.status();
    while status.last_log_index.is_none() && std::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = group.status();
    }
    assert!(
        status.last_log_index.is_some(),
        "without join it initializes: {status:?}"
    );
    group.shutdown().await;
}

/// Removing a follower leaves the other two voting and committing; bad
/// requests are refused with their reasons and change nothing: an unknown
/// id, the leader itself, the last voter, a change that leaves too few
/// answering voters, a transfer to a learner or to an unknown id, and a
/// promotion of a node that is not a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_removed_and_bad_requests_change_nothing() {
    let mut cluster = Cluster::start(|_| {}).await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let group = cluster.group(leader).clone();
    let before = group.membership();
    let reason = |r: Result<_, reservoir_raft::AdminError>| {
        r.map(|_: reservoir_raft::MembershipView| ())
            .unwrap_err()
            .reason()
    };
    assert_eq!(
        reason(group.change_voters(&BTreeSet::new(), &[9].into(), WAIT).await),
        "UNKNOWN_NODE"
    );
    assert_eq!(
        reason(group.change_voters(&[9].into(), &BTreeSet::new(), WAIT).await),
        "UNKNOWN_NODE"
    );
    assert_eq!(
        reason(
            group
                .change_voters(&BTreeSet::new(), &[leader].into(), WAIT)
                .await
        ),
        "REMOVES_LEADER"
    );
    assert_eq!(
        reason(group.change_voters(&BTreeSet::new(), &NODES.into(), WAIT).await),
        "LAST_VOTER"
    );
    assert_eq!(
        reason(group.add_learner(0, "x", WAIT).await),
        "INVALID_MEMBERSHIP_REQUEST"
    );
    assert_eq!(
        reason(group.add_learner(others(leader)[0], "elsewhere", WAIT).await),
        "NODE_EXISTS"
    );
    let transfer = |r: Result<NodeId, reservoir_raft::AdminError>| r.unwrap_err().reason();
    assert_eq!(
        transfer(group.transfer_leadership(Some(9), WAIT).await),
        "UNKNOWN_NODE"
    );
    let follower = others(leader)[0];
    let not_leader = cluster
        .group(follower)
        .change_voters(&BTreeSet::new(), &[leader].into(), WAIT)
        .await;
    assert!(
        matches!(&not_leader, Err(reservoir_raft::AdminError::NotLeader { leader: Some((id, _)) }) if *id == leader),
        "{not_leader:?}"
    );
    // With one follower down, removing the other would leave one of two
    // voters answering.
    let (down, other) = (others(leader)[0], others(leader)[1]);
    cluster.crash(down).await;
    assert_eq!(
        reason(group.change_voters(&BTreeSet::new(), &[other].into(), WAIT).await),
        "QUORUM_AT_RISK"
    );
    assert_eq!(
        group.membership().voters,
        before.voters,
        "a refusal changed the voters"
    );
    cluster.start_node(down).await;
    cluster.wait_for_leader(&NODES, WAIT).await;

    // A learner is no transfer target.
    cluster.start_joining(4).await;
    group.add_learner(4, &addr(4), WAIT).await.expect("learner 4");
    assert_eq!(
        transfer(group.transfer_leadership(Some(4), WAIT).await),
        "NOT_A_VOTER"
    );
    // ... and leaves when removed.
    let view = group
        .change_voters(&BTreeSet::new(), &[4].into(), WAIT)
        .await
        .expect("remove learner 4");
    assert!(!view.addresses.contains_key(&4), "{view:?}");
    cluster.crash(4).await;

    // Remove a follower: the other two commit on their own.
    let removed = others(leader)[1];
    let view = group
        .change_voters(&BTreeSet::new(), &[removed].into(), WAIT)
        .await
        .expect("remove a follower");
    assert_eq!(
        view.voters,
        NODES.into_iter().filter(|&id| id != removed).collect()
    );
    assert!(!view.addresses.contains_key(&removed));
    // Asking again: it is no member any more.
    assert_eq!(
        reason(
            group
                .change_voters(&BTreeSet::new(), &[removed].into(), WAIT)
                .await
        ),
        "UNKNOWN_NODE"
    );
    cluster.crash(removed).await;
    let rest: Vec<NodeId> = others(removed);
    cluster.reserve(&rest, "after-removal", 1).await;
    cluster.wait_converged(&rest).await;
    cluster.shutdown().await;
}

/// A voter whose disk died is replaced under writes by a new node with a
/// new id and an empty data directory: it catches up by snapshot as a
/// learner, and one joint change drops the dead id and promotes it. The old
/// id is gone, the new one votes, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_by_a_new_id_under_writes() {
    let mut cluster = Cluster::start(|options| {
        options.snapshot_logs = 20;
        options.snapshot_logs_to_keep = 100;
    })
    .await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let dead = others(leader)[0];
    cluster.crash(dead).await;
    cluster.lose_data(dead);
    let live = others(dead);
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    while cluster.purged_index(leader).is_none() {
        assert!(Instant::now() < deadline, "the leader purged nothing");
        i += 1;
        cluster.reserve(&live, &format!("r{i}"), 1).await;
    }
    let writer = Writer::start(cluster.groups(), "w");
    cluster.start_joining(5).await;
    let group = cluster.group(leader).clone();
    group.add_learner(5, &addr(5), WAIT).await.expect("learner 5");
    wait_caught_up(&group, 5, reservoir_raft::admin::CATCH_UP_LAG_MAX).await;
    let view = group
        .change_voters(&[5].into(), &[dead].into(), WAIT)
        .await
        .expect("replace the dead node");
    let voters: BTreeSet<NodeId> = live.iter().copied().chain([5]).collect();
    assert_eq!(view.voters, voters);
    assert!(!view.addresses.contains_key(&dead), "{view:?}");
    cluster.book_reserves(writer.finish().await);
    let now: Vec<NodeId> = voters.iter().copied().collect();
    cluster.wait_converged(&now).await;
    assert!(
        cluster.group(5).status().snapshots.installed >= 1,
        "node 5 took no snapshot"
    );
    // It votes: with the leader down the other two elect.
    cluster.crash(leader).await;
    let rest: Vec<NodeId> = now.iter().copied().filter(|&id| id != leader).collect();
    cluster.wait_for_leader(&rest, WAIT).await;
    cluster.reserve(&rest, "after", 1).await;
    cluster.wait_converged(&rest).await;
    cluster.shutdown().await;
}

/// Leadership moves to the voter asked for, under writes, and then to "any
/// other voter"; the target leads afterwards and nothing acknowledged is
/// lost. Asking the leader to transfer to itself changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_target_under_writes() {
    let mut cluster = Cluster::start(|_| {}).await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    let writer = Writer::start(cluster.groups(), "w");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cluster
            .group(leader)
            .transfer_leadership(Some(leader), WAIT)
            .await,
        Ok(leader)
    );
    let target = others(leader)[1];
    let started = Instant::now();
    let new = cluster
        .group(leader)
        .transfer_leadership(Some(target), WAIT)
        .await;
    assert_eq!(new, Ok(target), "transfer from {leader} to {target}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.wait_for_leader(&NODES, WAIT).await, target);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = cluster
        .group(target)
        .transfer_leadership(None, WAIT)
        .await
        .expect("transfer to any other voter");
    assert_ne!(next, target);
    assert_eq!(cluster.wait_for_leader(&NODES, WAIT).await, next);
    let acknowledged = writer.finish().await;
    assert!(
        acknowledged.len() > 5,
        "the writer wrote {} reserves",
        acknowledged.len()
    );
    cluster.book_reserves(acknowledged);
    cluster.reserve(&NODES, "after", 1).await;
    cluster.wait_converged(&NODES).await;
    cluster.shutdown().await;
}

/// A snapshot asked for on a follower and on the leader is built at once
/// and covers what each had applied; asked again, the same one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_built_on_demand() {
    let mut cluster = Cluster::start(|_| {}).await;
    let leader = cluster.wait_for_leader(&NODES, WAIT).await;
    cluster.add_stock(&NODES, "stock-1", STOCK).await;
    for i in 1..=5 {
        cluster.reserve(&NODES, &format!("r{i}"), 1).await;
    }
    cluster.wait_converged(&NODES).await;
    for id in [others(leader)[0], leader] {
        let group = cluster.group(id);
        assert_eq!(
            group.status().snapshot_index,
            None,
            "node {id} snapshotted already"
        );
        let applied = group.status().applied_index.expect("applied");
        let index = group.snapshot_now(WAIT).await.expect("snapshot");
        assert!(
            index >= applied,
            "node {id}: snapshot at {index} < applied {applied}"
        );
        let status = group.status();
        assert_eq!(status.snapshot_index, Some(index));
        assert!(status.snapshots.built >= 1, "{status:?}");
        assert_eq!(group.snapshot_now(WAIT).await, Ok(index), "asked again");
    }
    cluster.shutdown().await;
}

/// Three empty nodes seeded with one region state (a restore) start with
/// it: they elect a leader without anyone initializing the group, every
/// node holds the seeded reservations and books, and the group commits on
/// top of it. Seeding a node that has data is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_group_starts_from_its_state() {
    let mut state = RegionState::new(common::GROUP);
    let stocked = state.apply(command(RegionOp::AdjustStock {
        request_id: "stock-1".into(),
        sku: SKU.into(),
        delta: 100,
    }));
    assert!(stocked.is_ok(), "{stocked:?}");
    let held = match state.apply(command(reserve_op("before-backup", 3))) {
        Ok(RegionApplied::Reservation(r)) => r,
        other => panic!("{other:?}"),
    };
    let members: BTreeMap<NodeId, String> = NODES.iter().map(|&id| (id, addr(id))).collect();
    let dirs: Vec<TempDir> = NODES.iter().map(|_| TempDir::new().expect("temp dir")).collect();
    for dir in &dirs {
        let storage = NodeStorage::open(&reservoir_raft::StorageOptions::new(dir.path())).expect("open");
        storage
            .seed_group(common::GROUP, state.clone(), 4_242, &members)
            .expect("seed");
        let again = storage.seed_group(common::GROUP, state.clone(), 4_242, &members);
        assert!(again.is_err(), "a second seed must be refused");
    }
    let net = LocalNet::new();
    let mut running = Vec::new();
    for (&id, dir) in NODES.iter().zip(&dirs) {
        let (storage, stores) = common::reopen(dir.path()).await;
        let router = Router::new(id);
        net.attach(router.clone());
        let options = GroupOptions::new(common::GROUP, id, members.clone());
        let group = Group::start(options, stores, net.wire(), &router)
            .await
            .expect("start");
        running.push((Arc::new(group), storage, router));
    }
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some((group, _, _)) = running.iter().find(|(g, _, _)| g.is_leader()) {
            break group.clone();
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(POLL).await;
    };
    let after = leader
        .propose(command(reserve_op("after-restore", 2)))
        .await
        .expect("commits");
    assert!(matches!(after, Ok(RegionApplied::Reservation(_))), "{after:?}");
    for (group, _, _) in &running {
        let deadline = Instant::now() + WAIT;
        loop {
            let (found, reserved) = group
                .read(|s| (s.reservation(held.id), s.reservations().count()))
                .expect("read");
            if reserved == 2 {
                assert_eq!(found, Some(held.clone()));
                assert!(group.status().applied_index > Some(4_242));
                break;
            }
            assert!(Instant::now() < deadline, "a node did not apply past the seed");
            tokio::time::sleep(POLL).await;
        }
    }
    for (group, _, _) in &running {
        group.shutdown().await;
    }
}
