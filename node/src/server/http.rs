//! The node's HTTP side (axum): `/healthz` (the process answers),
//! `/readyz` ([`crate::server::health`]), `/metrics` (Prometheus text from
//! the `metrics` crate) and `/status` (JSON).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::server::health::Health;
use crate::server::node::Node;
use reservoir_client::status as status_json;
use reservoir_raft::Role;

/// How often the metrics recorder folds recorded histogram samples into
/// its buckets.
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide metrics recorder and returns the handle that
/// renders it, with its upkeep task running on the current runtime.
///
/// The recorder keeps every histogram sample until upkeep (or a scrape)
/// folds it into buckets; without a task doing it, a node that nobody
/// scrapes grew by every sample it recorded (~0.25 MB/s on a region leader
/// at 5,000 reserves/s, seen in the soak).
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

/// The HTTP routes of a node: readiness from `health`, metrics rendered
/// from `metrics`.
pub fn router(node: Arc<Node>, metrics: PrometheusHandle, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(AppState {
            node,
            metrics,
            health,
        })
}

/// 200 when [`Health::check`] finds the node ready, else 503 and why (the
/// same evaluation gRPC health reports).
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let readiness = s.health.check();
    let code = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, readiness.line())
}

/// Gauges are sampled at scrape time, then everything is rendered.
async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    let group = s.node.group();
    let status = group.status();
    metrics::gauge!("reservoir_proposal_queue_depth").set(group.queue_depth() as f64);
    metrics::gauge!("reservoir_raft_term").set(status.term as f64);
    metrics::gauge!("reservoir_raft_is_leader").set(if status.role == Role::Leader { 1.0 } else { 0.0 });
    metrics::gauge!("reservoir_raft_applied_index").set(status.applied_index.unwrap_or(0) as f64);
    if let Some(rss) = rss_bytes() {
        metrics::gauge!("reservoir_process_resident_bytes").set(rss as f64);
    }
    let _ = group.read(|state| {
        metrics::gauge!("reservoir_holds").set(state.holds() as f64);
        metrics::gauge!("reservoir_reservations_kept").set(state.reservations_kept() as f64);
        metrics::gauge!("reservoir_outbox_entries")
            .set((state.last_outbox_seq() - state.settled_up_to()) as f64);
        for (sku, b) in state.buckets() {
            metrics::gauge!("reservoir_bucket_tokens", "sku" => sku.clone(), "kind" => "available")
                .set(b.available as f64);
            metrics::gauge!("reservoir_bucket_tokens", "sku" => sku.clone(), "kind" => "held")
                .set(b.held as f64);
            metrics::gauge!("reservoir_bucket_tokens", "sku" => sku.clone(), "kind" => "confirmed")
                .set(b.confirmed as f64);
        }
    });
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// This process's resident set size, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    let g = s.node.group().status();
    let read = s.node.group().read(|state| {
        (
            (state.holds(), state.reservations_kept(), state.ended_kept()),
            state.next_expiry_ms(),
            state.last_outbox_seq(),
            state.settled_up_to(),
            state
                .buckets()
                .map(|(sku, b)| {
                    (
                        sku.clone(),
                        status_json::Bucket {
                            available: b.available,
                            held: b.held,
                            confirmed: b.confirmed,
                        },
                    )
                })
                .collect(),
        )
    });
    let Ok(((holds, reservations_kept, ended_kept), next_expiry_ms, outbox_last_seq, settled_up_to, buckets)) =
        read
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "state unreadable\n").into_response();
    };
    Json(status_json::NodeStatus {
        node_id: g.node_id,
        region: s.node.region().to_string(),
        standalone: s.node.config().standalone,
        role: g.role,
        term: g.term,
        leader: g.leader,
        applied_index: g.applied_index,
        last_log_index: g.last_log_index,
        snapshot_index: g.snapshot_index,
        members: g.members,
        holds: holds as u64,
        reservations_kept: reservations_kept as u64,
        ended_kept: ended_kept as u64,
        next_expiry_ms,
        outbox_last_seq,
        settled_up_to,
        buckets,
        snapshots: Some(g.snapshots),
        rss_bytes: rss_bytes(),
        ledger: s.node.ledger().map(|l| l.group().status()),
    })
    .into_response()
}
