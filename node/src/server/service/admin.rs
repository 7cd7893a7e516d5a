//! `reservoir.v1.Admin`: stock adjustments, the cluster's status and the
//! audit, and the operator calls on a Raft group (membership, leadership,
//! snapshots; see [`crate::server::operate`]), for operators.

use std::sync::Arc;

use reservoir_client::Role;
use reservoir_proto::v1;
use reservoir_tokens::RegionApplied;
use reservoir_tokens::audit;
use tonic::{Request, Response, Status};

use super::{
    Caller, Plane, forward_failed, forwarding, leader_answer, note_request_id, recorded, unexpected,
};
use crate::on_group;
use crate::server::control::{LedgerCall, LedgerReply};
use crate::server::edge;
use crate::server::node::{FORWARD_TIMEOUT, Node, Route};
use crate::server::operate::{self, ADMIN_ACTION_TIMEOUT};
use crate::server::security::Permission;
use crate::server::status::to_status;
use reservoir_raft::AdminError;

/// `reservoir.v1.Admin` for a region node, on one listener.
pub struct AdminService {
    node: Arc<Node>,
    plane: Plane,
}

impl AdminService {
    /// The service over `node`, for the callers of `plane`.
    pub fn new(node: Arc<Node>, plane: Plane) -> AdminService {
        AdminService { node, plane }
    }

    async fn adjust_stock_inner(
        &self,
        caller: &Caller,
        req: v1::AdjustStockRequest,
    ) -> Result<v1::AdjustStockResponse, Status> {
        let adjustment = edge::adjust_stock(req.clone()).map_err(|r| to_status(&r))?;
        if !self.node.config().standalone {
            // Stock enters the ledger's pool; the rebalancer distributes it.
            let call = LedgerCall::Apply(adjustment.into_ledger_op());
            return match self
                .node
                .control()
                .ledger(&call, FORWARD_TIMEOUT)
                .await
                .map_err(forward_failed)?
            {
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
                other => Err(unexpected("adjust_stock", &other)),
            };
        }
        match self
            .node
            .write(adjustment.into_region_op(), caller.forwarded)
            .await?
        {
            Route::Applied(RegionApplied::Stock {
                sku,
                stocked_total,
                available,
            }) => Ok(v1::AdjustStockResponse {
                sku,
                stocked_total,
                available,
            }),
            Route::Applied(other) => Err(unexpected("adjust_stock", &other)),
            Route::Leader(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(client.adjust_stock(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
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
            .await
            .map_err(forward_failed)?
        {
            LedgerReply::Summary(s) => *s,
            other => return Err(unexpected("status", &other)),
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
                    Role::Leader
                } else if *id == group.node_id {
                    group.role
                } else {
                    Role::Unknown
                }
                .as_str()
                .into(),
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

    async fn audit_inner(&self, caller: &Caller) -> Result<v1::AuditReport, Status> {
        if !self.node.config().standalone {
            return match self
                .node
                .control()
                .ledger(&LedgerCall::Audit, FORWARD_TIMEOUT)
                .await
                .map_err(forward_failed)?
            {
                LedgerReply::Audit(sheet) => Ok(edge::audit_report(&sheet, self.node.now_ms())),
                other => Err(unexpected("audit", &other)),
            };
        }
        // Audit the current state: on the leader, after a read index.
        match self
            .node
            .read_current(caller.forwarded, audit::balance_standalone)
            .await?
        {
            Route::Applied(sheet) => Ok(edge::audit_report(&sheet, self.node.now_ms())),
            Route::Leader(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(client.audit(forwarding(v1::AuditRequest {}, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }
}

/// An action that needs the group's leader, answered here or, on a
/// follower that knows the leader, forwarded to it once.
enum Led<T> {
    Answer(T),
    Forward(String),
}

fn led<T>(group: &str, caller: &Caller, result: Result<T, AdminError>) -> Result<Led<T>, Status> {
    match result {
        Ok(answer) => Ok(Led::Answer(answer)),
        Err(AdminError::NotLeader {
            leader: Some((_, addr)),
        }) if !caller.forwarded => Ok(Led::Forward(addr)),
        Err(e) => Err(operate::admin_status(group, &e)),
    }
}

impl AdminService {
    async fn get_membership_inner(
        &self,
        caller: &Caller,
        req: v1::GetMembershipRequest,
    ) -> Result<v1::Membership, Status> {
        let target = operate::group(&self.node, &req.group)?;
        let (view, leader) = on_group!(&target, g => (g.membership(), g.leader().filter(|_| !g.is_leader())));
        // The leader knows each member's progress: ask it, once.
        match leader {
            Some((_, addr)) if !caller.forwarded => {
                let mut client = self.node.admin(&addr)?;
                match leader_answer(client.get_membership(forwarding(req, caller))).await {
                    Ok(answer) => Ok(answer.into_inner()),
                    Err(_) => Ok(operate::membership_message(&view)),
                }
            }
            _ => Ok(operate::membership_message(&view)),
        }
    }

    async fn add_learner_inner(
        &self,
        caller: &Caller,
        req: v1::AddLearnerRequest,
    ) -> Result<v1::Membership, Status> {
        let target = operate::group(&self.node, &req.group)?;
        let result =
            on_group!(&target, g => g.add_learner(req.node_id, &req.address, ADMIN_ACTION_TIMEOUT).await);
        match led(target.name(), caller, result)? {
            Led::Answer(view) => Ok(operate::membership_message(&view)),
            Led::Forward(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(client.add_learner(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }

    async fn change_voters_inner(
        &self,
        caller: &Caller,
        req: v1::ChangeVotersRequest,
    ) -> Result<v1::Membership, Status> {
        let (add, remove) = operate::change_ids(&req.add, &req.remove)?;
        let target = operate::group(&self.node, &req.group)?;
        let result = on_group!(&target, g => g.change_voters(&add, &remove, ADMIN_ACTION_TIMEOUT).await);
        match led(target.name(), caller, result)? {
            Led::Answer(view) => Ok(operate::membership_message(&view)),
            Led::Forward(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(client.change_voters(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }

    async fn transfer_leader_inner(
        &self,
        caller: &Caller,
        req: v1::TransferLeaderRequest,
    ) -> Result<v1::TransferLeaderResponse, Status> {
        let target = operate::group(&self.node, &req.group)?;
        let to = (req.to != 0).then_some(req.to);
        let result = on_group!(&target, g => g.transfer_leadership(to, ADMIN_ACTION_TIMEOUT).await);
        match led(target.name(), caller, result)? {
            Led::Answer(leader_id) => Ok(v1::TransferLeaderResponse {
                group: target.name().to_string(),
                leader_id,
            }),
            Led::Forward(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(client.transfer_leader(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }

    /// A backup file: standalone, this region's state read on its leader
    /// (a follower forwards the call and passes the file on); with a
    /// ledger, the ledger leader's consistent cut of every group.
    async fn backup_inner(&self, caller: &Caller) -> Result<Vec<u8>, Status> {
        use crate::server::backup::{BACKUP_BYTES_MAX, STANDALONE, backup_error, encode};
        if !self.node.config().standalone {
            return match self
                .node
                .control()
                .ledger(&LedgerCall::Backup, FORWARD_TIMEOUT)
                .await
                .map_err(forward_failed)?
            {
                LedgerReply::Backup(bytes) => Ok(bytes),
                other => Err(unexpected("backup", &other)),
            };
        }
        match self.node.read_current(caller.forwarded, |_| ()).await? {
            Route::Applied(()) => {
                let state = self.node.backup_state(BACKUP_BYTES_MAX)?;
                encode(STANDALONE, self.node.wall_ms(), &[state]).map_err(|e| backup_error(true, e))
            }
            Route::Leader(addr) => {
                let mut client = self.node.admin(&addr)?;
                leader_answer(async {
                    let mut stream = client
                        .backup(forwarding(v1::BackupRequest {}, caller))
                        .await?
                        .into_inner();
                    let mut bytes = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        if bytes.len() + chunk.data.len() > BACKUP_BYTES_MAX {
                            return Err(backup_error(
                                true,
                                format!("a backup over {BACKUP_BYTES_MAX} bytes"),
                            ));
                        }
                        bytes.extend_from_slice(&chunk.data);
                    }
                    Ok(bytes)
                })
                .await
            }
        }
    }

    async fn trigger_snapshot_inner(
        &self,
        req: v1::TriggerSnapshotRequest,
    ) -> Result<v1::TriggerSnapshotResponse, Status> {
        let target = operate::group(&self.node, &req.group)?;
        let index = on_group!(&target, g => g.snapshot_now(ADMIN_ACTION_TIMEOUT).await)
            .map_err(|e| operate::admin_status(target.name(), &e))?;
        Ok(v1::TriggerSnapshotResponse {
            group: target.name().to_string(),
            node_id: self.node.config().node_id,
            snapshot_index: index,
        })
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn adjust_stock(
        &self,
        request: Request<v1::AdjustStockRequest>,
    ) -> Result<Response<v1::AdjustStockResponse>, Status> {
        recorded(self.plane, "adjust_stock", async {
            note_request_id(&request.get_ref().request_id);
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::AdjustStock)
                .await?;
            self.adjust_stock_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        recorded(self.plane, "get_status", async {
            self.plane
                .caller(&self.node, &request, Permission::ReadStatus)
                .await?;
            self.cluster_status().await
        })
        .await
    }

    async fn audit(&self, request: Request<v1::AuditRequest>) -> Result<Response<v1::AuditReport>, Status> {
        recorded(self.plane, "audit", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Audit).await?;
            self.audit_inner(&caller).await
        })
        .await
    }

    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<v1::BackupChunk, Status>>>;

    async fn backup(
        &self,
        request: Request<v1::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        recorded(self.plane, "backup", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            let bytes = self.backup_inner(&caller).await?;
            let chunks: Vec<Result<v1::BackupChunk, Status>> = bytes
                .chunks(crate::server::backup::BACKUP_CHUNK_BYTES)
                .map(|c| Ok(v1::BackupChunk { data: c.to_vec() }))
                .collect();
            Ok(tokio_stream::iter(chunks))
        })
        .await
    }

    async fn get_membership(
        &self,
        request: Request<v1::GetMembershipRequest>,
    ) -> Result<Response<v1::Membership>, Status> {
        recorded(self.plane, "get_membership", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            self.get_membership_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn add_learner(
        &self,
        request: Request<v1::AddLearnerRequest>,
    ) -> Result<Response<v1::Membership>, Status> {
        recorded(self.plane, "add_learner", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            self.add_learner_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn change_voters(
        &self,
        request: Request<v1::ChangeVotersRequest>,
    ) -> Result<Response<v1::Membership>, Status> {
        recorded(self.plane, "change_voters", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            self.change_voters_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        recorded(self.plane, "transfer_leader", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            self.transfer_leader_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn trigger_snapshot(
        &self,
        request: Request<v1::TriggerSnapshotRequest>,
    ) -> Result<Response<v1::TriggerSnapshotResponse>, Status> {
        recorded(self.plane, "trigger_snapshot", async {
            self.plane
                .caller(&self.node, &request, Permission::Operate)
                .await?;
            self.trigger_snapshot_inner(request.into_inner()).await
        })
        .await
    }
}
