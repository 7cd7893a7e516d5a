//! The Raft network: openraft's `RaftNetworkFactory` over a [`Wire`].
//!
//! Two layers, so that tests and a future simulation swap only the bottom:
//! - [`Wire`] moves one encoded request to a node and brings back the encoded
//!   reply. Production uses [`TonicWire`] (gRPC, one reused channel per peer);
//!   in-process tests use [`crate::testing::LocalNet`], which calls the
//!   target's [`Router`] directly and can cut links.
//! - [`Network`] encodes openraft's requests with bincode, calls the wire with
//!   the deadline openraft asks for, and decodes the reply.
//!
//! On the receiving side a node has one [`Router`]: group id → the group's
//! Raft handle, type-erased behind [`GroupEndpoint`]. [`RaftService`] serves it
//! over tonic.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Cursor;

use crate::config::{GroupConfig, GroupMachine, GroupRaft, Node, NodeId, SnapshotMeta, Vote};

/// Generated code for the internal transport, `reservoir.internal.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.internal.v1");
}

/// Largest message on the internal transport: whole snapshots travel in one.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Which Raft RPC a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RpcKind {
    /// AppendEntries (also heartbeats).
    AppendEntries,
    /// RequestVote.
    Vote,
    /// A whole snapshot.
    FullSnapshot,
}

/// Why a message did not get a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The node cannot be reached (refused, cut off): back off before retrying.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The message may or may not have arrived.
    #[error("network: {0}")]
    Network(String),
    /// The node answered with an error of the transport itself (unknown
    /// group, wrong addressee, undecodable message).
    #[error("refused: {0}")]
    Refused(String),
}

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Moves one encoded Raft message to a node and brings back its encoded reply.
pub trait Wire: Send + Sync + 'static {
    /// Sends `payload` of `kind` for `group` from `from` to node `to` at `addr`.
    fn call(&self, to: NodeId, addr: &str, message: WireMessage)
    -> BoxFuture<'_, Result<Vec<u8>, WireError>>;
}

/// One message on the wire.
#[derive(Clone, Debug)]
pub struct WireMessage {
    /// The RPC.
    pub kind: RpcKind,
    /// The group.
    pub group: String,
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// The bincode-encoded request.
    pub payload: Vec<u8>,
}

/// The receiving side of one group: decodes a request, hands it to the
/// group's Raft, encodes the reply.
pub trait GroupEndpoint: Send + Sync + 'static {
    /// Handles one message of `kind`.
    fn handle(&self, kind: RpcKind, payload: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, WireError>>;
}

impl<SM: GroupMachine> GroupEndpoint for GroupRaft<SM> {
    fn handle(&self, kind: RpcKind, payload: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        Box::pin(async move {
            match kind {
                RpcKind::AppendEntries => {
                    let rpc: AppendEntriesRequest<GroupConfig<SM>> = decode(&payload)?;
                    encode(&self.append_entries(rpc).await)
                }
                RpcKind::Vote => {
                    let rpc: VoteRequest<NodeId> = decode(&payload)?;
                    encode(&self.vote(rpc).await)
                }
                RpcKind::FullSnapshot => {
                    let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = decode(&payload)?;
                    let snapshot = Snapshot {
                        meta,
                        snapshot: Box::new(Cursor::new(data)),
                    };
                    encode(&self.install_full_snapshot(vote, snapshot).await)
                }
            }
        })
    }
}

/// A node's receiving side: group id → endpoint.
#[derive(Clone)]
pub struct Router {
    node_id: NodeId,
    groups: Arc<RwLock<BTreeMap<String, Arc<dyn GroupEndpoint>>>>,
}

impl Router {
    /// A router for node `node_id`, with no groups yet.
    pub fn new(node_id: NodeId) -> Router {
        Router {
            node_id,
            groups: Arc::new(RwLock::new(BTreeMap::new())),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Routes messages for `group` to `endpoint` (replacing any earlier one).
    pub fn add(&self, group: impl Into<String>, endpoint: Arc<dyn GroupEndpoint>) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.into(), endpoint);
    }

    /// Stops routing messages for `group`.
    pub fn remove(&self, group: &str) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
    }

    /// Delivers one message to its group.
    pub async fn deliver(&self, message: WireMessage) -> Result<Vec<u8>, WireError> {
        if message.to != self.node_id {
            // A misrouted message (wrong address in a config) must not reach
            // openraft: it would treat it as its own.
            return Err(WireError::Refused(format!(
                "message for node {} reached node {}",
                message.to, self.node_id
            )));
        }
        let endpoint = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&message.group)
            .cloned();
        match endpoint {
            Some(e) => e.handle(message.kind, message.payload).await,
            None => Err(WireError::Unreachable(format!(
                "node {} hosts no group {}",
                self.node_id, message.group
            ))),
        }
    }
}

/// Encodes a value for the wire.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serialize(value).map_err(|e| WireError::Refused(format!("encode: {e}")))
}

/// Decodes a value from the wire, refusing anything over the message limit.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(RAFT_MESSAGE_BYTES_MAX as u64)
        .deserialize(bytes)
        .map_err(|e| WireError::Refused(format!("decode: {e}")))
}

/// openraft's network factory for one group on one node.
pub struct Network<SM> {
    group: String,
    from: NodeId,
    wire: Arc<dyn Wire>,
    /// How this node reaches its peers. The addresses stored in the
    /// membership are the initializing node's view; where two nodes reach a
    /// third by different addresses (a link emulator in between), this
    /// node's own view wins. The membership's address is used only for a
    /// node missing here.
    addresses: Arc<BTreeMap<NodeId, String>>,
    _sm: std::marker::PhantomData<fn() -> SM>,
}

impl<SM> Network<SM> {
    /// The network of `group` as seen from node `from`, which reaches its
    /// peers at `addresses`.
    pub fn new(
        group: impl Into<String>,
        from: NodeId,
        wire: Arc<dyn Wire>,
        addresses: Arc<BTreeMap<NodeId, String>>,
    ) -> Network<SM> {
        Network {
            group: group.into(),
            from,
            wire,
            addresses,
            _sm: std::marker::PhantomData,
        }
    }
}

impl<SM: GroupMachine> RaftNetworkFactory<GroupConfig<SM>> for Network<SM> {
    type Network = Connection<SM>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection<SM> {
        Connection {
            group: self.group.clone(),
            from: self.from,
            to: target,
            addr: self.addresses.get(&target).unwrap_or(&node.addr).clone(),
            wire: self.wire.clone(),
            _sm: std::marker::PhantomData,
        }
    }
}

/// openraft's client to one peer of one group.
pub struct Connection<SM> {
    group: String,
    from: NodeId,
    to: NodeId,
    addr: String,
    wire: Arc<dyn Wire>,
    _sm: std::marker::PhantomData<fn() -> SM>,
}

type RaftRpcError<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl<SM: GroupMachine> Connection<SM> {
    async fn call(
        &self,
        kind: RpcKind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Vec<u8>, RPCError<NodeId, Node>> {
        let message = WireMessage {
            kind,
            group: self.group.clone(),
            from: self.from,
            to: self.to,
            payload,
        };
        match tokio::time::timeout(ttl, self.wire.call(self.to, &self.addr, message)).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action: match kind {
                    RpcKind::AppendEntries => openraft::network::RPCTypes::AppendEntries,
                    RpcKind::Vote => openraft::network::RPCTypes::Vote,
                    RpcKind::FullSnapshot => openraft::network::RPCTypes::InstallSnapshot,
                },
                id: self.from,
                target: self.to,
                timeout: ttl,
            })),
            Ok(Err(WireError::Unreachable(e))) => {
                Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))
            }
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(bytes)) => Ok(bytes),
        }
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<NodeId, E>) -> RaftRpcError<E> {
        RPCError::RemoteError(RemoteError::new(self.to, e))
    }
}

fn widen<E: std::error::Error>(e: RPCError<NodeId, Node>) -> RaftRpcError<E> {
    match e {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => RPCError::Network(NetworkError::new(&AnyError::error(r.to_string()))),
    }
}

fn net_error<E: std::error::Error>(e: WireError) -> RaftRpcError<E> {
    RPCError::Network(NetworkError::new(&e))
}

impl<SM: GroupMachine> RaftNetwork<GroupConfig<SM>> for Connection<SM> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<GroupConfig<SM>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let payload = encode(&rpc).map_err(net_error)?;
        let bytes = self
            .call(RpcKind::AppendEntries, payload, option.hard_ttl())
            .await
            .map_err(widen)?;
        let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            decode(&bytes).map_err(net_error)?;
        reply.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let payload = encode(&rpc).map_err(net_error)?;
        let bytes = self
            .call(RpcKind::Vote, payload, option.hard_ttl())
            .await
            .map_err(widen)?;
        let reply: Result<VoteResponse<NodeId>, RaftError<NodeId>> = decode(&bytes).map_err(net_error)?;
        reply.map_err(|e| self.remote(e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<GroupConfig<SM>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<GroupConfig<SM>, Fatal<NodeId>>> {
        let data = snapshot.snapshot.into_inner();
        let payload = encode(&(vote, snapshot.meta, data))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let call = self.call(RpcKind::FullSnapshot, payload, option.hard_ttl());
        let bytes = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = call => r.map_err(|e| match e {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?,
        };
        let reply: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            decode(&bytes).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }
}

/// The production wire: gRPC over tonic, one lazily connected, reused channel
/// per peer address.
#[derive(Default)]
pub struct TonicWire {
    channels: Mutex<BTreeMap<String, tonic::transport::Channel>>,
}

impl TonicWire {
    /// A wire with no connections yet.
    pub fn new() -> TonicWire {
        TonicWire::default()
    }

    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, WireError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let uri = if addr.starts_with("http://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| WireError::Refused(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl Wire for TonicWire {
    fn call(&self, _to: NodeId, addr: &str, m: WireMessage) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        let channel = self.channel(addr);
        Box::pin(async move {
            let mut client = pb::raft_client::RaftClient::new(channel?)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            let request = pb::RaftMessage {
                group: m.group,
                from: m.from,
                to: m.to,
                payload: m.payload,
            };
            let reply = match m.kind {
                RpcKind::AppendEntries => client.append_entries(request).await,
                RpcKind::Vote => client.vote(request).await,
                RpcKind::FullSnapshot => client.full_snapshot(request).await,
            };
            match reply {
                Ok(r) => Ok(r.into_inner().payload),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    Err(WireError::Unreachable(s.message().to_string()))
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    Err(WireError::Refused(s.message().to_string()))
                }
                Err(s) => Err(WireError::Network(format!("{}: {}", s.code(), s.message()))),
            }
        })
    }
}

/// The tonic service that feeds a node's [`Router`].
pub struct RaftService {
    router: Router,
}

impl RaftService {
    /// The gRPC server for `router`, with the internal message limit.
    pub fn server(router: Router) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(RaftService { router })
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    async fn handle(
        &self,
        kind: RpcKind,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let m = request.into_inner();
        let message = WireMessage {
            kind,
            group: m.group,
            from: m.from,
            to: m.to,
            payload: m.payload,
        };
        match self.router.deliver(message).await {
            Ok(payload) => Ok(tonic::Response::new(pb::RaftReply { payload })),
            Err(WireError::Unreachable(e)) => Err(tonic::Status::unavailable(e)),
            Err(WireError::Refused(e)) => Err(tonic::Status::failed_precondition(e)),
            Err(WireError::Network(e)) => Err(tonic::Status::internal(e)),
        }
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.handle(RpcKind::AppendEntries, request).await
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.handle(RpcKind::Vote, request).await
    }

    async fn full_snapshot(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.handle(RpcKind::FullSnapshot, request).await
    }
}
