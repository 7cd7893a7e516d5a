//! One region in trouble does not stall the others (docs/architecture.md,
//! "The ledger leader's loop"): eu-west's node is configured to take one
//! proposal at a time and queue one more, then flooded with reserves of
//! several SKUs, so its proposal queue is full most of the time and the
//! ledger's grants to it (one per SKU) keep failing with `OVERLOADED`, while
//! its reports (reads) still answer. With those grants in flight, ap-south's
//! confirmed sales must still settle and a top-up must still reach it; once
//! the flood stops, the books balance.
//!
//! And a region whose outbox would not fit one control message (ap-south,
//! cut off while it confirms thousands of the longest carts) is settled in
//! pages once it is back.
//!
//! A queue of one is not full at every instant: a single grant gets through
//! about every other try. A round that needed every grant to eu-west to go
//! through (as rounds did before they were isolated per region) almost
//! never does with six of them in flight at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reservoir_client::reason_of;
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    Cluster, ClusterOptions, POLL_INTERVAL, REBALANCE_DEADLINE, RETRY_DEADLINE, Rotation, SETTLE_DEADLINE,
    UpNode, assert_balanced, confirm, http_get, line, one_at_a_time, refusal, reserve, reserve_request,
    retry, sku_sheet,
};
use reservoir_tokens::limits::{LINES_PER_RESERVATION_MAX, ORDER_ID_BYTES_MAX, SKU_BYTES_MAX};
use tonic::Code;

/// Concurrent reserve loops against eu-west's node.
const FLOOD_TASKS: usize = 24;
/// The SKUs eu-west is flooded with (each reserve holds one of each), so the
/// ledger has one grant per SKU for it.
const HOT: [&str; 6] = ["hot-0", "hot-1", "hot-2", "hot-3", "hot-4", "hot-5"];
/// Grants for eu-west in flight at once before ap-south is watched.
const GRANTS_IN_FLIGHT_MIN: u64 = 4;
/// How long a flooded hold lives (expiry also goes through the queue).
const FLOOD_TTL_MS: u64 = 2_000;
/// Longest the flood runs, whatever happens.
const FLOOD_MAX: Duration = Duration::from_secs(150);
/// Units of each hot SKU each round of the stocker adds, so the ledger
/// keeps having grants for eu-west to begin.
const STOCKER_UNITS: i64 = 2;
/// The stocker's pause between two requests.
const STOCKER_PACING: Duration = Duration::from_millis(250);
/// Sales ap-south confirms while eu-west is saturated, one at a time, each
/// of which must settle within [`CHECK_DEADLINE`].
const CHECKS: usize = 4;
/// How long a sale or a top-up in a healthy region may wait: a few rounds
/// (a round starts every 250 ms).
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// How long the flood has to put a grant for eu-west in flight.
const SATURATE_DEADLINE: Duration = Duration::from_secs(40);

/// Carts of the longest kind ap-south confirms while cut off from the
/// ledger: about 5.3 KB an outbox entry, so over 17 MB of outbox, more than
/// the control message limit (16 MiB) in one report.
const LONG_CARTS: u64 = 3_300;
/// Concurrent reserve-and-confirm loops in ap-south.
const CART_TASKS: u64 = 16;
/// How long the long carts may take to be sold (debug build, two cores).
const CARTS_DEADLINE: Duration = Duration::from_secs(240);

/// A region whose outbox would exceed the control message limit in one report (thousands of the longest carts confirmed while cut off from the ledger) is settled page by page after healing: every sale settled once, the audit balanced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_over_the_message_limit_settles_in_pages() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let skus: Vec<String> = (0..LINES_PER_RESERVATION_MAX).map(long_sku).collect();
    // Without demand the stock is shared among the regions: three regions'
    // worth, so ap-south holds a unit of every SKU for every cart.
    for sku in &skus {
        cluster.add_stock(sku, (3 * LONG_CARTS) as i64).await;
    }
    let give_up = Instant::now() + REBALANCE_DEADLINE * 3;
    loop {
        let status = cluster.region_status("ap-south").await;
        let short = skus
            .iter()
            .filter(|sku| status.buckets.get(*sku).map_or(0, |b| b.available) < LONG_CARTS)
            .count();
        if short == 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "ap-south holds fewer than {LONG_CARTS} of {short} SKUs: {:?}",
            status.buckets
        );
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }
    eprintln!("stock in place after {:?}", started.elapsed());

    cluster.partition_region("ap-south").await;
    let selling = Instant::now();
    let tasks: Vec<_> = (0..CART_TASKS)
        .map(|task| {
            let nodes = cluster.rotation_in("ap-south", task as usize);
            let skus = skus.clone();
            tokio::spawn(async move {
                let mut n = task;
                while n < LONG_CARTS {
                    assert!(selling.elapsed() < CARTS_DEADLINE, "the long carts took too long");
                    let lines = skus.iter().map(|sku| line(sku, 1)).collect();
                    let held = reserve(
                        &nodes,
                        &reserve_request(format!("long-{n}"), lines),
                        RETRY_DEADLINE,
                    )
                    .await
                    .result
                    .unwrap_or_else(|s| panic!("long cart {n}: {s:?}"));
                    let order = format!("order-{n:08}-");
                    let order = format!("{order}{}", "o".repeat(ORDER_ID_BYTES_MAX - order.len()));
                    confirm(&nodes, &held.reservation_id, &order, RETRY_DEADLINE)
                        .await
                        .result
                        .unwrap_or_else(|s| panic!("long cart {n}: {s:?}"));
                    n += CART_TASKS;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a cart task");
    }
    let status = cluster.region_status("ap-south").await;
    assert_eq!(
        status.outbox_last_seq - status.settled_up_to,
        LONG_CARTS,
        "every long cart waits in ap-south's outbox"
    );
    eprintln!("{LONG_CARTS} long carts confirmed in {:?}", selling.elapsed());

    cluster.heal().await;
    let healed = Instant::now();
    let status = wait_settled(&cluster, "ap-south", SETTLE_DEADLINE).await;
    eprintln!(
        "ap-south's outbox of {} settled {:?} after healing",
        status.outbox_last_seq,
        healed.elapsed()
    );
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    for sku in &skus {
        assert_eq!(sku_sheet(&report, sku).settled_total, LONG_CARTS, "{sku}");
    }
    cluster.wait_no_settlement_lag(SETTLE_DEADLINE).await;
    eprintln!("test took {:?}", started.elapsed());
}

/// The longest SKU there may be, numbered.
fn long_sku(i: usize) -> String {
    let head = format!("long-{i:02}-");
    format!("{head}{}", "x".repeat(SKU_BYTES_MAX - head.len()))
}

/// A saturated eu-west (queue full) with a grant to it in flight: ap-south still gets its sales settled and a top-up, and after the flood the audit balances with zero drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_region_does_not_stall_settlement_or_top_ups_elsewhere() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let eu = cluster.ids_in("eu-west")[0];
    cluster.kill(eu).await;
    saturable_config(&cluster.dir().join(format!("node-{eu}.toml")));
    cluster.restart(eu).await;

    let stocks = HOT
        .iter()
        .map(|&sku| (sku, 60u64))
        .chain([("south", 300), ("topped", 30)]);
    for (sku, stock) in stocks {
        cluster.add_stock(sku, stock as i64).await;
        cluster
            .wait_available(sku, REBALANCE_DEADLINE, "every unit in a region", |a| {
                a.iter().all(|&n| n > 0) && a.iter().sum::<u64>() == stock
            })
            .await;
    }

    // Saturate eu-west, and keep stock of the hot SKUs arriving so the
    // ledger keeps having grants for it.
    let stop = Arc::new(AtomicBool::new(false));
    let overloaded = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..FLOOD_TASKS)
        .map(|i| tokio::spawn(flood(cluster.inventory(eu), i, stop.clone(), overloaded.clone())))
        .collect();
    let stocker = tokio::spawn(stocker(cluster.admin_rotation(), stop.clone()));
    let give_up = Instant::now() + SATURATE_DEADLINE;
    loop {
        let report = cluster.audit().await;
        let in_flight = HOT
            .iter()
            .filter(|&&sku| sku_sheet(&report, sku).in_flight_grants > 0)
            .count() as u64;
        let refused = overloaded.load(Ordering::SeqCst);
        if in_flight >= GRANTS_IN_FLIGHT_MIN && refused > 0 {
            eprintln!(
                "eu-west saturated ({refused} reserves refused OVERLOADED), grants of {in_flight} SKUs to it in flight"
            );
            break;
        }
        assert!(
            Instant::now() < give_up,
            "not {GRANTS_IN_FLIGHT_MIN} grants for eu-west in flight while flooded within {SATURATE_DEADLINE:?} \
             ({in_flight} in flight, {refused} OVERLOADED)"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let saturated_at = Instant::now();
    let ledger = cluster.ledger_leader().await;
    let rounds_stopped = metric_sum(&cluster, ledger, "reservoir_rebalance_rounds_failed_total", "").await;

    // ap-south's sales settle, one after another.
    let ap_south = cluster.rotation_in("ap-south", 0);
    for n in 0..CHECKS {
        let held = reserve(
            &ap_south,
            &reserve_request(format!("south-{n}"), vec![line("south", 1)]),
            RETRY_DEADLINE,
        )
        .await
        .result
        .expect("ap-south reserves");
        confirm(
            &ap_south,
            &held.reservation_id,
            &format!("order-south-{n}"),
            RETRY_DEADLINE,
        )
        .await
        .result
        .expect("ap-south confirms");
        let sold_at = Instant::now();
        let status = wait_settled(&cluster, "ap-south", CHECK_DEADLINE).await;
        eprintln!(
            "ap-south sale {n} settled in {:?} (outbox {} settled {}), {} OVERLOADED so far",
            sold_at.elapsed(),
            status.outbox_last_seq,
            status.settled_up_to,
            overloaded.load(Ordering::SeqCst)
        );
    }

    // A top-up reaches ap-south: it sells out of `topped`, is refused (and
    // so asks the ledger for more), and new stock arrives at the pool.
    let left = cluster.available_in("ap-south", "topped").await;
    let held = reserve(
        &ap_south,
        &reserve_request("topped-all", vec![line("topped", left)]),
        RETRY_DEADLINE,
    )
    .await
    .result
    .expect("ap-south reserves what it has");
    confirm(
        &ap_south,
        &held.reservation_id,
        "order-topped-all",
        RETRY_DEADLINE,
    )
    .await
    .result
    .expect("ap-south confirms");
    let more = reserve_request("topped-more", vec![line("topped", 1)]);
    let (code, reason) = refusal(reserve(&ap_south, &more, RETRY_DEADLINE).await.result);
    assert_eq!(
        (code, reason.as_deref()),
        (Code::ResourceExhausted, Some("INSUFFICIENT_STOCK")),
        "ap-south is out of topped"
    );
    cluster.add_stock("topped", 30).await;
    let asked_at = Instant::now();
    let give_up = asked_at + CHECK_DEADLINE;
    loop {
        let available = cluster.available_in("ap-south", "topped").await;
        if available > 0 {
            eprintln!(
                "top-up of {available} reached ap-south in {:?}",
                asked_at.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no top-up reached ap-south within {CHECK_DEADLINE:?} while eu-west is saturated: {:?}",
            cluster.cluster_status().await
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // eu-west was failing all along: the ledger counted it against eu-west
    // alone, and stopped no round for everyone because of it.
    let refused = overloaded.load(Ordering::SeqCst);
    let eu_failures = metric_sum(
        &cluster,
        ledger,
        "reservoir_round_region_failures_total",
        "region=\"eu-west\"",
    )
    .await;
    let stopped =
        metric_sum(&cluster, ledger, "reservoir_rebalance_rounds_failed_total", "").await - rounds_stopped;
    eprintln!(
        "saturated for {:?}, {refused} reserves refused OVERLOADED; the ledger counted {eu_failures} failures \
         for eu-west and stopped {stopped} rounds",
        saturated_at.elapsed()
    );
    assert_eq!(
        stopped, 0.0,
        "rounds were stopped for every region while eu-west failed"
    );
    assert!(eu_failures > 0.0, "the ledger counted no failure for eu-west");

    // The flood ends; eu-west catches up and the books balance.
    stop.store(true, Ordering::SeqCst);
    for task in flood {
        task.await.expect("a flood task ends");
    }
    stocker.await.expect("the stocker ends");
    let report = cluster.settled_audit(SETTLE_DEADLINE).await;
    for sku in HOT.iter().copied().chain(["south", "topped"]) {
        let sheet = sku_sheet(&report, sku);
        assert_eq!((sheet.drift, sheet.ledger_drift), (0, 0), "{sheet:?}");
    }
    assert_eq!(
        sku_sheet(&report, "south").settled_total,
        CHECKS as u64,
        "{report:?}"
    );
    cluster.wait_no_settlement_lag(SETTLE_DEADLINE).await;
    assert_balanced(&cluster.audit().await);
    eprintln!("test took {:?}", started.elapsed());
}

/// Rewrites a node's config so that it proposes one batch at a time and
/// queues one proposal more.
fn saturable_config(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut replaced = 0;
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if key == "proposal_queue_max" || key == "batches_in_flight" {
                replaced += 1;
                format!("{key} = 1")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 2, "both raft bounds in {}:\n{text}", path.display());
    std::fs::write(path, edited.join("\n") + "\n").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Reserves one unit of every hot SKU again and again (short holds,
/// released at once when taken), counting the `OVERLOADED` refusals, until
/// told to stop.
async fn flood(
    mut client: InventoryClient<reservoir_client::ClientChannel>,
    task: usize,
    stop: Arc<AtomicBool>,
    overloaded: Arc<AtomicU64>,
) {
    let until = Instant::now() + FLOOD_MAX;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        n += 1;
        let lines = HOT.iter().map(|sku| line(sku, 1)).collect();
        let mut request = reserve_request(format!("flood-{task}-{n}"), lines);
        request.ttl_ms = FLOOD_TTL_MS;
        match client.reserve(request).await {
            Ok(answer) => {
                if let Some(r) = answer.into_inner().reservation {
                    let release = v1::ReleaseRequest {
                        reservation_id: r.reservation_id,
                    };
                    let _ = client.release(release).await;
                }
            }
            Err(status) if reason_of(&status).as_deref() == Some("OVERLOADED") => {
                overloaded.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL / 10).await,
        }
    }
}

/// Adds [`STOCKER_UNITS`] of every hot SKU every [`STOCKER_PACING`] until
/// told to stop (each request retried with its id until acknowledged).
async fn stocker(nodes: Rotation, stop: Arc<AtomicBool>) {
    let until = Instant::now() + FLOOD_MAX;
    let mut sent = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        for sku in HOT {
            let request = v1::AdjustStockRequest {
                request_id: format!("stocker-{sku}-{sent}"),
                sku: sku.into(),
                delta: STOCKER_UNITS,
            };
            retry(&nodes, RETRY_DEADLINE, |channel| {
                let request = request.clone();
                async move { AdminClient::new(channel).adjust_stock(request).await }
            })
            .await
            .result
            .unwrap_or_else(|s| panic!("{}: not acknowledged: {s:?}", request.request_id));
        }
        sent += 1;
        tokio::time::sleep(STOCKER_PACING).await;
    }
}

/// The sum of a metric's samples on node `id` (`/metrics`) whose labels
/// contain `labels`; 0 when it has none.
async fn metric_sum(cluster: &Cluster, id: u64, name: &str, labels: &str) -> f64 {
    let (code, text) = http_get(cluster.node(id).http(), "/metrics")
        .await
        .unwrap_or_else(|e| panic!("node {id}'s metrics: {e:?}"));
    assert_eq!(code, 200, "node {id}'s metrics");
    text.lines()
        .filter(|l| {
            let (series, _) = l.split_once(' ').unwrap_or((l, ""));
            (series == name || series.starts_with(&format!("{name}{{"))) && series.contains(labels)
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .fold(0.0, |sum, v| sum + v)
}

/// Polls `region`'s leader until its outbox is acknowledged to the end
/// (every confirmed sale settled at the ledger), and returns that status.
async fn wait_settled(cluster: &Cluster, region: &str, deadline: Duration) -> reservoir_tests::NodeStatus {
    let give_up = Instant::now() + deadline;
    loop {
        let status = cluster.region_status(region).await;
        if status.settled_up_to >= status.outbox_last_seq {
            return status;
        }
        assert!(
            Instant::now() < give_up,
            "{region}'s sales not settled within {deadline:?} (outbox {}, settled {}): {:?}",
            status.outbox_last_seq,
            status.settled_up_to,
            cluster.cluster_status().await.settlement_lag
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
