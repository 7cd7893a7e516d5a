//! reservoir-proto: the public gRPC API of Reservoir, package `reservoir.v1`.
//!
//! The `.proto` files under `reservoir/` are the contract; the Rust code is
//! generated at build time by `build.rs` (protox + tonic-prost-build, no
//! system `protoc` needed). Services: `Inventory` (shoppers) and `Admin`
//! (operators).
//!
//! Errors are not in the messages: they travel as a gRPC status with a
//! `google.rpc.ErrorInfo` detail (domain [`ERROR_DOMAIN`]) whose `reason` is
//! one of the stable strings listed in the README.
//!
//! Caveats: conversions between these messages and the domain types of
//! `reservoir-tokens` live in the node, at the edge, where input is validated.

/// The `google.rpc.ErrorInfo` domain of every error Reservoir returns.
pub const ERROR_DOMAIN: &str = "reservoir";

/// Generated code for package `reservoir.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.v1");
}

/// Generated code for the internal control plane, `reservoir.internal.v1`
/// (regions ↔ ledger: transfers, settlement, top-ups, gossip).
pub mod internal {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.internal.v1");
}
