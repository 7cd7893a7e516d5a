//! The gRPC services of a node: `reservoir.v1.Inventory` ([`inventory`]),
//! `reservoir.v1.Admin` ([`admin`]) and the internal control plane,
//! `reservoir.internal.v1.Control` ([`control`]), all over one
//! [`Node`](crate::server::node::Node).
//!
//! Any node accepts any call. Writes are proposed to the region's Raft group;
//! on a follower they are forwarded once to the leader (the original request,
//! so the leader stamps the time), over the peer plane, marked so they are
//! never forwarded twice and naming the principal they are made for.
//! `GetReservation` is a linearizable read on the leader; `GetAvailability`
//! answers from local state.
//!
//! `Inventory` and `Admin` run on both listeners ([`Plane`]): on the client
//! plane every call is authenticated and its role checked first
//! ([`crate::server::security::clients`]), and a client-set forwarding mark
//! means nothing; on the peer plane only calls forwarded by a node of this
//! group are taken ([`crate::server::security::peers`]). This module holds
//! what the services share: who the caller is, forwarding, and a count,
//! latency and span per call.
//!
//! Each call runs in an `rpc` span (target
//! [`RPC_TARGET`](crate::server::logging::RPC_TARGET)): `method`, `plane`
//! (`client`, or `peer` for a call forwarded to this leader), `from` (the
//! node that forwarded it), `request_id` or `reservation_id` (as the client
//! sent it, cut to a bound), and `leader` (the address it was forwarded to,
//! when this node forwarded it). What the call logs carries them; a call
//! that fails logs one line at its end (refusals at debug, a failure of the
//! node at info, a bug at error), within the log budget.

use std::future::Future;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::server::logging::{RPC_TARGET, bounded, call_line_allowed};
use crate::server::node::{FORWARD_TIMEOUT, FORWARDED_HEADER, Node, PRINCIPAL_HEADER};
use crate::server::security::peers::{Senders, refused};
use crate::server::security::{Permission, clients};
use crate::server::status::status_with_info;

pub mod admin;
pub mod control;
pub mod inventory;

pub use admin::AdminService;
pub use control::ControlService;
pub use inventory::InventoryService;

/// Which listener a service serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// The client listener: authenticated clients, by role.
    Client,
    /// The peer listener: calls forwarded by nodes of this group.
    Peer,
}

impl Plane {
    /// The plane's name, as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Client => "client",
            Plane::Peer => "peer",
        }
    }
}

/// Who a call is for, once it may run.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The principal: reservations it makes are its own.
    pub principal: String,
    /// Forwarded by another node of this group (never forwarded again).
    pub forwarded: bool,
}

impl Plane {
    /// Who calls, if they may do `permission`; else the refusal (nothing
    /// has run). On the client plane the caller authenticates and its role
    /// is checked; on the peer plane the call must be forwarded by a node of
    /// this group, which names the principal it checked.
    pub(super) async fn caller<T>(
        self,
        node: &Node,
        request: &Request<T>,
        permission: Permission,
    ) -> Result<Caller, Status> {
        match self {
            Plane::Client => {
                let principal = node.authenticator().check(request, permission).await?;
                Ok(Caller {
                    principal: principal.name,
                    forwarded: false,
                })
            }
            Plane::Peer => {
                let policy = node.peer_policy();
                let from = policy.caller(request.extensions())?;
                if let Some(from) = &from {
                    tracing::Span::current().record("from", from.id);
                }
                policy.require(from.as_ref(), Senders::Group, "a forwarded client call")?;
                if !request.metadata().contains_key(FORWARDED_HEADER) {
                    return Err(refused(
                        Code::PermissionDenied,
                        "PEER_NOT_ALLOWED",
                        "the peer plane takes only client calls forwarded by a node of this group".into(),
                    ));
                }
                let principal = request
                    .metadata()
                    .get(PRINCIPAL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|p| clients::check_principal(p).is_ok())
                    .ok_or_else(|| {
                        refused(
                            Code::InvalidArgument,
                            "PEER_NOT_ALLOWED",
                            format!("a forwarded call must name its principal in {PRINCIPAL_HEADER}"),
                        )
                    })?;
                Ok(Caller {
                    principal: principal.to_string(),
                    forwarded: true,
                })
            }
        }
    }
}

/// `message` as a call forwarded to the leader for `caller`.
pub(super) fn forwarding<T>(message: T, caller: &Caller) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    if let Ok(principal) = caller.principal.parse() {
        request.metadata_mut().insert(PRINCIPAL_HEADER, principal);
    }
    request
}

/// A forwarded call that failed without a Reservoir reason, with a code
/// transport failures take (`UNAVAILABLE`, `UNKNOWN`, `INTERNAL`,
/// `CANCELLED`, `DEADLINE_EXCEEDED`, from h2 or the socket), failed in
/// transport: the leader could not be reached, died, or its connection was
/// reset mid-call. Whether the leader applied it is unknown, which the
/// contract answers `UNAVAILABLE` / `NO_LEADER`: retry with the same
/// request id. An answer the leader gave (it carries a reason) passes
/// through unchanged, and so do other codes without a reason (e.g. tonic's
/// own `UNIMPLEMENTED` from a leader of another build): retrying cannot help.
pub(super) fn forward_failed(status: Status) -> Status {
    let transport = matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded
    );
    if reservoir_client::reason_of(&status).is_some() || !transport {
        return status;
    }
    if call_line_allowed() {
        tracing::warn!(
            code = ?status.code(),
            detail = status.message(),
            "forwarded call failed in transport; the outcome is unknown"
        );
    }
    status_with_info(
        Code::Unavailable,
        format!(
            "the leader did not answer ({:?}: {}); the outcome is unknown: retry with the same request",
            status.code(),
            status.message()
        ),
        "NO_LEADER",
        vec![],
    )
}

/// An outcome or reply of the wrong kind from the state machine or the
/// ledger: a bug, not a fault (`INTERNAL` / `INTERNAL_ERROR`).
pub(super) fn unexpected(what: &str, reply: &impl std::fmt::Debug) -> Status {
    status_with_info(
        Code::Internal,
        format!("{what}: unexpected outcome {reply:?}"),
        "INTERNAL_ERROR",
        vec![],
    )
}

/// Runs a call on `plane` in its `rpc` span, records its count and latency
/// by RPC, outcome and plane, logs a failure, and wraps its answer.
pub(super) async fn recorded<T>(
    plane: Plane,
    rpc: &'static str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!(
        target: RPC_TARGET,
        "rpc",
        method = rpc,
        plane = plane.as_str(),
        from = Empty,
        request_id = Empty,
        reservation_id = Empty,
        leader = Empty,
    );
    async move {
        let started = Instant::now();
        let result = call.await;
        record(plane, rpc, started, &result);
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

/// Notes the request id a call carries on its span.
pub(super) fn note_request_id(request_id: &str) {
    tracing::Span::current().record("request_id", bounded(request_id));
}

/// Notes the reservation a call is about (or made) on its span.
pub(super) fn note_reservation_id(reservation_id: &str) {
    tracing::Span::current().record("reservation_id", bounded(reservation_id));
}

/// Records a call's count and latency by RPC, outcome and plane: `ok`, or
/// the reason a client would read (`reservoir_client::reason_or_code`: the
/// ErrorInfo reason, else the code's name, e.g. `FAILED_PRECONDITION`); and
/// logs a failed call, in its span.
fn record<T>(plane: Plane, rpc: &'static str, started: Instant, result: &Result<T, Status>) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(s) => reservoir_client::reason_or_code(s),
    };
    let plane = plane.as_str();
    metrics::counter!("reservoir_requests_total", "rpc" => rpc, "outcome" => outcome.clone(), "plane" => plane)
        .increment(1);
    metrics::histogram!("reservoir_request_seconds", "rpc" => rpc, "outcome" => outcome.clone(), "plane" => plane)
        .record(started.elapsed().as_secs_f64());
    if let Err(status) = result {
        log_failure(status, &outcome);
    }
}

/// One line for a failed call, at the level its kind deserves: a refusal
/// (the caller's mistake, or an answer such as sold out) at debug; the
/// node's own failure (no leader, overloaded, timed out: retry) at info;
/// anything else (a bug) at error. Within the log budget, which a line the
/// filter drops does not spend.
fn log_failure(status: &Status, outcome: &str) {
    let code = status.code();
    let message = status.message();
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            if tracing::enabled!(tracing::Level::INFO) && call_line_allowed() {
                tracing::info!(?code, outcome, detail = message, "call failed: retry");
            }
        }
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => {
            if call_line_allowed() {
                tracing::error!(?code, outcome, detail = message, "call failed");
            }
        }
        _ => {
            if tracing::enabled!(tracing::Level::DEBUG) && call_line_allowed() {
                tracing::debug!(?code, outcome, detail = message, "call refused");
            }
        }
    }
}

/// Waits for a call forwarded to the leader, at most [`FORWARD_TIMEOUT`]
/// (longer than the leader's own bound); a leader that cannot be reached,
/// breaks the call or does not answer in time is reported as `NO_LEADER`
/// (the outcome is unknown).
pub(super) async fn leader_answer<T>(call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
        Ok(result) => result.map_err(forward_failed),
        Err(_) => {
            if call_line_allowed() {
                tracing::warn!(
                    timeout = ?FORWARD_TIMEOUT,
                    "forwarded call got no answer in time; the outcome is unknown"
                );
            }
            Err(status_with_info(
                Code::Unavailable,
                format!(
                    "the leader did not answer a forwarded call within {FORWARD_TIMEOUT:?}; the outcome is \
                     unknown: retry with the same request"
                ),
                "NO_LEADER",
                vec![],
            ))
        }
    }
}
