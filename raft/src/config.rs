//! The openraft type configuration shared by every Raft group, and the one
//! log payload the groups carry: a [`Batch`] of commands.
//!
//! One generic configuration, [`GroupConfig<SM>`], serves every `tokens`
//! state machine. It is a zero-sized marker: its trait impls (`Debug`,
//! `Clone`, `Ord`, …) are written by hand so that they do not require the
//! same of `SM`, which openraft demands of a type configuration but which a
//! state machine has no reason to provide.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use openraft::{BasicNode, Entry, RaftTypeConfig, impls::OneshotResponder};
use reservoir_tokens::StateMachine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A Raft node id. Never reused: a node that left keeps its id retired.
pub type NodeId = reservoir_tokens::NodeId;

/// What openraft knows about a node: `addr` is its internal gRPC address.
pub type Node = BasicNode;

/// A log id (leader term and node, index) in every group.
pub type LogId = openraft::LogId<NodeId>;

/// The vote a node has cast or holds, persisted before openraft acts on it.
pub type Vote = openraft::Vote<NodeId>;

/// A membership config together with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;

/// The description of a snapshot: the last log id it covers, its membership
/// and its id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// The storage error openraft understands. Any one of them stops the Raft
/// instance that got it.
pub type StorageError = openraft::StorageError<NodeId>;

/// The async runtime openraft runs on: tokio with a seedable generator for
/// the election timeouts (see [`crate::runtime`]). This is the one place
/// that names it.
pub type Runtime = crate::runtime::Runtime;

/// A Raft group hosting state machine `SM`.
pub type GroupRaft<SM> = openraft::Raft<GroupConfig<SM>>;

/// The bound every command and outcome that crosses the log must meet: it is
/// encoded into log entries and snapshots, sent between nodes, and handed
/// between tasks.
pub trait Payload: Serialize + DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static {}

impl<T> Payload for T where T: Serialize + DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static {}

/// A `tokens` state machine that a Raft group can host.
///
/// Blanket-implemented: `RegionState` and `LedgerState` qualify as they are.
/// The state itself must serialize (snapshots) and clone (a snapshot is built
/// from a copy, so applying goes on while it is written out).
pub trait GroupMachine:
    StateMachine<Command: Payload, Outcome: Payload>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<SM> GroupMachine for SM where
    SM: StateMachine<Command: Payload, Outcome: Payload>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The openraft type configuration for a group hosting `SM`.
///
/// A marker type: it is never constructed with data. `PhantomData<fn() -> SM>`
/// keeps it `Send + Sync` whatever `SM` is.
pub struct GroupConfig<SM>(PhantomData<fn() -> SM>);

impl<SM> fmt::Debug for GroupConfig<SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupConfig<{}>", std::any::type_name::<SM>())
    }
}

impl<SM> Clone for GroupConfig<SM> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<SM> Copy for GroupConfig<SM> {}

impl<SM> Default for GroupConfig<SM> {
    fn default() -> Self {
        GroupConfig(PhantomData)
    }
}

impl<SM> PartialEq for GroupConfig<SM> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<SM> Eq for GroupConfig<SM> {}

impl<SM> PartialOrd for GroupConfig<SM> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<SM> Ord for GroupConfig<SM> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

impl<SM: GroupMachine> RaftTypeConfig for GroupConfig<SM> {
    type D = Batch<SM::Command>;
    type R = Vec<SM::Outcome>;
    type NodeId = NodeId;
    type Node = Node;
    type Entry = Entry<Self>;
    /// A snapshot file (`generic-snapshot-data`): the network layer sends it
    /// in chunks.
    type SnapshotData = crate::store::SnapshotFile;
    type AsyncRuntime = Runtime;
    type Responder = OneshotResponder<Self>;
}

/// The application data of one log entry: commands group-committed together
/// by the proposer, applied in order. The entry's response is one outcome per
/// command, in the same order.
///
/// An encoded entry must stay under [`ENTRY_BYTES_MAX`]: the log store refuses
/// a larger one with a `StorageError`, which stops the Raft instance. The
/// proposer must bound its batches (count and bytes) below that.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch<C> {
    /// The commands, in the order they are applied.
    pub commands: Vec<C>,
}

impl<C> Batch<C> {
    /// A batch of these commands.
    pub fn new(commands: Vec<C>) -> Batch<C> {
        Batch { commands }
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether the batch holds no command.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Largest encoded log entry the store writes or reads. Replication RPCs carry several entries and tonic refuses messages over
/// 4 MiB by default, so the proposer should aim far lower than this.
pub const ENTRY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Largest snapshot file (state machine and its metadata) the store writes
/// or reads, and receives from a leader. A bound on disk use and on what a
/// peer can make a node write, far above any state the `tokens` limits
/// allow on one node.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
