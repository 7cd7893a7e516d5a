//! The client commands of the `reservoir` command (`reserve`, `confirm`,
//! `release`, `extend`, `get`, `availability`, `stock`, `audit`, `status`):
//! thin wrappers over one gRPC call each.
//!
//! A client command prints the reservation (or the availability, the stock,
//! the audit) on stdout, or one line on stderr: `error: <REASON>: <message>`,
//! where the reason is the status's `google.rpc.ErrorInfo` reason and, for
//! a status without one (a transport failure), the gRPC code's name.

use clap::{Args, Subcommand};
use reservoir_client::reason_or_code;
pub use reservoir_proto::code_name;
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Status;
use tonic::transport::Channel;

/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for one call; longer than the longest
/// `max_wait_ms` a reserve may ask for (5 s), plus a leader election.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a client command connects: `host:port` or `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// `host:port`, as shown in messages.
    pub authority: String,
}

impl NodeAddr {
    /// The URI tonic connects to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.authority)
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

/// Parses `--addr`: `host:port` or `http://host:port` (an IPv6 host in
/// brackets). TLS is not served, so `https://` is refused rather than
/// failing later with a confusing handshake error.
pub fn parse_addr(text: &str) -> Result<NodeAddr, String> {
    let authority = match text.split_once("://") {
        None => text,
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(format!("scheme {scheme}:// is not supported; use host:port")),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err(format!("{text:?} has a path; use host:port"));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; use host:port"));
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{text:?} has no host; use host:port"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{text:?}: write an IPv6 host in brackets, e.g. [::1]:7001"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(NodeAddr {
            authority: authority.to_string(),
        }),
        _ => Err(format!("{text:?}: port must be 1-65535")),
    }
}

/// The node a client command talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// Any node of the region: host:port or http://host:port.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub addr: NodeAddr,
}

/// The client commands, one gRPC call each.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Reserve units of one SKU (Inventory.Reserve).
    Reserve {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The SKU.
        #[arg(long)]
        sku: String,
        /// Units to hold.
        #[arg(long)]
        qty: u64,
        /// Hold time in milliseconds [default: the server's, 15 minutes].
        #[arg(long, value_name = "MS", default_value_t = 0, hide_default_value = true)]
        ttl_ms: u64,
        /// Idempotency key [default: a fresh unique id].
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// Take what is available instead of all or nothing.
        #[arg(long)]
        allow_partial: bool,
        /// How long to wait for a top-up when the region runs short.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        max_wait_ms: u64,
    },
    /// Give a held reservation back (Inventory.Release).
    Release {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The reservation id, e.g. us-east-000042.
        #[arg(long)]
        id: String,
    },
    /// Turn a hold into a sale (Inventory.Confirm), all of it.
    Confirm {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The reservation id.
        #[arg(long)]
        id: String,
        /// The order id the sale is recorded under.
        #[arg(long)]
        order: String,
    },
    /// Move a live hold's expiry to now + ttl (Inventory.Extend).
    Extend {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The reservation id.
        #[arg(long)]
        id: String,
        /// New hold time in milliseconds [default: the server's, 15 minutes].
        #[arg(long, value_name = "MS", default_value_t = 0, hide_default_value = true)]
        ttl_ms: u64,
    },
    /// Read a reservation (Inventory.GetReservation, linearizable).
    Get {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The reservation id.
        #[arg(long)]
        id: String,
    },
    /// Available units of a SKU (Inventory.GetAvailability).
    Availability {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The SKU.
        #[arg(long)]
        sku: String,
    },
    /// Add or remove stock (Admin.AdjustStock).
    Stock {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The SKU.
        #[arg(long)]
        sku: String,
        /// Units to add (> 0) or remove (< 0).
        #[arg(long, allow_negative_numbers = true)]
        delta: i64,
        /// Idempotency key [default: a fresh unique id].
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Run the conservation audit and print the balance sheet (Admin.Audit).
    Audit {
        /// The node.
        #[command(flatten)]
        target: Target,
    },
    /// Print the cluster's status as a table (Admin.GetStatus): regions and
    /// leaders, the ledger leader, tokens per SKU, settlement lag.
    Status {
        /// The node.
        #[command(flatten)]
        target: Target,
    },
}

impl ClientCommand {
    /// The node the command talks to.
    pub fn target(&self) -> &NodeAddr {
        match self {
            ClientCommand::Reserve { target, .. }
            | ClientCommand::Release { target, .. }
            | ClientCommand::Confirm { target, .. }
            | ClientCommand::Extend { target, .. }
            | ClientCommand::Get { target, .. }
            | ClientCommand::Availability { target, .. }
            | ClientCommand::Stock { target, .. }
            | ClientCommand::Audit { target }
            | ClientCommand::Status { target } => &target.addr,
        }
    }
}

/// Why a client command failed. Its `Display` is the one line printed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection to the node.
    Connect {
        /// The node.
        addr: NodeAddr,
        /// The root cause, e.g. "Connection refused (os error 111)".
        message: String,
    },
    /// The call returned an error status.
    Status(Status),
    /// The answer lacked a field the call promises.
    Malformed(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, message } => {
                write!(f, "error: cannot connect to {addr}: {message}")
            }
            ClientError::Status(status) => {
                let reason = reason_or_code(status);
                // One line, whatever the server put in its message.
                let message = status.message().replace(['\n', '\r'], " ");
                write!(f, "error: {reason}: {message}")
            }
            ClientError::Malformed(what) => write!(f, "error: MALFORMED_RESPONSE: {what}"),
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

/// A fresh request id, unique across processes and calls: `cli-` + the
/// time in milliseconds + the process id + a per-process counter.
pub fn fresh_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cli-{}-{}-{n}", now_ms(), std::process::id())
}

fn now_ms() -> u64 {
    // A clock before 1970 is a broken machine; 0 still yields a unique id.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs one client command; returns the text to print on success.
pub async fn run(command: ClientCommand) -> Result<String, ClientError> {
    let channel = connect(command.target()).await?;
    let mut inventory = InventoryClient::new(channel.clone());
    let reservation = |r: Option<v1::Reservation>| {
        r.map(|r| format_reservation(&r))
            .ok_or(ClientError::Malformed("no reservation in the response"))
    };
    match command {
        ClientCommand::Reserve {
            sku,
            qty,
            ttl_ms,
            request_id,
            allow_partial,
            max_wait_ms,
            ..
        } => {
            let request = v1::ReserveRequest {
                request_id: request_id.unwrap_or_else(fresh_request_id),
                lines: vec![v1::Line { sku, quantity: qty }],
                ttl_ms,
                allow_partial,
                max_wait_ms,
            };
            reservation(inventory.reserve(request).await?.into_inner().reservation)
        }
        ClientCommand::Release { id, .. } => {
            let request = v1::ReleaseRequest { reservation_id: id };
            reservation(inventory.release(request).await?.into_inner().reservation)
        }
        ClientCommand::Confirm { id, order, .. } => {
            let request = v1::ConfirmRequest {
                reservation_id: id,
                order_id: order,
                lines: Vec::new(),
            };
            reservation(inventory.confirm(request).await?.into_inner().reservation)
        }
        ClientCommand::Extend { id, ttl_ms, .. } => {
            let request = v1::ExtendRequest {
                reservation_id: id,
                ttl_ms,
            };
            reservation(inventory.extend(request).await?.into_inner().reservation)
        }
        ClientCommand::Get { id, .. } => {
            let request = v1::GetReservationRequest { reservation_id: id };
            Ok(format_reservation(
                &inventory.get_reservation(request).await?.into_inner(),
            ))
        }
        ClientCommand::Availability { sku, .. } => {
            let request = v1::GetAvailabilityRequest { sku };
            Ok(format_availability(
                &inventory.get_availability(request).await?.into_inner(),
            ))
        }
        ClientCommand::Stock {
            sku,
            delta,
            request_id,
            ..
        } => {
            let request = v1::AdjustStockRequest {
                request_id: request_id.unwrap_or_else(fresh_request_id),
                sku,
                delta,
            };
            let response = AdminClient::new(channel)
                .adjust_stock(request)
                .await?
                .into_inner();
            Ok(format_stock(&response))
        }
        ClientCommand::Audit { .. } => {
            let report = AdminClient::new(channel)
                .audit(v1::AuditRequest {})
                .await?
                .into_inner();
            Ok(format_audit(&report))
        }
        ClientCommand::Status { .. } => {
            let status = AdminClient::new(channel)
                .get_status(v1::GetStatusRequest {})
                .await?
                .into_inner();
            Ok(format_status(&status))
        }
    }
}

/// The cluster status: regions and leaders, then tokens per SKU and region,
/// then settlement lag and the last audit's verdict.
pub fn format_status(s: &v1::ClusterStatus) -> String {
    let mut out = format!(
        "ledger leader: {}\n",
        if s.ledger_leader_id == 0 {
            "none (standalone or unknown)".to_string()
        } else {
            s.ledger_leader_id.to_string()
        }
    );
    let mut regions = vec![row(&["REGION", "LEADER", "HEALTHY", "NODES"])];
    for r in &s.regions {
        let nodes: Vec<String> = r.nodes.iter().map(|n| format!("{}:{}", n.id, n.role)).collect();
        regions.push(vec![
            r.region.clone(),
            if r.leader_id == 0 {
                "-".into()
            } else {
                r.leader_id.to_string()
            },
            if r.healthy { "yes".into() } else { "NO".into() },
            if nodes.is_empty() {
                "-".into()
            } else {
                nodes.join(" ")
            },
        ]);
    }
    out += &table(&regions);
    let mut tokens = vec![row(&[
        "SKU",
        "POOL",
        "REGION",
        "AVAILABLE",
        "HELD",
        "CONFIRMED",
        "IN_FLIGHT",
        "STRANDED",
    ])];
    for k in &s.skus {
        for r in &k.regions {
            tokens.push(vec![
                k.sku.clone(),
                k.pool.to_string(),
                r.region.clone(),
                r.available.to_string(),
                r.held.to_string(),
                r.confirmed.to_string(),
                k.transfers_in_flight.to_string(),
                k.stranded.to_string(),
            ]);
        }
    }
    if tokens.len() > 1 {
        out += "\n";
        out += &table(&tokens);
    }
    if !s.settlement_lag.is_empty() {
        let mut lag = vec![row(&["REGION", "UNSETTLED", "OLDEST_AGE_MS"])];
        for l in &s.settlement_lag {
            lag.push(vec![
                l.region.clone(),
                l.entries.to_string(),
                l.oldest_age_ms.to_string(),
            ]);
        }
        out += "\n";
        out += &table(&lag);
    }
    if let Some(a) = &s.last_audit {
        out += &format!(
            "\nlast audit at {}: {}",
            format_time_ms(a.at_ms),
            if a.balanced { "balanced" } else { "NOT BALANCED" }
        );
    }
    out.trim_end().to_string()
}

/// Connects to a node, failing with the root cause (e.g. "Connection
/// refused") rather than tonic's generic "transport error".
pub async fn connect(addr: &NodeAddr) -> Result<Channel, ClientError> {
    let failed = |message: String| ClientError::Connect {
        addr: addr.clone(),
        message,
    };
    let endpoint = reservoir_client::connect::endpoint(&addr.uri())
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint.connect().await.map_err(|e| failed(root_cause(&e)))
}

/// The innermost error of a chain: the one that says what actually happened.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

// ----- output -----

/// A reservation as a small `key: value` block.
pub fn format_reservation(r: &v1::Reservation) -> String {
    let state = v1::ReservationState::try_from(r.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("RESERVATION_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("UNKNOWN({})", r.state));
    let lines: Vec<String> = r
        .lines
        .iter()
        .map(|l| format!("{} x{}", l.sku, l.quantity))
        .collect();
    let order = if r.order_id.is_empty() { "-" } else { &r.order_id };
    format!(
        "id:         {}\nregion:     {}\nstate:      {state}\nlines:      {}\nexpires_at: {}\norder:      {order}",
        r.reservation_id,
        r.region,
        lines.join(", "),
        format_time_ms(r.expires_at_ms),
    )
}

/// An availability answer as a small `key: value` block.
pub fn format_availability(a: &v1::Availability) -> String {
    let mut by_region: Vec<String> = a
        .available_by_region
        .iter()
        .map(|(region, n)| format!("{region}={n}"))
        .collect();
    by_region.sort();
    format!(
        "sku:              {}\nregion:           {}\nlocal_available:  {}\nglobal_estimate:  {} (staleness {} ms)\nby_region:        {}",
        a.sku,
        a.region,
        a.local_available,
        a.global_available_estimate,
        a.staleness_ms,
        if by_region.is_empty() {
            "-".to_string()
        } else {
            by_region.join(", ")
        },
    )
}

/// An AdjustStock answer on one line.
pub fn format_stock(s: &v1::AdjustStockResponse) -> String {
    format!(
        "sku: {}  stocked_total: {}  available: {}",
        s.sku, s.stocked_total, s.available
    )
}

/// The audit's balance sheet: a verdict line, one row per SKU, then one row
/// per region of each SKU.
pub fn format_audit(report: &v1::AuditReport) -> String {
    let mut out = format!(
        "audit at {}: {}\n",
        format_time_ms(report.at_ms),
        if report.balanced {
            "balanced"
        } else {
            "NOT BALANCED"
        }
    );
    if !report.missing_regions.is_empty() {
        out += &format!("missing regions: {}\n", report.missing_regions.join(", "));
    }
    if report.skus.is_empty() {
        out += "no SKUs";
        return out;
    }
    let mut skus = vec![row(&[
        "SKU",
        "STOCKED",
        "POOL",
        "GRANTS_IN_FLIGHT",
        "REVOKES_IN_FLIGHT",
        "SETTLED",
        "DRIFT",
        "LEDGER_DRIFT",
    ])];
    let mut regions = vec![row(&["SKU", "REGION", "AVAILABLE", "HELD", "CONFIRMED", "DRIFT"])];
    for s in &report.skus {
        skus.push(vec![
            s.sku.clone(),
            s.stocked_total.to_string(),
            s.pool.to_string(),
            s.in_flight_grants.to_string(),
            s.in_flight_revokes.to_string(),
            s.settled_total.to_string(),
            s.drift.to_string(),
            s.ledger_drift.to_string(),
        ]);
        for r in &s.regions {
            regions.push(vec![
                s.sku.clone(),
                r.region.clone(),
                r.available.to_string(),
                r.held.to_string(),
                r.confirmed.to_string(),
                r.drift.to_string(),
            ]);
        }
    }
    out += &table(&skus);
    out += "\n";
    out += &table(&regions);
    out.trim_end().to_string()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// `rows` as a table, columns two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    reservoir_client::text::table(rows, "")
}

/// Milliseconds since the Unix epoch as UTC, `2025-06-01T12:00:00.000Z`;
/// `-` for 0 (not set).
pub fn format_time_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days as i64);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), so printing a time needs no date crate.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Both address forms parse to the same node; bad ones are refused with a reason.
    #[test]
    fn addr_forms() {
        let plain = parse_addr("127.0.0.1:7001").unwrap();
        assert_eq!(plain.authority, "127.0.0.1:7001");
        assert_eq!(plain.uri(), "http://127.0.0.1:7001");
        assert_eq!(parse_addr("http://127.0.0.1:7001").unwrap(), plain);
        assert_eq!(parse_addr("http://127.0.0.1:7001/").unwrap(), plain);
        assert_eq!(parse_addr("localhost:80").unwrap().uri(), "http://localhost:80");
        assert_eq!(parse_addr("[::1]:7001").unwrap().uri(), "http://[::1]:7001");
        for bad in [
            "127.0.0.1",
            ":7001",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:x",
            "https://127.0.0.1:7001",
            "http://127.0.0.1:7001/path",
            "::1:7001",
            "",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// Fresh request ids never repeat and stay inside the request-id limits.
    #[test]
    fn fresh_request_ids_are_unique() {
        let ids: HashSet<String> = (0..1000).map(|_| fresh_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(10) {
            reservoir_tokens::limits::check_request_id(id).unwrap();
        }
    }

    /// An error status prints its Reservoir reason, or the code's name when it has none, on one line.
    #[test]
    fn error_lines() {
        let rejection = reservoir_tokens::Rejection::InsufficientStock {
            sku: "S".into(),
            requested: 5,
            available: 2,
        };
        let line = ClientError::from(crate::server::status::to_status(&rejection)).to_string();
        assert!(line.starts_with("error: INSUFFICIENT_STOCK: "), "{line}");
        let line = ClientError::from(Status::unavailable("gone\naway")).to_string();
        assert_eq!(line, "error: UNAVAILABLE: gone away");
        let line = ClientError::Connect {
            addr: parse_addr("127.0.0.1:1").unwrap(),
            message: "Connection refused (os error 111)".into(),
        }
        .to_string();
        assert_eq!(
            line,
            "error: cannot connect to 127.0.0.1:1: Connection refused (os error 111)"
        );
    }

    /// Times print as UTC calendar dates, including leap days.
    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_time_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    /// A reservation prints every field the operator needs.
    #[test]
    fn reservation_block() {
        let r = v1::Reservation {
            reservation_id: "us-east-000042".into(),
            region: "us-east".into(),
            lines: vec![v1::Line {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
            state: v1::ReservationState::Held as i32,
            expires_at_ms: 1_735_689_600_000,
            order_id: String::new(),
            created_at_ms: 1,
        };
        let text = format_reservation(&r);
        for want in [
            "id:         us-east-000042",
            "region:     us-east",
            "state:      HELD",
            "lines:      SKU-1 x2",
            "expires_at: 2025-01-01T00:00:00.000Z",
            "order:      -",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    /// The status table names the ledger leader, each region's leader and health, and tokens.
    #[test]
    fn status_table() {
        let status = v1::ClusterStatus {
            regions: vec![v1::RegionStatus {
                region: "eu-west".into(),
                leader_id: 4,
                nodes: vec![],
                healthy: true,
            }],
            ledger_leader_id: 1,
            skus: vec![v1::SkuStatus {
                sku: "hot".into(),
                pool: 5,
                regions: vec![v1::RegionTokens {
                    region: "eu-west".into(),
                    available: 7,
                    held: 2,
                    confirmed: 1,
                }],
                transfers_in_flight: 0,
                stranded: 0,
            }],
            settlement_lag: vec![],
            last_audit: None,
        };
        let text = format_status(&status);
        assert!(text.starts_with("ledger leader: 1\n"), "{text}");
        assert!(text.contains("eu-west  4       yes"), "{text}");
        assert!(text.contains("hot  5     eu-west  7"), "{text}");
    }

    /// The audit prints a verdict and aligned rows per SKU and per region.
    #[test]
    fn audit_table() {
        let report = v1::AuditReport {
            balanced: true,
            at_ms: 1,
            missing_regions: vec![],
            skus: vec![v1::SkuBalance {
                sku: "SKU-1".into(),
                stocked_total: 100,
                regions: vec![v1::RegionBalance {
                    region: "us-east".into(),
                    available: 90,
                    held: 10,
                    confirmed: 0,
                    drift: 0,
                }],
                ..Default::default()
            }],
        };
        let text = format_audit(&report);
        assert!(
            text.starts_with("audit at 1970-01-01T00:00:00.001Z: balanced\n"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("SKU-1  100")), "{text}");
        assert!(
            lines.iter().any(|l| l.starts_with("SKU-1  us-east  90")),
            "{text}"
        );
    }
}
