//! The simulated shoppers: clients per region that reserve, confirm,
//! release, extend, read current state, and send a reserve again with the
//! same request id (as a client does that timed out on an answer that was
//! in fact given). Each call goes to the node the client believes leads
//! (following the leader hint), is retried on retryable answers with the
//! same request id, and is bounded; reads go to any node of the region, as
//! through a load balancer. Every answer is recorded in the [`History`],
//! which checks it as it arrives.

use std::sync::Arc;
use std::time::Duration;

use reservoir_node::server::node::{FORWARDED_HEADER, PRINCIPAL_HEADER};
use reservoir_node::server::service::InventoryService;
use reservoir_proto::v1;
use reservoir_proto::v1::inventory_server::Inventory;
use reservoir_raft::NodeId;
use reservoir_tokens::ReservationState;
use tokio::time::Instant;
use tonic::Status;

use crate::check::History;
use crate::cluster::{Directory, nodes_of};
use crate::rng::Rng;
use crate::trace::Trace;

/// The SKUs shoppers want.
pub const SKUS: [&str; 3] = ["console-x", "phone-y", "tv-z"];
/// Units of each SKU in stock.
pub const STOCK_PER_SKU: u64 = 300;
/// How long each region's rush lasts before it moves to the next region.
pub const HOT_MS: u64 = 4_000;
/// How long one call may take before the client gives up on it (the
/// outcome is then unknown).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per call (the first included), all with the same request id.
pub const CALL_TRIES: usize = 6;

/// What clients share.
#[derive(Clone)]
pub struct Shared {
    /// The nodes that are up.
    pub directory: Arc<Directory>,
    /// The history.
    pub history: History,
    /// The trace.
    pub trace: Trace,
    /// The simulation's start.
    pub start: Instant,
}

impl Shared {
    /// Simulated milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.start).as_millis() as u64
    }
}

/// How a call ended.
pub enum Answer<T> {
    /// Answered OK by this node.
    Ok(T, NodeId),
    /// Refused by this node with this reason (or code), not worth
    /// retrying.
    Refused(String, NodeId),
    /// No answer the client can act on: the outcome is unknown.
    Unknown,
}

/// A reservation this client holds and may act on.
struct Held {
    id: String,
}

/// One client.
pub struct Client {
    id: u64,
    region: &'static str,
    principal: String,
    rng: Rng,
    shared: Shared,
    preferred: Option<NodeId>,
    held: Vec<Held>,
    sent: Vec<(String, Vec<(String, u64)>)>,
    next: u64,
}

/// `message` as a call forwarded for `principal` (never forwarded again).
fn request<T>(principal: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    if let Ok(p) = principal.parse() {
        request.metadata_mut().insert(PRINCIPAL_HEADER, p);
    }
    request
}

fn to_state(state: i32) -> Option<ReservationState> {
    Some(match v1::ReservationState::try_from(state).ok()? {
        v1::ReservationState::Held => ReservationState::Held,
        v1::ReservationState::Confirmed => ReservationState::Confirmed,
        v1::ReservationState::Released => ReservationState::Released,
        v1::ReservationState::Expired => ReservationState::Expired,
        v1::ReservationState::Settled => ReservationState::Settled,
        v1::ReservationState::Unspecified => return None,
    })
}

impl Client {
    /// Client `id` of region `region`.
    pub fn new(id: u64, region: &'static str, rng: Rng, shared: Shared) -> Client {
        Client {
            id,
            region,
            // One principal per region: every client of a region may read
            // every reservation made there.
            principal: format!("shop-{region}"),
            rng,
            shared,
            preferred: None,
            held: Vec::new(),
            sent: Vec::new(),
            next: 0,
        }
    }

    /// Calls the region: the preferred node (or, with `anywhere`, any
    /// node), retrying on retryable answers and timeouts.
    async fn call<T, F, Fut>(&mut self, anywhere: bool, f: F) -> Answer<T>
    where
        F: Fn(Arc<InventoryService>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let nodes = nodes_of(self.region);
        for _ in 0..CALL_TRIES {
            let node = match self.preferred {
                Some(n) if !anywhere => n,
                _ => *self.rng.pick(&nodes),
            };
            let Some(handles) = self.shared.directory.get(node) else {
                self.preferred = None;
                tokio::time::sleep(Duration::from_millis(self.rng.range(20, 100))).await;
                continue;
            };
            match tokio::time::timeout(CALL_TIMEOUT, f(handles.inventory)).await {
                Ok(Ok(response)) => {
                    if !anywhere {
                        self.preferred = Some(node);
                    }
                    return Answer::Ok(response.into_inner(), node);
                }
                Ok(Err(status)) => {
                    if let Some(hint) = reservoir_client::leader_hint(status.metadata()) {
                        self.preferred = Some(hint);
                    } else {
                        self.preferred = None;
                    }
                    if !reservoir_client::is_retryable(&status) {
                        return Answer::Refused(reservoir_client::reason_or_code(&status), node);
                    }
                    tokio::time::sleep(Duration::from_millis(self.rng.range(20, 150))).await;
                }
                Err(_) => self.preferred = None,
            }
        }
        Answer::Unknown
    }

    /// Runs until `stop_ms` (simulated), then returns.
    pub async fn run(mut self, stop_ms: u64) {
        let index = crate::cluster::REGIONS
            .iter()
            .position(|r| *r == self.region)
            .unwrap_or(0) as u64;
        while self.shared.now_ms() < stop_ms {
            // Demand moves around the world: each region is hot for
            // HOT_MS in turn (shoppers come fast), cold otherwise, so the
            // rebalancer must move tokens to where the shoppers are.
            let hot = (self.shared.now_ms() / HOT_MS + index).is_multiple_of(3);
            let think = if hot {
                self.rng.range(5, 60)
            } else {
                self.rng.range(100, 600)
            };
            tokio::time::sleep(Duration::from_millis(think)).await;
            let roll = self.rng.below(100);
            if roll < 50 || self.held.is_empty() && roll < 80 {
                self.reserve().await;
            } else if roll < 65 {
                self.read_any().await;
            } else if roll < 75 {
                self.resend().await;
            } else {
                self.act().await;
            }
        }
    }

    fn lines(&mut self) -> Vec<(String, u64)> {
        let n = self.rng.range(1, 2);
        let mut lines: Vec<(String, u64)> = Vec::new();
        for _ in 0..n {
            let sku = self.rng.pick(&SKUS).to_string();
            if lines.iter().all(|(s, _)| *s != sku) {
                lines.push((sku, self.rng.range(1, 3)));
            }
        }
        lines
    }

    async fn reserve(&mut self) {
        self.next += 1;
        let request_id = format!("c{}-{}", self.id, self.next);
        let lines = self.lines();
        let ttl_ms = self.rng.range(2_000, 12_000);
        let max_wait_ms = if self.rng.chance(0.3) {
            self.rng.range(100, 1_000)
        } else {
            0
        };
        self.send_reserve(request_id, lines, ttl_ms, max_wait_ms, false)
            .await;
    }

    async fn send_reserve(
        &mut self,
        request_id: String,
        lines: Vec<(String, u64)>,
        ttl_ms: u64,
        max_wait_ms: u64,
        again: bool,
    ) {
        let message = v1::ReserveRequest {
            request_id: request_id.clone(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| v1::Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
                .collect(),
            ttl_ms,
            allow_partial: false,
            max_wait_ms,
        };
        let start = self.shared.now_ms();
        let principal = self.principal.clone();
        let answer = self
            .call(false, |svc| {
                let request = request(&principal, message.clone());
                async move { svc.reserve(request).await }
            })
            .await;
        let now = self.shared.now_ms();
        let what = if again { "reserve again" } else { "reserve" };
        match answer {
            Answer::Ok(response, node) => {
                let Some(r) = response.reservation else {
                    self.shared
                        .history
                        .violation(now, format!("{what} {request_id}: OK without a reservation"));
                    return;
                };
                self.shared.trace.event(
                    now,
                    format!(
                        "c{} {what} {request_id} -> {} on n{node} ({} ms)",
                        self.id,
                        r.reservation_id,
                        now - start
                    ),
                );
                self.shared
                    .history
                    .reserved(now, &request_id, &r.reservation_id, self.region, &lines);
                if !again {
                    self.sent.push((request_id, lines));
                    self.held.push(Held { id: r.reservation_id });
                }
            }
            Answer::Refused(reason, node) => {
                self.shared
                    .trace
                    .event(now, format!("c{} {what} {request_id} refused {reason}", self.id));
                // A resend differs from the reserve it repeats (its TTL):
                // the region must recognise the request id and refuse it;
                // any other answer means it took it for a new reserve.
                if again && reason != "REQUEST_ID_REUSED" {
                    self.shared.history.violation(
                        now,
                        format!("{request_id} sent again was answered {reason} on n{node}: its request id was forgotten"),
                    );
                }
            }
            Answer::Unknown => {
                self.shared
                    .trace
                    .event(now, format!("c{} {what} {request_id} unknown", self.id));
            }
        }
    }

    /// Sends one of this client's acknowledged reserves again: same request
    /// id and lines, another TTL. The region must refuse it
    /// (`REQUEST_ID_REUSED`) or, if the TTL happens to match, answer the
    /// same reservation; never make a second one.
    async fn resend(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let i = self.rng.below(self.sent.len() as u64) as usize;
        let (request_id, lines) = self.sent[i].clone();
        self.send_reserve(request_id, lines, 5_000, 0, true).await;
    }

    /// A current read of any acknowledged reservation of this region.
    async fn read_any(&mut self) {
        let ids = self.shared.history.reservations_in(self.region);
        if ids.is_empty() {
            return;
        }
        let id = self.rng.pick(&ids).clone();
        let start = self.shared.now_ms();
        let message = v1::GetReservationRequest {
            reservation_id: id.clone(),
        };
        let principal = self.principal.clone();
        let answer = self
            .call(true, |svc| {
                let request = request(&principal, message.clone());
                async move { svc.get_reservation(request).await }
            })
            .await;
        let end = self.shared.now_ms();
        match answer {
            Answer::Ok(r, node) => {
                let state = to_state(r.state);
                self.shared
                    .trace
                    .event(end, format!("c{} read {id} on n{node}: {state:?}", self.id));
                self.shared.history.read(start, end, &id, state, node);
            }
            Answer::Refused(reason, node) if reason == "RESERVATION_NOT_FOUND" => {
                self.shared
                    .trace
                    .event(end, format!("c{} read {id} on n{node}: not found", self.id));
                self.shared.history.read(start, end, &id, None, node);
            }
            Answer::Refused(reason, _) => {
                self.shared
                    .trace
                    .event(end, format!("c{} read {id} refused {reason}", self.id));
            }
            Answer::Unknown => self
                .shared
                .trace
                .event(end, format!("c{} read {id} unknown", self.id)),
        }
    }

    /// Confirms, releases or extends one of this client's holds.
    async fn act(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let id = self.held[i].id.clone();
        let roll = self.rng.below(100);
        let (what, answer) = if roll < 60 {
            self.held.swap_remove(i);
            self.shared.history.sent(&id, true);
            let message = v1::ConfirmRequest {
                reservation_id: id.clone(),
                order_id: format!("order-{id}"),
                lines: Vec::new(),
            };
            let principal = self.principal.clone();
            let a = self
                .call(false, |svc| {
                    let request = request(&principal, message.clone());
                    async move {
                        svc.confirm(request)
                            .await
                            .map(|r| r.map(|r| r.reservation.map(|r| r.state)))
                    }
                })
                .await;
            ("confirm", a)
        } else if roll < 85 {
            self.held.swap_remove(i);
            self.shared.history.sent(&id, false);
            let message = v1::ReleaseRequest {
                reservation_id: id.clone(),
            };
            let principal = self.principal.clone();
            let a = self
                .call(false, |svc| {
                    let request = request(&principal, message.clone());
                    async move {
                        svc.release(request)
                            .await
                            .map(|r| r.map(|r| r.reservation.map(|r| r.state)))
                    }
                })
                .await;
            ("release", a)
        } else {
            let message = v1::ExtendRequest {
                reservation_id: id.clone(),
                ttl_ms: self.rng.range(2_000, 10_000),
            };
            let principal = self.principal.clone();
            let a = self
                .call(false, |svc| {
                    let request = request(&principal, message.clone());
                    async move {
                        svc.extend(request)
                            .await
                            .map(|r| r.map(|r| r.reservation.map(|r| r.state)))
                    }
                })
                .await;
            ("extend", a)
        };
        let now = self.shared.now_ms();
        match answer {
            Answer::Ok(state, node) => {
                let state = state.and_then(to_state);
                self.shared
                    .trace
                    .event(now, format!("c{} {what} {id} ok on n{node}: {state:?}", self.id));
                match (what, state) {
                    ("confirm", Some(ReservationState::Confirmed | ReservationState::Settled)) => {
                        self.shared.history.confirmed(now, &id)
                    }
                    // A release answers OK for a hold that had already
                    // expired: it is ended either way, as the answer says.
                    ("release", Some(s @ (ReservationState::Released | ReservationState::Expired))) => {
                        self.shared.history.released(now, &id, s)
                    }
                    ("extend", Some(ReservationState::Held)) => {}
                    (what, state) => self.shared.history.violation(
                        now,
                        format!("{id}: {what} answered OK with the reservation {state:?}"),
                    ),
                }
            }
            Answer::Refused(reason, _) => {
                self.shared
                    .trace
                    .event(now, format!("c{} {what} {id} refused {reason}", self.id));
            }
            Answer::Unknown => self
                .shared
                .trace
                .event(now, format!("c{} {what} {id} unknown", self.id)),
        }
    }

    /// One reserve of one unit, for the liveness check: true when the
    /// region answered it (OK, or refused for want of stock).
    pub async fn probe(&mut self) -> bool {
        self.next += 1;
        let message = v1::ReserveRequest {
            request_id: format!("probe-{}-{}", self.id, self.next),
            lines: vec![v1::Line {
                sku: SKUS[0].to_string(),
                quantity: 1,
            }],
            ttl_ms: 1_000,
            allow_partial: false,
            max_wait_ms: 0,
        };
        let principal = self.principal.clone();
        let answer = self
            .call(false, |svc| {
                let request = request(&principal, message.clone());
                async move { svc.reserve(request).await }
            })
            .await;
        match answer {
            Answer::Ok(..) => true,
            Answer::Refused(reason, _) => reason == "INSUFFICIENT_STOCK",
            Answer::Unknown => false,
        }
    }
}
