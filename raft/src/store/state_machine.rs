//! The state machine store: a `tokens` state machine in memory, its newest
//! snapshot in a file (see [`super::snapshot`]).
//!
//! `apply` does not touch the disk. What is applied is recovered after a
//! restart from the newest snapshot plus openraft's replay of the committed
//! log after it: on open, the state starts from the snapshot and reports the
//! snapshot's last log id as applied, so openraft replays from there.
//!
//! Snapshots never stop applying. openraft asks for a builder between two
//! applies; the builder takes a clone of the state, which is O(1) because
//! the `tokens` states live in persistent maps that share structure, and
//! writes it out on a thread of its own, at the lowest CPU priority
//! (`SCHED_BATCH`, nice 19), while applying goes on.
//! Installing a snapshot from a leader decodes it off the async executor
//! and swaps it in under the lock in O(1); the old state is dropped off the
//! executor too.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::snapshot::{self, SnapshotDir, SnapshotFile};
use super::{GroupShared, StoreError};
use crate::config::{GroupConfig, GroupMachine, LogId, SnapshotMeta, StorageError, StoredMembership};

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

/// What a group's snapshots have cost on this node: the figures `/status`
/// shows, in the client crate's schema.
pub use reservoir_client::SnapshotStats;

/// A shared, cheap handle to a group's [`SnapshotStats`], and to the record
/// of its failed builds.
#[derive(Clone, Default)]
pub struct SnapshotStatsHandle(Arc<Mutex<StatsRecord>>);

#[derive(Default)]
struct StatsRecord {
    stats: SnapshotStats,
    /// Builds that failed since the store opened.
    failures: u64,
    /// Builds that failed since the last one that succeeded.
    failures_in_a_row: u32,
    /// When the last build failed.
    failed_at: Option<Instant>,
}

/// How long a group waits before it builds again after a failed build; each
/// further failure in a row doubles it, up to
/// [`SNAPSHOT_RETRY_AFTER_FAILURE_MAX`]. A build that failed (over its size
/// cap, a full disk) usually fails again, and each try costs a pass over the
/// whole state.
pub const SNAPSHOT_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// Longest wait between builds after failures in a row.
pub const SNAPSHOT_RETRY_AFTER_FAILURE_MAX: Duration = Duration::from_secs(600);

impl SnapshotStatsHandle {
    /// The figures now.
    pub fn get(&self) -> SnapshotStats {
        self.lock().stats.clone()
    }

    /// Builds that failed since the store opened.
    pub fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// When the next build may start after failed ones (`None` when the
    /// last build succeeded, or none failed).
    pub fn retry_at(&self) -> Option<Instant> {
        let record = self.lock();
        let failed_at = record.failed_at?;
        let doublings = record.failures_in_a_row.saturating_sub(1).min(16);
        let wait = SNAPSHOT_RETRY_AFTER_FAILURE
            .saturating_mul(1 << doublings)
            .min(SNAPSHOT_RETRY_AFTER_FAILURE_MAX);
        Some(failed_at + wait)
    }

    fn update(&self, f: impl FnOnce(&mut SnapshotStats)) {
        f(&mut self.lock().stats);
    }

    fn failed(&self) {
        let mut record = self.lock();
        record.failures += 1;
        record.failures_in_a_row = record.failures_in_a_row.saturating_add(1);
        record.failed_at = Some(Instant::now());
    }

    fn succeeded(&self) {
        let mut record = self.lock();
        record.failures_in_a_row = 0;
        record.failed_at = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsRecord> {
        // Every critical section is a few assignments.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks a snapshot from a leader as being installed, for as long as the
/// guard it hands out lives: meanwhile the log is purged no further than the
/// newest durable snapshot (see `store::PurgeLimit`). The network layer
/// takes a guard around each install.
#[derive(Clone)]
pub struct InstallMarker {
    shared: Arc<GroupShared>,
}

/// Ends the install mark when dropped.
pub struct InstallGuard {
    shared: Arc<GroupShared>,
}

impl InstallMarker {
    /// Marks an install as running until the guard is dropped.
    pub fn begin(&self) -> InstallGuard {
        self.shared.purge_limit.send_modify(|l| l.installing += 1);
        InstallGuard {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for InstallGuard {
    fn drop(&mut self) {
        self.shared
            .purge_limit
            .send_modify(|l| l.installing = l.installing.saturating_sub(1));
    }
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
    snapshots: SnapshotDir,
    stats: SnapshotStatsHandle,
}

impl<SM: GroupMachine> StateMachineStore<SM> {
    /// Opens the store, loading the newest snapshot if there is one.
    /// Blocking: reads and decodes the whole snapshot.
    pub(crate) fn open(
        shared: Arc<GroupShared>,
        snapshot_dir: PathBuf,
        snapshot_bytes_max: u64,
        initial: SM,
    ) -> Result<StateMachineStore<SM>, StoreError> {
        let snapshots = SnapshotDir::open(&snapshot_dir, snapshot_bytes_max)?;
        let stats = SnapshotStatsHandle::default();
        let state = match snapshots.current() {
            Some((meta, file)) => {
                let (_, state) = snapshot::read::<SM>(&file)?;
                check_meta(&meta, &state)?;
                shared.snapshot_durable(meta.last_log_id);
                stats.update(|s| {
                    s.last_index = meta.last_log_id.map(|id| id.index);
                    s.last_bytes = file.bytes();
                });
                state
            }
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
            stats,
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

    /// The group's snapshot figures.
    pub fn stats(&self) -> SnapshotStatsHandle {
        self.stats.clone()
    }

    /// Where snapshots sent by a leader are received.
    pub fn incoming_dir(&self) -> PathBuf {
        self.snapshots.incoming_dir()
    }

    /// The handle the network layer marks installs with.
    pub fn install_marker(&self) -> InstallMarker {
        InstallMarker {
            shared: self.shared.clone(),
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
        let started = Instant::now();
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
        drop(state);
        metrics::histogram!("reservoir_raft_apply_seconds", "group" => self.shared.group.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A clone taken between applies, O(1) for the persistent `tokens`
        // states: the builder writes it out on its own thread while applying
        // goes on. A poisoned lock becomes the build's error.
        let started = Instant::now();
        let state = self.state.read().ok().map(|state| state.clone());
        let pause_us = started.elapsed().as_micros() as u64;
        SnapshotBuilder {
            shared: self.shared.clone(),
            state,
            snapshots: self.snapshots.clone(),
            stats: self.stats.clone(),
            pause_us,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        // The node's network receives snapshots itself (in chunks, into the
        // incoming directory); this is for callers of openraft's own API,
        // which replace the handle with the snapshot they got.
        let file = self
            .snapshots
            .empty_file()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        let snapshots = self.snapshots.clone();
        let meta_owned = meta.clone();
        // Checking and decoding a large snapshot is long, blocking work.
        let decoded = crate::runtime::blocking(move || -> Result<AppliedState<SM>, StoreError> {
            let (file_meta, state) = snapshot::read::<SM>(&snapshot)?;
            if file_meta != meta_owned {
                return Err(StoreError::Corrupt(format!(
                    "snapshot file says {file_meta:?}, its sender {meta_owned:?}"
                )));
            }
            check_meta(&meta_owned, &state)?;
            // Persist first: a crash after this point restarts from the new
            // snapshot, before it from the old one; both are consistent.
            snapshots.install(&meta_owned, &snapshot)?;
            Ok(state)
        })
        .await
        .map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()))
        })?
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let old = {
            let mut current = self
                .state
                .write()
                .map_err(|_| StorageIOError::write_state_machine(&StoreError::Poisoned))?;
            std::mem::replace(&mut *current, decoded)
        };
        // Freeing a large state takes a while; not on the executor.
        if crate::runtime::simulated() {
            drop(old);
        } else {
            tokio::task::spawn_blocking(move || drop(old));
        }
        self.shared.snapshot_durable(meta.last_log_id);
        let bytes = self.snapshots.current().map_or(0, |(_, f)| f.bytes());
        self.stats.update(|s| {
            s.installed += 1;
            s.last_index = meta.last_log_id.map(|id| id.index);
            s.last_bytes = bytes;
        });
        metrics::counter!("reservoir_raft_snapshots_installed_total", "group" => self.shared.group.clone())
            .increment(1);
        metrics::histogram!("reservoir_raft_snapshot_install_seconds", "group" => self.shared.group.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<GroupConfig<SM>>>, StorageError> {
        Ok(self.snapshots.current().map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Builds a snapshot from a clone of the state taken when openraft asked
/// for the builder.
pub struct SnapshotBuilder<SM> {
    shared: Arc<GroupShared>,
    /// `None` if the state lock was poisoned.
    state: Option<AppliedState<SM>>,
    snapshots: SnapshotDir,
    stats: SnapshotStatsHandle,
    /// How long taking the clone held up applying.
    pause_us: u64,
}

impl<SM: GroupMachine> RaftSnapshotBuilder<GroupConfig<SM>> for SnapshotBuilder<SM> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig<SM>>, StorageError> {
        let started = Instant::now();
        let state = self
            .state
            .take()
            .ok_or_else(|| StorageIOError::read_state_machine(&StoreError::Poisoned))?;
        let seq = self.snapshots.next_seq();
        let snapshot_id = match state.last_applied {
            Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id, log_id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
            snapshot_id,
        };
        self.stats.update(|s| s.building = true);
        // Encoding a large state and writing it out is long, blocking work:
        // a thread of its own, at the lowest priority (see
        // `lower_thread_priority`).
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let snapshots = self.snapshots.clone();
        let thread_meta = meta.clone();
        let write = move || {
            let written = snapshots.write(seq, &thread_meta, &state);
            // The state clone is freed here too, off the executor.
            drop(state);
            let _ = done_tx.send(written);
        };
        // In a simulation the build runs inline: a thread would finish at a
        // moment no seed controls.
        let spawned = if crate::runtime::simulated() {
            write();
            Ok(())
        } else {
            std::thread::Builder::new()
                .name(SNAPSHOT_THREAD_NAME.to_owned())
                .spawn(move || {
                    lower_thread_priority();
                    write();
                })
                .map(drop)
        };
        let written = match spawned {
            Ok(_) => done_rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Corrupt("the snapshot thread died".into()))),
            Err(e) => Err(StoreError::Io(e)),
        };
        self.stats.update(|s| s.building = false);
        let file = match written {
            Ok(file) => file,
            Err(e) => return self.skipped(&meta, e),
        };
        self.stats.succeeded();
        self.shared.snapshot_durable(meta.last_log_id);
        let build_ms = started.elapsed().as_millis() as u64;
        let pause_us = self.pause_us;
        self.stats.update(|s| {
            s.built += 1;
            s.last_index = meta.last_log_id.map(|id| id.index);
            s.last_build_ms = build_ms;
            s.last_pause_us = pause_us;
            s.last_bytes = file.bytes();
        });
        metrics::counter!("reservoir_raft_snapshots_built_total", "group" => self.shared.group.clone())
            .increment(1);
        metrics::histogram!("reservoir_raft_snapshot_build_seconds", "group" => self.shared.group.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("reservoir_raft_snapshot_bytes", "group" => self.shared.group.clone())
            .set(file.bytes() as f64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl<SM: GroupMachine> SnapshotBuilder<SM> {
    /// A build that failed (over its size cap, a full disk, an I/O error):
    /// logged, counted, and answered with the newest snapshot this node
    /// already has, or, with none, an empty one that covers nothing.
    ///
    /// openraft 0.9 stops the whole group on any error from
    /// `build_snapshot`: `RaftCore::handle_notify` unwraps the state
    /// machine's result with `?`, which turns the `StorageError` into a
    /// `Fatal` that ends the core's main loop. A snapshot it already has, on the other hand, it takes as
    /// nothing new (`Engine::finish_building_snapshot`: `update_snapshot`
    /// refuses a snapshot not past its own, and nothing is purged), and it
    /// uses only the metadata of what a build returns. So the group keeps
    /// its previous snapshot and all the log after it, and goes on
    /// committing; the schedule tries again later (see
    /// [`SnapshotStatsHandle::retry_at`]).
    // openraft's own error type, as `build_snapshot` returns it.
    #[allow(clippy::result_large_err)]
    fn skipped(
        &self,
        meta: &SnapshotMeta,
        error: StoreError,
    ) -> Result<Snapshot<GroupConfig<SM>>, StorageError> {
        tracing::warn!(
            group = %self.shared.group,
            up_to = ?meta.last_log_id.map(|id| id.index),
            %error,
            "snapshot not built, keeping the previous one"
        );
        metrics::counter!("reservoir_raft_snapshot_failures_total", "group" => self.shared.group.clone())
            .increment(1);
        self.stats.failed();
        if let Some((meta, file)) = self.snapshots.current() {
            return Ok(Snapshot {
                meta,
                snapshot: Box::new(file),
            });
        }
        let file = self
            .snapshots
            .empty_file()
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta: SnapshotMeta::default(),
            snapshot: Box::new(file),
        })
    }
}

/// Name of the thread that writes a snapshot, as shown by `top -H`.
const SNAPSHOT_THREAD_NAME: &str = "reservoir-snapshot";
/// The nice value of that thread: the lowest priority that still always
/// gets some CPU.
const SNAPSHOT_THREAD_NICE: i32 = 19;

/// Lowers the calling thread to Linux's `SCHED_BATCH` class at nice 19: it
/// yields the CPU to every thread that answers clients or runs Raft, is
/// never woken ahead of them, and still makes progress on a saturated
/// machine (`SCHED_IDLE` would not: a build could then stall for minutes,
/// and with it log purging). Best effort: a refusal leaves it as it was.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn lower_thread_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialized sched_param that outlives the
    // call; pid 0 names the calling thread. No memory is shared.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    // SAFETY: setpriority has no memory-safety preconditions; with
    // PRIO_PROCESS and 0 it applies to the calling thread on Linux.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SNAPSHOT_THREAD_NICE) };
}

/// Checks a decoded snapshot's state against its metadata.
fn check_meta<SM>(meta: &SnapshotMeta, state: &AppliedState<SM>) -> Result<(), StoreError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failed build the next waits 10 s, doubling with each failure
    /// in a row up to its cap; a success clears it.
    #[test]
    fn failed_builds_back_off() {
        let stats = SnapshotStatsHandle::default();
        assert_eq!(stats.retry_at(), None);
        let waits: Vec<Duration> = (0..10)
            .map(|_| {
                stats.failed();
                let failed_at = stats.lock().failed_at.expect("recorded");
                stats.retry_at().expect("a retry time") - failed_at
            })
            .collect();
        assert_eq!(waits[0], SNAPSHOT_RETRY_AFTER_FAILURE);
        assert_eq!(waits[1], 2 * SNAPSHOT_RETRY_AFTER_FAILURE);
        assert_eq!(waits[9], SNAPSHOT_RETRY_AFTER_FAILURE_MAX);
        assert_eq!(stats.failures(), 10);
        stats.succeeded();
        assert_eq!(stats.retry_at(), None);
        assert_eq!(stats.failures(), 10, "failures are counted for good");
    }
}
