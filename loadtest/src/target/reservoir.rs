//! The Reservoir target: a cluster started by `reservoir up`, found through
//! its `cluster.json`.
//!
//! Each scenario region sends to the endpoints `cluster.json` lists for the
//! cluster region of the same name (its nodes; for `single-writer`, link
//! emulators in front of the us-east nodes), starting with the group
//! leader's endpoint when there is one (followers would forward to it) and
//! moving to the next endpoint after a retryable error, or to the leader a
//! follower names in its answer (`x-reservoir-leader`). Errors are read from
//! the `google.rpc.ErrorInfo` detail (domain `reservoir`) with
//! `tonic-types`; a status without one is named by its gRPC code.
//!
//! The control API and the nodes' `/status` are spoken with the client
//! crate's HTTP client ([`reservoir_client::http`]): one request per
//! connection, a deadline, and a bound on the response's size.
//!
//! Credentials come from `cluster.json` ([`Credentials::for_cluster`]): TLS
//! trusting its CA, the `shop` key for Inventory calls and the `admin` key
//! for Admin calls (`RESERVOIR_TOKEN` / `RESERVOIR_CA_FILE` override them);
//! the control API's token is read from its `control_token_file`. A cluster
//! started with `up --insecure` lists none of them: plaintext, no key.
//!
//! Two ways of calling can be chosen ([`CallOptions`]): `spread` sends each
//! call to the region's nodes in turn instead of the leader (followers
//! forward), and `batch_max` > 1 gathers the reserves waiting at one moment
//! into `ReserveBatch` calls of up to that many, as a checkout service that
//! aggregates would (each reserve keeps its request id and gets its own
//! answer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reservoir_client::connect::retry_every;
use reservoir_client::control_api::{self, PartitionRequest};
use reservoir_client::{ClientChannel, Credentials, HostPort, Rotation, is_retryable};
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

use super::{OpError, ServerSku, ServerView, TargetError, reason};
use crate::workload::Catalog;
pub use reservoir_proto::code_name;

/// Longest one gRPC call may take (a reserve may wait up to 5 s for a
/// top-up, and a leaderless group answers NO_LEADER after 5 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long stocking the catalog may take, retries included.
pub const STOCK_DEADLINE: Duration = Duration::from_secs(60);
/// Concurrent `AdjustStock` calls while stocking.
pub const STOCK_CONCURRENCY: usize = 16;
/// How long the rebalancer has to give every region tokens of every SKU.
pub const DISTRIBUTE_DEADLINE: Duration = Duration::from_secs(30);
/// How often status and audit are polled while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a control-API call may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// `cluster.json`'s schema, shared with `reservoir up` and the tests.
pub use reservoir_client::{ClusterEndpoint, ClusterFile, ClusterNode};

impl From<reservoir_client::ClusterFileError> for TargetError {
    fn from(e: reservoir_client::ClusterFileError) -> TargetError {
        TargetError::Setup(e.to_string())
    }
}

/// The newest `target/reservoir-up-*/cluster.json` under the current folder
/// or one of its parents.
pub fn newest_cluster_file() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    for dir in cwd.ancestors() {
        let target = dir.join("target");
        let Ok(entries) = std::fs::read_dir(&target) else {
            continue;
        };
        let newest = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("reservoir-up-"))
            .map(|e| e.path().join("cluster.json"))
            .filter_map(|p| {
                let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
                Some((modified, p))
            })
            .max();
        if let Some((_, p)) = newest {
            return Some(p);
        }
    }
    None
}

pub use reservoir_client::reason_or_code;

/// A status as an [`OpError`]: UNAVAILABLE (no leader, overloaded, no
/// connection), timeouts and transport errors are retryable with the same
/// request id.
pub fn op_error(status: &Status) -> OpError {
    // A connection reset under a call (a cut WAN link) is a transport error
    // that tonic reports as UNKNOWN; the request id makes a retry safe.
    OpError {
        reason: reason_or_code(status),
        retryable: is_retryable(status),
        message: status.message().to_string(),
    }
}

/// A call to node `i` of `nodes` failed: the error, after moving the
/// region on to its next node when the failure is worth retrying elsewhere.
fn failed_on(nodes: &Rotation, i: usize, status: &Status) -> OpError {
    let e = op_error(status);
    if e.retryable {
        nodes.skip(i);
    }
    e
}

/// Most reserves in one `ReserveBatch` call (the server's bound).
pub const RESERVE_BATCH_MAX: usize = 256;
/// Most encoded bytes of the reserves of one `ReserveBatch` (under the
/// API's 64 KiB message bound, with room for the framing).
pub const BATCH_BYTES_MAX: usize = 63 * 1024;
/// Most `ReserveBatch` calls in flight per region (with `batch_max` > 1).
pub const BATCHES_IN_FLIGHT: usize = 4;
/// Most reserves waiting for a batch per region.
pub const BATCH_QUEUE_MAX: usize = 65_536;

/// How the load tester calls the nodes of a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Each call to the region's nodes in turn, instead of to the leader
    /// (followers forward; their leader hints are not followed).
    pub spread: bool,
    /// Start each region's calls at a follower instead of the leader, and
    /// follow the leader hint of its first answers (as a client that knows
    /// the nodes but not the leader would).
    pub start_at_follower: bool,
    /// Gather waiting reserves into `ReserveBatch` calls of up to this many
    /// (0 or 1: one `Reserve` call each).
    pub batch_max: usize,
}

impl CallOptions {
    /// How the report names it: empty for unary calls to the leader.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.spread {
            parts.push("spread".to_string());
        }
        if self.start_at_follower {
            parts.push("started at a follower".to_string());
        }
        if self.batch_max > 1 {
            parts.push(format!("batches of <= {}", self.batch_max));
        }
        parts.join(", ")
    }
}

/// A reserve waiting for its batch.
struct Pending {
    request: v1::ReserveRequest,
    reply: oneshot::Sender<Result<String, OpError>>,
}

/// Follows a follower's leader hint (`x-reservoir-leader`): the node it
/// names becomes the region's current node. True when there was one to
/// follow. (In spread mode the current node is not used for calls.)
fn follow_hint(nodes: &Rotation, ids: &[u64], metadata: &tonic::metadata::MetadataMap) -> bool {
    let Some(leader) = reservoir_client::leader_hint(metadata) else {
        return false;
    };
    match ids.iter().position(|&id| id == leader) {
        Some(i) => {
            nodes.follow(i);
            true
        }
        None => false,
    }
}

/// As [`failed_on`]; a refusal (not worth retrying elsewhere) that names
/// the leader moves the region to it. A retryable failure moves on to the
/// next node even if it names a leader: that leader may be the very node
/// that just died, named by a follower that has not heard of the election.
fn failed_on_hinted(nodes: &Rotation, ids: &[u64], i: usize, status: &Status) -> OpError {
    let e = failed_on(nodes, i, status);
    if !e.retryable {
        follow_hint(nodes, ids, status.metadata());
    }
    e
}

/// The adapter.
pub struct ReservoirTarget {
    /// Per scenario region, its endpoints with the `shop` key.
    regions: Vec<Arc<Rotation>>,
    /// Per scenario region, its nodes' ids, in the order of `regions`' (to
    /// follow a follower's leader hint).
    ids: Vec<Arc<Vec<u64>>>,
    /// See [`CallOptions::spread`]: the next call's node.
    spread: Option<AtomicUsize>,
    /// Per scenario region, the queue of its batcher (with `batch_max` > 1).
    batchers: Vec<mpsc::Sender<Pending>>,
    /// Every node, home region first, with the `admin` key, for Admin calls.
    admin: Rotation,
    control: Option<String>,
    /// The control API's token (from `cluster.json`'s `control_token_file`).
    control_token: Option<String>,
    /// A ledger settles confirmed sales (tokens); without one (standalone,
    /// single-writer, global-consensus) the region's confirmed units are the
    /// record of sales.
    settles: bool,
    /// `cluster.json`'s architecture, for the report.
    architecture: Option<String>,
    /// Every node of `cluster.json`, for the server sampler.
    nodes: Vec<ClusterNode>,
}

fn channel(credentials: &Credentials, addr: &HostPort) -> Result<ClientChannel, TargetError> {
    let endpoint = credentials
        .endpoint(&addr.to_string())
        .map_err(TargetError::Setup)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    Ok(credentials.wrap(endpoint.connect_lazy()))
}

/// What a client with `role` presents to the cluster of `file` (at `path`).
fn credentials(file: &ClusterFile, path: &Path, role: &str) -> Result<Credentials, TargetError> {
    Credentials::for_cluster(file, path, role)
        .map_err(|e| TargetError::Setup(format!("credentials for the {role} role: {e}")))
}

/// The control API's token: the file `cluster.json` (at `path`) names,
/// relative to its directory; `None` when it names none.
fn control_token(file: &ClusterFile, path: &Path) -> Result<Option<String>, TargetError> {
    let Some(token_file) = &file.control_token_file else {
        return Ok(None);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    reservoir_client::credentials::read_key(&dir.join(token_file))
        .map(Some)
        .map_err(|e| TargetError::Setup(format!("the control API's token: {e}")))
}

impl ReservoirTarget {
    /// Connects (lazily) to the cluster of `file` (read from `path`, which
    /// its relative credential paths are relative to) for the scenario's
    /// regions, and points each region at its current leader.
    pub async fn connect(
        file: &ClusterFile,
        path: &Path,
        regions: &[String],
        calls: CallOptions,
    ) -> Result<ReservoirTarget, TargetError> {
        let shop = credentials(file, path, "shop")?;
        let admin_credentials = credentials(file, path, "admin")?;
        let control_token = control_token(file, path)?;
        let mut by_region = Vec::new();
        let mut ids_by_region = Vec::new();
        for r in regions {
            let endpoints = file.region_endpoints(r);
            if endpoints.is_empty() {
                return Err(TargetError::Setup(format!(
                    "the cluster has no node in region {r:?}"
                )));
            }
            let channels = endpoints
                .iter()
                .map(|(_, addr)| channel(&shop, addr))
                .collect::<Result<_, TargetError>>()?;
            ids_by_region.push(Arc::new(
                endpoints.iter().map(|(id, _)| *id).collect::<Vec<u64>>(),
            ));
            by_region.push(Arc::new(Rotation::new(channels, 0)));
        }
        let mut admin_nodes: Vec<&ClusterNode> = file.nodes.iter().collect();
        if admin_nodes.is_empty() {
            return Err(TargetError::Setup("the cluster has no node".into()));
        }
        // Home region (of the first scenario region, us-east by default) first.
        admin_nodes.sort_by_key(|n| (Some(&n.region) != regions.first(), n.id));
        let admin = Rotation::new(
            admin_nodes
                .iter()
                .map(|n| channel(&admin_credentials, &n.grpc))
                .collect::<Result<_, TargetError>>()?,
            0,
        );
        let batchers = if calls.batch_max > 1 {
            by_region
                .iter()
                .zip(&ids_by_region)
                .map(|(nodes, ids)| {
                    let (tx, rx) = mpsc::channel(BATCH_QUEUE_MAX);
                    tokio::spawn(batch_loop(nodes.clone(), ids.clone(), rx, calls.batch_max));
                    tx
                })
                .collect()
        } else {
            Vec::new()
        };
        let target = ReservoirTarget {
            regions: by_region,
            ids: ids_by_region.clone(),
            spread: calls.spread.then(|| AtomicUsize::new(0)),
            batchers,
            admin,
            control: file.control.clone(),
            control_token,
            settles: file.ledger.is_some(),
            architecture: file.architecture.clone(),
            nodes: file.nodes.clone(),
        };
        let status = target.status().await.map_err(|e| {
            TargetError::Setup(format!("the cluster does not answer GetStatus: {}", e.message))
        })?;
        for ((r, nodes), ids) in regions.iter().zip(&target.regions).zip(&ids_by_region) {
            // The region's own group, or the one group of a cluster that has
            // one (single-writer, global-consensus).
            let group = match status.regions.iter().find(|s| &s.region == r) {
                Some(g) => Some(g),
                None if status.regions.len() == 1 => status.regions.first(),
                None => None,
            };
            let leader = group.map_or(0, |g| g.leader_id);
            if let Some(i) = ids.iter().position(|id| *id == leader) {
                nodes.follow(if calls.start_at_follower { i + 1 } else { i });
            }
        }
        Ok(target)
    }

    fn region(&self, region: usize) -> Result<(&Rotation, usize, ClientChannel), OpError> {
        let nodes = self
            .regions
            .get(region)
            .ok_or_else(|| OpError::fatal(reason::SERVER_ERROR, format!("no region {region}")))?;
        match &self.spread {
            Some(turn) => {
                let i = turn.fetch_add(1, Ordering::Relaxed) % nodes.len();
                Ok((nodes, i, nodes.channel(i)))
            }
            None => {
                let (i, ch) = nodes.pick();
                Ok((nodes, i, ch))
            }
        }
    }

    /// One `Reserve` attempt.
    pub async fn reserve(
        &self,
        region: usize,
        request_id: &str,
        lines: &[(String, u64)],
        ttl_ms: u64,
        max_wait_ms: u64,
    ) -> Result<String, OpError> {
        let request = v1::ReserveRequest {
            request_id: request_id.to_string(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| v1::Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
                .collect(),
            ttl_ms,
            allow_partial: false,
            max_wait_ms,
        };
        if let Some(batcher) = self.batchers.get(region) {
            let (reply, answer) = oneshot::channel();
            batcher
                .try_send(Pending { request, reply })
                .map_err(|_| OpError::retryable(reason::UNAVAILABLE, "the batch queue is full"))?;
            return answer
                .await
                .unwrap_or_else(|_| Err(OpError::retryable(reason::UNAVAILABLE, "the batcher stopped")));
        }
        let (nodes, i, ch) = self.region(region)?;
        let ids = &self.ids[region];
        match InventoryClient::new(ch).reserve(request).await {
            Ok(r) => {
                follow_hint(nodes, ids, r.metadata());
                Ok(r.into_inner()
                    .reservation
                    .map(|r| r.reservation_id)
                    .unwrap_or_default())
            }
            Err(s) => Err(failed_on_hinted(nodes, ids, i, &s)),
        }
    }

    /// One `Confirm` attempt.
    pub async fn confirm(&self, region: usize, reservation_id: &str, order_id: &str) -> Result<(), OpError> {
        let (nodes, i, ch) = self.region(region)?;
        let request = v1::ConfirmRequest {
            reservation_id: reservation_id.to_string(),
            order_id: order_id.to_string(),
            lines: Vec::new(),
        };
        let ids = &self.ids[region];
        match InventoryClient::new(ch).confirm(request).await {
            Ok(r) => {
                follow_hint(nodes, ids, r.metadata());
                Ok(())
            }
            Err(s) => Err(failed_on_hinted(nodes, ids, i, &s)),
        }
    }

    /// One `Release` attempt.
    pub async fn release(&self, region: usize, reservation_id: &str) -> Result<(), OpError> {
        let (nodes, i, ch) = self.region(region)?;
        let request = v1::ReleaseRequest {
            reservation_id: reservation_id.to_string(),
        };
        let ids = &self.ids[region];
        match InventoryClient::new(ch).release(request).await {
            Ok(r) => {
                follow_hint(nodes, ids, r.metadata());
                Ok(())
            }
            Err(s) => Err(failed_on_hinted(nodes, ids, i, &s)),
        }
    }

    /// One `GetReservation` attempt: the reservation's state, or `None`
    /// when the region does not know it (`RESERVATION_NOT_FOUND`).
    pub async fn reservation_state(
        &self,
        region: usize,
        reservation_id: &str,
    ) -> Result<Option<v1::ReservationState>, OpError> {
        let (nodes, i, ch) = self.region(region)?;
        let request = v1::GetReservationRequest {
            reservation_id: reservation_id.to_string(),
        };
        let ids = &self.ids[region];
        match InventoryClient::new(ch).get_reservation(request).await {
            Ok(r) => {
                follow_hint(nodes, ids, r.metadata());
                Ok(Some(r.into_inner().state()))
            }
            Err(s) => {
                let e = failed_on_hinted(nodes, ids, i, &s);
                if e.reason == reason::RESERVATION_NOT_FOUND {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `Admin.GetStatus` from any node that answers.
    pub async fn status(&self) -> Result<v1::ClusterStatus, OpError> {
        self.admin_call(|mut c| async move { c.get_status(v1::GetStatusRequest {}).await })
            .await
    }

    /// `Admin.Audit` from any node that answers.
    pub async fn audit(&self) -> Result<v1::AuditReport, OpError> {
        self.admin_call(|mut c| async move { c.audit(v1::AuditRequest {}).await })
            .await
    }

    /// One Admin call, tried on each node in turn (from the last one that
    /// answered) until one answers.
    async fn admin_call<T, F, Fut>(&self, call: F) -> Result<T, OpError>
    where
        F: Fn(AdminClient<ClientChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = OpError::fatal(reason::UNAVAILABLE, "no node");
        for _ in 0..self.admin.len() {
            let (i, ch) = self.admin.pick();
            match call(AdminClient::new(ch)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    last = op_error(&s);
                    self.admin.skip(i);
                }
            }
        }
        Err(last)
    }

    /// Adds the catalog's stock with `AdjustStock` (idempotent request ids
    /// derived from the SKU), then waits until every region holds tokens of
    /// every SKU (or the pool is empty). Returns a warning when the
    /// rebalancer did not finish within [`DISTRIBUTE_DEADLINE`].
    pub async fn stock(&self, catalog: &Catalog) -> Result<Option<String>, TargetError> {
        let deadline = tokio::time::Instant::now() + STOCK_DEADLINE;
        let mut pending = tokio::task::JoinSet::new();
        let mut next = catalog.skus.iter();
        loop {
            while pending.len() < STOCK_CONCURRENCY {
                let Some(s) = next.next() else { break };
                let admin = self.admin.clone();
                let request = v1::AdjustStockRequest {
                    request_id: format!("{}-stock", s.sku),
                    sku: s.sku.clone(),
                    delta: s.stock as i64,
                };
                pending.spawn(adjust_with_retry(admin, request, deadline));
            }
            match pending.join_next().await {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(TargetError::Setup(e)),
                Some(Err(e)) => return Err(TargetError::Setup(format!("stocking task: {e}"))),
            }
        }
        let deadline = tokio::time::Instant::now() + DISTRIBUTE_DEADLINE;
        let skus: BTreeMap<&str, ()> = catalog.skus.iter().map(|s| (s.sku.as_str(), ())).collect();
        loop {
            let mut missing = 0usize;
            match self.status().await {
                Ok(status) => {
                    // Groups that hold tokens: one per scenario region, or
                    // the one group of single-writer / global-consensus.
                    let groups = self.regions.len().min(status.regions.len().max(1));
                    for s in status.skus.iter().filter(|s| skus.contains_key(s.sku.as_str())) {
                        let with_tokens = s.regions.iter().filter(|r| r.available > 0).count();
                        if s.pool > 0 && with_tokens < groups {
                            missing += 1;
                        }
                    }
                    let seen = status
                        .skus
                        .iter()
                        .filter(|s| skus.contains_key(s.sku.as_str()))
                        .count();
                    missing += skus.len().saturating_sub(seen);
                }
                Err(_) => missing = skus.len(),
            }
            if missing == 0 {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Some(format!(
                    "{missing} SKUs had not reached every region after {DISTRIBUTE_DEADLINE:?}; starting anyway"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// True when a ledger settles sales and regions hold tokens (`tokens`).
    pub fn settles(&self) -> bool {
        self.settles
    }

    /// Units of `b` whose sale is final: settled into the ledger, or, without
    /// a ledger (nothing will settle them), confirmed.
    fn final_sales(&self, b: &v1::SkuBalance) -> u64 {
        let confirmed: u64 = b.regions.iter().map(|r| r.confirmed).sum();
        b.settled_total + if self.settles { 0 } else { confirmed }
    }

    /// The cluster's architecture as `cluster.json` names it.
    pub fn architecture(&self) -> Option<&str> {
        self.architecture.as_deref()
    }

    /// Every node of `cluster.json`.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Stranded tokens of the catalog's SKUs, from `GetStatus`.
    pub async fn stranded(&self, catalog: &Catalog) -> Option<u64> {
        let status = self.status().await.ok()?;
        let skus: BTreeMap<&str, ()> = catalog.skus.iter().map(|s| (s.sku.as_str(), ())).collect();
        Some(
            status
                .skus
                .iter()
                .filter(|s| skus.contains_key(s.sku.as_str()))
                .map(|s| s.stranded)
                .sum(),
        )
    }

    /// Cuts `region` off through the control API.
    pub async fn partition(&self, region: &str) -> Result<(), String> {
        let body = serde_json::to_string(&PartitionRequest::region(region)).expect("serializes");
        self.control_post(control_api::PARTITION, &body).await
    }

    /// Heals every link through the control API.
    pub async fn heal(&self) -> Result<(), String> {
        self.control_post(control_api::HEAL, "{}").await
    }

    async fn control_post(&self, path: &str, json: &str) -> Result<(), String> {
        let addr = self
            .control
            .as_deref()
            .ok_or("cluster.json names no control API (a standalone region?)")?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("the control API {addr:?} is not host:port: {e}"))?;
        let token = self.control_token.as_deref();
        let (code, body) = reservoir_client::http::post_json(addr, path, json, token, CONTROL_TIMEOUT)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        if code == 200 {
            Ok(())
        } else {
            Err(format!(
                "POST {path}: {code} {}",
                body.lines().next().unwrap_or("")
            ))
        }
    }

    /// Polls the audit until it balances and, for every catalog SKU, nothing
    /// is held (unless `wait_for_holds` is false: live holds are then
    /// reported, not waited for) or confirmed-unsettled and the ledger's
    /// `settled_total` lies in `expected[sku]` = (units the tester saw
    /// confirmed, plus those whose confirm had an unknown outcome); or until
    /// `deadline`. Then reads stranded tokens. Without a ledger nothing is
    /// ever settled: the region's confirmed units are compared instead.
    pub async fn reconcile(
        &self,
        catalog: &Catalog,
        expected: &BTreeMap<String, (u64, u64)>,
        deadline: tokio::time::Instant,
        wait_for_holds: bool,
    ) -> Result<ServerView, TargetError> {
        let started = tokio::time::Instant::now();
        let skus: BTreeMap<&str, ()> = catalog.skus.iter().map(|s| (s.sku.as_str(), ())).collect();
        let mut last_error = String::new();
        let mut last: Option<(v1::AuditReport, bool, Vec<String>)> = None;
        loop {
            match self.audit().await {
                Ok(audit) => {
                    let mut notes = Vec::new();
                    for b in audit.skus.iter().filter(|b| skus.contains_key(b.sku.as_str())) {
                        let (seen, unknown) = expected.get(&b.sku).copied().unwrap_or((0, 0));
                        let held: u64 = b.regions.iter().map(|r| r.held).sum();
                        let unsettled: u64 = b.regions.iter().map(|r| r.confirmed).sum();
                        let sold = self.final_sales(b);
                        let word = if self.settles { "settled" } else { "confirmed" };
                        if (wait_for_holds && held > 0) || (self.settles && unsettled > 0) {
                            notes.push(format!(
                                "{}: {held} held, {unsettled} confirmed not yet settled",
                                b.sku
                            ));
                        } else if sold < seen || sold > seen + unknown {
                            notes.push(format!(
                                "{}: {word} {sold} but the tester saw {seen} confirmed (+{unknown} unknown)",
                                b.sku
                            ));
                        }
                    }
                    if !audit.balanced {
                        notes.push(format!(
                            "audit not balanced (missing regions: {:?})",
                            audit.missing_regions
                        ));
                    }
                    let done = notes.is_empty();
                    last = Some((audit, done, notes));
                    if done {
                        break;
                    }
                }
                Err(e) => last_error = format!("{}: {}", e.reason, e.message),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let Some((audit, caught_up, mut notes)) = last else {
            return Err(TargetError::Setup(format!(
                "Admin.Audit never answered: {last_error}"
            )));
        };
        let stranded: BTreeMap<String, u64> = match self.status().await {
            Ok(s) => s.skus.into_iter().map(|k| (k.sku, k.stranded)).collect(),
            Err(e) => {
                notes.push(format!("GetStatus failed, stranded unknown: {}", e.reason));
                BTreeMap::new()
            }
        };
        let mut view_skus = BTreeMap::new();
        let mut balanced = audit.balanced;
        for b in audit.skus.iter().filter(|b| skus.contains_key(b.sku.as_str())) {
            if b.drift != 0 || b.ledger_drift != 0 || b.regions.iter().any(|r| r.drift != 0) {
                balanced = false;
                notes.push(format!(
                    "{}: drift {} ledger drift {}",
                    b.sku, b.drift, b.ledger_drift
                ));
            }
            let available: u64 = b.pool
                + b.in_flight_grants
                + b.in_flight_revokes
                + b.regions.iter().map(|r| r.available).sum::<u64>();
            let held: u64 = b.regions.iter().map(|r| r.held).sum();
            let unsettled: u64 = b.regions.iter().map(|r| r.confirmed).sum();
            view_skus.insert(
                b.sku.clone(),
                ServerSku {
                    stocked: b.stocked_total,
                    available,
                    held,
                    sold: b.settled_total + unsettled,
                    settled: self.final_sales(b),
                    stranded: stranded.get(&b.sku).copied().unwrap_or(0),
                },
            );
        }
        for s in &catalog.skus {
            if !view_skus.contains_key(&s.sku) {
                balanced = false;
                notes.push(format!("{}: not in the audit", s.sku));
            }
        }
        let held_end: u64 = view_skus.values().map(|v| v.held).sum();
        if held_end > 0 && !wait_for_holds {
            notes.push(format!(
                "{held_end} units still held in live holds when the books were read (not waited for)"
            ));
        }
        Ok(ServerView {
            skus: view_skus,
            balanced,
            settled_caught_up: caught_up,
            waited_s: started.elapsed().as_secs_f64(),
            notes,
        })
    }
}

/// A region's batcher: sends the reserves waiting in `rx` as
/// `ReserveBatch` calls of up to `batch_max`, at most
/// [`BATCHES_IN_FLIGHT`] at a time (while they are busy, the next batch
/// grows), each to the region's current node, and answers each reserve with
/// its own result.
async fn batch_loop(
    nodes: Arc<Rotation>,
    ids: Arc<Vec<u64>>,
    mut rx: mpsc::Receiver<Pending>,
    batch_max: usize,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let batch_max = batch_max.min(RESERVE_BATCH_MAX);
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Bounded by count and by the API's 64 KiB message bound (each
        // reserve adds its encoding and a few bytes of framing).
        let mut bytes = reserve_bytes(&first.request);
        let mut batch = vec![first];
        let mut carry = None;
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => {
                    let size = reserve_bytes(&p.request);
                    if bytes + size > BATCH_BYTES_MAX {
                        carry = Some(p);
                        break;
                    }
                    bytes += size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        carried = carry;
        let (nodes, ids) = (nodes.clone(), ids.clone());
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let (i, ch) = nodes.pick();
            let call = InventoryClient::new(ch)
                .reserve_batch(v1::ReserveBatchRequest { reserves: requests })
                .await;
            match call {
                Ok(response) => {
                    follow_hint(&nodes, &ids, response.metadata());
                    let results = response.into_inner().results;
                    if results.len() != replies.len() {
                        let e = OpError::fatal(
                            reason::SERVER_ERROR,
                            format!("{} results for {} reserves", results.len(), replies.len()),
                        );
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    } else {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(batch_result(result));
                        }
                    }
                }
                Err(status) => {
                    let e = failed_on_hinted(&nodes, &ids, i, &status);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// A reserve's share of a `ReserveBatch` message: its encoding, its field
/// tag and its length prefix.
fn reserve_bytes(request: &v1::ReserveRequest) -> usize {
    use prost::Message;
    request.encoded_len() + 4
}

/// One reserve's result in a batch: its reservation id, or its error
/// (retryable when it is UNAVAILABLE, as a unary call's would be).
fn batch_result(result: v1::ReserveResult) -> Result<String, OpError> {
    match result.outcome {
        Some(v1::reserve_result::Outcome::Reservation(r)) => Ok(r.reservation_id),
        Some(v1::reserve_result::Outcome::Error(e)) => Err(OpError {
            reason: if e.reason.is_empty() {
                code_name(tonic::Code::from(e.code)).to_string()
            } else {
                e.reason
            },
            retryable: e.code == tonic::Code::Unavailable as i32,
            message: e.message,
        }),
        None => Err(OpError::fatal(
            reason::SERVER_ERROR,
            "a batch result without an outcome",
        )),
    }
}

/// One `AdjustStock`, retried on UNAVAILABLE across nodes until `deadline`.
async fn adjust_with_retry(
    nodes: Rotation,
    request: v1::AdjustStockRequest,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
    let outcome = retry_every(&nodes, budget, POLL_INTERVAL, |ch| {
        let request = request.clone();
        async move { AdminClient::new(ch).adjust_stock(request).await }
    })
    .await;
    outcome.result.map(|_| ()).map_err(|s| {
        let e = op_error(&s);
        format!("stocking {}: {}: {}", request.sku, e.reason, e.message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservoir_proto::ERROR_DOMAIN;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    /// A status with a Reservoir ErrorInfo yields its reason; one without
    /// yields its code's name; UNAVAILABLE is retryable, RESOURCE_EXHAUSTED not.
    #[test]
    fn reasons_from_statuses() {
        let details = ErrorDetails::with_error_info(
            "INSUFFICIENT_STOCK",
            ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        let s = Status::with_error_details(Code::ResourceExhausted, "short", details);
        let e = op_error(&s);
        assert_eq!(e.reason, "INSUFFICIENT_STOCK");
        assert!(!e.retryable);
        let foreign = ErrorDetails::with_error_info(
            "X",
            "elsewhere",
            std::collections::HashMap::<String, String>::new(),
        );
        let s = Status::with_error_details(Code::Unavailable, "no leader", foreign);
        let e = op_error(&s);
        assert_eq!(e.reason, "UNAVAILABLE");
        assert!(e.retryable);
        assert_eq!(
            reason_or_code(&Status::deadline_exceeded("slow")),
            "DEADLINE_EXCEEDED"
        );
    }
}
