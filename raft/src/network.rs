//! The Raft network: openraft's `RaftNetworkFactory` over a [`Wire`].
//!
//! Two layers, so that tests and the simulation swap only the bottom:
//! - [`Wire`] moves one encoded request to a node and brings back the encoded
//!   reply. Production uses [`TonicWire`] (gRPC, one reused channel per peer);
//!   in-process tests use [`crate::testing::LocalNet`], which calls the
//!   target's [`Router`] directly and can cut links; the whole-cluster
//!   simulation's `SimWire` (`sim/src/net.rs`) delays, loses, duplicates and
//!   cuts messages as its seed says.
//! - [`Network`] encodes openraft's requests with bincode, calls the wire with
//!   the deadline openraft asks for, and decodes the reply.
//!
//! On the receiving side a node has one [`Router`]: group id → the group's
//! Raft handle, type-erased behind [`GroupEndpoint`]. [`RaftService`] serves it
//! over tonic.
//!
//! Snapshots travel in chunks of at most [`SNAPSHOT_CHUNK_BYTES_MAX`], read
//! from the leader's snapshot file one at a time and written to a file in
//! the follower's incoming directory ([`SnapshotInbox`]); the last chunk
//! carries the leader's vote and the snapshot's metadata and installs it. No
//! message holds more than one chunk, so no side needs the whole snapshot in
//! memory, and every message stays under [`RAFT_MESSAGE_BYTES_MAX`].

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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
use reservoir_client::Channels;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{
    ENTRY_BYTES_MAX, GroupConfig, GroupMachine, GroupRaft, Node, NodeId, SNAPSHOT_BYTES_MAX, SnapshotMeta,
    Vote,
};
use crate::store::SnapshotFile;

/// Generated code for the internal transport, `reservoir.internal.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.internal.v1");
}

/// Largest snapshot chunk a node sends or accepts.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Size of the chunks a node sends snapshots in, by default.
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most snapshots one group receives at once (one per sending leader).
pub const INCOMING_SNAPSHOTS_MAX: usize = 4;
/// Largest message on the internal transport: one log entry at its limit
/// (replication sends at least one entry), or one snapshot chunk, plus the
/// envelope.
pub const RAFT_MESSAGE_BYTES_MAX: usize = ENTRY_BYTES_MAX as usize + 1024 * 1024;

/// Which Raft RPC a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RpcKind {
    /// AppendEntries (also heartbeats).
    AppendEntries,
    /// RequestVote.
    Vote,
    /// One chunk of a snapshot.
    SnapshotChunk,
    /// A leader asks the addressee to campaign now
    /// ([`crate::admin::TimeoutNow`]).
    TimeoutNow,
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
    /// Handles one message of `kind` from node `from`.
    fn handle(
        &self,
        kind: RpcKind,
        from: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, WireError>>;
}

/// One chunk of a snapshot on its way to a follower.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The snapshot's id, so a follower tells one transfer from another.
    pub snapshot_id: String,
    /// Where in the file this chunk's bytes go: chunks come in order.
    pub offset: u64,
    /// The file's size.
    pub total_bytes: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// On the last chunk only: the sender's vote and the snapshot's
    /// metadata, and the request to install it.
    pub last: Option<(Vote, SnapshotMeta)>,
}

/// A follower's answer to a chunk: `None` for every chunk but the last, the
/// install's response for the last.
type ChunkReply = Result<Option<SnapshotResponse<NodeId>>, Fatal<NodeId>>;

/// Where one group receives snapshots: a file per transfer in the group's
/// incoming directory, filled chunk by chunk, checked after the last.
///
/// Each transfer has its own file and a generation number: a sender that
/// starts again (its last try timed out, or it was cut off) gets a new
/// file, and a chunk of the older try still being written can neither land
/// in the new file nor move the new transfer on. A transfer that has sent
/// nothing for [`INCOMING_IDLE_TIMEOUT`] is dropped when room is needed.
pub struct SnapshotInbox {
    dir: PathBuf,
    next_generation: std::sync::atomic::AtomicU64,
    transfers: Mutex<BTreeMap<NodeId, Incoming>>,
}

/// A snapshot being received.
struct Incoming {
    generation: u64,
    snapshot_id: String,
    path: PathBuf,
    file: Arc<File>,
    written: u64,
    total_bytes: u64,
    last_chunk_at: tokio::time::Instant,
}

/// How long a transfer may send nothing before another may take its place.
pub const INCOMING_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl SnapshotInbox {
    /// An inbox writing into `dir` (the group store's incoming directory).
    pub fn new(dir: PathBuf) -> SnapshotInbox {
        SnapshotInbox {
            dir,
            next_generation: std::sync::atomic::AtomicU64::new(1),
            transfers: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Incoming>> {
        // Every critical section is a lookup, an insert or a removal.
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one chunk; returns the complete, checked file once the last
    /// chunk is in. A chunk out of order, over the limits, of a transfer
    /// this inbox does not know, or a file that fails its check is refused
    /// and the transfer dropped: the leader starts again from the first
    /// chunk.
    async fn receive(&self, from: NodeId, chunk: &SnapshotChunk) -> Result<Option<SnapshotFile>, WireError> {
        let refuse = |why: String| WireError::Refused(format!("snapshot chunk from node {from}: {why}"));
        if chunk.data.len() > SNAPSHOT_CHUNK_BYTES_MAX || chunk.total_bytes > SNAPSHOT_BYTES_MAX {
            self.drop_transfer(from, None).await;
            return Err(refuse(format!(
                "{} bytes of a {}-byte snapshot is over the limits",
                chunk.data.len(),
                chunk.total_bytes
            )));
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if end > chunk.total_bytes || (chunk.last.is_some() != (end == chunk.total_bytes)) {
            self.drop_transfer(from, None).await;
            return Err(refuse(format!(
                "bytes {}..{end} of {} (last: {})",
                chunk.offset,
                chunk.total_bytes,
                chunk.last.is_some()
            )));
        }
        if chunk.offset == 0 {
            self.start(from, chunk).await.map_err(refuse)?;
        }
        let current = {
            let transfers = self.lock();
            match transfers.get(&from) {
                None => Err((None, format!("chunk at {} of an unknown transfer", chunk.offset))),
                Some(t)
                    if t.snapshot_id != chunk.snapshot_id
                        || t.written != chunk.offset
                        || t.total_bytes != chunk.total_bytes =>
                {
                    let why = format!(
                        "chunk of {} at {}, expected {} at {}",
                        chunk.snapshot_id, chunk.offset, t.snapshot_id, t.written
                    );
                    Err((Some(t.generation), why))
                }
                Some(t) => Ok((t.generation, t.file.clone(), t.path.clone())),
            }
        };
        let (generation, file, path) = match current {
            Ok(current) => current,
            Err((stale, why)) => {
                if let Some(generation) = stale {
                    self.drop_transfer(from, Some(generation)).await;
                }
                return Err(refuse(why));
            }
        };
        let data = chunk.data.clone();
        let offset = chunk.offset;
        let last = chunk.last.is_some();
        let checked_path = path.clone();
        let written = crate::runtime::blocking(move || -> Result<Option<SnapshotFile>, String> {
            file.write_all_at(&data, offset)
                .map_err(|e| format!("write: {e}"))?;
            if !last {
                return Ok(None);
            }
            file.sync_all().map_err(|e| format!("sync: {e}"))?;
            let received = SnapshotFile::open(&checked_path).map_err(|e| format!("open: {e}"))?;
            crate::store::snapshot::verify(&received).map_err(|e| format!("check: {e}"))?;
            Ok(Some(received))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let received = match written {
            Ok(received) => received,
            Err(e) => {
                self.drop_transfer(from, Some(generation)).await;
                return Err(refuse(e));
            }
        };
        let mut transfers = self.lock();
        match transfers.get_mut(&from) {
            Some(t) if t.generation == generation => {
                if last {
                    transfers.remove(&from);
                } else {
                    t.written = end;
                    t.last_chunk_at = tokio::time::Instant::now();
                }
                Ok(received)
            }
            // Replaced by a newer try while this chunk was written: its file
            // is already gone.
            _ => Err(refuse(format!("transfer {} was replaced", chunk.snapshot_id))),
        }
    }

    /// Starts a transfer from `from` in a file of its own, replacing any
    /// earlier one from it, and making room by dropping idle ones.
    async fn start(&self, from: NodeId, chunk: &SnapshotChunk) -> Result<(), String> {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("from-{from}-{generation}.part"));
        let create = path.clone();
        let file =
            crate::runtime::blocking(move || File::options().write(true).create_new(true).open(&create))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut obsolete = Vec::new();
        let admitted = {
            let mut transfers = self.lock();
            let now = tokio::time::Instant::now();
            let idle: Vec<NodeId> = transfers
                .iter()
                .filter(|(_, t)| now.duration_since(t.last_chunk_at) >= INCOMING_IDLE_TIMEOUT)
                .map(|(id, _)| *id)
                .collect();
            for id in idle {
                obsolete.extend(transfers.remove(&id).map(|t| t.path));
            }
            obsolete.extend(transfers.remove(&from).map(|t| t.path));
            let admitted = transfers.len() < INCOMING_SNAPSHOTS_MAX;
            if admitted {
                transfers.insert(
                    from,
                    Incoming {
                        generation,
                        snapshot_id: chunk.snapshot_id.clone(),
                        path: path.clone(),
                        file: Arc::new(file),
                        written: 0,
                        total_bytes: chunk.total_bytes,
                        last_chunk_at: now,
                    },
                );
            } else {
                obsolete.push(path);
            }
            admitted
        };
        remove_files(obsolete).await;
        if admitted {
            Ok(())
        } else {
            Err(format!("{INCOMING_SNAPSHOTS_MAX} snapshots already arriving"))
        }
    }

    /// Forgets the transfer from `from` (only if it is still of
    /// `generation`, when given) and deletes its file.
    async fn drop_transfer(&self, from: NodeId, generation: Option<u64>) {
        let removed = {
            let mut transfers = self.lock();
            match transfers.get(&from) {
                Some(t) if generation.is_none_or(|g| g == t.generation) => transfers.remove(&from),
                _ => None,
            }
        };
        remove_files(removed.map(|t| t.path).into_iter().collect()).await;
    }
}

/// Deletes files off the executor; a file already gone is fine.
async fn remove_files(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let _ = crate::runtime::blocking(move || {
        for path in paths {
            let _ = std::fs::remove_file(&path);
        }
    })
    .await;
}

/// How often a follower checks whether its leader has gone silent.
pub const ELECTION_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// One group's endpoint: its Raft handle and its snapshot inbox.
pub struct RaftEndpoint<SM: GroupMachine> {
    raft: GroupRaft<SM>,
    inbox: SnapshotInbox,
    installs: crate::store::InstallMarker,
    /// When a leader's AppendEntries last arrived, and when this node last
    /// campaigned because a candidate's log was behind its own (see
    /// [`RaftEndpoint::campaign_if_ahead`]).
    heard: Mutex<Heard>,
}

#[derive(Default)]
struct Heard {
    append_at: Option<tokio::time::Instant>,
    campaigned_at: Option<tokio::time::Instant>,
}

impl<SM: GroupMachine> RaftEndpoint<SM> {
    /// The endpoint of `raft`, receiving snapshots in `incoming_dir` and
    /// marking their installs with `installs`.
    pub fn new(
        raft: GroupRaft<SM>,
        incoming_dir: PathBuf,
        installs: crate::store::InstallMarker,
    ) -> RaftEndpoint<SM> {
        RaftEndpoint {
            raft,
            inbox: SnapshotInbox::new(incoming_dir),
            installs,
            heard: Mutex::new(Heard::default()),
        }
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's own election timer, beside openraft's: a follower that
    /// has heard from a leader but nothing for twice its longest election
    /// timeout (openraft's leader lease plus election timeout) campaigns.
    /// openraft's timer would wait longer when this node once saw a greater
    /// log in an earlier election: it remembers that until it campaigns
    /// again, and adds twice the longest election timeout to every later
    /// wait (the failovers at 0.9 and 1.2 s). With a candidate behind us
    /// answered at once (`campaign_if_ahead`), the penalty buys
    /// nothing. A vote this node grants restarts the timer (Raft's rule),
    /// as an AppendEntries does. Runs until the group shuts down.
    pub async fn campaign_when_leader_silent(self: Arc<Self>) {
        let wait = Duration::from_millis(2 * self.raft.config().election_timeout_max);
        let mut tick = tokio::time::interval(ELECTION_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if self.raft.metrics().borrow().state == openraft::ServerState::Shutdown {
                return;
            }
            // Only once a leader was heard: openraft elects the first one.
            if self.heard().append_at.is_some() {
                self.campaign(wait, "leader_silent").await;
            }
        }
    }

    /// After refusing a candidate whose log is behind ours: if no leader has
    /// sent us anything for a shortest election timeout, campaign now.
    ///
    /// openraft 0.9 has no pre-vote. When a leader dies, the first follower
    /// to time out campaigns whether or not its log is the longest; if it is
    /// behind, the other survivor refuses it, and that candidate also
    /// remembers the greater log it saw and from then on waits twice the
    /// longest election timeout more before every later campaign, until it
    /// campaigns again. Measured over 50 leader SIGKILLs, failovers bunched
    /// at 0.9, 1.1 and 1.4 s. The node that refused knows it can win (its
    /// log is the longer) and that the candidate cannot, so it campaigns at
    /// once rather than wait out its own timers. Safety does not depend on
    /// it: any node may start an election at any time.
    async fn campaign_if_ahead(&self, request: &VoteRequest<NodeId>, response: &VoteResponse<NodeId>) {
        if response.vote_granted || response.last_log_id <= request.last_log_id {
            return;
        }
        let quiet = Duration::from_millis(self.raft.config().election_timeout_min);
        self.campaign(quiet, "candidate_behind").await;
    }

    /// Starts an election if this node is a follower that has neither heard
    /// a leader's AppendEntries nor campaigned itself for `quiet`; counted
    /// in `reservoir_raft_campaigns_total{reason}`.
    async fn campaign(&self, quiet: Duration, reason: &'static str) {
        if self.raft.metrics().borrow().state != openraft::ServerState::Follower {
            return;
        }
        let now = tokio::time::Instant::now();
        {
            let mut heard = self.heard();
            let recently =
                |at: Option<tokio::time::Instant>| at.is_some_and(|at| now.duration_since(at) < quiet);
            if recently(heard.append_at) || recently(heard.campaigned_at) {
                return;
            }
            heard.campaigned_at = Some(now);
        }
        metrics::counter!(
            "reservoir_raft_campaigns_total",
            "group" => self.raft.config().cluster_name.clone(),
            "reason" => reason
        )
        .increment(1);
        let _ = self.raft.trigger().elect().await;
    }

    /// Whether `node` is in the group's membership as this node knows it.
    fn is_member(&self, node: NodeId) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&node).is_some()
    }

    /// Whether this node knows any membership of the group yet.
    fn knows_members(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().nodes().next().is_some()
    }
}

impl<SM: GroupMachine> GroupEndpoint for RaftEndpoint<SM> {
    fn handle(
        &self,
        kind: RpcKind,
        from: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        Box::pin(async move {
            match kind {
                RpcKind::AppendEntries => {
                    let rpc: AppendEntriesRequest<GroupConfig<SM>> = decode(&payload)?;
                    speaks_for_itself(&rpc.vote, from)?;
                    self.heard().append_at = Some(tokio::time::Instant::now());
                    encode(&self.raft.append_entries(rpc).await)
                }
                RpcKind::Vote => {
                    let rpc: VoteRequest<NodeId> = decode(&payload)?;
                    speaks_for_itself(&rpc.vote, from)?;
                    let response = self.raft.vote(rpc.clone()).await;
                    if let Ok(answer) = &response {
                        if answer.vote_granted {
                            // Raft's rule: granting a vote restarts the
                            // election timer. Without it, a follower whose
                            // leader went silent campaigned again a moment
                            // after voting, before the candidate it elected
                            // could send its first AppendEntries, and the
                            // two took turns for good (simulation seed 2066).
                            self.heard().append_at = Some(tokio::time::Instant::now());
                        }
                        self.campaign_if_ahead(&rpc, answer).await;
                    }
                    encode(&response)
                }
                RpcKind::SnapshotChunk => {
                    // A node that joins knows no membership until its first
                    // snapshot or entries arrive: it takes a snapshot from
                    // whoever the transport let through (a voter of its
                    // config).
                    if !self.is_member(from) && self.knows_members() {
                        return Err(WireError::Refused(format!(
                            "snapshot chunk from node {from}, not a member of this group"
                        )));
                    }
                    let chunk: SnapshotChunk = decode(&payload)?;
                    let Some(file) = self.inbox.receive(from, &chunk).await? else {
                        return encode(&ChunkReply::Ok(None));
                    };
                    let (vote, meta) = chunk.last.expect("the last chunk carries its vote and metadata");
                    speaks_for_itself(&vote, from)?;
                    let path = file.path().to_path_buf();
                    let snapshot = Snapshot {
                        meta,
                        snapshot: Box::new(file),
                    };
                    let reply: ChunkReply = {
                        let _installing = self.installs.begin();
                        self.raft.install_full_snapshot(vote, snapshot).await.map(Some)
                    };
                    // Installed, the file was moved into place; otherwise
                    // (a stale leader, an older snapshot) it is not needed.
                    // Its name is this transfer's alone.
                    remove_files(vec![path]).await;
                    encode(&reply)
                }
                RpcKind::TimeoutNow => {
                    let request: crate::admin::TimeoutNow = decode(&payload)?;
                    speaks_for_itself(&request.vote, from)?;
                    encode(&crate::admin::timeout_now(&self.raft, from, &request).await)
                }
            }
        })
    }
}

/// Refuses a message whose vote (the leader's in AppendEntries and a
/// snapshot, the candidate's in Vote) names another node than its sender:
/// a voter speaks only for itself.
fn speaks_for_itself(vote: &Vote, from: NodeId) -> Result<(), WireError> {
    match vote.leader_id().voted_for() {
        Some(id) if id == from => Ok(()),
        other => Err(WireError::Refused(format!(
            "a message from node {from} carries the vote of {other:?}"
        ))),
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
            Some(e) => e.handle(message.kind, message.from, message.payload).await,
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
    /// Size of the chunks snapshots are sent in.
    snapshot_chunk_bytes: usize,
    _sm: std::marker::PhantomData<fn() -> SM>,
}

impl<SM> Network<SM> {
    /// The network of `group` as seen from node `from`, which reaches its
    /// peers at `addresses` and sends snapshots in chunks of
    /// `snapshot_chunk_bytes` (at most [`SNAPSHOT_CHUNK_BYTES_MAX`]).
    pub fn new(
        group: impl Into<String>,
        from: NodeId,
        wire: Arc<dyn Wire>,
        addresses: Arc<BTreeMap<NodeId, String>>,
        snapshot_chunk_bytes: usize,
    ) -> Network<SM> {
        Network {
            group: group.into(),
            from,
            wire,
            addresses,
            snapshot_chunk_bytes: snapshot_chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX),
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
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
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
    snapshot_chunk_bytes: usize,
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
                    RpcKind::SnapshotChunk => openraft::network::RPCTypes::InstallSnapshot,
                    RpcKind::TimeoutNow => openraft::network::RPCTypes::Vote,
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
        let network =
            |e: &dyn std::error::Error| StreamingError::Network(NetworkError::new(&AnyError::error(e)));
        let file = *snapshot.snapshot;
        let meta = snapshot.meta;
        let total_bytes = file.bytes();
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0u64;
        loop {
            let len = (total_bytes - offset).min(self.snapshot_chunk_bytes as u64) as usize;
            let reader = file.clone();
            let data = crate::runtime::blocking(move || -> std::io::Result<Vec<u8>> {
                let mut data = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    let n = reader.read_at(&mut data[filled..], offset + filled as u64)?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "snapshot file shrank",
                        ));
                    }
                    filled += n;
                }
                Ok(data)
            })
            .await
            .map_err(|e| network(&e))?
            .map_err(|e| network(&e))?;
            let last = offset + len as u64 == total_bytes;
            let chunk = SnapshotChunk {
                snapshot_id: meta.snapshot_id.clone(),
                offset,
                total_bytes,
                data,
                last: last.then(|| (vote, meta.clone())),
            };
            let payload = encode(&chunk).map_err(|e| network(&e))?;
            let call = self.call(RpcKind::SnapshotChunk, payload, option.hard_ttl());
            let bytes = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                r = call => r.map_err(|e| match e {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::new(&other)),
                })?,
            };
            let reply: ChunkReply = decode(&bytes).map_err(|e| network(&e))?;
            match reply {
                Err(fatal) => return Err(StreamingError::RemoteError(RemoteError::new(self.to, fatal))),
                Ok(Some(response)) if last => return Ok(response),
                Ok(None) if !last => offset += len as u64,
                Ok(other) => {
                    return Err(network(&WireError::Refused(format!(
                        "chunk at {offset} (last: {last}) answered {other:?}"
                    ))));
                }
            }
        }
    }
}

/// The production wire: gRPC over tonic, on the node's shared channels (one
/// lazily connected, reused channel per peer address; the node's control
/// plane and forwarding use the same ones).
pub struct TonicWire {
    channels: Arc<Channels>,
}

impl TonicWire {
    /// A wire over `channels`.
    pub fn new(channels: Arc<Channels>) -> TonicWire {
        TonicWire { channels }
    }

    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, WireError> {
        self.channels.get(addr).map_err(WireError::Refused)
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
                RpcKind::SnapshotChunk => client.snapshot_chunk(request).await,
                RpcKind::TimeoutNow => client.timeout_now(request).await,
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

/// Decides whether a Raft message may be delivered, before it is decoded:
/// given the call's extensions (where the TLS layer keeps the caller's
/// certificate), the group it is for, and the node it says it is from.
/// An `Err` is the status the caller receives.
pub type Authorize = Arc<dyn Fn(&tonic::Extensions, &str, NodeId) -> Result<(), tonic::Status> + Send + Sync>;

/// The tonic service that feeds a node's [`Router`].
pub struct RaftService {
    router: Router,
    authorize: Option<Authorize>,
}

impl RaftService {
    /// The gRPC server for `router`, with the internal message limit; every
    /// message must pass `authorize` first (none: every message is taken).
    pub fn server(router: Router, authorize: Option<Authorize>) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(RaftService { router, authorize })
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    async fn handle(
        &self,
        kind: RpcKind,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        if let Some(authorize) = &self.authorize {
            let m = request.get_ref();
            authorize(request.extensions(), &m.group, m.from)?;
        }
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

    async fn snapshot_chunk(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.handle(RpcKind::SnapshotChunk, request).await
    }

    async fn timeout_now(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.handle(RpcKind::TimeoutNow, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AppliedState;
    use crate::store::snapshot::SnapshotDir;
    use reservoir_tokens::RegionState;

    /// A real snapshot file of a small region state, and its bytes.
    fn snapshot_file(dir: &std::path::Path) -> (SnapshotMeta, Vec<u8>) {
        let snapshots =
            SnapshotDir::open(&dir.join("built"), crate::SNAPSHOT_BYTES_MAX).expect("snapshot dir");
        let log_id = openraft::testing::log_id(1, 1, 7);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Default::default(),
            snapshot_id: "1-7-1".into(),
        };
        let state = AppliedState {
            last_applied: Some(log_id),
            last_membership: Default::default(),
            machine: RegionState::new("us-east"),
        };
        let file = snapshots.write(1, &meta, &state).expect("write");
        let bytes = std::fs::read(file.path()).expect("read back");
        (meta, bytes)
    }

    fn chunks(meta: &SnapshotMeta, bytes: &[u8], size: usize) -> Vec<SnapshotChunk> {
        let n = bytes.len().div_ceil(size);
        (0..n)
            .map(|i| {
                let data = bytes[i * size..((i + 1) * size).min(bytes.len())].to_vec();
                SnapshotChunk {
                    snapshot_id: meta.snapshot_id.clone(),
                    offset: (i * size) as u64,
                    total_bytes: bytes.len() as u64,
                    data,
                    last: (i + 1 == n).then(|| (Vote::default(), meta.clone())),
                }
            })
            .collect()
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).expect("incoming dir").count()
    }

    /// A message's vote must name its sender.
    #[test]
    fn a_voter_speaks_only_for_itself() {
        let vote = Vote::new(3, 2);
        assert!(speaks_for_itself(&vote, 2).is_ok());
        assert!(speaks_for_itself(&vote, 1).is_err());
        assert!(speaks_for_itself(&Vote::default(), 1).is_err());
    }

    /// A snapshot arrives in order, chunk by chunk, into one file that
    /// checks out; a chunk out of order is refused and drops the transfer.
    #[tokio::test]
    async fn chunks_assemble_into_a_checked_file() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, bytes) = snapshot_file(dir.path());
        let inbox = SnapshotInbox::new(dir.path().to_path_buf());
        let all = chunks(&meta, &bytes, 16);
        assert!(all.len() > 3, "{} bytes make few chunks", bytes.len());
        for c in &all[..all.len() - 1] {
            assert!(inbox.receive(2, c).await.expect("chunk").is_none());
        }
        let file = inbox
            .receive(2, &all[all.len() - 1])
            .await
            .expect("last chunk")
            .expect("a complete file");
        assert_eq!(std::fs::read(file.path()).expect("read"), bytes);

        // Out of order: the second chunk first.
        assert!(inbox.receive(3, &all[0]).await.expect("first").is_none());
        assert!(inbox.receive(3, &all[2]).await.is_err(), "a skipped chunk");
        assert!(
            inbox.receive(3, &all[1]).await.is_err(),
            "the transfer was dropped"
        );
    }

    /// A file that fails its checksum is refused at the last chunk, and its
    /// file deleted: it never reaches openraft.
    #[tokio::test]
    async fn a_corrupt_snapshot_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, mut bytes) = snapshot_file(dir.path());
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        let incoming = dir.path().join("incoming");
        std::fs::create_dir_all(&incoming).expect("dir");
        let inbox = SnapshotInbox::new(incoming.clone());
        let all = chunks(&meta, &bytes, 64);
        for c in &all[..all.len() - 1] {
            inbox.receive(2, c).await.expect("chunk");
        }
        let refused = inbox.receive(2, &all[all.len() - 1]).await;
        assert!(
            matches!(&refused, Err(WireError::Refused(why)) if why.contains("checksum")),
            "{refused:?}"
        );
        assert_eq!(files_in(&incoming), 0, "the corrupt file is deleted");
    }

    /// A sender that starts over gets a new file (the old one deleted), so a
    /// late chunk of its earlier try cannot land in the new one.
    #[tokio::test]
    async fn a_new_try_gets_a_new_file() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (meta, bytes) = snapshot_file(dir.path());
        let incoming = dir.path().join("incoming");
        std::fs::create_dir_all(&incoming).expect("dir");
        let inbox = SnapshotInbox::new(incoming.clone());
        let all = chunks(&meta, &bytes, 32);
        inbox.receive(2, &all[0]).await.expect("first try");
        inbox.receive(2, &all[1]).await.expect("first try");
        let first_try = inbox.lock()[&2].path.clone();
        inbox.receive(2, &all[0]).await.expect("second try");
        let second_try = inbox.lock()[&2].path.clone();
        assert_ne!(first_try, second_try);
        assert!(!first_try.exists(), "the first try's file is deleted");
        assert_eq!(files_in(&incoming), 1);
        // The first try's next chunk is out of order for the second.
        assert!(inbox.receive(2, &all[2]).await.is_err());
        for c in &all {
            inbox.receive(2, c).await.expect("third try");
        }
        assert_eq!(files_in(&incoming), 1, "only the complete file is left");
    }
}
