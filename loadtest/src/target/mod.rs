//! What the load is sent to: Reservoir, or one of the baselines. Each target
//! implements the same three operations (reserve, confirm, release) with the
//! same error vocabulary, stocks the catalog before the run, and reads its
//! own books after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::workload::Catalog;

pub mod postgres;
pub mod redis;
pub mod reservoir;
pub mod server;
pub mod sim;

/// Most connections one pool may hold (per region, per baseline server);
/// `--connections` is clamped to it.
pub const POOL_SIZE_MAX: usize = 256;

/// The stable reasons the load tester uses. Reservoir's own come from its
/// ErrorInfo; the baselines answer with the same words for the same cases.
pub mod reason {
    /// Not enough stock for some line.
    pub const INSUFFICIENT_STOCK: &str = "INSUFFICIENT_STOCK";
    /// The hold's time ran out before the confirm.
    pub const RESERVATION_EXPIRED: &str = "RESERVATION_EXPIRED";
    /// No such hold (released, swept, never made).
    pub const RESERVATION_NOT_FOUND: &str = "RESERVATION_NOT_FOUND";
    /// The server or the connection is not available; retry.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// No answer within the call's timeout; outcome unknown; retry.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// The server refused in a way the workload does not expect.
    pub const SERVER_ERROR: &str = "SERVER_ERROR";
}

/// A failed operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct OpError {
    /// A stable reason (see [`reason`]; Reservoir's ErrorInfo reasons pass through).
    pub reason: String,
    /// True when sending the same request again (same request id) is safe
    /// and may succeed.
    pub retryable: bool,
    /// Details, for logs.
    pub message: String,
}

impl OpError {
    /// A retryable error.
    pub fn retryable(reason: &str, message: impl Into<String>) -> OpError {
        OpError {
            reason: reason.to_string(),
            retryable: true,
            message: message.into(),
        }
    }

    /// An error that a retry would not change.
    pub fn fatal(reason: &str, message: impl Into<String>) -> OpError {
        OpError {
            reason: reason.to_string(),
            retryable: false,
            message: message.into(),
        }
    }
}

/// Why a target could not be set up or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The server binary (or a user to run it as) is not on this machine;
    /// tests skip on this.
    #[error("{0}")]
    Absent(String),
    /// Starting, stocking or reading the target failed.
    #[error("{0}")]
    Setup(String),
}

/// The target's books for one SKU after the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerSku {
    /// Units ever stocked.
    pub stocked: u64,
    /// Units not held and not sold (Reservoir: pool + in flight + regions' available).
    pub available: u64,
    /// Units in live holds.
    pub held: u64,
    /// Units sold (Reservoir: settled + confirmed not yet settled).
    pub sold: u64,
    /// Units sold and settled at the system of record (baselines: = sold).
    pub settled: u64,
    /// Tokens stranded in unreachable regions (Reservoir only).
    pub stranded: u64,
}

/// The target's books after the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerView {
    /// Per catalog SKU.
    pub skus: BTreeMap<String, ServerSku>,
    /// The target's own accounting balances (Reservoir: the conservation
    /// audit; baselines: stocked = available + held + sold, no live holds).
    pub balanced: bool,
    /// Settlement caught up (and holds drained) before the deadline.
    pub settled_caught_up: bool,
    /// Seconds spent waiting for that.
    pub waited_s: f64,
    /// What did not add up, if anything.
    pub notes: Vec<String>,
}

impl ServerView {
    /// A baseline's books (Redis, PostgreSQL): every catalog SKU's sheet from
    /// `by_sku` (one the server never saw reads as zeros), each checked to add
    /// up (stocked = available + held + sold); holds still `live` are noted
    /// and, when they were waited for, fail the balance; each of `problems`
    /// (what only the target can see) fails it too.
    pub fn of_baseline(
        catalog: &Catalog,
        mut by_sku: BTreeMap<String, ServerSku>,
        live: u64,
        wait_for_holds: bool,
        problems: Vec<String>,
        waited_s: f64,
    ) -> ServerView {
        // Without waiting, live holds are expected; the books must still add up.
        let holds_done = live == 0 || !wait_for_holds;
        let mut balanced = holds_done && problems.is_empty();
        let mut notes = Vec::new();
        if live > 0 && wait_for_holds {
            notes.push(format!("{live} holds still live at the deadline"));
        } else if live > 0 {
            notes.push(format!("{live} holds still live (not waited for)"));
        }
        let mut skus = BTreeMap::new();
        for s in &catalog.skus {
            let view = by_sku.remove(&s.sku).unwrap_or_default();
            if view.stocked != view.available + view.held + view.sold {
                balanced = false;
                notes.push(format!(
                    "{}: stocked {} != available {} + held {} + sold {}",
                    s.sku, view.stocked, view.available, view.held, view.sold
                ));
            }
            skus.insert(s.sku.clone(), view);
        }
        notes.extend(problems);
        ServerView {
            skus,
            balanced,
            settled_caught_up: holds_done,
            waited_s,
            notes,
        }
    }
}

/// Which target, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A `reservoir up` cluster.
    Reservoir,
    /// Redis with `appendfsync always`.
    Redis,
    /// Redis without persistence.
    RedisNopersist,
    /// PostgreSQL with synchronous commit.
    Postgres,
}

impl TargetKind {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Reservoir => "reservoir",
            TargetKind::Redis => "redis",
            TargetKind::RedisNopersist => "redis-nopersist",
            TargetKind::Postgres => "postgres",
        }
    }
}

/// A connected target.
#[derive(Clone)]
pub enum Target {
    /// Reservoir.
    Reservoir(Arc<reservoir::ReservoirTarget>),
    /// Redis (either persistence).
    Redis(Arc<redis::RedisTarget>),
    /// PostgreSQL.
    Postgres(Arc<postgres::PostgresTarget>),
    /// The in-process simulated store (tests of the engine only).
    Sim(Arc<sim::SimTarget>),
}

impl Target {
    /// One reserve attempt; the answer is the reservation id.
    pub async fn reserve(
        &self,
        region: usize,
        request_id: &str,
        lines: &[(String, u64)],
        ttl_ms: u64,
        max_wait_ms: u64,
    ) -> Result<String, OpError> {
        match self {
            Target::Reservoir(t) => t.reserve(region, request_id, lines, ttl_ms, max_wait_ms).await,
            Target::Redis(t) => t.reserve(region, request_id, lines, ttl_ms).await,
            Target::Postgres(t) => t.reserve(region, request_id, lines, ttl_ms).await,
            Target::Sim(t) => t.reserve(request_id, lines, ttl_ms).await,
        }
    }

    /// One confirm attempt.
    pub async fn confirm(&self, region: usize, reservation_id: &str, order_id: &str) -> Result<(), OpError> {
        match self {
            Target::Reservoir(t) => t.confirm(region, reservation_id, order_id).await,
            Target::Redis(t) => t.confirm(region, reservation_id).await,
            Target::Postgres(t) => t.confirm(region, reservation_id).await,
            Target::Sim(t) => t.confirm(reservation_id).await,
        }
    }

    /// One release attempt.
    pub async fn release(&self, region: usize, reservation_id: &str) -> Result<(), OpError> {
        match self {
            Target::Reservoir(t) => t.release(region, reservation_id).await,
            Target::Redis(t) => t.release(region, reservation_id).await,
            Target::Postgres(t) => t.release(region, reservation_id).await,
            Target::Sim(t) => t.release(reservation_id).await,
        }
    }

    /// Stocks the catalog; returns a warning worth printing, if any.
    pub async fn stock(&self, catalog: &Catalog) -> Result<Option<String>, TargetError> {
        match self {
            Target::Reservoir(t) => t.stock(catalog).await,
            Target::Redis(t) => t.stock(catalog).await.map(|()| None),
            Target::Postgres(t) => t.stock(catalog).await.map(|()| None),
            Target::Sim(t) => {
                t.stock(catalog).await;
                Ok(None)
            }
        }
    }

    /// True when the target answers reserves from regional tokens (Reservoir
    /// with a ledger, i.e. the `tokens` design, and the simulated target);
    /// a single server or a single group has no local tokens, so its
    /// local-hit ratio is not counted.
    pub fn has_local_tokens(&self) -> bool {
        match self {
            Target::Reservoir(t) => t.settles(),
            Target::Sim(_) => true,
            _ => false,
        }
    }

    /// True when the target has links that partition windows can cut.
    pub fn can_partition(&self) -> bool {
        matches!(self, Target::Reservoir(_))
    }

    /// Cuts `region` off (Reservoir only).
    pub async fn partition(&self, region: &str) -> Result<(), String> {
        match self {
            Target::Reservoir(t) => t.partition(region).await,
            _ => Err("this target has no links to cut".into()),
        }
    }

    /// Heals every link (Reservoir only).
    pub async fn heal(&self) -> Result<(), String> {
        match self {
            Target::Reservoir(t) => t.heal().await,
            _ => Ok(()),
        }
    }

    /// Stranded tokens right now (Reservoir only).
    pub async fn stranded(&self, catalog: &Catalog) -> Option<u64> {
        match self {
            Target::Reservoir(t) => t.stranded(catalog).await,
            _ => None,
        }
    }

    /// Waits for settlement and (with `wait_for_holds`) for every hold to
    /// end, then reads the books. Without `wait_for_holds`, holds still live
    /// are reported in the notes and are not an error; the books must still
    /// balance.
    pub async fn reconcile(
        &self,
        catalog: &Catalog,
        expected: &BTreeMap<String, (u64, u64)>,
        deadline: tokio::time::Instant,
        wait_for_holds: bool,
    ) -> Result<ServerView, TargetError> {
        match self {
            Target::Reservoir(t) => t.reconcile(catalog, expected, deadline, wait_for_holds).await,
            Target::Redis(t) => t.reconcile(catalog, deadline, wait_for_holds).await,
            Target::Postgres(t) => t.reconcile(catalog, deadline, wait_for_holds).await,
            Target::Sim(t) => Ok(t.reconcile(catalog, deadline, wait_for_holds).await),
        }
    }

    /// The nodes whose `/status` the run samples once a second (Reservoir;
    /// empty for the others).
    pub fn server_nodes(&self) -> Vec<reservoir::ClusterNode> {
        match self {
            Target::Reservoir(t) => t.nodes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// Stops what the target started (servers, sweepers).
    pub async fn shutdown(&self) {
        match self {
            Target::Reservoir(_) | Target::Sim(_) => {}
            Target::Redis(t) => t.shutdown().await,
            Target::Postgres(t) => t.shutdown().await,
        }
    }
}
