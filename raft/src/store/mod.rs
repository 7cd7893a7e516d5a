//! Durable storage for a node's Raft groups: one sled database per node,
//! a few trees per group, one flusher thread per node.
//!
//! [`NodeStorage::open`] opens the database; [`NodeStorage::open_group`]
//! hands out the two stores openraft needs for one group: a [`LogStore`]
//! (log entries, vote, committed and purged log ids) and a
//! [`StateMachineStore`] (the state machine in memory, its newest snapshot
//! in a file).
//!
//! Trees of group `g`, every value bincode-encoded:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `g/log` | log index, big-endian `u64` (so keys sort by index) | `Entry` |
//! | `g/meta` | `vote`, `committed`, `last_purged` | `Vote`, `Option<LogId>`, `LogId` |
//!
//! Snapshots of group `g` are files in `{path}/raft-snapshots/g/` (see
//! [`snapshot`]): outside sled, so a snapshot's write never joins the log's
//! flushes.
//!
//! What is synced when: every `flush` of the database (a vote, a
//! truncation, the flush that acknowledges an append) ends with an
//! `fdatasync` of sled's data file, as the workspace builds sled 0.34.7
//! patched for it (`vendor/sled/PATCHES.md`; stock sled 0.34 only called
//! `sync_file_range`, which leaves the data in the disk's volatile cache).
//! A log entry stored as a sled blob is synced with its directory when
//! written; sled's own files and directories are synced at open. A snapshot
//! file is synced, renamed into place and its directory synced before it
//! counts (and before the log before it may be purged); its directories
//! are synced when opened. Data directories of builds that kept snapshots in a sled tree
//! (`g/snapshot`) are refused with a clear error: their state format differs.

mod flusher;
mod log;
pub mod memory;
pub mod snapshot;
mod state_machine;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::flusher::FLUSH_QUEUE_MAX;
pub use self::log::{LogStore, PURGE_BATCH_ENTRIES, READ_BYTES_MAX};
pub use self::snapshot::{SNAPSHOT_SYNC_BYTES, SnapshotFile};
pub use self::state_machine::{
    AppliedState, InstallGuard, InstallMarker, SNAPSHOT_RETRY_AFTER_FAILURE,
    SNAPSHOT_RETRY_AFTER_FAILURE_MAX, SnapshotBuilder, SnapshotStats, SnapshotStatsHandle, StateMachineStore,
    StateReader,
};

use self::flusher::Flusher;
use crate::config::{GroupMachine, LogId, SNAPSHOT_BYTES_MAX};

/// Longest group id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 64;

/// sled's page cache size when the options do not say. sled's own default
/// is 1 GiB; a local cluster runs ten nodes on one machine.
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Separates the group id from the tree's role in a tree name. Group ids
/// cannot contain it, so no two groups share a tree.
const TREE_NAME_SEPARATOR: char = '/';

/// The directory, inside a node's storage directory, that holds one
/// subdirectory of snapshot files per group. sled ignores it.
pub const SNAPSHOTS_DIR: &str = "raft-snapshots";

/// An error of the storage layer, outside openraft's calls (which get an
/// openraft `StorageError` made from one of these).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed: I/O, corruption, or a database another process holds.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// An I/O error outside sled (the flusher thread, a failed flush).
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// A value could not be encoded or decoded, or is over its size limit.
    #[error("codec: {0}")]
    Codec(#[from] bincode::Error),
    /// Stored data breaks an invariant of the store.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The group id is empty, too long, or has a character outside
    /// `[A-Za-z0-9._:-]`.
    #[error("invalid group id {0:?}: 1-64 bytes of [A-Za-z0-9._:-]")]
    InvalidGroupId(String),
    /// The group's stores are already open in this process.
    #[error("group {0:?} is already open")]
    GroupOpen(String),
    /// The flusher thread is gone; nothing more can be made durable.
    #[error("the flusher thread has stopped")]
    FlusherStopped,
    /// A state machine apply panicked while holding the state: the state
    /// may be half-updated and is not served.
    #[error("the state machine lock is poisoned (an apply panicked)")]
    Poisoned,
}

impl StoreError {
    /// Whether trying the same operation again may succeed. Only a group that
    /// is still open elsewhere in the process (being shut down) may become
    /// free; every other storage error is fatal to the store.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::GroupOpen(_))
    }
}

/// How to open a node's database.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Directory of the sled database; created if missing.
    pub path: PathBuf,
    /// Upper bound of sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Largest snapshot file a build may write (default and ceiling
    /// [`SNAPSHOT_BYTES_MAX`]). A build that would exceed it fails; the
    /// group keeps its previous snapshot and goes on committing (see
    /// [`SnapshotBuilder`]).
    pub snapshot_bytes_max: u64,
}

impl StorageOptions {
    /// Options for a database at `path`, with the default cache size.
    pub fn new(path: impl Into<PathBuf>) -> StorageOptions {
        StorageOptions {
            path: path.into(),
            cache_bytes: CACHE_BYTES_DEFAULT,
            snapshot_bytes_max: SNAPSHOT_BYTES_MAX,
        }
    }
}

/// A node's storage: its sled database and its flusher thread. Cheap to
/// share behind an `Arc`; the database closes once this and every store it
/// handed out are dropped.
pub struct NodeStorage {
    db: sled::Db,
    flusher: Flusher,
    path: PathBuf,
    /// See [`StorageOptions::snapshot_bytes_max`].
    snapshot_bytes_max: u64,
    /// Groups whose stores are currently open, so that no group is opened
    /// twice (two log stores on one tree would interleave their writes).
    open_groups: Arc<Mutex<BTreeSet<String>>>,
}

/// The two stores of one group, ready for `Raft::new`.
pub struct GroupStores<SM: GroupMachine, L = LogStore<SM>> {
    /// Log entries, vote, committed and purged log ids: sled's
    /// [`LogStore`], or a simulated disk's [`memory::MemoryLogStore`].
    pub log: L,
    /// The state machine and its snapshots.
    pub state_machine: StateMachineStore<SM>,
}

impl NodeStorage {
    /// Opens (or creates) the database and starts its flusher thread.
    /// Blocking: call it once at startup, before serving.
    pub fn open(options: &StorageOptions) -> Result<NodeStorage, StoreError> {
        let db = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_bytes)
            .open()?;
        let flusher = Flusher::start(db.clone())?;
        Ok(NodeStorage {
            db,
            flusher,
            path: options.path.clone(),
            snapshot_bytes_max: options.snapshot_bytes_max,
            open_groups: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the stores of group `group`, creating its trees if missing.
    ///
    /// The state machine starts from the group's newest snapshot, or from
    /// `initial` if it has none; openraft then replays the committed log
    /// after it. Blocking (reads and decodes the snapshot): call it at
    /// startup, on a blocking thread. A group can be open once at a time; it is free again when
    /// both stores and every log reader cloned from them are dropped.
    pub fn open_group<SM: GroupMachine>(
        &self,
        group: &str,
        initial: SM,
    ) -> Result<GroupStores<SM>, StoreError> {
        validate_group_id(group)?;
        let lease = GroupLease::take(group, &self.open_groups)?;
        let shared = Arc::new(GroupShared {
            group: group.to_owned(),
            flusher: Some(self.flusher.clone()),
            purge_limit: tokio::sync::watch::Sender::new(PurgeLimit::default()),
            _lease: lease,
        });
        if self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == tree_name(group, "snapshot").as_bytes())
            && !self.db.open_tree(tree_name(group, "snapshot"))?.is_empty()
        {
            return Err(StoreError::Corrupt(format!(
                "{}: group {group} has a snapshot written by an older build, in a format this one \
                 cannot read; start this node on a fresh data directory",
                self.path.display()
            )));
        }
        let log = LogStore::open(
            shared.clone(),
            self.db.open_tree(tree_name(group, "log"))?,
            self.db.open_tree(tree_name(group, "meta"))?,
        )?;
        let snapshot_dir = self.path.join(SNAPSHOTS_DIR).join(group);
        let state_machine = StateMachineStore::open(shared, snapshot_dir, self.snapshot_bytes_max, initial)?;
        Ok(GroupStores { log, state_machine })
    }

    /// Seeds group `group`, which must have no data here at all (no log,
    /// no vote, no snapshot), with `machine` as a snapshot covering log
    /// index `index`, whose membership is `voters` (id → address): started
    /// on it, the node has the state at once, and a group whose voters are
    /// all seeded alike elects a leader and goes on from there (a restore
    /// from a backup). The snapshot's log id is of term 0, below any term
    /// the new group elects in. Returns that log id. Blocking.
    pub fn seed_group<SM: GroupMachine>(
        &self,
        group: &str,
        machine: SM,
        index: u64,
        voters: &std::collections::BTreeMap<crate::config::NodeId, String>,
    ) -> Result<LogId, StoreError> {
        validate_group_id(group)?;
        if voters.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "group {group}: a seeded group needs voters"
            )));
        }
        let _lease = GroupLease::take(group, &self.open_groups)?;
        let log = self.db.open_tree(tree_name(group, "log"))?;
        let meta = self.db.open_tree(tree_name(group, "meta"))?;
        let snapshots = snapshot::SnapshotDir::open(
            &self.path.join(SNAPSHOTS_DIR).join(group),
            self.snapshot_bytes_max,
        )?;
        if !log.is_empty() || !meta.is_empty() || snapshots.current().is_some() {
            return Err(StoreError::Corrupt(format!(
                "{}: group {group} already has data here; a restore needs an empty data directory",
                self.path.display()
            )));
        }
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), index);
        let membership = openraft::Membership::new(
            vec![voters.keys().copied().collect()],
            voters
                .iter()
                .map(|(id, addr)| (*id, crate::config::Node::new(addr.clone())))
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let stored = crate::config::StoredMembership::new(Some(log_id), membership);
        let snapshot_meta = crate::config::SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: stored.clone(),
            snapshot_id: format!("restored-{index}"),
        };
        let state = AppliedState {
            last_applied: Some(log_id),
            last_membership: stored,
            machine,
        };
        snapshots.write(snapshots.next_seq(), &snapshot_meta, &state)?;
        Ok(log_id)
    }

    /// Ids of the groups that have data in this database, in order.
    pub fn stored_groups(&self) -> Vec<String> {
        let suffix = format!("{TREE_NAME_SEPARATOR}meta");
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| {
                std::str::from_utf8(name)
                    .ok()?
                    .strip_suffix(&suffix)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Waits until every write made before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }
}

/// What both stores of a group share.
pub(crate) struct GroupShared {
    /// The group id, for error messages.
    pub(crate) group: String,
    /// The node's flusher (none on a simulated disk, which flushes itself).
    pub(crate) flusher: Option<Flusher>,
    /// How far the log may be purged: the state machine store publishes its
    /// newest durable snapshot and the snapshots being installed; the log
    /// store's purger reads it.
    pub(crate) purge_limit: tokio::sync::watch::Sender<PurgeLimit>,
    /// Held while either store is alive.
    _lease: GroupLease,
}

impl GroupShared {
    /// The node's flusher.
    pub(crate) fn flusher(&self) -> Result<&Flusher, StoreError> {
        self.flusher.as_ref().ok_or(StoreError::FlusherStopped)
    }

    /// A snapshot covering the log up to `last` is durable: purging may
    /// reach it even while an install runs.
    pub(crate) fn snapshot_durable(&self, last: Option<LogId>) {
        self.purge_limit.send_modify(|l| l.durable = l.durable.max(last));
    }
}

/// What bounds purging. openraft asks to purge the log up to a snapshot it
/// is about to install as soon as it has queued the install; until the
/// snapshot file is durable, a crash would restart from the older snapshot
/// with the log after it gone. So while an install runs, the log is purged
/// only up to the newest durable snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PurgeLimit {
    /// The last log id the newest durable snapshot covers.
    pub(crate) durable: Option<LogId>,
    /// Snapshots from a leader being installed now.
    pub(crate) installing: u32,
}

impl PurgeLimit {
    /// How far a purge up to `requested` may go now.
    pub(crate) fn allow(&self, requested: Option<LogId>) -> Option<LogId> {
        if self.installing == 0 {
            return requested;
        }
        requested.min(self.durable)
    }
}

/// Marks a group open until dropped.
struct GroupLease {
    group: String,
    open_groups: Arc<Mutex<BTreeSet<String>>>,
}

impl GroupLease {
    fn take(group: &str, open_groups: &Arc<Mutex<BTreeSet<String>>>) -> Result<GroupLease, StoreError> {
        // The set stays consistent even if a holder panicked: every critical
        // section is a single insert or remove.
        let mut open = open_groups.lock().unwrap_or_else(PoisonError::into_inner);
        if !open.insert(group.to_owned()) {
            return Err(StoreError::GroupOpen(group.to_owned()));
        }
        Ok(GroupLease {
            group: group.to_owned(),
            open_groups: open_groups.clone(),
        })
    }
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        let mut open = self.open_groups.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.group);
    }
}

/// Checks a group id: 1–[`GROUP_ID_BYTES_MAX`] bytes of `[A-Za-z0-9._:-]`.
/// The set leaves out the tree name separator `/`.
pub fn validate_group_id(group: &str) -> Result<(), StoreError> {
    let valid = !group.is_empty()
        && group.len() <= GROUP_ID_BYTES_MAX
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidGroupId(group.to_owned()))
    }
}

fn tree_name(group: &str, role: &str) -> String {
    format!("{group}{TREE_NAME_SEPARATOR}{role}")
}

/// bincode with a size limit, used for every stored value. Encoding and
/// decoding must use the same options: varint integers, little-endian.
fn codec(bytes_max: u64) -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_limit(bytes_max)
}

/// Encodes `value`, refusing to produce more than `bytes_max` bytes.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, bytes_max: u64) -> Result<Vec<u8>, StoreError> {
    use bincode::Options;
    Ok(codec(bytes_max).serialize(value)?)
}

/// Decodes a value of `bytes`, refusing input over `bytes_max` bytes.
///
/// bincode ignores its limit when reading from a slice (a slice cannot be
/// read past its end, and serde preallocates cautiously, so a corrupt
/// length prefix fails at the end of the slice rather than allocating
/// without bound); the length check here is the limit.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], bytes_max: u64) -> Result<T, StoreError> {
    use bincode::Options;
    if bytes.len() as u64 > bytes_max {
        return Err(StoreError::Corrupt(format!(
            "stored value of {} bytes is over its limit of {bytes_max}",
            bytes.len()
        )));
    }
    Ok(codec(bytes_max).deserialize(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group ids are bounded and cannot contain the tree name separator.
    #[test]
    fn group_ids_are_validated() {
        assert!(validate_group_id("us-east").is_ok());
        assert!(validate_group_id("ledger:us-east.1_a").is_ok());
        assert!(validate_group_id("").is_err());
        assert!(validate_group_id("a/b").is_err());
        assert!(validate_group_id("a b").is_err());
        assert!(validate_group_id(&"x".repeat(GROUP_ID_BYTES_MAX)).is_ok());
        assert!(validate_group_id(&"x".repeat(GROUP_ID_BYTES_MAX + 1)).is_err());
    }

    /// While an install runs, purging stops at the newest durable snapshot;
    /// otherwise it goes where openraft asks.
    #[test]
    fn purge_waits_for_an_installing_snapshot() {
        let id = |index| openraft::testing::log_id(1, 1, index);
        let idle = PurgeLimit {
            durable: Some(id(10)),
            installing: 0,
        };
        assert_eq!(idle.allow(Some(id(50))), Some(id(50)));
        let installing = PurgeLimit {
            durable: Some(id(10)),
            installing: 1,
        };
        assert_eq!(installing.allow(Some(id(50))), Some(id(10)));
        assert_eq!(installing.allow(Some(id(5))), Some(id(5)));
        let first = PurgeLimit {
            durable: None,
            installing: 1,
        };
        assert_eq!(first.allow(Some(id(50))), None, "no snapshot is durable yet");
    }

    /// The codec round-trips and enforces its size limit both ways.
    #[test]
    fn codec_enforces_limit() {
        let value = "x".repeat(100);
        let bytes = encode(&value, 1024).expect("fits");
        assert_eq!(decode::<String>(&bytes, 1024).expect("decodes"), value);
        assert!(encode(&value, 50).is_err());
        assert!(decode::<String>(&bytes, 50).is_err());
    }
}
