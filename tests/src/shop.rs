//! Shoppers: bounded load against one region of a [`Cluster`], that keeps
//! what every call was answered, so a test can check afterwards that each
//! acknowledged reservation is there as its shopper last saw it, and count
//! units exactly.
//!
//! A shopper reserves, then confirms every fourth reservation, releases the
//! next, and leaves the other two held. Calls are retried with the same
//! request while the API says that is safe; a call still unanswered at its
//! deadline is kept as pending and sent again by [`resolve`] once the
//! cluster is whole, so its outcome is known before anything is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reservoir_client::reason_of;
use reservoir_proto::v1;
use tonic::Status;

use crate::{Cluster, RETRY_DEADLINE, Rotation, confirm, is_retryable, line, release, reserve, units_of};

/// What one shopper does.
#[derive(Clone, Debug)]
pub struct ShopperOptions {
    /// Unique prefix of its request and order ids.
    pub name: String,
    /// The region it shops in (any node of it; calls rotate on failures).
    pub region: String,
    /// The SKUs it reserves, one line per reserve, in turn.
    pub skus: Vec<String>,
    /// Units per reserve.
    pub quantity: u64,
    /// `max_wait_ms` of each reserve: how long to wait for a top-up.
    pub max_wait_ms: u64,
    /// Most reserves it sends.
    pub reserves_max: usize,
    /// Longest it runs, whatever happens.
    pub run_max: Duration,
    /// Pause between two reserves.
    pub pacing: Duration,
    /// How long one call may be retried before its outcome counts as unknown.
    pub call_deadline: Duration,
    /// How long a reserve refused with `INSUFFICIENT_STOCK` is sent again
    /// (zero: not at all). A refused reserve changed nothing, so sending it
    /// again is safe.
    pub sold_out_retry: Duration,
    /// Confirm every fourth reservation and release the next; otherwise
    /// hold every one.
    pub follow_ups: bool,
}

impl ShopperOptions {
    /// A shopper of one unit at a time of `skus` in `region`, with mixed
    /// follow-ups, no waiting for top-ups, and bounds that suit a test.
    pub fn new(name: impl Into<String>, region: &str, skus: &[&str]) -> ShopperOptions {
        ShopperOptions {
            name: name.into(),
            region: region.to_string(),
            skus: skus.iter().map(|s| s.to_string()).collect(),
            quantity: 1,
            max_wait_ms: 0,
            reserves_max: 1_000,
            run_max: Duration::from_secs(60),
            pacing: Duration::from_millis(20),
            call_deadline: RETRY_DEADLINE,
            sold_out_retry: Duration::ZERO,
            follow_ups: true,
        }
    }
}

/// What a shopper last saw of one of its reservations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Held.
    Held,
    /// Confirmed under this order id.
    Confirmed(String),
    /// Released.
    Released,
}

/// A confirm or release whose answer never came.
#[derive(Clone, Debug)]
pub enum Pending {
    /// Confirm under this order id.
    Confirm(String),
    /// Release.
    Release,
}

/// One acknowledged reservation, as its shopper knows it.
#[derive(Clone, Debug)]
pub struct Record {
    /// The region it was made in.
    pub region: String,
    /// The reserve request, to be sent again.
    pub request: v1::ReserveRequest,
    /// The reservation as the reserve's answer showed it.
    pub reservation: v1::Reservation,
    /// Its state as last acknowledged.
    pub seen: Seen,
    /// A confirm or release still to be learnt.
    pub pending: Option<Pending>,
}

/// What one shopper did.
#[derive(Debug, Default)]
pub struct ShopLog {
    /// The shopper's region.
    pub region: String,
    /// Acknowledged reservations.
    pub records: Vec<Record>,
    /// Reserves unanswered within their deadline: outcome unknown.
    pub unknown: Vec<v1::ReserveRequest>,
    /// Reserves refused with `INSUFFICIENT_STOCK`.
    pub sold_out: usize,
    /// Errors retried, by reason (or gRPC code for transport errors).
    pub retried: BTreeMap<String, usize>,
}

/// Counters a running shopper shares with the test.
#[derive(Debug, Default)]
pub struct Progress {
    /// Set by the test: finish the current reserve and stop.
    pub stop: AtomicBool,
    /// Reserves acknowledged so far.
    pub acks: AtomicU64,
    /// Reserves refused with `INSUFFICIENT_STOCK` so far.
    pub sold_out: AtomicU64,
    /// Set when the shopper has returned.
    pub done: AtomicBool,
    /// Units per SKU acknowledged as held or confirmed and not released.
    taken: Mutex<BTreeMap<String, u64>>,
}

impl Progress {
    /// Reserves acknowledged so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::SeqCst)
    }

    /// Units of `sku` this shopper was acknowledged to hold or have bought
    /// (and not released), so far.
    pub fn taken(&self, sku: &str) -> u64 {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.get(sku).copied().unwrap_or(0)
    }

    fn take(&self, lines: &[v1::Line]) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        for l in lines {
            *taken.entry(l.sku.clone()).or_default() += l.quantity;
        }
    }

    fn give_back(&self, lines: &[v1::Line]) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        for l in lines {
            let units = taken.entry(l.sku.clone()).or_default();
            *units = units.checked_sub(l.quantity).expect("released units were taken");
        }
    }
}

/// A running shopper.
pub struct Shopper {
    /// Its counters.
    pub progress: Arc<Progress>,
    task: tokio::task::JoinHandle<ShopLog>,
}

impl Shopper {
    /// Starts a shopper in its region of `cluster`.
    pub fn start(cluster: &Cluster, index: usize, options: ShopperOptions) -> Shopper {
        let nodes = cluster.rotation_in(&options.region, index);
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        let task = tokio::spawn(async move {
            let log = shop(nodes, options, &shared).await;
            shared.done.store(true, Ordering::SeqCst);
            log
        });
        Shopper { progress, task }
    }

    /// Tells the shopper to stop and waits for its log.
    pub async fn finish(self) -> ShopLog {
        self.progress.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits until the shopper has sent all its reserves (or run out of
    /// time), and returns its log.
    pub async fn join(self) -> ShopLog {
        self.task.await.expect("a shopper panicked")
    }
}

async fn shop(mut nodes: Rotation, o: ShopperOptions, progress: &Progress) -> ShopLog {
    let started = Instant::now();
    let mut log = ShopLog {
        region: o.region.clone(),
        ..ShopLog::default()
    };
    for i in 0..o.reserves_max {
        if progress.stop.load(Ordering::SeqCst) || started.elapsed() > o.run_max {
            break;
        }
        // SKUs in turn, shifted every four reserves, so each SKU sees every
        // follow-up (with two SKUs, a plain turn would confirm only one).
        let sku = &o.skus[(i + i / 4) % o.skus.len()];
        let mut request = crate::reserve_request(format!("{}-{i}", o.name), vec![line(sku, o.quantity)]);
        request.max_wait_ms = o.max_wait_ms;
        let sold_out_until = Instant::now() + o.sold_out_retry;
        let reserved = loop {
            let reserved = reserve(&nodes, &request, o.call_deadline).await;
            note(&mut log, &reserved.retried);
            let sold_out =
                matches!(&reserved.result, Err(s) if reason_of(s).as_deref() == Some("INSUFFICIENT_STOCK"));
            if !sold_out || Instant::now() >= sold_out_until {
                break reserved;
            }
            *log.retried.entry("INSUFFICIENT_STOCK".into()).or_default() += 1;
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        };
        let reservation = match reserved.result {
            Ok(reservation) => reservation,
            Err(s) if reason_of(&s).as_deref() == Some("INSUFFICIENT_STOCK") => {
                log.sold_out += 1;
                progress.sold_out.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(o.pacing).await;
                continue;
            }
            Err(s) if is_retryable(&s) => {
                log.unknown.push(request);
                continue;
            }
            Err(s) => panic!("{}: reserve refused: {s:?}", request.request_id),
        };
        progress.acks.fetch_add(1, Ordering::SeqCst);
        progress.take(&reservation.lines);
        assert_eq!(reservation.state(), v1::ReservationState::Held, "{reservation:?}");
        assert_eq!(reservation.region, o.region, "{reservation:?}");
        assert_eq!(reservation.lines, request.lines, "{reservation:?}");
        let id = reservation.reservation_id.clone();
        let mut record = Record {
            region: o.region.clone(),
            request,
            reservation,
            seen: Seen::Held,
            pending: None,
        };
        let follow_up = match i % 4 {
            _ if !o.follow_ups => None,
            0 => Some(Pending::Confirm(format!("{}-order-{i}", o.name))),
            1 => Some(Pending::Release),
            _ => None,
        };
        if let Some(action) = follow_up {
            let answer = send_follow_up(&mut nodes, &id, &action, o.call_deadline).await;
            match answer {
                Ok(reservation) => {
                    record.seen = seen(&reservation);
                    if record.seen == Seen::Released {
                        progress.give_back(&reservation.lines);
                    }
                }
                Err(s) if is_retryable(&s) => record.pending = Some(action),
                Err(s) => panic!("{action:?} of {id}: refused: {s:?}"),
            }
        }
        log.records.push(record);
        tokio::time::sleep(o.pacing).await;
    }
    log
}

async fn send_follow_up(
    nodes: &mut Rotation,
    id: &str,
    action: &Pending,
    deadline: Duration,
) -> Result<v1::Reservation, Status> {
    match action {
        Pending::Confirm(order_id) => confirm(nodes, id, order_id, deadline).await.result,
        Pending::Release => release(nodes, id, deadline).await.result,
    }
}

fn note(log: &mut ShopLog, retried: &[String]) {
    for error in retried {
        *log.retried.entry(error.clone()).or_default() += 1;
    }
}

/// The state a shopper sees in an answer. A settled sale was confirmed.
pub fn seen(r: &v1::Reservation) -> Seen {
    match r.state() {
        v1::ReservationState::Held => Seen::Held,
        v1::ReservationState::Confirmed | v1::ReservationState::Settled => {
            Seen::Confirmed(r.order_id.clone())
        }
        v1::ReservationState::Released => Seen::Released,
        other => panic!("{} is {other:?}, which no shopper asked for", r.reservation_id),
    }
}

/// Learns the outcome of every call the shoppers left unanswered, by sending
/// it again with the same request (now that the cluster is whole), and
/// returns every acknowledged reservation.
pub async fn resolve(cluster: &Cluster, logs: Vec<ShopLog>) -> Vec<Record> {
    let mut records = Vec::new();
    for log in logs {
        let mut nodes = cluster.rotation_in(&log.region, 0);
        for request in log.unknown {
            match reserve(&nodes, &request, RETRY_DEADLINE).await.result {
                Ok(reservation) => records.push(Record {
                    region: log.region.clone(),
                    seen: seen(&reservation),
                    request,
                    reservation,
                    pending: None,
                }),
                Err(s) if reason_of(&s).as_deref() == Some("INSUFFICIENT_STOCK") => {}
                Err(s) => panic!("re-sending {}: {s:?}", request.request_id),
            }
        }
        for mut record in log.records {
            if let Some(action) = record.pending.take() {
                let id = record.reservation.reservation_id.clone();
                let answer = send_follow_up(&mut nodes, &id, &action, RETRY_DEADLINE)
                    .await
                    .unwrap_or_else(|s| panic!("re-sending {action:?} of {id}: {s:?}"));
                record.seen = seen(&answer);
            }
            records.push(record);
        }
    }
    records
}

/// Reads every record's reservation in its region (a few readers at a time)
/// and asserts it is there as its shopper last saw it: same lines, same
/// order; a confirmed one may have been settled since.
pub async fn verify_records(cluster: &Cluster, records: &[Record]) {
    const READERS: usize = 4;
    let ids: std::collections::BTreeSet<(&str, &str)> = records
        .iter()
        .map(|r| (r.region.as_str(), r.reservation.reservation_id.as_str()))
        .collect();
    assert_eq!(ids.len(), records.len(), "two requests share a reservation");
    let records = Arc::new(records.to_vec());
    let mut readers = Vec::new();
    for reader in 0..READERS {
        let records = records.clone();
        let mut nodes: BTreeMap<String, Rotation> = crate::REGIONS
            .iter()
            .map(|r| (r.to_string(), cluster.rotation_in(r, reader)))
            .collect();
        readers.push(tokio::spawn(async move {
            for record in records.iter().skip(reader).step_by(READERS) {
                let id = &record.reservation.reservation_id;
                let rotation = nodes.get_mut(&record.region).expect("a known region");
                let request = v1::GetReservationRequest {
                    reservation_id: id.clone(),
                };
                let found = crate::retry(rotation, RETRY_DEADLINE, |channel| {
                    let request = request.clone();
                    async move {
                        v1::inventory_client::InventoryClient::new(channel)
                            .get_reservation(request)
                            .await
                    }
                })
                .await
                .result
                .unwrap_or_else(|s| panic!("acknowledged reservation {id} not found: {s:?}"));
                assert_eq!(seen(&found), record.seen, "{id}: {found:?}");
                assert_eq!(found.lines, record.reservation.lines, "{id}");
                assert_eq!(found.created_at_ms, record.reservation.created_at_ms, "{id}");
            }
        }));
    }
    for reader in readers {
        reader.await.expect("a reader panicked");
    }
}

/// Units of `sku` in the records of `region` (every region when `None`)
/// whose last state satisfies `state`.
pub fn units(records: &[Record], region: Option<&str>, sku: &str, state: impl Fn(&Seen) -> bool) -> u64 {
    records
        .iter()
        .filter(|r| region.is_none_or(|region| r.region == region))
        .filter(|r| state(&r.seen))
        .map(|r| units_of(&r.reservation.lines, sku))
        .sum()
}

/// True for a held reservation.
pub fn is_held(seen: &Seen) -> bool {
    *seen == Seen::Held
}

/// True for a confirmed (or settled) reservation.
pub fn is_confirmed(seen: &Seen) -> bool {
    matches!(seen, Seen::Confirmed(_))
}
