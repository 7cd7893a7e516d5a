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

/// The encoded `FileDescriptorSet` of `reservoir.v1`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reservoir_descriptor.bin"));

/// The `google.rpc.ErrorInfo` domain of every error Reservoir returns.
pub const ERROR_DOMAIN: &str = "reservoir";

/// A gRPC code's canonical name (`UNAVAILABLE`): the reason clients report
/// for a status that carries no Reservoir ErrorInfo (a transport error, a
/// timeout).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Generated code for package `reservoir.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.v1");
}
