//! reservoir-node: the `reservoir` binary.
//!
//! **Mostly not built yet.** The node will serve `reservoir.v1.Inventory` and
//! `reservoir.v1.Admin` over gRPC for its region, host the region's Raft
//! group (and, on the home region, the ledger's), expose `/metrics`,
//! `/healthz`, `/readyz` and `/status` over HTTP, and `reservoir up` will run
//! a whole local cluster.
//!
//! What exists today: the command-line entry point, which says so.
