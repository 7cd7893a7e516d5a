//! A node's configuration file (TOML), and its validation.
//!
//! A config error is one clear line naming the field; `reservoir node`
//! prints it and exits with code 2.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Most voters in one region group.
pub const PEERS_MAX: usize = 7;
/// Largest configurable proposal queue.
pub const PROPOSAL_QUEUE_MAX_LIMIT: usize = 65_536;

/// One node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft id: unique in the cluster, never reused, not 0.
    pub node_id: u64,
    /// The region this node serves, e.g. `us-east`.
    pub region: String,
    /// Where the node serves gRPC (public API and Raft traffic).
    pub grpc_addr: SocketAddr,
    /// Where the node serves HTTP (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub http_addr: SocketAddr,
    /// Where the node keeps its sled database.
    pub data_dir: PathBuf,
    /// Standalone region (no ledger): `Admin.AdjustStock` adds tokens to the
    /// region directly.
    #[serde(default)]
    pub standalone: bool,
    /// Every voter of the region group, this node included.
    pub peers: Vec<Peer>,
    /// Raft timing.
    #[serde(default)]
    pub raft: RaftTuning,
}

/// A voter of the region group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id.
    pub id: u64,
    /// Its gRPC address.
    pub grpc: SocketAddr,
}

/// Raft timing. Defaults suit a loaded two-core machine: the heartbeat stays
/// well under half the shortest election timeout, and an election finishes
/// well inside the two seconds the failure contract allows.
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
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            proposal_queue_max: 4096,
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
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        if self.grpc_addr == self.http_addr {
            return Err(("http_addr", "must differ from grpc_addr".into()));
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
            if self.peers[..i].iter().any(|q| q.grpc == p.grpc) {
                return Err(("peers", format!("address {} appears twice", p.grpc)));
            }
        }
        match self.peers.iter().find(|p| p.id == self.node_id) {
            None => return Err(("peers", format!("must include this node ({})", self.node_id))),
            Some(me) if me.grpc != self.grpc_addr => {
                return Err((
                    "peers",
                    format!(
                        "this node's entry says {}, grpc_addr says {}",
                        me.grpc, self.grpc_addr
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
                format!("must be 1-{PROPOSAL_QUEUE_MAX_LIMIT}, got {}", r.proposal_queue_max),
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
            grpc_addr: "127.0.0.1:7001".parse().unwrap(),
            http_addr: "127.0.0.1:8001".parse().unwrap(),
            data_dir: "/tmp/x".into(),
            standalone: true,
            peers: vec![
                Peer {
                    id: 1,
                    grpc: "127.0.0.1:7001".parse().unwrap(),
                },
                Peer {
                    id: 2,
                    grpc: "127.0.0.1:7002".parse().unwrap(),
                },
            ],
            raft: RaftTuning::default(),
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
