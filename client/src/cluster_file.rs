//! `cluster.json`: where a cluster's nodes are reached, written by `reservoir
//! up` and `reservoir deploy init` into their DIR and read by the CLI, the
//! load tester, the tests and scripts. These keys are a contract; a
//! hand-written file for a cluster `up` did not start may leave out what
//! only `up` knows (`http`, `pid`, `cmd`).
//!
//! Every node address is a [`HostPort`] string, `host:port`: an IP literal
//! (`127.0.0.1:7001`, as `up` writes) or a DNS name (`us-east-1:7000`, as a
//! deployment's files say), resolved when a client connects.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::addr::HostPort;

/// Most bytes of `cluster.json` read.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// `cluster.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The design (`tokens`, `single-writer`, `global-consensus`;
    /// three-region cluster only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Per region, where its clients connect (three-region cluster only):
    /// the region's nodes, or for single-writer outside the home region,
    /// link emulators in front of the home region's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<BTreeMap<String, Vec<ClusterEndpoint>>>,
    /// Every node.
    pub nodes: Vec<ClusterNode>,
    /// The three-region cluster's control API, `127.0.0.1:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Where the ledger runs; absent when there is none (a standalone
    /// region, single-writer, global-consensus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerInfo>,
    /// How a client trusts the nodes' certificates; absent for a cluster
    /// started with `--insecure` (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// Per role (`shop`, `admin`, `observer`), the file holding an API key
    /// of that role; relative paths are relative to this file's directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, PathBuf>,
    /// The file holding the token of the control API (`up`'s three-region
    /// cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_token_file: Option<PathBuf>,
}

/// How a client trusts a cluster's nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// The cluster's CA certificate (PEM); relative paths are relative to
    /// the `cluster.json`'s directory.
    pub ca_file: PathBuf,
}

/// Where the ledger runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    /// The home region.
    pub region: String,
    /// The nodes that host ledger voters.
    pub node_ids: Vec<u64>,
}

/// Where a client connects: the node and the address that reaches it from
/// the client's region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEndpoint {
    /// The node behind the address.
    pub id: u64,
    /// The address, `host:port`.
    pub grpc: HostPort,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its node id.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// Its client-plane gRPC address (its `grpc_advertise`), `host:port`.
    pub grpc: HostPort,
    /// Its peer-plane address (its `peer_advertise`: Raft, control,
    /// forwarding; mutual TLS, nodes only); `up` and `deploy init` always
    /// write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<HostPort>,
    /// Its HTTP address (`/status`, `/metrics`); `up` and `deploy init`
    /// always write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HostPort>,
    /// The process `up` started (stale once the node is restarted by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The command line that (re)starts it on its data; its first word
    /// tells whether `pid` is still that process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
}

/// Why a `cluster.json` could not be read.
#[derive(Debug)]
pub struct ClusterFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for ClusterFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ClusterFileError {}

impl ClusterFile {
    /// Reads and parses a `cluster.json` of at most
    /// [`CLUSTER_FILE_BYTES_MAX`] bytes.
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterFileError> {
        let fail = |reason: String| ClusterFileError {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > CLUSTER_FILE_BYTES_MAX {
            return Err(fail(format!("larger than {CLUSTER_FILE_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// The addresses a client in `region` uses: its endpoints, or (a
    /// standalone or hand-written file) the region's nodes.
    pub fn region_endpoints(&self, region: &str) -> Vec<(u64, HostPort)> {
        match &self.endpoints {
            Some(all) => all
                .get(region)
                .map(|list| list.iter().map(|e| (e.id, e.grpc.clone())).collect())
                .unwrap_or_default(),
            None => self
                .nodes
                .iter()
                .filter(|n| n.region == region)
                .map(|n| (n.id, n.grpc.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cluster.json as `reservoir up` writes it parses, extra fields and all.
    #[test]
    fn cluster_file_parses() {
        let text = r#"{"nodes":[{"id":1,"region":"us-east","grpc":"127.0.0.1:5000","http":"127.0.0.1:5001",
            "pid":42,"cmd":["reservoir","node"],"extra":1}],"control":"127.0.0.1:6000",
            "ledger":{"region":"us-east","node_ids":[1]}}"#;
        let f: ClusterFile = serde_json::from_str(text).unwrap();
        assert_eq!(f.nodes[0].region, "us-east");
        assert_eq!(f.nodes[0].http, Some("127.0.0.1:5001".parse().unwrap()));
        assert_eq!(f.nodes[0].pid, Some(42));
        assert_eq!(f.nodes[0].cmd, vec!["reservoir".to_string(), "node".into()]);
        assert_eq!(f.control.as_deref(), Some("127.0.0.1:6000"));
        assert_eq!(f.ledger.as_ref().map(|l| l.node_ids.clone()), Some(vec![1]));
        assert_eq!(
            f.region_endpoints("us-east"),
            vec![(1, "127.0.0.1:5000".parse().unwrap())]
        );
        // A hand-written file without them still parses.
        let bare = r#"{"nodes":[{"id":1,"region":"us-east","grpc":"127.0.0.1:5000"}]}"#;
        let f: ClusterFile = serde_json::from_str(bare).unwrap();
        assert_eq!((&f.nodes[0].http, f.nodes[0].pid), (&None, None));
    }

    /// Node addresses may be DNS names; a bad one is refused naming it.
    #[test]
    fn node_addresses_may_be_names() {
        let text = r#"{"nodes":[{"id":4,"region":"eu-west","grpc":"eu-west-1:7000",
            "peer":"eu-west-1:7001","http":"eu-west-1:7002"}]}"#;
        let f: ClusterFile = serde_json::from_str(text).unwrap();
        assert_eq!(f.nodes[0].grpc.host_str(), "eu-west-1");
        assert_eq!(
            f.region_endpoints("eu-west"),
            vec![(4, "eu-west-1:7000".parse().unwrap())]
        );
        assert_eq!(
            serde_json::to_value(&f.nodes[0]).unwrap()["http"],
            "eu-west-1:7002"
        );
        let bad = r#"{"nodes":[{"id":4,"region":"eu-west","grpc":"eu_west:7000"}]}"#;
        let e = serde_json::from_str::<ClusterFile>(bad).unwrap_err().to_string();
        assert!(e.contains("eu_west"), "{e}");
    }

    #[test]
    fn a_missing_or_huge_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("reservoir-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = ClusterFile::load(&dir.join("none.json")).unwrap_err();
        assert!(missing.to_string().contains("none.json"), "{missing}");
        let huge = dir.join("huge.json");
        std::fs::write(&huge, vec![b' '; CLUSTER_FILE_BYTES_MAX as usize + 1]).unwrap();
        let e = ClusterFile::load(&huge).unwrap_err();
        assert!(e.reason.contains("larger than"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
