//! The client commands of the `reservoir` command (`reserve`, `confirm`,
//! `release`, `extend`, `get`, `availability`, `stock`, `audit`, `status`):
//! thin wrappers over one gRPC call each; and the operator commands on a
//! Raft group ([`operate`]: `membership`, `add-node`, `remove-node`,
//! `replace-node`, `transfer-leader`, `snapshot`).
//!
//! A client command prints the reservation (or the availability, the stock,
//! the audit) on stdout, or one line on stderr: `error: <REASON>: <message>`,
//! where the reason is the status's `google.rpc.ErrorInfo` reason and, for
//! a status without one (a transport failure), the gRPC code's name.
//!
//! How a command proves itself to the node ([`Target`]): `--cluster FILE`
//! (a `cluster.json`) gives the cluster's CA and the API key of `--role`
//! (`shop` for the Inventory commands, `admin` for `stock`, `audit` and
//! `status`, unless `--role` says otherwise); `--ca-file FILE` and
//! `--token-file FILE` give them one by one, and take precedence, then the
//! environment, [`CA_FILE_ENV`] (a CA file) and [`TOKEN_ENV`] (the key
//! itself). With none of them a command speaks plaintext and sends no key:
//! a cluster started with `reservoir up --insecure`. A key is never sent
//! without TLS.

pub mod operate;

use clap::{Args, Subcommand};
use reservoir_client::credentials::{CA_FILE_ENV, TOKEN_ENV, read_key};
use reservoir_client::{ClientChannel, ClusterFile, Credentials, reason_of, reason_or_code};
pub use reservoir_proto::code_name;
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Status;

/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for one call; longer than the longest
/// `max_wait_ms` a reserve may ask for (5 s), plus a leader election.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a client command connects: `host:port`, `http://host:port` or
/// `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// `host:port`, as shown in messages.
    pub authority: String,
    /// What the scheme asked for: `Some(true)` TLS (`https://`),
    /// `Some(false)` plaintext (`http://`), `None` (no scheme): whatever the
    /// credentials say.
    pub tls: Option<bool>,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

/// Parses `--addr`: `host:port`, `http://host:port` or `https://host:port`
/// (an IPv6 host in brackets). Whether TLS is spoken is up to the
/// credentials; a scheme that contradicts them is refused when the command
/// runs.
pub fn parse_addr(text: &str) -> Result<NodeAddr, String> {
    let (authority, tls) = match text.split_once("://") {
        None => (text, None),
        Some(("http", rest)) => (rest, Some(false)),
        Some(("https", rest)) => (rest, Some(true)),
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
            tls,
        }),
        _ => Err(format!("{text:?}: port must be 1-65535")),
    }
}

/// The node a client command talks to, and how it proves itself.
#[derive(Clone, Debug, Default, Args)]
pub struct Target {
    /// Any node of the region: host:port (or http://, https://) [default
    /// with --cluster: the first node it lists for us-east].
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, required_unless_present = "cluster")]
    pub addr: Option<NodeAddr>,
    /// The cluster's cluster.json (as `reservoir up` writes it in its DIR):
    /// TLS trusting its CA, and the API key of --role.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Whose key to take from --cluster [default: shop; admin for stock,
    /// audit and status].
    #[arg(long, value_name = "ROLE", value_parser = ["shop", "admin", "observer"], requires = "cluster")]
    pub role: Option<String>,
    /// The cluster's CA certificate (PEM): speak TLS, trusting it [default:
    /// $RESERVOIR_CA_FILE, or the CA --cluster names].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the API key to send [default: $RESERVOIR_TOKEN (the
    /// key itself), or the key --cluster names for --role].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Where a client command connects and what it presents there.
#[derive(Debug)]
pub struct Connection {
    /// The node.
    pub addr: NodeAddr,
    /// TLS trust and the API key.
    pub credentials: Credentials,
}

/// Where the key a command sends came from (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeySource {
    TokenFile,
    Env,
    Cluster,
}

impl Target {
    /// The node and credentials these flags (and the environment, `env`:
    /// a lookup, so tests need not set the process's) say, for a command
    /// whose role is `default_role` unless `--role` says otherwise.
    pub fn resolve(
        &self,
        default_role: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, ClientError> {
        let setup = ClientError::Setup;
        let role = self.role.as_deref().unwrap_or(default_role);
        let cluster = match &self.cluster {
            Some(path) => Some((
                ClusterFile::load(path).map_err(|e| setup(format!("--cluster {e}")))?,
                path.as_path(),
            )),
            None => None,
        };
        let addr = match (&self.addr, &cluster) {
            (Some(addr), _) => addr.clone(),
            (None, Some((file, path))) => first_node(file).ok_or_else(|| {
                setup(format!(
                    "--cluster {}: it lists no node; give --addr",
                    path.display()
                ))
            })?,
            (None, None) => return Err(setup("give --addr ADDR (or --cluster FILE)".into())),
        };
        let dir_of = |path: &Path| path.parent().unwrap_or(Path::new(".")).to_path_buf();
        // The CA: the flag, the environment, cluster.json.
        let ca_file = match (&self.ca_file, env(CA_FILE_ENV), &cluster) {
            (Some(f), _, _) => Some(f.clone()),
            (None, Some(f), _) if !f.is_empty() => Some(PathBuf::from(f)),
            (None, _, Some((file, path))) => file.tls.as_ref().map(|t| dir_of(path).join(&t.ca_file)),
            _ => None,
        };
        // The key: the flag, the environment, cluster.json's key of `role`.
        let (api_key, source) = match (&self.token_file, env(TOKEN_ENV), &cluster) {
            (Some(f), _, _) => (Some(read_key(f).map_err(setup)?), Some(KeySource::TokenFile)),
            (None, Some(key), _) if !key.trim().is_empty() => {
                (Some(key.trim().to_string()), Some(KeySource::Env))
            }
            (None, _, Some((file, path))) => match file.credentials.get(role) {
                Some(key_file) => (
                    Some(read_key(&dir_of(path).join(key_file)).map_err(setup)?),
                    Some(KeySource::Cluster),
                ),
                None if file.tls.is_some() => {
                    return Err(setup(format!(
                        "--cluster {}: it names no key for role {role}; give --token-file FILE or set {TOKEN_ENV}",
                        path.display()
                    )));
                }
                None => (None, None),
            },
            _ => (None, None),
        };
        let tls = ca_file.is_some();
        if let Some(source) = source
            && !tls
        {
            let from = match source {
                KeySource::TokenFile => "--token-file".to_string(),
                KeySource::Env => format!("${TOKEN_ENV}"),
                KeySource::Cluster => "--cluster".to_string(),
            };
            return Err(setup(format!(
                "refusing to send the API key (from {from}) to {addr} without TLS: give the cluster's CA \
                 (--ca-file FILE, ${CA_FILE_ENV} or --cluster FILE); a cluster started with --insecure takes no key"
            )));
        }
        match addr.tls {
            Some(true) if !tls => {
                return Err(setup(format!(
                    "https://{addr} asks for TLS but no CA is given: --ca-file FILE, ${CA_FILE_ENV} or --cluster FILE"
                )));
            }
            Some(false) if tls => {
                return Err(setup(format!(
                    "http://{addr} asks for plaintext but the credentials speak TLS; write {addr} or https://{addr}"
                )));
            }
            _ => {}
        }
        let credentials = Credentials::new(ca_file.as_deref(), api_key).map_err(setup)?;
        Ok(Connection { addr, credentials })
    }
}

/// The node a command goes to when only `--cluster` is given: the first
/// endpoint of the home region, else the first node.
fn first_node(file: &ClusterFile) -> Option<NodeAddr> {
    let addr = file
        .region_endpoints(reservoir_client::HOME_REGION)
        .first()
        .map(|(_, addr)| addr.clone())
        .or_else(|| file.nodes.first().map(|n| n.grpc.clone()))?;
    Some(NodeAddr {
        authority: addr.to_string(),
        tls: None,
    })
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
    /// Many reserves in one call and one commit (Inventory.ReserveBatch):
    /// one per `--item`, each with its own request id and its own result.
    ReserveBatch {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// One reserve of QTY units of SKU; repeat for each reserve (1-256).
        #[arg(long = "item", value_name = "SKU:QTY", required = true, value_parser = parse_item)]
        items: Vec<(String, u64)>,
        /// Hold time in milliseconds [default: the server's, 15 minutes].
        #[arg(long, value_name = "MS", default_value_t = 0, hide_default_value = true)]
        ttl_ms: u64,
        /// Request ids are PREFIX-1, PREFIX-2, ... [default: a fresh unique prefix].
        #[arg(long, value_name = "PREFIX")]
        request_id_prefix: Option<String>,
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
    /// The node the command talks to, and how.
    pub fn target(&self) -> &Target {
        match self {
            ClientCommand::Reserve { target, .. }
            | ClientCommand::ReserveBatch { target, .. }
            | ClientCommand::Release { target, .. }
            | ClientCommand::Confirm { target, .. }
            | ClientCommand::Extend { target, .. }
            | ClientCommand::Get { target, .. }
            | ClientCommand::Availability { target, .. }
            | ClientCommand::Stock { target, .. }
            | ClientCommand::Audit { target }
            | ClientCommand::Status { target } => target,
        }
    }

    /// The role whose key the command takes from `--cluster` unless
    /// `--role` says otherwise: `admin` for the Admin calls, `shop` for the
    /// Inventory ones.
    pub fn default_role(&self) -> &'static str {
        match self {
            ClientCommand::Stock { .. } | ClientCommand::Audit { .. } | ClientCommand::Status { .. } => {
                "admin"
            }
            _ => "shop",
        }
    }
}

/// Why a client command failed. Its `Display` is the one line printed.
#[derive(Debug)]
pub enum ClientError {
    /// The flags, the environment or the files they name do not say how
    /// to reach the node (a missing file, a key without TLS, ...).
    Setup(String),
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
            ClientError::Setup(message) => write!(f, "error: {}", message.replace(['\n', '\r'], " ")),
            ClientError::Connect { addr, message } => {
                write!(f, "error: cannot connect to {addr}: {message}")
            }
            ClientError::Status(status) => {
                let reason = reason_or_code(status);
                // One line, whatever the server put in its message.
                let message = status.message().replace(['\n', '\r'], " ");
                write!(f, "error: {reason}: {message}")?;
                match reason_of(status).as_deref() {
                    Some("MISSING_CREDENTIALS") => {
                        f.write_str(" (give --cluster FILE, or --ca-file FILE and --token-file FILE)")
                    }
                    Some("ROLE_NOT_ALLOWED") => f.write_str(" (another key: --role, --token-file)"),
                    _ => Ok(()),
                }
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
    let connection = command
        .target()
        .resolve(command.default_role(), |name| std::env::var(name).ok())?;
    let channel = connect(&connection).await?;
    let tls = connection.credentials.is_tls();
    call(command, channel).await.map_err(|e| match e {
        ClientError::Status(status) => ClientError::Status(explained(status, tls)),
        other => other,
    })
}

/// A transport failure's status (no Reservoir reason, only "transport
/// error") with its root cause and what it suggests about TLS.
pub(crate) fn explained(status: Status, tls: bool) -> Status {
    if reason_of(&status).is_some()
        || !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable)
    {
        return status;
    }
    let Some(source) = std::error::Error::source(&status) else {
        return status;
    };
    let cause = root_cause(source);
    let hint = connect_hint(&cause, tls);
    Status::new(status.code(), format!("{}: {cause}{hint}", status.message()))
}

/// Sends the command's call on `channel`.
async fn call(command: ClientCommand, channel: ClientChannel) -> Result<String, ClientError> {
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
        ClientCommand::ReserveBatch {
            items,
            ttl_ms,
            request_id_prefix,
            allow_partial,
            max_wait_ms,
            ..
        } => {
            let prefix = request_id_prefix.unwrap_or_else(fresh_request_id);
            let request = v1::ReserveBatchRequest {
                reserves: items
                    .into_iter()
                    .enumerate()
                    .map(|(i, (sku, quantity))| v1::ReserveRequest {
                        request_id: format!("{prefix}-{}", i + 1),
                        lines: vec![v1::Line { sku, quantity }],
                        ttl_ms,
                        allow_partial,
                        max_wait_ms,
                    })
                    .collect(),
            };
            let ids: Vec<String> = request.reserves.iter().map(|r| r.request_id.clone()).collect();
            let response = inventory.reserve_batch(request).await?.into_inner();
            Ok(format_batch(&ids, &response))
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

/// Connects to a node (the TLS handshake included), failing with the root
/// cause (e.g. "Connection refused") rather than tonic's generic "transport
/// error", and a hint when TLS or plaintext looks like the wrong choice.
pub async fn connect(connection: &Connection) -> Result<ClientChannel, ClientError> {
    let Connection { addr, credentials } = connection;
    let failed = |message: String| ClientError::Connect {
        addr: addr.clone(),
        message,
    };
    let endpoint = credentials
        .endpoint(&addr.authority)
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    match endpoint.connect().await {
        Ok(channel) => Ok(credentials.wrap(channel)),
        Err(e) => {
            let cause = root_cause(&e);
            let hint = connect_hint(&cause, credentials.is_tls());
            Err(failed(format!("{cause}{hint}")))
        }
    }
}

/// What a failed connection's cause suggests about TLS: a plaintext client
/// at a TLS node sees the connection closed; a TLS client at a plaintext
/// node, a corrupt record; a CA the node's certificate does not chain to,
/// an unknown issuer.
fn connect_hint(cause: &str, tls: bool) -> &'static str {
    let lower = cause.to_ascii_lowercase();
    if lower.contains("refused") || lower.contains("timed out") {
        ""
    } else if !tls {
        " (if the cluster uses TLS, give its CA: --cluster FILE or --ca-file FILE)"
    } else if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("certificate")
    {
        " (is --ca-file the CA of this cluster?)"
    } else if lower.contains("corrupt") || lower.contains("invalidcontenttype") {
        " (the node speaks plaintext: a cluster started with --insecure takes no --ca-file)"
    } else {
        ""
    }
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

/// A batch's results, one row per reserve in request order: its request id
/// (to retry it with), then the reservation (id, lines, expiry) or the
/// error's reason and message.
pub fn format_batch(request_ids: &[String], r: &v1::ReserveBatchResponse) -> String {
    let mut rows = vec![row(&["#", "REQUEST_ID", "RESULT", "DETAIL"])];
    for (i, result) in r.results.iter().enumerate() {
        let (what, detail) = match &result.outcome {
            Some(v1::reserve_result::Outcome::Reservation(r)) => {
                let lines: Vec<String> = r
                    .lines
                    .iter()
                    .map(|l| format!("{} x{}", l.sku, l.quantity))
                    .collect();
                (
                    r.reservation_id.clone(),
                    format!("{} until {}", lines.join(", "), format_time_ms(r.expires_at_ms)),
                )
            }
            Some(v1::reserve_result::Outcome::Error(e)) => (e.reason.clone(), e.message.clone()),
            None => ("-".to_string(), "no result".to_string()),
        };
        let request_id = request_ids.get(i).map_or("-", String::as_str);
        rows.push(vec![(i + 1).to_string(), request_id.to_string(), what, detail]);
    }
    let ok = r
        .results
        .iter()
        .filter(|x| matches!(x.outcome, Some(v1::reserve_result::Outcome::Reservation(_))))
        .count();
    format!("{}{ok} of {} reserved", table(&rows), r.results.len())
}

/// `SKU:QTY` of `reserve-batch --item`.
fn parse_item(s: &str) -> Result<(String, u64), String> {
    let (sku, qty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not SKU:QTY"))?;
    let qty = qty
        .parse()
        .map_err(|_| format!("{qty:?} is not a quantity (a whole number)"))?;
    Ok((sku.to_string(), qty))
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

pub(crate) fn row(cells: &[&str]) -> Vec<String> {
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

    /// The address forms parse to the same node, the scheme remembered; bad ones are refused with a reason.
    #[test]
    fn addr_forms() {
        let plain = parse_addr("127.0.0.1:7001").unwrap();
        assert_eq!((plain.authority.as_str(), plain.tls), ("127.0.0.1:7001", None));
        let http = parse_addr("http://127.0.0.1:7001").unwrap();
        assert_eq!(
            (http.authority.as_str(), http.tls),
            ("127.0.0.1:7001", Some(false))
        );
        assert_eq!(parse_addr("http://127.0.0.1:7001/").unwrap(), http);
        let https = parse_addr("https://127.0.0.1:7001").unwrap();
        assert_eq!(
            (https.authority.as_str(), https.tls),
            ("127.0.0.1:7001", Some(true))
        );
        assert_eq!(parse_addr("localhost:80").unwrap().authority, "localhost:80");
        assert_eq!(parse_addr("[::1]:7001").unwrap().authority, "[::1]:7001");
        for bad in [
            "127.0.0.1",
            ":7001",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:x",
            "ftp://127.0.0.1:7001",
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

    /// A scratch directory holding a `cluster.json` like `up` writes: a CA
    /// file and a key per role when `secure`, none when not.
    fn cluster_dir(name: &str, secure: bool) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reservoir-cli-creds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("credentials")).unwrap();
        let (tls, credentials) = if secure {
            std::fs::write(dir.join("ca.pem"), "not checked until a handshake").unwrap();
            for role in ["shop", "admin"] {
                std::fs::write(
                    dir.join(format!("credentials/{role}.key")),
                    format!("{role}.secret\n"),
                )
                .unwrap();
            }
            (
                r#""tls": {"ca_file": "ca.pem"}, "credentials": {"shop": "credentials/shop.key", "admin": "credentials/admin.key"},"#,
                "",
            )
        } else {
            ("", "")
        };
        let json = format!(
            r#"{{{tls}{credentials} "nodes": [{{"id": 2, "region": "eu-west", "grpc": "127.0.0.1:7102"}}, {{"id": 1, "region": "us-east", "grpc": "127.0.0.1:7101"}}]}}"#
        );
        std::fs::write(dir.join("cluster.json"), json).unwrap();
        dir
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// `--cluster` alone: TLS with its CA, the key of the command's role, the first us-east node.
    #[test]
    fn credentials_from_a_cluster_file() {
        let dir = cluster_dir("secure", true);
        let target = Target {
            cluster: Some(dir.join("cluster.json")),
            ..Target::default()
        };
        let c = target.resolve("admin", no_env).unwrap();
        assert_eq!(c.addr.authority, "127.0.0.1:7101");
        assert!(c.credentials.is_tls());
        // A role the file has no key for is refused, naming the way out.
        let observer = Target {
            role: Some("observer".into()),
            ..target
        };
        let e = observer.resolve("shop", no_env).unwrap_err().to_string();
        assert!(e.contains("role observer") && e.contains("--token-file"), "{e}");
        // ... unless a key is given.
        let env = |name: &str| (name == TOKEN_ENV).then(|| "k.secret".to_string());
        assert!(observer.resolve("shop", env).unwrap().credentials.is_tls());
        // An explicit plaintext address contradicts the CA.
        let http = Target {
            addr: Some(parse_addr("http://127.0.0.1:7101").unwrap()),
            ..observer
        };
        let e = http.resolve("shop", env).unwrap_err().to_string();
        assert!(e.contains("plaintext"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An insecure cluster's file, or no flags at all: plaintext, no key; a key without TLS is refused.
    #[test]
    fn plaintext_sends_no_key() {
        let dir = cluster_dir("insecure", false);
        let target = Target {
            cluster: Some(dir.join("cluster.json")),
            ..Target::default()
        };
        assert!(!target.resolve("shop", no_env).unwrap().credentials.is_tls());
        let bare = Target {
            addr: Some(parse_addr("127.0.0.1:7101").unwrap()),
            ..Target::default()
        };
        assert!(!bare.resolve("shop", no_env).unwrap().credentials.is_tls());
        let env = |name: &str| (name == TOKEN_ENV).then(|| "k.secret".to_string());
        let e = bare.resolve("shop", env).unwrap_err().to_string();
        assert!(
            e.starts_with("error: refusing to send the API key (from $RESERVOIR_TOKEN)"),
            "{e}"
        );
        let e = Target {
            addr: Some(parse_addr("https://127.0.0.1:7101").unwrap()),
            ..Target::default()
        }
        .resolve("shop", no_env)
        .unwrap_err()
        .to_string();
        assert!(e.contains("no CA"), "{e}");
        let e = Target {
            cluster: Some(dir.join("missing.json")),
            ..Target::default()
        }
        .resolve("shop", no_env)
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("error: --cluster ") && e.contains("missing.json"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
