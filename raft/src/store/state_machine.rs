//! The state machine store: a `tokens` state machine in memory, its newest
//! snapshot in sled.
//!
//! `apply` does not touch the disk. What is applied is recovered after a
//! restart from the newest snapshot plus openraft's replay of the committed
//! log after it: on open, the state starts from the snapshot and reports the
//! snapshot's last log id as applied, so openraft replays from there.
//!
//! Snapshots are whole: the bincode encoding of [`AppliedState`] (last
//! applied log id, membership, state machine). Only the newest is kept, in
//! the group's `snapshot` tree, flushed before openraft is told about it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::{GroupShared, StoreError, decode, encode};
use crate::config::{
    GroupConfig, GroupMachine, LogId, SNAPSHOT_BYTES_MAX, SnapshotMeta, StorageError, StoredMembership,
};

/// Key of the newest snapshot in the group's `snapshot` tree.
const KEY_CURRENT: &[u8] = b"current";

/// Largest stored snapshot record: the snapshot plus its metadata.
const SNAPSHOT_RECORD_BYTES_MAX: u64 = SNAPSHOT_BYTES_MAX + 64 * 1024;

/// A state machine together with the log position it reflects. This is what
/// a snapshot holds, and what readers see.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedState<SM> {
    /// The last log entry applied to `machine`, if any.
    pub last_applied: Option<LogId>,
    /// The last membership applied (openraft asks for it on startup).
    pub last_membership: StoredMembership,
    /// The state machine.
    pub machine: SM,
}

/// The newest snapshot, as stored in sled.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    /// The sequence number in its id (or taken when it was installed): ids
    /// built after a restart continue after it, so they stay unique.
    seq: u64,
    meta: SnapshotMeta,
    /// An encoded [`AppliedState`].
    data: Vec<u8>,
}

/// Reads the state a group has applied, for a node's read paths. Cheap to
/// clone. The lock is held only while the closure runs: keep it short.
pub struct StateReader<SM> {
    state: Arc<RwLock<AppliedState<SM>>>,
}

impl<SM> Clone for StateReader<SM> {
    fn clone(&self) -> Self {
        StateReader {
            state: self.state.clone(),
        }
    }
}

impl<SM> StateReader<SM> {
    /// Runs `f` on the applied state. Fails only if an apply panicked
    /// (the state may be half-updated).
    pub fn read<R>(&self, f: impl FnOnce(&AppliedState<SM>) -> R) -> Result<R, StoreError> {
        let state = self.state.read().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&state))
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        self.read(|state| state.last_applied)
    }
}

/// The openraft state machine of one group.
pub struct StateMachineStore<SM> {
    shared: Arc<GroupShared>,
    /// Shared with readers and with nothing else.
    state: Arc<RwLock<AppliedState<SM>>>,
    snapshots: SnapshotTree,
}

impl<SM: GroupMachine> StateMachineStore<SM> {
    /// Opens the store, loading the newest snapshot if there is one.
    pub(crate) fn open(
        shared: Arc<GroupShared>,
        tree: sled::Tree,
        initial: SM,
    ) -> Result<StateMachineStore<SM>, StoreError> {
        let snapshots = SnapshotTree::new(tree);
        let state = match snapshots.load()? {
            Some(stored) => decode_snapshot(&stored.meta, &stored.data)?,
            None => AppliedState {
                last_applied: None,
                last_membership: StoredMembership::default(),
                machine: initial,
            },
        };
        Ok(StateMachineStore {
            shared,
            state: Arc::new(RwLock::new(state)),
            snapshots,
        })
    }

    /// The group this store belongs to.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// A reader of the applied state, for the node's read paths.
    pub fn reader(&self) -> StateReader<SM> {
        StateReader {
            state: self.state.clone(),
        }
    }
}

impl<SM: GroupMachine> RaftStateMachine<GroupConfig<SM>> for StateMachineStore<SM> {
    type SnapshotBuilder = SnapshotBuilder<SM>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self
            .state
            .read()
            .map_err(|_| StorageIOError::read_state_machine(&StoreError::Poisoned))?;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<SM::Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry<GroupConfig<SM>>> + Send,
        I::IntoIter: Send,
    {
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        // One write lock for the whole call: readers see whole entries, and
        // the lock is taken once per call, not per command.
        let mut state = self
            .state
            .write()
            .map_err(|_| StorageIOError::write_state_machine(&StoreError::Poisoned))?;
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => batch
                    .commands
                    .into_iter()
                    .map(|command| state.machine.apply(command))
                    .collect(),
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            responses.push(outcomes);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy taken between applies: the builder runs on its own task
        // while applying goes on. A poisoned lock becomes the build's error.
        let state = self.state.read().ok().map(|state| state.clone());
        SnapshotBuilder {
            shared: self.shared.clone(),
            state,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = decode_snapshot(meta, &data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // Persist first: a crash after this point restarts from the new
        // snapshot, before it from the old one; both are consistent.
        let write_error = |e: StoreError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        self.snapshots
            .store(self.snapshots.next_seq(), meta.clone(), data, true)
            .map_err(write_error)?;
        self.shared.flusher.flush().await.map_err(write_error)?;
        let mut current = self
            .state
            .write()
            .map_err(|_| StorageIOError::write_state_machine(&StoreError::Poisoned))?;
        *current = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<GroupConfig<SM>>>, StorageError> {
        let stored = self
            .snapshots
            .load()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for
/// the builder.
pub struct SnapshotBuilder<SM> {
    shared: Arc<GroupShared>,
    /// `None` if the state lock was poisoned.
    state: Option<AppliedState<SM>>,
    snapshots: SnapshotTree,
}

impl<SM: GroupMachine> RaftSnapshotBuilder<GroupConfig<SM>> for SnapshotBuilder<SM> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig<SM>>, StorageError> {
        let state = self
            .state
            .take()
            .ok_or_else(|| StorageIOError::read_state_machine(&StoreError::Poisoned))?;
        let snapshots = self.snapshots.clone();
        // Encoding a large state and writing it to sled is long, blocking
        // work: it runs on a blocking thread, not on the async executor
        // that also carries Raft traffic and client calls.
        let built = tokio::task::spawn_blocking(move || {
            let data = encode(&state, SNAPSHOT_BYTES_MAX)
                .map_err(|e| Box::new(StorageIOError::read_state_machine(&e)))?;
            let seq = snapshots.next_seq();
            let snapshot_id = match state.last_applied {
                Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id, log_id.index),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
                snapshot_id,
            };
            // An install may have stored a newer snapshot while this one was
            // being built; it is then kept, and this one is only returned.
            let stored = snapshots
                .store(seq, meta.clone(), data.clone(), false)
                .map_err(|e| Box::new(StorageIOError::write_snapshot(Some(meta.signature()), &e)))?;
            Ok::<_, Box<StorageIOError<crate::config::NodeId>>>((meta, data, stored))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())))?;
        let (meta, data, stored) = built.map_err(|e| *e)?;
        let write_error = |e: StoreError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        if stored {
            self.shared.flusher.flush().await.map_err(write_error)?;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// The group's `snapshot` tree, and the lock that orders writes to it.
#[derive(Clone)]
struct SnapshotTree {
    tree: sled::Tree,
    /// Serializes compare-and-store, so a slow build cannot overwrite a
    /// newer snapshot installed meanwhile. Held only for the sled write.
    write_lock: Arc<Mutex<()>>,
    /// The last snapshot sequence number used.
    seq: Arc<AtomicU64>,
}

impl SnapshotTree {
    fn new(tree: sled::Tree) -> SnapshotTree {
        SnapshotTree {
            tree,
            write_lock: Arc::new(Mutex::new(())),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The newest stored snapshot. Also moves the sequence number past it.
    fn load(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let Some(bytes) = self.tree.get(KEY_CURRENT)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode(&bytes, SNAPSHOT_RECORD_BYTES_MAX)?;
        self.seq.fetch_max(stored.seq, Ordering::Relaxed);
        Ok(Some(stored))
    }

    /// Stores a snapshot as the newest; unless `replace_newer`, only if no
    /// stored snapshot covers more of the log. Returns whether it stored it.
    /// Not flushed: the caller flushes.
    fn store(
        &self,
        seq: u64,
        meta: SnapshotMeta,
        data: Vec<u8>,
        replace_newer: bool,
    ) -> Result<bool, StoreError> {
        // The unit value behind the lock cannot be left inconsistent.
        let _guard = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !replace_newer && let Some(current) = self.load()? {
            let current_index = current.meta.last_log_id.map(|id| id.index);
            let new_index = meta.last_log_id.map(|id| id.index);
            if current_index > new_index {
                return Ok(false);
            }
        }
        let record = StoredSnapshot { seq, meta, data };
        self.tree
            .insert(KEY_CURRENT, encode(&record, SNAPSHOT_RECORD_BYTES_MAX)?)?;
        Ok(true)
    }
}

/// Decodes a snapshot's data and checks it against its metadata.
fn decode_snapshot<SM: GroupMachine>(
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<AppliedState<SM>, StoreError> {
    let state: AppliedState<SM> = decode(data, SNAPSHOT_BYTES_MAX)?;
    if state.last_applied != meta.last_log_id || state.last_membership != meta.last_membership {
        return Err(StoreError::Corrupt(format!(
            "snapshot {} holds state at {:?}, membership {:?}; its metadata says {:?}, {:?}",
            meta.snapshot_id,
            state.last_applied,
            state.last_membership,
            meta.last_log_id,
            meta.last_membership
        )));
    }
    Ok(state)
}
