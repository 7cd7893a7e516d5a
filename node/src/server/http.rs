//! The node's HTTP side (axum): `/healthz` (the process answers),
//! `/readyz` ([`crate::server::health`]), `/metrics` (Prometheus text from
//! the `metrics` crate, [`crate::server::telemetry`]) and `/status` (JSON).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::server::health::Health;
use crate::server::node::Node;
use crate::server::telemetry::{self, SkuLabels};
use reservoir_client::status as status_json;

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    skus: Arc<SkuLabels>,
}

/// The HTTP routes of a node: readiness from `health`, metrics rendered
/// from `metrics`, and `grpc_health` (the client listener's
/// `grpc.health.v1.Health`, the same reporter) over cleartext HTTP/2, for
/// probes that speak gRPC health without TLS (Kubernetes' `grpc` probes).
pub fn router(
    node: Arc<Node>,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    grpc_health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Router {
    let skus = Arc::new(SkuLabels::new(&node.config().metrics));
    Router::new()
        // Check only: a probe asks and goes; Watch (a stream held open) is
        // left to the client listener, whose connections are bounded.
        .route_service("/grpc.health.v1.Health/Check", grpc_health)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(AppState {
            node,
            metrics,
            health,
            skus,
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
    telemetry::sample(&s.node, &s.skus);
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
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
        rss_bytes: telemetry::rss_bytes(),
        ledger: s.node.ledger().map(|l| l.group().status()),
    })
    .into_response()
}
