//! The three-region cluster of `reservoir up` doing its everyday work: stock
//! added at the ledger flows to every region, shoppers reserve and confirm
//! in all three at local latency over an emulated WAN, sales settle into the
//! ledger, demand pulls tokens to the region that sells, and `up` stops
//! without leaving a process behind and comes back on its data.
//!
//! The tests of this file run one at a time (see [`one_at_a_time`]): each
//! starts its own cluster, and the latency test must not share two cores
//! with another cluster's load.

use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    Cluster, ClusterOptions, POLL_INTERVAL, REBALANCE_DEADLINE, REGIONS, RETRY_DEADLINE, Record,
    SETTLE_DEADLINE, Seen, Shopper, ShopperOptions, UpNode, WanProfile, assert_balanced, is_confirmed,
    is_held, line, one_at_a_time, region_sheet, reserve_request, resolve, sku_sheet, units, verify_records,
};

/// Reserves timed in ap-south for the latency check.
const LATENCY_SAMPLES: usize = 15;
/// The most a median reserve in ap-south may take: far under the 186 ms
/// round trip to the ledger's region, so the hot path cannot be crossing it.
const LOCAL_MEDIAN_MAX: Duration = Duration::from_millis(60);
/// The least a call that must reach the ledger from ap-south can take: the
/// emulated us-east↔ap-south round trip.
const WAN_ROUND_TRIP_MIN: Duration = Duration::from_millis(186);

/// Stock added at the ledger reaches all three regions, reserves in ap-south answer at local latency over the AWS WAN profile, confirms in every region settle into the ledger, and the audit balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reaches_every_region_and_sales_settle_over_the_wan() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        wan: WanProfile::Aws,
        ..ClusterOptions::default()
    })
    .await;
    let skus = [("tee", 300u64), ("cap", 90u64)];
    for (sku, stock) in skus {
        let answer = cluster.add_stock(sku, stock as i64).await;
        assert_eq!(
            (answer.stocked_total, answer.available),
            (stock, stock),
            "{answer:?}"
        );
    }
    // The rebalancer splits the pool over the regions (evenly: no demand yet).
    for (sku, stock) in skus {
        let spread = cluster
            .wait_available(sku, REBALANCE_DEADLINE, "every unit in a region", |a| {
                a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == stock
            })
            .await;
        eprintln!("{sku}: {spread:?} in {REGIONS:?} after {:?}", started.elapsed());
    }
    let before = cluster.audit().await;
    assert_balanced(&before);
    for (sku, stock) in skus {
        let sheet = sku_sheet(&before, sku);
        assert_eq!(
            (sheet.stocked_total, sheet.pool, sheet.settled_total),
            (stock, 0, 0),
            "{sheet:?}"
        );
    }

    // The hot path stays in the region: reserves in ap-south, one at a time.
    let ap_south = cluster.ids_in("ap-south")[0];
    let mut inventory = cluster.inventory(ap_south);
    let mut latencies = Vec::new();
    let mut timed = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let request = reserve_request(format!("latency-{i}"), vec![line("tee", 1)]);
        let sent = Instant::now();
        let answer = inventory.reserve(request.clone()).await;
        latencies.push(sent.elapsed());
        let reservation = answer
            .unwrap_or_else(|s| panic!("reserve {i} in ap-south: {s:?}"))
            .into_inner()
            .reservation
            .expect("a reserve answers with the reservation");
        timed.push(Record {
            region: "ap-south".into(),
            request,
            reservation,
            seen: Seen::Held,
            pending: None,
        });
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // A call that has to reach the ledger from ap-south crosses the WAN.
    let mut admin = cluster.admin(ap_south);
    let _ = admin.get_status(v1::GetStatusRequest {}).await;
    let sent = Instant::now();
    let status = admin.get_status(v1::GetStatusRequest {}).await;
    let wan_call = sent.elapsed();
    status.unwrap_or_else(|s| panic!("GetStatus through ap-south: {s:?}"));
    eprintln!(
        "ap-south: median reserve {median:?} (min {:?}, max {:?}); GetStatus via the ledger {wan_call:?}",
        latencies[0],
        latencies[latencies.len() - 1]
    );
    assert!(
        median < LOCAL_MEDIAN_MAX,
        "a reserve in ap-south took {median:?} (median of {LATENCY_SAMPLES}): not local latency: {latencies:?}"
    );
    assert!(
        wan_call >= WAN_ROUND_TRIP_MIN,
        "GetStatus from ap-south took {wan_call:?}: the WAN emulator added no round trip"
    );

    // Shoppers in all three regions: every reserve succeeds, a quarter are
    // confirmed, a quarter released.
    let mut shoppers = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let mut o = ShopperOptions::new(format!("flow-{region}"), region, &["tee", "cap"]);
        o.reserves_max = 16;
        o.pacing = Duration::ZERO;
        shoppers.push(Shopper::start(&cluster, i, o));
    }
    let mut logs = Vec::new();
    for shopper in shoppers {
        let log = shopper.join().await;
        assert_eq!(log.sold_out, 0, "{}: a reserve was refused: {log:?}", log.region);
        assert!(log.unknown.is_empty(), "{}: {log:?}", log.region);
        logs.push(log);
    }
    let mut records = resolve(&cluster, logs).await;
    records.extend(timed);
    for region in REGIONS {
        let confirmed = units(&records, Some(region), "tee", is_confirmed)
            + units(&records, Some(region), "cap", is_confirmed);
        assert!(confirmed > 0, "{region} confirmed something");
    }

    // Settlement: the ledger's settled total rises to exactly the confirmed
    // units, every region's lag drains, every confirmed sale reads SETTLED.
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    for (sku, stock) in skus {
        let sheet = sku_sheet(&report, sku);
        let confirmed = units(&records, None, sku, is_confirmed);
        assert_eq!(sheet.stocked_total, stock, "{sku}");
        assert_eq!(
            sheet.settled_total, confirmed,
            "{sku}: settled vs confirmed units"
        );
        for region in REGIONS {
            let row = region_sheet(sheet, region);
            assert_eq!(
                row.held,
                units(&records, Some(region), sku, is_held),
                "{sku} held in {region}: {row:?}"
            );
        }
    }
    cluster.wait_no_settlement_lag(SETTLE_DEADLINE).await;
    verify_records(&cluster, &records).await;
    wait_all_settled(&cluster, &records).await;

    // Availability: each region answers its exact figure and, once gossip
    // has gone round, a global estimate that adds up to every free unit.
    let report = cluster.audit().await;
    for (sku, _) in skus {
        let sheet = sku_sheet(&report, sku);
        let free = sheet.pool + sheet.regions.iter().map(|r| r.available).sum::<u64>();
        for region in REGIONS {
            let local = region_sheet(sheet, region).available;
            wait_availability(&cluster, region, sku, local, free).await;
        }
    }

    assert_balanced(&cluster.audit().await);
    eprintln!("test took {:?}", started.elapsed());
}

/// Demand in ap-south alone pulls tokens there: the other regions' tokens are revoked, and ap-south keeps reserving well past its initial share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_in_one_region_pulls_tokens_there() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default()).await;
    const SKU: &str = "hot";
    const STOCK: u64 = 300;
    const QUANTITY: u64 = 5;
    // 260 units: far past ap-south's even share (100), within what the
    // others can give without going under the floor of 10 tokens each.
    const RESERVES: usize = 52;
    cluster.add_stock(SKU, STOCK as i64).await;
    let initial = cluster
        .wait_available(SKU, REBALANCE_DEADLINE, "an even split", |a| {
            a.iter().sum::<u64>() == STOCK && a.iter().all(|&n| n == STOCK / 3)
        })
        .await;
    eprintln!("initial split {initial:?} after {:?}", started.elapsed());

    let mut o = ShopperOptions::new("hot-ap", "ap-south", &[SKU]);
    o.quantity = QUANTITY;
    o.reserves_max = RESERVES;
    o.follow_ups = false;
    o.pacing = Duration::from_millis(10);
    o.max_wait_ms = 2_000;
    o.sold_out_retry = Duration::from_secs(5);
    let log = Shopper::start(&cluster, 0, o).join().await;
    let waited = log.retried.get("INSUFFICIENT_STOCK").copied().unwrap_or(0);
    eprintln!(
        "ap-south reserved {} x {QUANTITY} after {:?}; reserves sent again after INSUFFICIENT_STOCK: {waited}",
        log.records.len(),
        started.elapsed()
    );
    assert_eq!(
        log.sold_out, 0,
        "ap-south ran dry with stock left elsewhere: {log:?}"
    );
    assert!(log.unknown.is_empty(), "{log:?}");
    assert_eq!(log.records.len(), RESERVES);
    let held = QUANTITY * RESERVES as u64;
    assert!(
        held > initial[2],
        "the test reserves past ap-south's initial share"
    );

    // The tokens moved: ap-south holds more than its share ever was, and
    // the others were revoked below theirs.
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    let sheet = sku_sheet(&report, SKU);
    let ap = region_sheet(sheet, "ap-south");
    assert_eq!(ap.held, held, "{sheet:?}");
    assert!(ap.available + ap.held > initial[2], "{sheet:?}");
    for region in ["us-east", "eu-west"] {
        let row = region_sheet(sheet, region);
        assert!(
            row.available < STOCK / 3,
            "{region} kept its initial share though only ap-south sells: {sheet:?}"
        );
    }
    assert_eq!(sheet.stocked_total, STOCK);
    let records = resolve(&cluster, vec![log]).await;
    verify_records(&cluster, &records).await;
    assert_balanced(&cluster.audit().await);
    eprintln!("test took {:?}", started.elapsed());
}

/// `up` stopped with Ctrl-C (SIGINT) and with SIGTERM leaves no process behind, and a second `up` on the same directory recovers stock, holds, confirms, settled totals and an unsettled outbox, which then settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_stops_cleanly_and_recovers_its_state() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let skus = [("tee", 120u64), ("cap", 60u64)];
    for (sku, stock) in skus {
        cluster.add_stock(sku, stock as i64).await;
        cluster
            .wait_available(sku, REBALANCE_DEADLINE, "every unit in a region", |a| {
                a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == stock
            })
            .await;
    }
    let mut shoppers = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let mut o = ShopperOptions::new(format!("restart-{region}"), region, &["tee", "cap"]);
        o.reserves_max = 12;
        o.pacing = Duration::ZERO;
        shoppers.push(Shopper::start(&cluster, i, o));
    }
    let mut logs = Vec::new();
    for shopper in shoppers {
        logs.push(shopper.join().await);
    }
    let mut records = resolve(&cluster, logs).await;
    let settled_before = cluster.settled_audit(SETTLE_DEADLINE).await;

    // Cut ap-south off and confirm two of its holds there: they wait in its
    // outbox, unsettled, across the restart.
    cluster.partition_region("ap-south").await;
    let ap_south = cluster.rotation_in("ap-south", 0);
    let mut late = 0;
    for record in records
        .iter_mut()
        .filter(|r| r.region == "ap-south" && r.seen == Seen::Held)
    {
        let order_id = format!("late-order-{late}");
        let id = record.reservation.reservation_id.clone();
        let answer = reservoir_tests::confirm(&ap_south, &id, &order_id, RETRY_DEADLINE).await;
        let reservation = answer.result.unwrap_or_else(|s| panic!("confirm {id}: {s:?}"));
        record.seen = Seen::Confirmed(reservation.order_id);
        late += 1;
        if late == 2 {
            break;
        }
    }
    assert_eq!(late, 2, "ap-south had two holds to confirm");
    let ap_before = cluster.region_status("ap-south").await;
    assert!(
        ap_before.outbox_last_seq > ap_before.settled_up_to,
        "the late confirms are unsettled: {ap_before:?}"
    );
    let mut regions_before = Vec::new();
    for region in REGIONS {
        regions_before.push(cluster.region_status(region).await);
    }

    // Ctrl-C: every process goes, none is left.
    let pids: Vec<u32> = cluster.file().nodes.iter().map(|n| n.pid()).collect();
    cluster.stop(libc::SIGINT).await;
    eprintln!(
        "stopped with SIGINT after {:?}; pids {pids:?} gone",
        started.elapsed()
    );

    cluster.start_again().await;
    assert!(
        cluster.file().nodes.iter().all(|n| !pids.contains(&n.pid())),
        "a second up runs new processes"
    );
    let links = cluster.links().await;
    assert!(
        links.iter().all(|l| !l.cut),
        "a new up starts with every link up: {links:?}"
    );
    // The ledger came back with its books: stock and settled totals.
    let report = cluster.audit().await;
    for (sku, stock) in skus {
        let sheet = sku_sheet(&report, sku);
        let before = sku_sheet(&settled_before, sku);
        assert_eq!(sheet.stocked_total, stock, "{sku}: {sheet:?}");
        assert!(
            sheet.settled_total >= before.settled_total,
            "{sku}: settled total fell from {} to {}",
            before.settled_total,
            sheet.settled_total
        );
    }
    // Every region came back with its holds, confirms and outbox.
    for (region, before) in REGIONS.iter().zip(&regions_before) {
        let after = cluster.region_status(region).await;
        assert_eq!(after.holds, before.holds, "{region}: holds");
        assert_eq!(after.next_expiry_ms, before.next_expiry_ms, "{region}: expiry");
        assert_eq!(after.outbox_last_seq, before.outbox_last_seq, "{region}: outbox");
        for (sku, bucket) in &before.buckets {
            assert_eq!(after.buckets[sku].held, bucket.held, "{region} {sku} held");
        }
    }
    verify_records(&cluster, &records).await;
    // The late confirms settle now, and the totals are exact.
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    for (sku, stock) in skus {
        let sheet = sku_sheet(&report, sku);
        assert_eq!(sheet.stocked_total, stock);
        assert_eq!(
            sheet.settled_total,
            units(&records, None, sku, is_confirmed),
            "{sku}"
        );
        for region in REGIONS {
            assert_eq!(
                region_sheet(sheet, region).held,
                units(&records, Some(region), sku, is_held),
                "{sku} held in {region}"
            );
        }
    }
    let ap_after = cluster.region_status("ap-south").await;
    assert_eq!(ap_after.settled_up_to, ap_after.outbox_last_seq, "{ap_after:?}");
    assert_balanced(&cluster.audit().await);

    // SIGTERM too leaves nothing behind.
    cluster.stop(libc::SIGTERM).await;
    eprintln!("test took {:?}", started.elapsed());
}

/// Polls until every confirmed record reads SETTLED in its region.
async fn wait_all_settled(cluster: &Cluster, records: &[Record]) {
    let give_up = Instant::now() + SETTLE_DEADLINE;
    for record in records.iter().filter(|r| is_confirmed(&r.seen)) {
        let id = &record.reservation.reservation_id;
        loop {
            let found = cluster
                .get(&record.region, id)
                .await
                .unwrap_or_else(|s| panic!("{id}: {s:?}"));
            if found.state() == v1::ReservationState::Settled {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "{id} not settled within {SETTLE_DEADLINE:?}: {found:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Polls `GetAvailability` of `sku` in `region` until it reports the
/// region's exact `local` figure and a global estimate of `free` units.
async fn wait_availability(cluster: &Cluster, region: &str, sku: &str, local: u64, free: u64) {
    let give_up = Instant::now() + REBALANCE_DEADLINE;
    let nodes = cluster.rotation_in(region, 0);
    loop {
        let request = v1::GetAvailabilityRequest { sku: sku.to_string() };
        let answer = reservoir_tests::retry(&nodes, RETRY_DEADLINE, |channel| {
            let request = request.clone();
            async move { InventoryClient::new(channel).get_availability(request).await }
        })
        .await
        .result
        .unwrap_or_else(|s| panic!("GetAvailability in {region}: {s:?}"));
        let everywhere = REGIONS
            .iter()
            .all(|r| answer.available_by_region.contains_key(*r));
        if answer.local_available == local && answer.global_available_estimate == free && everywhere {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{region}: availability of {sku} not {local} local / {free} global: {answer:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
