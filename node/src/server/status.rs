//! Errors as gRPC statuses (Google AIP-193): a code a client can branch on,
//! and a `google.rpc.ErrorInfo` detail with domain
//! [`reservoir_proto::ERROR_DOMAIN`] and a stable `reason`.
//!
//! [`code`] is the one mapping from the domain's [`ErrorKind`] to a gRPC
//! code, so "sold out" (RESOURCE_EXHAUSTED), "bad input" (INVALID_ARGUMENT)
//! and "try again" (UNAVAILABLE) never blur. [`NodeError`] adds what only a
//! node can fail at: no leader, a full queue.

use reservoir_proto::ERROR_DOMAIN;
use reservoir_raft::ProposeError;
use reservoir_tokens::{ErrorKind, Rejection};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The gRPC code of a domain error class.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
    }
}

/// A refused command as the status a client receives: its kind's code, its
/// message, and an ErrorInfo with its reason and metadata.
pub fn to_status(rejection: &Rejection) -> Status {
    status_with_info(
        code(rejection.kind()),
        rejection.to_string(),
        rejection.reason(),
        rejection.metadata(),
    )
}

/// Why a node could not serve a call. The first two are about the node, not
/// the request, and are safe to retry: the command was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The Raft group has no known leader, or no quorum to commit through.
    #[error("no leader for {group}")]
    NoLeader {
        /// The group without a leader: a region's name, or `ledger`.
        group: String,
    },
    /// A bounded queue is full; the caller gets this at once instead of waiting.
    #[error("overloaded: {queue} is full ({max} entries)")]
    Overloaded {
        /// Which queue, e.g. `proposals`.
        queue: &'static str,
        /// Its bound.
        max: usize,
    },
    /// The state machine (or the edge) refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

impl NodeError {
    /// True when the same request may simply be sent again: nothing was
    /// applied, and the cause is transient. A rejection is not retryable as
    /// is (even INSUFFICIENT_STOCK needs the state to change first).
    pub fn is_retryable(&self) -> bool {
        match self {
            NodeError::NoLeader { .. } | NodeError::Overloaded { .. } => true,
            NodeError::Rejected(_) => false,
        }
    }

    /// The stable `google.rpc.ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            NodeError::NoLeader { .. } => "NO_LEADER",
            NodeError::Overloaded { .. } => "OVERLOADED",
            NodeError::Rejected(r) => r.reason(),
        }
    }

    /// The status a client receives: UNAVAILABLE for the node's own failures,
    /// [`to_status`] for a rejection.
    pub fn to_status(&self) -> Status {
        let metadata = match self {
            NodeError::NoLeader { group } => vec![("group", group.clone())],
            NodeError::Overloaded { queue, max } => {
                vec![("queue", queue.to_string()), ("max", max.to_string())]
            }
            NodeError::Rejected(r) => return to_status(r),
        };
        status_with_info(Code::Unavailable, self.to_string(), self.reason(), metadata)
    }
}

impl NodeError {
    /// A failed proposal or linearizable read in `group` (whose proposal
    /// queue holds `queue_max`) as the node's error. A full queue is
    /// `OVERLOADED`; a set of commands too large for one entry is
    /// `INVALID_RESERVES`; every other failure, a [`ProposeError::Timeout`] whose
    /// outcome is unknown included, is `NO_LEADER`: UNAVAILABLE, retry with
    /// the same request id.
    pub fn from_propose(group: &str, queue_max: usize, error: &ProposeError) -> NodeError {
        match error {
            ProposeError::Overloaded => NodeError::Overloaded {
                queue: "proposals",
                max: queue_max,
            },
            ProposeError::NotLeader { .. }
            | ProposeError::NoQuorum(_)
            | ProposeError::Stopped(_)
            | ProposeError::Timeout { .. } => NodeError::NoLeader {
                group: group.to_string(),
            },
            // Never retried: the same set will not fit (`ReserveBatch`'s
            // own bounds keep it from happening).
            ProposeError::TooLarge(detail) => NodeError::Rejected(Rejection::invalid(
                reservoir_tokens::Field::Reserves,
                format!("the batch does not fit in one log entry: {detail}"),
            )),
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        e.to_status()
    }
}

/// A status with a Reservoir ErrorInfo detail.
pub fn status_with_info(
    code: Code,
    message: String,
    reason: &str,
    metadata: Vec<(&'static str, String)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservoir_client::{error_info, reason_of};
    use reservoir_tokens::Field;

    /// A status as the client decodes it from the response headers.
    fn over_the_wire(status: Status) -> Status {
        let response = status.into_http::<()>();
        Status::from_header_map(response.headers()).expect("a status header was written")
    }

    fn one_of_each_kind() -> Vec<(Rejection, Code, &'static str)> {
        vec![
            (
                Rejection::invalid(Field::Quantity, "must be 1-1000000, got 0"),
                Code::InvalidArgument,
                "INVALID_QUANTITY",
            ),
            (
                Rejection::InsufficientStock {
                    sku: "A".into(),
                    requested: 5,
                    available: 2,
                },
                Code::ResourceExhausted,
                "INSUFFICIENT_STOCK",
            ),
            (
                Rejection::ReservationNotFound {
                    id: "eu-west-000001".into(),
                },
                Code::NotFound,
                "RESERVATION_NOT_FOUND",
            ),
            (
                Rejection::ReservationExpired {
                    id: "us-east-000001".into(),
                },
                Code::FailedPrecondition,
                "RESERVATION_EXPIRED",
            ),
            (
                Rejection::ReservationReleased {
                    id: "us-east-000001".into(),
                },
                Code::FailedPrecondition,
                "RESERVATION_RELEASED",
            ),
            (
                Rejection::ReservationConfirmed {
                    id: "us-east-000001".into(),
                    order_id: "o-1".into(),
                },
                Code::FailedPrecondition,
                "RESERVATION_CONFIRMED",
            ),
            (
                Rejection::RequestIdReused {
                    request_id: "r-1".into(),
                },
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
            ),
        ]
    }

    /// Each row of the error table keeps its code and reason through to_status and the wire.
    #[test]
    fn rejections_round_trip() {
        for (rejection, expected_code, expected_reason) in one_of_each_kind() {
            let status = over_the_wire(to_status(&rejection));
            assert_eq!(status.code(), expected_code, "{rejection:?}");
            assert_eq!(
                reason_of(&status).as_deref(),
                Some(expected_reason),
                "{rejection:?}"
            );
            assert_eq!(status.message(), rejection.to_string());
            let info = error_info(&status).expect("ErrorInfo");
            assert_eq!(info.domain, "reservoir");
        }
    }

    /// INSUFFICIENT_STOCK carries sku, requested and available as ErrorInfo metadata.
    #[test]
    fn insufficient_stock_metadata() {
        let status = over_the_wire(to_status(&Rejection::InsufficientStock {
            sku: "SKU-1".into(),
            requested: 40,
            available: 3,
        }));
        let info = error_info(&status).expect("ErrorInfo");
        assert_eq!(info.reason, "INSUFFICIENT_STOCK");
        let get = |k: &str| info.metadata.get(k).map(String::as_str);
        assert_eq!(get("sku"), Some("SKU-1"));
        assert_eq!(get("requested"), Some("40"));
        assert_eq!(get("available"), Some("3"));
        assert_eq!(info.metadata.len(), 3);
    }

    /// A malformed-input status says what is wrong in its metadata.
    #[test]
    fn invalid_argument_metadata() {
        let status = to_status(&Rejection::invalid(Field::Sku, "must match [A-Za-z0-9._:-]+"));
        let info = error_info(&status).expect("ErrorInfo");
        assert_eq!(info.reason, "INVALID_SKU");
        assert_eq!(
            info.metadata.get("detail").map(String::as_str),
            Some("must match [A-Za-z0-9._:-]+")
        );
    }

    /// NO_LEADER and OVERLOADED are UNAVAILABLE, retryable, and carry their reason.
    #[test]
    fn unavailable_is_retryable() {
        let cases = [
            (
                NodeError::NoLeader {
                    group: "us-east".into(),
                },
                "NO_LEADER",
            ),
            (
                NodeError::Overloaded {
                    queue: "proposals",
                    max: 1024,
                },
                "OVERLOADED",
            ),
        ];
        for (error, expected_reason) in cases {
            assert!(error.is_retryable(), "{error:?}");
            assert_eq!(error.reason(), expected_reason);
            let status = over_the_wire(Status::from(error.clone()));
            assert_eq!(status.code(), Code::Unavailable, "{error:?}");
            assert_eq!(reason_of(&status).as_deref(), Some(expected_reason));
        }
        let status = NodeError::Overloaded {
            queue: "proposals",
            max: 1024,
        }
        .to_status();
        let info = error_info(&status).expect("ErrorInfo");
        assert_eq!(info.metadata.get("max").map(String::as_str), Some("1024"));
    }

    /// A proposal that timed out (outcome unknown) is UNAVAILABLE /
    /// NO_LEADER, retryable; a full queue stays OVERLOADED.
    #[test]
    fn propose_timeout_is_no_leader() {
        let timeout = NodeError::from_propose("us-east", 8, &ProposeError::Timeout { waited_ms: 5_000 });
        assert!(timeout.is_retryable());
        let status = over_the_wire(timeout.to_status());
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason_of(&status).as_deref(), Some("NO_LEADER"));
        let full = NodeError::from_propose("us-east", 8, &ProposeError::Overloaded);
        assert_eq!(full.reason(), "OVERLOADED");
    }

    /// A rejection wrapped in NodeError is not retryable and maps exactly as to_status does.
    #[test]
    fn wrapped_rejection_maps_like_to_status() {
        for (rejection, expected_code, expected_reason) in one_of_each_kind() {
            let error = NodeError::from(rejection.clone());
            assert!(!error.is_retryable(), "{rejection:?}");
            assert_eq!(error.reason(), expected_reason);
            let status = error.to_status();
            assert_eq!(status.code(), expected_code);
            // Compared decoded: ErrorInfo metadata is a HashMap, so its encoded order varies.
            let direct = to_status(&rejection);
            assert_eq!(status.message(), direct.message());
            let (a, b) = (
                error_info(&status).expect("ErrorInfo"),
                error_info(&direct).expect("ErrorInfo"),
            );
            assert_eq!((a.reason, a.domain, a.metadata), (b.reason, b.domain, b.metadata));
        }
    }

    /// A status without a Reservoir ErrorInfo has no reason, so clients fall back to the code.
    #[test]
    fn foreign_status_has_no_reason() {
        assert_eq!(reason_of(&Status::unavailable("connection refused")), None);
        let foreign = Status::with_error_details(
            Code::NotFound,
            "elsewhere",
            ErrorDetails::with_error_info("NOT_OURS", "example.com", HashMap::new()),
        );
        assert_eq!(reason_of(&foreign), None);
    }
}
