//! `reservoir deploy init --topology FILE --out DIR`: the files a cluster on
//! real hosts needs, from a topology ([`topology`]): one config per node,
//! the cluster's CA and each node's certificate, API keys, and a
//! `cluster.json` for clients. `reservoir up` runs a cluster on this
//! machine; this writes one for machines (or containers) that run
//! `reservoir node` each.
//!
//! What DIR holds afterwards:
//! - `nodes/node-{id}.toml`: node `id`'s config. It listens on `0.0.0.0`
//!   (`[::]` for an IPv6 host) on the topology's ports and advertises
//!   `host:port`; its peers, the ledger's nodes and the other regions'
//!   nodes are named by host. Its data is in `data_dir`, its TLS files in
//!   `{secrets_dir}/tls/`, paths inside its host or container.
//! - `tls/ca.pem` (every node and client needs it), `tls/ca.key` (the CA's
//!   key: needed only to issue certificates; keep it off the nodes),
//!   `tls/node-{id}.pem` and `tls/node-{id}.key` (node `id`'s only); each
//!   certificate names the node's identity URI, its host, its extra
//!   `names`, `localhost` and `127.0.0.1`.
//! - `credentials/{shop,admin,observer}.key`: one API key per role; every
//!   config holds their Argon2id hashes.
//! - `control.token`: a token for tools that drive a cluster's control
//!   API (as `reservoir up`'s three-region cluster has).
//! - `cluster.json`: every node's advertised addresses, the CA and the key
//!   files, for the CLI (`--cluster`), the load tester and scripts.
//!
//! Running it again on DIR keeps the CA, every certificate that still
//! names its node and hosts, the keys and the token, and writes the configs
//! and `cluster.json` again: a node added to the topology gets its
//! certificate from the same CA. The CA is never replaced (without
//! `tls/ca.key` a new certificate is refused). A config in `nodes/` for a
//! node the topology no longer has is left alone and reported.
//!
//! Caveats: certificates are valid from 1975 to 4096 (rcgen's defaults)
//! and there is no revocation; rotate by removing a node's certificate and
//! running again. An `insecure` topology writes no TLS files and no keys.

pub mod topology;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use reservoir_client::{ClusterFile, ClusterNode, HostPort, LedgerInfo};

use crate::server::config::{NodeConfig, Peer, RegionPeers};
use crate::server::security::clients::ApiKey;
use crate::up::{UpError, secrets, write_atomically};
pub use topology::{Ports, Region, Topology, TopologyNode};

/// The CA `deploy init` makes.
pub const DEPLOY_CA_NAME: &str = "Reservoir cluster CA (reservoir deploy init)";
/// DIR's folder of node configs.
pub const NODES_DIR: &str = "nodes";

/// What `deploy init` was asked for.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The topology file.
    pub topology: PathBuf,
    /// The output folder; created if missing.
    pub out: PathBuf,
}

/// Why `deploy init` failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A bad topology, or a DIR that cannot be used with it; exit code 2.
    #[error("{0}")]
    Usage(String),
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl DeployError {
    /// True for errors in what was asked (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, DeployError::Usage(_))
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> DeployError {
        let what = what.into();
        move |source| DeployError::Io { what, source }
    }
}

impl From<UpError> for DeployError {
    fn from(e: UpError) -> DeployError {
        match e {
            UpError::Io { what, source } => DeployError::Io { what, source },
            other => DeployError::Usage(other.to_string()),
        }
    }
}

/// `node-{id}.toml` in DIR's `nodes/`.
pub fn config_path(out: &Path, id: u64) -> PathBuf {
    out.join(NODES_DIR).join(format!("node-{id}.toml"))
}

/// Writes (or refreshes) DIR from the topology; returns what it did, one
/// line per item, for the operator.
pub fn init(options: &InitOptions) -> Result<Vec<String>, DeployError> {
    let topology = Topology::load(&options.topology).map_err(DeployError::Usage)?;
    let out = &options.out;
    std::fs::create_dir_all(out.join(NODES_DIR)).map_err(DeployError::io(format!(
        "creating {}",
        out.join(NODES_DIR).display()
    )))?;
    let mut report = Vec::new();

    let api_keys = if topology.insecure {
        report
            .push("insecure: no CA, no certificates, no API keys (plaintext, every caller an admin)".into());
        None
    } else {
        let certs: Vec<secrets::NodeCert> = nodes(&topology)
            .map(|(region, node)| secrets::NodeCert {
                id: node.id,
                region: region.name.clone(),
                hosts: std::iter::once(&node.host)
                    .chain(&node.names)
                    .chain(&node.remote_host)
                    .map(|h| HostPort::new(h, 1).expect("validated").host_str())
                    .collect(),
            })
            .collect();
        let made = secrets::make(out, DEPLOY_CA_NAME, &certs)?;
        let tls = out.join(secrets::TLS_DIR);
        report.push(if made.ca_made {
            format!(
                "made the CA: {} (and its key {}: keep it off the nodes, and keep it: a later run needs it to issue certificates)",
                tls.join("ca.pem").display(),
                tls.join("ca.key").display()
            )
        } else {
            format!("kept the CA {}", tls.join("ca.pem").display())
        });
        let kept: Vec<u64> = certs
            .iter()
            .map(|c| c.id)
            .filter(|id| !made.certs_made.contains(id))
            .collect();
        if !made.certs_made.is_empty() {
            report.push(format!("made node certificates: {}", ids(&made.certs_made)));
        }
        if !kept.is_empty() {
            report.push(format!("kept node certificates: {}", ids(&kept)));
        }
        report.push(format!(
            "API keys (one per role): {}",
            out.join(secrets::CREDENTIALS_DIR)
                .join("{shop,admin,observer}.key")
                .display()
        ));
        // Each key's principal is its role's name (`up`'s are `dev-` ones).
        let keys = made
            .api_keys
            .into_iter()
            .map(|key| ApiKey {
                principal: key.role.name().to_string(),
                ..key
            })
            .collect::<Vec<_>>();
        Some(keys)
    };
    secrets::ensure_control_token(out)?;

    let configs = configs(&topology, api_keys.as_deref());
    for config in &configs {
        config.validate().map_err(|(field, message)| {
            DeployError::Usage(format!("node {}: field `{field}`: {message}", config.node_id))
        })?;
        let path = config_path(out, config.node_id);
        let text = toml::to_string(config).expect("a NodeConfig always serializes to TOML");
        write_atomically(&path, text.as_bytes())
            .map_err(DeployError::io(format!("writing {}", path.display())))?;
    }
    report.push(format!(
        "wrote {} node configs: {}",
        configs.len(),
        out.join(NODES_DIR).join("node-{id}.toml").display()
    ));
    for stale in stale_configs(out, &topology)? {
        report.push(format!(
            "note: {} is for no node of the topology; left as it is",
            stale.display()
        ));
    }

    let cluster_path = out.join("cluster.json");
    let mut json =
        serde_json::to_vec_pretty(&cluster_file(&topology)).expect("a ClusterFile always serializes");
    json.push(b'\n');
    write_atomically(&cluster_path, &json)
        .map_err(DeployError::io(format!("writing {}", cluster_path.display())))?;
    report.push(format!("wrote {} (for clients)", cluster_path.display()));
    if !topology.insecure {
        report.push(format!(
            "node N needs, inside its host: its config, and {dir}/tls/ca.pem, {dir}/tls/node-N.pem, {dir}/tls/node-N.key \
             (from {}); its data goes to {}",
            out.join(secrets::TLS_DIR).display(),
            topology.data_dir.display(),
            dir = topology.secrets_dir.display()
        ));
    }
    Ok(report)
}

/// Every node of the topology with its region, in region order.
fn nodes(topology: &Topology) -> impl Iterator<Item = (&Region, &TopologyNode)> {
    topology
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().map(move |n| (r, n)))
}

fn ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// How nodes reach `region`'s original nodes (not replacements) on the
/// peer plane: by `host` from inside the region, by `remote_host` from
/// other regions.
fn peers(topology: &Topology, region: &Region, from_inside: bool) -> Vec<Peer> {
    region
        .nodes
        .iter()
        .filter(|n| n.replaces.is_none())
        .map(|n| Peer {
            id: n.id,
            peer: if from_inside {
                topology.addr(n, topology.ports.peer)
            } else {
                topology.remote_addr(n, topology.ports.peer)
            },
        })
        .collect()
}

/// The region group's voters as `node` starts with them: the original
/// nodes, or for a replacement, them without the replaced one and with it.
fn region_peers(topology: &Topology, region: &Region, node: &TopologyNode) -> Vec<Peer> {
    let mut voters = peers(topology, region, true);
    if let Some(old) = node.replaces {
        voters.retain(|p| p.id != old);
        voters.push(Peer {
            id: node.id,
            peer: topology.addr(node, topology.ports.peer),
        });
    }
    voters
}

/// The listen address for `port` on a node reached at `host`: every
/// interface, IPv6 when the host is an IPv6 literal.
fn listen(host: &HostPort, port: u16) -> SocketAddr {
    let any = match host.ip() {
        Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    SocketAddr::new(any, port)
}

/// One config per node.
pub fn configs(topology: &Topology, api_keys: Option<&[ApiKey]>) -> Vec<NodeConfig> {
    let ports = topology.ports;
    let home = topology.home();
    nodes(topology)
        .map(|(region, node)| {
            let client = topology.addr(node, ports.client);
            let peer = topology.addr(node, ports.peer);
            let is_home = home.is_some_and(|h| h.name == region.name);
            let ledger_nodes = home.map(|h| peers(topology, h, is_home)).unwrap_or_default();
            NodeConfig {
                node_id: node.id,
                join: node.replaces.is_some(),
                region: region.name.clone(),
                location: None,
                grpc_addr: listen(&client, ports.client),
                grpc_advertise: Some(client),
                peer_addr: listen(&peer, ports.peer),
                peer_advertise: Some(peer.clone()),
                http_addr: listen(&peer, ports.http),
                data_dir: topology.data_dir.clone(),
                standalone: topology.standalone,
                peers: region_peers(topology, region, node),
                raft: topology.raft.clone(),
                // A replacement joins the region group only; the ledger's
                // voters stay the home region's original nodes.
                ledger_peers: if is_home && node.replaces.is_none() {
                    ledger_nodes.clone()
                } else {
                    Vec::new()
                },
                ledger_nodes,
                regions: topology
                    .regions
                    .iter()
                    .filter(|r| r.name != region.name)
                    .map(|r| RegionPeers {
                        name: r.name.clone(),
                        nodes: peers(topology, r, false),
                    })
                    .collect(),
                rebalance: topology.rebalance.clone(),
                retention: topology.retention,
                insecure: topology.insecure,
                tls: api_keys.map(|_| secrets::tls_files(&topology.secrets_dir, node.id)),
                api_keys: api_keys.map(<[ApiKey]>::to_vec).unwrap_or_default(),
                // Behind a load balancer or a container platform: drain
                // before a stop. Logs and per-SKU series as by default
                // (RESERVOIR_LOG__FORMAT=json etc. change them per node).
                drain_ms: crate::server::config::DRAIN_MS_DEFAULT,
                log: Default::default(),
                metrics: Default::default(),
            }
        })
        .collect()
}

/// `cluster.json` for the topology: every node's advertised addresses, the
/// ledger, and (unless insecure) the CA and the key files, relative to DIR.
pub fn cluster_file(topology: &Topology) -> ClusterFile {
    let ports = topology.ports;
    let (tls, credentials) = if topology.insecure {
        (None, BTreeMap::new())
    } else {
        let (tls, credentials) = secrets::cluster_trust();
        (Some(tls), credentials)
    };
    ClusterFile {
        architecture: topology.home.as_ref().map(|_| "tokens".to_string()),
        endpoints: None,
        nodes: nodes(topology)
            .filter(|(_, node)| node.replaces.is_none())
            .map(|(region, node)| ClusterNode {
                id: node.id,
                region: region.name.clone(),
                grpc: topology.addr(node, ports.client),
                peer: Some(topology.addr(node, ports.peer)),
                http: Some(topology.addr(node, ports.http)),
                pid: None,
                cmd: Vec::new(),
            })
            .collect(),
        control: None,
        ledger: topology.home().map(|home| LedgerInfo {
            region: home.name.clone(),
            node_ids: home
                .nodes
                .iter()
                .filter(|n| n.replaces.is_none())
                .map(|n| n.id)
                .collect(),
        }),
        tls,
        credentials,
        control_token_file: None,
    }
}

/// The configs in DIR's `nodes/` for nodes the topology does not have.
fn stale_configs(out: &Path, topology: &Topology) -> Result<Vec<PathBuf>, DeployError> {
    let dir = out.join(NODES_DIR);
    let ids: Vec<u64> = nodes(topology).map(|(_, n)| n.id).collect();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(DeployError::io(format!("reading {}", dir.display())))? {
        let path = entry
            .map_err(DeployError::io(format!("reading {}", dir.display())))?
            .path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.strip_suffix(".toml"))
            .and_then(|n| n.parse::<u64>().ok());
        if id.is_some_and(|id| !ids.contains(&id)) {
            stale.push(path);
        }
    }
    stale.sort();
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the README: three regions of three nodes, the
    /// ledger in us-east.
    pub(crate) fn three_regions() -> String {
        let mut text = String::from("home = \"us-east\"\n");
        let mut id = 0;
        for region in ["us-east", "eu-west", "ap-south"] {
            text += &format!("\n[[regions]]\nname = \"{region}\"\nnodes = [\n");
            for i in 1..=3 {
                id += 1;
                text += &format!("  {{ id = {id}, host = \"{region}-{i}\" }},\n");
            }
            text += "]\n";
        }
        text
    }

    fn parse(text: &str) -> Result<Topology, (String, String)> {
        let t: Topology = toml::from_str(text).map_err(|e| ("parse".to_string(), e.to_string()))?;
        t.validate().map(|()| t)
    }

    /// Each bad topology is refused naming the field.
    #[test]
    fn bad_topologies_name_the_field() {
        let good = three_regions();
        parse(&good).unwrap();
        for (text, field) in [
            (good.replace("home = \"us-east\"\n", ""), "home"),
            (good.replace("home = \"us-east\"", "home = \"mars\""), "home"),
            (
                good.replace("home = \"us-east\"", "home = \"us-east\"\nstandalone = true"),
                "home",
            ),
            (good.replace("home = \"us-east\"", "standalone = true"), "regions"),
            (good.replace("id = 5,", "id = 4,"), "regions.nodes.id"),
            (good.replace("id = 5,", "id = 0,"), "regions.nodes.id"),
            (
                good.replace("\"eu-west-2\"", "\"eu-west-1\""),
                "regions.nodes.host",
            ),
            (
                good.replace("\"eu-west-2\"", "\"eu_west_2\""),
                "regions.nodes.host",
            ),
            (good.replace("\"eu-west-2\"", "\"0.0.0.0\""), "regions.nodes.host"),
            (
                good.replace("\"eu-west-2\" }", "\"eu-west-2\", names = [\"a b\"] }"),
                "regions.nodes.names",
            ),
            (
                good.replace("name = \"ap-south\"", "name = \"eu-west\""),
                "regions.name",
            ),
            (
                good.replace("name = \"ap-south\"", "name = \"AP South\""),
                "regions.name",
            ),
            (good.clone() + "\n[ports]\nclient = 7001\n", "ports"),
            (good.clone() + "\n[ports]\nhttp = 0\n", "ports.http"),
            (
                good.replace("home = \"us-east\"", "home = \"us-east\"\ndata_dir = \"data\""),
                "data_dir",
            ),
            (
                good.replace("home = \"us-east\"", "home = \"us-east\"\nsecrets_dir = \"s\""),
                "secrets_dir",
            ),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, field, "{text}");
        }
        let eight = (1..=8)
            .map(|i| format!("{{ id = {i}, host = \"h{i}\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!("standalone = true\n[[regions]]\nname = \"us-east\"\nnodes = [{eight}]\n");
        assert_eq!(parse(&text).unwrap_err().0, "regions.nodes");
        let e = parse(&(good + "colour = \"blue\"\n")).unwrap_err();
        assert!(e.1.contains("colour"), "{e:?}");
    }

    /// A node that replaces another: refused naming the field when the
    /// replaced id is not an original node of its region or the region is
    /// the home one; else written with `join = true`, the region's voters
    /// without the replaced node, and named by no other config and not in
    /// `cluster.json`. `remote_host` names a node to the other regions.
    #[test]
    fn replacements_and_remote_names() {
        let good = three_regions().replace(
            "{ id = 9, host = \"ap-south-3\" },",
            "{ id = 9, host = \"ap-south-3\", remote_host = \"ap-south-3.wan\" },\n  { id = 10, host = \"ap-south-3\", replaces = 9 },",
        );
        let t = parse(&good).unwrap();
        for (text, field) in [
            (
                good.replace("replaces = 9", "replaces = 4"),
                "regions.nodes.replaces",
            ),
            (
                good.replace("replaces = 9", "replaces = 99"),
                "regions.nodes.replaces",
            ),
            (
                good.replace(
                    "{ id = 3, host = \"us-east-3\" },",
                    "{ id = 3, host = \"us-east-3\" },\n  { id = 11, host = \"us-east-3\", replaces = 3 },",
                ),
                "regions.nodes.replaces",
            ),
            (
                good.replace("\"ap-south-3.wan\"", "\"ap south\""),
                "regions.nodes.remote_host",
            ),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, field, "{text}");
        }
        let configs = configs(&t, None);
        let new = configs.iter().find(|c| c.node_id == 10).unwrap();
        assert!(new.join);
        let ids: Vec<u64> = new.peers.iter().map(|p| p.id).collect();
        assert_eq!(ids, [7, 8, 10]);
        for c in configs.iter().filter(|c| c.node_id != 10) {
            assert!(!c.join);
            assert!(
                c.peers
                    .iter()
                    .chain(c.regions.iter().flat_map(|r| &r.nodes))
                    .all(|p| p.id != 10)
            );
            if c.region != "ap-south" {
                let nine = c
                    .regions
                    .iter()
                    .flat_map(|r| &r.nodes)
                    .find(|p| p.id == 9)
                    .unwrap();
                assert_eq!(nine.peer.to_string(), "ap-south-3.wan:7001");
            }
        }
        let seven = configs.iter().find(|c| c.node_id == 7).unwrap();
        let nine = seven.peers.iter().find(|p| p.id == 9).unwrap();
        assert_eq!(nine.peer.to_string(), "ap-south-3:7001");
        assert!(cluster_file(&t).nodes.iter().all(|n| n.id != 10));
    }

    /// Three regions: every node listens on every interface and advertises
    /// its host, names its region's peers, the ledger's nodes and the other
    /// regions' by host; only the home region's nodes host the ledger; the
    /// configs validate and cluster.json names every node by host.
    #[test]
    fn configs_follow_the_topology() {
        let t = parse(&three_regions()).unwrap();
        let all = configs(&t, Some(&[]));
        assert_eq!(all.len(), 9);
        for c in &all {
            c.validate()
                .unwrap_or_else(|e| panic!("node {}: {e:?}", c.node_id));
            assert_eq!(c.grpc_addr, "0.0.0.0:7000".parse().unwrap());
            assert_eq!(c.http_addr, "0.0.0.0:7002".parse().unwrap());
            assert_eq!(c.peers.len(), 3);
            assert_eq!(
                c.ledger_nodes.iter().map(|p| p.id).collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            assert_eq!(c.hosts_ledger(), c.region == "us-east", "node {}", c.node_id);
            assert_eq!(c.regions.len(), 2);
            assert_eq!(c.data_dir, PathBuf::from(topology::DATA_DIR_DEFAULT));
        }
        let five = &all[4];
        assert_eq!((five.node_id, five.region.as_str()), (5, "eu-west"));
        assert_eq!(five.grpc_advertised().to_string(), "eu-west-2:7000");
        assert_eq!(five.peer_advertised().to_string(), "eu-west-2:7001");
        assert_eq!(five.ledger_nodes[0].peer.to_string(), "us-east-1:7001");
        assert_eq!(five.regions[1].nodes[2].peer.to_string(), "ap-south-3:7001");
        let file = cluster_file(&t);
        assert_eq!(file.nodes[4].grpc.to_string(), "eu-west-2:7000");
        assert_eq!(file.nodes[4].http.as_ref().unwrap().to_string(), "eu-west-2:7002");
        assert_eq!(file.ledger.as_ref().unwrap().node_ids, vec![1, 2, 3]);
        assert_eq!(file.region_endpoints("ap-south").len(), 3);
        let standalone = parse(
            "standalone = true\n[[regions]]\nname = \"us-east\"\nnodes = [{ id = 1, host = \"10.0.0.1\" }, { id = 2, host = \"fd00::2\" }]\n",
        )
        .unwrap();
        let alone = configs(&standalone, Some(&[]));
        for c in &alone {
            c.validate().unwrap();
            assert!(c.standalone && c.ledger_nodes.is_empty() && c.regions.is_empty());
        }
        assert_eq!(alone[1].peer_addr, "[::]:7001".parse().unwrap());
        assert_eq!(alone[1].peer_advertised().to_string(), "[fd00::2]:7001");
        let file = cluster_file(&standalone);
        assert!(file.ledger.is_none() && file.architecture.is_none());
    }

    /// `init` writes every file; the configs pass the checks
    /// `--check-config` makes once their TLS files are where they say; a
    /// second run keeps the CA, the certificates and the keys.
    #[test]
    fn init_writes_configs_that_check_and_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let topology = dir.path().join("topology.toml");
        let text = three_regions().replace(
            "home = \"us-east\"",
            &format!(
                "home = \"us-east\"\nsecrets_dir = {:?}\ndata_dir = {:?}",
                out.display().to_string(),
                dir.path().join("data").display().to_string()
            ),
        );
        std::fs::write(&topology, text).unwrap();
        let options = InitOptions {
            topology: topology.clone(),
            out: out.clone(),
        };
        let report = init(&options).unwrap();
        assert!(report[0].starts_with("made the CA"), "{report:?}");
        for id in 1..=9 {
            let config = NodeConfig::load(&config_path(&out, id)).unwrap();
            assert_eq!(config.api_keys.len(), 3);
            assert_eq!(config.api_keys[0].principal, "shop");
            crate::server::check::check(&config).unwrap_or_else(|e| panic!("node {id}: {e:?}"));
        }
        for file in [
            "cluster.json",
            "control.token",
            "credentials/admin.key",
            "tls/ca.key",
        ] {
            assert!(out.join(file).exists(), "{file}");
        }
        let ca = std::fs::read(out.join("tls/ca.pem")).unwrap();
        let key = std::fs::read(out.join("credentials/shop.key")).unwrap();
        let report = init(&options).unwrap();
        assert!(report[0].starts_with("kept the CA"), "{report:?}");
        assert!(
            report
                .iter()
                .any(|l| l == "kept node certificates: 1, 2, 3, 4, 5, 6, 7, 8, 9"),
            "{report:?}"
        );
        assert_eq!(std::fs::read(out.join("tls/ca.pem")).unwrap(), ca);
        assert_eq!(std::fs::read(out.join("credentials/shop.key")).unwrap(), key);
        std::fs::write(config_path(&out, 10), "").unwrap();
        let report = init(&options).unwrap();
        assert!(
            report.iter().any(|l| l.contains("node-10.toml is for no node")),
            "{report:?}"
        );
    }
}
