//! reservoir-node: the `reservoir` binary — a Reservoir node, the local
//! cluster launcher, the deployment generator and a command-line client.
//! Four programs share the binary; each has its own folder, and they meet
//! only in [`args`] (the command line) and `main.rs` (dispatch):
//!
//! - [`server`] — `reservoir node --config FILE.toml`: one node (its
//!   config from the file and `RESERVOIR_*` variables; `--check-config`
//!   checks it without starting). It serves
//!   `reservoir.v1.Inventory` and `reservoir.v1.Admin` over gRPC for its
//!   region to authenticated clients (and Raft and the control plane to its
//!   peers, on a second, mutual-TLS listener), hosts the region's Raft group (and, on the home region's nodes,
//!   the ledger's, with the rebalancer, the reconciler and the audit on its
//!   leader), and exposes `/metrics`, `/healthz`, `/readyz` and `/status`
//!   over HTTP; gRPC health follows `/readyz`, and a stop drains first. It
//!   logs through `tracing` (text or JSON lines on stderr). Its module doc
//!   maps its files.
//! - [`up`] — `reservoir up`: a whole local cluster as child processes:
//!   three regions behind WAN link emulators in one of three designs
//!   (`--architecture tokens|single-writer|global-consensus`), or one
//!   standalone region (`--standalone`), with a control API to kill,
//!   restart and cut nodes. It writes node configs with
//!   [`server::config`], and makes a development CA, node certificates and
//!   API keys for them with [`server::security`]'s types and names.
//! - [`deploy`] — `reservoir deploy init --topology FILE --out DIR`: the
//!   files a cluster on real hosts needs (a config per node listening on
//!   `0.0.0.0` and advertising its host name, a CA and node certificates
//!   naming those hosts, API keys, `cluster.json`), from a topology file.
//!   It makes its trust with [`up::secrets`], as `up` does.
//! - [`cli`] — the client commands (`reserve`, `confirm`, `audit`, …): one
//!   gRPC call each, printing the answer or `error: <REASON>: <message>`;
//!   and the operator commands ([`cli::operate`]: `membership`,
//!   `add-node`, `remove-node`, `replace-node`, `transfer-leader`,
//!   `snapshot`, `backup`). `reservoir restore` is offline: it seeds a
//!   node's empty data directory from a backup
//!   ([`server::backup::restore`]).
//!
//! Dependencies run one way: `args` → `up`, `deploy`, `cli`,
//! `server::config` (and `main.rs` → `server::backup` for `restore`;
//! `cli::operate` reads backup files with `server::backup`);
//! `up` → `server::config`, `server::security`;
//! `deploy` → `up::secrets`, `server::config`; `server` imports none of
//! `up`, `deploy` and `cli` (its tests use `up::secrets`). The
//! closed-loop throughput benchmark is the load tester's (`loadtest/`,
//! scenario `throughput`), not a command of this binary.

pub mod args;
pub mod cli;
pub mod deploy;
pub mod server;
pub mod up;
