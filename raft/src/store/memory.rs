//! A simulated disk ([`MemoryDisk`]) and the log store over it
//! ([`MemoryLogStore`]), for the whole-cluster simulation: the same openraft
//! traits as [`super::LogStore`], the same durability contract, and a crash
//! that loses what was not synced.
//!
//! The disk keeps two images of every group's log: what is *written*
//! (every write is visible to reads at once, as in sled's page cache) and
//! what is *durable* (what a crash leaves). A flush (the simulated
//! `fdatasync`) makes everything written so far durable; the disk's
//! flusher task group-commits flushes as the real one does, after the
//! disk's fsync delay. [`MemoryDisk::crash`] keeps the durable image plus,
//! when writes may be torn, a prefix of the writes made since the last
//! flush (sled recovers its writes in order: a write survives only with
//! every write before it), and drops the rest.
//!
//! The contract the stores keep, as the sled store does: `append` calls back
//! only after a flush that covers its entries; `save_vote` and `truncate`
//! return only once flushed; `save_committed` and purges ride along with the
//! next flush. A full disk fails every flush (ENOSPC): openraft then stops
//! the group, as it would on a real node.
//!
//! Snapshots are not on this disk: the state machine store writes them as
//! files (synced and renamed before they count, so a crash keeps them), in
//! a directory the simulation gives each node.
//!
//! Faults ([`DiskFaults`]) are set by the simulation. With the injected
//! bug [`reservoir_tokens::inject::Bug::AckBeforeFsync`] an append is
//! acknowledged before its flush, to prove the simulation catches it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use tokio::sync::mpsc;

use super::{GroupShared, GroupStores, PurgeLimit, StateMachineStore, StoreError, decode, encode};
use crate::config::{
    ENTRY_BYTES_MAX, GroupConfig, GroupMachine, LogId, SNAPSHOT_BYTES_MAX, StorageError, Vote,
};
use crate::store::{FLUSH_QUEUE_MAX, READ_BYTES_MAX};

/// What the simulation does to a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// How long one flush takes.
    pub fsync_delay: Duration,
    /// Every flush fails (no space left on the device).
    pub full: bool,
    /// A crash keeps a prefix of the writes made since the last flush
    /// (otherwise none of them).
    pub torn_writes: bool,
}

/// One group's log as a disk image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Image {
    entries: BTreeMap<u64, Arc<Vec<u8>>>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

/// One write, as the disk records it until a flush.
#[derive(Clone, Debug)]
enum Write {
    Put(String, u64, Arc<Vec<u8>>),
    RemoveFrom(String, u64),
    Vote(String, Vote),
    Committed(String, Option<LogId>),
    Purge(String, LogId),
}

impl Write {
    fn apply(&self, images: &mut BTreeMap<String, Image>) {
        match self {
            Write::Put(g, index, bytes) => {
                images
                    .entry(g.clone())
                    .or_default()
                    .entries
                    .insert(*index, bytes.clone());
            }
            Write::RemoveFrom(g, first) => {
                let image = images.entry(g.clone()).or_default();
                let _ = image.entries.split_off(first);
            }
            Write::Vote(g, vote) => images.entry(g.clone()).or_default().vote = Some(*vote),
            Write::Committed(g, committed) => images.entry(g.clone()).or_default().committed = *committed,
            Write::Purge(g, upto) => {
                let image = images.entry(g.clone()).or_default();
                image.entries = image.entries.split_off(&(upto.index + 1));
                image.last_purged = image.last_purged.max(Some(*upto));
            }
        }
    }
}

/// What a flush answers.
type FlushReply = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

struct Disk {
    written: BTreeMap<String, Image>,
    durable: BTreeMap<String, Image>,
    /// Writes since the last flush, in order.
    pending: Vec<Write>,
    /// Bumped by every crash: stores of an earlier life are refused.
    life: u64,
    faults: DiskFaults,
    flusher: Option<mpsc::Sender<FlushReply>>,
}

/// A node's simulated disk; cheap to clone, and it outlives the node's
/// crashes.
#[derive(Clone)]
pub struct MemoryDisk {
    disk: Arc<Mutex<Disk>>,
}

impl Default for MemoryDisk {
    fn default() -> Self {
        MemoryDisk::new()
    }
}

impl MemoryDisk {
    /// An empty disk.
    pub fn new() -> MemoryDisk {
        MemoryDisk {
            disk: Arc::new(Mutex::new(Disk {
                written: BTreeMap::new(),
                durable: BTreeMap::new(),
                pending: Vec::new(),
                life: 0,
                faults: DiskFaults::default(),
                flusher: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The disk's faults now.
    pub fn faults(&self) -> DiskFaults {
        self.lock().faults
    }

    /// Sets the disk's faults.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// The node crashed: every store of its life is refused from now on;
    /// the disk keeps what was flushed, plus (with torn writes) the first
    /// `keep(n)` of the `n` writes made since (clamped to `n`).
    pub fn crash(&self, keep: impl FnOnce(usize) -> usize) {
        let mut disk = self.lock();
        disk.life += 1;
        disk.flusher = None;
        let pending = std::mem::take(&mut disk.pending);
        let kept = if disk.faults.torn_writes {
            keep(pending.len()).min(pending.len())
        } else {
            0
        };
        let mut durable = std::mem::take(&mut disk.durable);
        for write in &pending[..kept] {
            write.apply(&mut durable);
        }
        disk.written = durable.clone();
        disk.durable = durable;
    }

    /// The stores of group `group` for a node starting now: the log on
    /// this disk, the state machine from the newest snapshot in
    /// `snapshot_dir` (or `initial`). Must run inside the simulation's
    /// runtime (the disk's flusher is a task).
    pub fn open_group<SM: GroupMachine>(
        &self,
        group: &str,
        initial: SM,
        snapshot_dir: PathBuf,
    ) -> Result<GroupStores<SM, MemoryLogStore<SM>>, StoreError> {
        super::validate_group_id(group)?;
        let life = self.lock().life;
        let lease = super::GroupLease::take(group, &Arc::new(Mutex::new(BTreeSet::new())))?;
        let shared = Arc::new(GroupShared {
            group: group.to_owned(),
            flusher: None,
            purge_limit: tokio::sync::watch::Sender::new(PurgeLimit::default()),
            _lease: lease,
        });
        let log = MemoryLogStore {
            disk: self.clone(),
            group: group.to_owned(),
            life,
            shared: shared.clone(),
            requested: Arc::new(Mutex::new(None)),
            _machine: PhantomData,
        };
        // Purges held back by an install go on once it is done.
        let mut limit = shared.purge_limit.subscribe();
        let purger = log.clone();
        tokio::spawn(async move {
            while limit.changed().await.is_ok() {
                if purger.purge_allowed().is_err() {
                    return;
                }
            }
        });
        let state_machine = StateMachineStore::open(shared, snapshot_dir, SNAPSHOT_BYTES_MAX, initial)?;
        Ok(GroupStores { log, state_machine })
    }

    /// Queues a flush for a store of life `life`; `reply` is answered once
    /// it is done (or failed). Waits while [`FLUSH_QUEUE_MAX`] flushes are
    /// queued, as the sled store's flusher does.
    async fn flush(&self, life: u64, reply: FlushReply) -> Result<(), StoreError> {
        let tx = {
            let mut disk = self.lock();
            if disk.life != life {
                return Err(StoreError::FlusherStopped);
            }
            match &disk.flusher {
                Some(tx) => tx.clone(),
                None => {
                    let (tx, rx) = mpsc::channel(FLUSH_QUEUE_MAX);
                    tokio::spawn(run_flusher(self.clone(), life, rx));
                    disk.flusher = Some(tx.clone());
                    tx
                }
            }
        };
        tx.send(reply).await.map_err(|_| StoreError::FlusherStopped)
    }

    /// Flushes and waits for it.
    async fn flush_and_wait(&self, life: u64) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush(
            life,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .await?;
        match rx.await {
            Ok(result) => result.map_err(StoreError::Io),
            Err(_) => Err(StoreError::FlusherStopped),
        }
    }

    /// Records a write of a store of life `life`.
    fn write(&self, life: u64, write: Write) -> Result<(), StoreError> {
        let mut disk = self.lock();
        if disk.life != life {
            return Err(StoreError::FlusherStopped);
        }
        write.apply(&mut disk.written);
        disk.pending.push(write);
        Ok(())
    }

    fn read<R>(&self, group: &str, f: impl FnOnce(&Image) -> R) -> R {
        let disk = self.lock();
        match disk.written.get(group) {
            Some(image) => f(image),
            None => f(&Image::default()),
        }
    }

    /// What the disk holds of `group`'s log, for a trace: the first and
    /// last entry, the last purged and committed log ids, the vote.
    pub fn summary(&self, group: &str) -> String {
        self.read(group, |i| {
            format!(
                "log {:?}..={:?}, purged {:?}, committed {:?}, vote {:?}",
                i.entries.keys().next(),
                i.entries.keys().next_back(),
                i.last_purged.map(|l| l.index),
                i.committed.map(|l| l.index),
                i.vote.map(|v| v.leader_id().term)
            )
        })
    }

    /// True when the durable and written images are the same (nothing to
    /// lose); for tests.
    pub fn synced(&self) -> bool {
        let disk = self.lock();
        disk.pending.is_empty() && disk.written == disk.durable
    }
}

/// The disk's flusher for one life: takes a flush request, waits the fsync
/// delay, then makes every write so far durable and answers every request
/// queued by then (group commit).
async fn run_flusher(disk: MemoryDisk, life: u64, mut rx: mpsc::Receiver<FlushReply>) {
    while let Some(first) = rx.recv().await {
        let delay = disk.faults().fsync_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut replies = vec![first];
        while let Ok(reply) = rx.try_recv() {
            replies.push(reply);
        }
        let result = {
            let mut d = disk.lock();
            if d.life != life {
                Err(std::io::Error::other("the node crashed"))
            } else if d.faults.full {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                let pending = std::mem::take(&mut d.pending);
                let mut durable = std::mem::take(&mut d.durable);
                for write in &pending {
                    write.apply(&mut durable);
                }
                d.durable = durable;
                Ok(())
            }
        };
        for reply in replies {
            reply(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

/// The openraft log store of one group on a [`MemoryDisk`].
pub struct MemoryLogStore<SM> {
    disk: MemoryDisk,
    group: String,
    life: u64,
    shared: Arc<GroupShared>,
    /// The last purge openraft asked for; carried out as far as the purge
    /// limit allows, the rest when it allows more (as the sled store's
    /// background purger does).
    requested: Arc<Mutex<Option<LogId>>>,
    _machine: PhantomData<fn() -> SM>,
}

impl<SM> Clone for MemoryLogStore<SM> {
    fn clone(&self) -> Self {
        MemoryLogStore {
            disk: self.disk.clone(),
            group: self.group.clone(),
            life: self.life,
            shared: self.shared.clone(),
            requested: self.requested.clone(),
            _machine: PhantomData,
        }
    }
}

impl<SM: GroupMachine> MemoryLogStore<SM> {
    /// Purges as far toward the requested purge as the limit allows now.
    fn purge_allowed(&self) -> Result<(), StoreError> {
        let requested = *self.requested.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(allowed) = self.shared.purge_limit.borrow().allow(requested) else {
            return Ok(());
        };
        let purged = self.disk.read(&self.group, |image| image.last_purged);
        if purged < Some(allowed) {
            self.disk
                .write(self.life, Write::Purge(self.group.clone(), allowed))?;
        }
        Ok(())
    }

    fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        bytes_max: u64,
    ) -> Result<Vec<Entry<GroupConfig<SM>>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => match index.checked_add(1) {
                Some(index) => index,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let values: Vec<(u64, Arc<Vec<u8>>)> = self.disk.read(&self.group, |image| {
            let mut out = Vec::new();
            let mut total: u64 = 0;
            for (index, bytes) in image.entries.range(start..) {
                if !range.contains(index) {
                    break;
                }
                total = total.saturating_add(bytes.len() as u64);
                if !out.is_empty() && total > bytes_max {
                    break;
                }
                out.push((*index, bytes.clone()));
            }
            out
        });
        values
            .into_iter()
            .map(|(index, bytes)| {
                let entry: Entry<GroupConfig<SM>> = decode(&bytes, ENTRY_BYTES_MAX)?;
                if entry.log_id.index != index {
                    return Err(StoreError::Corrupt(format!(
                        "log entry at index {index} says index {}",
                        entry.log_id.index
                    )));
                }
                Ok(entry)
            })
            .collect()
    }
}

impl<SM: GroupMachine> RaftLogReader<GroupConfig<SM>> for MemoryLogStore<SM> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<GroupConfig<SM>>>, StorageError> {
        Ok(self
            .read_entries(range, u64::MAX)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<GroupConfig<SM>>>, StorageError> {
        Ok(self
            .read_entries(start..end, READ_BYTES_MAX)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl<SM: GroupMachine> RaftLogStorage<GroupConfig<SM>> for MemoryLogStore<SM> {
    type LogReader = MemoryLogStore<SM>;

    async fn get_log_state(&mut self) -> Result<LogState<GroupConfig<SM>>, StorageError> {
        let (last_purged_log_id, last) = self.disk.read(&self.group, |image| {
            (
                image.last_purged,
                image.entries.last_key_value().map(|(_, v)| v.clone()),
            )
        });
        let last_log_id = match last {
            Some(bytes) => {
                let entry: Entry<GroupConfig<SM>> =
                    decode(&bytes, ENTRY_BYTES_MAX).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.disk
            .write(self.life, Write::Vote(self.group.clone(), *vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.disk
            .flush_and_wait(self.life)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.disk.read(&self.group, |image| image.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.disk
            .write(self.life, Write::Committed(self.group.clone(), committed))
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.disk.read(&self.group, |image| image.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<GroupConfig<SM>>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<GroupConfig<SM>>> + Send,
        I::IntoIter: Send,
    {
        for entry in entries {
            let bytes = encode(&entry, ENTRY_BYTES_MAX)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            self.disk
                .write(
                    self.life,
                    Write::Put(self.group.clone(), entry.log_id.index, Arc::new(bytes)),
                )
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
        }
        if reservoir_tokens::inject::on(reservoir_tokens::inject::Bug::AckBeforeFsync) {
            // The injected bug: durable in name only until the flush below.
            callback.log_io_completed(Ok(()));
            self.disk
                .flush(self.life, Box::new(|_| {}))
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?;
        } else {
            self.disk
                .flush(
                    self.life,
                    Box::new(move |result| callback.log_io_completed(result)),
                )
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .write(self.life, Write::RemoveFrom(self.group.clone(), log_id.index))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.disk
            .flush_and_wait(self.life)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // As the sled store: while a snapshot install runs, purge only up to
        // the newest durable snapshot, and the rest once it allows more.
        {
            let mut requested = self.requested.lock().unwrap_or_else(PoisonError::into_inner);
            *requested = (*requested).max(Some(log_id));
        }
        self.purge_allowed().map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64) -> Vote {
        Vote::new(term, 1)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_crash_keeps_what_was_flushed_and_a_prefix_when_torn() {
        let disk = MemoryDisk::new();
        disk.write(0, Write::Vote("g".into(), vote(1))).unwrap();
        disk.flush_and_wait(0).await.unwrap();
        assert!(disk.synced());
        disk.write(0, Write::Vote("g".into(), vote(2))).unwrap();
        disk.write(0, Write::Vote("g".into(), vote(3))).unwrap();
        disk.crash(|n| n);
        assert_eq!(
            disk.read("g", |i| i.vote),
            Some(vote(1)),
            "not torn: unflushed writes are gone"
        );
        assert!(
            disk.write(0, Write::Vote("g".into(), vote(9))).is_err(),
            "an earlier life is refused"
        );

        disk.set_faults(DiskFaults {
            torn_writes: true,
            ..DiskFaults::default()
        });
        disk.write(1, Write::Vote("g".into(), vote(2))).unwrap();
        disk.write(1, Write::Vote("g".into(), vote(3))).unwrap();
        disk.crash(|_| 1);
        assert_eq!(
            disk.read("g", |i| i.vote),
            Some(vote(2)),
            "torn: a prefix survives"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_disk_fails_flushes() {
        let disk = MemoryDisk::new();
        disk.set_faults(DiskFaults {
            full: true,
            ..DiskFaults::default()
        });
        disk.write(0, Write::Vote("g".into(), vote(1))).unwrap();
        assert!(disk.flush_and_wait(0).await.is_err());
        disk.crash(|n| n);
        assert_eq!(disk.read("g", |i| i.vote), None);
    }
}
