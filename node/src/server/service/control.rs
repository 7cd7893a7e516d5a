//! `reservoir.internal.v1.Control` on a node: region calls applied to this
//! region's group (or forwarded once to its leader), ledger calls applied to
//! the ledger group on ledger hosts (or forwarded to the ledger leader).
//! The messages and the client are in [`crate::server::control`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::Status;

use crate::server::control::pb::control_server::{Control, ControlServer};
use crate::server::control::pb::{ControlMessage, ControlReply};
use crate::server::control::{
    CONTROL_MESSAGE_BYTES_MAX, LedgerCall, LedgerReply, RegionCall, RegionReply, RegionReport, decode, encode,
};
use crate::server::node::{COMMIT_TIMEOUT, FORWARD_TIMEOUT, LEADER_WAIT, Node, Route, WriteError};

/// The control plane's gRPC service on a node.
pub struct ControlService {
    node: Arc<Node>,
}

impl ControlService {
    /// The gRPC server for `node`, with the control message limit.
    pub fn server(node: Arc<Node>) -> ControlServer<ControlService> {
        ControlServer::new(ControlService { node })
            .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
    }

    async fn region_call(&self, message: ControlMessage) -> Result<Vec<u8>, Status> {
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
        let reply = match call {
            RegionCall::Gossip(digest) => {
                node.availability().merge(digest);
                RegionReply::Gossip(node.availability().digest())
            }
            RegionCall::Apply(op) => match node.write(op, forwarded).await {
                Ok(Route::Applied(applied)) => RegionReply::Applied(Ok(applied)),
                Ok(Route::Leader(addr)) => return self.forward(&addr, message, false).await,
                // A refusal is an answer, not a transport failure.
                Err(WriteError::Rejected(rejection)) => RegionReply::Applied(Err(rejection)),
                Err(WriteError::Unavailable(status)) => return Err(status),
            },
            RegionCall::Report(request) => {
                let demand = node.demand().demand(node.now_ms());
                let region = node.region().to_string();
                let leader_id = node.config().node_id;
                let read = node
                    .read_current(forwarded, move |s| {
                        let after = request
                            .outbox_after
                            .unwrap_or(s.settled_up_to())
                            .max(s.settled_up_to());
                        RegionReport {
                            region: region.clone(),
                            leader_id,
                            clock_ms: s.clock_ms(),
                            buckets: s.buckets().map(|(sku, b)| (sku.clone(), b.clone())).collect(),
                            demand: BTreeMap::new(),
                            outbox: s.outbox_after(after).take(request.outbox_max).collect(),
                            last_outbox_seq: s.last_outbox_seq(),
                            settled_up_to: s.settled_up_to(),
                            oldest_unsettled_ms: s
                                .outbox_after(s.settled_up_to())
                                .next()
                                .map(|e| e.confirmed_at_ms),
                            transfers: request
                                .transfers
                                .iter()
                                .filter_map(|id| s.transfer(*id).map(|t| (*id, t.clone())))
                                .collect(),
                        }
                    })
                    .await?;
                match read {
                    Route::Applied(mut report) => {
                        report.demand = demand;
                        RegionReply::Report(report)
                    }
                    Route::Leader(addr) => return self.forward(&addr, message, false).await,
                }
            }
        };
        encode(&reply)
    }

    async fn ledger_call(&self, message: ControlMessage) -> Result<Vec<u8>, Status> {
        let node = &self.node;
        let Some(host) = node.ledger() else {
            // Not a ledger host: pass the call on to the ledger's nodes.
            let call: LedgerCall = decode(&message.payload)?;
            let reply = node.control().ledger(&call, FORWARD_TIMEOUT).await?;
            return encode(&reply);
        };
        let call: LedgerCall = decode(&message.payload)?;
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
            LedgerCall::Audit => match host.audit().await {
                Ok(sheet) => LedgerReply::Audit(Box::new(sheet)),
                Err(e) => return Err(Status::unavailable(format!("audit: {e}"))),
            },
            LedgerCall::Apply(op) => {
                let cmd = reservoir_tokens::LedgerCommand {
                    now_ms: node.now_ms(),
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
        let payload = self.region_call(request.into_inner()).await?;
        Ok(tonic::Response::new(ControlReply { payload }))
    }

    async fn ledger(
        &self,
        request: tonic::Request<ControlMessage>,
    ) -> Result<tonic::Response<ControlReply>, Status> {
        let payload = self.ledger_call(request.into_inner()).await?;
        Ok(tonic::Response::new(ControlReply { payload }))
    }
}
