//! reservoir-raft: replication for the `reservoir-tokens` state machines.
//!
//! **Not built yet.** This crate will host any `tokens` state machine
//! (`RegionState`, `LedgerState`) in an openraft 0.9 group:
//!
//! - log entries, vote and snapshots on sled, flushed before openraft is told
//!   an append is durable;
//! - the Raft network over tonic, routed by group id so one node process can
//!   host several groups;
//! - a proposer that batches concurrent commands into one log entry (group
//!   commit) behind a bounded queue;
//! - leader forwarding for writes and linearizable reads.
//!
//! Today it contains no code: nothing here pretends to replicate anything.
