//! reservoir-client: what a program outside the node needs to talk to a
//! Reservoir cluster, on top of the generated API in `reservoir-proto`.
//!
//! - [`addr`]: [`HostPort`], how a node is reached (`host:port`, a DNS
//!   name or an IP literal, resolved at each connection attempt, never at
//!   parse time).
//! - [`cluster_file`]: the `cluster.json` schema that `reservoir up` and
//!   `reservoir deploy init` write and the CLI, the load tester, the tests
//!   and operators' scripts read (node addresses as `host:port`).
//! - [`regions`]: the three regions and the home region (where the ledger
//!   and a standalone region live).
//! - [`status`]: a node's `GET /status` JSON, written by the node and read
//!   by clients from the same type.
//! - [`text`]: plain-text tables for what client programs print.
//! - [`channels`]: one reused gRPC channel per peer address (a node's Raft
//!   network, control plane and forwarding share one).
//! - [`connect`]: channel settings for clients, a [`Rotation`] over a
//!   group's nodes that follows the leader, and [`retry`] of what the API
//!   says is safe to retry (the same request id).
//! - [`control_api`]: the JSON and paths of `reservoir up`'s control API
//!   (cut and heal links, kill and restart nodes).
//! - [`errors`]: the stable reason of a status (`INSUFFICIENT_STOCK`,
//!   `NO_LEADER`, ...), decoded from its `google.rpc.ErrorInfo`.
//! - [`http`]: a bounded HTTP/1.1 client (hyper) for what is not gRPC: a
//!   node's `/status` and `/readyz`, and the control API of `reservoir up`.
//!
//! It depends on no other crate of the workspace but `reservoir-proto`, so a
//! client never links the node.

pub mod addr;
pub mod channels;
pub mod cluster_file;
pub mod connect;
pub mod control_api;
pub mod credentials;
pub mod errors;
pub mod http;
pub mod regions;
pub mod status;
pub mod text;

pub use addr::{BadAddress, Host, HostPort};
pub use channels::Channels;
pub use cluster_file::{ClusterEndpoint, ClusterFile, ClusterFileError, ClusterNode, LedgerInfo, TlsInfo};
pub use connect::{Retried, Rotation, is_retryable, retry};
pub use credentials::{ClientChannel, Credentials};
pub use errors::{LEADER_HINT_HEADER, error_info, leader_hint, reason_of, reason_or_code};
pub use http::HttpError;
pub use regions::{HOME_REGION, REGIONS};
pub use status::{Bucket, GroupView, NodeStatus, Role, SnapshotStats};
