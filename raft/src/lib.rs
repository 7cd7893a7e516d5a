//! reservoir-raft: replication for the `reservoir-tokens` state machines.
//!
//! This crate hosts any `tokens` state machine (`RegionState`,
//! `LedgerState`) in an openraft 0.9 group: the type configuration, the
//! sled-backed log store and the state machine store with file snapshots,
//! the network (tonic, routed by group id, snapshots in chunks), and
//! [`Group`]: one group on one node, with a proposer that group-commits
//! client commands, reads, and a staggered snapshot schedule.
//!
//! A node process hosts several groups (the us-east nodes host their region
//! group and the ledger group). It opens one sled database
//! ([`NodeStorage`]) and asks it for each group's stores; every group's
//! trees are prefixed by its group id, and all of them share one flusher
//! thread.
//!
//! Invariants:
//! - Nothing is acknowledged to openraft as durable before sled's blocking
//!   `flush()` has returned: `save_vote` and `truncate` flush before they
//!   return, `append` calls back only from the flusher after a flush that
//!   covers its entries (the durable pattern of openraft's
//!   `stores/rocksstore-v2`, not the `raft-kv-rocksdb` example, which acks
//!   first). A flush ends with `fdatasync` of sled's data file: the
//!   workspace builds sled patched for it (`vendor/sled/PATCHES.md`), so
//!   acknowledged means on the disk, not in its volatile cache.
//! - Flushes run on one dedicated thread per node, never on the async
//!   executor, and are group-committed: one flush answers every request
//!   queued before it began, from every group.
//! - The log never has holes: a truncation is one atomic sled batch;
//!   appends and purge steps write key by key in index order, which sled
//!   recovers in order (a crash keeps a prefix of them); the purge marker
//!   is written before the purge.
//! - `apply` is pure and in memory: it decodes each entry and delegates to
//!   the `tokens` state machine, one outcome per command, in order. After a
//!   restart the state comes back from the newest snapshot, and openraft
//!   replays the committed log after it.
//! - A snapshot never stops `apply`: the state is cloned in O(1) (the
//!   `tokens` states are persistent maps) and written to a file by a thread
//!   of its own at a lower priority, beside sled, never into it. Each voter
//!   of a group builds at its own offset of the schedule. A snapshot
//!   travels to a follower in bounded chunks, written to a file there.
//! - A failed snapshot build (over its size cap, a full disk) never stops
//!   the group: it is skipped, the previous snapshot and the log after it
//!   are kept, and the schedule tries again later (openraft 0.9 would stop
//!   on the error).
//! - No wait on consensus is unbounded: a proposal, each batch's write and a
//!   linearizable read give up after the group's bound with
//!   [`ProposeError::Timeout`] (outcome unknown), and the batch's write slot
//!   comes back (openraft 0.9 never answers a write whose entry reached this
//!   node only inside a snapshot). [`Group::commit_stall`] says when a group
//!   cannot commit on this node.
//! - Failover does not wait on openraft 0.9's timers alone (it has no
//!   pre-vote): a follower that refuses a candidate whose log is behind its
//!   own campaigns at once, and each follower campaigns after twice its
//!   longest election timeout without a leader's message
//!   ([`RaftEndpoint`]). Elections may start at any time in Raft, so safety
//!   does not depend on either.
//! - A group is initialized once, by the member with the smallest id on its
//!   very first start; a node started to join ([`GroupOptions::join`])
//!   never initializes one, and waits for a leader to add it.
//! - Operator actions ([`admin`]) run on the leader, are bounded, and check
//!   before they change anything: a voter is added only once caught up as a
//!   learner, a replacement is one joint change, no change leaves fewer
//!   than a majority of voters answering, and a leadership transfer pauses
//!   new batches until the target holds the whole log.
//! - Only [`config`] names the async runtime ([`runtime`]: tokio with a
//!   seedable generator for election timeouts). In a simulation
//!   ([`runtime::simulate`]) nothing leaves the simulating thread: blocking
//!   work runs inline and the group's timers read tokio's (simulated) clock.
//!
//! Layout:
//! - [`config`]: [`GroupConfig`] (the openraft type configuration), [`Batch`]
//!   (one log entry's commands), id and size types and limits;
//! - [`store`]: [`NodeStorage`] (a node's sled database and flusher),
//!   [`LogStore`] (entries and vote; purges in the background),
//!   [`store::memory`] (the simulation's disk and log store),
//!   [`StateMachineStore`] (state in memory, snapshots in files),
//!   [`store::snapshot`] (the snapshot file format), [`StateReader`] (reads
//!   for the node);
//! - [`network`]: the `Wire` seam, [`TonicWire`], [`Router`] and the
//!   receiving endpoints, chunked snapshot transfer;
//! - [`group`]: [`Group`], the proposer, reads, the snapshot schedule;
//! - [`admin`]: operator actions on a group (membership view, add a
//!   learner, change voters, leadership transfer by `TimeoutNow`, snapshot
//!   now); [`NodeStorage::seed_group`] seeds an empty group from a backup;
//! - [`testing`]: an in-process network that can cut links;
//! - [`runtime`]: the async runtime openraft runs on, its seedable
//!   generator, and the simulation switch.
//!
//! Caveats:
//! - sled 0.34 as published syncs with `sync_file_range` on Linux, which
//!   does not flush a disk's volatile write cache (sled#1351, #1452), and
//!   never syncs its blob files. The workspace patches it (`vendor/sled`,
//!   `[patch.crates-io]`): a sled upgrade must carry the patch, and
//!   `raft/tests/fsync.rs` fails if it is lost. Writes sled makes between
//!   two flushes are not acknowledged and may be lost or torn by a crash;
//!   sled's recovery drops them.
//! - sled's `flush_async` is never used: it can deadlock (sled#1308).
//! - sled cannot be simulated (it runs its own threads, and dropping a `Db`
//!   flushes it). The whole-cluster simulation (`sim/`) runs the groups on
//!   [`store::memory`] instead: the same openraft traits and durability
//!   contract over a simulated disk that loses unflushed writes (or tears
//!   them) on a crash. sled itself is tested by real SIGKILLs
//!   (`raft/tests/durability.rs`) and its syncs by `raft/tests/fsync.rs`.
//! - A snapshot is the whole state machine (not incremental): writing one
//!   costs CPU and disk in proportion to the state, on a background thread;
//!   installing one decodes the whole state.
//! - openraft 0.9 has no leadership transfer; [`admin`] builds one from
//!   its parts (write slots, heartbeats off, `trigger().elect()` on the
//!   target). A transfer may end with another voter leading
//!   (`TRANSFERRED_ELSEWHERE`) if a third node's election timer fires
//!   first.
//! - Opening a database and a group blocks (sled opens files, snapshots are
//!   decoded); do it at startup. Dropping the last store of a database waits
//!   for the flusher's current flush.

pub mod admin;
pub mod config;
pub mod group;
pub mod network;
pub mod runtime;
pub mod store;
pub mod testing;

pub use admin::{AdminError, MembershipView};
pub use config::{
    Batch, ENTRY_BYTES_MAX, GroupConfig, GroupMachine, GroupRaft, LogId, Node, NodeId, Payload, Runtime,
    SNAPSHOT_BYTES_MAX, SnapshotMeta, StorageError, StoredMembership, Vote,
};
pub use group::{CommitStall, Group, GroupError, GroupOptions, GroupStatus, ProposeError, Role};
pub use network::{RaftEndpoint, RaftService, Router, SnapshotChunk, TonicWire, Wire};
pub use store::{
    AppliedState, GroupStores, LogStore, NodeStorage, SnapshotBuilder, SnapshotFile, SnapshotStats,
    StateMachineStore, StateReader, StorageOptions, StoreError,
};
