//! The Redis and PostgreSQL adapters under a few seconds of real open-loop
//! load: each test starts its own server through the adapter, and checks
//! that nothing was oversold, that the store's own books balance (stocked =
//! available + held + sold, no hold left), that what the tester saw
//! confirmed is what the store sold, and that the server is gone afterwards.
//! A test whose server binary is not installed prints why and skips.

use std::time::Duration;

use reservoir_loadtest::app::{self, AppOptions, LoadError};
use reservoir_loadtest::report::Report;
use reservoir_loadtest::scenario::{BuiltIn, Scenario};
use reservoir_loadtest::target::postgres::PostgresTarget;
use reservoir_loadtest::target::redis::{Persistence, RedisTarget};
use reservoir_loadtest::target::{Target, TargetError, TargetKind, reason};
use reservoir_loadtest::workload::Catalog;

/// A seconds-long version of a built-in: low rates (other tests share the
/// two cores), short holds so abandoned ones come back within the run.
fn short(which: BuiltIn, duration_s: f64, rate: f64) -> Scenario {
    let mut s = Scenario::built_in(which);
    s.duration_s = duration_s;
    s.rate_per_region = rate;
    s.catalog.skus = s.catalog.skus.min(50);
    s.catalog.hot_skus = s.catalog.hot_skus.min(s.catalog.skus);
    s.sessions.hold_ttl_ms = 600;
    s.sessions.think_ms = 30;
    s.validate().expect("the shortened scenario is valid");
    s
}

/// Runs `scenario` against `target`, or returns `None` (after saying why)
/// when the target's server is not installed.
async fn run_or_skip(target: TargetKind, scenario: Scenario) -> Option<Report> {
    let result = app::run(AppOptions {
        scenario,
        target,
        cluster: None,
        seed: 7,
        connections_per_region: 4,
        calls: Default::default(),
        progress: false,
        stop_rx: None,
        check_acknowledged: false,
    })
    .await;
    match result {
        Ok(report) => Some(report),
        Err(LoadError::Absent(why)) => {
            eprintln!("SKIPPED {}: {why}", target.name());
            None
        }
        Err(e) => panic!("{} run failed: {e}", target.name()),
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The checks every baseline run must pass.
fn assert_sound(report: &Report, what: &str) {
    let t = &report.totals;
    eprintln!("{}", report.summary());
    assert_eq!(t.oversell_units, 0, "{what}: oversold");
    assert!(
        t.audit_balanced,
        "{what}: books do not balance: {:?}",
        report.server_notes
    );
    assert!(
        t.settled_caught_up,
        "{what}: holds left: {:?}",
        report.server_notes
    );
    assert!(t.settled_matches_confirmed, "{what}: sold != confirmed as seen");
    assert!(t.sessions > 0 && t.sold > 0, "{what}: no load went through");
    assert_eq!(t.dropped, 0, "{what}: requests dropped at a low rate");
    for s in &report.skus {
        assert!(
            s.sold_server <= s.stocked,
            "{what}: {} sold {} of {}",
            s.sku,
            s.sold_server,
            s.stocked
        );
        assert_eq!(s.held_end, 0, "{what}: {} still holds units", s.sku);
    }
    // Every request sent was answered, and is in exactly one histogram.
    let sent: u64 = report.regions.iter().map(|r| r.counters.sent).sum();
    assert_eq!(t.requests, sent, "{what}: requests sent and answered differ");
}

/// Redis with `appendfsync always`: a short black-friday balances and never oversells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_durable_black_friday() {
    let Some(report) = run_or_skip(TargetKind::Redis, short(BuiltIn::BlackFriday, 3.0, 30.0)).await else {
        return;
    };
    assert_sound(&report, "redis");
}

/// Redis without persistence: a flash sale (demand 20x stock) sells at most
/// the stock, refuses the rest as INSUFFICIENT_STOCK, and balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nopersist_flash_sale() {
    let Some(report) = run_or_skip(TargetKind::RedisNopersist, short(BuiltIn::FlashSale, 3.0, 30.0)).await
    else {
        return;
    };
    assert_sound(&report, "redis-nopersist");
    assert!(
        report
            .totals
            .errors
            .get("INSUFFICIENT_STOCK")
            .copied()
            .unwrap_or(0)
            > 0,
        "demand above stock was never refused"
    );
}

/// PostgreSQL with synchronous commit: a short black-friday balances and
/// never oversells; the postmaster is stopped afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_black_friday() {
    let Some(report) = run_or_skip(TargetKind::Postgres, short(BuiltIn::BlackFriday, 3.0, 20.0)).await else {
        return;
    };
    assert_sound(&report, "postgres");
}

/// The operations' contract on one store, through the common [`Target`]
/// interface: all-or-nothing reserves, a retried request id takes nothing
/// twice, confirm and release are idempotent, a confirm after the hold time
/// is refused, and an expired hold's units come back.
async fn check_semantics(target: &Target, what: &str) {
    let mut scenario = short(BuiltIn::Steady, 2.0, 1.0);
    scenario.catalog.skus = 2;
    scenario.catalog.stock_min = 3;
    scenario.catalog.stock_factor = 0.0;
    let catalog = Catalog::new(&scenario, "sem");
    target.stock(&catalog).await.expect("stock");
    let a = catalog.skus[0].sku.clone();
    let b = catalog.skus[1].sku.clone();
    let ttl_long = 60_000;
    let two_a = vec![(a.clone(), 2)];
    let id = target
        .reserve(0, "r1", &two_a, ttl_long, 0)
        .await
        .expect("first reserve");
    // The same request id again (a retry) answers OK and takes nothing more.
    target
        .reserve(1, "r1", &two_a, ttl_long, 0)
        .await
        .expect("retried reserve");
    let short_a = target.reserve(0, "r2", &two_a, ttl_long, 0).await.unwrap_err();
    assert_eq!(short_a.reason, reason::INSUFFICIENT_STOCK, "{what}");
    // All or nothing: b has stock, a does not; nothing of b is taken.
    let mixed = vec![(a.clone(), 2), (b.clone(), 3)];
    let e = target.reserve(2, "r3", &mixed, ttl_long, 0).await.unwrap_err();
    assert_eq!(e.reason, reason::INSUFFICIENT_STOCK, "{what}");
    let all_b = vec![(b.clone(), 3)];
    let hold_b = target
        .reserve(0, "r4", &all_b, ttl_long, 0)
        .await
        .expect("all of b");
    target.confirm(0, &id, "o-1").await.expect("confirm");
    target.confirm(1, &id, "o-1").await.expect("confirm again");
    target
        .release(0, &id)
        .await
        .expect("release after confirm is a no-op");
    target.release(0, &hold_b).await.expect("release");
    target.release(0, &hold_b).await.expect("release again");
    // A short hold: a confirm after its time is refused, and its unit comes back.
    let one_a = vec![(a.clone(), 1)];
    let brief = target.reserve(0, "r5", &one_a, 150, 0).await.expect("short hold");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = target.confirm(0, &brief, "o-2").await.unwrap_err();
    assert!(
        [reason::RESERVATION_EXPIRED, reason::RESERVATION_NOT_FOUND].contains(&late.reason.as_str()),
        "{what}: {late:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let books = target
        .reconcile(&catalog, &Default::default(), deadline, true)
        .await
        .expect("books");
    assert!(books.balanced, "{what}: {:?}", books.notes);
    let sa = &books.skus[&a];
    assert_eq!(
        (sa.stocked, sa.available, sa.held, sa.sold),
        (3, 1, 0, 2),
        "{what}: {a}"
    );
    let sb = &books.skus[&b];
    assert_eq!(
        (sb.stocked, sb.available, sb.held, sb.sold),
        (3, 3, 0, 0),
        "{what}: {b}"
    );
}

/// Redis (durable): the operations keep their contract, and the server runs
/// with `appendonly yes` and `appendfsync always`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_semantics_and_durability() {
    let redis = match RedisTarget::start(Persistence::Durable, 3, 2).await {
        Ok(r) => r,
        Err(TargetError::Absent(why)) => {
            eprintln!("SKIPPED redis: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let client = redis::Client::open(format!("redis://{}/", redis.addr())).expect("a redis address");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    for (key, want) in [("appendonly", "yes"), ("appendfsync", "always")] {
        let items: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("CONFIG GET");
        assert_eq!(items.get(1).map(String::as_str), Some(want), "{key}: {items:?}");
    }
    let pid = redis.server_pid().await.expect("a running server");
    let target = Target::Redis(redis);
    check_semantics(&target, "redis").await;
    target.shutdown().await;
    assert!(!alive(pid), "redis-server {pid} still running after shutdown");
}

/// PostgreSQL: the operations keep their contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_semantics() {
    let pg = match PostgresTarget::start(3, 2).await {
        Ok(p) => p,
        Err(TargetError::Absent(why)) => {
            eprintln!("SKIPPED postgres: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let pid = pg.server_pid().await.expect("a running server");
    let target = Target::Postgres(pg);
    check_semantics(&target, "postgres").await;
    target.shutdown().await;
    assert!(!alive(pid), "postgres {pid} still running after shutdown");
}
