//! The node: one readable function that wires everything — validate config →
//! open storage → network → Raft → serve gRPC and HTTP until shutdown.
//!
//! **In progress**: `run` is being built (reservoir-raft group, Inventory
//! and Admin services, HTTP). Until it lands it refuses to start.

use crate::config::NodeConfig;

/// Runs a node until SIGTERM / Ctrl-C; returns once it has stopped cleanly.
pub async fn run(config: NodeConfig) -> Result<(), String> {
    Err(format!(
        "node {}: the node server is not built yet",
        config.node_id
    ))
}
