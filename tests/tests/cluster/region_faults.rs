//! A standalone region under concurrent load while its leader is killed with
//! SIGKILL and restarted from its `cmd`, twice. Clients retry what the API
//! says is safe to retry, always with the same `request_id`; afterwards every
//! acknowledged write must be there, each request reserved exactly once, and
//! the tokens must balance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, RETRY_DEADLINE, Rotation, balanced_sheets, confirm,
    is_retryable, line, one_at_a_time, release, reserve, reserve_request, units_of,
};

/// The SKUs the clients reserve.
const SKUS: [&str; 3] = ["sku-a", "sku-b", "sku-c"];
/// Units stocked of each SKU: more than the load can take, so no reserve
/// runs out and every one of them tests the write path.
const STOCK: u64 = 1_000;
/// Concurrent clients.
const CLIENTS: usize = 8;
/// Most reserves one client sends.
const RESERVES_PER_CLIENT_MAX: usize = 300;
/// Longest the load may run, whatever happens.
const LOAD_DEADLINE: Duration = Duration::from_secs(40);
/// A client's pause between reserves, so the load spans the kills.
const CLIENT_PACING: Duration = Duration::from_millis(25);
/// How often the leader is killed and restarted.
const KILL_ROUNDS: usize = 2;
/// Acknowledged reserves between two kills (and after the last restart).
const ACKS_BETWEEN_KILLS: u64 = 40;
/// How long the load may take to reach the next kill.
const ACKS_DEADLINE: Duration = Duration::from_secs(20);
/// The failure contract: a reserve succeeds again this soon after the leader dies.
const FAILOVER_MAX: Duration = Duration::from_secs(10);
/// Concurrent verifiers re-reading the reservations afterwards.
const VERIFIERS: usize = 4;

/// What a client last saw of one of its reservations.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Held,
    Confirmed(String),
    Released,
}

/// A write after the reserve whose answer never came: its outcome is unknown
/// until it is sent again.
#[derive(Clone, Debug)]
enum Pending {
    Confirm(String),
    Release,
}

/// One acknowledged reservation, as its client knows it.
#[derive(Clone, Debug)]
struct Record {
    /// The reserve request, to be sent again.
    request: v1::ReserveRequest,
    /// The reservation as the reserve's answer showed it.
    reservation: v1::Reservation,
    /// Its state as last acknowledged.
    seen: Seen,
    /// A confirm or release still to be learnt.
    pending: Option<Pending>,
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientLog {
    records: Vec<Record>,
    /// Reserves never answered before their deadline: outcome unknown.
    unknown: Vec<v1::ReserveRequest>,
    /// Calls that needed more than one attempt.
    retried: usize,
    /// Retried reserves whose reservation an earlier attempt had made: the
    /// retry found it instead of reserving again.
    found_by_retry: usize,
    /// Errors retried, by reason (or gRPC code for transport errors).
    errors: BTreeMap<String, usize>,
}

/// Counters the clients share with the test.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acks: AtomicU64,
    running: AtomicUsize,
}

/// Acknowledged reserves, confirms and releases survive SIGKILL of the leader under load: each request_id reserved once, every write found, tokens balanced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_keeps_every_acknowledged_write() {
    let _serial = one_at_a_time().await;
    let test_started = Instant::now();
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    for sku in SKUS {
        region.add_stock(sku, STOCK as i64).await;
    }

    eprintln!("region up and stocked after {:?}", test_started.elapsed());
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::new();
    for task in 0..CLIENTS {
        let nodes = region.rotation(task);
        let shared = shared.clone();
        shared.running.fetch_add(1, Ordering::SeqCst);
        clients.push(tokio::spawn(async move {
            let log = client(task, nodes, &shared).await;
            shared.running.fetch_sub(1, Ordering::SeqCst);
            log
        }));
    }

    let mut probes = Vec::new();
    for round in 0..KILL_ROUNDS {
        wait_for_acks(&shared, ACKS_BETWEEN_KILLS).await;
        assert!(
            shared.running.load(Ordering::SeqCst) > 0,
            "the load ended before kill {round}: raise RESERVES_PER_CLIENT_MAX"
        );
        let leader = region.region_leader(HOME_REGION).await;
        let acks_at_kill = shared.acks.load(Ordering::SeqCst);
        region.kill(leader).await;
        let killed_at = Instant::now();

        // The failure contract: a reserve through the survivors succeeds again soon.
        let survivors: Vec<_> = region.live_ids().iter().map(|&id| region.channel(id)).collect();
        let nodes = Rotation::new(survivors, round);
        let request = reserve_request(format!("probe-{round}"), vec![line(SKUS[0], 1)]);
        let probe = reserve(&nodes, &request, FAILOVER_MAX).await;
        let failover = killed_at.elapsed();
        let reservation = probe.result.unwrap_or_else(|s| {
            panic!("no reserve succeeded within {FAILOVER_MAX:?} of killing node {leader}: {s:?}")
        });
        assert!(failover < FAILOVER_MAX, "failover took {failover:?}");
        eprintln!(
            "round {round} at {:?}: killed leader {leader} after {acks_at_kill} acks; a reserve succeeded \
             again after {failover:?} ({} attempts); new leader {}",
            test_started.elapsed(),
            probe.attempts,
            region.region_leader(HOME_REGION).await
        );
        probes.push(Record {
            request,
            reservation,
            seen: Seen::Held,
            pending: None,
        });

        region.restart(leader).await;
        eprintln!(
            "round {round}: node {leader} restarted after {:?}",
            killed_at.elapsed()
        );
    }
    // The region serves the load again with every node back.
    wait_for_acks(&shared, ACKS_BETWEEN_KILLS).await;
    shared.stop.store(true, Ordering::SeqCst);

    let mut records = probes;
    let mut unknown = Vec::new();
    let mut retried = 0;
    let mut found_by_retry = 0;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for c in clients {
        let log = c.await.expect("a client panicked");
        records.extend(log.records);
        unknown.extend(log.unknown);
        retried += log.retried;
        found_by_retry += log.found_by_retry;
        for (reason, n) in log.errors {
            *errors.entry(reason).or_default() += n;
        }
    }
    eprintln!(
        "load: {} reservations acknowledged, {retried} calls retried ({found_by_retry} reserves found made by \
         an earlier attempt), {} reserves unanswered; retried errors: {errors:?}",
        records.len(),
        unknown.len()
    );

    // Learn what the unanswered calls did, by sending them again.
    let nodes = region.rotation(0);
    for request in unknown {
        let reservation = reserve(&nodes, &request, RETRY_DEADLINE)
            .await
            .result
            .unwrap_or_else(|s| panic!("re-sending {}: {s:?}", request.request_id));
        let seen = state_seen(&reservation);
        records.push(Record {
            request,
            reservation,
            seen,
            pending: None,
        });
    }
    for record in records.iter_mut() {
        if let Some(pending) = record.pending.take() {
            let id = record.reservation.reservation_id.clone();
            let answer = match &pending {
                Pending::Confirm(order_id) => confirm(&nodes, &id, order_id, RETRY_DEADLINE).await,
                Pending::Release => release(&nodes, &id, RETRY_DEADLINE).await,
            };
            let reservation = answer
                .result
                .unwrap_or_else(|s| panic!("re-sending {pending:?} of {id}: {s:?}"));
            record.seen = state_seen(&reservation);
        }
    }

    // Each request reserved once: distinct requests, distinct reservations.
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| r.reservation.reservation_id.as_str())
        .collect();
    assert_eq!(ids.len(), records.len(), "two requests share a reservation");

    // Every reservation is found as last seen, and a retry of its request
    // returns the very same reservation.
    let records = Arc::new(records);
    let mut verifiers = Vec::new();
    for v in 0..VERIFIERS {
        let records = records.clone();
        let mut nodes = region.rotation(v);
        verifiers.push(tokio::spawn(async move {
            for record in records.iter().skip(v).step_by(VERIFIERS) {
                verify(&mut nodes, record).await;
            }
        }));
    }
    for v in verifiers {
        v.await.expect("a verifier panicked");
    }

    // The tokens balance, and held + confirmed are exactly the acknowledged
    // reservations' units: nothing was reserved twice, nothing lost.
    let sheets = balanced_sheets(&region.audit().await);
    let converged = region.converged_in(HOME_REGION).await;
    for sku in SKUS {
        let held: u64 = records
            .iter()
            .filter(|r| r.seen == Seen::Held)
            .map(|r| units_of(&r.reservation.lines, sku))
            .sum();
        let confirmed: u64 = records
            .iter()
            .filter(|r| matches!(r.seen, Seen::Confirmed(_)))
            .map(|r| units_of(&r.reservation.lines, sku))
            .sum();
        let sheet = sheets[sku];
        assert_eq!(sheet.stocked, STOCK, "{sku}: {sheet:?}");
        assert_eq!(
            sheet.held, held,
            "{sku}: held by the region vs acknowledged holds"
        );
        assert_eq!(
            sheet.confirmed, confirmed,
            "{sku}: confirmed vs acknowledged confirms"
        );
        assert_eq!(sheet.available, STOCK - held - confirmed, "{sku}: {sheet:?}");
        let bucket = converged.buckets[sku];
        assert_eq!(
            (bucket.available, bucket.held, bucket.confirmed),
            (sheet.available, sheet.held, sheet.confirmed),
            "{sku}: every replica shows the audited numbers"
        );
    }
    eprintln!("test took {:?}", test_started.elapsed());
}

/// One client: reserves (1–2 lines of one unit) until told to stop, confirms
/// every fourth reservation and releases the next; every call is retried
/// with the same request until acknowledged or its deadline passes.
async fn client(task: usize, nodes: Rotation, shared: &Shared) -> ClientLog {
    let started = Instant::now();
    let mut log = ClientLog::default();
    for i in 0..RESERVES_PER_CLIENT_MAX {
        if shared.stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_DEADLINE {
            break;
        }
        let mut lines = vec![line(SKUS[(task + i) % SKUS.len()], 1)];
        if i % 4 == 3 {
            lines.push(line(SKUS[(task + i + 1) % SKUS.len()], 1));
        }
        let request = reserve_request(format!("client-{task}-{i}"), lines);
        let reserved = reserve(&nodes, &request, RETRY_DEADLINE).await;
        note_retries(&mut log, &reserved.retried);
        let reservation = match reserved.result {
            Ok(reservation) => reservation,
            Err(s) if is_retryable(&s) => {
                log.unknown.push(request);
                continue;
            }
            Err(s) => panic!("{}: refused: {s:?}", request.request_id),
        };
        shared.acks.fetch_add(1, Ordering::SeqCst);
        if !reserved.retried.is_empty() && reservation.created_at_ms < reserved.last_sent_ms {
            log.found_by_retry += 1;
        }
        assert_eq!(reservation.state(), v1::ReservationState::Held, "{reservation:?}");
        assert_eq!(reservation.lines, request.lines, "{reservation:?}");
        let id = reservation.reservation_id.clone();
        let mut record = Record {
            request,
            reservation,
            seen: Seen::Held,
            pending: None,
        };
        let follow_up = match i % 4 {
            0 => Some(Pending::Confirm(format!("order-{task}-{i}"))),
            1 => Some(Pending::Release),
            _ => None,
        };
        if let Some(action) = follow_up {
            let answer = match &action {
                Pending::Confirm(order_id) => confirm(&nodes, &id, order_id, RETRY_DEADLINE).await,
                Pending::Release => release(&nodes, &id, RETRY_DEADLINE).await,
            };
            note_retries(&mut log, &answer.retried);
            match answer.result {
                Ok(reservation) => record.seen = state_seen(&reservation),
                Err(s) if is_retryable(&s) => record.pending = Some(action),
                Err(s) => panic!("{action:?} of {id}: refused: {s:?}"),
            }
        }
        log.records.push(record);
        tokio::time::sleep(CLIENT_PACING).await;
    }
    log
}

/// Counts a call that needed retries, and the errors it retried.
fn note_retries(log: &mut ClientLog, retried: &[String]) {
    if !retried.is_empty() {
        log.retried += 1;
    }
    for error in retried {
        *log.errors.entry(error.clone()).or_default() += 1;
    }
}

/// Waits until `more` reserves beyond the current count are acknowledged.
async fn wait_for_acks(shared: &Shared, more: u64) {
    let target = shared.acks.load(Ordering::SeqCst) + more;
    let give_up = Instant::now() + ACKS_DEADLINE;
    while shared.acks.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < give_up,
            "the load did not reach {target} acknowledged reserves within {ACKS_DEADLINE:?} (at {})",
            shared.acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn state_seen(r: &v1::Reservation) -> Seen {
    match r.state() {
        v1::ReservationState::Held => Seen::Held,
        v1::ReservationState::Confirmed => Seen::Confirmed(r.order_id.clone()),
        v1::ReservationState::Released => Seen::Released,
        other => panic!("{} is {other:?}, which no client asked for", r.reservation_id),
    }
}

/// A record's reservation is found as its client last saw it, and sending its
/// reserve again (same request_id, same lines) returns the same reservation.
async fn verify(nodes: &mut Rotation, record: &Record) {
    let id = &record.reservation.reservation_id;
    let request = v1::GetReservationRequest {
        reservation_id: id.clone(),
    };
    let found = reservoir_tests::retry(nodes, RETRY_DEADLINE, |channel| {
        let request = request.clone();
        async move { InventoryClient::new(channel).get_reservation(request).await }
    })
    .await
    .result
    .unwrap_or_else(|s| panic!("acknowledged reservation {id} not found: {s:?}"));
    assert_eq!(state_seen(&found), record.seen, "{id}: {found:?}");
    assert_eq!(found.lines, record.reservation.lines, "{id}");
    assert_eq!(found.expires_at_ms, record.reservation.expires_at_ms, "{id}");
    assert_eq!(found.created_at_ms, record.reservation.created_at_ms, "{id}");

    let again = reserve(nodes, &record.request, RETRY_DEADLINE)
        .await
        .result
        .unwrap_or_else(|s| panic!("re-sending {}: {s:?}", record.request.request_id));
    assert_eq!(
        &again.reservation_id, id,
        "request {} reserved twice",
        record.request.request_id
    );
    assert_eq!(state_seen(&again), record.seen, "{id}");
}
