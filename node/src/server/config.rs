//! A node's configuration file (TOML), and its validation.
//!
//! A config error is one clear line naming the field; `reservoir node`
//! prints it and exits with code 2.

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
    /// Where the node serves its clients: `Inventory` and `Admin` (the
    /// client plane: TLS, API keys or client certificates, roles).
    pub grpc_addr: SocketAddr,
    /// Where the node serves its peers: Raft, the control plane, and calls
    /// forwarded to a leader (the peer plane: mutual TLS only).
    pub peer_addr: SocketAddr,
    /// Where the node serves HTTP (`/metrics`, `/healthz`, `/readyz`, `/status`).
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
    /// Its peer-plane address (its `peer_addr`, or a link emulator in front
    /// of it).
    pub peer: SocketAddr,
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
    #[error("config {path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.message().to_string() + &span(&text, e.span()),
        })?;
        config.validate().map_err(|(field, message)| ConfigError::Field {
            path: shown,
            field,
            message,
        })?;
        Ok(config)
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
        if self.grpc_addr == self.http_addr {
            return Err(("http_addr", "must differ from grpc_addr".into()));
        }
        if self.peer_addr == self.grpc_addr || self.peer_addr == self.http_addr {
            return Err(("peer_addr", "must differ from grpc_addr and http_addr".into()));
        }
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
        match self.peers.iter().find(|p| p.id == self.node_id) {
            None => return Err(("peers", format!("must include this node ({})", self.node_id))),
            Some(me) if me.peer != self.peer_addr => {
                return Err((
                    "peers",
                    format!(
                        "this node's entry says {}, peer_addr says {}",
                        me.peer, self.peer_addr
                    ),
                ));
            }
            Some(_) => {}
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
            peer_addr: "127.0.0.1:9001".parse().unwrap(),
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
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
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
}
