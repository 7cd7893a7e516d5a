//! The simulated cluster: nine nodes in three regions (three per region),
//! the ledger on the home region's nodes, each node built from the real
//! parts as `reservoir node` builds them (its region group and, on the home
//! region, the ledger group with the `LedgerHost` that rebalances,
//! reconciles and audits; the `Node` the services share; the expiry and
//! gossip loops; the Inventory and Control services), over a simulated disk
//! ([`MemoryDisk`]), network ([`crate::net`]) and clock ([`SimClock`]).
//!
//! What is not the real node: no listeners (clients and peers call the
//! services in process), no TLS and no API keys (the node runs `insecure`),
//! no metrics exporter, snapshots in files under a directory of tmpfs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use reservoir_client::Channels;
use reservoir_node::server::clock::Clock;
use reservoir_node::server::config::NodeConfig;
use reservoir_node::server::control::ControlClient;
use reservoir_node::server::ledger::LedgerHost;
use reservoir_node::server::node::Node;
use reservoir_node::server::security::PeerPolicy;
use reservoir_node::server::service::{ControlService, InventoryService, Plane};
use reservoir_node::server::{
    LEDGER_GROUP, control_peers, expire_loop, gossip_loop, ledger_group_options, region_group_options,
};
use reservoir_raft::store::memory::MemoryDisk;
use reservoir_raft::{Group, NodeId, Router};
use reservoir_tokens::{LedgerState, RegionState};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::net::{Net, SimControl, SimWire};
use crate::rng::Rng;
use crate::trace::Trace;

/// The regions, the first one home to the ledger.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Nodes per region.
pub const NODES_PER_REGION: u64 = 3;
/// The wall clock every node's starts at (2026-11-27, Black Friday).
pub const WALL_START_MS: u64 = 1_795_737_600_000;

/// Every node id, in order.
pub fn node_ids() -> Vec<NodeId> {
    (1..=REGIONS.len() as u64 * NODES_PER_REGION).collect()
}

/// The region of node `id`.
pub fn region_of(id: NodeId) -> &'static str {
    REGIONS[((id - 1) / NODES_PER_REGION) as usize]
}

/// The nodes of region `region`.
pub fn nodes_of(region: &str) -> Vec<NodeId> {
    node_ids()
        .into_iter()
        .filter(|id| region_of(*id) == region)
        .collect()
}

/// The peer address of node `id` (a name only the simulated network knows).
pub fn address_of(id: NodeId) -> String {
    format!("n{id}.sim:7000")
}

/// One node's clock: simulated time plus an offset the seed may skew and
/// jump.
pub struct SimClock {
    start: Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    /// A clock that reads right.
    pub fn new(start: Instant) -> SimClock {
        SimClock {
            start,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Sets how far off the wall clock is (negative: behind).
    pub fn set_offset(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// How far off the wall clock is.
    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let wall = WALL_START_MS as i64 + self.monotonic_ms() as i64 + self.offset();
        wall.max(0) as u64
    }

    fn monotonic_ms(&self) -> u64 {
        Instant::now().duration_since(self.start).as_millis() as u64
    }
}

/// The handles of a node that is up that clients and checkers use.
#[derive(Clone)]
pub struct Handles {
    /// Its Inventory service on the peer plane (clients' calls arrive as
    /// forwarded calls: they are never forwarded again).
    pub inventory: Arc<InventoryService>,
    /// Its region group.
    pub region: Arc<Group<RegionState>>,
    /// Its ledger group, on the home region.
    pub ledger: Option<Arc<Group<LedgerState>>>,
    /// Its ledger host, on the home region.
    pub host: Option<Arc<LedgerHost>>,
}

/// The nodes that are up, shared with clients and checkers.
#[derive(Default)]
pub struct Directory {
    nodes: std::sync::Mutex<BTreeMap<NodeId, Handles>>,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Handles>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `id`'s handles, if it is up.
    pub fn get(&self, id: NodeId) -> Option<Handles> {
        self.lock().get(&id).cloned()
    }

    /// Every node that is up, in id order.
    pub fn all(&self) -> Vec<(NodeId, Handles)> {
        self.lock().iter().map(|(id, h)| (*id, h.clone())).collect()
    }

    /// The node that leads `group` (a region, or [`LEDGER_GROUP`]) by its
    /// own account, if one does (the lowest id if several believe so).
    pub fn leader_of(&self, group: &str) -> Option<NodeId> {
        self.lock().iter().find_map(|(id, h)| {
            let leads = if group == LEDGER_GROUP {
                h.ledger.as_ref().is_some_and(|g| g.is_leader())
            } else {
                region_of(*id) == group && h.region.is_leader()
            };
            leads.then_some(*id)
        })
    }
}

/// A node that is up: the parts its process would hold.
pub struct Running {
    /// What clients and checkers use.
    pub handles: Handles,
    /// What its services share.
    pub node: Arc<Node>,
    shutdown: watch::Sender<bool>,
}

/// One simulated node and what outlives its crashes.
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// Its disk.
    pub disk: MemoryDisk,
    /// Its clock.
    pub clock: Arc<SimClock>,
    /// Its snapshot directory.
    pub dir: PathBuf,
    /// Its current life (starts counted from 1).
    pub life: u64,
    /// Its parts while up.
    pub running: Option<Running>,
}

/// The Raft timing of simulated nodes: the defaults, with snapshots every
/// 64 entries so restarts and installs start from snapshots often.
pub const SNAPSHOT_LOGS: u64 = 64;

/// The config of node `id`, as `reservoir up` would write it (insecure).
pub fn node_config(id: NodeId, dir: &std::path::Path) -> NodeConfig {
    let region = region_of(id);
    let peer = |n: NodeId| format!("{{ id = {n}, peer = \"{}\" }}", address_of(n));
    let list = |nodes: Vec<NodeId>| nodes.into_iter().map(peer).collect::<Vec<_>>().join(", ");
    let home = REGIONS[0];
    let mut text = format!(
        "node_id = {id}\nregion = \"{region}\"\ngrpc_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\n\
         http_addr = \"127.0.0.1:3\"\ndata_dir = \"{}\"\ninsecure = true\npeers = [{}]\n",
        dir.display(),
        list(nodes_of(region)),
    );
    if region == home {
        text.push_str(&format!("ledger_peers = [{}]\n", list(nodes_of(home))));
    } else {
        text.push_str(&format!("ledger_nodes = [{}]\n", list(nodes_of(home))));
    }
    for other in REGIONS.iter().filter(|r| **r != region) {
        text.push_str(&format!(
            "[[regions]]\nname = \"{other}\"\nnodes = [{}]\n",
            list(nodes_of(other))
        ));
    }
    text.push_str(&format!(
        "[raft]\nsnapshot_logs = {SNAPSHOT_LOGS}\nsnapshot_logs_kept = 16\n"
    ));
    // Ended reservations are kept for the whole run, so every acknowledged
    // one can be found at the end.
    text.push_str("[retention]\nended_ms = 3600000\n");
    toml::from_str(&text).unwrap_or_else(|e| panic!("simulated node config: {e}\n{text}"))
}

/// The simulated cluster.
pub struct Cluster {
    /// Every node by id.
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// The network.
    pub net: Arc<Net>,
    /// Where the nodes' snapshot directories are (removed at the end).
    pub root: tempfile::TempDir,
    /// The generator for crash outcomes (torn writes).
    pub rng: Rng,
    /// The nodes that are up.
    pub directory: Arc<Directory>,
    /// The run's trace (starts and crashes are in it).
    pub trace: Trace,
}

impl Cluster {
    /// Nine nodes, none started, their snapshots under tmpfs when there is
    /// one (a snapshot is synced; on tmpfs that costs nothing).
    pub fn new(seed: u64, trace: Trace) -> Cluster {
        let start = Instant::now();
        let root = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::Builder::new()
                .prefix("reservoir-sim-")
                .tempdir_in("/dev/shm"),
            false => tempfile::Builder::new().prefix("reservoir-sim-").tempdir(),
        }
        .expect("a temporary directory for the simulation's snapshots");
        let region_of_node = node_ids()
            .into_iter()
            .map(|id| (id, region_of(id).to_string()))
            .collect();
        let node_at = node_ids().into_iter().map(|id| (address_of(id), id)).collect();
        let net = Net::new(region_of_node, node_at, Rng::new(seed, 1));
        let nodes = node_ids()
            .into_iter()
            .map(|id| {
                let dir = root.path().join(format!("node-{id}"));
                (
                    id,
                    SimNode {
                        id,
                        disk: MemoryDisk::new(),
                        clock: Arc::new(SimClock::new(start)),
                        dir,
                        life: 0,
                        running: None,
                    },
                )
            })
            .collect();
        Cluster {
            nodes,
            net,
            root,
            rng: Rng::new(seed, 2),
            directory: Arc::new(Directory::default()),
            trace,
        }
    }

    /// Starts node `id` on what its disk and snapshot directory hold.
    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let net = self.net.clone();
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        if node.running.is_some() {
            return Ok(());
        }
        node.life += 1;
        let config = node_config(id, &node.dir);
        let region = config.region.clone();
        let mut found = format!("{region}: {}", node.disk.summary(&region));
        if config.hosts_ledger() {
            found.push_str(&format!("; ledger: {}", node.disk.summary(LEDGER_GROUP)));
        }
        self.trace.event(
            node.clock.monotonic_ms(),
            format!("n{id} starts (life {}), its disk has {found}", node.life),
        );
        let snapshots = node.dir.join(reservoir_raft::store::SNAPSHOTS_DIR);
        let stores = node
            .disk
            .open_group(&region, RegionState::new(region.clone()), snapshots.join(&region))
            .map_err(|e| format!("node {id}: opening {region}: {e}"))?;
        if let Ok(Some(applied)) = stores.state_machine.reader().last_applied() {
            self.trace.event(
                node.clock.monotonic_ms(),
                format!("n{id}: {region} starts from its snapshot at {}", applied.index),
            );
        }
        let router = Router::new(id);
        let wire = Arc::new(SimWire {
            net: net.clone(),
            from: id,
        });
        let options = region_group_options(&config);
        let group = Arc::new(
            Group::start(options, stores, wire.clone(), &router)
                .await
                .map_err(|e| format!("node {id}: starting {region}: {e}"))?,
        );
        let (regions, ledger_nodes) = control_peers(&config);
        let control = Arc::new(ControlClient::with_transport(
            regions,
            ledger_nodes,
            Arc::new(SimControl {
                net: net.clone(),
                from: id,
            }),
        ));
        let clock: Arc<dyn Clock> = node.clock.clone();
        let (ledger, host) = if config.hosts_ledger() {
            let stores = node
                .disk
                .open_group(LEDGER_GROUP, LedgerState::new(), snapshots.join(LEDGER_GROUP))
                .map_err(|e| format!("node {id}: opening the ledger: {e}"))?;
            let ledger = Arc::new(
                Group::start(ledger_group_options(&config), stores, wire, &router)
                    .await
                    .map_err(|e| format!("node {id}: starting the ledger: {e}"))?,
            );
            let host = Arc::new(LedgerHost::new(
                ledger.clone(),
                control.clone(),
                clock.clone(),
                config.rebalance.clone(),
            )?);
            (Some(ledger), Some(host))
        } else {
            (None, None)
        };
        let node_parts = Arc::new(Node::new(
            config,
            group.clone(),
            clock,
            Arc::new(Channels::new()),
            control,
            host.clone(),
            PeerPolicy::insecure(),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(stop_with(node_parts.observe_time(), shutdown_rx.clone()));
        tokio::spawn(expire_loop(node_parts.clone(), shutdown_rx.clone()));
        tokio::spawn(gossip_loop(node_parts.clone(), shutdown_rx.clone()));
        if let Some(host) = &host {
            tokio::spawn(host.clone().run(shutdown_rx.clone()));
        }
        net.up(id, router, Arc::new(ControlService::new(node_parts.clone())));
        let handles = Handles {
            inventory: Arc::new(InventoryService::new(node_parts.clone(), Plane::Peer)),
            region: group,
            ledger,
            host,
        };
        self.directory.lock().insert(id, handles.clone());
        node.running = Some(Running {
            handles,
            node: node_parts,
            shutdown,
        });
        Ok(())
    }

    /// Crashes node `id`: off the network at once, its disk keeps what was
    /// flushed (and, with torn writes, a prefix of the rest), its groups
    /// stop. False if it was not up.
    pub async fn crash(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(running) = node.running.take() else {
            return false;
        };
        self.net.down(id);
        self.directory.lock().remove(&id);
        let rng = &mut self.rng;
        let mut kept = (0, 0);
        node.disk.crash(|n| {
            kept = (rng.below(n as u64 + 1) as usize, n);
            kept.0
        });
        let torn = node.disk.faults().torn_writes;
        self.trace.event(
            node.clock.monotonic_ms(),
            format!(
                "n{id} crashes{}",
                if torn {
                    format!(", keeping {} of {} unflushed writes", kept.0, kept.1)
                } else {
                    String::new()
                }
            ),
        );
        let _ = running.shutdown.send(true);
        running.handles.region.shutdown().await;
        if let Some(ledger) = &running.handles.ledger {
            ledger.shutdown().await;
        }
        drop(running.node);
        true
    }

    /// Ids of the nodes that are up.
    pub fn up(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }
}

/// Runs `f` until `shutdown` says stop.
async fn stop_with(f: impl std::future::Future<Output = ()>, mut shutdown: watch::Receiver<bool>) {
    tokio::select! {
        _ = f => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}
