//! A node's configuration file (TOML), and its validation.
//!
//! A config error is one clear line naming the field; `reservoir node`
//! prints it and exits with code 2.
//!
//! Addresses come in two kinds. A node *listens* on `grpc_addr`,
//! `peer_addr` and `http_addr`: socket addresses of this host, `0.0.0.0`
//! (or `[::]`) for every interface. Others *reach* it at its advertised
//! addresses, `grpc_advertise` and `peer_advertise`: `host:port`
//! ([`HostPort`]), a DNS name or an IP literal, which default to the
//! listen addresses (and are required when those are unspecified). Every
//! peer address (`peers`, `ledger_peers`, `ledger_nodes`, `regions`) is a
//! `host:port` too, resolved when a connection is made, so a node may name
//! peers whose DNS records do not exist yet.

use reservoir_client::HostPort;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::server::logging::{LogConfig, LogFormat};
pub use crate::server::security::TlsFiles;
use crate::server::security::clients::{API_KEYS_MAX, ApiKey};
pub use crate::server::telemetry::MetricsConfig;

/// Most voters in one region group.
pub const PEERS_MAX: usize = 7;
/// Most batches in flight a config may ask for.
pub const BATCHES_IN_FLIGHT_LIMIT: usize = 64;
/// Largest configurable proposal queue.
pub const PROPOSAL_QUEUE_MAX_LIMIT: usize = 65_536;
/// Fewest log entries between snapshots a config may ask for.
pub const SNAPSHOT_LOGS_MIN: u64 = 10;
/// Most log entries between snapshots a config may ask for.
pub const SNAPSHOT_LOGS_LIMIT: u64 = 100_000_000;
/// Smallest snapshot chunk a config may ask for.
pub const SNAPSHOT_CHUNK_BYTES_MIN: usize = 1024;

/// One node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft id: unique in the cluster, never reused, not 0.
    pub node_id: u64,
    /// The region this node serves, e.g. `us-east`: the name of its region
    /// group.
    pub region: String,
    /// Where the node runs, when that is not `region`: a `global` group
    /// (`up --architecture global-consensus`) has one voter in each of the
    /// three regions. Shown in `/status` and `cluster.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Where the node listens for its clients: `Inventory` and `Admin` (the
    /// client plane: TLS, API keys or client certificates, roles).
    /// `0.0.0.0:PORT` listens on every interface (then `grpc_advertise` is
    /// required).
    pub grpc_addr: SocketAddr,
    /// How clients reach the client listener, `host:port` (a DNS name or
    /// an IP literal) [default: `grpc_addr`]. The node's certificate must
    /// name the host. Written into `cluster.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_advertise: Option<HostPort>,
    /// Where the node listens for its peers: Raft, the control plane, and
    /// calls forwarded to a leader (the peer plane: mutual TLS only).
    pub peer_addr: SocketAddr,
    /// How the other nodes reach the peer listener, `host:port` [default:
    /// `peer_addr`]: this node's entry in `peers` (and `ledger_peers`) must
    /// say the same, and its certificate must name the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_advertise: Option<HostPort>,
    /// Where the node listens for HTTP (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub http_addr: SocketAddr,
    /// Where the node keeps its sled database.
    pub data_dir: PathBuf,
    /// Standalone region (no ledger): `Admin.AdjustStock` adds tokens to the
    /// region directly.
    #[serde(default)]
    pub standalone: bool,
    /// This node joins groups that already run (a node added to a region,
    /// or one replacing a node whose disk died): it never initializes a
    /// group, even with empty data, and waits until an operator adds it
    /// (`reservoir add-node`). Without it, the node with the smallest id of
    /// `peers` initializes the group on its very first start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Every voter of the region group, this node included.
    pub peers: Vec<Peer>,
    /// Raft timing.
    #[serde(default)]
    pub raft: RaftTuning,
    /// The ledger's voters, on the nodes that host the ledger group (the
    /// home region's nodes); empty elsewhere.
    #[serde(default)]
    pub ledger_peers: Vec<Peer>,
    /// How this node reaches the ledger's nodes (through the WAN emulator in
    /// a local cluster); empty when standalone.
    #[serde(default)]
    pub ledger_nodes: Vec<Peer>,
    /// How this node reaches every other region's nodes; empty when standalone.
    #[serde(default)]
    pub regions: Vec<RegionPeers>,
    /// The rebalancer (runs on the ledger leader).
    #[serde(default)]
    pub rebalance: RebalanceConfig,
    /// How long the region keeps ended reservations and their request ids.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Plaintext on both planes and no authentication: every caller is an
    /// admin and every peer may send anything. For benchmarks on one
    /// machine only; without it, `[tls]` is required.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// The cluster's CA and this node's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// The API keys clients authenticate with, stored hashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
    /// How long the node stays up after SIGTERM / Ctrl-C while it says it
    /// is not ready (`/readyz` 503, gRPC health `NOT_SERVING`) and goes on
    /// serving, so load balancers stop sending it calls first. 0: stop at
    /// once.
    #[serde(default = "drain_ms_default")]
    pub drain_ms: u64,
    /// How the node logs (`[log]`: `format`, `filter`).
    #[serde(default)]
    pub log: LogConfig,
    /// What the node's metrics label per SKU (`[metrics]`: `sku_labels`, `skus`).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Default of `drain_ms`.
pub const DRAIN_MS_DEFAULT: u64 = 2_000;
/// Longest drain a config may ask for.
pub const DRAIN_MS_MAX: u64 = 300_000;

fn drain_ms_default() -> u64 {
    DRAIN_MS_DEFAULT
}

/// How long the region group keeps ended (released, expired, settled)
/// reservations, and with each the request id that made it. The region
/// leader writes these settings into the replicated state when they differ
/// from it, so every replica prunes alike. Memory: an ended reservation
/// costs about 222 bytes (`cargo run --release -p reservoir-tokens --example
/// state_bytes`), so the default bound, 5,000,000, is at most about 1.1 GB
/// per node; with the default 5 minutes it fills only when more than 16,667
/// reservations end per second, sustained (then new reserves are
/// `RETENTION_FULL` until the oldest age out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Logical time an ended reservation is kept after it ends.
    pub ended_ms: u64,
    /// Most ended reservations kept within `ended_ms`; past it new reserves
    /// are refused (`RETENTION_FULL`), none is forgotten early.
    pub ended_max: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = reservoir_tokens::Retention::default();
        RetentionConfig {
            ended_ms: r.ended_ms,
            ended_max: r.ended_max,
        }
    }
}

impl RetentionConfig {
    /// The settings as the region state holds them.
    pub fn to_state(self) -> reservoir_tokens::Retention {
        reservoir_tokens::Retention {
            ended_ms: self.ended_ms,
            ended_max: self.ended_max,
        }
    }
}

/// Another region's nodes, as this node reaches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPeers {
    /// The region's name.
    pub name: String,
    /// Its nodes.
    pub nodes: Vec<Peer>,
}

/// The rebalancer's policy by name, in a config (`rebalance.policy`) and on
/// the command line (`up --policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Shares by demand; tokens move only to regions that are short.
    #[default]
    #[value(name = "proportional")]
    Proportional,
    /// A region under the threshold takes half of the richest region's.
    #[value(name = "take_half")]
    TakeHalf,
}

/// The rebalancer's policy and timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceConfig {
    /// `proportional` (default) or `take_half`.
    pub policy: PolicyName,
    /// Time between rounds.
    pub interval_ms: u64,
    /// Demand is the reserve rate over this horizon (units per horizon).
    pub horizon_ms: u64,
    /// `proportional`: tokens every reachable region keeps at least.
    pub floor: u64,
    /// A region under this many available tokens asks for a top-up at once.
    pub low_water: u64,
    /// `proportional`: surplus kept before revoking, percent of target.
    pub revoke_slack_pct: u64,
    /// `take_half`: regions under this many tokens take half of the richest.
    pub threshold: u64,
    /// Time between periodic audits on the ledger leader.
    pub audit_interval_ms: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            policy: PolicyName::Proportional,
            interval_ms: 250,
            horizon_ms: 2_000,
            floor: 10,
            low_water: 5,
            revoke_slack_pct: 25,
            threshold: 10,
            audit_interval_ms: 2_000,
        }
    }
}

impl RebalanceConfig {
    /// The plan policy this config names, with its parameters.
    pub fn policy(&self) -> reservoir_tokens::rebalance::Policy {
        use reservoir_tokens::rebalance::{Policy, Proportional, TakeHalf};
        match self.policy {
            PolicyName::Proportional => Policy::Proportional(Proportional {
                floor: self.floor,
                low_water: self.low_water,
                revoke_slack_pct: self.revoke_slack_pct,
            }),
            PolicyName::TakeHalf => Policy::TakeHalf(TakeHalf {
                threshold: self.threshold,
            }),
        }
    }
}

/// Another node (or this one), as this node reaches it on the peer plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id.
    pub id: u64,
    /// Its peer-plane address, `host:port` (its `peer_advertise`, or a
    /// link emulator in front of it); a DNS name is resolved at each
    /// connection attempt.
    pub peer: HostPort,
}

/// Raft timing. Each voter takes its own slice of the election timeout range
/// (see `reservoir_raft::group::staggered_election_timeout`), so votes do not
/// split. Defaults suit a loaded two-core machine: the heartbeat stays well
/// under the shortest election timeout, and a failover (a leader lease plus
/// an election timeout) takes about 1–1.5 s, inside the two seconds the
/// failure contract allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Shortest election timeout.
    pub election_timeout_min_ms: u64,
    /// Longest election timeout.
    pub election_timeout_max_ms: u64,
    /// Most proposals waiting to be batched; past it a call gets
    /// UNAVAILABLE / `OVERLOADED` at once.
    pub proposal_queue_max: usize,
    /// Most batches (log entries) being committed at once, 1-64.
    pub batches_in_flight: usize,
    /// Log entries between two snapshots of a group on this node (each voter
    /// builds at its own offset); also about the most a restart replays.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so a follower that lags by fewer
    /// catches up from the log rather than from a whole snapshot.
    pub snapshot_logs_kept: u64,
    /// Size of the chunks this node sends snapshots in.
    pub snapshot_chunk_bytes: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            proposal_queue_max: 4096,
            batches_in_flight: reservoir_raft::group::BATCHES_IN_FLIGHT_MAX,
            snapshot_logs: reservoir_raft::group::SNAPSHOT_LOGS_DEFAULT,
            snapshot_logs_kept: reservoir_raft::group::SNAPSHOT_LOGS_KEPT_DEFAULT,
            snapshot_chunk_bytes: reservoir_raft::network::SNAPSHOT_CHUNK_BYTES_DEFAULT,
        }
    }
}

/// Largest config file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The prefix of the environment variables that set config fields:
/// `RESERVOIR_NODE_ID` sets `node_id`.
pub const ENV_PREFIX: &str = "RESERVOIR_";
/// Separates nested keys in a variable's name: `RESERVOIR_RAFT__HEARTBEAT_MS`
/// sets `raft.heartbeat_ms`.
pub const ENV_NESTING: &str = "__";
/// The variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "RESERVOIR_CONFIG";
/// Variables with the prefix that are no config field: the config's own
/// path, the client's credentials (`reservoir_client::credentials`), and
/// the tests' and scripts' settings. A node ignores them; any other
/// `RESERVOIR_*` variable must name a field.
pub const ENV_NOT_FIELDS: [&str; 10] = [
    CONFIG_ENV,
    // The commit a build names in `reservoir_build_info`, read by `cargo
    // build` (crate::server::telemetry::COMMIT), not by a node.
    "RESERVOIR_COMMIT",
    reservoir_client::credentials::TOKEN_ENV,
    reservoir_client::credentials::CA_FILE_ENV,
    "RESERVOIR_BIN",
    "RESERVOIR_TEST_KEEP",
    "RESERVOIR_RELEASE_DIR",
    "RESERVOIR_FAILOVER_KILLS",
    "RESERVOIR_RAFT_SIGKILL_DIR",
    "RESERVOIR_FSYNC_CHILD_DIR",
];
/// Most config fields the environment may set.
pub const ENV_OVERRIDES_MAX: usize = 128;
/// Largest value of one variable.
pub const ENV_VALUE_BYTES_MAX: usize = 256 * 1024;

/// A configuration that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the field.
        message: String,
    },
    /// A field has a bad value.
    #[error("config {path}: field `{field}`{}: {message}", from_env(.var))]
    Field {
        /// The file.
        path: String,
        /// The field, as a dotted path (`raft.heartbeat_ms`).
        field: String,
        /// The environment variable that set it, if one did.
        var: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An environment variable cannot be applied (it names no field, or
    /// its value does not fit).
    #[error("config {path}: {var} (from the environment): {message}")]
    Env {
        /// The file.
        path: String,
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

fn from_env(var: &Option<String>) -> String {
    var.as_ref()
        .map(|v| format!(" (from the environment, {v})"))
        .unwrap_or_default()
}

/// One `RESERVOIR_*` variable, as the field it sets.
#[derive(Clone, Debug, PartialEq)]
struct Override {
    /// The variable's name.
    var: String,
    /// The field's keys, outermost first.
    keys: Vec<String>,
    /// The value: TOML when it reads as TOML, else the text as a string.
    value: toml::Value,
}

impl Override {
    fn dotted(&self) -> String {
        self.keys.join(".")
    }
}

/// True when one dotted field path lies within the other (or equals it).
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

/// The environment variable that sets the field at dotted path `keys`.
pub fn env_var(keys: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        keys.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join(ENV_NESTING)
    )
}

/// The `RESERVOIR_*` variables of this process (names and values that are
/// not UTF-8 are skipped, and a value is taken lossily), for
/// [`NodeConfig::load_with_env`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// A variable's value as the TOML value it reads as: an integer, `true` or
/// `false`, a quoted string, an array or an inline table; anything else
/// (`us-east`, `10.0.0.7:7001`, `/var/lib/reservoir`) is the text itself,
/// as a string. No field is a float or a date, so those read as text too.
fn env_value(text: &str) -> toml::Value {
    let parsed = format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| {
            let v = t.remove("v")?;
            t.is_empty().then_some(v)
        });
    match parsed {
        Some(
            v @ (toml::Value::Integer(_)
            | toml::Value::Boolean(_)
            | toml::Value::String(_)
            | toml::Value::Array(_)
            | toml::Value::Table(_)),
        ) => v,
        _ => toml::Value::String(text.to_string()),
    }
}

impl NodeConfig {
    /// Reads and validates a config file, as it is (no environment).
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        NodeConfig::load_with_env(Some(path), Vec::new())
    }

    /// What `reservoir node` runs with: the file at `path` (none: every
    /// field from the environment), each `RESERVOIR_*` variable of `env`
    /// ([`process_env`]) over it, then validation. A variable names a field
    /// (`RESERVOIR_NODE_ID`: `node_id`; `__` nests: `RESERVOIR_RAFT__HEARTBEAT_MS`:
    /// `raft.heartbeat_ms`) and replaces it whole; lists and tables are
    /// TOML inline values (`RESERVOIR_PEERS='[{id = 1, peer = "a:7001"}]'`).
    /// Variables apply in name order, so a nested one wins over its table's.
    /// A variable that names no field is refused (but [`ENV_NOT_FIELDS`]
    /// are ignored), and an error caused by one names it.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<NodeConfig, ConfigError> {
        let shown = path.map_or_else(|| "(environment)".to_string(), |p| p.display().to_string());
        let text = match path {
            Some(path) => Some(read_config(path, &shown)?),
            None => None,
        };
        let mut table = match &text {
            Some(text) => text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                message: e.message().to_string() + &span(text, e.span()),
            })?,
            None => toml::Table::new(),
        };
        let overrides = env_overrides(env, &shown)?;
        for o in &overrides {
            apply_override(&mut table, o).map_err(|message| ConfigError::Env {
                path: shown.clone(),
                var: o.var.clone(),
                message,
            })?;
        }
        let config = deserialize(table, text.as_deref(), &overrides, &shown)?;
        config.validate().map_err(|(field, message)| ConfigError::Field {
            path: shown.clone(),
            field: field.to_string(),
            var: overrides
                .iter()
                .find(|o| related(&o.dotted(), field))
                .map(|o| o.var.clone()),
            message,
        })?;
        Ok(config)
    }

    /// How clients reach the client listener: `grpc_advertise`, else `grpc_addr`.
    pub fn grpc_advertised(&self) -> HostPort {
        self.grpc_advertise
            .clone()
            .unwrap_or_else(|| HostPort::from(self.grpc_addr))
    }

    /// How peers reach the peer listener: `peer_advertise`, else `peer_addr`.
    pub fn peer_advertised(&self) -> HostPort {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| HostPort::from(self.peer_addr))
    }

    /// How a program reaches the HTTP listener: `http_addr`, or when that
    /// listens on every interface, the client plane's advertised host on
    /// the HTTP port.
    pub fn http_advertised(&self) -> HostPort {
        if self.http_addr.ip().is_unspecified() {
            self.grpc_advertised()
                .with_port(self.http_addr.port())
                .unwrap_or_else(|_| HostPort::from(self.http_addr))
        } else {
            HostPort::from(self.http_addr)
        }
    }

    /// The host names (DNS names and IP literals) this node is reached by,
    /// which its certificate must carry: those of its advertised addresses.
    pub fn advertised_hosts(&self) -> Vec<String> {
        let mut hosts = vec![
            self.grpc_advertised().host_str(),
            self.peer_advertised().host_str(),
        ];
        hosts.dedup();
        hosts
    }

    /// Checks every field; on error names it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.node_id == 0 {
            return Err(("node_id", "must not be 0".into()));
        }
        reservoir_tokens::limits::check_region(&self.region).map_err(|e| ("region", e.to_string()))?;
        if let Some(location) = &self.location {
            reservoir_tokens::limits::check_region(location).map_err(|e| ("location", e.to_string()))?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        self.validate_addresses()?;
        if self.peers.is_empty() || self.peers.len() > PEERS_MAX {
            return Err((
                "peers",
                format!("must list 1-{PEERS_MAX} voters, got {}", self.peers.len()),
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == 0 {
                return Err(("peers", "a peer id must not be 0".into()));
            }
            if self.peers[..i].iter().any(|q| q.id == p.id) {
                return Err(("peers", format!("peer id {} appears twice", p.id)));
            }
            if self.peers[..i].iter().any(|q| q.peer == p.peer) {
                return Err(("peers", format!("address {} appears twice", p.peer)));
            }
        }
        let me = self.peer_advertised();
        let said = if self.peer_advertise.is_some() {
            "peer_advertise"
        } else {
            "peer_addr (no peer_advertise)"
        };
        match self.peers.iter().find(|p| p.id == self.node_id) {
            None => return Err(("peers", format!("must include this node ({})", self.node_id))),
            Some(entry) if entry.peer != me => {
                return Err((
                    "peers",
                    format!("this node's entry says {}, {said} says {me}", entry.peer),
                ));
            }
            Some(_) => {}
        }
        if let Some(entry) = self.ledger_peers.iter().find(|p| p.id == self.node_id)
            && entry.peer != me
        {
            return Err((
                "ledger_peers",
                format!("this node's entry says {}, {said} says {me}", entry.peer),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms < 2 * r.heartbeat_ms {
            return Err((
                "raft.election_timeout_min_ms",
                "must be at least twice raft.heartbeat_ms (> 0)".into(),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err((
                "raft.election_timeout_max_ms",
                "must exceed raft.election_timeout_min_ms".into(),
            ));
        }
        if r.proposal_queue_max == 0 || r.proposal_queue_max > PROPOSAL_QUEUE_MAX_LIMIT {
            return Err((
                "raft.proposal_queue_max",
                format!(
                    "must be 1-{PROPOSAL_QUEUE_MAX_LIMIT}, got {}",
                    r.proposal_queue_max
                ),
            ));
        }
        if !(1..=BATCHES_IN_FLIGHT_LIMIT).contains(&r.batches_in_flight) {
            return Err((
                "raft.batches_in_flight",
                format!("must be 1-{BATCHES_IN_FLIGHT_LIMIT}, got {}", r.batches_in_flight),
            ));
        }
        if !(SNAPSHOT_LOGS_MIN..=SNAPSHOT_LOGS_LIMIT).contains(&r.snapshot_logs) {
            return Err((
                "raft.snapshot_logs",
                format!(
                    "must be {SNAPSHOT_LOGS_MIN}-{SNAPSHOT_LOGS_LIMIT}, got {}",
                    r.snapshot_logs
                ),
            ));
        }
        if r.snapshot_logs_kept > SNAPSHOT_LOGS_LIMIT {
            return Err((
                "raft.snapshot_logs_kept",
                format!(
                    "must be at most {SNAPSHOT_LOGS_LIMIT}, got {}",
                    r.snapshot_logs_kept
                ),
            ));
        }
        let chunk_max = reservoir_raft::network::SNAPSHOT_CHUNK_BYTES_MAX;
        if !(SNAPSHOT_CHUNK_BYTES_MIN..=chunk_max).contains(&r.snapshot_chunk_bytes) {
            return Err((
                "raft.snapshot_chunk_bytes",
                format!(
                    "must be {SNAPSHOT_CHUNK_BYTES_MIN}-{chunk_max}, got {}",
                    r.snapshot_chunk_bytes
                ),
            ));
        }
        self.retention
            .to_state()
            .check()
            .map_err(|e| ("retention", e.to_string()))?;
        if self.drain_ms > DRAIN_MS_MAX {
            return Err((
                "drain_ms",
                format!("must be at most {DRAIN_MS_MAX}, got {}", self.drain_ms),
            ));
        }
        self.log.check().map_err(|e| ("log.filter", e))?;
        self.metrics.check().map_err(|e| ("metrics", e))?;
        self.validate_security()?;
        self.validate_cluster()
    }

    /// Listen addresses: distinct, a real port; advertised addresses: given
    /// when a listener takes every interface, and never unspecified; peer
    /// addresses: never unspecified.
    fn validate_addresses(&self) -> Result<(), (&'static str, String)> {
        for (field, listen) in [
            ("grpc_addr", self.grpc_addr),
            ("peer_addr", self.peer_addr),
            ("http_addr", self.http_addr),
        ] {
            if listen.port() == 0 {
                return Err((field, format!("{listen}: port 0; give the port to listen on")));
            }
        }
        if self.grpc_addr == self.http_addr {
            return Err(("http_addr", "must differ from grpc_addr".into()));
        }
        if self.peer_addr == self.grpc_addr || self.peer_addr == self.http_addr {
            return Err(("peer_addr", "must differ from grpc_addr and http_addr".into()));
        }
        for (field, listen_field, listen, advertise) in [
            (
                "grpc_advertise",
                "grpc_addr",
                self.grpc_addr,
                &self.grpc_advertise,
            ),
            (
                "peer_advertise",
                "peer_addr",
                self.peer_addr,
                &self.peer_advertise,
            ),
        ] {
            match advertise {
                None if listen.ip().is_unspecified() => {
                    return Err((
                        field,
                        format!(
                            "required: {listen_field} {listen} listens on every interface; \
                             say how others reach it (host:port)"
                        ),
                    ));
                }
                Some(a) if a.ip().is_some_and(|ip| ip.is_unspecified()) => {
                    return Err((field, format!("{a} is no address to reach a node at")));
                }
                _ => {}
            }
        }
        let lists = [
            ("peers", &self.peers),
            ("ledger_peers", &self.ledger_peers),
            ("ledger_nodes", &self.ledger_nodes),
        ];
        let regions = self.regions.iter().map(|r| ("regions", &r.nodes));
        for (field, list) in lists.into_iter().chain(regions) {
            if list.len() > PEERS_MAX {
                return Err((field, format!("at most {PEERS_MAX} nodes, got {}", list.len())));
            }
            if let Some(p) = list
                .iter()
                .find(|p| p.peer.ip().is_some_and(|ip| ip.is_unspecified()))
            {
                return Err((
                    field,
                    format!("node {}: {} is no address to reach a node at", p.id, p.peer),
                ));
            }
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), (&'static str, String)> {
        if self.insecure {
            if self.tls.is_some() || !self.api_keys.is_empty() {
                return Err((
                    "insecure",
                    "an insecure node uses neither [tls] nor [[api_keys]]; remove them or insecure".into(),
                ));
            }
            return Ok(());
        }
        if self.tls.is_none() {
            return Err((
                "tls",
                "required (the cluster's CA and this node's certificate) unless insecure = true".into(),
            ));
        }
        if self.api_keys.len() > API_KEYS_MAX {
            return Err(("api_keys", format!("at most {API_KEYS_MAX} keys")));
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            key.check().map_err(|e| ("api_keys", e))?;
            if self.api_keys[..i].iter().any(|k| k.id == key.id) {
                return Err(("api_keys", format!("key id {} appears twice", key.id)));
            }
        }
        Ok(())
    }

    /// Where the node runs: its `location`, or else its region.
    pub fn location(&self) -> &str {
        self.location.as_deref().unwrap_or(&self.region)
    }

    /// True when this node hosts a ledger voter.
    pub fn hosts_ledger(&self) -> bool {
        !self.ledger_peers.is_empty()
    }

    fn validate_cluster(&self) -> Result<(), (&'static str, String)> {
        if self.standalone {
            if !self.ledger_peers.is_empty() || !self.ledger_nodes.is_empty() || !self.regions.is_empty() {
                return Err((
                    "standalone",
                    "a standalone region has no ledger_peers, ledger_nodes or regions".into(),
                ));
            }
            return Ok(());
        }
        if self.ledger_nodes.is_empty() {
            return Err((
                "ledger_nodes",
                "a region with a ledger must list how to reach its nodes".into(),
            ));
        }
        if !self.ledger_peers.is_empty() && !self.ledger_peers.iter().any(|p| p.id == self.node_id) {
            return Err((
                "ledger_peers",
                format!("must include this node ({})", self.node_id),
            ));
        }
        // A node id names one node, in one region: the peer plane trusts a
        // caller by the id and region its certificate names.
        let mut region_of: std::collections::BTreeMap<u64, &str> =
            self.peers.iter().map(|p| (p.id, self.region.as_str())).collect();
        for r in &self.regions {
            for p in &r.nodes {
                if let Some(other) = region_of.insert(p.id, &r.name)
                    && other != r.name
                {
                    return Err((
                        "regions",
                        format!("node {} is listed in {other} and in {}", p.id, r.name),
                    ));
                }
            }
        }
        for r in &self.regions {
            reservoir_tokens::limits::check_region(&r.name).map_err(|e| ("regions", e.to_string()))?;
            if r.name == self.region {
                return Err(("regions", format!("lists this node's own region {}", r.name)));
            }
            if r.nodes.is_empty() || r.nodes.len() > PEERS_MAX {
                return Err((
                    "regions",
                    format!("region {} must list 1-{PEERS_MAX} nodes", r.name),
                ));
            }
        }
        if self.rebalance.interval_ms == 0
            || self.rebalance.horizon_ms == 0
            || self.rebalance.audit_interval_ms == 0
        {
            return Err((
                "rebalance",
                "interval_ms, horizon_ms and audit_interval_ms must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// The file's text, at most [`CONFIG_FILE_BYTES_MAX`] bytes.
fn read_config(path: &Path, shown: &str) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        path: shown.to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::Parse {
            path: shown.to_string(),
            message: format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

/// The `RESERVOIR_*` variables of `env` that set fields, in name order,
/// each checked against the fields a config has.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    shown: &str,
) -> Result<Vec<Override>, ConfigError> {
    let refuse = |var: &str, message: String| ConfigError::Env {
        path: shown.to_string(),
        var: var.to_string(),
        message,
    };
    let vars: std::collections::BTreeMap<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !ENV_NOT_FIELDS.contains(&name.as_str()))
        .collect();
    if vars.len() > ENV_OVERRIDES_MAX {
        return Err(refuse(
            ENV_PREFIX,
            format!("{} variables set fields; at most {ENV_OVERRIDES_MAX}", vars.len()),
        ));
    }
    let schema = schema();
    let mut out = Vec::with_capacity(vars.len());
    for (var, text) in vars {
        if text.len() > ENV_VALUE_BYTES_MAX {
            return Err(refuse(
                &var,
                format!("value longer than {ENV_VALUE_BYTES_MAX} bytes"),
            ));
        }
        let keys: Vec<String> = var[ENV_PREFIX.len()..]
            .split(ENV_NESTING)
            .map(str::to_ascii_lowercase)
            .collect();
        check_keys(&schema, &keys).map_err(|message| refuse(&var, message))?;
        out.push(Override {
            var,
            keys,
            value: env_value(&text),
        });
    }
    Ok(out)
}

/// Checks that `keys` name a field of a config (`schema`): each key a
/// field of the table before it; only a table (`raft`, `tls`, ...) has
/// fields to name; a list (`peers`) is set whole.
fn check_keys(schema: &toml::Table, keys: &[String]) -> Result<(), String> {
    let mut table = schema;
    for (i, key) in keys.iter().enumerate() {
        let so_far = keys[..=i].join(".");
        let known = || {
            table
                .keys()
                .map(|k| env_var(&format!("{}{k}", prefix(&keys[..i]))))
                .collect::<Vec<_>>()
        };
        let Some(value) = table.get(key) else {
            return Err(format!(
                "no config field `{so_far}` (fields here: {})",
                known().join(", ")
            ));
        };
        if i + 1 == keys.len() {
            return Ok(());
        }
        match value {
            toml::Value::Table(inner) => table = inner,
            toml::Value::Array(_) => {
                return Err(format!(
                    "`{so_far}` is a list: set it whole, e.g. {}='[{{id = 1, peer = \"node-1:7001\"}}]'",
                    env_var(&so_far)
                ));
            }
            _ => return Err(format!("`{so_far}` has no fields")),
        }
    }
    Err("names no field".into())
}

fn prefix(keys: &[String]) -> String {
    keys.iter().map(|k| format!("{k}.")).collect()
}

/// Sets `o`'s field in `table` to its value, making the tables above it.
fn apply_override(table: &mut toml::Table, o: &Override) -> Result<(), String> {
    let (last, path) = o.keys.split_last().expect("an override names at least one key");
    let mut at = table;
    for (i, key) in path.iter().enumerate() {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{}` in the file is not a table", o.keys[..=i].join("."))),
        };
    }
    at.insert(last.clone(), o.value.clone());
    Ok(())
}

/// The config in `table` (the file with the environment over it). An
/// error names the field (from the deserializer's key path), and the
/// variable when one set it, else the file's line when the file alone
/// gives the same error.
fn deserialize(
    table: toml::Table,
    text: Option<&str>,
    overrides: &[Override],
    shown: &str,
) -> Result<NodeConfig, ConfigError> {
    let e = match table.try_into::<NodeConfig>() {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    let message = e.message().to_string();
    let field = error_key(&e.to_string());
    if let Some(o) = overrides
        .iter()
        .find(|o| field.as_deref().is_some_and(|f| related(&o.dotted(), f)))
    {
        return Err(ConfigError::Env {
            path: shown.to_string(),
            var: o.var.clone(),
            message: format!("`{}`: {message}", field.unwrap_or_default()),
        });
    }
    let line = text
        .and_then(|t| {
            let e = toml::from_str::<NodeConfig>(t).err()?;
            (e.message() == message).then(|| span(t, e.span()))
        })
        .unwrap_or_default();
    Err(match field {
        Some(field) => ConfigError::Field {
            path: shown.to_string(),
            field,
            var: None,
            message: message + &line,
        },
        None => ConfigError::Parse {
            path: shown.to_string(),
            message: message + &line,
        },
    })
}

/// The dotted key a deserializer's error names (its "in `a.b`" line), if any.
fn error_key(rendered: &str) -> Option<String> {
    rendered.lines().rev().find_map(|l| {
        let key = l.trim().strip_prefix("in `")?.strip_suffix('`')?;
        (!key.is_empty()).then(|| key.to_string())
    })
}

/// Every field a config has, as a table: a config with every optional
/// field set, serialized. A new field of [`NodeConfig`] shows up here by
/// itself (the literal below must name it), so the environment can set it.
fn schema() -> toml::Table {
    let peer = Peer {
        id: 1,
        peer: HostPort::from(SocketAddr::from(([127, 0, 0, 1], 1))),
    };
    let example = NodeConfig {
        join: true,
        node_id: 1,
        region: "r".into(),
        location: Some("r".into()),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        grpc_advertise: Some(peer.peer.clone()),
        peer_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        peer_advertise: Some(peer.peer.clone()),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        data_dir: "d".into(),
        standalone: true,
        peers: vec![peer.clone()],
        raft: RaftTuning::default(),
        ledger_peers: vec![peer.clone()],
        ledger_nodes: vec![peer.clone()],
        regions: vec![RegionPeers {
            name: "r".into(),
            nodes: vec![peer],
        }],
        rebalance: RebalanceConfig::default(),
        retention: RetentionConfig::default(),
        insecure: true,
        tls: Some(TlsFiles {
            ca_file: "c".into(),
            cert_file: "c".into(),
            key_file: "k".into(),
        }),
        api_keys: vec![ApiKey {
            id: "k".into(),
            principal: "p".into(),
            role: crate::server::security::Role::Shop,
            hash: "h".into(),
        }],
        drain_ms: DRAIN_MS_DEFAULT,
        log: LogConfig::default(),
        metrics: MetricsConfig {
            sku_labels: 1,
            skus: vec!["s".into()],
        },
    };
    toml::Table::try_from(&example).expect("a NodeConfig serializes to a TOML table")
}

fn span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> NodeConfig {
        NodeConfig {
            node_id: 1,
            region: "us-east".into(),
            location: None,
            grpc_addr: "127.0.0.1:7001".parse().unwrap(),
            grpc_advertise: None,
            peer_addr: "127.0.0.1:9001".parse().unwrap(),
            peer_advertise: None,
            http_addr: "127.0.0.1:8001".parse().unwrap(),
            data_dir: "/tmp/x".into(),
            standalone: true,
            join: false,
            peers: vec![
                Peer {
                    id: 1,
                    peer: "127.0.0.1:9001".parse().unwrap(),
                },
                Peer {
                    id: 2,
                    peer: "127.0.0.1:9002".parse().unwrap(),
                },
            ],
            raft: RaftTuning::default(),
            ledger_peers: Vec::new(),
            ledger_nodes: Vec::new(),
            regions: Vec::new(),
            rebalance: RebalanceConfig::default(),
            retention: RetentionConfig::default(),
            insecure: false,
            tls: Some(TlsFiles {
                ca_file: "/tmp/ca.pem".into(),
                cert_file: "/tmp/node.pem".into(),
                key_file: "/tmp/node.key".into(),
            }),
            api_keys: Vec::new(),
            drain_ms: DRAIN_MS_DEFAULT,
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// A good config round-trips through TOML and validates.
    #[test]
    fn good_config_loads() {
        let dir = std::env::temp_dir().join(format!("reservoir-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, toml::to_string(&good()).unwrap()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), good());
    }

    /// Each bad field is named in the error.
    #[test]
    fn bad_fields_are_named() {
        let field = |f: fn(&mut NodeConfig)| {
            let mut c = good();
            f(&mut c);
            c.validate().unwrap_err().0
        };
        assert_eq!(field(|c| c.node_id = 0), "node_id");
        assert_eq!(field(|c| c.region = "US East".into()), "region");
        assert_eq!(field(|c| c.http_addr = c.grpc_addr), "http_addr");
        assert_eq!(field(|c| c.peer_addr = c.grpc_addr), "peer_addr");
        assert_eq!(field(|c| c.tls = None), "tls");
        assert_eq!(field(|c| c.insecure = true), "insecure");
        assert_eq!(
            field(|c| c.api_keys.push(ApiKey {
                id: "k".into(),
                principal: "p".into(),
                role: crate::server::security::Role::Shop,
                hash: "not a hash".into(),
            })),
            "api_keys"
        );
        assert_eq!(field(|c| c.peers.clear()), "peers");
        assert_eq!(field(|c| c.peers[1].id = 1), "peers");
        assert_eq!(
            field(|c| {
                c.peers.remove(0);
            }),
            "peers"
        );
        assert_eq!(
            field(|c| c.raft.election_timeout_min_ms = 10),
            "raft.election_timeout_min_ms"
        );
        assert_eq!(field(|c| c.raft.snapshot_logs = 1), "raft.snapshot_logs");
        assert_eq!(
            field(|c| c.raft.snapshot_chunk_bytes = 10),
            "raft.snapshot_chunk_bytes"
        );
        assert_eq!(
            field(|c| c.retention.ended_max = reservoir_tokens::limits::ENDED_RESERVATIONS_LIMIT + 1),
            "retention"
        );
        assert_eq!(
            field(|c| c.retention.ended_ms = reservoir_tokens::limits::RESERVATION_RETENTION_MS_LIMIT + 1),
            "retention"
        );
        assert_eq!(field(|c| c.drain_ms = DRAIN_MS_MAX + 1), "drain_ms");
        assert_eq!(
            field(|c| c.log.filter = "info,openraft=loud".into()),
            "log.filter"
        );
        assert_eq!(field(|c| c.metrics.sku_labels = usize::MAX), "metrics");
    }

    /// A config without `drain_ms`, `[log]` and `[metrics]` gets their
    /// defaults; with them, what it says.
    #[test]
    fn operations_fields_default_and_parse() {
        let mut c = good();
        c.drain_ms = 0;
        c.log.format = LogFormat::Json;
        c.log.filter = "debug,sled=warn".into();
        c.metrics.sku_labels = 3;
        c.metrics.skus = vec!["hot".into()];
        let text = toml::to_string(&c).unwrap();
        assert!(
            text.contains("[log]") && text.contains("format = \"json\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<NodeConfig>(&text).unwrap(), c);
        let mut bare: toml::Table = toml::from_str(&text).unwrap();
        for key in ["drain_ms", "log", "metrics"] {
            assert!(bare.remove(key).is_some(), "{key} in {text}");
        }
        let defaults: NodeConfig = toml::from_str(&toml::to_string(&bare).unwrap()).unwrap();
        assert_eq!(defaults.drain_ms, DRAIN_MS_DEFAULT);
        assert_eq!(defaults.log, LogConfig::default());
        assert_eq!(defaults.metrics, MetricsConfig::default());
    }

    /// One node id under two regions is refused: the peer plane trusts a
    /// caller by the id and region its certificate names.
    #[test]
    fn a_node_id_lives_in_one_region() {
        let mut c = good();
        c.standalone = false;
        c.ledger_nodes = vec![c.peers[0].clone()];
        let node = |id: u64, port: u16| Peer {
            id,
            peer: SocketAddr::from(([127, 0, 0, 1], port)).into(),
        };
        c.regions = vec![
            RegionPeers {
                name: "eu-west".into(),
                nodes: vec![node(4, 9104)],
            },
            RegionPeers {
                name: "ap-south".into(),
                nodes: vec![node(5, 9105)],
            },
        ];
        c.validate().unwrap();
        c.regions[1].nodes.push(node(4, 9106));
        assert_eq!(c.validate().unwrap_err().0, "regions");
        c.regions[1].nodes.pop();
        c.regions[0].nodes.push(node(2, 9102));
        assert_eq!(
            c.validate().unwrap_err().0,
            "regions",
            "node 2 is in this node's region"
        );
    }

    /// Unknown keys and type errors are refused with the parser's message.
    #[test]
    fn parse_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("reservoir-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "node_id = \"one\"\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("node_id") || e.contains("invalid type"), "{e}");
        std::fs::write(&path, toml::to_string(&good()).unwrap() + "bogus = 1\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    /// A node listening on every interface under a DNS name: peers named
    /// by host, its own entry equal to its advertised peer address.
    fn named() -> NodeConfig {
        let mut c = good();
        c.grpc_addr = "0.0.0.0:7000".parse().unwrap();
        c.peer_addr = "0.0.0.0:7001".parse().unwrap();
        c.http_addr = "0.0.0.0:7002".parse().unwrap();
        c.grpc_advertise = Some("us-east-1:7000".parse().unwrap());
        c.peer_advertise = Some("us-east-1:7001".parse().unwrap());
        c.peers = (1..=3)
            .map(|id| Peer {
                id,
                peer: format!("us-east-{id}:7001").parse().unwrap(),
            })
            .collect();
        c
    }

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Advertised addresses default to the listen addresses; DNS names are
    /// accepted for peers and advertised addresses, and round-trip.
    #[test]
    fn advertise_defaults_and_dns_names() {
        let c = good();
        assert_eq!(c.grpc_advertised(), HostPort::from(c.grpc_addr));
        assert_eq!(c.peer_advertised(), HostPort::from(c.peer_addr));
        assert_eq!(c.http_advertised(), HostPort::from(c.http_addr));
        let c = named();
        c.validate().unwrap();
        assert_eq!(c.grpc_advertised().to_string(), "us-east-1:7000");
        assert_eq!(c.http_advertised().to_string(), "us-east-1:7002");
        assert_eq!(c.advertised_hosts(), vec!["us-east-1".to_string()]);
        let (_dir, path) = write("node.toml", &toml::to_string(&c).unwrap());
        assert_eq!(NodeConfig::load(&path).unwrap(), c);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("grpc_advertise = \"us-east-1:7000\""), "{text}");
        assert!(text.contains("peer = \"us-east-2:7001\""), "{text}");
    }

    /// An unspecified listen address needs an advertised one; an advertised
    /// or peer address may not be unspecified; this node's entry must be
    /// its advertised peer address.
    #[test]
    fn advertise_refusals_name_the_field() {
        let field = |f: fn(&mut NodeConfig)| {
            let mut c = named();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let (f, message) = field(|c| c.grpc_advertise = None);
        assert_eq!(f, "grpc_advertise");
        assert!(message.contains("0.0.0.0:7000"), "{message}");
        assert_eq!(field(|c| c.peer_advertise = None).0, "peer_advertise");
        assert_eq!(
            field(|c| c.grpc_advertise = Some("0.0.0.0:7000".parse().unwrap())).0,
            "grpc_advertise"
        );
        assert_eq!(
            field(|c| c.peers[2].peer = "0.0.0.0:7001".parse().unwrap()).0,
            "peers"
        );
        let (f, message) = field(|c| c.peer_advertise = Some("us-east-9:7001".parse().unwrap()));
        assert_eq!(f, "peers");
        assert!(
            message.contains("us-east-9:7001") && message.contains("peer_advertise"),
            "{message}"
        );
        assert_eq!(field(|c| c.grpc_addr.set_port(0)).0, "grpc_addr");
        let mut c = named();
        c.standalone = false;
        c.ledger_peers = c.peers.clone();
        c.ledger_nodes = c.peers.clone();
        c.validate().unwrap();
        c.ledger_peers[0].peer = "us-east-1.other:7001".parse().unwrap();
        assert_eq!(c.validate().unwrap_err().0, "ledger_peers");
    }

    /// A bad host in a file is refused with the field and line named.
    #[test]
    fn bad_hosts_are_refused_naming_the_field() {
        let mut text = toml::to_string(&named()).unwrap();
        text = text.replace("\"us-east-2:7001\"", "\"us_east_2:7001\"");
        let (_dir, path) = write("node.toml", &text);
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("`peers.peer`") && e.contains("us_east_2") && e.contains("(line "),
            "{e}"
        );
        let text = toml::to_string(&named())
            .unwrap()
            .replace("\"us-east-1:7000\"", "\"us-east-1:99999\"");
        let (_dir, path) = write("node.toml", &text);
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("`grpc_advertise`") && e.contains("1-65535"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    /// A config written before advertise addresses existed (IP literals,
    /// as `up` writes them) loads unchanged and writes back the same.
    #[test]
    fn ip_literal_configs_load_unchanged() {
        let text = "node_id = 1\nregion = \"us-east\"\ngrpc_addr = \"127.0.0.1:7001\"\n\
                    peer_addr = \"127.0.0.1:9001\"\nhttp_addr = \"127.0.0.1:8001\"\n\
                    data_dir = \"/tmp/x\"\nstandalone = true\ninsecure = true\n\n\
                    [[peers]]\nid = 1\npeer = \"127.0.0.1:9001\"\n";
        let (_dir, path) = write("node.toml", text);
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(
            c.peers[0].peer.socket_addr(),
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!((&c.grpc_advertise, &c.peer_advertise), (&None, &None));
        let again = toml::to_string(&c).unwrap();
        assert!(!again.contains("advertise"), "{again}");
        assert!(again.contains("peer = \"127.0.0.1:9001\""), "{again}");
    }

    /// Environment variables set top-level, nested and list fields over
    /// the file; a nested one wins over its table's.
    #[test]
    fn env_overrides_set_fields() {
        let (_dir, path) = write("node.toml", &toml::to_string(&good()).unwrap());
        let c = NodeConfig::load_with_env(
            Some(&path),
            env(&[
                ("RESERVOIR_NODE_ID", "2"),
                ("RESERVOIR_RAFT__HEARTBEAT_MS", "40"),
                ("RESERVOIR_REBALANCE", "{interval_ms = 900, floor = 3}"),
                ("RESERVOIR_REBALANCE__FLOOR", "4"),
                ("RESERVOIR_PEER_ADDR", "127.0.0.1:9002"),
                ("RESERVOIR_GRPC_ADDR", "0.0.0.0:7001"),
                ("RESERVOIR_GRPC_ADVERTISE", "us-east-2:7001"),
                ("RESERVOIR_DATA_DIR", "/var/lib/reservoir"),
                ("RESERVOIR_TLS__CA_FILE", "/etc/reservoir/tls/ca.pem"),
                ("RESERVOIR_LEDGER_PEERS", "[]"),
                // Other programs' variables are no fields, and ignored.
                ("RESERVOIR_TOKEN", "x"),
                ("RESERVOIR_CA_FILE", "ca.pem"),
                ("RESERVOIR_CONFIG", "elsewhere.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.raft.heartbeat_ms, 40);
        assert_eq!((c.rebalance.interval_ms, c.rebalance.floor), (900, 4));
        assert_eq!(
            c.rebalance.horizon_ms,
            RebalanceConfig::default().horizon_ms,
            "a table set whole takes the defaults for what it leaves out"
        );
        assert_eq!(c.grpc_advertised().to_string(), "us-east-2:7001");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/reservoir"));
        assert_eq!(c.tls.unwrap().ca_file, PathBuf::from("/etc/reservoir/tls/ca.pem"));
        let c = NodeConfig::load_with_env(
            Some(&path),
            env(&[(
                "RESERVOIR_PEERS",
                r#"[{id = 1, peer = "127.0.0.1:9001"}, {id = 5, peer = "us-east-5:7001"}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].peer.to_string(), "us-east-5:7001");
    }

    /// A node runs from the environment alone.
    #[test]
    fn env_alone_makes_a_config() {
        let c = NodeConfig::load_with_env(
            None,
            env(&[
                ("RESERVOIR_NODE_ID", "1"),
                ("RESERVOIR_REGION", "us-east"),
                ("RESERVOIR_GRPC_ADDR", "0.0.0.0:7000"),
                ("RESERVOIR_GRPC_ADVERTISE", "us-east-1:7000"),
                ("RESERVOIR_PEER_ADDR", "0.0.0.0:7001"),
                ("RESERVOIR_PEER_ADVERTISE", "us-east-1:7001"),
                ("RESERVOIR_HTTP_ADDR", "0.0.0.0:7002"),
                ("RESERVOIR_DATA_DIR", "/var/lib/reservoir"),
                ("RESERVOIR_STANDALONE", "true"),
                ("RESERVOIR_INSECURE", "true"),
                ("RESERVOIR_PEERS", r#"[{id = 1, peer = "us-east-1:7001"}]"#),
            ]),
        )
        .unwrap();
        assert_eq!((c.node_id, c.region.as_str(), c.insecure), (1, "us-east", true));
        let e = NodeConfig::load_with_env(None, env(&[("RESERVOIR_REGION", "us-east")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(environment)") && e.contains("missing field"), "{e}");
    }

    /// An unknown variable, a nested name under a list or a value, a value
    /// of the wrong type and a bad value are each refused naming the
    /// variable and saying it came from the environment.
    #[test]
    fn bad_env_overrides_name_the_variable() {
        let (_dir, path) = write("node.toml", &toml::to_string(&good()).unwrap());
        let refused = |vars: &[(&str, &str)]| {
            let e = NodeConfig::load_with_env(Some(&path), env(vars)).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("node.toml"), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
            text
        };
        let e = refused(&[("RESERVOIR_COLOUR", "blue")]);
        assert!(
            e.contains("RESERVOIR_COLOUR (from the environment)") && e.contains("no config field `colour`"),
            "{e}"
        );
        let e = refused(&[("RESERVOIR_RAFT__HEARTBEAT", "5")]);
        assert!(
            e.contains("RESERVOIR_RAFT__HEARTBEAT") && e.contains("RESERVOIR_RAFT__HEARTBEAT_MS"),
            "{e}"
        );
        let e = refused(&[("RESERVOIR_PEERS__ID", "5")]);
        assert!(e.contains("is a list"), "{e}");
        let e = refused(&[("RESERVOIR_NODE_ID__X", "5")]);
        assert!(e.contains("has no fields"), "{e}");
        let e = refused(&[("RESERVOIR_RAFT__HEARTBEAT_MS", "fast")]);
        assert!(
            e.contains("RESERVOIR_RAFT__HEARTBEAT_MS (from the environment)") && e.contains("invalid type"),
            "{e}"
        );
        let e = refused(&[("RESERVOIR_PEERS", r#"[{id = 1, peer = "a_b:1"}]"#)]);
        assert!(e.contains("RESERVOIR_PEERS") && e.contains("a_b"), "{e}");
        let e = refused(&[("RESERVOIR_NODE_ID", "0")]);
        assert!(
            e.contains("field `node_id` (from the environment, RESERVOIR_NODE_ID): must not be 0"),
            "{e}"
        );
        let e = refused(&[("RESERVOIR_GRPC_ADDR", "0.0.0.0:7001")]);
        assert!(
            e.contains("field `grpc_advertise`") && e.contains("0.0.0.0:7001"),
            "{e}"
        );
    }

    /// Values read as TOML when they are TOML scalars, lists or tables, and
    /// as text otherwise; floats and dates (no field has them) stay text.
    #[test]
    fn env_values_read_as_toml_or_text() {
        use toml::Value;
        assert_eq!(env_value("4"), Value::Integer(4));
        assert_eq!(env_value("true"), Value::Boolean(true));
        assert_eq!(env_value("\"us-east\""), Value::String("us-east".into()));
        assert_eq!(env_value("us-east"), Value::String("us-east".into()));
        assert_eq!(env_value("10.0.0.7:7001"), Value::String("10.0.0.7:7001".into()));
        assert_eq!(
            env_value("/var/lib/reservoir"),
            Value::String("/var/lib/reservoir".into())
        );
        assert_eq!(env_value("inf"), Value::String("inf".into()));
        assert_eq!(env_value("2024-01-01"), Value::String("2024-01-01".into()));
        assert_eq!(
            env_value("1\nnode_id = 5"),
            Value::String("1\nnode_id = 5".into())
        );
        assert!(matches!(env_value("[1, 2]"), Value::Array(a) if a.len() == 2));
        assert_eq!(env_var("raft.heartbeat_ms"), "RESERVOIR_RAFT__HEARTBEAT_MS");
        assert_eq!(
            error_key("invalid type: string \"x\", expected u64\nin `raft.heartbeat_ms`\n").as_deref(),
            Some("raft.heartbeat_ms")
        );
    }

    /// The environment can name every field and every nested field of a
    /// config (the schema is the config's own serialization).
    #[test]
    fn every_field_has_a_variable() {
        let schema = schema();
        for key in [
            "node_id",
            "region",
            "location",
            "grpc_addr",
            "grpc_advertise",
            "peer_addr",
            "peer_advertise",
            "http_addr",
            "data_dir",
            "standalone",
            "peers",
            "ledger_peers",
            "ledger_nodes",
            "regions",
            "insecure",
            "api_keys",
        ] {
            check_keys(&schema, &[key.to_string()]).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        for (table, keys) in [
            ("raft", toml::Table::try_from(RaftTuning::default()).unwrap()),
            (
                "rebalance",
                toml::Table::try_from(RebalanceConfig::default()).unwrap(),
            ),
            (
                "retention",
                toml::Table::try_from(RetentionConfig::default()).unwrap(),
            ),
        ] {
            for key in keys.keys() {
                check_keys(&schema, &[table.to_string(), key.clone()]).unwrap();
            }
        }
        for key in ["ca_file", "cert_file", "key_file"] {
            check_keys(&schema, &["tls".to_string(), key.to_string()]).unwrap();
        }
    }
}
