//! reservoir-node: the `reservoir` binary — a Reservoir node, the local
//! cluster launcher and a command-line client.
//!
//! A node (`reservoir node --config FILE.toml`) serves `reservoir.v1.Inventory`
//! and `reservoir.v1.Admin` over gRPC for its region, hosts the region's Raft
//! group (and, on the home region's nodes, the ledger's, with the rebalancer,
//! the reconciler and the audit on its leader), and exposes `/metrics`,
//! `/healthz`, `/readyz` and `/status` over HTTP. Any node accepts any call
//! and forwards a write once to its group's leader. Requests are validated
//! and turned into domain commands once, at the edge, with the validators of
//! `reservoir_tokens::limits`; every refusal reaches the client as one gRPC
//! status with a stable `google.rpc.ErrorInfo` reason.
//!
//! `reservoir up` runs a whole local cluster as child processes: three
//! regions behind WAN link emulators, in one of three designs
//! (`--architecture tokens|single-writer|global-consensus`), or one
//! standalone region (`--standalone`).
//!
//! Layout:
//! - [`config`]: a node's TOML config file and its field-naming validation;
//! - [`server`]: the node itself, wired in one function;
//! - [`service`]: the gRPC services (`Inventory`, `Admin`), forwarding,
//!   top-ups, the region write path;
//! - [`edge`]: `reservoir.v1` requests → validated domain commands, and
//!   domain values (reservations, the audit's balance sheet) → messages;
//! - [`status`]: the one mapping from domain errors and the node's own
//!   failures (`NO_LEADER`, `OVERLOADED`) to gRPC statuses (clients
//!   decode them with `reservoir_client::reason_of`);
//! - [`control`]: the internal control plane between regions and the ledger;
//! - [`ledger`]: the ledger leader's loop (reports, settlement, transfers,
//!   audit);
//! - [`demand`], [`availability`]: the demand meter, and CRDT availability
//!   gossip;
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/status`;
//! - [`clock`]: the time seam;
//! - [`cli`]: the command-line arguments, and the client commands (one gRPC
//!   call each, printing the answer or `error: <REASON>: <message>`);
//! - [`up`]: `reservoir up --standalone` and what every `up` shares: configs,
//!   child processes, readiness, `cluster.json`, clean stop;
//! - [`up_cluster`]: `reservoir up` for three regions, the three designs, and
//!   the control API; [`wan`]: the WAN link emulator;
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
