//! The load tester (`reservoir-loadtest`, as a library) against a real
//! three-region cluster from the one harness: a short black-friday, one
//! node per region, no WAN latency. The load tester stocks its catalog,
//! spikes one region while the hot SKUs sell out, and reconciles with the
//! ledger: oversell 0, the audit balanced, every confirmed unit settled
//! once; its server sampler read every node about once a second. And its
//! closed loop against a region started with `up --insecure`, reached
//! without credentials.

use reservoir_loadtest::app::{self, AppOptions};
use reservoir_loadtest::report::Report;
use reservoir_loadtest::scenario::{BuiltIn, Scenario};
use reservoir_loadtest::target::TargetKind;
use reservoir_tests::{
    Cluster, ClusterOptions, SETTLE_DEADLINE, assert_balanced, balanced_sheets, one_at_a_time,
};

/// A seconds-long black-friday against one node per region: no oversell, a
/// balanced audit, and settled units equal to the units seen confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_friday_against_a_cluster() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut scenario = Scenario::built_in(BuiltIn::BlackFriday);
    scenario.duration_s = 8.0;
    scenario.rate_per_region = 15.0;
    scenario.catalog.skus = 30;
    scenario.sessions.hold_ttl_ms = 1_500;
    scenario.sessions.think_ms = 50;
    let report = load(&cluster, scenario, 5).await;
    let t = &report.totals;
    assert_eq!(t.oversell_units, 0, "oversold");
    assert!(t.audit_balanced, "audit not balanced: {:?}", report.server_notes);
    assert!(
        t.settled_caught_up,
        "settlement did not catch up: {:?}",
        report.server_notes
    );
    assert!(
        t.settled_matches_confirmed,
        "settled != confirmed: {:?}",
        report.server_notes
    );
    assert!(t.sold > 0, "nothing sold");
    assert!(
        t.failed_not_retryable.is_empty(),
        "requests failed that a retry would not change: {:?}",
        t.failed_not_retryable
    );
    let acked = t
        .acknowledged
        .as_ref()
        .expect("acknowledged reservations were read back");
    assert!(
        acked.filed > 0 && acked.clean(),
        "acknowledged reservations: {acked:?}"
    );
    assert!(report.skus.iter().all(|s| s.settled <= s.stocked));
    let spike = &report.windows[0];
    assert!(spike.end_s > spike.start_s, "the spike window is marked");
    // The server sampler read every node's /status, and its RSS (from
    // /status or, for binaries that do not report it, from /proc).
    let servers = report.servers.as_ref().expect("a servers section for Reservoir");
    assert_eq!(servers.nodes.len(), 3, "one node per region");
    for n in &servers.nodes {
        assert!(n.samples_answered >= 5, "node {}: {n:?}", n.id);
        assert!(n.rss_peak_bytes.is_some_and(|b| b > 0), "node {}: no RSS", n.id);
    }
    assert_eq!(
        servers.leader_holds().len(),
        3,
        "a leader's holds in every region"
    );
    // The harness's own audit agrees once settlement is done.
    assert_balanced(&cluster.settled_audit(SETTLE_DEADLINE).await);
}

/// A region started with `up --insecure` (plaintext, no keys): the load
/// tester's closed loop and the harness reach it without credentials, and
/// the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_an_insecure_region() {
    let _serial = one_at_a_time().await;
    let region = Cluster::start(ClusterOptions {
        insecure: true,
        ..ClusterOptions::standalone()
    })
    .await;
    let text = include_str!("../../../loadtest/scenarios/throughput.toml");
    let mut scenario = Scenario::from_toml(text).unwrap_or_else(|e| panic!("throughput.toml: {e}"));
    scenario.duration_s = 3.0;
    scenario.clients_per_region = 4;
    scenario.inflight_max = 4;
    let report = load(&region, scenario, 7).await;
    let t = &report.totals;
    assert!(t.requests > 0, "no request sent");
    assert!(t.errors.is_empty(), "errors: {:?}", t.errors);
    let acked = t
        .acknowledged
        .as_ref()
        .expect("acknowledged reservations were read back");
    assert!(
        acked.filed > 0 && acked.clean(),
        "acknowledged reservations: {acked:?}"
    );
    assert_eq!(t.oversell_units, 0, "oversold");
    assert!(t.audit_balanced, "audit not balanced: {:?}", report.server_notes);
    balanced_sheets(&region.audit().await);
}

/// Runs `scenario` with `seed` against `cluster` (one connection per
/// region, no progress output) and prints its summary.
async fn load(cluster: &Cluster, scenario: Scenario, seed: u64) -> Report {
    let report = app::run(AppOptions {
        scenario,
        target: TargetKind::Reservoir,
        cluster: Some(cluster.dir().join("cluster.json")),
        seed,
        connections_per_region: 1,
        calls: Default::default(),
        progress: false,
        stop_rx: None,
        check_acknowledged: true,
    })
    .await
    .unwrap_or_else(|e| panic!("load test failed: {e}"));
    eprintln!("{}", report.summary());
    report
}
