//! The open-loop engine against the in-process simulated store, on tokio's
//! paused clock (seconds of scenario run in milliseconds, latencies exact):
//! a healthy run is on time and balanced; a two-second stall shows in full
//! in the latency figures (no coordinated omission), and the in-flight bound
//! counts late and dropped requests; a seed replays the same arrivals.

use std::sync::Arc;
use std::time::Duration;

use reservoir_loadtest::report::Report;
use reservoir_loadtest::runner::{self, RunOptions};
use reservoir_loadtest::scenario::{BuiltIn, Scenario};
use reservoir_loadtest::target::Target;
use reservoir_loadtest::target::sim::SimTarget;
use tokio::time::Instant;

/// The simulated store's service time per request.
const SERVICE: Duration = Duration::from_millis(1);

fn scenario(which: BuiltIn, duration_s: f64, rate: f64) -> Scenario {
    let mut s = Scenario::built_in(which);
    s.duration_s = duration_s;
    s.rate_per_region = rate;
    s.sessions.hold_ttl_ms = 1_000;
    s.sessions.think_ms = 50;
    s
}

async fn run(scenario: Scenario, stall: Option<(Duration, Duration)>, seed: u64) -> Report {
    // The run's second 0 is "now" plus stocking, which takes no virtual time.
    let stall = stall.map(|(at, length)| (Instant::now() + at, length));
    let target = Target::Sim(Arc::new(SimTarget::new(SERVICE, stall)));
    let output = runner::run(RunOptions {
        scenario,
        target,
        target_name: "sim".into(),
        seed,
        progress: false,
        stop_rx: None,
        check_acknowledged: false,
    })
    .await
    .expect("run");
    Report::build(&output)
}

/// A healthy store: every request on time, latency ≈ service time, nothing
/// oversold, books balanced, sessions as scheduled.
#[tokio::test(start_paused = true)]
async fn healthy_run_is_on_time_and_balanced() {
    let s = scenario(BuiltIn::BlackFriday, 12.0, 20.0);
    let expected = s.expected_sessions();
    let report = run(s, None, 3).await;
    let t = &report.totals;
    assert_eq!(t.late, 0);
    assert_eq!(t.dropped, 0);
    assert_eq!(t.oversell_units, 0);
    assert!(t.audit_balanced && t.settled_caught_up && t.settled_matches_confirmed);
    assert!(
        (t.sessions as f64 - expected).abs() / expected < 0.1,
        "{} sessions, {expected} expected",
        t.sessions
    );
    for r in &report.regions {
        assert!(
            r.reserve.p50_us >= 1_000 && r.reserve.p50_us < 5_000,
            "{}: {:?}",
            r.region,
            r.reserve
        );
    }
    // The hot SKUs sell out during the spike: refusals, yet no oversell.
    assert!(t.errors.get("INSUFFICIENT_STOCK").copied().unwrap_or(0) > 0);
    assert!(report.skus.iter().filter(|s| s.hot).all(|s| s.oversell == 0));
    // One timeline row per second of load and drain.
    let rows = &report.timeline["eu-west"];
    assert!(rows.len() >= 12 && rows.windows(2).all(|w| w[1].t_s == w[0].t_s + 1));
}

/// A 2 s stall at t = 4 s: the first request to hit it waits the full 2 s,
/// and so does everything scheduled behind it — measured from the intended
/// send time, more than a tenth of all reserves are slow (a closed-loop
/// tester would have seen only the few requests in flight). Requests beyond
/// the in-flight bound are counted late, and those that could not be sent
/// within `late_drop_ms` are dropped and counted.
#[tokio::test(start_paused = true)]
async fn stall_shows_in_full() {
    let mut s = scenario(BuiltIn::Steady, 10.0, 50.0);
    s.inflight_max = 20;
    s.late_drop_ms = 1_500;
    let report = run(s, Some((Duration::from_secs(4), Duration::from_secs(2))), 3).await;
    eprintln!("{}", report.summary());
    let t = &report.totals;
    let reserve = report
        .latency
        .iter()
        .find(|l| l.region == "all" && l.outcome == "all" && l.op.name() == "reserve")
        .expect("merged reserve latency");
    assert!(
        reserve.latency.max_us >= 1_900_000,
        "max {}",
        reserve.latency.max_us
    );
    assert!(
        reserve.latency.p90_us >= 100_000,
        "p90 {}",
        reserve.latency.p90_us
    );
    assert!(t.late > 100, "late {}", t.late);
    assert!(t.dropped > 0, "dropped {}", t.dropped);
    assert_eq!(t.oversell_units, 0);
    assert!(t.audit_balanced);
    // The stall is in the timeline: the second it ends in has a p99 near 2 s.
    let worst = report.timeline["us-east"]
        .iter()
        .map(|r| r.reserve_p99_us)
        .max()
        .unwrap_or(0);
    assert!(worst >= 1_500_000, "worst per-second p99 {worst}");
}

/// The same seed replays the same arrivals in every region.
#[tokio::test(start_paused = true)]
async fn seed_replays_arrivals() {
    let a = run(scenario(BuiltIn::Steady, 3.0, 40.0), None, 11).await;
    let b = run(scenario(BuiltIn::Steady, 3.0, 40.0), None, 11).await;
    let arrivals = |r: &Report| r.regions.iter().map(|r| r.counters.arrivals).collect::<Vec<_>>();
    assert_eq!(arrivals(&a), arrivals(&b));
    let c = run(scenario(BuiltIn::Steady, 3.0, 40.0), None, 12).await;
    assert_ne!(arrivals(&a), arrivals(&c));
}

/// Closed loop: each client sends its next reserve when the last is
/// answered. Against the one-request-at-a-time simulated store, one region
/// with reserve-only sessions makes one session per service time whatever
/// the number of clients, and 4 clients each wait for 4 services (Little's
/// law); nothing is late or dropped and the books balance.
#[tokio::test(start_paused = true)]
async fn closed_loop_clients_keep_their_pace() {
    let mut s = scenario(BuiltIn::Steady, 2.0, 0.0);
    s.regions = vec!["us-east".into()];
    s.clients_per_region = 4;
    s.sessions.confirm = 0.0;
    s.sessions.release = 0.0;
    s.sessions.abandon = 1.0;
    let report = run(s, None, 5).await;
    let t = &report.totals;
    assert_eq!((t.late, t.dropped, t.oversell_units), (0, 0, 0));
    assert!(t.audit_balanced && t.settled_matches_confirmed);
    let expected = 2.0 / SERVICE.as_secs_f64();
    let r = &report.regions[0];
    let sessions = r.counters.arrivals as f64;
    assert!(
        sessions > 0.9 * expected && sessions <= 1.01 * expected + 4.0,
        "{sessions} sessions, about {expected} expected"
    );
    assert!(
        (3_500..=4_500).contains(&r.reserve.p50_us),
        "4 clients at a serial 1 ms store wait about 4 ms: {:?}",
        r.reserve
    );
}

async fn run_output(scenario: Scenario, service: Duration, seed: u64) -> runner::RunOutput {
    let target = Target::Sim(Arc::new(SimTarget::new(service, None)));
    runner::run(RunOptions {
        scenario,
        target,
        target_name: "sim".into(),
        seed,
        progress: false,
        stop_rx: None,
        check_acknowledged: false,
    })
    .await
    .expect("run")
}

/// Abandoned holds keep no session: 500 abandoned reserves/s with
/// 110-second holds would have 55,500 sessions waiting out their holds,
/// past SESSIONS_LIVE_MAX (50,000), and the arrivals of the last 10 s would
/// have been dropped; with the shared expiry none is, and every held unit
/// is back in the tester's books by the end of the drain.
#[tokio::test(start_paused = true)]
async fn abandoned_holds_keep_no_session() {
    let mut s = Scenario::built_in(BuiltIn::Soak);
    s.duration_s = 110.0;
    s.rate_per_region = 500.0;
    s.catalog.skus = 50;
    s.sessions.hold_ttl_ms = 110_000;
    assert!(s.rate_per_region * 111.0 > runner::SESSIONS_LIVE_MAX as f64);
    // The store serves one request per millisecond (tokio's timer
    // resolution), twice the arrival rate.
    let out = run_output(s, SERVICE, 7).await;
    let report = Report::build(&out);
    let t = &report.totals;
    assert!(t.sessions > 52_000, "{} sessions", t.sessions);
    assert_eq!(
        t.dropped, 0,
        "{:?} {:?}",
        report.regions[0].counters, report.notes
    );
    assert_eq!(t.errors.values().sum::<u64>(), 0, "{:?}", t.errors);
    assert_eq!(t.oversell_units, 0);
    assert!(
        t.audit_balanced && t.settled_caught_up,
        "{:?}",
        report.server_notes
    );
    let held: i64 = out
        .books
        .iter()
        .map(|b| b.held.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(held, 0, "units the tester still counts held after the drain");
    assert!(report.servers.is_none(), "the sampler is for Reservoir only");
}

/// `reconcile_wait_for_holds = false`: a run with 10-minute holds reads the
/// books as soon as its sessions end (no 10-minute wait); the holds still
/// live are reported, not an error, and the books balance with them.
#[tokio::test(start_paused = true)]
async fn long_holds_need_not_be_waited_for() {
    let mut s = Scenario::built_in(BuiltIn::Soak);
    s.duration_s = 5.0;
    s.rate_per_region = 200.0;
    s.catalog.skus = 20;
    s.sessions.hold_ttl_ms = 600_000;
    s.reconcile_wait_for_holds = false;
    let started = Instant::now();
    let report = Report::build(&run_output(s, SERVICE, 9).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the run took {took:?} of virtual time"
    );
    let t = &report.totals;
    assert!(
        t.audit_balanced && t.settled_caught_up,
        "{:?}",
        report.server_notes
    );
    assert_eq!(t.oversell_units, 0);
    let held_end: u64 = report.skus.iter().map(|s| s.held_end).sum();
    assert_eq!(
        held_end, report.regions[0].counters.arrivals,
        "one unit per live hold"
    );
    assert!(
        report.server_notes.iter().any(|n| n.contains("holds still live")),
        "{:?}",
        report.server_notes
    );
    assert!(
        report.notes.iter().any(|n| n.contains("not waited for")),
        "{:?}",
        report.notes
    );
}
