//! The three-region cluster under load while things break: a region cut
//! off from the others, and the ledger's leader killed with SIGKILL. The
//! failure contract (docs/architecture.md, "The failure contract"): every
//! region keeps reserving on its own tokens, nothing is oversold, nothing
//! acknowledged is lost, and once the fault is over settlement catches up
//! and the books balance to the unit.
//!
//! The tests of this file run one at a time (see [`one_at_a_time`]): nine
//! debug node processes and their load already fill two cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, Progress, REBALANCE_DEADLINE, REGIONS,
    RETRY_DEADLINE, Record, Rotation, SETTLE_DEADLINE, ShopLog, Shopper, ShopperOptions, assert_balanced,
    is_confirmed, is_held, one_at_a_time, region_sheet, resolve, retry, sku_sheet, units, verify_records,
};

/// Shoppers per region.
const SHOPPERS_PER_REGION: usize = 2;
/// Acknowledged reserves each region must reach before a fault, during it,
/// and after it.
const ACKS_PER_PHASE: u64 = 25;
/// Acknowledged reserves each region must reach while cut off: a few
/// seconds of load, many rebalancer rounds without the region.
const ACKS_WHILE_CUT_OFF: u64 = 80;
/// How long a region may take to reach them.
const PHASE_DEADLINE: Duration = Duration::from_secs(30);
/// Units of `moving` each stock request of the stocker adds.
const STOCKER_UNITS: u64 = 5;
/// Most stock requests the stocker sends.
const STOCKER_REQUESTS_MAX: u64 = 300;
/// The stocker's pause between two requests.
const STOCKER_PACING: Duration = Duration::from_millis(100);
/// Longest the load may run, whatever happens.
const LOAD_MAX: Duration = Duration::from_secs(90);

/// A region cut off under load keeps reserving on its own tokens while the others keep working; nothing is oversold or lost, and after healing settlement catches up and the audit balances with zero drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_region_keeps_selling_and_books_balance_after_heal() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default()).await;
    // `plenty` never runs out; `scarce` sells out under this load, so the
    // cap on what can be sold is really tested.
    let skus = [("plenty", 1_500u64), ("scarce", 60u64)];
    for (sku, stock) in skus {
        cluster.add_stock(sku, stock as i64).await;
        cluster
            .wait_available(sku, REBALANCE_DEADLINE, "every unit in a region", |a| {
                a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == stock
            })
            .await;
    }
    let caps = skus;
    let shoppers = start_shoppers(&cluster, "part", &["plenty", "scarce"]);
    let progress: Vec<(&str, &Progress)> = shoppers.iter().map(|(r, s)| (*r, &*s.progress)).collect();
    wait_acks(&progress, &caps, ACKS_PER_PHASE, "before the partition").await;

    // The control API acts only for a caller with its token and the JSON
    // content type (a web page in a browser can send neither): a partition
    // without the token, and a heal without the content type, change nothing.
    let body = r#"{"region":"ap-south"}"#;
    let (code, _) =
        reservoir_tests::http_post(cluster.control(), "/links/partition", body, None, CONTROL_TIMEOUT)
            .await
            .expect("the control API answers");
    assert_eq!(code, 401, "a partition without the token");
    assert_eq!(control_without_json(&cluster, "/links/partition").await, 415);
    assert!(cluster.links().await.iter().all(|l| !l.cut), "nothing was cut");

    cluster.partition_region("ap-south").await;
    let cut_at = Instant::now();
    wait_acks(&progress, &caps, ACKS_PER_PHASE, "during the partition").await;
    // The ledger sees ap-south as unreachable: its tokens are stranded, and
    // the audit cannot vouch for it.
    let give_up = Instant::now() + REBALANCE_DEADLINE;
    loop {
        let status = cluster.cluster_status().await;
        let ap = status.regions.iter().find(|r| r.region == "ap-south");
        let stranded: u64 = status.skus.iter().map(|s| s.stranded).sum();
        if ap.is_some_and(|r| !r.healthy) && stranded > 0 {
            eprintln!("ap-south unreachable, {stranded} tokens stranded");
            break;
        }
        assert!(
            Instant::now() < give_up,
            "ap-south not reported cut off: {status:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // What the audit can still see agrees: no drift in the ledger's own
    // books, the regions it reaches, or the whole (the cut-off region counted
    // at the ledger's belief).
    let report = cluster.audit().await;
    assert!(
        !report.balanced,
        "an audit without ap-south cannot vouch for it: {report:?}"
    );
    assert_eq!(report.missing_regions, vec!["ap-south".to_string()], "{report:?}");
    for sheet in &report.skus {
        assert_eq!(sheet.ledger_drift, 0, "{sheet:?}");
        // The cut-off region is counted at what the ledger believes it holds.
        assert_eq!(sheet.drift, 0, "{sheet:?}");
        let seen: Vec<&str> = sheet.regions.iter().map(|r| r.region.as_str()).collect();
        assert_eq!(seen, ["eu-west", "us-east"], "{sheet:?}");
        assert!(sheet.regions.iter().all(|r| r.drift == 0), "{sheet:?}");
    }
    let ap_south = cluster.region_status("ap-south").await;
    assert!(
        ap_south.outbox_last_seq > ap_south.settled_up_to,
        "ap-south's confirms wait in its outbox: {ap_south:?}"
    );
    // Keep it cut off a while longer, under load.
    wait_acks(&progress, &caps, ACKS_WHILE_CUT_OFF, "later in the partition").await;
    eprintln!("partition held for {:?}", cut_at.elapsed());

    cluster.heal().await;
    wait_acks(&progress, &caps, ACKS_PER_PHASE, "after healing").await;
    let sold_out: u64 = progress
        .iter()
        .map(|(_, p)| p.sold_out.load(Ordering::SeqCst))
        .sum();
    let records = finish(&cluster, shoppers).await;
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    cluster.wait_no_settlement_lag(SETTLE_DEADLINE).await;
    check_books(&report, &records, &skus);
    let scarce_taken = units(&records, None, "scarce", |s| is_held(s) || is_confirmed(s));
    eprintln!(
        "{} reservations; scarce: {scarce_taken} of 60 units held or sold, {sold_out} reserves sold out",
        records.len()
    );
    assert!(sold_out > 0, "scarce never sold out: the cap was not tested");
    verify_records(&cluster, &records).await;
    assert_balanced(&cluster.audit().await);
    eprintln!("test took {:?}", started.elapsed());
}

/// SIGKILL of the ledger leader under load: every region keeps reserving, a new ledger leader takes over rebalancing and settlement, and no transfer or settlement counts twice (zero drift, settled total equal to the confirmed units).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_leader_killed_under_load() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions {
        nodes_per_region: 3,
        wan: reservoir_tests::WanProfile::Aws,
        ..ClusterOptions::default()
    })
    .await;
    cluster.add_stock("plenty", 1_500).await;
    cluster
        .wait_available("plenty", REBALANCE_DEADLINE, "every unit in a region", |a| {
            a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == 1_500
        })
        .await;
    // Stock of `moving` arrives all along, so the rebalancer always has
    // grants to run, some of them in flight when the leader dies; each stock
    // request is retried with its request id through the failover.
    let stop_stocker = Arc::new(AtomicBool::new(false));
    let stocker = tokio::spawn(stocker(cluster.admin_rotation(), stop_stocker.clone()));
    let caps = [("plenty", 1_500)];
    let shoppers = start_shoppers(&cluster, "kill", &["plenty", "moving"]);
    let progress: Vec<(&str, &Progress)> = shoppers.iter().map(|(r, s)| (*r, &*s.progress)).collect();
    wait_acks(&progress, &caps, ACKS_PER_PHASE, "before the kill").await;

    let leader = cluster.ledger_leader().await;
    let status = cluster.cluster_status().await;
    assert_eq!(
        status.ledger_leader_id, leader,
        "GetStatus names the ledger leader"
    );
    let settled_before = sku_sheet(&cluster.audit().await, "plenty").settled_total;
    // Kill it the moment the ledger shows a transfer in flight, so that the
    // successor has one to finish (likely, not certain: it may complete
    // between the look and the kill).
    let give_up = Instant::now() + REBALANCE_DEADLINE;
    let in_flight = loop {
        let status = cluster.cluster_status().await;
        let in_flight: u64 = status.skus.iter().map(|s| s.transfers_in_flight).sum();
        if in_flight > 0 || Instant::now() >= give_up {
            break in_flight;
        }
    };
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    wait_acks(
        &progress,
        &caps,
        ACKS_PER_PHASE,
        "after the ledger leader's death",
    )
    .await;
    eprintln!(
        "every region reserved {ACKS_PER_PHASE} more within {:?} of the kill",
        killed_at.elapsed()
    );
    let successor = cluster.ledger_leader().await;
    assert_ne!(successor, leader, "the killed node cannot lead");
    eprintln!(
        "ledger leader {leader} killed ({in_flight} transfers in flight just before); {successor} leads after {:?}",
        killed_at.elapsed()
    );

    // The new leader rebalances: fresh stock reaches every region...
    cluster.add_stock("fresh", 90).await;
    cluster
        .wait_available("fresh", REBALANCE_DEADLINE, "every unit in a region", |a| {
            a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == 90
        })
        .await;
    // ...and settles: the settled total moves past where the old leader left it.
    let give_up = Instant::now() + SETTLE_DEADLINE;
    loop {
        let settled = sku_sheet(&cluster.audit().await, "plenty").settled_total;
        if settled > settled_before {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no settlement since the kill ({settled})"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let status = cluster.cluster_status().await;
    assert_eq!(
        status.ledger_leader_id, successor,
        "GetStatus names the new leader"
    );

    // The killed node comes back through the control API and rejoins.
    cluster.restart(leader).await;
    wait_acks(&progress, &caps, ACKS_PER_PHASE, "after the restart").await;
    stop_stocker.store(true, Ordering::SeqCst);
    let stock_requests = stocker.await.expect("the stocker panicked");
    let skus = [
        ("plenty", 1_500),
        ("fresh", 90),
        ("moving", STOCKER_UNITS * stock_requests),
    ];
    eprintln!("stocker: {stock_requests} stock requests acknowledged");
    let records = finish(&cluster, shoppers).await;
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    check_books(&report, &records, &skus);
    verify_records(&cluster, &records).await;
    let leader_now = cluster.ledger_leader().await;
    eprintln!(
        "{} reservations; ledger leader now {leader_now}; {} nodes in us-east up",
        records.len(),
        cluster.live_ids_in(HOME_REGION).len()
    );
    assert_balanced(&cluster.audit().await);
    eprintln!("test took {:?}", started.elapsed());
}

/// Adds [`STOCKER_UNITS`] of `moving` every [`STOCKER_PACING`] until told to
/// stop, each request retried (same request id) until acknowledged; returns
/// how many were sent, every one of them acknowledged.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// The status of a control-API POST with the token but no content type.
async fn control_without_json(cluster: &Cluster, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let file = cluster
        .file()
        .control_token_file
        .clone()
        .expect("up names its control token");
    let token = std::fs::read_to_string(cluster.dir().join(file)).expect("the control token");
    let mut stream = tokio::net::TcpStream::connect(cluster.control())
        .await
        .expect("control API");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: control\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        token.trim()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::time::timeout(CONTROL_TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

async fn stocker(nodes: Rotation, stop: Arc<AtomicBool>) -> u64 {
    let mut sent = 0;
    while sent < STOCKER_REQUESTS_MAX && !stop.load(Ordering::SeqCst) {
        let request = v1::AdjustStockRequest {
            request_id: format!("stocker-{sent}"),
            sku: "moving".into(),
            delta: STOCKER_UNITS as i64,
        };
        let answer = retry(&nodes, RETRY_DEADLINE, |channel| {
            let request = request.clone();
            async move { AdminClient::new(channel).adjust_stock(request).await }
        })
        .await;
        answer
            .result
            .unwrap_or_else(|s| panic!("{}: not acknowledged: {s:?}", request.request_id));
        sent += 1;
        tokio::time::sleep(STOCKER_PACING).await;
    }
    sent
}

/// Starts [`SHOPPERS_PER_REGION`] shoppers in every region.
fn start_shoppers(cluster: &Cluster, name: &str, skus: &[&str]) -> Vec<(&'static str, Shopper)> {
    let mut shoppers = Vec::new();
    for region in REGIONS {
        for i in 0..SHOPPERS_PER_REGION {
            let mut o = ShopperOptions::new(format!("{name}-{region}-{i}"), region, skus);
            o.run_max = LOAD_MAX;
            shoppers.push((region, Shopper::start(cluster, i, o)));
        }
    }
    shoppers
}

/// Waits until every region's shoppers together have `more` acknowledged
/// reserves beyond their count now; meanwhile checks that the units they
/// were acknowledged, held or sold, never exceed the stock (`caps`).
async fn wait_acks(progress: &[(&str, &Progress)], caps: &[(&str, u64)], more: u64, phase: &str) {
    let count = |region: &str| -> u64 {
        progress
            .iter()
            .filter(|(r, _)| *r == region)
            .map(|(_, p)| p.acks())
            .sum()
    };
    let targets: Vec<u64> = REGIONS.iter().map(|r| count(r) + more).collect();
    let started = Instant::now();
    loop {
        for (sku, stock) in caps {
            let taken: u64 = progress.iter().map(|(_, p)| p.taken(sku)).sum();
            assert!(
                taken <= *stock,
                "{phase}: {taken} units of {sku} acknowledged held or sold, of {stock} stocked"
            );
        }
        let now: Vec<u64> = REGIONS.iter().map(|r| count(r)).collect();
        if now.iter().zip(&targets).all(|(n, t)| n >= t) {
            return;
        }
        assert!(
            progress.iter().all(|(_, p)| !p.done.load(Ordering::SeqCst)),
            "a shopper ran out of reserves or time {phase}: raise its bounds"
        );
        assert!(
            started.elapsed() < PHASE_DEADLINE,
            "{phase}: acknowledged reserves {now:?} did not reach {targets:?} in {REGIONS:?} within {PHASE_DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Stops the shoppers, learns every unanswered call's outcome, and returns
/// every acknowledged reservation.
async fn finish(cluster: &Cluster, shoppers: Vec<(&str, Shopper)>) -> Vec<Record> {
    let mut logs: Vec<ShopLog> = Vec::new();
    for (_, shopper) in shoppers {
        let log = shopper.finish().await;
        eprintln!(
            "{}: {} acknowledged, {} sold out, {} unanswered; retried {:?}",
            log.region,
            log.records.len(),
            log.sold_out,
            log.unknown.len(),
            log.retried
        );
        logs.push(log);
    }
    resolve(cluster, logs).await
}

/// The audit accounts for every acknowledged unit exactly: per region, held
/// tokens equal the acknowledged holds; the settled total equals the
/// confirmed units; stock is what was added; nothing is oversold.
fn check_books(report: &reservoir_proto::v1::AuditReport, records: &[Record], skus: &[(&str, u64)]) {
    assert_balanced(report);
    for &(sku, stock) in skus {
        let sheet = sku_sheet(report, sku);
        assert_eq!(sheet.stocked_total, stock, "{sku}: {sheet:?}");
        let confirmed = units(records, None, sku, is_confirmed);
        assert_eq!(
            sheet.settled_total, confirmed,
            "{sku}: settled vs confirmed units"
        );
        let mut held = 0;
        for region in REGIONS {
            let row = region_sheet(sheet, region);
            let acked = units(records, Some(region), sku, is_held);
            assert_eq!(row.held, acked, "{sku} held in {region}: {row:?}");
            assert_eq!(row.confirmed, 0, "{sku} unsettled in {region}: {row:?}");
            held += acked;
        }
        assert!(
            held + confirmed <= stock,
            "{sku} oversold: {held} held + {confirmed} sold > {stock} stocked"
        );
    }
}
