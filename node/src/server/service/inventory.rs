//! `reservoir.v1.Inventory`: reserve, confirm, release, extend, and reads of
//! a reservation and of availability, for shoppers.

use std::sync::Arc;
use std::time::Duration;

use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tokens::{Line, RegionApplied, RegionOp, Rejection};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{Caller, Plane, forwarding, leader_answer, recorded, unexpected};
use crate::server::edge;
use crate::server::node::{Node, Route, TOPUP_POLL, WriteError};
use crate::server::security::Permission;
use crate::server::status::to_status;

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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let enough = self
                .node
                .group()
                .read(|s| {
                    lines
                        .iter()
                        .all(|l| s.bucket(&l.sku).is_some_and(|b| b.available >= l.quantity))
                })
                .unwrap_or(false);
            if enough {
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
                if self
                    .wait_for_tokens(&lines, Duration::from_millis(validated.max_wait_ms))
                    .await
                {
                    outcome = self.node.write(op, forwarded).await;
                }
            }
        }
        match outcome? {
            Route::Applied(RegionApplied::Reservation(r)) => {
                self.check_low_water(&r.lines);
                Ok(v1::ReserveResponse {
                    reservation: self.reservation(r),
                })
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
        recorded("reserve", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.reserve_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        recorded("release", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.release_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn confirm(
        &self,
        request: Request<v1::ConfirmRequest>,
    ) -> Result<Response<v1::ConfirmResponse>, Status> {
        recorded("confirm", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.confirm_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        recorded("extend", async {
            let caller = self.plane.caller(&self.node, &request, Permission::Write).await?;
            self.extend_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::Reservation>, Status> {
        recorded("get_reservation", async {
            let caller = self
                .plane
                .caller(&self.node, &request, Permission::ReadReservation)
                .await?;
            self.get_reservation_inner(&caller, request.into_inner()).await
        })
        .await
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::Availability>, Status> {
        recorded("get_availability", async {
            self.plane
                .caller(&self.node, &request, Permission::ReadAvailability)
                .await?;
            self.get_availability_inner(request.into_inner())
        })
        .await
    }
}
