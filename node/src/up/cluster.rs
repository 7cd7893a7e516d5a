//! `reservoir up`: the local three-region cluster.
//!
//! Three regions (`us-east`, `eu-west`, `ap-south`) of N nodes each run as
//! child processes on loopback ports, the ledger's group on the us-east
//! nodes beside their region group. Every cross-region connection goes
//! through a WAN link emulator in this process ([`crate::up::wan`]): each node's
//! config names the other regions' nodes (and the ledger's) at proxy ports
//! that add the link's round trip and can be cut. A control API over HTTP
//! cuts and heals links and kills and restarts nodes.
//!
//! `--architecture` picks one of three designs from the same binary, so the
//! load tester can compare them on the same links:
//! - `tokens` (the design): a region group per region, the ledger beside
//!   us-east, tokens moved by the rebalancer;
//! - `single-writer`: one us-east group holds all stock (standalone, no
//!   ledger); clients in the other regions reach it through the WAN links;
//! - `global-consensus`: one Raft group named `global` with one voter in
//!   each region, its Raft traffic and forwarded calls through the WAN links.
//!
//! `cluster.json` lists, per region, the endpoints a client there connects
//! to (`endpoints`): the region's own nodes, or — single-writer — link
//! emulators in front of the us-east nodes.
//!
//! The steps: write (or reuse) the node configs → start the link emulators
//! → start the nodes → wait until every node is ready → seed the demo
//! catalog (first run, unless `--no-demo`) → write `DIR/cluster.json` →
//! serve the control API and print a one-line status now and then → on
//! Ctrl-C / SIGTERM stop every child.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use reservoir_client::control_api::{self, LinkState, PartitionRequest};
use reservoir_client::{HOME_REGION, HostPort};
use tokio::sync::{Mutex, watch};

use crate::server::config::{NodeConfig, Peer, PolicyName, RaftTuning, RebalanceConfig, RegionPeers};
use crate::server::security::clients::{ApiKey, Role};
use crate::up::secrets;
use crate::up::wan::{self, Link, Wan, WanProfile};
use crate::up::{
    ClusterEndpoint, ClusterFile, ClusterNode, LedgerInfo, NodeProcess, PlannedNode, ShutdownSignals,
    UpError, cluster_dir, config_path, existing_node_ids, free_ports, reap, send_signal, spawn_node,
    start_nodes, stop_all, write_atomically,
};
use reservoir_client::Credentials;

/// Nodes per region when `--nodes-per-region` is not given.
pub const NODES_PER_REGION_DEFAULT: u64 = 3;
/// How long every node has to become ready.
pub const CLUSTER_READY_DEADLINE: Duration = Duration::from_secs(60);
/// SKUs the one-line status names; the rest are counted.
pub const STATUS_SKUS_MAX: usize = 4;
/// How often the one-line status is printed.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);
/// The demo catalog: SKU and units.
pub const DEMO_CATALOG: [(&str, i64); 3] = [
    ("tee-black-m", 3_000),
    ("sneaker-limited-42", 600),
    ("console-x", 120),
];

/// The group of a global-consensus cluster.
pub const GLOBAL_GROUP: &str = "global";

/// Which design `up` runs (see the module doc); on the command line
/// `tokens`, `single-writer`, `global-consensus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Architecture {
    /// Escrow tokens: a group per region, the ledger, the rebalancer.
    Tokens,
    /// One us-east group; other regions' clients cross the WAN.
    SingleWriter,
    /// One group with a voter in each region, its traffic over the WAN.
    GlobalConsensus,
}

impl Architecture {
    /// Its name on the command line and in `cluster.json`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Tokens => "tokens",
            Architecture::SingleWriter => "single-writer",
            Architecture::GlobalConsensus => "global-consensus",
        }
    }

    /// Nodes per region when `--nodes-per-region` is not given.
    pub fn nodes_per_region_default(self) -> u64 {
        match self {
            Architecture::GlobalConsensus => 1,
            _ => NODES_PER_REGION_DEFAULT,
        }
    }
}

/// Raft timing of the global group: its voters are an ocean apart (up to
/// 186 ms round trip with `--wan aws`), so heartbeats and elections are
/// slower than inside a region. Batches in flight stay at the default 4:
/// with 32, a Black Friday made more log entries than openraft 0.9 (one
/// AppendEntries of at most 32 entries in flight per follower) could carry
/// to ap-south, which fell behind, and when eu-west was cut off the group
/// could not commit for 20 s while ap-south caught up.
pub fn global_raft_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_ms: 250,
        election_timeout_min_ms: 1_500,
        election_timeout_max_ms: 3_000,
        ..RaftTuning::default()
    }
}

/// What `up` (three regions) was asked for.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster directory.
    pub dir: PathBuf,
    /// The design to run.
    pub architecture: Architecture,
    /// Nodes per region, 1-7 (global-consensus: 1); `None` means the
    /// architecture's default.
    pub nodes_per_region: Option<u64>,
    /// WAN profile: `aws` or `none`.
    pub wan: WanProfile,
    /// Seed the demo catalog on the first run.
    pub demo: bool,
    /// Rebalancer policy for fresh configs.
    pub policy: PolicyName,
    /// Each node's `raft.proposal_queue_max`; `None` means the default.
    pub proposal_queue_max: Option<usize>,
    /// The `reservoir` binary the children run.
    pub exe: PathBuf,
    /// Fresh configs run without TLS or authentication.
    pub insecure: bool,
}

/// One link emulator: where it listens, where it forwards, which link.
#[derive(Clone, Debug)]
struct Proxy {
    listen: SocketAddr,
    target: SocketAddr,
    link: (String, String),
}

struct Cluster {
    architecture: Architecture,
    wan: Wan,
    nodes: Mutex<Vec<NodeProcess>>,
    /// Per region, where its clients connect (see [`endpoints`]).
    endpoints: Endpoints,
    exe: PathBuf,
    dir: PathBuf,
    control: SocketAddr,
    /// The control API's token (`DIR/control.token`).
    control_token: String,
    /// How `up` itself calls the nodes (the admin key).
    admin: Credentials,
}

/// Runs the three-region cluster until Ctrl-C / SIGTERM. Run it on a
/// current-thread runtime on the main thread (see [`crate::up::run`]).
pub async fn run(options: ClusterOptions) -> Result<(), UpError> {
    let mut signals = ShutdownSignals::install().map_err(UpError::io("installing signal handlers"))?;
    let dir = cluster_dir(&options.dir)?;
    // Before `prepare`, which writes the node configs: a bad profile must
    // leave DIR as it was.
    let regions: Vec<&str> = wan::REGIONS.to_vec();
    let wan = Wan::new(options.wan, &regions).map_err(UpError::Usage)?;
    let (plan, fresh) = prepare(&dir, &options)?;
    let control_token = secrets::ensure_control_token(&dir)?;
    let credentials = admin_credentials(&dir, &plan)?;
    let cluster_path = dir.join("cluster.json");
    let _ = std::fs::remove_file(&cluster_path);
    let (entries, endpoints) = endpoints(&plan, options.architecture)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    for proxy in proxies(&plan)?.into_iter().chain(entries) {
        let listener = tokio::net::TcpListener::bind(proxy.listen)
            .await
            .map_err(UpError::io(format!("link emulator on {}", proxy.listen)))?;
        let link: Arc<Link> = wan
            .link(&proxy.link.0, &proxy.link.1)
            .expect("a link between two known regions");
        tokio::spawn(wan::serve_proxy(listener, proxy.target, link, stop_rx.clone()));
    }

    let Some(nodes) = start_nodes(
        &options.exe,
        &dir,
        &plan,
        CLUSTER_READY_DEADLINE,
        &mut signals,
        "cluster",
    )
    .await?
    else {
        return Ok(());
    };

    let home = nodes
        .iter()
        .find(|n| n.config.location() == HOME_REGION)
        .map(|n| n.config.grpc_advertised());
    if fresh && options.demo {
        match &home {
            Some(addr) => match seed_demo(addr, &credentials).await {
                Ok(()) => println!(
                    "seeded the demo catalog: {}",
                    DEMO_CATALOG
                        .iter()
                        .map(|(s, n)| format!("{s} x{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(e) => eprintln!("warning: seeding the demo catalog failed: {e}"),
            },
            None => eprintln!("warning: no {HOME_REGION} node to seed the demo catalog through"),
        }
    } else if !options.demo {
        println!("no demo catalog (--no-demo): add stock with `reservoir stock`");
    }

    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(UpError::io("binding the control API"))?;
    let control = control_listener
        .local_addr()
        .map_err(UpError::io("control API address"))?;
    let cluster = Arc::new(Cluster {
        architecture: options.architecture,
        wan,
        nodes: Mutex::new(nodes),
        endpoints,
        exe: options.exe.clone(),
        dir: dir.clone(),
        control,
        control_token,
        admin: credentials,
    });
    write_cluster_file(&cluster).await?;
    print_endpoints(&cluster, &options).await;

    let app = control_routes(cluster.clone());
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(async move {
        axum::serve(control_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let name = supervise(&cluster, &mut signals, home).await;
    eprintln!("{name}: stopping the cluster");
    let _ = stop_tx.send(true);
    let _ = api.await;
    let mut nodes = cluster.nodes.lock().await;
    stop_all(&mut nodes, crate::up::STOP_GRACE).await;
    Ok(())
}

/// How `up` itself calls the cluster (to seed the demo catalog): as the
/// admin role, trusting DIR's CA, unless the nodes run insecure.
fn admin_credentials(dir: &Path, plan: &[PlannedNode]) -> Result<Credentials, UpError> {
    if plan.iter().all(|p| p.config.insecure) {
        return Ok(Credentials::plaintext());
    }
    let (tls, keys) = secrets::cluster_trust();
    let key_file = dir.join(&keys[Role::Admin.name()]);
    let key = reservoir_client::credentials::read_key(&key_file).map_err(UpError::Usage)?;
    Credentials::new(Some(&dir.join(tls.ca_file)), Some(key)).map_err(UpError::Usage)
}

/// The node configs: those in DIR, unchanged, or fresh ones (then `true`).
fn prepare(dir: &Path, options: &ClusterOptions) -> Result<(Vec<PlannedNode>, bool), UpError> {
    let existing = existing_node_ids(dir).map_err(UpError::io(format!("reading {}", dir.display())))?;
    if !existing.is_empty() {
        let mut plan = Vec::new();
        for id in existing {
            let path = config_path(dir, id);
            let config = NodeConfig::load(&path).map_err(UpError::Config)?;
            plan.push(PlannedNode {
                config_path: path,
                config,
            });
        }
        let found = architecture_of(&plan);
        if found != Some(options.architecture) {
            let message = match found {
                Some(Architecture::SingleWriter) => format!(
                    "{} holds one us-east region (single-writer, or `up --standalone`): run \
                     `up --architecture single-writer` or `up --standalone` on it, or use another --dir",
                    dir.display()
                ),
                Some(a) => format!(
                    "{} holds a {} cluster: run `up --architecture {}` on it, or use another --dir",
                    dir.display(),
                    a.name(),
                    a.name()
                ),
                None => format!(
                    "{} holds node configs of no known architecture; use another --dir",
                    dir.display()
                ),
            };
            return Err(UpError::Usage(message));
        }
        return Ok((plan, false));
    }
    let architecture = options.architecture;
    let n = options
        .nodes_per_region
        .unwrap_or_else(|| architecture.nodes_per_region_default());
    if architecture == Architecture::GlobalConsensus && n != 1 {
        return Err(UpError::Usage(format!(
            "--architecture global-consensus has one voter per region: --nodes-per-region must be 1, got {n}"
        )));
    }
    if !(1..=crate::server::config::PEERS_MAX as u64).contains(&n) {
        return Err(UpError::Usage(format!(
            "--nodes-per-region must be 1-{}, got {n}",
            crate::server::config::PEERS_MAX
        )));
    }
    let policy = RebalanceConfig {
        policy: options.policy,
        ..RebalanceConfig::default()
    };
    let mut raft = match architecture {
        Architecture::GlobalConsensus => global_raft_tuning(),
        _ => RaftTuning::default(),
    };
    if let Some(max) = options.proposal_queue_max {
        raft.proposal_queue_max = max;
    }
    let layout = Layout::new(architecture, n)?;
    let keys = if options.insecure {
        None
    } else {
        let group_of = |region: &str| match architecture {
            Architecture::GlobalConsensus => GLOBAL_GROUP.to_string(),
            _ => region.to_string(),
        };
        let nodes: Vec<secrets::NodeCert> = layout
            .nodes
            .iter()
            .flat_map(|(region, list)| {
                list.iter().map(move |n| secrets::NodeCert {
                    id: n.id,
                    region: group_of(region),
                    hosts: Vec::new(),
                })
            })
            .collect();
        Some(secrets::make(dir, secrets::UP_CA_NAME, &nodes)?.api_keys)
    };
    let configs = match architecture {
        Architecture::Tokens => layout.tokens(dir, &raft, &policy, keys.as_deref()),
        Architecture::SingleWriter => layout.single_writer(dir, &raft, keys.as_deref()),
        Architecture::GlobalConsensus => layout.global(dir, &raft, keys.as_deref()),
    };
    let mut plan = Vec::new();
    for config in configs {
        let id = config.node_id;
        config
            .validate()
            .map_err(|(field, message)| UpError::Usage(format!("node {id}: {field}: {message}")))?;
        let planned = PlannedNode {
            config_path: config_path(dir, id),
            config,
        };
        let text = toml::to_string(&planned.config).expect("a NodeConfig always serializes to TOML");
        write_atomically(&planned.config_path, text.as_bytes())
            .map_err(UpError::io(format!("writing {}", planned.config_path.display())))?;
        plan.push(planned);
    }
    Ok((plan, true))
}

/// The architecture a DIR's configs were written for, if any: a ledger
/// means tokens, a `location` means global-consensus, and a lone standalone
/// us-east group single-writer.
fn architecture_of(plan: &[PlannedNode]) -> Option<Architecture> {
    let all = |f: &dyn Fn(&NodeConfig) -> bool| plan.iter().all(|p| f(&p.config));
    if all(&|c| !c.standalone) {
        Some(Architecture::Tokens)
    } else if all(&|c| c.standalone && c.location.is_some() && c.region == GLOBAL_GROUP) {
        Some(Architecture::GlobalConsensus)
    } else if all(&|c| c.standalone && c.location.is_none() && c.region == HOME_REGION) {
        Some(Architecture::SingleWriter)
    } else {
        None
    }
}

/// Node ids, ports and link-emulator ports of a fresh cluster: nodes
/// `1..` in region order, three ports each.
struct Layout {
    /// Per region: its nodes' ids and addresses.
    nodes: BTreeMap<&'static str, Vec<NodeAddrs>>,
    /// The address region `from` uses for node `id` of another region.
    via: BTreeMap<(&'static str, u64), SocketAddr>,
}

/// A node's id and listen addresses.
#[derive(Clone, Copy, Debug)]
struct NodeAddrs {
    id: u64,
    grpc: SocketAddr,
    peer: SocketAddr,
    http: SocketAddr,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Layout {
    fn new(architecture: Architecture, n: u64) -> Result<Layout, UpError> {
        let regions = wan::REGIONS;
        let hosting: Vec<&'static str> = match architecture {
            Architecture::SingleWriter => vec![HOME_REGION],
            _ => regions.to_vec(),
        };
        let total = hosting.len() * n as usize;
        // Three ports per node, plus (except single-writer, whose clients'
        // links are set up per run) one link emulator per (region, node of
        // another region), in front of that node's peer listener.
        let proxies = match architecture {
            Architecture::SingleWriter => 0,
            _ => regions.len() * (regions.len() - 1) * n as usize,
        };
        let ports = free_ports(crate::up::PORTS_PER_NODE * total + proxies)
            .map_err(UpError::io("finding free ports"))?;
        let mut next_port = ports.into_iter().map(loopback);
        let mut next = move || next_port.next().expect("enough ports");
        let mut nodes: BTreeMap<&'static str, Vec<NodeAddrs>> = BTreeMap::new();
        let mut id = 0;
        for region in &hosting {
            for _ in 0..n {
                id += 1;
                let (grpc, peer, http) = (next(), next(), next());
                nodes
                    .entry(region)
                    .or_default()
                    .push(NodeAddrs { id, grpc, peer, http });
            }
        }
        let mut via = BTreeMap::new();
        if proxies > 0 {
            for from in regions {
                for (to, members) in &nodes {
                    if *to != from {
                        for node in members {
                            via.insert((from, node.id), next());
                        }
                    }
                }
            }
        }
        Ok(Layout { nodes, via })
    }

    /// Region `from`'s way to every node of region `other`.
    fn reach(&self, from: &'static str, other: &str) -> Vec<Peer> {
        self.nodes[other]
            .iter()
            .map(|node| Peer {
                id: node.id,
                peer: self.via[&(from, node.id)].into(),
            })
            .collect()
    }

    fn local(&self, region: &str) -> Vec<Peer> {
        self.nodes[region]
            .iter()
            .map(|node| Peer {
                id: node.id,
                peer: node.peer.into(),
            })
            .collect()
    }

    /// A standalone node's config with no peers yet; callers fill in the
    /// rest. With `api_keys`, TLS from DIR's development CA and those keys;
    /// without, insecure.
    fn config(
        dir: &Path,
        node: NodeAddrs,
        region: &str,
        raft: &RaftTuning,
        api_keys: Option<&[ApiKey]>,
    ) -> NodeConfig {
        let id = node.id;
        NodeConfig {
            node_id: id,
            region: region.to_string(),
            location: None,
            grpc_addr: node.grpc,
            grpc_advertise: None,
            peer_addr: node.peer,
            peer_advertise: None,
            http_addr: node.http,
            data_dir: dir.join(format!("node-{id}")).join("data"),
            standalone: true,
            join: false,
            peers: Vec::new(),
            raft: raft.clone(),
            ledger_peers: Vec::new(),
            ledger_nodes: Vec::new(),
            regions: Vec::new(),
            rebalance: RebalanceConfig::default(),
            retention: Default::default(),
            insecure: api_keys.is_none(),
            tls: api_keys.is_some().then(|| secrets::tls_files(dir, id)),
            api_keys: api_keys.map(<[ApiKey]>::to_vec).unwrap_or_default(),
            // Nothing balances load in front of a local cluster: stop at once.
            drain_ms: 0,
            log: Default::default(),
            metrics: Default::default(),
        }
    }

    /// A region group per region, the ledger on the us-east nodes.
    fn tokens(
        &self,
        dir: &Path,
        raft: &RaftTuning,
        policy: &RebalanceConfig,
        keys: Option<&[ApiKey]>,
    ) -> Vec<NodeConfig> {
        let mut out = Vec::new();
        for region in wan::REGIONS {
            let peers = self.local(region);
            for node in &self.nodes[region] {
                let mut config = Layout::config(dir, *node, region, raft, keys);
                config.standalone = false;
                config.peers = peers.clone();
                config.ledger_peers = if region == HOME_REGION {
                    peers.clone()
                } else {
                    Vec::new()
                };
                config.ledger_nodes = if region == HOME_REGION {
                    peers.clone()
                } else {
                    self.reach(region, HOME_REGION)
                };
                config.regions = wan::REGIONS
                    .iter()
                    .filter(|r| **r != region)
                    .map(|r| RegionPeers {
                        name: r.to_string(),
                        nodes: self.reach(region, r),
                    })
                    .collect();
                config.rebalance = policy.clone();
                out.push(config);
            }
        }
        out
    }

    /// One standalone us-east group.
    fn single_writer(&self, dir: &Path, raft: &RaftTuning, keys: Option<&[ApiKey]>) -> Vec<NodeConfig> {
        let peers = self.local(HOME_REGION);
        self.nodes[HOME_REGION]
            .iter()
            .map(|node| {
                let mut config = Layout::config(dir, *node, HOME_REGION, raft, keys);
                config.peers = peers.clone();
                config
            })
            .collect()
    }

    /// One standalone `global` group, a voter per region; each voter
    /// reaches the others through the WAN links.
    fn global(&self, dir: &Path, raft: &RaftTuning, keys: Option<&[ApiKey]>) -> Vec<NodeConfig> {
        let mut out = Vec::new();
        for region in wan::REGIONS {
            for node in &self.nodes[region] {
                let mut config = Layout::config(dir, *node, GLOBAL_GROUP, raft, keys);
                config.location = Some(region.to_string());
                config.peers = wan::REGIONS
                    .iter()
                    .flat_map(|r| {
                        if *r == region {
                            self.local(r)
                        } else {
                            self.reach(region, r)
                        }
                    })
                    .collect();
                out.push(config);
            }
        }
        out
    }
}

/// Per region, where its clients connect.
type Endpoints = BTreeMap<String, Vec<ClusterEndpoint>>;

/// Where a client in each region connects, and the link emulators that
/// needs beyond those of the configs: a region's own nodes; for
/// single-writer, the other regions' clients reach the us-east nodes
/// through fresh link emulators (new ports on every run).
fn endpoints(plan: &[PlannedNode], architecture: Architecture) -> Result<(Vec<Proxy>, Endpoints), UpError> {
    let mut out: BTreeMap<String, Vec<ClusterEndpoint>> = BTreeMap::new();
    for p in plan {
        out.entry(p.config.location().to_string())
            .or_default()
            .push(ClusterEndpoint {
                id: p.config.node_id,
                grpc: p.config.grpc_advertised(),
            });
    }
    let mut entries = Vec::new();
    if architecture == Architecture::SingleWriter {
        let remote: Vec<&str> = wan::REGIONS.into_iter().filter(|r| *r != HOME_REGION).collect();
        let ports = free_ports(remote.len() * plan.len()).map_err(UpError::io("finding free ports"))?;
        let mut ports = ports.into_iter().map(loopback);
        for region in remote {
            for p in plan {
                let listen = ports.next().expect("enough ports");
                entries.push(Proxy {
                    listen,
                    target: p.config.grpc_addr,
                    link: (region.to_string(), HOME_REGION.to_string()),
                });
                out.entry(region.to_string()).or_default().push(ClusterEndpoint {
                    id: p.config.node_id,
                    grpc: listen.into(),
                });
            }
        }
    }
    Ok((entries, out))
}

/// The link emulators the configs call for: every address a node uses for
/// a node elsewhere (another region's, the ledger's, a global voter in
/// another region) is a proxy to that node's real peer address. Those are
/// loopback IP literals in the configs `up` writes; a name there (a config
/// edited by hand) is refused, since no emulator can listen on it.
fn proxies(plan: &[PlannedNode]) -> Result<Vec<Proxy>, UpError> {
    let real: BTreeMap<u64, (&str, HostPort)> = plan
        .iter()
        .map(|p| {
            (
                p.config.node_id,
                (p.config.location(), p.config.peer_advertised()),
            )
        })
        .collect();
    let mut out: BTreeMap<SocketAddr, Proxy> = BTreeMap::new();
    for p in plan {
        let from = p.config.location();
        let remote = p
            .config
            .regions
            .iter()
            .flat_map(|r| r.nodes.iter())
            .chain(p.config.ledger_nodes.iter())
            .chain(p.config.peers.iter());
        for peer in remote {
            let Some((to, target)) = real.get(&peer.id) else {
                continue;
            };
            if *to == from || peer.peer == *target {
                continue;
            }
            let ip_literal = |addr: &HostPort| {
                addr.socket_addr().ok_or_else(|| {
                    UpError::Usage(format!(
                        "{}: node {} reaches node {} at {addr}, a name: `up` emulates links only between IP addresses",
                        p.config_path.display(),
                        p.config.node_id,
                        peer.id
                    ))
                })
            };
            let listen = ip_literal(&peer.peer)?;
            let target = ip_literal(target)?;
            out.entry(listen).or_insert(Proxy {
                listen,
                target,
                link: (from.to_string(), to.to_string()),
            });
        }
    }
    Ok(out.into_values().collect())
}

/// Adds the demo catalog through a home-region node (its Admin forwards to
/// the ledger), retrying while the ledger elects its first leader.
async fn seed_demo(addr: &HostPort, credentials: &Credentials) -> Result<(), String> {
    use reservoir_proto::v1::AdjustStockRequest;
    use reservoir_proto::v1::admin_client::AdminClient;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut client = AdminClient::new(credentials.channel(&addr.to_string())?);
    for (sku, units) in DEMO_CATALOG {
        let request = AdjustStockRequest {
            request_id: format!("demo-seed-{sku}"),
            sku: sku.to_string(),
            delta: units,
        };
        loop {
            match client.adjust_stock(request.clone()).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => return Err(format!("{sku}: {}", s.message())),
            }
        }
    }
    Ok(())
}

async fn write_cluster_file(cluster: &Cluster) -> Result<(), UpError> {
    let nodes = cluster.nodes.lock().await;
    let (tls, credentials) = crate::up::trust_of(nodes.iter().map(|n| &n.config));
    let file = ClusterFile {
        architecture: Some(cluster.architecture.name().to_string()),
        endpoints: Some(cluster.endpoints.clone()),
        nodes: nodes
            .iter()
            .map(|n| ClusterNode {
                region: n.config.location().to_string(),
                ..crate::up::cluster_node(n)
            })
            .collect(),
        tls,
        credentials,
        control_token_file: Some(PathBuf::from(secrets::CONTROL_TOKEN_FILE)),
        control: Some(cluster.control.to_string()),
        ledger: (cluster.architecture == Architecture::Tokens).then(|| LedgerInfo {
            region: HOME_REGION.to_string(),
            node_ids: nodes
                .iter()
                .filter(|n| n.config.hosts_ledger())
                .map(|n| n.id)
                .collect(),
        }),
    };
    let mut json = serde_json::to_vec_pretty(&file).expect("a ClusterFile always serializes");
    json.push(b'\n');
    let path = cluster.dir.join("cluster.json");
    write_atomically(&path, &json).map_err(UpError::io(format!("writing {}", path.display())))
}

async fn print_endpoints(cluster: &Cluster, options: &ClusterOptions) {
    let nodes = cluster.nodes.lock().await;
    let mut rows = vec![
        ["NODE", "REGION", "PID", "GRPC", "HTTP", "ROLE"]
            .map(String::from)
            .to_vec(),
    ];
    for n in nodes.iter() {
        let role = match cluster.architecture {
            Architecture::Tokens if n.config.hosts_ledger() => "region + ledger",
            Architecture::Tokens => "region",
            Architecture::SingleWriter => "single writer",
            Architecture::GlobalConsensus => "global voter",
        };
        rows.push(vec![
            n.id.to_string(),
            n.config.location().to_string(),
            n.pid.to_string(),
            n.config.grpc_advertised().to_string(),
            n.config.http_advertised().to_string(),
            role.into(),
        ]);
    }
    println!(
        "cluster is ready: architecture {}, {} nodes, WAN {}; {}",
        cluster.architecture.name(),
        nodes.len(),
        options.wan,
        cluster.dir.join("cluster.json").display()
    );
    print!("{}", reservoir_client::text::table(&rows, ""));
    if cluster.architecture == Architecture::SingleWriter {
        for (region, list) in cluster.endpoints.iter().filter(|(r, _)| *r != HOME_REGION) {
            let addrs: Vec<String> = list.iter().map(|e| e.grpc.to_string()).collect();
            println!(
                "{region} clients reach the us-east nodes through the WAN at {}",
                addrs.join(" ")
            );
        }
    }
    println!(
        "control API: http://{} (GET /links, POST /links/partition, /links/heal, /nodes/ID/kill, /nodes/ID/restart)",
        cluster.control
    );
    println!("Ctrl-C stops the cluster.");
}

/// Reports children that exit, prints a one-line status now and then, and
/// returns the name of the signal that asked `up` to stop.
async fn supervise(cluster: &Cluster, signals: &mut ShutdownSignals, home: Option<HostPort>) -> &'static str {
    let mut tick = tokio::time::interval(crate::up::CHILD_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            name = signals.recv() => return name,
            _ = tick.tick() => {
                let mut nodes = cluster.nodes.lock().await;
                for node in nodes.iter_mut() {
                    if let Some(status) = reap(node) {
                        eprintln!("node {} (pid {}) exited: {status}", node.id, node.pid);
                    }
                }
            }
            _ = status.tick() => {
                if let Some(addr) = &home {
                    println!("{}", status_line(addr, &cluster.admin, &cluster.wan).await);
                }
            }
        }
    }
}

/// One line: leaders, ledger leader, tokens per SKU, cut links.
async fn status_line(addr: &HostPort, admin: &Credentials, wan: &Wan) -> String {
    use reservoir_proto::v1::GetStatusRequest;
    use reservoir_proto::v1::admin_client::AdminClient;
    let cut: Vec<String> = wan
        .links()
        .filter(|l| l.is_cut())
        .map(|l| format!("{}-{}", l.regions.0, l.regions.1))
        .collect();
    let fetch = async {
        let mut c = AdminClient::new(admin.channel(&addr.to_string())?);
        c.get_status(GetStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), fetch).await {
        Ok(Ok(s)) => {
            let leaders: Vec<String> = s
                .regions
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}",
                        r.region,
                        if r.healthy {
                            r.leader_id.to_string()
                        } else {
                            "-".into()
                        }
                    )
                })
                .collect();
            let mut skus: Vec<String> = s
                .skus
                .iter()
                .take(STATUS_SKUS_MAX)
                .map(|k| {
                    let by_region: Vec<String> = k.regions.iter().map(|r| r.available.to_string()).collect();
                    format!("{} pool {} avail [{}]", k.sku, k.pool, by_region.join("/"))
                })
                .collect();
            if s.skus.len() > STATUS_SKUS_MAX {
                skus.push(format!("{} more SKUs", s.skus.len() - STATUS_SKUS_MAX));
            }
            format!(
                "status: leaders {} ledger {} | {} | cut links: {}",
                leaders.join(" "),
                s.ledger_leader_id,
                skus.join("; "),
                if cut.is_empty() {
                    "none".into()
                } else {
                    cut.join(", ")
                }
            )
        }
        Ok(Err(e)) => format!("status: unavailable ({e})"),
        Err(_) => "status: no answer within 2 s".into(),
    }
}

// ----- the control API -----

/// The control API. Every request must carry the token kept in
/// `DIR/control.token` (`authorization: Bearer ...`), and every POST the
/// JSON content type, so a web page in a local browser (which can send
/// neither without the page being allowed to by CORS) cannot drive it.
fn control_routes(cluster: Arc<Cluster>) -> axum::Router {
    axum::Router::new()
        .route(control_api::LINKS, get(links))
        .route(control_api::PARTITION, post(partition))
        .route(control_api::HEAL, post(heal))
        .route(control_api::KILL, post(kill))
        .route(control_api::RESTART, post(restart))
        .layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            control_guard,
        ))
        .with_state(cluster)
}

/// Refuses a control request without the token (401) or, for a POST,
/// without `content-type: application/json` (415).
async fn control_guard(
    State(c): State<Arc<Cluster>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let sent = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(sent.as_bytes(), c.control_token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            format!(
                "the control API needs `authorization: Bearer <token>`; the token is in {}\n",
                c.dir.join(secrets::CONTROL_TOKEN_FILE).display()
            ),
        )
            .into_response();
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if request.method() == axum::http::Method::POST && !json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a control API POST must be `content-type: application/json`\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn links_json(wan: &Wan) -> Vec<LinkState> {
    wan.links()
        .map(|l| LinkState {
            a: l.regions.0.clone(),
            b: l.regions.1.clone(),
            rtt_ms: l.rtt_ms,
            cut: l.is_cut(),
        })
        .collect()
}

async fn links(State(c): State<Arc<Cluster>>) -> Json<Vec<LinkState>> {
    Json(links_json(&c.wan))
}

async fn partition(State(c): State<Arc<Cluster>>, Json(req): Json<PartitionRequest>) -> impl IntoResponse {
    match (req.region, req.a, req.b) {
        (Some(region), None, None) => {
            if c.wan.isolate(&region) == 0 {
                return (StatusCode::BAD_REQUEST, format!("unknown region {region:?}\n")).into_response();
            }
        }
        (None, Some(a), Some(b)) => match c.wan.link(&a, &b) {
            Some(link) => link.cut(),
            None => return (StatusCode::BAD_REQUEST, format!("no link {a:?}-{b:?}\n")).into_response(),
        },
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "body must be {\"region\": R} or {\"a\": R1, \"b\": R2}\n",
            )
                .into_response();
        }
    }
    Json(links_json(&c.wan)).into_response()
}

async fn heal(State(c): State<Arc<Cluster>>) -> Json<Vec<LinkState>> {
    c.wan.heal_all();
    Json(links_json(&c.wan))
}

async fn kill(State(c): State<Arc<Cluster>>, UrlPath(id): UrlPath<u64>) -> impl IntoResponse {
    let mut nodes = c.nodes.lock().await;
    let Some(node) = nodes.iter_mut().find(|n| n.id == id) else {
        return (StatusCode::NOT_FOUND, format!("no node {id}\n"));
    };
    if reap(node).is_some() || node.exited.is_some() {
        return (StatusCode::CONFLICT, format!("node {id} is not running\n"));
    }
    send_signal(node, libc::SIGKILL);
    let status = node.child.wait().await;
    if let Ok(s) = status {
        node.exited = Some(s);
    }
    eprintln!("control: killed node {id} (pid {})", node.pid);
    (StatusCode::OK, format!("killed node {id}\n"))
}

async fn restart(State(c): State<Arc<Cluster>>, UrlPath(id): UrlPath<u64>) -> impl IntoResponse {
    let respawned = {
        let mut nodes = c.nodes.lock().await;
        let Some(index) = nodes.iter().position(|n| n.id == id) else {
            return (StatusCode::NOT_FOUND, format!("no node {id}\n"));
        };
        let _ = reap(&mut nodes[index]);
        if nodes[index].exited.is_none() {
            return (
                StatusCode::CONFLICT,
                format!("node {id} is running; kill it first\n"),
            );
        }
        let planned = PlannedNode {
            config_path: config_path(&c.dir, id),
            config: nodes[index].config.clone(),
        };
        match spawn_node(&c.exe, &c.dir, &planned) {
            Ok(node) => {
                let pid = node.pid;
                nodes[index] = node;
                pid
            }
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("restart failed: {e}\n"),
                );
            }
        }
    };
    if let Err(e) = write_cluster_file(&c).await {
        eprintln!("warning: cluster.json not updated: {e}");
    }
    eprintln!("control: restarted node {id} (pid {respawned})");
    (StatusCode::OK, format!("restarted node {id} (pid {respawned})\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The name `cluster.json` and the messages use is the one the command
    /// line parses.
    #[test]
    fn architecture_names_parse_back() {
        for a in Architecture::value_variants() {
            assert_eq!(Architecture::from_str(a.name(), false), Ok(*a));
        }
    }
}
