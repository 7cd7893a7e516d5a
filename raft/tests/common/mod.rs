//! Helpers shared by the storage tests: a temp-dir node storage hosting a
//! `RegionState` group, and builders for log entries.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use openraft::{Entry, EntryPayload, Membership};
use reservoir_raft::{Batch, GroupConfig, GroupStores, LogId, NodeStorage, StorageOptions};
use reservoir_tokens::{RegionCommand, RegionOp, RegionState};

/// The type configuration under test.
pub type C = GroupConfig<RegionState>;

/// The group every test opens.
pub const GROUP: &str = "us-east";

/// Opens the node storage at `dir` and the test group in it.
pub fn open(dir: &Path) -> (NodeStorage, GroupStores<RegionState>) {
    let storage = NodeStorage::open(&StorageOptions::new(dir)).expect("open sled");
    let stores = storage
        .open_group(GROUP, RegionState::new(GROUP))
        .expect("open group");
    (storage, stores)
}

/// How long [`reopen`] keeps trying.
const REOPEN_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between [`reopen`] attempts.
const REOPEN_POLL: Duration = Duration::from_millis(10);

/// Opens the node storage at `dir` and the test group, waiting for an
/// earlier instance to be released: after `Raft::shutdown` openraft's
/// state machine worker and replication tasks drop their store handles a
/// little later, and sled holds a file lock until the last one is gone.
pub async fn reopen(dir: &Path) -> (NodeStorage, GroupStores<RegionState>) {
    reopen_capped(dir, reservoir_raft::SNAPSHOT_BYTES_MAX).await
}

/// [`reopen`], with snapshots this node builds capped at
/// `snapshot_bytes_max` bytes.
pub async fn reopen_capped(dir: &Path, snapshot_bytes_max: u64) -> (NodeStorage, GroupStores<RegionState>) {
    let started = Instant::now();
    let mut options = StorageOptions::new(dir);
    options.snapshot_bytes_max = snapshot_bytes_max;
    loop {
        let opened = NodeStorage::open(&options)
            .and_then(|storage| Ok((storage.open_group(GROUP, RegionState::new(GROUP))?, storage)));
        match opened {
            Ok((stores, storage)) => return (storage, stores),
            Err(_) if started.elapsed() < REOPEN_DEADLINE => tokio::time::sleep(REOPEN_POLL).await,
            Err(e) => panic!("could not reopen {}: {e}", dir.display()),
        }
    }
}

/// A log id of leader (term, node 1) at `index`.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

/// A command adding `delta` units of `sku` (standalone mode).
pub fn adjust(request_id: &str, sku: &str, delta: i64) -> RegionCommand {
    RegionCommand {
        now_ms: 1_000,
        op: RegionOp::AdjustStock {
            request_id: request_id.to_owned(),
            sku: sku.to_owned(),
            delta,
        },
    }
}

/// A normal entry carrying `commands`.
pub fn normal(term: u64, index: u64, commands: Vec<RegionCommand>) -> Entry<C> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch::new(commands)),
    }
}

/// A blank entry.
pub fn blank(term: u64, index: u64) -> Entry<C> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

/// A membership entry with voters `voters`.
pub fn membership(term: u64, index: u64, voters: &[u64]) -> Entry<C> {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    let nodes: BTreeMap<u64, openraft::BasicNode> = voters
        .iter()
        .map(|id| (*id, openraft::BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
        .collect();
    let membership = Membership::new(vec![voters], nodes);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(membership),
    }
}
