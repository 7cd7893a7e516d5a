//! A standalone region restarted as a whole: first cleanly (SIGTERM to `up`,
//! then `up` again on the same directory), then the hard way (SIGKILL to
//! every node at once). Nothing acknowledged may be lost either way. The
//! tests of this file run one at a time (see [`one_at_a_time`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::ReservationState::{Confirmed, Released};
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, RETRY_DEADLINE, balanced_sheets, confirm,
    is_retryable, line, one_at_a_time, release, reserve, reserve_request, units_of,
};

/// The SKUs reserved.
const SKUS: [&str; 2] = ["shoe-42", "hat-m"];
/// Units stocked of each SKU.
const STOCK: u64 = 500;
/// Holds long enough that none expires during the test.
const TTL_MS: u64 = 60 * 60 * 1000;
/// Reservations made before the clean restart.
const RESERVATIONS: usize = 30;
/// Concurrent writers before the hard kill.
const WRITERS: usize = 4;
/// Most reserves one writer sends.
const WRITES_PER_WRITER_MAX: usize = 200;
/// Acknowledged reserves before every node is killed.
const ACKS_BEFORE_KILL: u64 = 60;
/// Longest the writers may run, whatever happens.
const LOAD_DEADLINE: Duration = Duration::from_secs(30);
/// Snapshot interval in the snapshot test: every node snapshots many times.
const SNAPSHOT_LOGS: u64 = 20;
/// Log entries kept behind a snapshot in the snapshot test.
const SNAPSHOT_LOGS_KEPT: u64 = 5;
/// Snapshot chunks in the snapshot test: a snapshot takes several.
const SNAPSHOT_CHUNK_BYTES: usize = 1024;
/// Reserves made while the snapshot test's follower is down.
const LAGGED_RESERVES: usize = 120;
/// How long a writer's call may take before it counts as unanswered; the
/// region is healthy until the kill, so this only cuts calls caught by it.
const WRITE_DEADLINE: Duration = Duration::from_secs(3);

/// A full restart through SIGTERM keeps every hold (same expiry), every confirm (same order), the outbox and the books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_holds_confirms_and_outbox() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    for sku in SKUS {
        region.add_stock(sku, STOCK as i64).await;
    }
    let nodes = region.rotation(0);
    let mut ids = Vec::new();
    for i in 0..RESERVATIONS {
        let mut request = reserve_request(format!("restart-{i}"), vec![line(SKUS[i % 2], 1 + i as u64 % 3)]);
        request.ttl_ms = TTL_MS;
        let reservation = reserve(&nodes, &request, RETRY_DEADLINE)
            .await
            .result
            .unwrap_or_else(|s| panic!("reserve {i}: {s:?}"));
        let id = reservation.reservation_id.clone();
        // Every fourth is confirmed, the next released, the others held.
        match i % 4 {
            0 => {
                let order_id = format!("order-{i}");
                let r = confirm(&nodes, &id, &order_id, RETRY_DEADLINE).await.result;
                let r = r.unwrap_or_else(|s| panic!("confirm {id}: {s:?}"));
                assert_eq!((r.state(), r.order_id.as_str()), (Confirmed, order_id.as_str()));
            }
            1 => {
                let r = release(&nodes, &id, RETRY_DEADLINE).await.result;
                let r = r.unwrap_or_else(|s| panic!("release {id}: {s:?}"));
                assert_eq!(r.state(), Released);
            }
            _ => {}
        }
        ids.push(id);
    }

    let before = snapshot(&region, &ids).await;
    assert!(
        before.status.outbox_last_seq > 0,
        "the confirms wrote outbox entries"
    );
    assert!(before.status.holds > 0, "some holds are live");
    region.stop(libc::SIGTERM).await;
    region.start_again().await;
    let after = snapshot(&region, &ids).await;

    for (id, r) in &before.reservations {
        assert_eq!(&after.reservations[id], r, "{id} changed across the restart");
    }
    assert_eq!(
        after.status.replicated_state(),
        before.status.replicated_state(),
        "/status changed across the restart"
    );
    assert_eq!(
        after.sheets, before.sheets,
        "the books changed across the restart"
    );

    // The region takes writes again, without reusing a reservation id.
    let request = reserve_request("after-restart", vec![line(SKUS[0], 1)]);
    let fresh = reserve(&region.rotation(1), &request, RETRY_DEADLINE)
        .await
        .result
        .expect("a reserve after the restart");
    assert!(
        !before.reservations.contains_key(&fresh.reservation_id),
        "{} was reused",
        fresh.reservation_id
    );
    let sheets = balanced_sheets(&region.audit().await);
    assert_eq!(sheets[SKUS[0]].held, before.sheets[SKUS[0]].held + 1);
    eprintln!("test took {:?}", started.elapsed());
}

/// SIGKILL of all three nodes while writes are in flight loses no acknowledged write, and every unanswered one took effect at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_every_node_keeps_acknowledged_writes() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    for sku in SKUS {
        region.add_stock(sku, STOCK as i64).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let nodes = region.rotation(w);
        let (stop, acks) = (stop.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let load_started = Instant::now();
            let mut acked = Vec::new();
            let mut unknown = Vec::new();
            for i in 0..WRITES_PER_WRITER_MAX {
                if stop.load(Ordering::SeqCst) || load_started.elapsed() > LOAD_DEADLINE {
                    break;
                }
                let request = reserve_request(format!("writer-{w}-{i}"), vec![line(SKUS[(w + i) % 2], 1)]);
                match reserve(&nodes, &request, WRITE_DEADLINE).await.result {
                    Ok(reservation) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                        acked.push((request, reservation));
                    }
                    Err(s) if is_retryable(&s) => unknown.push(request),
                    Err(s) => panic!("{}: refused: {s:?}", request.request_id),
                }
            }
            (acked, unknown)
        }));
    }

    let give_up = Instant::now() + LOAD_DEADLINE;
    while acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
        assert!(Instant::now() < give_up, "the writers made no progress");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let killed_ms = reservoir_tests::unix_ms();
    region.kill_all().await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    for w in writers {
        let (a, u) = w.await.expect("a writer panicked");
        acked.extend(a);
        unknown.extend(u);
    }
    eprintln!(
        "killed every node with {} reserves acknowledged and {} unanswered",
        acked.len(),
        unknown.len()
    );

    region.stop(libc::SIGTERM).await;
    region.start_again().await;

    // Every acknowledged reserve is there, as acknowledged.
    let nodes = region.rotation(0);
    for (request, reservation) in &acked {
        let found = region
            .get(HOME_REGION, &reservation.reservation_id)
            .await
            .unwrap_or_else(|s| panic!("acknowledged {} lost: {s:?}", reservation.reservation_id));
        assert_eq!(&found, reservation, "{} changed", request.request_id);
    }
    // The unanswered ones took effect at most once: sending them again
    // returns their reservation if they did, or makes it now.
    let unanswered = unknown.len();
    let mut applied_before_kill = 0;
    for request in unknown {
        let reservation = reserve(&nodes, &request, RETRY_DEADLINE)
            .await
            .result
            .unwrap_or_else(|s| panic!("re-sending {}: {s:?}", request.request_id));
        if reservation.created_at_ms <= killed_ms {
            applied_before_kill += 1;
        }
        acked.push((request, reservation));
    }
    eprintln!(
        "of {unanswered} unanswered reserves, {applied_before_kill} were in the log before the kill (made before it)"
    );
    let mut ids: Vec<&str> = acked.iter().map(|(_, r)| r.reservation_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), acked.len(), "two requests share a reservation");

    let sheets = balanced_sheets(&region.audit().await);
    for sku in SKUS {
        let held: u64 = acked.iter().map(|(_, r)| units_of(&r.lines, sku)).sum();
        let sheet = sheets[sku];
        assert_eq!(
            (sheet.stocked, sheet.held, sheet.confirmed),
            (STOCK, held, 0),
            "{sku}"
        );
    }
    let converged = region.converged_in(HOME_REGION).await;
    for sku in SKUS {
        assert_eq!(
            converged.buckets[sku].held, sheets[sku].held,
            "{sku} on every replica"
        );
    }
    eprintln!("test took {:?}", started.elapsed());
}

/// A follower that was down while the others snapshotted and purged the log
/// it lacks catches up from a snapshot sent over gRPC in many chunks; then
/// SIGKILL of every node, and the region comes back from its snapshot files
/// and the log after them with every acknowledged hold and the books exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_catch_up_a_follower_in_chunks_and_survive_sigkill() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    // Small snapshots, often, sent in small chunks, with little log kept
    // behind them: written into the node configs `up` made, then `up` runs
    // again on them.
    region.stop(libc::SIGTERM).await;
    for id in region.ids() {
        let path = region.dir().join(format!("node-{id}.toml"));
        let text = std::fs::read_to_string(&path).expect("a node config");
        let tuned = text
            .replace(
                "snapshot_logs = 100000\n",
                &format!("snapshot_logs = {SNAPSHOT_LOGS}\n"),
            )
            .replace(
                "snapshot_logs_kept = 1000\n",
                &format!("snapshot_logs_kept = {SNAPSHOT_LOGS_KEPT}\n"),
            );
        let tuned = tuned.replace(
            "snapshot_chunk_bytes = 1048576\n",
            &format!("snapshot_chunk_bytes = {SNAPSHOT_CHUNK_BYTES}\n"),
        );
        assert_ne!(tuned, text, "node {id}'s config has the snapshot settings");
        std::fs::write(&path, tuned).expect("config written");
    }
    region.start_again().await;
    for sku in SKUS {
        region.add_stock(sku, STOCK as i64).await;
    }
    let mut acked = Vec::new();
    acked.extend(reserve_each(&mut region.rotation(0), 0..10).await);

    let leader = region.region_leader(HOME_REGION).await;
    let lagger = *region.ids().iter().find(|&&id| id != leader).expect("a follower");
    let lagged_at = region
        .status(lagger)
        .await
        .expect("status")
        .applied_index
        .unwrap_or(0);
    region.kill(lagger).await;
    let live = region.live_ids();
    let first = region
        .ids()
        .iter()
        .position(|id| *id == live[0])
        .expect("a live node");
    acked.extend(reserve_each(&mut region.rotation(first), 10..10 + LAGGED_RESERVES).await);
    // The live nodes snapshotted and purged past what the lagger has.
    let give_up = Instant::now() + RETRY_DEADLINE;
    for id in region.live_ids() {
        loop {
            let status = region.status(id).await.expect("status");
            if status
                .snapshot_index
                .is_some_and(|i| i > lagged_at + SNAPSHOT_LOGS_KEPT)
            {
                break;
            }
            assert!(Instant::now() < give_up, "node {id} did not snapshot: {status:?}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    region.restart(lagger).await;
    let converged = region.converged_in(HOME_REGION).await;
    let lagging = region.status(lagger).await.expect("status");
    let snapshots = lagging
        .snapshots
        .clone()
        .expect("a node of this build reports its snapshots");
    assert!(
        snapshots.installed >= 1,
        "the lagger caught up without a snapshot: {lagging:?}"
    );
    assert!(
        snapshots.last_bytes > 2 * SNAPSHOT_CHUNK_BYTES as u64,
        "the snapshot fits in {} chunks: {lagging:?}",
        snapshots.last_bytes.div_ceil(SNAPSHOT_CHUNK_BYTES as u64)
    );
    let sheets = balanced_sheets(&region.audit().await);
    for sku in SKUS {
        let held: u64 = acked.iter().map(|r| units_of(&r.lines, sku)).sum();
        assert_eq!((sheets[sku].stocked, sheets[sku].held), (STOCK, held), "{sku}");
        assert_eq!(converged.buckets[sku].held, held, "{sku} on every replica");
    }

    region.kill_all().await;
    region.stop(libc::SIGTERM).await;
    region.start_again().await;
    for r in &acked {
        let found = region
            .get(HOME_REGION, &r.reservation_id)
            .await
            .unwrap_or_else(|s| panic!("acknowledged {} lost: {s:?}", r.reservation_id));
        assert_eq!(&found, r, "{} changed", r.reservation_id);
    }
    let sheets_after = balanced_sheets(&region.audit().await);
    assert_eq!(sheets_after, sheets, "the books changed across SIGKILL");
    let after = region.converged_in(HOME_REGION).await;
    assert_eq!(
        after.replicated_state(),
        converged.replicated_state(),
        "the replicas' state changed across SIGKILL"
    );
    for id in region.ids() {
        let status = region.status(id).await.expect("status");
        assert!(
            status.snapshot_index.is_some(),
            "node {id} restarted without a snapshot"
        );
    }
    eprintln!("test took {:?}", started.elapsed());
}

/// Reserves one unit for each number in `range` (request `snap-N`, long
/// holds), one at a time, each acknowledged.
async fn reserve_each(
    nodes: &mut reservoir_tests::Rotation,
    range: std::ops::Range<usize>,
) -> Vec<v1::Reservation> {
    let mut out = Vec::new();
    for i in range {
        let mut request = reserve_request(format!("snap-{i}"), vec![line(SKUS[i % 2], 1)]);
        request.ttl_ms = TTL_MS;
        let r = reserve(nodes, &request, RETRY_DEADLINE)
            .await
            .result
            .unwrap_or_else(|s| panic!("{}: {s:?}", request.request_id));
        out.push(r);
    }
    out
}

/// What the tests compare across a restart.
struct Snapshot {
    reservations: BTreeMap<String, v1::Reservation>,
    status: reservoir_tests::NodeStatus,
    sheets: BTreeMap<String, reservoir_tests::SkuSheet>,
}

/// Every reservation (read linearizably), the replicas' common `/status`,
/// and the balanced books.
async fn snapshot(region: &Cluster, ids: &[String]) -> Snapshot {
    let mut reservations = BTreeMap::new();
    for id in ids {
        let r = region
            .get(HOME_REGION, id)
            .await
            .unwrap_or_else(|s| panic!("{id} not found: {s:?}"));
        reservations.insert(id.clone(), r);
    }
    Snapshot {
        reservations,
        status: region.converged_in(HOME_REGION).await,
        sheets: balanced_sheets(&region.audit().await),
    }
}
