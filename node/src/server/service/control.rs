//! `reservoir.internal.v1.Control` on a node: region calls applied to this
//! region's group (or forwarded once to its leader), ledger calls applied to
//! the ledger group on ledger hosts (or forwarded to the ledger leader).
//! The messages and the client are in [`crate::server::control`].
//!
//! Served on the peer plane only. Each call is checked against what its
//! sender may send ([`crate::server::security::peers`]) once decoded
//! (bounded by the control message limit) and before it runs: grants, revokes, settlements and reports
//! only from the ledger's nodes; a top-up only from the region it is for;
//! gossip from any node, keeping only what the sender speaks for; a
//! forwarded call only from a node of the same group.

use std::sync::Arc;

use tonic::Status;

use crate::server::control::pb::control_server::{Control, ControlServer};
use crate::server::control::pb::{ControlMessage, ControlReply};
use crate::server::control::{
    CONTROL_MESSAGE_BYTES_MAX, LedgerCall, LedgerReply, RegionCall, RegionReply, ReportContext, build_report,
    decode, encode,
};
use crate::server::node::{COMMIT_TIMEOUT, FORWARD_TIMEOUT, LEADER_WAIT, Node, Route, WriteError};
use crate::server::security::PeerNode;
use crate::server::security::peers::Senders;

/// The control plane's gRPC service on a node.
pub struct ControlService {
    node: Arc<Node>,
}

impl ControlService {
    /// The service over `node`, called in process (the whole-cluster
    /// simulation); [`ControlService::server`] serves it over gRPC.
    pub fn new(node: Arc<Node>) -> ControlService {
        ControlService { node }
    }

    /// The gRPC server for `node`, with the control message limit.
    pub fn server(node: Arc<Node>) -> ControlServer<ControlService> {
        ControlServer::new(ControlService::new(node))
            .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
    }

    /// Whether `from` may send `call` (a region call for this node's region).
    fn check_region_call(
        &self,
        from: Option<&PeerNode>,
        forwarded: bool,
        call: &RegionCall,
    ) -> Result<(), Status> {
        let policy = self.node.peer_policy();
        // Only grants, revokes and settlements are applied through the
        // control plane, forwarded or not.
        if let RegionCall::Apply(op) = call {
            use reservoir_tokens::RegionOp;
            if !matches!(
                op,
                RegionOp::Grant { .. } | RegionOp::Revoke { .. } | RegionOp::Settled { .. }
            ) {
                return Err(crate::server::security::peers::refused(
                    tonic::Code::PermissionDenied,
                    "PEER_NOT_ALLOWED",
                    "the control plane applies only grants, revokes and settlements".into(),
                ));
            }
        }
        if forwarded {
            return policy.require(from, Senders::Group, "a forwarded control call");
        }
        match call {
            RegionCall::Apply(_) => policy.require(from, Senders::Ledger, "a grant, revoke or settlement"),
            RegionCall::Report(_) => policy.require(from, Senders::Ledger, "a report request"),
            RegionCall::Gossip(_) => policy.require(from, Senders::AnyNode, "gossip"),
            RegionCall::Backup => policy.require(from, Senders::Ledger, "a backup request"),
        }
    }

    /// Whether `from` may send `call` to the ledger.
    fn check_ledger_call(
        &self,
        from: Option<&PeerNode>,
        forwarded: bool,
        call: &LedgerCall,
    ) -> Result<(), Status> {
        let policy = self.node.peer_policy();
        // Only stock adjustments are applied through the control plane.
        if let LedgerCall::Apply(op) = call
            && !matches!(op, reservoir_tokens::LedgerOp::AdjustStock { .. })
        {
            return Err(crate::server::security::peers::refused(
                tonic::Code::PermissionDenied,
                "PEER_NOT_ALLOWED",
                "the control plane applies only stock adjustments to the ledger".into(),
            ));
        }
        if forwarded {
            return policy.require(from, Senders::Ledger, "a forwarded ledger call");
        }
        match call {
            LedgerCall::Apply(_) => policy.require(from, Senders::AnyNode, "a stock adjustment"),
            LedgerCall::TopUp { region, .. } => {
                policy.require(from, Senders::Region(region), "a top-up request")
            }
            LedgerCall::Summary | LedgerCall::Audit | LedgerCall::Backup => {
                policy.require(from, Senders::AnyNode, "a ledger read")
            }
        }
    }

    async fn region_call(&self, from: Option<PeerNode>, message: ControlMessage) -> Result<Vec<u8>, Status> {
        let node = &self.node;
        if message.region != node.region() {
            return Err(Status::failed_precondition(format!(
                "call for region {} reached a node of {}",
                message.region,
                node.region()
            )));
        }
        let call: RegionCall = decode(&message.payload)?;
        let forwarded = message.forwarded;
        self.check_region_call(from.as_ref(), forwarded, &call)?;
        let reply = match call {
            RegionCall::Gossip(digest) => {
                let digest = match &from {
                    // Only what the sender speaks for: its own region, and
                    // the pool if it is a ledger node.
                    Some(peer) => {
                        let ledger = node.peer_policy().group_voters(true).contains(&peer.id);
                        digest.only_from(&peer.region, ledger, node.wall_ms())
                    }
                    None => digest,
                };
                node.availability().merge(digest);
                RegionReply::Gossip(node.gossip_digest())
            }
            RegionCall::Apply(op) => match node.write(op, forwarded).await {
                Ok(Route::Applied(applied)) => RegionReply::Applied(Ok(applied)),
                Ok(Route::Leader(addr)) => return self.forward(&addr, message, false).await,
                // A refusal is an answer, not a transport failure.
                Err(WriteError::Rejected(rejection)) => RegionReply::Applied(Err(rejection)),
                Err(WriteError::Unavailable(status)) => return Err(status),
            },
            RegionCall::Report(request) => {
                let context = ReportContext {
                    region: node.region().to_string(),
                    leader_id: node.config().node_id,
                    demand: node.demand().demand(node.now_ms()),
                };
                let read = node
                    .read_current(forwarded, move |s| build_report(s, &context, &request))
                    .await?;
                match read {
                    Route::Applied(report) => RegionReply::Report(report),
                    Route::Leader(addr) => return self.forward(&addr, message, false).await,
                }
            }
            RegionCall::Backup => match node.read_current(forwarded, |_| ()).await? {
                Route::Applied(()) => {
                    RegionReply::Backup(node.backup_state(crate::server::backup::CLUSTER_BACKUP_BYTES_MAX)?)
                }
                Route::Leader(addr) => return self.forward(&addr, message, false).await,
            },
        };
        encode(&reply)
    }

    async fn ledger_call(&self, from: Option<PeerNode>, message: ControlMessage) -> Result<Vec<u8>, Status> {
        let node = &self.node;
        let Some(host) = node.ledger() else {
            return Err(Status::failed_precondition(format!(
                "a ledger call reached node {}, which hosts no ledger voter",
                node.config().node_id
            )));
        };
        let call: LedgerCall = decode(&message.payload)?;
        self.check_ledger_call(from.as_ref(), message.forwarded, &call)?;
        let group = host.group();
        if !group.is_leader() {
            if message.forwarded {
                return Err(crate::server::status::NodeError::NoLeader {
                    group: "ledger".into(),
                }
                .to_status());
            }
            match group.leader() {
                Some((_, addr)) => return self.forward(&addr, message, true).await,
                None => {
                    group.wait_for_leader(LEADER_WAIT).await;
                    match group.leader() {
                        Some((id, addr)) if id != node.config().node_id => {
                            return self.forward(&addr, message, true).await;
                        }
                        Some(_) => {}
                        None => {
                            return Err(crate::server::status::NodeError::NoLeader {
                                group: "ledger".into(),
                            }
                            .to_status());
                        }
                    }
                }
            }
        }
        let reply = match call {
            LedgerCall::TopUp { .. } => {
                host.wake();
                LedgerReply::TopUpQueued
            }
            LedgerCall::Summary => LedgerReply::Summary(Box::new(host.summary())),
            LedgerCall::Backup => LedgerReply::Backup(host.backup(node.wall_ms()).await?),
            LedgerCall::Audit => match host.audit().await {
                Ok(sheet) => LedgerReply::Audit(Box::new(sheet)),
                Err(e) => return Err(Status::unavailable(format!("audit: {e}"))),
            },
            LedgerCall::Apply(op) => {
                let cmd = reservoir_tokens::LedgerCommand {
                    now_ms: host.now_ms(),
                    op,
                };
                match tokio::time::timeout(COMMIT_TIMEOUT, group.propose(cmd)).await {
                    Ok(Ok(outcome)) => LedgerReply::Applied(outcome),
                    Ok(Err(reservoir_raft::ProposeError::Overloaded)) => {
                        return Err(crate::server::status::NodeError::Overloaded {
                            queue: "ledger proposals",
                            max: group.queue_max(),
                        }
                        .to_status());
                    }
                    Ok(Err(_)) | Err(_) => {
                        return Err(crate::server::status::NodeError::NoLeader {
                            group: "ledger".into(),
                        }
                        .to_status());
                    }
                }
            }
        };
        encode(&reply)
    }

    async fn forward(&self, addr: &str, message: ControlMessage, ledger: bool) -> Result<Vec<u8>, Status> {
        if message.forwarded {
            return Err(crate::server::status::NodeError::NoLeader {
                group: message.region.clone(),
            }
            .to_status());
        }
        let call = self.node.control().forward(addr, message, ledger);
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(reply) => Ok(reply?.payload),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the leader at {addr} did not answer a forwarded control call within {FORWARD_TIMEOUT:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn region(
        &self,
        request: tonic::Request<ControlMessage>,
    ) -> Result<tonic::Response<ControlReply>, Status> {
        let from = self.node.peer_policy().caller(request.extensions())?;
        let payload = self.region_call(from, request.into_inner()).await?;
        Ok(tonic::Response::new(ControlReply { payload }))
    }

    async fn ledger(
        &self,
        request: tonic::Request<ControlMessage>,
    ) -> Result<tonic::Response<ControlReply>, Status> {
        let from = self.node.peer_policy().caller(request.extensions())?;
        let payload = self.ledger_call(from, request.into_inner()).await?;
        Ok(tonic::Response::new(ControlReply { payload }))
    }
}
