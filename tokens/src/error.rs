//! Why a command was refused: one enum, with a stable reason string per case.

use crate::types::{RegionId, RequestId, Sku, TransferId, Units};
use serde::{Deserialize, Serialize};

/// A transport-neutral error class. The node maps each to one gRPC code:
/// a client must be able to tell "sold out" from "bad input" from "try again".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Malformed input. Retrying the same request cannot succeed.
    InvalidArgument,
    /// Not enough right now: tokens, or room to remember one more request id
    /// without forgetting one early (`RETENTION_FULL`,
    /// `ADJUSTMENT_IDS_FULL`). Nothing changed; retrying later may succeed.
    ResourceExhausted,
    /// The named thing does not exist (or was forgotten after retention).
    NotFound,
    /// The request is well formed but the state does not allow it.
    FailedPrecondition,
    /// An idempotency key was reused for a different request.
    AlreadyExists,
}

/// A field of a request that input validation can refuse. Its reason string
/// is `INVALID_<FIELD>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// `request_id`
    RequestId,
    /// `order_id`
    OrderId,
    /// `sku`
    Sku,
    /// `lines` (count, duplicates)
    Lines,
    /// `quantity`
    Quantity,
    /// `ttl_ms`
    TtlMs,
    /// `max_wait_ms`
    MaxWaitMs,
    /// `reservation_id`
    ReservationId,
    /// `delta`
    Delta,
    /// `region`
    Region,
    /// `units` of a transfer
    Units,
    /// `entries` of a settlement
    Entries,
    /// `transfer_id`
    TransferId,
    /// a region's retention settings
    Retention,
    /// `owner`: the principal a reservation belongs to
    Owner,
    /// `reserves` of a batch (its count)
    Reserves,
}

impl Field {
    /// The stable `reason` string, `INVALID_<FIELD>`.
    pub fn reason(self) -> &'static str {
        match self {
            Field::RequestId => "INVALID_REQUEST_ID",
            Field::OrderId => "INVALID_ORDER_ID",
            Field::Sku => "INVALID_SKU",
            Field::Lines => "INVALID_LINES",
            Field::Quantity => "INVALID_QUANTITY",
            Field::TtlMs => "INVALID_TTL_MS",
            Field::MaxWaitMs => "INVALID_MAX_WAIT_MS",
            Field::ReservationId => "INVALID_RESERVATION_ID",
            Field::Delta => "INVALID_DELTA",
            Field::Region => "INVALID_REGION",
            Field::Units => "INVALID_UNITS",
            Field::Entries => "INVALID_ENTRIES",
            Field::TransferId => "INVALID_TRANSFER_ID",
            Field::Retention => "INVALID_RETENTION",
            Field::Owner => "INVALID_OWNER",
            Field::Reserves => "INVALID_RESERVES",
        }
    }
}

/// Why a command changed nothing. Every variant has a stable
/// [`reason`](Rejection::reason) and an [`ErrorKind`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// Malformed input.
    #[error("invalid {}: {detail}", .field.reason())]
    Invalid {
        /// The offending field.
        field: Field,
        /// What is wrong with it, for humans.
        detail: String,
    },
    /// Not enough available tokens in this region for a line.
    #[error("insufficient stock of {sku}: requested {requested}, available {available}")]
    InsufficientStock {
        /// The SKU that ran short.
        sku: Sku,
        /// Units asked for.
        requested: Units,
        /// Units available at the time.
        available: Units,
    },
    /// No such reservation (never existed, another region's, pruned, or
    /// another owner's: a caller cannot tell those apart).
    #[error("reservation {id} not found")]
    ReservationNotFound {
        /// The public id asked for.
        id: String,
    },
    /// The hold's TTL has passed.
    #[error("reservation {id} expired")]
    ReservationExpired {
        /// The public id.
        id: String,
    },
    /// The hold was released.
    #[error("reservation {id} was released")]
    ReservationReleased {
        /// The public id.
        id: String,
    },
    /// The reservation is confirmed (under another order, or cannot be released).
    #[error("reservation {id} is confirmed under order {order_id}")]
    ReservationConfirmed {
        /// The public id.
        id: String,
        /// The order it is confirmed under.
        order_id: String,
    },
    /// The idempotency key was used before for a different request.
    #[error("request_id {request_id} was used for a different request")]
    RequestIdReused {
        /// The reused key.
        request_id: RequestId,
    },
    /// Stock can only be removed where it is not allocated.
    #[error("cannot remove {requested} of {sku}: only {removable} unallocated")]
    StockNotRemovable {
        /// The SKU.
        sku: Sku,
        /// Units asked to remove.
        requested: Units,
        /// Units that could be removed.
        removable: Units,
    },
    /// The ledger's pool cannot cover a grant.
    #[error("pool of {sku} holds {available}, grant of {requested} refused")]
    InsufficientPool {
        /// The SKU.
        sku: Sku,
        /// Units asked for.
        requested: Units,
        /// Units in the pool.
        available: Units,
    },
    /// The ledger knows no such transfer.
    #[error("transfer {transfer_id} not found")]
    TransferNotFound {
        /// The id asked for.
        transfer_id: TransferId,
    },
    /// A transfer for this region and SKU is already in flight.
    #[error("a transfer of {sku} to or from {region} is already in flight")]
    TransferInFlight {
        /// The region.
        region: RegionId,
        /// The SKU.
        sku: Sku,
    },
    /// The ledger's table of transfers in flight is full.
    #[error("{in_flight} transfers in flight, the limit")]
    TransfersFull {
        /// How many are in flight.
        in_flight: usize,
    },
    /// A transfer id was reused with other parameters, or completed as the
    /// wrong kind. This is a caller bug.
    #[error("transfer {transfer_id} does not match: {detail}")]
    TransferMismatch {
        /// The id.
        transfer_id: TransferId,
        /// What differs.
        detail: String,
    },
    /// The region remembers [`crate::limits::OWNERS_MAX`] owners and a
    /// reserve came from a new one.
    #[error("{owners} owners known to this region, the limit")]
    TooManyOwners {
        /// How many owners the region knows.
        owners: usize,
    },
    /// The region keeps `ended_max` reservations that ended within the
    /// retention, and a new reserve would need one forgotten early.
    #[error("{ended} reservations ended within the retention, the limit; retry later")]
    RetentionFull {
        /// Reservations kept that ended within the retention.
        ended: u64,
    },
    /// [`crate::limits::ADJUSTMENT_IDS_MAX`] stock-adjustment ids are
    /// remembered and none may be forgotten yet.
    #[error("{remembered} stock-adjustment ids remembered, the limit; retry later")]
    AdjustmentIdsFull {
        /// Ids remembered.
        remembered: usize,
    },
    /// A settlement batch does not start right after the ledger's watermark.
    #[error("settlement from {region} skips: watermark {watermark}, batch starts at {first}")]
    SettlementGap {
        /// The region.
        region: RegionId,
        /// The ledger's watermark for it.
        watermark: u64,
        /// The first new sequence number in the batch.
        first: u64,
    },
    /// A region was told that outbox entries it never wrote are settled.
    #[error("settled up to {up_to_seq} but the outbox ends at {last_seq}")]
    SettlementAhead {
        /// What the ledger acknowledged.
        up_to_seq: u64,
        /// The last sequence number written.
        last_seq: u64,
    },
}

impl Rejection {
    /// A malformed-input rejection.
    pub fn invalid(field: Field, detail: impl Into<String>) -> Rejection {
        Rejection::Invalid {
            field,
            detail: detail.into(),
        }
    }

    /// The stable reason string (`google.rpc.ErrorInfo.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Invalid { field, .. } => field.reason(),
            Rejection::InsufficientStock { .. } => "INSUFFICIENT_STOCK",
            Rejection::ReservationNotFound { .. } => "RESERVATION_NOT_FOUND",
            Rejection::ReservationExpired { .. } => "RESERVATION_EXPIRED",
            Rejection::ReservationReleased { .. } => "RESERVATION_RELEASED",
            Rejection::ReservationConfirmed { .. } => "RESERVATION_CONFIRMED",
            Rejection::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Rejection::StockNotRemovable { .. } => "STOCK_NOT_REMOVABLE",
            Rejection::InsufficientPool { .. } => "INSUFFICIENT_POOL",
            Rejection::TransferNotFound { .. } => "TRANSFER_NOT_FOUND",
            Rejection::TransferInFlight { .. } => "TRANSFER_IN_FLIGHT",
            Rejection::TransfersFull { .. } => "TRANSFERS_FULL",
            Rejection::TooManyOwners { .. } => "TOO_MANY_OWNERS",
            Rejection::RetentionFull { .. } => "RETENTION_FULL",
            Rejection::AdjustmentIdsFull { .. } => "ADJUSTMENT_IDS_FULL",
            Rejection::TransferMismatch { .. } => "TRANSFER_MISMATCH",
            Rejection::SettlementGap { .. } => "SETTLEMENT_GAP",
            Rejection::SettlementAhead { .. } => "SETTLEMENT_AHEAD",
        }
    }

    /// The error class, which decides the gRPC status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Rejection::Invalid { .. } | Rejection::TransferMismatch { .. } => ErrorKind::InvalidArgument,
            Rejection::InsufficientStock { .. }
            | Rejection::RetentionFull { .. }
            | Rejection::AdjustmentIdsFull { .. } => ErrorKind::ResourceExhausted,
            Rejection::ReservationNotFound { .. } | Rejection::TransferNotFound { .. } => ErrorKind::NotFound,
            Rejection::RequestIdReused { .. } => ErrorKind::AlreadyExists,
            Rejection::ReservationExpired { .. }
            | Rejection::ReservationReleased { .. }
            | Rejection::ReservationConfirmed { .. }
            | Rejection::StockNotRemovable { .. }
            | Rejection::InsufficientPool { .. }
            | Rejection::TransferInFlight { .. }
            | Rejection::TransfersFull { .. }
            | Rejection::TooManyOwners { .. }
            | Rejection::SettlementGap { .. }
            | Rejection::SettlementAhead { .. } => ErrorKind::FailedPrecondition,
        }
    }

    /// Key/value pairs for `google.rpc.ErrorInfo.metadata`.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Rejection::Invalid { detail, .. } => vec![("detail", detail.clone())],
            Rejection::InsufficientStock {
                sku,
                requested,
                available,
            }
            | Rejection::InsufficientPool {
                sku,
                requested,
                available,
            } => vec![
                ("sku", sku.clone()),
                ("requested", requested.to_string()),
                ("available", available.to_string()),
            ],
            Rejection::StockNotRemovable {
                sku,
                requested,
                removable,
            } => vec![
                ("sku", sku.clone()),
                ("requested", requested.to_string()),
                ("removable", removable.to_string()),
            ],
            Rejection::ReservationNotFound { id }
            | Rejection::ReservationExpired { id }
            | Rejection::ReservationReleased { id } => vec![("reservation_id", id.clone())],
            Rejection::ReservationConfirmed { id, order_id } => {
                vec![("reservation_id", id.clone()), ("order_id", order_id.clone())]
            }
            Rejection::RequestIdReused { request_id } => vec![("request_id", request_id.clone())],
            Rejection::TransferNotFound { transfer_id } | Rejection::TransferMismatch { transfer_id, .. } => {
                vec![("transfer_id", transfer_id.to_string())]
            }
            Rejection::TransferInFlight { region, sku } => {
                vec![("region", region.clone()), ("sku", sku.clone())]
            }
            Rejection::TransfersFull { in_flight } => vec![("in_flight", in_flight.to_string())],
            Rejection::TooManyOwners { owners } => vec![("owners", owners.to_string())],
            Rejection::RetentionFull { ended } => vec![("ended", ended.to_string())],
            Rejection::AdjustmentIdsFull { remembered } => vec![("remembered", remembered.to_string())],
            Rejection::SettlementGap {
                region,
                watermark,
                first,
            } => vec![
                ("region", region.clone()),
                ("watermark", watermark.to_string()),
                ("first", first.to_string()),
            ],
            Rejection::SettlementAhead { up_to_seq, last_seq } => {
                vec![
                    ("up_to_seq", up_to_seq.to_string()),
                    ("last_seq", last_seq.to_string()),
                ]
            }
        }
    }
}
