//! `ReserveBatch` over real gRPC on a standalone region: each reserve of a
//! batch gets its own answer, in order, sent to the leader or to a follower;
//! a bad reserve refuses only itself; a retried batch returns the same
//! reservations; a batch out of bounds is refused whole and changes nothing;
//! a follower's answer names the leader (`x-reservoir-leader`);
//! every acknowledged hold reads back and the books balance.

use std::time::Instant;

use reservoir_proto::v1;
use reservoir_proto::v1::reserve_result::Outcome;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, balanced_sheets, line, one_at_a_time, refusal, reserve_request,
    units_of,
};
use reservoir_tokens::limits::RESERVE_BATCH_MAX;
use tonic::Code;

/// The SKU the batches reserve, and its stock.
const SKU: &str = "batch-sku";
const STOCK: u64 = 1_000;

/// A batch of `reserves`.
fn batch(reserves: Vec<v1::ReserveRequest>) -> v1::ReserveBatchRequest {
    v1::ReserveBatchRequest { reserves }
}

/// The reservation a result holds, or a panic naming what it was.
fn reservation(result: &v1::ReserveResult) -> &v1::Reservation {
    match &result.outcome {
        Some(Outcome::Reservation(r)) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

/// The code and reason of a result's error.
fn error(result: &v1::ReserveResult) -> (i32, &str) {
    match &result.outcome {
        Some(Outcome::Error(e)) => (e.code, e.reason.as_str()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reserve_of_a_batch_gets_its_own_answer_and_the_books_balance() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let region = Cluster::start(ClusterOptions::standalone()).await;
    region.add_stock(SKU, STOCK as i64).await;
    let leader = region.region_leader(HOME_REGION).await;
    let follower = region
        .live_ids()
        .into_iter()
        .find(|&n| n != leader)
        .expect("a follower");

    let mut acknowledged: Vec<v1::Reservation> = Vec::new();
    for (node, tag) in [(leader, "leader"), (follower, "follower")] {
        let reserves = vec![
            reserve_request(format!("{tag}-1"), vec![line(SKU, 3)]),
            // A bad request id refuses only this reserve.
            reserve_request("", vec![line(SKU, 1)]),
            // More than there is refuses only this one too.
            reserve_request(format!("{tag}-2"), vec![line(SKU, STOCK + 1)]),
            reserve_request(format!("{tag}-3"), vec![line(SKU, 2)]),
            // The same request id as the first: the first's reservation.
            reserve_request(format!("{tag}-1"), vec![line(SKU, 3)]),
        ];
        let mut inventory = region.inventory(node);
        let response = inventory
            .reserve_batch(batch(reserves.clone()))
            .await
            .unwrap_or_else(|s| panic!("a batch to the {tag}: {s:?}"));
        // A follower names its leader, so a client can call it next time.
        let hint = reservoir_client::leader_hint(response.metadata());
        assert_eq!(
            hint,
            (node != leader).then_some(leader),
            "the leader hint from the {tag}"
        );
        let results = response.into_inner().results;
        assert_eq!(results.len(), 5, "one result per reserve: {results:?}");
        let first = reservation(&results[0]).clone();
        assert_eq!(units_of(&first.lines, SKU), 3);
        assert_eq!(first.state, v1::ReservationState::Held as i32);
        assert_eq!(
            error(&results[1]),
            (Code::InvalidArgument as i32, "INVALID_REQUEST_ID")
        );
        assert_eq!(
            error(&results[2]),
            (Code::ResourceExhausted as i32, "INSUFFICIENT_STOCK")
        );
        let third = reservation(&results[3]).clone();
        assert_eq!(units_of(&third.lines, SKU), 2);
        assert_eq!(reservation(&results[4]), &first, "a repeated request id");

        // The whole batch again (a client that lost the answer): the same
        // reservations, nothing held twice.
        let again = inventory
            .reserve_batch(batch(reserves))
            .await
            .expect("the batch retried")
            .into_inner()
            .results;
        assert_eq!(reservation(&again[0]), &first);
        assert_eq!(reservation(&again[3]), &third);
        acknowledged.extend([first, third]);
    }

    // Out of bounds: refused whole, nothing proposed.
    let audit_before = region.audit().await;
    let sheets_before = balanced_sheets(&audit_before);
    let mut inventory = region.inventory(leader);
    assert_eq!(
        refusal(inventory.reserve_batch(batch(Vec::new())).await),
        (Code::InvalidArgument, Some("INVALID_RESERVES".into())),
        "an empty batch"
    );
    let too_many = (0..=RESERVE_BATCH_MAX)
        .map(|i| reserve_request(format!("over-{i}"), vec![line(SKU, 1)]))
        .collect();
    assert_eq!(
        refusal(inventory.reserve_batch(batch(too_many)).await),
        (Code::InvalidArgument, Some("INVALID_RESERVES".into())),
        "a batch of {} reserves",
        RESERVE_BATCH_MAX + 1
    );
    assert_eq!(
        balanced_sheets(&region.audit().await),
        sheets_before,
        "the books moved"
    );

    // A full batch of the most reserves, each its own hold.
    let full: Vec<v1::ReserveRequest> = (0..RESERVE_BATCH_MAX)
        .map(|i| reserve_request(format!("full-{i}"), vec![line(SKU, 1)]))
        .collect();
    let results = inventory
        .reserve_batch(batch(full))
        .await
        .expect("a full batch")
        .into_inner()
        .results;
    assert_eq!(results.len(), RESERVE_BATCH_MAX);
    acknowledged.extend(results.iter().map(|r| reservation(r).clone()));

    // Every acknowledged hold reads back, once; the books hold exactly them.
    let mut ids: Vec<&str> = acknowledged.iter().map(|r| r.reservation_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), acknowledged.len(), "a reservation id answered twice");
    for r in &acknowledged {
        let read = region
            .get(HOME_REGION, &r.reservation_id)
            .await
            .unwrap_or_else(|s| panic!("acknowledged {} not found: {s:?}", r.reservation_id));
        assert_eq!(&read, r);
    }
    let held: u64 = acknowledged.iter().map(|r| units_of(&r.lines, SKU)).sum();
    let sheets = balanced_sheets(&region.audit().await);
    assert_eq!(sheets[SKU].held, held, "held units = acknowledged units");
    assert_eq!(sheets[SKU].available, STOCK - held);
    eprintln!("test took {:?}", started.elapsed());
}
