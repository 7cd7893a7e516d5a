//! The two designs Reservoir is compared with, run by `reservoir up
//! --architecture` from the same binary: `single-writer` (one us-east group;
//! the other regions' clients cross the WAN) and `global-consensus` (one
//! group, a voter per region, its traffic over the WAN). Each must sell
//! correctly (every acknowledged reservation found, the audit balanced) and
//! must really pay the WAN where the design says it does; a partition hurts
//! each the way its design says.
//!
//! The timings asserted are lower bounds set by the link emulator (a call
//! cannot be faster than the round trip it must cross), never upper bounds.

use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    ClientChannel, Cluster, ClusterOptions, HOME_REGION, REGIONS, RETRY_DEADLINE, WanProfile, line,
    one_at_a_time, reserve_request, reservoir_exe,
};
use tonic::Code;

/// us-east ↔ eu-west, the shortest emulated round trip (`--wan aws`).
const NEAREST_ROUND_TRIP: Duration = Duration::from_millis(70);
/// us-east ↔ ap-south.
const US_AP_ROUND_TRIP: Duration = Duration::from_millis(186);
/// A call into a cut-off region gives up after this.
const CUT_CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// One reserve of one unit of `sku` through `channel`, retried on
/// UNAVAILABLE until answered; returns the reservation id and how long the
/// successful attempt took.
async fn reserve(channel: ClientChannel, sku: &str, request_id: &str) -> (String, Duration) {
    let give_up = Instant::now() + RETRY_DEADLINE;
    loop {
        let started = Instant::now();
        let answer = InventoryClient::new(channel.clone())
            .reserve(reserve_request(request_id, vec![line(sku, 1)]))
            .await;
        match answer {
            Ok(r) => {
                let id = r.into_inner().reservation.expect("a reservation").reservation_id;
                return (id, started.elapsed());
            }
            Err(s) if s.code() == Code::Unavailable && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("reserve {request_id}: {s:?}"),
        }
    }
}

/// A reserve through `channel` that must fail as unavailable (its region is
/// cut off from the group that decides).
async fn reserve_refused(channel: ClientChannel, sku: &str, request_id: &str) {
    let mut client = InventoryClient::new(channel);
    let call = client.reserve(reserve_request(request_id, vec![line(sku, 1)]));
    match tokio::time::timeout(CUT_CALL_TIMEOUT, call).await {
        Err(_) => {}
        // A cut link resets the connection: a transport error (UNKNOWN).
        Ok(Err(s)) => assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ) || (s.code() == Code::Unknown && s.message() == "transport error"),
            "a cut-off reserve failed, but not as unavailable: {s:?}"
        ),
        Ok(Ok(r)) => panic!("a reserve across a cut link succeeded: {r:?}"),
    }
}

/// One reserve of `gadget` through each region's endpoint, each taking at
/// least `floor(region)` (the round trip the design must cross); returns
/// the reservation ids.
async fn reserve_in_each_region(
    cluster: &Cluster,
    architecture: &str,
    floor: impl Fn(&str) -> Duration,
) -> Vec<String> {
    let mut ids = Vec::new();
    for region in REGIONS {
        let (id, took) = reserve(
            cluster.endpoint(region),
            "gadget",
            &format!("{architecture}-{region}"),
        )
        .await;
        let floor = floor(region);
        assert!(
            took >= floor,
            "{architecture}, {region}: a reserve took {took:?}, under the {floor:?} round trip"
        );
        eprintln!("{architecture}: a reserve from {region} took {took:?}");
        ids.push(id);
    }
    ids
}

/// Reads every reservation through `channel` and checks it is held.
async fn all_held(channel: ClientChannel, ids: &[String]) {
    for id in ids {
        let r = InventoryClient::new(channel.clone())
            .get_reservation(v1::GetReservationRequest {
                reservation_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("get {id}: {s:?}"))
            .into_inner();
        assert_eq!(r.state, v1::ReservationState::Held as i32, "{id}: {r:?}");
    }
}

/// The audit balances and the group's books hold `stocked` units of which
/// `held` are held.
async fn books(cluster: &Cluster, sku: &str, stocked: u64, held: u64) {
    let report = cluster.audit().await;
    assert!(
        report.balanced && report.missing_regions.is_empty(),
        "{report:#?}"
    );
    let s = report
        .skus
        .iter()
        .find(|s| s.sku == sku)
        .unwrap_or_else(|| panic!("{sku} not in {report:#?}"));
    assert_eq!(s.stocked_total, stocked, "{report:#?}");
    assert_eq!((s.drift, s.ledger_drift), (0, 0), "{report:#?}");
    assert_eq!(s.regions.len(), 1, "one group holds every unit: {report:#?}");
    let group = &s.regions[0];
    assert_eq!(group.drift, 0, "{report:#?}");
    assert_eq!(
        (group.held, group.available, group.confirmed, s.settled_total),
        (held, stocked - held, 0, 0),
        "{report:#?}"
    );
}

/// single-writer: us-east sells locally; eu-west and ap-south pay their
/// round trip to us-east on every reserve; cut off, ap-south cannot sell at
/// all while us-east goes on; after the heal every acknowledged reservation
/// is held exactly once. The directory then refuses another architecture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_sends_every_region_to_us_east() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::start(ClusterOptions {
        architecture: "single-writer",
        wan: WanProfile::Aws,
        ..ClusterOptions::default()
    })
    .await;
    cluster.add_stock("gadget", 40).await;
    let mut ids = reserve_in_each_region(&cluster, "single-writer", |region| match region {
        "eu-west" => NEAREST_ROUND_TRIP,
        "ap-south" => US_AP_ROUND_TRIP,
        _ => Duration::ZERO,
    })
    .await;
    cluster.partition_region("ap-south").await;
    reserve_refused(cluster.endpoint("ap-south"), "gadget", "sw-cut-ap").await;
    let (id, _) = reserve(cluster.endpoint(HOME_REGION), "gadget", "sw-cut-us").await;
    ids.push(id);
    cluster.heal().await;
    let (id, _) = reserve(cluster.endpoint("ap-south"), "gadget", "sw-healed-ap").await;
    ids.push(id);
    all_held(cluster.endpoint(HOME_REGION), &ids).await;
    books(&cluster, "gadget", 40, ids.len() as u64).await;

    cluster.stop(libc::SIGTERM).await;
    let out = std::process::Command::new(reservoir_exe())
        .args(["up", "--architecture", "tokens", "--dir"])
        .arg(cluster.dir())
        .output()
        .expect("run up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("single-writer"),
        "the error names what DIR holds: {stderr}"
    );
}

/// global-consensus: every reserve, from any region, waits for a voter in
/// another region; with ap-south cut off the other two still form a
/// majority and sell, ap-south cannot; after the heal ap-south's own node
/// reads every acknowledged reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_consensus_commits_across_regions() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::start(ClusterOptions {
        architecture: "global-consensus",
        wan: WanProfile::Aws,
        ..ClusterOptions::default()
    })
    .await;
    cluster.add_stock("gadget", 40).await;
    let mut ids = reserve_in_each_region(&cluster, "global-consensus", |_| NEAREST_ROUND_TRIP).await;
    cluster.partition_region("ap-south").await;
    reserve_refused(cluster.endpoint("ap-south"), "gadget", "gc-cut-ap").await;
    for region in ["us-east", "eu-west"] {
        let (id, _) = reserve(cluster.endpoint(region), "gadget", &format!("gc-cut-{region}")).await;
        ids.push(id);
    }
    cluster.heal().await;
    let (id, _) = reserve(cluster.endpoint("ap-south"), "gadget", "gc-healed-ap").await;
    ids.push(id);
    all_held(cluster.endpoint("ap-south"), &ids).await;
    books(&cluster, "gadget", 40, ids.len() as u64).await;
    cluster.stop(libc::SIGTERM).await;
}

/// An unknown architecture, or global-consensus with more than one voter
/// per region, is refused before anything starts.
#[test]
fn bad_architectures_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for args in [
        &["--architecture", "paxos"][..],
        &["--architecture", "global-consensus", "--nodes-per-region", "3"][..],
        &["--standalone", "--architecture", "single-writer"][..],
    ] {
        let out = std::process::Command::new(reservoir_exe())
            .arg("up")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("run up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("architecture"), "{args:?}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(
            left.iter()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".toml")),
            "{left:?}"
        );
    }
}
