//! Bad input over real gRPC: every limit of the API gets its code and reason
//! and changes nothing; a burst beyond the proposal queue gets `OVERLOADED`,
//! and nothing it did not acknowledge takes effect.

use std::time::Instant;

use prost::Message;
use reservoir_client::reason_of;
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    ClientChannel, Cluster, ClusterOptions, HOME_REGION, RETRY_DEADLINE, balanced_sheets, is_retryable, line,
    one_at_a_time, refusal, reserve, reserve_request,
};
use reservoir_tokens::limits::{
    LINES_PER_RESERVATION_MAX, MAX_WAIT_MS_MAX, MESSAGE_BYTES_MAX, ORDER_ID_BYTES_MAX, QUANTITY_MAX,
    REQUEST_ID_BYTES_MAX, RESERVATION_ID_BYTES_MAX, SKU_BYTES_MAX, STOCK_DELTA_MAX, TTL_MAX_MS,
};
use tokio::sync::watch;
use tonic::Code;

/// The SKU the limit test stocks.
const SKU: &str = "limit-sku";
/// Its stock.
const STOCK: u64 = 100;
/// The proposal queue bound of the overload test's region.
const TINY_QUEUE: usize = 2;
/// Concurrent reserves in the burst.
const BURST: usize = 500;
/// Connections the burst is spread over.
const BURST_CONNECTIONS: usize = 8;
/// The burst's SKU and its stock (more than the burst can take).
const HOT_SKU: &str = "hot";
const HOT_STOCK: u64 = 10_000;

/// Every API limit, sent to the leader and to a follower, gets INVALID_ARGUMENT (or NOT_FOUND, OUT_OF_RANGE) with its reason, and the books do not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_has_its_code_and_reason_and_changes_nothing() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let region = Cluster::start(ClusterOptions::standalone()).await;
    region.add_stock(SKU, STOCK as i64).await;
    let request = reserve_request("valid-1", vec![line(SKU, 3)]);
    let held = reserve(&region.rotation(0), &request, RETRY_DEADLINE)
        .await
        .result
        .expect("a valid reserve");
    let id = held.reservation_id.clone();

    let audit_before = region.audit().await;
    let sheets_before = balanced_sheets(&audit_before);
    let status_before = region.converged_in(HOME_REGION).await;

    let leader = region.region_leader(HOME_REGION).await;
    let follower = region
        .live_ids()
        .into_iter()
        .find(|&n| n != leader)
        .expect("a follower");
    for node in [leader, follower] {
        refuse_every_limit(node, region.inventory(node), region.admin(node), &id).await;
    }

    // A message over 64 KiB is refused by the server before it is decoded;
    // one of exactly 64 KiB is decoded (and refused for its request id).
    let mut inventory = region.inventory(leader);
    let at_limit = reserve_request("r".repeat(MESSAGE_BYTES_MAX - 4), vec![]);
    assert_eq!(at_limit.encoded_len(), MESSAGE_BYTES_MAX);
    assert_eq!(
        refusal(inventory.reserve(at_limit).await),
        (Code::InvalidArgument, Some("INVALID_REQUEST_ID".into())),
        "a message of exactly 64 KiB is decoded"
    );
    let over = reserve_request("r".repeat(MESSAGE_BYTES_MAX - 3), vec![]);
    assert_eq!(over.encoded_len(), MESSAGE_BYTES_MAX + 1);
    assert_eq!(
        refusal(inventory.reserve(over).await),
        (Code::OutOfRange, None),
        "a message over 64 KiB"
    );
    let mut admin = region.admin(follower);
    let big_stock = v1::AdjustStockRequest {
        request_id: "s".repeat(MESSAGE_BYTES_MAX),
        sku: SKU.into(),
        delta: 1,
    };
    assert_eq!(refusal(admin.adjust_stock(big_stock).await).0, Code::OutOfRange);

    // Nothing moved: the books, every replica's state, the valid hold.
    let audit_after = region.audit().await;
    assert_eq!(balanced_sheets(&audit_after), sheets_before, "the books moved");
    assert_eq!(
        region.converged_in(HOME_REGION).await.replicated_state(),
        status_before.replicated_state(),
        "a replica's state moved"
    );
    assert_eq!(region.get(HOME_REGION, &id).await.expect("the valid hold"), held);
    assert_eq!(sheets_before[SKU].held, 3);
    eprintln!("test took {:?}", started.elapsed());
}

/// Sends every kind of bad request to one node and checks each refusal; `id`
/// is a valid reservation of the region, for calls that need one.
async fn refuse_every_limit(
    node: u64,
    mut inventory: InventoryClient<ClientChannel>,
    mut admin: AdminClient<ClientChannel>,
    id: &str,
) {
    let invalid = |reason: &str| (Code::InvalidArgument, Some(reason.to_string()));
    let ok_lines = || vec![line(SKU, 1)];

    // request_id: 1-128 bytes of printable ASCII, on Reserve and AdjustStock.
    for bad in [
        String::new(),
        "r".repeat(REQUEST_ID_BYTES_MAX + 1),
        "tab\there".into(),
        "é".into(),
    ] {
        let r = inventory.reserve(reserve_request(bad.clone(), ok_lines())).await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_REQUEST_ID"),
            "node {node}: reserve {bad:?}"
        );
        let r = admin.adjust_stock(stock(&bad, SKU, 1)).await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_REQUEST_ID"),
            "node {node}: stock {bad:?}"
        );
    }

    // order_id: 1-128 bytes of printable ASCII.
    for bad in [
        String::new(),
        "o".repeat(ORDER_ID_BYTES_MAX + 1),
        "new\nline".into(),
    ] {
        let r = inventory.confirm(confirm(id, &bad, vec![])).await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_ORDER_ID"),
            "node {node}: order {bad:?}"
        );
    }

    // sku: 1-64 bytes of [A-Za-z0-9._:-], on every call that takes one.
    for bad in [
        String::new(),
        "s".repeat(SKU_BYTES_MAX + 1),
        "a b".into(),
        "a/b".into(),
    ] {
        let r = inventory
            .reserve(reserve_request("sku-case", vec![line(&bad, 1)]))
            .await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_SKU"),
            "node {node}: reserve sku {bad:?}"
        );
        let r = inventory
            .get_availability(v1::GetAvailabilityRequest { sku: bad.clone() })
            .await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_SKU"),
            "node {node}: availability {bad:?}"
        );
        let r = admin.adjust_stock(stock("sku-case", &bad, 1)).await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_SKU"),
            "node {node}: stock sku {bad:?}"
        );
    }

    // lines: 1-64, distinct SKUs; a confirm takes 0-64, distinct.
    let many = |n: usize| (0..n).map(|i| line(&format!("sku-{i}"), 1)).collect::<Vec<_>>();
    let duplicate = vec![line(SKU, 1), line("other", 1), line(SKU, 2)];
    let mut long_duplicate = many(20);
    long_duplicate.push(line("sku-7", 1));
    for (what, lines) in [
        ("no lines", vec![]),
        ("65 lines", many(LINES_PER_RESERVATION_MAX + 1)),
        ("duplicate SKU", duplicate.clone()),
        ("duplicate SKU in 21 lines", long_duplicate),
    ] {
        let r = inventory.reserve(reserve_request("lines-case", lines)).await;
        assert_eq!(refusal(r), invalid("INVALID_LINES"), "node {node}: {what}");
    }
    for (what, lines) in [
        ("65 lines", many(LINES_PER_RESERVATION_MAX + 1)),
        ("duplicate SKU", duplicate),
    ] {
        let r = inventory.confirm(confirm(id, "order-x", lines)).await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_LINES"),
            "node {node}: confirm {what}"
        );
    }

    // quantity: 1 to 1,000,000, on reserve and confirm lines.
    for bad in [0, QUANTITY_MAX + 1] {
        let r = inventory
            .reserve(reserve_request("qty-case", vec![line(SKU, bad)]))
            .await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_QUANTITY"),
            "node {node}: quantity {bad}"
        );
        let r = inventory
            .confirm(confirm(id, "order-x", vec![line(SKU, bad)]))
            .await;
        assert_eq!(
            refusal(r),
            invalid("INVALID_QUANTITY"),
            "node {node}: confirm quantity {bad}"
        );
    }

    // ttl_ms: at most 4 hours, on reserve and extend.
    let mut request = reserve_request("ttl-case", ok_lines());
    request.ttl_ms = TTL_MAX_MS + 1;
    assert_eq!(
        refusal(inventory.reserve(request).await),
        invalid("INVALID_TTL_MS")
    );
    let r = inventory
        .extend(v1::ExtendRequest {
            reservation_id: id.into(),
            ttl_ms: TTL_MAX_MS + 1,
        })
        .await;
    assert_eq!(refusal(r), invalid("INVALID_TTL_MS"), "node {node}: extend");

    // max_wait_ms: at most 5,000.
    let mut request = reserve_request("wait-case", ok_lines());
    request.max_wait_ms = MAX_WAIT_MS_MAX + 1;
    assert_eq!(
        refusal(inventory.reserve(request).await),
        invalid("INVALID_MAX_WAIT_MS")
    );

    // reservation_id: malformed is bad input on every call that takes one;
    // well formed but of another region is not found.
    let malformed = [
        String::new(),
        "garbage".into(),
        "us-east-".into(),
        // The old counter form; and 16 hex digits, but upper case.
        "us-east-000001".into(),
        "us-east-000000000000002A".into(),
        "r".repeat(RESERVATION_ID_BYTES_MAX + 1),
    ];
    let elsewhere = "eu-west-0000000000000001".to_string();
    for (bad, expected) in malformed
        .iter()
        .map(|b| (b, invalid("INVALID_RESERVATION_ID")))
        .chain([(&elsewhere, (Code::NotFound, Some("RESERVATION_NOT_FOUND".into())))])
    {
        let get = v1::GetReservationRequest {
            reservation_id: bad.clone(),
        };
        assert_eq!(
            refusal(inventory.get_reservation(get).await),
            expected,
            "node {node}: get {bad:?}"
        );
        let release = v1::ReleaseRequest {
            reservation_id: bad.clone(),
        };
        assert_eq!(
            refusal(inventory.release(release).await),
            expected,
            "node {node}: release {bad:?}"
        );
        let r = inventory.confirm(confirm(bad, "order-x", vec![])).await;
        assert_eq!(refusal(r), expected, "node {node}: confirm {bad:?}");
        let extend = v1::ExtendRequest {
            reservation_id: bad.clone(),
            ttl_ms: 0,
        };
        assert_eq!(
            refusal(inventory.extend(extend).await),
            expected,
            "node {node}: extend {bad:?}"
        );
    }

    // delta: non-zero, magnitude at most 1,000,000,000.
    for bad in [
        0,
        STOCK_DELTA_MAX as i64 + 1,
        -(STOCK_DELTA_MAX as i64) - 1,
        i64::MIN,
    ] {
        let r = admin.adjust_stock(stock("delta-case", SKU, bad)).await;
        assert_eq!(refusal(r), invalid("INVALID_DELTA"), "node {node}: delta {bad}");
    }

    // Not limits, but refusals that must not move the books either.
    let r = inventory
        .reserve(reserve_request("too-many", vec![line(SKU, STOCK + 1)]))
        .await;
    assert_eq!(
        refusal(r),
        (Code::ResourceExhausted, Some("INSUFFICIENT_STOCK".into())),
        "node {node}"
    );
    let r = inventory
        .reserve(reserve_request("valid-1", vec![line(SKU, 4)]))
        .await;
    assert_eq!(
        refusal(r),
        (Code::AlreadyExists, Some("REQUEST_ID_REUSED".into())),
        "node {node}"
    );
    let r = admin
        .adjust_stock(stock("remove-too-much", SKU, -(STOCK as i64)))
        .await;
    assert_eq!(
        refusal(r),
        (Code::FailedPrecondition, Some("STOCK_NOT_REMOVABLE".into())),
        "node {node}"
    );
}

fn stock(request_id: &str, sku: &str, delta: i64) -> v1::AdjustStockRequest {
    v1::AdjustStockRequest {
        request_id: request_id.into(),
        sku: sku.into(),
        delta,
    }
}

fn confirm(id: &str, order_id: &str, lines: Vec<v1::Line>) -> v1::ConfirmRequest {
    v1::ConfirmRequest {
        reservation_id: id.into(),
        order_id: order_id.into(),
        lines,
    }
}

/// A burst of concurrent reserves beyond a tiny proposal queue gets OVERLOADED for some, and exactly the acknowledged ones take tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_is_overloaded_and_only_acknowledged_reserves_count() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let region = Cluster::start(ClusterOptions {
        proposal_queue_max: Some(TINY_QUEUE),
        ..ClusterOptions::standalone()
    })
    .await;
    region.add_stock(HOT_SKU, HOT_STOCK as i64).await;
    let leader = region.region_leader(HOME_REGION).await;
    // Every connection is its own (a channel each), with the shop key; the
    // leader has checked that key once before the burst, so the burst meets
    // the proposal queue, not the key check.
    let connections: Vec<ClientChannel> = (0..BURST_CONNECTIONS).map(|_| region.channel(leader)).collect();
    InventoryClient::new(connections[0].clone())
        .get_availability(v1::GetAvailabilityRequest { sku: HOT_SKU.into() })
        .await
        .unwrap_or_else(|s| panic!("GetAvailability on the leader before the burst: {s:?}"));

    // Every request waits for one signal, so they arrive together.
    let (go_tx, go_rx) = watch::channel(false);
    let mut burst = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let mut client = InventoryClient::new(connections[i % BURST_CONNECTIONS].clone());
        let mut go = go_rx.clone();
        burst.push(tokio::spawn(async move {
            let request = reserve_request(format!("burst-{i}"), vec![line(HOT_SKU, 1)]);
            let _ = go.wait_for(|&go| go).await;
            let answer = client.reserve(request.clone()).await;
            (request, answer)
        }));
    }
    let sent_at = Instant::now();
    go_tx.send(true).expect("the burst is waiting");

    let mut acknowledged = 0u64;
    let mut overloaded = 0u64;
    let mut unknown = Vec::new();
    for task in burst {
        let (request, answer) = task.await.expect("a burst task panicked");
        match answer {
            Ok(_) => acknowledged += 1,
            Err(s) if reason_of(&s).as_deref() == Some("OVERLOADED") => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                overloaded += 1;
            }
            // Unknown outcome (a timeout, NO_LEADER): learnt below.
            Err(s) if is_retryable(&s) => unknown.push((request, s)),
            Err(s) => panic!("{}: {s:?}", request.request_id),
        }
    }
    eprintln!(
        "burst of {BURST} into a queue of {TINY_QUEUE}: {acknowledged} acknowledged, {overloaded} OVERLOADED, \
         {} unknown, in {:?}",
        unknown.len(),
        sent_at.elapsed()
    );
    assert!(overloaded >= 1, "no OVERLOADED in a burst of {BURST}");
    assert!(acknowledged >= 1, "nothing got through");

    // An unknown outcome is learnt by sending the same request again: it
    // returns the reservation if the first one took effect, or makes it now.
    // Either way it is then acknowledged.
    let nodes = region.rotation(0);
    for (request, first) in unknown {
        eprintln!("learning the outcome of {} ({first:?})", request.request_id);
        reserve(&nodes, &request, RETRY_DEADLINE)
            .await
            .result
            .unwrap_or_else(|s| panic!("re-sending {}: {s:?}", request.request_id));
        acknowledged += 1;
    }

    // Exactly the acknowledged reserves took a token: nothing refused did.
    let sheets = balanced_sheets(&region.audit().await);
    let sheet = sheets[HOT_SKU];
    assert_eq!(sheet.stocked, HOT_STOCK);
    assert_eq!(sheet.held, acknowledged, "held tokens vs acknowledged reserves");
    assert_eq!(sheet.available, HOT_STOCK - acknowledged);
    assert_eq!(
        region.converged_in(HOME_REGION).await.buckets[HOT_SKU].held,
        acknowledged
    );
    eprintln!("test took {:?}", started.elapsed());
}
