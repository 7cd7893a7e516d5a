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
use reservoir_tokens::{RegionApplied, RegionCommand, RegionOp, RegionOutcome, RegionState, Rejection};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::edge;
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

/// What the services share: the config, the region group, the clock, and
/// channels to peers for forwarding.
pub struct Node {
    config: NodeConfig,
    group: Arc<Group<RegionState>>,
    clock: Arc<dyn Clock>,
    peers: Mutex<BTreeMap<String, Channel>>,
}

/// Where a write ended: applied here, or to be forwarded to the leader.
enum Route<T> {
    Applied(T),
    Leader(String),
}

impl Node {
    /// A node over a started region group.
    pub fn new(config: NodeConfig, group: Arc<Group<RegionState>>, clock: Arc<dyn Clock>) -> Node {
        Node {
            config,
            group,
            clock,
            peers: Mutex::new(BTreeMap::new()),
        }
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
    async fn write(&self, op: RegionOp, forwarded: bool) -> Result<Route<RegionApplied>, Status> {
        let mut waited = false;
        loop {
            let cmd = RegionCommand {
                now_ms: self.now_ms(),
                op: op.clone(),
            };
            let started = Instant::now();
            let result = tokio::time::timeout(COMMIT_TIMEOUT, self.group.propose(cmd)).await;
            metrics::histogram!("reservoir_raft_commit_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(outcome)) => return outcome_route(outcome),
                Ok(Err(ProposeError::NotLeader {
                    leader: Some((_, addr)),
                })) if !forwarded => {
                    return Ok(Route::Leader(addr));
                }
                Ok(Err(ProposeError::NotLeader { leader: None })) if !waited => {
                    waited = true;
                    self.group.wait_for_leader(LEADER_WAIT).await;
                }
                Ok(Err(ProposeError::Overloaded)) => {
                    return Err(NodeError::Overloaded {
                        queue: "proposals",
                        max: self.group.queue_max(),
                    }
                    .to_status());
                }
                Ok(Err(_)) => return Err(self.no_leader()),
                Err(_) => {
                    return Err(status_with_info(
                        Code::Unavailable,
                        format!(
                            "no commit within {COMMIT_TIMEOUT:?}; the outcome is unknown: retry with the same request"
                        ),
                        "NO_LEADER",
                        vec![("group", self.region().to_string())],
                    ));
                }
            }
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

fn outcome_route(outcome: RegionOutcome) -> Result<Route<RegionApplied>, Status> {
    match outcome {
        Ok(applied) => Ok(Route::Applied(applied)),
        Err(rejection) => Err(to_status(&rejection)),
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
    if status.code() == Code::Unavailable && crate::status::reason_of(&status).is_none() {
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

/// Records a call's count and latency by RPC and outcome (`ok` or the reason).
fn record<T>(rpc: &'static str, started: Instant, result: &Result<T, Status>) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(s) => crate::status::reason_of(s).unwrap_or_else(|| format!("{:?}", s.code()).to_uppercase()),
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

    async fn reserve_inner(
        &self,
        forwarded: bool,
        req: v1::ReserveRequest,
    ) -> Result<v1::ReserveResponse, Status> {
        let validated = edge::reserve_op(req.clone()).map_err(|r| to_status(&r))?;
        match self.node.write(validated.op, forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(v1::ReserveResponse {
                reservation: self.reservation(r),
            }),
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

    async fn release_inner(
        &self,
        forwarded: bool,
        req: v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let op = edge::release_op(self.node.region(), req.clone()).map_err(|r| to_status(&r))?;
        match self.node.write(op, forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(v1::ReleaseResponse {
                reservation: self.reservation(r),
            }),
            Route::Applied(other) => Err(unexpected("release", other)),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                client
                    .release(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    async fn confirm_inner(
        &self,
        forwarded: bool,
        req: v1::ConfirmRequest,
    ) -> Result<v1::ConfirmResponse, Status> {
        let op = edge::confirm_op(self.node.region(), req.clone()).map_err(|r| to_status(&r))?;
        match self.node.write(op, forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(v1::ConfirmResponse {
                reservation: self.reservation(r),
            }),
            Route::Applied(other) => Err(unexpected("confirm", other)),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                client
                    .confirm(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    async fn extend_inner(
        &self,
        forwarded: bool,
        req: v1::ExtendRequest,
    ) -> Result<v1::ExtendResponse, Status> {
        let op = edge::extend_op(self.node.region(), req.clone()).map_err(|r| to_status(&r))?;
        match self.node.write(op, forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(v1::ExtendResponse {
                reservation: self.reservation(r),
            }),
            Route::Applied(other) => Err(unexpected("extend", other)),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                client
                    .extend(forwarding(req))
                    .await
                    .map(Response::into_inner)
                    .map_err(forward_failed)
            }
        }
    }

    async fn get_reservation_inner(
        &self,
        forwarded: bool,
        req: v1::GetReservationRequest,
    ) -> Result<v1::Reservation, Status> {
        let id = edge::get_reservation_id(self.node.region(), &req).map_err(|r| to_status(&r))?;
        match self
            .node
            .read_current(forwarded, |s| s.reservation(id).cloned())
            .await?
        {
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
        let region = self.node.region().to_string();
        Ok(v1::Availability {
            sku,
            region: region.clone(),
            local_available: local,
            // Standalone: this region is the whole system. The cross-region
            // estimate (CRDT counters) comes with the three-region cluster.
            global_available_estimate: local,
            available_by_region: [(region, local)].into_iter().collect(),
            staleness_ms: 0,
        })
    }
}

#[tonic::async_trait]
impl v1::inventory_server::Inventory for InventoryService {
    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.reserve_inner(forwarded, request.into_inner()).await;
        record("reserve", started, &result);
        result.map(Response::new)
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.release_inner(forwarded, request.into_inner()).await;
        record("release", started, &result);
        result.map(Response::new)
    }

    async fn confirm(
        &self,
        request: Request<v1::ConfirmRequest>,
    ) -> Result<Response<v1::ConfirmResponse>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.confirm_inner(forwarded, request.into_inner()).await;
        record("confirm", started, &result);
        result.map(Response::new)
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.extend_inner(forwarded, request.into_inner()).await;
        record("extend", started, &result);
        result.map(Response::new)
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::Reservation>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.get_reservation_inner(forwarded, request.into_inner()).await;
        record("get_reservation", started, &result);
        result.map(Response::new)
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::Availability>, Status> {
        let started = Instant::now();
        let result = self.get_availability_inner(request.into_inner());
        record("get_availability", started, &result);
        result.map(Response::new)
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
            return Err(status_with_info(
                Code::FailedPrecondition,
                "this region has a ledger: stock is adjusted at the ledger, which is not built yet".into(),
                "NOT_STANDALONE",
                vec![("region", self.node.region().to_string())],
            ));
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

    fn status_inner(&self) -> Result<v1::ClusterStatus, Status> {
        let group = self.node.group().status();
        let nodes = group
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
                    group.role.into()
                } else {
                    "unknown".into()
                },
            })
            .collect();
        let region = self.node.region().to_string();
        let skus = self
            .node
            .group()
            .read(|s| {
                s.buckets()
                    .iter()
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
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.adjust_stock_inner(forwarded, request.into_inner()).await;
        record("adjust_stock", started, &result);
        result.map(Response::new)
    }

    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        let started = Instant::now();
        let result = self.status_inner();
        record("get_status", started, &result);
        result.map(Response::new)
    }

    async fn audit(&self, request: Request<v1::AuditRequest>) -> Result<Response<v1::AuditReport>, Status> {
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.audit_inner(forwarded).await;
        record("audit", started, &result);
        result.map(Response::new)
    }
}
