//! The gRPC services of a region node: `reservoir.v1.Inventory` and
//! `reservoir.v1.Admin`.
//!
//! Any node accepts any call. Writes are proposed to the region's Raft group;
//! on a follower they are forwarded once to the leader (the original request,
//! so the leader stamps the time), marked so they are never forwarded twice.
//! `GetReservation` is a linearizable read on the leader; `GetAvailability`
//! answers from local state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_raft::{Group, ProposeError};
use reservoir_tokens::audit;
use reservoir_tokens::{Line, RegionApplied, RegionCommand, RegionOp, RegionState, Rejection};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::availability::AvailabilityView;
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::control::{ControlClient, LedgerCall, LedgerReply};
use crate::demand::DemandMeter;
use crate::edge;
use crate::ledger::LedgerHost;
use crate::status::{NodeError, status_with_info, to_status};

/// How long a write may wait for its commit before the caller is told to
/// retry (with the same `request_id`: the outcome is unknown).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for an election when the group has no leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(2);
/// Timeout of a forwarded call to the leader.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(6);
/// The metadata key that marks a forwarded call.
pub const FORWARDED_HEADER: &str = "x-reservoir-forwarded";

/// What the services share: the config, the region group, the clock,
/// channels to peers for forwarding, and — in a cluster with a ledger — the
/// control-plane client, demand meter, availability view and (on ledger
/// hosts) the ledger.
pub struct Node {
    config: NodeConfig,
    group: Arc<Group<RegionState>>,
    clock: Arc<dyn Clock>,
    peers: Mutex<BTreeMap<String, Channel>>,
    control: Arc<ControlClient>,
    ledger: Option<Arc<LedgerHost>>,
    demand: DemandMeter,
    availability: AvailabilityView,
    /// When each SKU last asked the ledger for a top-up (rate limit).
    topups: Mutex<BTreeMap<String, u64>>,
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
    /// A node over a started region group. `ledger` is set on ledger hosts.
    pub fn new(
        config: NodeConfig,
        group: Arc<Group<RegionState>>,
        clock: Arc<dyn Clock>,
        control: Arc<ControlClient>,
        ledger: Option<Arc<LedgerHost>>,
    ) -> Node {
        let horizon_ms = config.rebalance.horizon_ms;
        Node {
            config,
            group,
            clock,
            peers: Mutex::new(BTreeMap::new()),
            control,
            ledger,
            demand: DemandMeter::new(horizon_ms),
            availability: AvailabilityView::new(),
            topups: Mutex::new(BTreeMap::new()),
        }
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

    /// Proposes a region op (see [`Node::write`]), keeping refusals apart.
    pub async fn write_region(
        &self,
        op: RegionOp,
        forwarded: bool,
    ) -> Result<Route<RegionApplied>, WriteError> {
        self.write(op, forwarded).await
    }

    /// A linearizable read of the region (see [`Node::read_current`]).
    pub async fn read_region<R>(
        &self,
        forwarded: bool,
        f: impl Fn(&RegionState) -> R,
    ) -> Result<Route<R>, Status> {
        self.read_current(forwarded, f).await
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

    /// The wall clock, as the leader stamps it on commands.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn no_leader(&self) -> Status {
        NodeError::NoLeader {
            group: self.region().to_string(),
        }
        .to_status()
    }

    /// Proposes `op` stamped with this node's clock. A follower answers
    /// `Leader(addr)` (unless the call was already forwarded); with no leader
    /// known it waits up to [`LEADER_WAIT`] for an election first.
    async fn write(&self, op: RegionOp, forwarded: bool) -> Result<Route<RegionApplied>, WriteError> {
        // With no leader known (an election), wait for one before proposing,
        // rather than propose, fail, and propose a copy again.
        if !self.group.is_leader() && self.group.leader().is_none() {
            self.group.wait_for_leader(LEADER_WAIT).await;
        }
        let cmd = RegionCommand {
            now_ms: self.now_ms(),
            op,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(COMMIT_TIMEOUT, self.group.propose(cmd)).await;
        metrics::histogram!("reservoir_raft_commit_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(Ok(applied))) => Ok(Route::Applied(applied)),
            Ok(Ok(Err(rejection))) => Err(WriteError::Rejected(rejection)),
            Ok(Err(ProposeError::NotLeader {
                leader: Some((_, addr)),
            })) if !forwarded => Ok(Route::Leader(addr)),
            Ok(Err(ProposeError::Overloaded)) => Err(WriteError::Unavailable(
                NodeError::Overloaded {
                    queue: "proposals",
                    max: self.group.queue_max(),
                }
                .to_status(),
            )),
            Ok(Err(_)) => Err(WriteError::Unavailable(self.no_leader())),
            Err(_) => Err(WriteError::Unavailable(status_with_info(
                Code::Unavailable,
                format!(
                    "no commit within {COMMIT_TIMEOUT:?}; the outcome is unknown: retry with the same request"
                ),
                "NO_LEADER",
                vec![("group", self.region().to_string())],
            ))),
        }
    }

    /// A linearizable read on the leader, or where to forward it.
    async fn read_current<R>(
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
                Err(ProposeError::NotLeader { leader: None }) if !waited => {
                    waited = true;
                    self.group.wait_for_leader(LEADER_WAIT).await;
                }
                Err(_) => return Err(self.no_leader()),
            }
        }
    }

    /// An Inventory client to the node at `addr`.
    fn inventory(&self, addr: &str) -> Result<InventoryClient<Channel>, Status> {
        Ok(InventoryClient::new(self.channel(addr)?))
    }

    /// The channel to the node at `addr` (one reused channel per peer).
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match peers.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| Status::internal(format!("bad leader address {addr}: {e}")))?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(FORWARD_TIMEOUT)
                    .tcp_nodelay(true);
                let c = endpoint.connect_lazy();
                peers.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(channel)
    }
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

fn forwarding<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// A forwarded call's failure to connect means the leader moved or died.
fn forward_failed(status: Status) -> Status {
    if status.code() == Code::Unavailable && reservoir_client::reason_of(&status).is_none() {
        status_with_info(
            Code::Unavailable,
            format!("leader unreachable: {}", status.message()),
            "NO_LEADER",
            vec![],
        )
    } else {
        status
    }
}

fn unexpected(what: &str, applied: RegionApplied) -> Status {
    Status::internal(format!("{what}: unexpected outcome {applied:?}"))
}

/// Runs a call, records its count and latency by RPC and outcome, and wraps
/// its answer.
async fn recorded<T>(
    rpc: &'static str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = call.await;
    record(rpc, started, &result);
    result.map(Response::new)
}

/// Records a call's count and latency by RPC and outcome (`ok` or the reason).
fn record<T>(rpc: &'static str, started: Instant, result: &Result<T, Status>) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(s) => reservoir_client::reason_of(s).unwrap_or_else(|| format!("{:?}", s.code()).to_uppercase()),
    };
    metrics::counter!("reservoir_requests_total", "rpc" => rpc, "outcome" => outcome.clone()).increment(1);
    metrics::histogram!("reservoir_request_seconds", "rpc" => rpc, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// `reservoir.v1.Inventory` for one region.
pub struct InventoryService {
    node: Arc<Node>,
}

impl InventoryService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> InventoryService {
        InventoryService { node }
    }

    fn reservation(&self, r: reservoir_tokens::Reservation) -> Option<v1::Reservation> {
        Some(edge::reservation_to_proto(self.node.region(), r))
    }

    /// Waits until this region has the tokens for every line, up to `wait`.
    async fn wait_for_tokens(&self, lines: &[Line], wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let enough = self
                .node
                .group()
                .read(|s| {
                    lines
                        .iter()
                        .all(|l| s.bucket(&l.sku).is_some_and(|b| b.available >= l.quantity))
                })
                .unwrap_or(false);
            if enough {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(TOPUP_POLL).await;
        }
    }

    /// Asks for a top-up of every SKU of `lines` now under the low-water mark.
    fn check_low_water(&self, lines: &[Line]) {
        let low_water = self.node.config().rebalance.low_water;
        for line in lines {
            let low = self
                .node
                .group()
                .read(|s| s.bucket(&line.sku).is_none_or(|b| b.available < low_water));
            if low.unwrap_or(false) {
                self.node.request_topup(&line.sku);
            }
        }
    }

    async fn reserve_inner(
        &self,
        forwarded: bool,
        req: v1::ReserveRequest,
    ) -> Result<v1::ReserveResponse, Status> {
        let validated = edge::reserve_op(req.clone()).map_err(|r| to_status(&r))?;
        let lines: Vec<Line> = match &validated.op {
            RegionOp::Reserve { lines, .. } => lines.clone(),
            _ => Vec::new(),
        };
        // A copy to retry with only when the caller may wait for a top-up.
        let retry =
            (validated.max_wait_ms > 0 && !self.node.config().standalone).then(|| validated.op.clone());
        let mut outcome = self.node.write(validated.op, forwarded).await;
        if !matches!(outcome, Ok(Route::Leader(_))) {
            // Counted where the reserve is proposed (the leader), once.
            let now = self.node.now_ms();
            for line in &lines {
                self.node.demand().record(&line.sku, line.quantity, now);
            }
        }
        if let Err(WriteError::Rejected(Rejection::InsufficientStock { .. })) = &outcome {
            for line in &lines {
                self.node.request_topup(&line.sku);
            }
            if let Some(op) = retry {
                metrics::counter!("reservoir_reserves_waited_total").increment(1);
                if self
                    .wait_for_tokens(&lines, Duration::from_millis(validated.max_wait_ms))
                    .await
                {
                    outcome = self.node.write(op, forwarded).await;
                }
            }
        }
        match outcome? {
            Route::Applied(RegionApplied::Reservation(r)) => {
                self.check_low_water(&r.lines);
                Ok(v1::ReserveResponse {
                    reservation: self.reservation(r),
                })
            }
            Route::Applied(other) => Err(unexpected("reserve", other)),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                client
                    .reserve(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    /// Proposes a release, confirm or extend here, or forwards the original
    /// request to the leader with `forward`; either way the reservation as
    /// it now is.
    async fn write_reservation<F, Fut>(
        &self,
        what: &'static str,
        op: Result<RegionOp, Rejection>,
        forwarded: bool,
        forward: F,
    ) -> Result<Option<v1::Reservation>, Status>
    where
        F: FnOnce(InventoryClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<v1::Reservation>, Status>>,
    {
        let op = op.map_err(|r| to_status(&r))?;
        match self.node.write(op, forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(self.reservation(r)),
            Route::Applied(other) => Err(unexpected(what, other)),
            Route::Leader(addr) => forward(self.node.inventory(&addr)?).await.map_err(forward_failed),
        }
    }

    async fn release_inner(
        &self,
        forwarded: bool,
        req: v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let op = edge::release_op(self.node.region(), req.clone());
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.release(forwarding(req)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("release", op, forwarded, forward).await?;
        Ok(v1::ReleaseResponse { reservation })
    }

    async fn confirm_inner(
        &self,
        forwarded: bool,
        req: v1::ConfirmRequest,
    ) -> Result<v1::ConfirmResponse, Status> {
        let op = edge::confirm_op(self.node.region(), req.clone());
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.confirm(forwarding(req)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("confirm", op, forwarded, forward).await?;
        Ok(v1::ConfirmResponse { reservation })
    }

    async fn extend_inner(
        &self,
        forwarded: bool,
        req: v1::ExtendRequest,
    ) -> Result<v1::ExtendResponse, Status> {
        let op = edge::extend_op(self.node.region(), req.clone());
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.extend(forwarding(req)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("extend", op, forwarded, forward).await?;
        Ok(v1::ExtendResponse { reservation })
    }

    async fn get_reservation_inner(
        &self,
        forwarded: bool,
        req: v1::GetReservationRequest,
    ) -> Result<v1::Reservation, Status> {
        let id = edge::get_reservation_id(self.node.region(), &req).map_err(|r| to_status(&r))?;
        match self.node.read_current(forwarded, |s| s.reservation(id)).await? {
            Route::Applied(Some(r)) => Ok(edge::reservation_to_proto(self.node.region(), r)),
            Route::Applied(None) => Err(to_status(&Rejection::ReservationNotFound {
                id: req.reservation_id.clone(),
            })),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                client
                    .get_reservation(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    fn get_availability_inner(&self, req: v1::GetAvailabilityRequest) -> Result<v1::Availability, Status> {
        let sku = edge::availability_sku(req).map_err(|r| to_status(&r))?;
        let local = self
            .node
            .group()
            .read(|s| s.bucket(&sku).map_or(0, |b| b.available))
            .map_err(|_| self.node.no_leader())?;
        // This region's exact figure; the others (and the ledger's pool) as
        // last heard through gossip, with how old the oldest figure is.
        let estimate = self
            .node
            .availability()
            .estimate(&sku, self.node.region(), local, self.node.now_ms());
        Ok(v1::Availability {
            sku,
            region: self.node.region().to_string(),
            local_available: local,
            global_available_estimate: estimate.total,
            available_by_region: estimate.by_region.into_iter().collect(),
            staleness_ms: estimate.staleness_ms,
        })
    }
}

#[tonic::async_trait]
impl v1::inventory_server::Inventory for InventoryService {
    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        recorded("reserve", self.reserve_inner(forwarded, request.into_inner())).await
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let forwarded = is_forwarded(&request);
        recorded("release", self.release_inner(forwarded, request.into_inner())).await
    }

    async fn confirm(
        &self,
        request: Request<v1::ConfirmRequest>,
    ) -> Result<Response<v1::ConfirmResponse>, Status> {
        let forwarded = is_forwarded(&request);
        recorded("confirm", self.confirm_inner(forwarded, request.into_inner())).await
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        let forwarded = is_forwarded(&request);
        recorded("extend", self.extend_inner(forwarded, request.into_inner())).await
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::Reservation>, Status> {
        let forwarded = is_forwarded(&request);
        recorded(
            "get_reservation",
            self.get_reservation_inner(forwarded, request.into_inner()),
        )
        .await
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::Availability>, Status> {
        recorded("get_availability", async {
            self.get_availability_inner(request.into_inner())
        })
        .await
    }
}

/// `reservoir.v1.Admin` for a region node.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> AdminService {
        AdminService { node }
    }

    async fn adjust_stock_inner(
        &self,
        forwarded: bool,
        req: v1::AdjustStockRequest,
    ) -> Result<v1::AdjustStockResponse, Status> {
        let adjustment = edge::adjust_stock(req.clone()).map_err(|r| to_status(&r))?;
        if !self.node.config().standalone {
            // Stock enters the ledger's pool; the rebalancer distributes it.
            let call = LedgerCall::Apply(adjustment.into_ledger_op());
            return match self.node.control().ledger(&call, FORWARD_TIMEOUT).await? {
                LedgerReply::Applied(Ok(reservoir_tokens::LedgerApplied::Stock {
                    sku,
                    stocked_total,
                    pool,
                })) => Ok(v1::AdjustStockResponse {
                    sku,
                    stocked_total,
                    available: pool,
                }),
                LedgerReply::Applied(Err(rejection)) => Err(to_status(&rejection)),
                other => Err(Status::internal(format!(
                    "adjust_stock: unexpected ledger reply {other:?}"
                ))),
            };
        }
        match self.node.write(adjustment.into_region_op(), forwarded).await? {
            Route::Applied(RegionApplied::Stock {
                sku,
                stocked_total,
                available,
            }) => Ok(v1::AdjustStockResponse {
                sku,
                stocked_total,
                available,
            }),
            Route::Applied(other) => Err(unexpected("adjust_stock", other)),
            Route::Leader(addr) => {
                let channel = self.node.channel(&addr)?;
                let mut client = v1::admin_client::AdminClient::new(channel);
                client
                    .adjust_stock(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    /// Cluster status: with a ledger, from the ledger leader's summary (its
    /// last round's view of every region); standalone, from this region.
    async fn cluster_status(&self) -> Result<v1::ClusterStatus, Status> {
        if self.node.config().standalone {
            return self.status_inner();
        }
        let summary = match self
            .node
            .control()
            .ledger(&LedgerCall::Summary, FORWARD_TIMEOUT)
            .await?
        {
            LedgerReply::Summary(s) => *s,
            other => {
                return Err(Status::internal(format!(
                    "status: unexpected ledger reply {other:?}"
                )));
            }
        };
        let own = self.node.group().status();
        let mut names: Vec<String> = self.node.control().regions().map(str::to_string).collect();
        names.sort();
        let regions = names
            .iter()
            .map(|name| {
                let reachable = !summary.unreachable.contains(name);
                let nodes = if name == self.node.region() {
                    self.node_statuses(&own)
                } else {
                    Vec::new()
                };
                v1::RegionStatus {
                    region: name.clone(),
                    leader_id: summary.region_leaders.get(name).copied().unwrap_or(0),
                    nodes,
                    healthy: reachable && summary.region_leaders.contains_key(name),
                }
            })
            .collect();
        let skus = summary
            .skus
            .iter()
            .map(|(sku, books)| v1::SkuStatus {
                sku: sku.clone(),
                pool: books.pool,
                regions: summary
                    .regions
                    .iter()
                    .map(|(region, buckets)| {
                        let b = buckets.get(sku).cloned().unwrap_or_default();
                        v1::RegionTokens {
                            region: region.clone(),
                            available: b.available,
                            held: b.held,
                            confirmed: b.confirmed,
                        }
                    })
                    .collect(),
                transfers_in_flight: summary.transfers.iter().filter(|t| &t.sku == sku).count() as u64,
                stranded: summary
                    .unreachable
                    .iter()
                    .map(|r| books.granted.get(r).copied().unwrap_or(0).max(0) as u64)
                    .sum(),
            })
            .collect();
        Ok(v1::ClusterStatus {
            regions,
            ledger_leader_id: summary.leader_id,
            skus,
            settlement_lag: summary
                .settlement_lag
                .iter()
                .map(|(region, (entries, age))| v1::SettlementLag {
                    region: region.clone(),
                    entries: *entries,
                    oldest_age_ms: *age,
                })
                .collect(),
            last_audit: summary
                .last_audit
                .as_ref()
                .map(|(at, sheet)| edge::audit_report(sheet, *at)),
        })
    }

    fn node_statuses(&self, group: &reservoir_raft::GroupStatus) -> Vec<v1::NodeStatus> {
        group
            .members
            .iter()
            .map(|(id, addr)| v1::NodeStatus {
                id: *id,
                grpc: addr.clone(),
                // This node only knows its own health first-hand.
                healthy: *id == group.node_id || group.leader.is_some(),
                role: if Some(*id) == group.leader {
                    "leader".into()
                } else if *id == group.node_id {
                    group.role.as_str().into()
                } else {
                    "unknown".into()
                },
            })
            .collect()
    }

    fn status_inner(&self) -> Result<v1::ClusterStatus, Status> {
        let group = self.node.group().status();
        let nodes = self.node_statuses(&group);
        let region = self.node.region().to_string();
        let skus = self
            .node
            .group()
            .read(|s| {
                s.buckets()
                    .map(|(sku, b)| v1::SkuStatus {
                        sku: sku.clone(),
                        pool: 0,
                        regions: vec![v1::RegionTokens {
                            region: region.clone(),
                            available: b.available,
                            held: b.held,
                            confirmed: b.confirmed,
                        }],
                        transfers_in_flight: 0,
                        stranded: 0,
                    })
                    .collect()
            })
            .map_err(|_| self.node.no_leader())?;
        Ok(v1::ClusterStatus {
            regions: vec![v1::RegionStatus {
                region: region.clone(),
                leader_id: group.leader.unwrap_or(0),
                nodes,
                healthy: group.leader.is_some(),
            }],
            ledger_leader_id: 0,
            skus,
            settlement_lag: Vec::new(),
            last_audit: None,
        })
    }

    async fn audit_inner(&self, forwarded: bool) -> Result<v1::AuditReport, Status> {
        if !self.node.config().standalone {
            return match self
                .node
                .control()
                .ledger(&LedgerCall::Audit, FORWARD_TIMEOUT)
                .await?
            {
                LedgerReply::Audit(sheet) => Ok(edge::audit_report(&sheet, self.node.now_ms())),
                other => Err(Status::internal(format!(
                    "audit: unexpected ledger reply {other:?}"
                ))),
            };
        }
        // Audit the current state: on the leader, after a read index.
        match self
            .node
            .read_current(forwarded, audit::balance_standalone)
            .await?
        {
            Route::Applied(sheet) => Ok(edge::audit_report(&sheet, self.node.now_ms())),
            Route::Leader(addr) => {
                let channel = self.node.channel(&addr)?;
                let mut client = v1::admin_client::AdminClient::new(channel);
                client
                    .audit(forwarding(v1::AuditRequest {}))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn adjust_stock(
        &self,
        request: Request<v1::AdjustStockRequest>,
    ) -> Result<Response<v1::AdjustStockResponse>, Status> {
        let forwarded = is_forwarded(&request);
        recorded(
            "adjust_stock",
            self.adjust_stock_inner(forwarded, request.into_inner()),
        )
        .await
    }

    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        recorded("get_status", self.cluster_status()).await
    }

    async fn audit(&self, request: Request<v1::AuditRequest>) -> Result<Response<v1::AuditReport>, Status> {
        let forwarded = is_forwarded(&request);
        recorded("audit", self.audit_inner(forwarded)).await
    }
}
