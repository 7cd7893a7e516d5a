//! reservoir-node: the `reservoir` binary.
//!
//! **Mostly not built yet.** The node will serve `reservoir.v1.Inventory` and
//! `reservoir.v1.Admin` over gRPC for its region, host the region's Raft
//! group (and, on the home region, the ledger's), expose `/metrics`,
//! `/healthz`, `/readyz` and `/status` over HTTP, and `reservoir up` will run
//! a whole local cluster.
//!
//! What exists today: the command-line entry point, which says so, and the
//! edge that the gRPC services will stand on. Requests are validated and
//! turned into domain commands once, at the edge, with the validators of
//! `reservoir_tokens::limits`; every refusal reaches the client as one gRPC
//! status with a stable `google.rpc.ErrorInfo` reason.
//!
//! Layout:
//! - [`edge`]: `reservoir.v1` requests → validated domain commands, and
//!   domain values (reservations, the audit's balance sheet) → messages;
//! - [`status`]: the one mapping from domain errors and the node's own
//!   failures (`NO_LEADER`, `OVERLOADED`) to gRPC statuses, and
//!   [`status::reason_of`] for clients;
//! - `main.rs`: the `reservoir` command.
//!
//! Caveats: messages over 64 KiB
//! (`reservoir_tokens::limits::MESSAGE_BYTES_MAX`) are refused by the gRPC
//! server's decoding limit, not here; the edge sees only decoded messages.

pub mod config;
pub mod edge;
pub mod server;
pub mod status;
