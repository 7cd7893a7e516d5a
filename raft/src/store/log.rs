//! The log store: log entries and the vote of one group, on sled.
//!
//! Durability follows openraft's `stores/rocksstore-v2`: write, flush, then
//! tell openraft. `save_vote` and `truncate` return after a flush;
//! `append` writes its entries (readable at once), queues the callback with
//! the flusher and returns; the flusher calls back after a flush that
//! covers the entries. `save_committed` and `purge` do not flush: losing
//! either in a crash is safe (openraft learns the commit index again, and
//! purging is redone); they reach the disk with the next flush.
//!
//! A flush is on the disk's stable storage, not only in the page cache: the
//! workspace builds sled 0.34.7 patched (`vendor/sled/PATCHES.md`) to
//! `fdatasync` its data file (`db`) where it used `sync_file_range`, so
//! every flush ends with an `fdatasync` that also flushes the device's
//! write cache. An entry over sled's blob threshold (a logged item of
//! over 131,052 bytes: an encoded entry of about 128 KiB) goes to its own file under `blobs/`, which sled `fdatasync`s, and
//! `fsync`s `blobs/`, when `append` writes it, before the flush that
//! acknowledges it. `raft/tests/fsync.rs` checks each of these syscalls
//! under strace.
//!
//! `purge` records the purged id and returns; a background task deletes the
//! entries up to it [`PURGE_BATCH_ENTRIES`] at a time, a step every
//! [`PURGE_PAUSE`]. While a snapshot from a leader is being installed the
//! purge goes no further than the newest durable snapshot (see
//! [`super::PurgeLimit`]): the rest is recorded and deleted by the
//! background task once the install has made its snapshot durable.
//! openraft calls `purge` from its core, after each snapshot, for up to a
//! snapshot interval's worth of entries (100,000 by default): deleting them
//! all in one sled batch there held up appends and commits. Entries at or
//! below the purged id are never read again, so leaving them a moment
//! longer (or, after a crash, until the next purge) is harmless.
//!
//! openraft calls the write methods from one task, one at a time, so writes
//! reach sled in openraft's order, and every flush persists every earlier
//! write: vote and log writes are never reordered on disk.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{GroupShared, StoreError, decode, encode};
use crate::config::{ENTRY_BYTES_MAX, GroupConfig, GroupMachine, LogId, StorageError, Vote};

/// Most encoded bytes [`LogStore`] returns from one
/// `limited_get_log_entries` call (always at least one entry). Replication
/// sends what one call returns in one RPC, and tonic refuses messages over
/// 4 MiB by default; this leaves room for the envelope.
pub const READ_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// Most log entries one background purge step deletes.
pub const PURGE_BATCH_ENTRIES: usize = 1_000;
/// Pause between two purge steps: each step's removals ride with the next
/// flush of the log, so a step at a time keeps those flushes small (100,000
/// removals at once made the next flush, and every commit waiting on it,
/// slow).
pub const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Largest encoded meta value (a vote or a log id: a few dozen bytes).
const META_BYTES_MAX: u64 = 4 * 1024;

/// Meta key of the vote.
const KEY_VOTE: &[u8] = b"vote";
/// Meta key of the last committed log id.
const KEY_COMMITTED: &[u8] = b"committed";
/// Meta key of the last purged log id.
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The openraft log store of one group (and, cloned, its log reader).
pub struct LogStore<SM> {
    shared: Arc<GroupShared>,
    /// Entries by big-endian index.
    log: sled::Tree,
    /// Vote, committed and last purged log ids.
    meta: sled::Tree,
    /// The index up to which entries are purged (recorded; the background
    /// purger deletes them, readers skip any not deleted yet).
    purged_tx: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// The last purge openraft asked for. The purger starts with the first.
    requested_tx: Arc<tokio::sync::watch::Sender<Option<LogId>>>,
    _machine: PhantomData<fn() -> SM>,
}

// By hand: a derived `Clone` would require `SM: Clone` for the marker.
impl<SM> Clone for LogStore<SM> {
    fn clone(&self) -> Self {
        LogStore {
            shared: self.shared.clone(),
            log: self.log.clone(),
            meta: self.meta.clone(),
            purged_tx: self.purged_tx.clone(),
            requested_tx: self.requested_tx.clone(),
            _machine: PhantomData,
        }
    }
}

impl<SM: GroupMachine> LogStore<SM> {
    pub(crate) fn open(
        shared: Arc<GroupShared>,
        log: sled::Tree,
        meta: sled::Tree,
    ) -> Result<LogStore<SM>, StoreError> {
        let purged: Option<LogId> = read_meta(&meta, KEY_LAST_PURGED)?;
        Ok(LogStore {
            shared,
            log,
            meta,
            purged_tx: Arc::new(tokio::sync::watch::Sender::new(purged.map(|id| id.index))),
            requested_tx: Arc::new(tokio::sync::watch::Sender::new(purged)),
            _machine: PhantomData,
        })
    }

    /// The last purged index, if any.
    fn purged(&self) -> Option<u64> {
        *self.purged_tx.borrow()
    }

    /// Records the purge up to `upto` at once if nothing holds it back (so
    /// `get_log_state` tells it right after `purge`), and has the background
    /// purger delete the entries (and record the purge later, if an install
    /// held it back), starting the purger on the first call.
    fn purge_in_background(&self, upto: LogId) -> Result<(), StoreError> {
        let allowed = self.shared.purge_limit.borrow().allow(Some(upto));
        if let Some(allowed) = allowed {
            record_purged(&self.meta, &self.purged_tx, allowed)?;
        }
        if self.requested_tx.receiver_count() == 0 {
            let purger = Purger {
                log: self.log.clone(),
                meta: self.meta.clone(),
                purged_tx: self.purged_tx.clone(),
            };
            tokio::spawn(purger.run(self.requested_tx.subscribe(), self.shared.purge_limit.subscribe()));
        }
        // Always wake the purger: after a restart it has leftovers below an
        // index it was never told about.
        self.requested_tx.send_modify(|r| *r = (*r).max(Some(upto)));
        Ok(())
    }

    /// The group this store belongs to.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        read_meta(&self.meta, key)
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        write_meta(&self.meta, key, value)
    }

    /// Entries with index in `range`, in order, stopping early once more than
    /// `bytes_max` encoded bytes are collected (at least one entry is
    /// returned if there is any).
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
        // Entries at or below the purged index may still be on disk (the
        // purger deletes them in the background); they are gone to readers.
        let start = match self.purged() {
            Some(purged) => start.max(purged.saturating_add(1)),
            None => start,
        };
        let mut entries = Vec::new();
        let mut bytes_total: u64 = 0;
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            bytes_total = bytes_total.saturating_add(value.len() as u64);
            if !entries.is_empty() && bytes_total > bytes_max {
                break;
            }
            entries.push(self.decode_entry(index, &value)?);
        }
        Ok(entries)
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<Entry<GroupConfig<SM>>, StoreError> {
        let entry: Entry<GroupConfig<SM>> = decode(bytes, ENTRY_BYTES_MAX)?;
        if entry.log_id.index != index {
            return Err(StoreError::Corrupt(format!(
                "group {}: entry under key {index} has log id {}",
                self.shared.group, entry.log_id
            )));
        }
        Ok(entry)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.log.last()? {
            Some((key, value)) => Ok(Some(self.decode_entry(key_index(&key)?, &value)?.log_id)),
            None => Ok(None),
        }
    }

    /// Removes every entry with index >= `first`, atomically.
    fn remove_from(&self, first: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(first)..).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }
}

fn read_meta<T: DeserializeOwned>(meta: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    match meta.get(key)? {
        Some(bytes) => Ok(Some(decode(&bytes, META_BYTES_MAX)?)),
        None => Ok(None),
    }
}

fn write_meta<T: Serialize>(meta: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    meta.insert(key, encode(value, META_BYTES_MAX)?)?;
    Ok(())
}

/// Records the log as purged up to `upto` (the meta record first, then the
/// readers' bound), unless it already is as far. Writes under the bound's
/// lock, so `purge` and the purger cannot record out of order.
fn record_purged(
    meta: &sled::Tree,
    purged_tx: &tokio::sync::watch::Sender<Option<u64>>,
    upto: LogId,
) -> Result<(), StoreError> {
    let mut result = Ok(());
    purged_tx.send_if_modified(|purged| {
        if Some(upto.index) <= *purged {
            return false;
        }
        match write_meta(meta, KEY_LAST_PURGED, &upto) {
            Ok(()) => {
                *purged = Some(upto.index);
                true
            }
            Err(e) => {
                result = Err(e);
                false
            }
        }
    });
    result
}

/// The background purger of one group's log.
struct Purger {
    log: sled::Tree,
    meta: sled::Tree,
    purged_tx: Arc<tokio::sync::watch::Sender<Option<u64>>>,
}

impl Purger {
    /// Purges what openraft asked for, as far as [`super::PurgeLimit`]
    /// allows, until the store (every sender) is gone: records the purged
    /// id first (sled persists writes in order, so after a crash the
    /// removals never outlive the record of them and `get_log_state` never
    /// sees a hole at the front), then deletes [`PURGE_BATCH_ENTRIES`]
    /// entries at a time on a blocking thread, pausing between batches.
    async fn run(
        self,
        mut requested_rx: tokio::sync::watch::Receiver<Option<LogId>>,
        mut limit_rx: tokio::sync::watch::Receiver<super::PurgeLimit>,
    ) {
        loop {
            let requested = *requested_rx.borrow_and_update();
            let allowed = limit_rx.borrow_and_update().allow(requested);
            if let Some(upto) = allowed
                && let Err(e) = record_purged(&self.meta, &self.purged_tx, upto)
            {
                // Left for the next purge; nothing more is deleted.
                tracing::warn!("recording the log purged up to {upto}: {e}");
            }
            let purged = *self.purged_tx.borrow();
            if let Some(purged) = purged {
                self.delete_up_to(purged).await;
            }
            tokio::select! {
                changed = requested_rx.changed() => if changed.is_err() { return },
                changed = limit_rx.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Deletes every entry up to `upto`, a batch at a time.
    async fn delete_up_to(&self, upto: u64) {
        loop {
            let tree = self.log.clone();
            let step = tokio::task::spawn_blocking(move || remove_some_up_to(&tree, upto)).await;
            match step {
                Ok(Ok(true)) => tokio::time::sleep(PURGE_PAUSE).await,
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    // Left for the next purge; the entries are never read.
                    tracing::warn!("purging the log up to {upto}: {e}");
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// Removes at most [`PURGE_BATCH_ENTRIES`] entries with index <= `last`,
/// oldest first; true if more remain. One removal at a time, not a sled
/// batch: sled recovers writes in order, so a crash keeps the oldest
/// removals and undoes newer ones, which leaves no hole (and everything
/// here is at or below the purged id, recorded first and never read); a
/// batch would make sled write and sync its IO buffer twice more per step.
fn remove_some_up_to(log: &sled::Tree, last: u64) -> Result<bool, StoreError> {
    let keys: Vec<sled::IVec> = log
        .range(..=index_key(last))
        .keys()
        .take(PURGE_BATCH_ENTRIES + 1)
        .collect::<Result<_, _>>()?;
    let more = keys.len() > PURGE_BATCH_ENTRIES;
    for key in keys.iter().take(PURGE_BATCH_ENTRIES) {
        log.remove(key)?;
    }
    Ok(more)
}

impl<SM: GroupMachine> RaftLogReader<GroupConfig<SM>> for LogStore<SM> {
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

impl<SM: GroupMachine> RaftLogStorage<GroupConfig<SM>> for LogStore<SM> {
    type LogReader = LogStore<SM>;

    async fn get_log_state(&mut self) -> Result<LogState<GroupConfig<SM>>, StorageError> {
        let last_purged_log_id: Option<LogId> = self
            .read_meta(KEY_LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = self.last_log_id().map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState {
            last_purged_log_id,
            // With every entry purged, the last log id is the last purged one
            // (entries below it may still wait for the background purger).
            last_log_id: last_log_id.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        // A vote must be on disk before openraft acts on it (grants it, or
        // campaigns with it).
        self.shared
            .flusher()
            .map_err(|e| StorageIOError::write_vote(&e))?
            .flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self
            .read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: it rides along with the next flush. If a crash loses
        // it, openraft re-applies less on restart and learns the rest from
        // the leader.
        self.write_meta(KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta(KEY_COMMITTED)
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(committed.flatten())
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
        // One insert per entry, in index order, not one sled batch: sled
        // recovers its writes in order (a write survives a crash only with
        // every write before it: sled's `pagecache/segment.rs`), so a crash keeps a prefix of this append
        // and cannot leave a hole; openraft has not been told it is durable,
        // so losing the rest is fine. A sled batch would also be atomic, but
        // each one makes sled write its IO buffer out twice (it rolls the
        // buffer around its batch manifest), and with sled's syncs real that
        // is two more `fdatasync`s per append beside the flush's own.
        for entry in entries {
            let bytes = encode(&entry, ENTRY_BYTES_MAX)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            self.log
                .insert(index_key(entry.log_id.index), bytes)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
        }
        // The entries are readable now. They are durable only once the
        // flusher has flushed; it calls back then, possibly after we return.
        self.shared
            .flusher()
            .map_err(|e| StorageIOError::write_logs(&e))?
            .submit(Box::new(move |result| callback.log_io_completed(result)))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable before returning, as rocksstore-v2 does: conflicting
        // entries must not come back after a crash once openraft moves on.
        self.shared
            .flusher()
            .map_err(|e| StorageIOError::write_logs(&e))?
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_in_background(log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// The sled key of log index `index`: big-endian, so keys sort by index.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("log key of {} bytes, want 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}
