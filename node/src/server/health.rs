//! Whether a node is ready for clients, said one way in two places: one
//! evaluation ([`Health::check`]) answers `/readyz` and drives the gRPC
//! health service (`grpc.health.v1.Health`) for the whole server (`""`),
//! `reservoir.v1.Inventory` and `reservoir.v1.Admin`, so a load balancer
//! and a Kubernetes probe cannot be told two different things.
//!
//! Not ready: draining (SIGTERM or Ctrl-C came), no leader in the region
//! group, this node leads without a quorum acknowledgement for
//! [`QUORUM_ACK_STALE_MS`], a commit stall in the region group or (on a
//! ledger host) the ledger group, or no ledger leader. A follower proposes
//! nothing, so its readiness says only that it knows a leader.
//!
//! The health service is updated by [`Health::publish`], a task that checks
//! every [`CHECK_INTERVAL`] and at once when draining begins, and writes a
//! status only when it changes (logged, and `reservoir_ready`).
//!
//! Draining: on a signal the node first turns not ready on both, then
//! keeps serving, in-flight and new calls alike, for `drain_ms` (config), so
//! load balancers that probe it take it out of rotation before it stops
//! accepting calls.

use std::sync::Arc;
use std::time::Duration;

use reservoir_proto::v1::admin_server::AdminServer;
use reservoir_proto::v1::inventory_server::InventoryServer;
use reservoir_raft::Role;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::server::node::Node;
use crate::server::service::{AdminService, InventoryService};

/// A leader whose quorum has not acknowledged it for this long is not ready.
pub const QUORUM_ACK_STALE_MS: u64 = 2_000;
/// How often the health service's status is checked against readiness.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The gRPC health service names that follow readiness: the whole server,
/// and each client-plane service.
pub const SERVICES: [&str; 3] = [
    "",
    <InventoryServer<InventoryService> as NamedService>::NAME,
    <AdminServer<AdminService> as NamedService>::NAME,
];

/// Why a draining node is not ready.
pub const DRAINING: &str = "draining";

/// What [`Health::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready: who leads (`leader 2, ledger leader 1`).
    Ready(String),
    /// Not ready, and why (`no leader`, `draining`, ...).
    NotReady(String),
}

impl Readiness {
    /// True when ready.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready(_))
    }

    /// The `/readyz` body: `ready: ...` or `not ready: ...`, one line.
    pub fn line(&self) -> String {
        match self {
            Readiness::Ready(detail) => format!("ready: {detail}\n"),
            Readiness::NotReady(reason) => format!("not ready: {reason}\n"),
        }
    }
}

/// A node's readiness and its drain switch.
pub struct Health {
    node: Arc<Node>,
    draining_tx: watch::Sender<bool>,
}

impl Health {
    /// Readiness of `node`, not draining.
    pub fn new(node: Arc<Node>) -> Health {
        Health {
            node,
            draining_tx: watch::channel(false).0,
        }
    }

    /// Turns the node not ready for good (the drain before it stops).
    pub fn start_draining(&self) {
        self.draining_tx.send_replace(true);
    }

    /// Whether the node is ready now, and why not. No I/O: reads the groups'
    /// Raft metrics and their commit health (a few short locks).
    pub fn check(&self) -> Readiness {
        if *self.draining_tx.borrow() {
            return Readiness::NotReady(DRAINING.into());
        }
        let status = self.node.group().status();
        let Some(leader) = status.leader else {
            return Readiness::NotReady("no leader".into());
        };
        // A leader cut off from its followers still believes it leads, and
        // accepts writes it cannot commit: not ready.
        if status.role == Role::Leader
            && status
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > QUORUM_ACK_STALE_MS)
        {
            return Readiness::NotReady("leader without a quorum".into());
        }
        if let Some(stall) = self.node.group().commit_stall() {
            return Readiness::NotReady(format!("cannot commit: {stall}"));
        }
        if let Some(stall) = self.node.ledger().and_then(|l| l.group().commit_stall()) {
            return Readiness::NotReady(format!("the ledger cannot commit: {stall}"));
        }
        match self.node.ledger().map(|l| l.group().status().leader) {
            Some(None) => Readiness::NotReady("no ledger leader".into()),
            Some(Some(ledger)) => Readiness::Ready(format!("leader {leader}, ledger leader {ledger}")),
            None => Readiness::Ready(format!("leader {leader}")),
        }
    }

    /// Keeps `reporter`'s statuses (every name of [`SERVICES`]) and
    /// `reservoir_ready` equal to [`Health::check`]: every
    /// [`CHECK_INTERVAL`], and at once when draining begins. Runs until the
    /// process ends.
    pub async fn publish(self: Arc<Self>, reporter: HealthReporter) {
        let mut draining_rx = self.draining_tx.subscribe();
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        loop {
            let readiness = self.check();
            let ready = readiness.is_ready();
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in SERVICES {
                    reporter.set_service_status(service, status).await;
                }
                metrics::gauge!("reservoir_ready").set(if ready { 1.0 } else { 0.0 });
                match &readiness {
                    Readiness::Ready(detail) => tracing::info!(%detail, "ready: gRPC health SERVING"),
                    // The first check after a start finds no leader yet, and
                    // a drain is asked for: neither is worth a warning.
                    Readiness::NotReady(reason) if last.is_none() || reason == DRAINING => {
                        tracing::info!(%reason, "not ready: gRPC health NOT_SERVING")
                    }
                    Readiness::NotReady(reason) => {
                        tracing::warn!(%reason, "not ready: gRPC health NOT_SERVING")
                    }
                }
                last = Some(ready);
            }
            tokio::select! {
                _ = tick.tick() => {}
                changed = draining_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The health names are the services' gRPC names, and the server's.
    #[test]
    fn health_follows_the_client_services() {
        assert_eq!(SERVICES, ["", "reservoir.v1.Inventory", "reservoir.v1.Admin"]);
        assert_eq!(
            Readiness::NotReady("draining".into()).line(),
            "not ready: draining\n"
        );
        assert_eq!(Readiness::Ready("leader 2".into()).line(), "ready: leader 2\n");
    }
}
