//! reservoir-node: the `reservoir` binary.
//!
//! **Mostly not built yet.** The node will serve `reservoir.v1.Inventory` and
//! `reservoir.v1.Admin` over gRPC for its region, host the region's Raft
//! group (and, on the home region, the ledger's), expose `/metrics`,
//! `/healthz`, `/readyz` and `/status` over HTTP, and `reservoir up` will run
//! a whole local cluster.
//!
//! What exists today: the command line (the client commands and `reservoir
//! up --standalone`, which runs one region as child processes), the node's
//! config file, and the edge that the gRPC services will stand on. Requests
//! are validated and turned into domain commands once, at the edge, with the
//! validators of `reservoir_tokens::limits`; every refusal reaches the client
//! as one gRPC status with a stable `google.rpc.ErrorInfo` reason.
//!
//! Layout:
//! - [`config`]: a node's TOML config file and its field-naming validation;
//! - [`server`]: the node itself, wired in one function;
//! - [`edge`]: `reservoir.v1` requests → validated domain commands, and
//!   domain values (reservations, the audit's balance sheet) → messages;
//! - [`status`]: the one mapping from domain errors and the node's own
//!   failures (`NO_LEADER`, `OVERLOADED`) to gRPC statuses, and
//!   [`status::reason_of`] for clients;
//! - [`cli`]: the command-line arguments, and the client commands (one gRPC
//!   call each, printing the answer or `error: <REASON>: <message>`);
//! - [`up`]: `reservoir up --standalone`: configs, child processes,
//!   readiness, `cluster.json`, clean stop;
//! - [`bench`]: `reservoir bench`, a closed-loop Reserve benchmark client
//!   (latency histograms, throughput, errors by reason);
//! - `main.rs`: the `reservoir` command, dispatching to the above.
//!
//! Caveats: messages over 64 KiB
//! (`reservoir_tokens::limits::MESSAGE_BYTES_MAX`) are refused by the gRPC
//! server's decoding limit, not here; the edge sees only decoded messages.

pub mod availability;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demand;
pub mod edge;
pub mod http;
pub mod ledger;
pub mod server;
pub mod service;
pub mod status;
pub mod up;
pub mod up_cluster;
pub mod wan;
