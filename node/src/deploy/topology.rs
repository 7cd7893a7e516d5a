//! The topology file of `reservoir deploy init` (TOML): the regions, their
//! nodes and the hosts they run on, where the ledger lives, and what every
//! node shares (ports, paths inside the host, Raft and rebalancer
//! settings). Everything else a node config holds is derived from it.
//!
//! ```toml
//! home = "us-east"            # the region that hosts the ledger
//! # standalone = true         # instead: one region, no ledger
//! # insecure = false          # plaintext, no keys: benchmarks only
//! # data_dir = "/var/lib/reservoir"
//! # secrets_dir = "/etc/reservoir"
//!
//! [ports]                     # the same on every host
//! client = 7000
//! peer = 7001
//! http = 7002
//!
//! [[regions]]
//! name = "us-east"
//! nodes = [
//!   { id = 1, host = "us-east-1" },
//!   { id = 2, host = "us-east-2", names = ["us-east-2.example.com"] },
//! ]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use reservoir_client::HostPort;
use serde::{Deserialize, Serialize};

use crate::server::config::{PEERS_MAX, RaftTuning, RebalanceConfig, RetentionConfig};

/// Most regions a topology may have.
pub const REGIONS_MAX: usize = 16;
/// Most extra certificate names one node may have.
pub const NAMES_PER_NODE_MAX: usize = 8;
/// Largest topology file read.
pub const TOPOLOGY_BYTES_MAX: u64 = 1024 * 1024;
/// Where a node keeps its data, inside its host, by default.
pub const DATA_DIR_DEFAULT: &str = "/var/lib/reservoir";
/// Where a node finds its TLS files (`tls/`), inside its host, by default.
pub const SECRETS_DIR_DEFAULT: &str = "/etc/reservoir";

/// A deployment: regions of nodes on named hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The region whose nodes host the ledger; required unless standalone.
    #[serde(default)]
    pub home: Option<String>,
    /// One standalone region: no ledger, stock added to the region directly.
    #[serde(default)]
    pub standalone: bool,
    /// Plaintext and no authentication on both planes (benchmarks on a
    /// private network only): no CA, no certificates, no keys.
    #[serde(default)]
    pub insecure: bool,
    /// Where each node keeps its database, inside its host or container.
    #[serde(default = "data_dir_default")]
    pub data_dir: PathBuf,
    /// Where each node finds its TLS files inside its host or container:
    /// `{secrets_dir}/tls/ca.pem`, `{secrets_dir}/tls/node-{id}.pem` and
    /// `.key`, as they lie in the output folder's `tls/`.
    #[serde(default = "secrets_dir_default")]
    pub secrets_dir: PathBuf,
    /// The ports every node listens on (on `0.0.0.0`) and is reached at.
    #[serde(default)]
    pub ports: Ports,
    /// Every node's `[raft]`.
    #[serde(default)]
    pub raft: RaftTuning,
    /// Every node's `[rebalance]`.
    #[serde(default)]
    pub rebalance: RebalanceConfig,
    /// Every node's `[retention]`.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The regions.
    pub regions: Vec<Region>,
}

fn data_dir_default() -> PathBuf {
    PathBuf::from(DATA_DIR_DEFAULT)
}

fn secrets_dir_default() -> PathBuf {
    PathBuf::from(SECRETS_DIR_DEFAULT)
}

/// The ports of every node: each node is its own host, so they are the same
/// everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// The client listener (`Inventory`, `Admin`, health, reflection).
    pub client: u16,
    /// The peer listener (Raft, control, forwarding; mutual TLS).
    pub peer: u16,
    /// HTTP (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub http: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            client: 7000,
            peer: 7001,
            http: 7002,
        }
    }
}

/// One region and its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Its name (`us-east`): its Raft group's name.
    pub name: String,
    /// Its nodes, 1-7 (three for a region that survives a node's loss).
    pub nodes: Vec<TopologyNode>,
}

/// One node, on its own host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyNode {
    /// Its node id: unique in the cluster, never reused, not 0.
    pub id: u64,
    /// The host it is reached at, a DNS name or an IP literal (no port):
    /// its advertised addresses are `host:port`, and its certificate names it.
    pub host: String,
    /// More names its certificate carries (other DNS names or IPs it is
    /// reached by), besides `host`, `localhost` and `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The name nodes of *other* regions reach it by, when that differs
    /// from `host` (e.g. its name on a WAN network of its own, so that a
    /// region cut off that network still reaches its own nodes by `host`);
    /// its certificate names it too. Default: `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// A node that replaces this region's node `replaces`, whose data is
    /// gone: its config says `join = true` and lists the region's voters
    /// without the replaced one; no other node's config and no
    /// `cluster.json` names it (`reservoir replace-node` makes it a member).
    /// It may take the replaced node's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
}

/// A topology that cannot be used: the field and what is wrong.
pub type TopologyError = (String, String);

impl Topology {
    /// Reads and checks a topology file; an error names the field.
    pub fn load(path: &Path) -> Result<Topology, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("topology {shown}: {e}"))?
            .len();
        if len > TOPOLOGY_BYTES_MAX {
            return Err(format!(
                "topology {shown}: larger than {TOPOLOGY_BYTES_MAX} bytes"
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("topology {shown}: {e}"))?;
        let topology: Topology = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    format!(
                        " (line {})",
                        text[..s.start.min(text.len())].lines().count().max(1)
                    )
                })
                .unwrap_or_default();
            format!("topology {shown}: {}{line}", e.message())
        })?;
        topology
            .validate()
            .map_err(|(field, message)| format!("topology {shown}: field `{field}`: {message}"))?;
        Ok(topology)
    }

    /// Checks every field; on error names it.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let err = |field: &str, message: String| Err((field.to_string(), message));
        if self.regions.is_empty() || self.regions.len() > REGIONS_MAX {
            return err(
                "regions",
                format!("must list 1-{REGIONS_MAX} regions, got {}", self.regions.len()),
            );
        }
        match (&self.home, self.standalone) {
            (Some(_), true) => return err("home", "a standalone region has no home (no ledger)".into()),
            (None, false) => {
                return err(
                    "home",
                    "required: the region whose nodes host the ledger (or standalone = true)".into(),
                );
            }
            (Some(home), false) if !self.regions.iter().any(|r| &r.name == home) => {
                return err("home", format!("{home} is none of the regions"));
            }
            (None, true) if self.regions.len() != 1 => {
                return err(
                    "regions",
                    format!(
                        "a standalone deployment is one region, got {}",
                        self.regions.len()
                    ),
                );
            }
            _ => {}
        }
        for (field, dir) in [("data_dir", &self.data_dir), ("secrets_dir", &self.secrets_dir)] {
            if !dir.is_absolute() {
                return err(field, format!("{} must be an absolute path", dir.display()));
            }
        }
        let p = self.ports;
        for (field, port) in [
            ("ports.client", p.client),
            ("ports.peer", p.peer),
            ("ports.http", p.http),
        ] {
            if port == 0 {
                return err(field, "must be 1-65535".into());
            }
        }
        if p.client == p.peer || p.client == p.http || p.peer == p.http {
            return err("ports", "client, peer and http must differ".into());
        }
        let mut ids = BTreeSet::new();
        let mut hosts = BTreeSet::new();
        let mut names = BTreeSet::new();
        for region in &self.regions {
            reservoir_tokens::limits::check_region(&region.name)
                .map_err(|e| ("regions.name".to_string(), e.to_string()))?;
            if !names.insert(region.name.as_str()) {
                return err("regions.name", format!("region {} appears twice", region.name));
            }
            if region.nodes.is_empty() || region.nodes.len() > PEERS_MAX {
                return err(
                    "regions.nodes",
                    format!(
                        "region {} must list 1-{PEERS_MAX} nodes, got {}",
                        region.name,
                        region.nodes.len()
                    ),
                );
            }
            for node in &region.nodes {
                if node.id == 0 {
                    return err(
                        "regions.nodes.id",
                        format!("region {}: a node id must not be 0", region.name),
                    );
                }
                if !ids.insert(node.id) {
                    return err("regions.nodes.id", format!("node id {} appears twice", node.id));
                }
                let addr = HostPort::new(&node.host, p.peer)
                    .map_err(|e| ("regions.nodes.host".to_string(), format!("node {}: {e}", node.id)))?;
                if addr.ip().is_some_and(|ip| ip.is_unspecified()) {
                    return err(
                        "regions.nodes.host",
                        format!("node {}: {} is no address to reach a node at", node.id, node.host),
                    );
                }
                // A replacement may take the host of the node it replaces.
                let mut takes_replaced_host = false;
                if node.replaces.is_some() && self.home.as_deref() == Some(region.name.as_str()) {
                    return err(
                        "regions.nodes.replaces",
                        format!(
                            "node {}: a replacement in the home region ({}) would leave the ledger group \
                             a dead voter; not supported yet",
                            node.id, region.name
                        ),
                    );
                }
                if let Some(old) = node.replaces {
                    match region.nodes.iter().find(|n| n.id == old) {
                        Some(r) if r.replaces.is_none() => takes_replaced_host = r.host == node.host,
                        _ => {
                            return err(
                                "regions.nodes.replaces",
                                format!(
                                    "node {}: {old} is no original node of region {}",
                                    node.id, region.name
                                ),
                            );
                        }
                    }
                }
                if let Some(remote) = &node.remote_host {
                    HostPort::new(remote, p.peer).map_err(|e| {
                        (
                            "regions.nodes.remote_host".to_string(),
                            format!("node {}: {e}", node.id),
                        )
                    })?;
                }
                if !hosts.insert(addr.host_str()) && !takes_replaced_host {
                    return err(
                        "regions.nodes.host",
                        format!(
                            "node {}: host {} has another node already (every node listens on the same ports)",
                            node.id, node.host
                        ),
                    );
                }
                if node.names.len() > NAMES_PER_NODE_MAX {
                    return err(
                        "regions.nodes.names",
                        format!("node {}: at most {NAMES_PER_NODE_MAX} names", node.id),
                    );
                }
                for name in &node.names {
                    HostPort::new(name, p.peer).map_err(|e| {
                        (
                            "regions.nodes.names".to_string(),
                            format!("node {}: {e}", node.id),
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The region that hosts the ledger, if any.
    pub fn home(&self) -> Option<&Region> {
        let home = self.home.as_deref()?;
        self.regions.iter().find(|r| r.name == home)
    }

    /// A node's advertised address on `port`.
    pub fn addr(&self, node: &TopologyNode, port: u16) -> HostPort {
        HostPort::new(&node.host, port).expect("hosts and ports were validated")
    }

    /// A node's address on `port` as nodes of other regions reach it.
    pub fn remote_addr(&self, node: &TopologyNode, port: u16) -> HostPort {
        let host = node.remote_host.as_deref().unwrap_or(&node.host);
        HostPort::new(host, port).expect("hosts and ports were validated")
    }
}
