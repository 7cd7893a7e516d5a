//! A status's stable reason (Google AIP-193): Reservoir answers every error
//! with a gRPC code and a `google.rpc.ErrorInfo` of domain
//! [`reservoir_proto::ERROR_DOMAIN`] whose `reason` clients branch on.

use reservoir_proto::{ERROR_DOMAIN, code_name};
use tonic::Status;
use tonic_types::{ErrorInfo, StatusExt};

/// The ErrorInfo detail of a status, if it has one from Reservoir. A detail
/// of another domain is ignored, since its reasons are not ours.
pub fn error_info(status: &Status) -> Option<ErrorInfo> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN)
}

/// The stable reason of a status from Reservoir; `None` when it carries no
/// Reservoir ErrorInfo (a transport error, a timeout).
pub fn reason_of(status: &Status) -> Option<String> {
    error_info(status).map(|info| info.reason)
}

/// The stable reason of a status, or the name of its code when it carries
/// no Reservoir ErrorInfo (`UNAVAILABLE`, `DEADLINE_EXCEEDED`): what a client
/// reports and counts.
pub fn reason_or_code(status: &Status) -> String {
    reason_of(status).unwrap_or_else(|| code_name(status.code()).to_string())
}

/// The response metadata key in which a follower names its group's leader
/// (the leader's node id) in every answer on the client plane, so a client
/// that knows the nodes (e.g. from `cluster.json`) can call the leader
/// directly next time instead of being forwarded.
pub const LEADER_HINT_HEADER: &str = "x-reservoir-leader";

/// The leader a follower named in an answer's (or a status's) metadata.
pub fn leader_hint(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata.get(LEADER_HINT_HEADER)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic::Code;
    use tonic_types::ErrorDetails;

    /// A status as a client decodes it from the response headers.
    fn over_the_wire(status: Status) -> Status {
        let response = status.into_http::<()>();
        Status::from_header_map(response.headers()).expect("a status header was written")
    }

    #[test]
    fn reasons_from_statuses() {
        let ours = Status::with_error_details(
            Code::ResourceExhausted,
            "sold out",
            ErrorDetails::with_error_info("INSUFFICIENT_STOCK", ERROR_DOMAIN, HashMap::new()),
        );
        assert_eq!(
            reason_of(&over_the_wire(ours.clone())).as_deref(),
            Some("INSUFFICIENT_STOCK")
        );
        assert_eq!(reason_or_code(&over_the_wire(ours)), "INSUFFICIENT_STOCK");
        let foreign = Status::with_error_details(
            Code::Unavailable,
            "elsewhere",
            ErrorDetails::with_error_info("SOMETHING", "example.com", HashMap::new()),
        );
        assert_eq!(reason_of(&over_the_wire(foreign.clone())), None);
        assert_eq!(reason_or_code(&over_the_wire(foreign)), "UNAVAILABLE");
        assert_eq!(
            reason_or_code(&Status::deadline_exceeded("slow")),
            "DEADLINE_EXCEEDED"
        );
    }
}
