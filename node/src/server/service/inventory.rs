//! `reservoir.v1.Inventory`: reserve, confirm, release, extend, and reads of
//! a reservation and of availability, for shoppers.

use std::sync::Arc;
use std::time::Duration;

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tokens::{Line, RegionApplied, RegionOp, RegionState, Rejection};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{
    Caller, Plane, forwarding, leader_answer, note_request_id, note_reservation_id, recorded, unexpected,
};
use crate::server::edge;
use crate::server::node::{Node, Route, TOPUP_POLL, WriteError};
use crate::server::security::Permission;
use crate::server::status::{code, to_status};
use reservoir_tokens::limits;
use tonic_types::StatusExt;

/// `reservoir.v1.Inventory` for one region, on one listener.
pub struct InventoryService {
    node: Arc<Node>,
    plane: Plane,
}

impl InventoryService {
    /// The service over `node`, for the callers of `plane`.
    pub fn new(node: Arc<Node>, plane: Plane) -> InventoryService {
        InventoryService { node, plane }
    }

    fn reservation(&self, r: reservoir_tokens::Reservation) -> Option<v1::Reservation> {
        Some(edge::reservation_to_proto(self.node.region(), r))
    }

    /// Waits until this region has the tokens for every line, up to `wait`.
    async fn wait_for_tokens(&self, lines: &[Line], wait: Duration) -> bool {
        self.wait_until(wait, |s| has_tokens(s, lines)).await
    }

    /// Waits until `ready` holds of this node's applied state, up to `wait`;
    /// whether it did.
    async fn wait_until(&self, wait: Duration, ready: impl Fn(&RegionState) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.node.group().read(&ready).unwrap_or(false) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(TOPUP_POLL).await;
        }
    }

    /// Asks for a top-up of every SKU of `lines` now under the low-water mark.
    fn check_low_water(&self, lines: &[Line]) {
        let low_water = self.node.config().rebalance.low_water;
        for line in lines {
            let low = self
                .node
                .group()
                .read(|s| s.bucket(&line.sku).is_none_or(|b| b.available < low_water));
            if low.unwrap_or(false) {
                self.node.request_topup(&line.sku);
            }
        }
    }

    async fn reserve_inner(
        &self,
        caller: &Caller,
        req: v1::ReserveRequest,
    ) -> Result<v1::ReserveResponse, Status> {
        let validated = edge::reserve_op(
            req.clone(),
            &caller.principal,
            crate::server::clock::reservation_nonce(),
        )
        .map_err(|r| to_status(&r))?;
        let lines: Vec<Line> = match &validated.op {
            RegionOp::Reserve { lines, .. } => lines.clone(),
            _ => Vec::new(),
        };
        // A copy to retry with only when the caller may wait for a top-up.
        let retry =
            (validated.max_wait_ms > 0 && !self.node.config().standalone).then(|| validated.op.clone());
        let forwarded = caller.forwarded;
        let mut outcome = self.node.write(validated.op, forwarded).await;
        let mut waited = false;
        if !matches!(outcome, Ok(Route::Leader(_))) {
            // Counted where the reserve is proposed (the leader), once.
            let now = self.node.now_ms();
            for line in &lines {
                self.node.demand().record(&line.sku, line.quantity, now);
            }
        }
        if let Err(WriteError::Rejected(Rejection::InsufficientStock { .. })) = &outcome {
            for line in &lines {
                self.node.request_topup(&line.sku);
            }
            if let Some(op) = retry {
                metrics::counter!("reservoir_reserves_waited_total").increment(1);
                waited = true;
                if self
                    .wait_for_tokens(&lines, Duration::from_millis(validated.max_wait_ms))
                    .await
                {
                    outcome = self.node.write(op, forwarded).await;
                }
            }
        }
        match &outcome {
            Ok(Route::Applied(RegionApplied::Reservation(_))) => count_hit(waited),
            Err(WriteError::Rejected(Rejection::InsufficientStock { .. })) => count_short(1),
            _ => {}
        }
        match outcome? {
            Route::Applied(RegionApplied::Reservation(r)) => {
                self.check_low_water(&r.lines);
                let reservation = self.reservation(r);
                if let Some(r) = &reservation {
                    note_reservation_id(&r.reservation_id);
                }
                Ok(v1::ReserveResponse { reservation })
            }
            Route::Applied(other) => Err(unexpected("reserve", &other)),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                leader_answer(client.reserve(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }

    /// `answer`, on the client plane of a follower that knows its leader,
    /// with the leader's node id in [`reservoir_client::LEADER_HINT_HEADER`]
    /// (OK or not): a client can call the leader next time rather than be
    /// forwarded.
    fn hinted<T>(&self, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        if self.plane != Plane::Client {
            return answer;
        }
        let Some(leader) = self.node.leader_hint() else {
            return answer;
        };
        let hint = tonic::metadata::MetadataValue::from(leader);
        match answer {
            Ok(mut response) => {
                response
                    .metadata_mut()
                    .insert(reservoir_client::LEADER_HINT_HEADER, hint);
                Ok(response)
            }
            Err(mut status) => {
                status
                    .metadata_mut()
                    .insert(reservoir_client::LEADER_HINT_HEADER, hint);
                Err(status)
            }
        }
    }

    /// Many reserves in one commit: each validated on its own (a bad one gets
    /// its error, the others go on), all proposed in one log entry, each
    /// answered with its reservation or its error, in order. Reserves refused
    /// for want of tokens that may wait (`max_wait_ms`) wait together, once,
    /// for a top-up (until one of them could be served, or the longest wait
    /// has passed) and are proposed again together; if no tokens came they
    /// keep their first answer, and if that second proposal fails only they
    /// get its error. A follower forwards the whole batch to the leader.
    async fn reserve_batch_inner(
        &self,
        caller: &Caller,
        req: v1::ReserveBatchRequest,
    ) -> Result<v1::ReserveBatchResponse, Status> {
        limits::check_batch_size(req.reserves.len()).map_err(|r| to_status(&r))?;
        if let Some(addr) = self.node.leader_to_forward_to(caller.forwarded).await {
            let mut client = self.node.inventory(&addr)?;
            return leader_answer(client.reserve_batch(forwarding(req, caller)))
                .await
                .map(Response::into_inner);
        }
        let waits = !self.node.config().standalone;
        let mut results: Vec<Option<v1::ReserveResult>> = vec![None; req.reserves.len()];
        let mut pending = Vec::with_capacity(req.reserves.len());
        let mut ops = Vec::with_capacity(req.reserves.len());
        for (i, reserve) in req.reserves.into_iter().enumerate() {
            match edge::reserve_op(
                reserve,
                &caller.principal,
                crate::server::clock::reservation_nonce(),
            ) {
                Ok(v) => {
                    let retry = (waits && v.max_wait_ms > 0).then(|| v.op.clone());
                    pending.push((i, v.max_wait_ms, retry));
                    ops.push(v.op);
                }
                Err(rejection) => results[i] = Some(batch_error(&rejection)),
            }
        }
        let now = self.node.now_ms();
        for op in &ops {
            if let RegionOp::Reserve { lines, .. } = op {
                for line in lines {
                    self.node.demand().record(&line.sku, line.quantity, now);
                }
            }
        }
        // Reserves refused for want of tokens that may wait: (index, its
        // wait, the retry, the first answer if no tokens come).
        let mut waiting: Vec<(usize, u64, RegionOp, Rejection)> = Vec::new();
        // The lines reserved (for the low-water check), one entry per SKU.
        let mut reserved: Vec<Line> = Vec::new();
        if !ops.is_empty() {
            for ((i, max_wait_ms, retry), outcome) in
                pending.into_iter().zip(self.node.write_many(ops).await?)
            {
                if let Err(rejection @ Rejection::InsufficientStock { sku, .. }) = &outcome {
                    self.node.request_topup(sku);
                    if let Some(op) = retry {
                        waiting.push((i, max_wait_ms, op, rejection.clone()));
                        continue;
                    }
                }
                count_batch_outcome(&outcome, false);
                results[i] = Some(self.batch_result(outcome, &mut reserved));
            }
        }
        if !waiting.is_empty() {
            metrics::counter!("reservoir_reserves_waited_total").increment(waiting.len() as u64);
            // They wait together: until the tokens of one of them are there,
            // or the longest of their waits has passed.
            let wait = waiting.iter().map(|w| w.1).max().unwrap_or(0);
            let any = |s: &RegionState| {
                waiting.iter().any(|(_, _, op, _)| match op {
                    RegionOp::Reserve { lines, .. } => has_tokens(s, lines),
                    _ => false,
                })
            };
            if self.wait_until(Duration::from_millis(wait), any).await {
                let mut slots = Vec::with_capacity(waiting.len());
                let mut ops = Vec::with_capacity(waiting.len());
                for (i, _, op, _) in waiting {
                    slots.push(i);
                    ops.push(op);
                }
                // What committed in the first proposal stands whatever this
                // one comes to: a failure answers only these reserves.
                match self.node.write_many(ops).await {
                    Ok(outcomes) => {
                        for (i, outcome) in slots.into_iter().zip(outcomes) {
                            count_batch_outcome(&outcome, true);
                            results[i] = Some(self.batch_result(outcome, &mut reserved));
                        }
                    }
                    Err(status) => {
                        for i in slots {
                            results[i] = Some(v1::ReserveResult {
                                outcome: Some(v1::reserve_result::Outcome::Error(status_error(&status))),
                            });
                        }
                    }
                }
            } else {
                count_short(waiting.len() as u64);
                for (i, _, _, rejection) in waiting {
                    results[i] = Some(batch_error(&rejection));
                }
            }
        }
        self.check_low_water(&reserved);
        let mut ok = 0;
        for result in results.iter().flatten() {
            match &result.outcome {
                Some(v1::reserve_result::Outcome::Error(e)) => {
                    metrics::counter!("reservoir_batch_reserves_total", "outcome" => e.reason.clone())
                        .increment(1);
                }
                _ => ok += 1,
            }
        }
        metrics::counter!("reservoir_batch_reserves_total", "outcome" => "ok").increment(ok);
        Ok(v1::ReserveBatchResponse {
            results: results
                .into_iter()
                .map(|r| r.ok_or_else(|| unexpected("reserve batch", &"a reserve without a result")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// One reserve's outcome as its batch result; a reservation's lines are
    /// added to `reserved`.
    fn batch_result(
        &self,
        outcome: Result<RegionApplied, Rejection>,
        reserved: &mut Vec<Line>,
    ) -> v1::ReserveResult {
        match outcome {
            Ok(RegionApplied::Reservation(r)) => {
                add_lines(reserved, &r.lines);
                v1::ReserveResult {
                    outcome: Some(v1::reserve_result::Outcome::Reservation(
                        edge::reservation_to_proto(self.node.region(), r),
                    )),
                }
            }
            Ok(other) => v1::ReserveResult {
                outcome: Some(v1::reserve_result::Outcome::Error(status_error(&unexpected(
                    "reserve", &other,
                )))),
            },
            Err(rejection) => batch_error(&rejection),
        }
    }

    /// Proposes a release, confirm or extend here, or forwards the original
    /// request to the leader with `forward`; either way the reservation as
    /// it now is.
    async fn write_reservation<F, Fut>(
        &self,
        what: &'static str,
        op: Result<RegionOp, Rejection>,
        caller: &Caller,
        forward: F,
    ) -> Result<Option<v1::Reservation>, Status>
    where
        F: FnOnce(InventoryClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<v1::Reservation>, Status>>,
    {
        let op = op.map_err(|r| to_status(&r))?;
        match self.node.write(op, caller.forwarded).await? {
            Route::Applied(RegionApplied::Reservation(r)) => Ok(self.reservation(r)),
            Route::Applied(other) => Err(unexpected(what, &other)),
            Route::Leader(addr) => leader_answer(forward(self.node.inventory(&addr)?)).await,
        }
    }

    async fn release_inner(
        &self,
        caller: &Caller,
        req: v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let op = edge::release_op(self.node.region(), req.clone(), &caller.principal);
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.release(forwarding(req, caller)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("release", op, caller, forward).await?;
        Ok(v1::ReleaseResponse { reservation })
    }

    async fn confirm_inner(
        &self,
        caller: &Caller,
        req: v1::ConfirmRequest,
    ) -> Result<v1::ConfirmResponse, Status> {
        let op = edge::confirm_op(self.node.region(), req.clone(), &caller.principal);
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.confirm(forwarding(req, caller)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("confirm", op, caller, forward).await?;
        Ok(v1::ConfirmResponse { reservation })
    }

    async fn extend_inner(
        &self,
        caller: &Caller,
        req: v1::ExtendRequest,
    ) -> Result<v1::ExtendResponse, Status> {
        let op = edge::extend_op(self.node.region(), req.clone(), &caller.principal);
        let forward = |mut c: InventoryClient<Channel>| async move {
            Ok(c.extend(forwarding(req, caller)).await?.into_inner().reservation)
        };
        let reservation = self.write_reservation("extend", op, caller, forward).await?;
        Ok(v1::ExtendResponse { reservation })
    }

    async fn get_reservation_inner(
        &self,
        caller: &Caller,
        req: v1::GetReservationRequest,
    ) -> Result<v1::Reservation, Status> {
        let id = edge::get_reservation_id(self.node.region(), &req).map_err(|r| to_status(&r))?;
        let owner = caller.principal.as_str();
        match self
            .node
            .read_current(caller.forwarded, |s| s.reservation_of(id, owner))
            .await?
        {
            Route::Applied(Some(r)) => Ok(edge::reservation_to_proto(self.node.region(), r)),
            Route::Applied(None) => Err(to_status(&Rejection::ReservationNotFound {
                id: req.reservation_id.clone(),
            })),
            Route::Leader(addr) => {
                let mut client = self.node.inventory(&addr)?;
                leader_answer(client.get_reservation(forwarding(req, caller)))
                    .await
                    .map(Response::into_inner)
            }
        }
    }

    fn get_availability_inner(&self, req: v1::GetAvailabilityRequest) -> Result<v1::Availability, Status> {
        let sku = edge::availability_sku(req).map_err(|r| to_status(&r))?;
        let local = self
            .node
            .group()
            .read(|s| s.bucket(&sku).map_or(0, |b| b.available))
            .map_err(|_| self.node.no_leader())?;
        // This region's exact figure; the others (and the ledger's pool) as
        // last heard through gossip, with how old the oldest figure is.
        let estimate = self
            .node
            .availability()
            .estimate(&sku, self.node.region(), local, self.node.now_ms());
        Ok(v1::Availability {
            sku,
            region: self.node.region().to_string(),
            local_available: local,
            global_available_estimate: estimate.total,
            available_by_region: estimate.by_region.into_iter().collect(),
            staleness_ms: estimate.staleness_ms,
        })
    }
}

#[tonic::async_trait]
impl v1::inventory_server::Inventory for InventoryService {
    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let answer = recorded(self.plane, "reserve", async {
            note_request_id(&request.get_ref().request_id);
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.reserve_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn reserve_batch(
        &self,
        request: Request<v1::ReserveBatchRequest>,
    ) -> Result<Response<v1::ReserveBatchResponse>, Status> {
        let answer = recorded(self.plane, "reserve_batch", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.reserve_batch_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let answer = recorded(self.plane, "release", async {
            note_reservation_id(&request.get_ref().reservation_id);
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.release_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn confirm(
        &self,
        request: Request<v1::ConfirmRequest>,
    ) -> Result<Response<v1::ConfirmResponse>, Status> {
        let answer = recorded(self.plane, "confirm", async {
            note_reservation_id(&request.get_ref().reservation_id);
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.confirm_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        let answer = recorded(self.plane, "extend", async {
            note_reservation_id(&request.get_ref().reservation_id);
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.extend_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::Reservation>, Status> {
        let answer = recorded(self.plane, "get_reservation", async {
            note_reservation_id(&request.get_ref().reservation_id);
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::ReadReservation)
                .await?;
            self.get_reservation_inner(&caller, request.into_inner()).await
        })
        .await;
        self.hinted(answer)
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::Availability>, Status> {
        let answer = recorded(self.plane, "get_availability", async {
            self.plane
                .caller(&self.node, &request, Permission::ReadAvailability)
                .await?;
            self.get_availability_inner(request.into_inner())
        })
        .await;
        self.hinted(answer)
    }
}

/// Counts a reserve that held tokens in `reservoir_reserve_hits_total`:
/// `local` when the region had them, `after_topup` when it waited for them.
fn count_hit(waited: bool) {
    if waited {
        metrics::counter!("reservoir_reserve_hits_total", "result" => "after_topup").increment(1);
    } else {
        metrics::counter!("reservoir_reserve_hits_total", "result" => "local").increment(1);
    }
}

/// Counts `n` reserves refused for want of tokens (`short`).
fn count_short(n: u64) {
    metrics::counter!("reservoir_reserve_hits_total", "result" => "short").increment(n);
}

/// Counts one reserve of a batch by its outcome (after a wait or not).
fn count_batch_outcome(outcome: &Result<RegionApplied, Rejection>, waited: bool) {
    match outcome {
        Ok(RegionApplied::Reservation(_)) => count_hit(waited),
        Err(Rejection::InsufficientStock { .. }) => count_short(1),
        _ => {}
    }
}

/// A refused reserve of a batch, as the unary `Reserve` would answer it.
fn batch_error(rejection: &Rejection) -> v1::ReserveResult {
    v1::ReserveResult {
        outcome: Some(v1::reserve_result::Outcome::Error(v1::ReserveError {
            code: code(rejection.kind()) as i32,
            reason: rejection.reason().to_string(),
            message: rejection.to_string(),
            metadata: rejection
                .metadata()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })),
    }
}

/// A status as a batch's per-reserve error (its code, ErrorInfo reason and
/// metadata).
fn status_error(status: &Status) -> v1::ReserveError {
    let info = status.get_details_error_info();
    v1::ReserveError {
        code: status.code() as i32,
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        message: status.message().to_string(),
        metadata: info.map(|i| i.metadata.into_iter().collect()).unwrap_or_default(),
    }
}

/// True when `s` has the tokens for every one of `lines`.
fn has_tokens(s: &RegionState, lines: &[Line]) -> bool {
    lines
        .iter()
        .all(|l| s.bucket(&l.sku).is_some_and(|b| b.available >= l.quantity))
}

/// Adds `lines` to `into`, summing the units of a SKU already there.
fn add_lines(into: &mut Vec<Line>, lines: &[Line]) {
    for line in lines {
        match into.iter_mut().find(|l| l.sku == line.sku) {
            Some(l) => l.quantity = l.quantity.saturating_add(line.quantity),
            None => into.push(line.clone()),
        }
    }
}
