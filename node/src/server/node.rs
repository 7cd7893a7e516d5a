//! What a region node's services share ([`Node`]): the region's write path
//! (propose, or learn where the leader is), linearizable reads, clients to
//! the leader for forwarding, and top-up requests to the ledger.
//!
//! The gRPC services themselves are in [`crate::server::service`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reservoir_client::Channels;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_raft::{Group, ProposeError};
use reservoir_tokens::{RegionApplied, RegionCommand, RegionOp, RegionState, Rejection};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::server::availability::AvailabilityView;
use crate::server::clock::{self, Clock, GroupClock};
use crate::server::config::NodeConfig;
use crate::server::control::{ControlClient, LedgerCall};
use crate::server::demand::DemandMeter;
use crate::server::ledger::LedgerHost;
use crate::server::security::{Authenticator, PeerPolicy};
use crate::server::status::{NodeError, status_with_info, to_status};

/// How long a write may wait for its commit before the caller is told to
/// retry (with the same `request_id`: the outcome is unknown).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call waits for an election when the group has no leader. A
/// call forwarded to this node never waits: the forwarder's client retries.
pub const LEADER_WAIT: Duration = Duration::from_secs(2);
/// The longest a leader may take to answer a forwarded call: a reserve may
/// commit, wait up to `max_wait_ms` for a top-up and commit again.
pub const LEADER_ANSWER_MAX: Duration =
    Duration::from_millis(2 * COMMIT_TIMEOUT.as_millis() as u64 + reservoir_tokens::limits::MAX_WAIT_MS_MAX);
/// Timeout of a forwarded call to the leader: longer than the leader's own
/// bound ([`LEADER_ANSWER_MAX`]), so a slow leader's own answer (e.g.
/// `NO_LEADER` after its commit timeout) reaches the client rather than a
/// forwarding timeout; if it fires anyway the client reads `NO_LEADER`.
pub const FORWARD_TIMEOUT: Duration = Duration::from_millis(LEADER_ANSWER_MAX.as_millis() as u64 + 1_000);
/// The metadata key that marks a forwarded call (trusted on the peer plane
/// only).
pub const FORWARDED_HEADER: &str = "x-reservoir-forwarded";
/// The metadata key that names the principal a forwarded call is for.
pub const PRINCIPAL_HEADER: &str = "x-reservoir-principal";

/// What the services share: the config, the region group, the clock, the
/// node's channels to its peers (for forwarding), and — in a cluster with a ledger — the
/// control-plane client, demand meter, availability view and (on ledger
/// hosts) the ledger.
pub struct Node {
    config: NodeConfig,
    group: Arc<Group<RegionState>>,
    /// The region group's bounded logical time on this node.
    time: Arc<GroupClock>,
    peers: Arc<Channels>,
    control: Arc<ControlClient>,
    ledger: Option<Arc<LedgerHost>>,
    authenticator: Arc<Authenticator>,
    peer_policy: PeerPolicy,
    demand: DemandMeter,
    availability: AvailabilityView,
    /// When each SKU last asked the ledger for a top-up (rate limit).
    topups: Mutex<BTreeMap<String, u64>>,
    /// `reservoir_raft_commit_seconds{group}` of the region group (one
    /// handle, not a registry lookup per write).
    commit_seconds: metrics::Histogram,
}

/// Where a write or a current read ended: done here, or to be forwarded to
/// the leader at this address.
pub enum Route<T> {
    /// Done on this node.
    Applied(T),
    /// Forward to the leader at this gRPC address.
    Leader(String),
}

/// Why a region write did not apply.
#[derive(Debug)]
pub enum WriteError {
    /// The state machine refused it (an answer, not a failure).
    Rejected(Rejection),
    /// No leader, no quorum, overloaded, timed out: retry.
    Unavailable(Status),
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match e {
            WriteError::Rejected(r) => to_status(&r),
            WriteError::Unavailable(s) => s,
        }
    }
}

/// Most SKUs whose last top-up request is remembered (for the rate limit).
pub const TOPUP_SKUS_TRACKED_MAX: usize = 100_000;
/// Least time between two top-up requests for one SKU.
pub const TOPUP_INTERVAL_MS: u64 = 100;
/// How often a reserve waiting for a top-up looks at its region's tokens.
pub const TOPUP_POLL: Duration = Duration::from_millis(10);

impl Node {
    /// A node over a started region group, calling peers over `peers` (the
    /// channels its Raft network and control client use too). `ledger` is set
    /// on ledger hosts.
    pub fn new(
        config: NodeConfig,
        group: Arc<Group<RegionState>>,
        clock: Arc<dyn Clock>,
        peers: Arc<Channels>,
        control: Arc<ControlClient>,
        ledger: Option<Arc<LedgerHost>>,
        peer_policy: PeerPolicy,
    ) -> Node {
        let horizon_ms = config.rebalance.horizon_ms;
        let authenticator = Arc::new(if config.insecure {
            Authenticator::insecure()
        } else {
            Authenticator::new(&config.api_keys)
        });
        let applied_ms = group.read(|s| s.clock_ms()).unwrap_or(0);
        let time = Arc::new(GroupClock::new(config.region.clone(), clock, applied_ms));
        let commit_seconds =
            metrics::histogram!("reservoir_raft_commit_seconds", "group" => config.region.clone());
        Node {
            config,
            group,
            time,
            peers,
            control,
            ledger,
            authenticator,
            peer_policy,
            demand: DemandMeter::new(horizon_ms),
            availability: AvailabilityView::new(),
            topups: Mutex::new(BTreeMap::new()),
            commit_seconds,
        }
    }

    /// Checks the client plane's callers.
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// The same, shared (for the client listener's layer).
    pub fn authenticator_arc(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    /// What each peer may send.
    pub fn peer_policy(&self) -> &PeerPolicy {
        &self.peer_policy
    }

    /// The control-plane client (regions and ledger).
    pub fn control(&self) -> &ControlClient {
        &self.control
    }

    /// The ledger host, on nodes that host a ledger voter.
    pub fn ledger(&self) -> Option<&Arc<LedgerHost>> {
        self.ledger.as_ref()
    }

    /// Requested units per SKU, for the rebalancer.
    pub fn demand(&self) -> &DemandMeter {
        &self.demand
    }

    /// Every region's availability, as last heard.
    pub fn availability(&self) -> &AvailabilityView {
        &self.availability
    }

    /// This node's availability view to send to another region, stamped
    /// with the applied index of each group it speaks for (its region, and
    /// the ledger's pool on a ledger node), which no figure it published
    /// can be marked later than.
    pub fn gossip_digest(&self) -> crate::server::availability::Digest {
        let mut digest = self.availability.digest();
        let index = self.group.status().applied_index.unwrap_or(0);
        digest.applied.insert(self.region().to_string(), index);
        if let Some(host) = &self.ledger {
            digest.applied.insert(
                crate::server::availability::POOL.to_string(),
                host.group().status().applied_index.unwrap_or(0),
            );
        }
        digest
    }

    /// Asks the ledger for a top-up of `sku` (at most every
    /// [`TOPUP_INTERVAL_MS`] per SKU), without waiting for it.
    pub fn request_topup(self: &Arc<Self>, sku: &str) {
        if self.config.standalone || !self.control.has_ledger() {
            return;
        }
        // Only SKUs this region was ever granted: a client asking for
        // unknown SKUs must not be able to drive the ledger (the periodic
        // round grants newly stocked SKUs anyway).
        if !self.group.read(|s| s.bucket(sku).is_some()).unwrap_or(false) {
            return;
        }
        let now = self.now_ms();
        {
            let mut last = self.topups.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .get(sku)
                .is_some_and(|&t| now.saturating_sub(t) < TOPUP_INTERVAL_MS)
            {
                return;
            }
            if last.len() >= TOPUP_SKUS_TRACKED_MAX {
                last.retain(|_, t| now.saturating_sub(*t) < TOPUP_INTERVAL_MS);
                if last.len() >= TOPUP_SKUS_TRACKED_MAX {
                    return;
                }
            }
            last.insert(sku.to_string(), now);
        }
        metrics::counter!("reservoir_topup_requests_total").increment(1);
        let node = self.clone();
        let call = LedgerCall::TopUp {
            region: self.region().to_string(),
            sku: sku.to_string(),
        };
        tokio::spawn(async move {
            let _ = node.control.ledger(&call, FORWARD_TIMEOUT).await;
        });
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The region this node serves.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// The region's Raft group.
    pub fn group(&self) -> &Group<RegionState> {
        &self.group
    }

    /// The region group's time on this node: on the leader, the bounded
    /// stamp it puts on the commands it proposes; on a follower, its
    /// estimate of the group's time (see [`crate::server::clock`]).
    pub fn now_ms(&self) -> u64 {
        clock::group_now(&self.time, &self.group, RegionState::clock_ms)
    }

    /// This node's wall clock, unbounded: for what is compared across
    /// groups (gossip markers), never for a command's stamp.
    pub fn wall_ms(&self) -> u64 {
        self.time.wall_ms()
    }

    /// Keeps this node's estimate of the region group's time fresh (see
    /// [`clock::observe_forever`]).
    pub fn observe_time(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        clock::observe_forever(self.time.clone(), self.group.clone(), RegionState::clock_ms)
    }

    /// `NO_LEADER` for this region's group.
    pub fn no_leader(&self) -> Status {
        NodeError::NoLeader {
            group: self.region().to_string(),
        }
        .to_status()
    }

    /// Proposes `op` stamped with this node's clock. A follower answers
    /// `Leader(addr)` (unless the call was already forwarded); with no leader
    /// known it waits up to [`LEADER_WAIT`] for an election first (not for a
    /// forwarded call: that one is answered `NO_LEADER` at once and its
    /// client retries).
    pub async fn write(&self, op: RegionOp, forwarded: bool) -> Result<Route<RegionApplied>, WriteError> {
        // With no leader known (an election), wait for one before proposing,
        // rather than propose, fail, and propose a copy again.
        if !forwarded && !self.group.is_leader() && self.group.leader().is_none() {
            self.group.wait_for_leader(LEADER_WAIT).await;
        }
        let cmd = RegionCommand {
            now_ms: self.now_ms(),
            op,
        };
        match self.commit(self.group.propose(cmd)).await {
            Ok(Ok(Ok(applied))) => Ok(Route::Applied(applied)),
            Ok(Ok(Err(rejection))) => Err(WriteError::Rejected(rejection)),
            Ok(Err(ProposeError::NotLeader {
                leader: Some((_, addr)),
            })) if !forwarded => Ok(Route::Leader(addr)),
            Ok(Err(e)) => Err(WriteError::Unavailable(
                NodeError::from_propose(self.region(), self.group.queue_max(), &e).to_status(),
            )),
            Err(timeout) => Err(WriteError::Unavailable(timeout)),
        }
    }

    /// The leader's node id when this node is a follower that knows it
    /// (the hint its client-plane answers carry).
    pub fn leader_hint(&self) -> Option<u64> {
        if self.group.is_leader() {
            return None;
        }
        self.group.leader().map(|(id, _)| id)
    }

    /// Where a call that writes should go: `Some(leader)` when this node
    /// is a follower that knows the leader and the call was not already
    /// forwarded; `None` to propose here. With no leader known it waits up
    /// to [`LEADER_WAIT`] for an election first (not for a forwarded call).
    pub async fn leader_to_forward_to(&self, forwarded: bool) -> Option<String> {
        if forwarded || self.group.is_leader() {
            return None;
        }
        if self.group.leader().is_none() {
            self.group.wait_for_leader(LEADER_WAIT).await;
        }
        self.group
            .leader()
            .map(|(_, addr)| addr)
            .filter(|_| !self.group.is_leader())
    }

    /// Proposes `ops` in one log entry, each stamped with this node's clock,
    /// and returns each one's outcome in order. Only on the leader (see
    /// [`Node::leader_to_forward_to`]): a node that is not, or lost the lead
    /// meanwhile, answers `NO_LEADER` (retry: every op keeps its request
    /// id). `ops` is within a batch's bound (the caller checks it).
    pub async fn write_many(
        &self,
        ops: Vec<RegionOp>,
    ) -> Result<Vec<Result<RegionApplied, Rejection>>, Status> {
        let now_ms = self.now_ms();
        let commands = ops.into_iter().map(|op| RegionCommand { now_ms, op }).collect();
        self.commit(self.group.propose_many(commands))
            .await?
            .map_err(|e| NodeError::from_propose(self.region(), self.group.queue_max(), &e).to_status())
    }

    /// Waits for `proposal` at most [`COMMIT_TIMEOUT`] and records how long
    /// it took; no commit in time is `NO_LEADER` (the outcome is unknown).
    async fn commit<T>(
        &self,
        proposal: impl std::future::Future<Output = Result<T, ProposeError>>,
    ) -> Result<Result<T, ProposeError>, Status> {
        let started = Instant::now();
        let result = tokio::time::timeout(COMMIT_TIMEOUT, proposal).await;
        self.commit_seconds.record(started.elapsed().as_secs_f64());
        result.map_err(|_| {
            if crate::server::logging::call_line_allowed() {
                tracing::warn!(
                    group = %self.region(),
                    timeout = ?COMMIT_TIMEOUT,
                    "no commit within the timeout; the outcome is unknown"
                );
            }
            status_with_info(
                Code::Unavailable,
                format!(
                    "no commit within {COMMIT_TIMEOUT:?}; the outcome is unknown: retry with the same request"
                ),
                "NO_LEADER",
                vec![("group", self.region().to_string())],
            )
        })
    }

    /// A linearizable read on the leader, or where to forward it (unless the
    /// call was already forwarded).
    pub async fn read_current<R>(
        &self,
        forwarded: bool,
        f: impl Fn(&RegionState) -> R,
    ) -> Result<Route<R>, Status> {
        let mut waited = false;
        loop {
            match self.group.read_linearizable(&f).await {
                Ok(r) => return Ok(Route::Applied(r)),
                Err(ProposeError::NotLeader {
                    leader: Some((_, addr)),
                }) if !forwarded => {
                    return Ok(Route::Leader(addr));
                }
                Err(ProposeError::NotLeader { leader: None }) if !waited && !forwarded => {
                    waited = true;
                    self.group.wait_for_leader(LEADER_WAIT).await;
                }
                Err(_) => return Err(self.no_leader()),
            }
        }
    }

    /// This region's state as this node has applied it, encoded for a
    /// backup, with its applied index (call it after a linearizable read,
    /// on the leader). At most `bytes_max` encoded bytes.
    pub fn backup_state(&self, bytes_max: usize) -> Result<crate::server::backup::GroupState, Status> {
        use crate::server::backup::{GroupKind, GroupState, backup_error, encode_state};
        let (state, index) = self
            .group
            .read_indexed(encode_state)
            .map_err(|e| backup_error(false, format!("reading {}: {e}", self.region())))?;
        let state = state.map_err(|e| backup_error(true, e))?;
        if state.len() > bytes_max {
            return Err(backup_error(
                true,
                format!(
                    "{}'s state is {} bytes, over {bytes_max}",
                    self.region(),
                    state.len()
                ),
            ));
        }
        Ok(GroupState {
            name: self.region().to_string(),
            kind: GroupKind::Region,
            applied_index: index.unwrap_or(0),
            state,
        })
    }

    /// An Inventory client to the node at `addr` (the leader, to forward to).
    pub fn inventory(&self, addr: &str) -> Result<InventoryClient<Channel>, Status> {
        Ok(InventoryClient::new(self.channel(addr)?))
    }

    /// An Admin client to the node at `addr` (the leader, to forward to).
    pub fn admin(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        Ok(AdminClient::new(self.channel(addr)?))
    }

    /// The channel to the leader at `addr`; a failure to make one means
    /// the leader cannot be reached (`NO_LEADER`: nothing was sent).
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        tracing::Span::current().record("leader", crate::server::logging::bounded(addr));
        self.peers.get(addr).map_err(|e| {
            if crate::server::logging::call_line_allowed() {
                tracing::warn!(leader = addr, error = %e, "leader unreachable: no channel to forward on");
            }
            status_with_info(
                Code::Unavailable,
                format!("leader at {addr} unreachable: {e}"),
                "NO_LEADER",
                vec![("group", self.region().to_string())],
            )
        })
    }
}
