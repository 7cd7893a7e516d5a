//! The failure contract seen from outside, as a new user's client sees it:
//! plain generated gRPC clients, each sticking to one node of a standalone
//! region, reserve one unit at a time with fresh request ids while the
//! leader is SIGKILLed and restarted again and again. A client retries only
//! what README "Errors and retries" documents as retryable, always with the
//! same request id; any other answer is final, and the test allows none.
//! Afterwards every acknowledged hold is found and the books are exact.
//!
//! It also measures failover: from each SIGKILL to the first reserve
//! acknowledged after it. `RESERVOIR_FAILOVER_KILLS=50` runs 50 kills (the
//! README's figure); the default is [`KILLS_DEFAULT`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reservoir_client::reason_of;
use reservoir_proto::v1;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, balanced_sheets, line, one_at_a_time,
    reserve_request, units_of,
};
use tonic::{Code, Status};

/// The SKU every client reserves.
const SKU: &str = "crash-sku";
/// Units stocked: more than the run can take, so every reserve tests the
/// write path, never the stock.
const STOCK: u64 = 1_000_000;
/// Clients; client `i` sticks to the region's node `i mod 3`.
const CLIENTS: usize = 6;
/// Leader kills in a default run.
const KILLS_DEFAULT: usize = 20;
/// Acknowledged reserves between a restart and the next kill.
const ACKS_BETWEEN_KILLS: u64 = 30;
/// How long the load may take to reach the next kill, or to answer again
/// after one.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);
/// A client's own deadline for one call.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// The longest one reserve may take, all its retries included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The pause before a retry.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// A hold's TTL: longer than the run, so every acknowledged hold is still
/// held at the end.
const TTL_MS: u64 = 3_600_000;

/// How README "Errors and retries" classifies a failed call.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// `UNAVAILABLE` with `NO_LEADER` or `OVERLOADED`: the node answered
    /// that the outcome is unknown or nothing was done; retry.
    Retry(String),
    /// The client's own connection or deadline failed (tonic reports the
    /// transport error as the source of the status): nothing answered, the
    /// outcome is unknown; retry.
    Transport(Code),
    /// Anything else is final; in this test, where every reserve is valid
    /// and the stock ample, a final answer breaks the contract.
    Final(Code, Option<String>, String),
}

fn classify(status: &Status) -> Failure {
    let reason = reason_of(status);
    match reason.as_deref() {
        Some(r @ ("NO_LEADER" | "OVERLOADED")) if status.code() == Code::Unavailable => {
            Failure::Retry(r.into())
        }
        None if std::error::Error::source(status).is_some() => Failure::Transport(status.code()),
        _ => Failure::Final(status.code(), reason, status.message().to_string()),
    }
}

/// What the clients share with the test.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acks: AtomicU64,
    /// Each acknowledged reserve's last attempt: when it was sent and when
    /// its answer arrived, since the run started (ms).
    acked_at: Mutex<Vec<(u64, u64)>>,
    /// Final answers: must stay empty.
    finals: Mutex<Vec<String>>,
}

/// One client's acknowledged reservations: (request id, reservation id).
type Acks = Vec<(String, String)>;

/// Every reserve acknowledged across SIGKILLs of the leader is found once, no answer is unclassified, and the books are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkills_leave_no_answer_unclassified() {
    let _serial = one_at_a_time().await;
    let kills = std::env::var("RESERVOIR_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    region.add_stock(SKU, STOCK as i64).await;
    let ids = region.ids();
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let client = region.inventory(ids[c % ids.len()]);
        let shared = shared.clone();
        clients.push(tokio::spawn(run_client(c, client, shared, started)));
    }

    let mut failovers = Vec::new();
    for k in 0..kills {
        wait_for_acks(&shared, ACKS_BETWEEN_KILLS, "before a kill").await;
        let leader = region.region_leader(HOME_REGION).await;
        region.kill(leader).await;
        let killed_ms = started.elapsed().as_millis() as u64;
        let elected = new_leader(&region, leader).await;
        let first = wait_for_ack_after(&shared, killed_ms).await;
        let failover = Duration::from_millis(first - killed_ms);
        eprintln!(
            "kill {}/{kills}: node {leader}; node {} leads {:?} after; a reserve acknowledged {failover:?} after",
            k + 1,
            elected.0,
            elected.1
        );
        failovers.push(failover);
        region.restart(leader).await;
    }
    wait_for_acks(&shared, ACKS_BETWEEN_KILLS, "after the last restart").await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut acks: Acks = Vec::new();
    for client in clients {
        acks.extend(client.await.expect("client task"));
    }

    let finals = shared.finals.lock().unwrap().clone();
    assert!(
        finals.is_empty(),
        "{} answers were neither a success nor documented as retryable:\n{}",
        finals.len(),
        finals.join("\n")
    );
    failovers.sort();
    if !failovers.is_empty() {
        eprintln!(
            "failover over {} leader SIGKILLs: median {:?}, worst {:?} ({} reserves acknowledged)",
            failovers.len(),
            failovers[failovers.len() / 2],
            failovers[failovers.len() - 1],
            acks.len()
        );
    }

    // Every acknowledged hold is there, once, as acknowledged.
    let mut reservation_ids: Vec<&str> = acks.iter().map(|(_, r)| r.as_str()).collect();
    reservation_ids.sort();
    reservation_ids.dedup();
    assert_eq!(
        reservation_ids.len(),
        acks.len(),
        "two requests acknowledged the same reservation"
    );
    verify_all(&region, &acks).await;

    // The books are exact: what is held is what was acknowledged.
    let sheets = balanced_sheets(&region.audit().await);
    let sheet = &sheets[SKU];
    assert_eq!(
        sheet.held,
        acks.len() as u64,
        "held units vs acknowledged reserves: {sheet:?}"
    );
    assert_eq!((sheet.stocked, sheet.confirmed), (STOCK, 0), "{sheet:?}");
}

/// One client: fresh request ids, one unit each, retrying what is
/// retryable with the same request, until told to stop.
async fn run_client(
    c: usize,
    mut client: v1::inventory_client::InventoryClient<reservoir_tests::ClientChannel>,
    shared: Arc<Shared>,
    started: Instant,
) -> Acks {
    let mut acks = Vec::new();
    for n in 0.. {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let request_id = format!("crash-{c}-{n}");
        let mut request = reserve_request(request_id.clone(), vec![line(SKU, 1)]);
        request.ttl_ms = TTL_MS;
        let give_up = Instant::now() + REQUEST_DEADLINE;
        loop {
            let sent_ms = started.elapsed().as_millis() as u64;
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(CALL_DEADLINE);
            match client.reserve(call).await {
                Ok(response) => {
                    let reservation = response.into_inner().reservation.expect("a reservation");
                    assert_eq!(units_of(&reservation.lines, SKU), 1, "{reservation:?}");
                    acks.push((request_id.clone(), reservation.reservation_id));
                    shared.acks.fetch_add(1, Ordering::SeqCst);
                    shared
                        .acked_at
                        .lock()
                        .unwrap()
                        .push((sent_ms, started.elapsed().as_millis() as u64));
                    break;
                }
                Err(status) => match classify(&status) {
                    Failure::Retry(_) | Failure::Transport(_) => {
                        assert!(
                            Instant::now() < give_up,
                            "{request_id} unanswered after {REQUEST_DEADLINE:?}: {status:?}"
                        );
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Failure::Final(code, reason, message) => {
                        shared
                            .finals
                            .lock()
                            .unwrap()
                            .push(format!("{request_id}: {code:?} {reason:?} {message}"));
                        break;
                    }
                },
            }
        }
    }
    acks
}

/// Waits until `more` reserves are acknowledged after now.
async fn wait_for_acks(shared: &Shared, more: u64, when: &str) {
    let target = shared.acks.load(Ordering::SeqCst) + more;
    let give_up = Instant::now() + PROGRESS_DEADLINE;
    while shared.acks.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < give_up,
            "no progress {when} within {PROGRESS_DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// When the first reserve sent after `after_ms` (since the run started)
/// was acknowledged: once the old leader is gone, only a new one can.
async fn wait_for_ack_after(shared: &Shared, after_ms: u64) -> u64 {
    let give_up = Instant::now() + PROGRESS_DEADLINE;
    loop {
        let first = shared
            .acked_at
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| *sent > after_ms)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(at) = first {
            return at;
        }
        assert!(
            Instant::now() < give_up,
            "no reserve acknowledged within {PROGRESS_DEADLINE:?} of the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The node that leads after `old` was killed, as the survivors' `/status`
/// says, and how long after the kill it said so (for the log only).
async fn new_leader(region: &Cluster, old: u64) -> (u64, Duration) {
    let killed = Instant::now();
    loop {
        for id in region.live_ids() {
            if let Ok(status) = region.status(id).await
                && status.role == reservoir_tests::Role::Leader
                && status.node_id != old
            {
                return (id, killed.elapsed());
            }
        }
        assert!(killed.elapsed() < PROGRESS_DEADLINE, "no new leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads every acknowledged reservation back (through any node: reads are
/// linearizable on the leader), a few at a time.
async fn verify_all(region: &Cluster, acks: &Acks) {
    const READERS: usize = 8;
    let ids = region.ids();
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let mut client = region.inventory(ids[r % ids.len()]);
        let mine: Vec<(String, String)> = acks.iter().skip(r).step_by(READERS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for (request_id, reservation_id) in mine {
                let give_up = Instant::now() + REQUEST_DEADLINE;
                let found = loop {
                    let call = v1::GetReservationRequest {
                        reservation_id: reservation_id.clone(),
                    };
                    match client.get_reservation(call).await {
                        Ok(r) => break r.into_inner(),
                        Err(s) if !matches!(classify(&s), Failure::Final(..)) => {
                            assert!(Instant::now() < give_up, "{reservation_id}: {s:?}");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        Err(s) => panic!("acknowledged {reservation_id} ({request_id}) not found: {s:?}"),
                    }
                };
                assert_eq!(found.state, v1::ReservationState::Held as i32, "{found:?}");
                assert_eq!(units_of(&found.lines, SKU), 1, "{found:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("verifier");
    }
}
