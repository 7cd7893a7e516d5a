//! What one snapshot of a region costs, through the real store: a region
//! holding N live one-line holds (36-byte request ids, 1,000 SKUs) is built
//! into a snapshot file; the output is how long applying was held up (the
//! O(1) clone of the state), how long the build took on its own thread, the
//! file's size, and how long a restart takes to check and decode it.
//!
//! Run: `cargo run --release -p reservoir-raft --example snapshot_cost -- 600000`

use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, Membership, RaftSnapshotBuilder};
use reservoir_raft::{Batch, GroupConfig, LogId, NodeStorage, StorageOptions};
use reservoir_tokens::{Line, RegionCommand, RegionOp, RegionState};

/// SKUs in the catalog.
const SKUS: u64 = 1_000;
/// Commands per log entry while filling the state.
const BATCH: u64 = 500;
const GROUP: &str = "us-east";

type C = GroupConfig<RegionState>;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id(1, 1, index)
}

fn entry(index: u64, commands: Vec<RegionCommand>) -> Entry<C> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Batch::new(commands)),
    }
}

fn command(op: RegionOp) -> RegionCommand {
    RegionCommand {
        now_ms: 1_700_000_000_000,
        op,
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(600_000);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let storage = NodeStorage::open(&StorageOptions::new(dir.path())).expect("open sled");
    let mut stores = storage
        .open_group(GROUP, RegionState::new(GROUP))
        .expect("open group");
    let sku = |k: u64| format!("lt1-000000-{:05}", k % SKUS);
    // Ids spread over the key space as a leader's random nonces spread them
    // (splitmix64 of the reserve's number).
    let nonce = |i: u64| {
        let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };

    let membership = Entry {
        log_id: log_id(1),
        payload: EntryPayload::Membership(Membership::new(vec![[1].into_iter().collect()], None)),
    };
    let stock = (0..SKUS)
        .map(|k| {
            command(RegionOp::AdjustStock {
                request_id: format!("seed-{k}"),
                sku: sku(k),
                delta: 100_000_000,
            })
        })
        .collect();
    stores
        .state_machine
        .apply([membership, entry(2, stock)])
        .await
        .expect("stock");
    let mut index = 2;
    let mut i = 0;
    while i < n {
        let commands = (i..(i + BATCH).min(n))
            .map(|i| {
                command(RegionOp::Reserve {
                    owner: "shop".into(),
                    request_id: format!("{i:08x}-0000-4000-8000-000000000000"),
                    lines: vec![Line::new(sku(i * 7919), 1)],
                    ttl_ms: 0,
                    allow_partial: false,
                    nonce: nonce(i),
                })
            })
            .collect();
        index += 1;
        stores
            .state_machine
            .apply([entry(index, commands)])
            .await
            .expect("reserve");
        i += BATCH;
    }

    let started = Instant::now();
    let mut builder = stores.state_machine.get_snapshot_builder().await;
    let pause = started.elapsed();
    let started = Instant::now();
    let snapshot = builder.build_snapshot().await.expect("build");
    let built = started.elapsed();
    let bytes = snapshot.snapshot.bytes();
    drop((snapshot, builder, stores));
    drop(storage);

    let started = Instant::now();
    let storage = NodeStorage::open(&StorageOptions::new(dir.path())).expect("reopen sled");
    let stores = storage
        .open_group(GROUP, RegionState::new(GROUP))
        .expect("reopen group");
    let loaded = started.elapsed();
    let holds = stores
        .state_machine
        .reader()
        .read(|s| s.machine.holds())
        .expect("read");
    assert_eq!(holds as u64, n, "every hold is back after the restart");
    println!(
        "{n} holds: apply held up {pause:?}; build {built:?} on its own thread; \
         {bytes} bytes ({:.0} per hold); restart (check + decode) {loaded:?}",
        bytes as f64 / n as f64
    );
}
