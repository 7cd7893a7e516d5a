//! What the sled stores keep across closing and reopening the database, and
//! across a SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StoredMembership, Vote};
use reservoir_raft::{NodeStorage, StorageOptions, StoreError};
use reservoir_tokens::{RegionApplied, RegionState};
use tempfile::TempDir;

use common::{adjust, blank, log_id, membership, normal};

/// Entries, vote and committed log id written before closing are read back
/// after reopening the database at the same path.
#[tokio::test]
async fn appended_entries_and_vote_survive_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let entries = vec![
        membership(1, 1, &[1]),
        blank(1, 2),
        normal(1, 3, vec![adjust("r1", "sku-a", 10)]),
        normal(2, 4, vec![adjust("r2", "sku-b", 5), adjust("r3", "sku-a", -2)]),
    ];
    let vote = Vote::new_committed(2, 1);
    {
        let (_storage, mut stores) = common::open(dir.path());
        stores.log.save_vote(&vote).await.expect("save vote");
        stores.log.blocking_append(entries.clone()).await.expect("append");
        stores
            .log
            .save_committed(Some(log_id(2, 4)))
            .await
            .expect("save committed");
    }

    let (_storage, mut stores) = common::reopen(dir.path()).await;
    assert_eq!(stores.log.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        stores.log.read_committed().await.expect("read committed"),
        Some(log_id(2, 4))
    );
    let state = stores.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    let read = stores.log.try_get_log_entries(0..).await.expect("read entries");
    assert_eq!(read, entries);
}

/// Truncation and purging persist, and leave the log without holes.
#[tokio::test]
async fn truncate_and_purge_survive_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (_storage, mut stores) = common::open(dir.path());
        let entries: Vec<_> = (1..=10).map(|index| blank(1, index)).collect();
        stores.log.blocking_append(entries).await.expect("append");
        stores.log.purge(log_id(1, 3)).await.expect("purge");
        stores.log.truncate(log_id(1, 8)).await.expect("truncate");
        stores
            .log
            .blocking_append([blank(2, 8)])
            .await
            .expect("append after truncate");
    }

    let (_storage, mut stores) = common::reopen(dir.path()).await;
    let state = stores.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    let read = stores.log.try_get_log_entries(..).await.expect("read entries");
    let ids: Vec<_> = read.iter().map(|entry| entry.log_id).collect();
    assert_eq!(
        ids,
        vec![
            log_id(1, 4),
            log_id(1, 5),
            log_id(1, 6),
            log_id(1, 7),
            log_id(2, 8)
        ]
    );
}

/// Purging every entry leaves the last purged id as the last log id.
#[tokio::test]
async fn purge_all_reports_last_purged_as_last() {
    let dir = TempDir::new().expect("temp dir");
    let (_storage, mut stores) = common::open(dir.path());
    stores
        .log
        .blocking_append((1..=3).map(|index| blank(1, index)))
        .await
        .expect("append");
    stores.log.purge(log_id(1, 5)).await.expect("purge past the end");
    let state = stores.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    assert!(stores.log.try_get_log_entries(..).await.expect("read").is_empty());
}

/// A limited read stops at the byte budget but always returns one entry.
#[tokio::test]
async fn limited_read_returns_at_least_one_entry() {
    let dir = TempDir::new().expect("temp dir");
    let (_storage, mut stores) = common::open(dir.path());
    // Each command carries a long request id, so a few entries exceed the
    // budget.
    let request_id = "r".repeat(100);
    let commands_per_entry = (reservoir_raft::store::READ_BYTES_MAX / 100) as usize;
    let big = |index| {
        normal(
            1,
            index,
            vec![adjust(&request_id, "sku-a", 1); commands_per_entry],
        )
    };
    stores
        .log
        .blocking_append((1..=3).map(big))
        .await
        .expect("append");
    let read = stores.log.limited_get_log_entries(1, 4).await.expect("read");
    assert_eq!(read.len(), 1, "one entry is already over the budget");
    assert_eq!(read[0].log_id, log_id(1, 1));
    let all = stores.log.try_get_log_entries(1..4).await.expect("read");
    assert_eq!(all.len(), 3);
}

/// `apply` returns one outcome per command, in order, and nothing for blank
/// and membership entries; the newest snapshot is restored into memory on
/// reopen, with its last applied log id, so openraft replays after it.
#[tokio::test]
async fn snapshot_is_restored_into_memory_on_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let built_meta;
    let state_at_snapshot;
    {
        let (_storage, mut stores) = common::open(dir.path());
        let sm = &mut stores.state_machine;
        let responses = sm
            .apply([
                membership(1, 1, &[1]),
                blank(1, 2),
                normal(1, 3, vec![adjust("r1", "sku-a", 10)]),
                normal(1, 4, vec![adjust("r2", "sku-b", 5), adjust("r3", "sku-a", -3)]),
            ])
            .await
            .expect("apply");
        let shapes: Vec<usize> = responses.iter().map(Vec::len).collect();
        assert_eq!(shapes, vec![0, 0, 1, 2]);
        match &responses[3][1] {
            Ok(RegionApplied::Stock { sku, available, .. }) => {
                assert_eq!((sku.as_str(), *available), ("sku-a", 7));
            }
            other => panic!("unexpected outcome {other:?}"),
        }

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 4)));
        built_meta = snapshot.meta;
        state_at_snapshot = sm.reader().read(|state| state.machine.clone()).expect("read");

        // Applied after the snapshot: gone from memory after a restart,
        // until openraft replays the log.
        sm.apply([normal(1, 5, vec![adjust("r4", "sku-c", 1)])])
            .await
            .expect("apply");
    }

    let (_storage, mut stores) = common::reopen(dir.path()).await;
    let sm = &mut stores.state_machine;
    let (last_applied, last_membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(last_applied, Some(log_id(1, 4)));
    assert_eq!(last_membership, built_meta.last_membership);
    assert_eq!(last_membership.log_id(), &Some(log_id(1, 1)));
    let machine = sm.reader().read(|state| state.machine.clone()).expect("read");
    assert_eq!(machine, state_at_snapshot);
    assert_eq!(machine.bucket("sku-a").map(|b| b.available), Some(7));
    assert_eq!(machine.bucket("sku-c"), None);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("get snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, built_meta);

    // Snapshot ids stay unique across restarts.
    let rebuilt = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    assert_eq!(rebuilt.meta.last_log_id, built_meta.last_log_id);
    assert_ne!(rebuilt.meta.snapshot_id, built_meta.snapshot_id);
}

/// An installed snapshot replaces the state in memory and on disk.
#[tokio::test]
async fn installed_snapshot_replaces_state_and_persists() {
    let leader_dir = TempDir::new().expect("temp dir");
    let follower_dir = TempDir::new().expect("temp dir");
    let (_leader_storage, mut leader) = common::open(leader_dir.path());
    leader
        .state_machine
        .apply([
            membership(1, 1, &[1, 2]),
            normal(1, 2, vec![adjust("r1", "sku-a", 4)]),
        ])
        .await
        .expect("apply");
    let snapshot = leader
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    let expected = leader
        .state_machine
        .reader()
        .read(|state| state.machine.clone())
        .expect("read");

    {
        let (_storage, mut follower) = common::open(follower_dir.path());
        follower
            .state_machine
            .apply([blank(1, 1)])
            .await
            .expect("apply something older");
        let mut received = follower
            .state_machine
            .begin_receiving_snapshot()
            .await
            .expect("begin");
        *received = *snapshot.snapshot;
        follower
            .state_machine
            .install_snapshot(&snapshot.meta, received)
            .await
            .expect("install");
        let machine = follower
            .state_machine
            .reader()
            .read(|state| state.machine.clone())
            .expect("read");
        assert_eq!(machine, expected);
    }

    let (_storage, mut follower) = common::reopen(follower_dir.path()).await;
    let (last_applied, membership) = follower.state_machine.applied_state().await.expect("applied");
    assert_eq!(last_applied, Some(log_id(1, 2)));
    assert_eq!(membership, snapshot.meta.last_membership);
    let machine = follower
        .state_machine
        .reader()
        .read(|state| state.machine.clone())
        .expect("read");
    assert_eq!(machine, expected);
}

/// Groups in one database are isolated, listed, and open once at a time.
#[tokio::test]
async fn groups_are_isolated_and_open_once() {
    let dir = TempDir::new().expect("temp dir");
    let storage = NodeStorage::open(&StorageOptions::new(dir.path())).expect("open");
    let mut east = storage
        .open_group("us-east", RegionState::new("us-east"))
        .expect("east");
    let mut west = storage
        .open_group("eu-west", RegionState::new("eu-west"))
        .expect("west");
    east.log
        .blocking_append((1..=3).map(|index| blank(1, index)))
        .await
        .expect("append");
    west.log.blocking_append([blank(5, 1)]).await.expect("append");
    east.log.save_vote(&Vote::new(4, 2)).await.expect("vote");

    let west_state = west.log.get_log_state().await.expect("state");
    assert_eq!(west_state.last_log_id, Some(openraft::testing::log_id(5, 1, 1)));
    assert_eq!(west.log.read_vote().await.expect("vote"), None);
    assert_eq!(
        storage.stored_groups(),
        vec!["eu-west".to_owned(), "us-east".to_owned()]
    );

    let again = storage.open_group("us-east", RegionState::new("us-east"));
    assert!(matches!(again, Err(StoreError::GroupOpen(_))), "opened twice");
    drop(east);
    storage
        .open_group("us-east", RegionState::new("us-east"))
        .expect("free once dropped");
    assert!(matches!(
        storage.open_group("bad/name", RegionState::new("x")),
        Err(StoreError::InvalidGroupId(_))
    ));
    assert_eq!(
        west.state_machine.applied_state().await.expect("applied"),
        (None, StoredMembership::default())
    );
}

/// Environment variable that turns `sigkill_child` into the appender.
const CHILD_DIR_ENV: &str = "RESERVOIR_RAFT_SIGKILL_DIR";
/// Appends the child makes at most, so it stops by itself if never killed.
const CHILD_APPENDS_MAX: u64 = 100_000;
/// Acknowledged appends after which the parent kills the child.
const ACKS_BEFORE_KILL: u64 = 100;
/// How long the parent waits for those acknowledgements.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

/// Every append acknowledged as flushed before a SIGKILL is there after
/// reopening (sled's userspace buffers die with the process, so acking before
/// the flush would lose entries here).
#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = TempDir::new().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sigkill_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut acked: u64 = 0;
    while acked < ACKS_BEFORE_KILL {
        assert!(
            started.elapsed() < CHILD_DEADLINE,
            "child acked only {acked} appends in time"
        );
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(index) = line.strip_prefix("acked ") {
                    acked = index.trim().parse().expect("acked index");
                }
            }
            _ => panic!("child stopped after {acked} acks"),
        }
    }
    child.kill().expect("SIGKILL child");
    // Acks printed before the kill may still sit in the pipe.
    for line in lines.map_while(Result::ok) {
        if let Some(index) = line.strip_prefix("acked ") {
            acked = acked.max(index.trim().parse().expect("acked index"));
        }
    }
    child.wait().expect("reap child");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (_storage, mut stores) = common::open(dir.path());
        let state = stores.log.get_log_state().await.expect("log state");
        let last = state.last_log_id.expect("entries after kill").index;
        assert!(last >= acked, "acked up to {acked}, only {last} survived");
        let entries = stores.log.try_get_log_entries(1..=last).await.expect("read");
        let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "hole in the log");
        assert_eq!(stores.log.read_vote().await.expect("vote"), Some(Vote::new(1, 1)));
    });
}

/// Not a test on its own: the child process of
/// `acknowledged_appends_survive_sigkill`, which runs it by name. Without its
/// environment variable it returns at once.
#[test]
#[ignore = "the child process of acknowledged_appends_survive_sigkill"]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (_storage, mut stores) = common::open(std::path::Path::new(&dir));
        stores.log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        for index in 1..=CHILD_APPENDS_MAX {
            let entry = normal(1, index, vec![adjust(&format!("r{index}"), "sku-a", 1)]);
            stores.log.blocking_append([entry]).await.expect("append");
            println!("acked {index}");
        }
    });
}
