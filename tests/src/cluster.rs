//! The harness's one handle on what `reservoir up` runs for a test: a
//! standalone region (`up --standalone`) or the three-region cluster (`up`,
//! with its ledger, WAN link emulators and control API, in any of its
//! architectures). [`Cluster::start`] takes [`ClusterOptions`] saying which;
//! then one set of methods serves both: read `cluster.json`, connect
//! clients, kill and restart nodes, find leaders, read `/status`, add stock,
//! audit, stop, start again on the same directory. Cutting and healing
//! links, and the ledger, are the three-region cluster's only.
//!
//! `up` makes a secure cluster unless [`ClusterOptions::insecure`]: TLS
//! from a development CA in its directory and one API key per role. The
//! harness reads them through `cluster.json` ([`Cluster::credentials`]):
//! every Inventory call presents the `shop` key (reservations belong to the
//! principal that made them, so the same key reserves, confirms, releases
//! and reads), every Admin call the `admin` key; control-API calls carry
//! the token of `control_token_file`.
//!
//! Killed nodes stay down until [`Cluster::restart`]. With a control API
//! (three regions) a kill and a restart go through it and every node stays
//! `up`'s child; a standalone region has none, so the harness signals the
//! node itself and restarts it from its `cmd` in `cluster.json` as a child
//! of the test. [`Cluster::stop`] stops all of it and checks that no process
//! of the cluster is left, by pid and by command line.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Role, UpNode};
use reservoir_client::ClusterFile;
pub use reservoir_client::control_api::LinkState;
use reservoir_client::control_api::{self, PartitionRequest};
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use tonic::Status;

use crate::{
    CLUSTER_START_DEADLINE, CONTROL_TIMEOUT, CONVERGE_DEADLINE, ClientChannel, ClusterNode, Credentials,
    GONE_DEADLINE, GROUP_LEADER_DEADLINE, KEEP_ENV, LEADER_DEADLINE, LOG_TAIL_LINES, NODE_READY_DEADLINE,
    NodeStatus, POLL_INTERVAL, RETRY_DEADLINE, Rotation, STANDALONE_START_DEADLINE, STOP_DEADLINE,
    agreed_leader, alive, channel, http_get, http_get_authorized, http_post, log_tail, reservoir_exe, retry,
    signal, spawn_logged, stop_blocking, wait_child,
};

/// The roles `up` makes a key for, each named in `cluster.json`.
pub const ROLES: [&str; 3] = ["shop", "admin", "observer"];

/// The regions of the cluster, home region (the ledger's) first.
pub const REGIONS: [&str; 3] = reservoir_client::REGIONS;
/// The region that hosts the ledger, and the one a standalone `up` runs.
pub const HOME_REGION: &str = reservoir_client::HOME_REGION;

/// The link emulators' round trips (`up --wan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WanProfile {
    /// No added latency: fast tests.
    #[default]
    None,
    /// Public AWS inter-region round trips (70, 120 and 186 ms).
    Aws,
}

impl WanProfile {
    fn arg(self) -> &'static str {
        match self {
            WanProfile::None => "none",
            WanProfile::Aws => "aws",
        }
    }
}

/// How to start a cluster. The default is the smallest three-region
/// cluster: one node per region, no WAN latency, no demo catalog;
/// [`ClusterOptions::standalone`] is a standalone region of three nodes.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `up --standalone`: one region ([`HOME_REGION`]), no ledger, no link
    /// emulators, no control API. `architecture`, `wan`, `demo` and `policy`
    /// belong to the three-region cluster and must keep their defaults.
    pub standalone: bool,
    /// `up --architecture`: `tokens`, `single-writer` or `global-consensus`.
    pub architecture: &'static str,
    /// `up --nodes-per-region`, or for a standalone region `up --nodes`.
    pub nodes_per_region: u64,
    /// `up --wan`.
    pub wan: WanProfile,
    /// Seed the demo catalog (`up` without `--no-demo`).
    pub demo: bool,
    /// `up --policy`, if not the default.
    pub policy: Option<String>,
    /// `up --proposal-queue-max`: every node's proposal queue bound, if not
    /// the default.
    pub proposal_queue_max: Option<usize>,
    /// `up --insecure`: plaintext, no API keys (every caller is an admin).
    pub insecure: bool,
    /// `up --standalone --advertise-host HOST`: the nodes listen on every
    /// interface and are reached (by each other and by the harness) at
    /// `HOST:PORT`.
    pub advertise_host: Option<&'static str>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            standalone: false,
            architecture: "tokens",
            nodes_per_region: 1,
            wan: WanProfile::None,
            demo: false,
            policy: None,
            proposal_queue_max: None,
            insecure: false,
            advertise_host: None,
        }
    }
}

impl ClusterOptions {
    /// A standalone region of three nodes (`up --standalone`).
    pub fn standalone() -> ClusterOptions {
        ClusterOptions {
            standalone: true,
            nodes_per_region: 3,
            ..ClusterOptions::default()
        }
    }

    /// The `up` command these options ask for, on `dir`.
    fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new(reservoir_exe());
        command.arg("up").arg("--dir").arg(dir);
        if self.standalone {
            let defaults = ClusterOptions::default();
            assert!(
                self.architecture == defaults.architecture
                    && self.wan == defaults.wan
                    && self.demo == defaults.demo
                    && self.policy.is_none(),
                "a standalone region has no architecture, WAN, demo or policy to choose: {self:?}"
            );
            command
                .arg("--standalone")
                .arg("--nodes")
                .arg(self.nodes_per_region.to_string());
        } else {
            command
                .arg("--architecture")
                .arg(self.architecture)
                .arg("--nodes-per-region")
                .arg(self.nodes_per_region.to_string())
                .arg("--wan")
                .arg(self.wan.arg());
            if !self.demo {
                command.arg("--no-demo");
            }
            if let Some(policy) = &self.policy {
                command.arg("--policy").arg(policy);
            }
        }
        if let Some(max) = self.proposal_queue_max {
            command.arg("--proposal-queue-max").arg(max.to_string());
        }
        if self.insecure {
            command.arg("--insecure");
        }
        if let Some(host) = self.advertise_host {
            assert!(self.standalone, "--advertise-host goes with a standalone region");
            command.arg("--advertise-host").arg(host);
        }
        command
    }

    /// How long `up` has to write `cluster.json`.
    fn start_deadline(&self) -> Duration {
        if self.standalone {
            STANDALONE_START_DEADLINE
        } else {
            CLUSTER_START_DEADLINE
        }
    }

    /// How long a group has to agree on a leader.
    fn leader_deadline(&self) -> Duration {
        if self.standalone {
            LEADER_DEADLINE
        } else {
            GROUP_LEADER_DEADLINE
        }
    }
}

/// A standalone region or a three-region cluster run by `reservoir up` in a
/// temporary directory. Nodes are named by id.
pub struct Cluster {
    /// The cluster directory; kept on disk when the test panics.
    dir: Option<tempfile::TempDir>,
    options: ClusterOptions,
    /// The running `up`, if any.
    up: Option<Child>,
    /// The current `cluster.json` (re-read after each start and control-API
    /// restart), with the pids of nodes restarted by hand replaced by theirs.
    file: ClusterFile,
    /// The control API (three regions only).
    control: Option<SocketAddr>,
    /// The control API's token (`control_token_file` of `cluster.json`).
    control_token: Option<String>,
    /// What every Inventory call presents: the `shop` key.
    shop: Credentials,
    /// What every Admin call presents: the `admin` key.
    admin: Credentials,
    /// Nodes restarted by hand (standalone only): they are the test's
    /// children, not `up`'s.
    restarted: BTreeMap<u64, Child>,
    /// Nodes killed and not restarted.
    down: BTreeSet<u64>,
    /// Makes every stock request id unique.
    stock_requests: AtomicU64,
}

impl Cluster {
    /// Starts `up` as `options` say on a fresh temporary directory and waits
    /// for its `cluster.json`.
    pub async fn start(options: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("reservoir-test-")
            .tempdir()
            .expect("a temporary directory");
        let mut cluster = Cluster {
            dir: Some(dir),
            options,
            up: None,
            file: ClusterFile {
                architecture: None,
                endpoints: None,
                nodes: Vec::new(),
                control: None,
                ledger: None,
                tls: None,
                credentials: BTreeMap::new(),
                control_token_file: None,
            },
            control: None,
            control_token: None,
            shop: Credentials::plaintext(),
            admin: Credentials::plaintext(),
            restarted: BTreeMap::new(),
            down: BTreeSet::new(),
            stock_requests: AtomicU64::new(0),
        };
        cluster.run_up().await;
        cluster
    }

    /// Spawns `up` on the directory, waits until it has written
    /// `cluster.json` (or panics with its log if it exits or the deadline
    /// passes), and checks that the file describes what was asked for.
    async fn run_up(&mut self) {
        let dir = self.dir().to_path_buf();
        let command = self.options.command(&dir);
        let started = Instant::now();
        let file = wait_cluster_file(&mut self.up, &dir, command, self.options.start_deadline()).await;
        self.control = if self.options.standalone {
            self.check_standalone(&file);
            None
        } else {
            Some(self.check_three_regions(&file))
        };
        for node in &file.nodes {
            let peer = node
                .peer
                .clone()
                .unwrap_or_else(|| panic!("cluster.json gives node {} no peer address", node.id));
            assert!(
                node.grpc.is_loopback() && peer.is_loopback() && node.http().is_loopback(),
                "{node:?}"
            );
            assert_ne!(
                node.grpc, peer,
                "the client and peer planes listen apart: {node:?}"
            );
        }
        self.check_trust(&file);
        let path = dir.join("cluster.json");
        self.shop = credentials_of(&file, &path, "shop");
        self.admin = credentials_of(&file, &path, "admin");
        self.control_token = file.control_token_file.as_ref().map(|token_file| {
            reservoir_client::credentials::read_key(&dir.join(token_file))
                .unwrap_or_else(|e| panic!("the control API's token: {e}"))
        });
        self.file = file;
        self.down.clear();
        eprintln!(
            "harness: {} nodes up after {:?} in {}",
            self.file.nodes.len(),
            started.elapsed(),
            self.dir().display()
        );
    }

    /// What `cluster.json` says about trust matches what was asked for: a
    /// CA and a key file per role, or (`insecure`) neither; a three-region
    /// cluster's control API has a token either way.
    fn check_trust(&self, file: &ClusterFile) {
        if self.options.insecure {
            assert!(
                file.tls.is_none() && file.credentials.is_empty(),
                "an insecure cluster.json names no CA and no keys: {file:?}"
            );
        } else {
            assert!(file.tls.is_some(), "a secure cluster.json names its CA: {file:?}");
            for role in ROLES {
                assert!(
                    file.credentials.contains_key(role),
                    "a secure cluster.json names a {role} key: {file:?}"
                );
            }
        }
        if !self.options.standalone {
            assert!(
                file.control_token_file.is_some(),
                "a three-region cluster.json names the control API's token: {file:?}"
            );
        }
    }

    /// A standalone `cluster.json`: the asked-for nodes, all in the home
    /// region, no control API, no ledger.
    fn check_standalone(&self, file: &ClusterFile) {
        assert_eq!(
            file.nodes.len() as u64,
            self.options.nodes_per_region,
            "nodes: {file:?}"
        );
        assert!(
            file.nodes.iter().all(|n| n.region == HOME_REGION),
            "a standalone region is {HOME_REGION}: {file:?}"
        );
        assert!(
            file.control.is_none() && file.ledger.is_none(),
            "a standalone region has no control API and no ledger: {file:?}"
        );
    }

    /// A three-region `cluster.json`: the architecture, the ledger where
    /// there is one, each region's nodes and endpoints. Returns the control
    /// API.
    fn check_three_regions(&self, file: &ClusterFile) -> SocketAddr {
        let text = file
            .control
            .as_deref()
            .expect("a three-region cluster.json names its control API");
        let control: SocketAddr = text.parse().expect("the control API is host:port");
        assert!(
            control.ip().is_loopback(),
            "the control API listens on loopback: {text}"
        );
        assert_eq!(
            file.architecture.as_deref(),
            Some(self.options.architecture),
            "{file:?}"
        );
        if self.options.architecture == "tokens" {
            let ledger = file
                .ledger
                .as_ref()
                .expect("a tokens cluster.json names the ledger's nodes");
            assert_eq!(ledger.region, HOME_REGION, "{ledger:?}");
        } else {
            assert!(file.ledger.is_none(), "no ledger without tokens: {file:?}");
        }
        let endpoints = file
            .endpoints
            .as_ref()
            .expect("a three-region cluster.json lists every region's endpoints");
        for region in REGIONS {
            let n = file.nodes.iter().filter(|n| n.region == region).count() as u64;
            let expected = match self.options.architecture {
                "single-writer" if region != HOME_REGION => 0,
                _ => self.options.nodes_per_region,
            };
            assert_eq!(n, expected, "nodes of {region}: {file:?}");
            assert!(
                endpoints.get(region).is_some_and(|e| !e.is_empty()),
                "endpoints of {region}: {file:?}"
            );
        }
        control
    }

    // ----- what it is made of -----

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the cluster")
            .path()
    }

    /// The current `cluster.json`.
    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// The control API's address (three regions only).
    pub fn control(&self) -> SocketAddr {
        self.control
            .unwrap_or_else(|| panic!("a standalone region has no control API"))
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<u64> {
        self.file.nodes.iter().map(|n| n.id).collect()
    }

    /// The ids of the nodes that are up (not killed by the test).
    pub fn live_ids(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// The ids of `region`'s nodes.
    pub fn ids_in(&self, region: &str) -> Vec<u64> {
        self.file
            .nodes
            .iter()
            .filter(|n| n.region == region)
            .map(|n| n.id)
            .collect()
    }

    /// The ids of `region`'s nodes that are up (not killed by the test).
    pub fn live_ids_in(&self, region: &str) -> Vec<u64> {
        self.ids_in(region)
            .into_iter()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// The nodes that host the ledger's voters (none without a ledger).
    pub fn ledger_ids(&self) -> Vec<u64> {
        self.file
            .ledger
            .as_ref()
            .map(|l| l.node_ids.clone())
            .unwrap_or_default()
    }

    /// A node's entry in `cluster.json` (its pid updated after a restart).
    pub fn node(&self, id: u64) -> &ClusterNode {
        self.file
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in {:?}", self.ids()))
    }

    /// Takes on a node the test started itself (`child`, described by
    /// `node`): it is stopped with the others, and found by id.
    pub(crate) fn adopt(&mut self, node: ClusterNode, child: Child) {
        self.file.nodes.retain(|n| n.id != node.id);
        self.restarted.insert(node.id, child);
        self.down.remove(&node.id);
        self.file.nodes.push(node);
    }

    // ----- clients -----

    /// What a client with `role` (`shop`, `admin`, `observer`) presents:
    /// TLS trusting the cluster's CA and that role's key, as `cluster.json`
    /// names them (plaintext and no key for an insecure cluster).
    pub fn credentials(&self, role: &str) -> Credentials {
        credentials_of(&self.file, &self.dir().join("cluster.json"), role)
    }

    /// A channel to one node's client plane with the `shop` key, for
    /// Inventory calls (connected lazily, reconnecting after failures).
    pub fn channel(&self, id: u64) -> ClientChannel {
        channel(&self.shop, &self.node(id).grpc)
    }

    /// A channel to one node's client plane with the `admin` key, for
    /// Admin calls.
    pub fn admin_channel(&self, id: u64) -> ClientChannel {
        channel(&self.admin, &self.node(id).grpc)
    }

    /// An Inventory client to one node, with the `shop` key.
    pub fn inventory(&self, id: u64) -> InventoryClient<ClientChannel> {
        InventoryClient::new(self.channel(id))
    }

    /// An Admin client to one node, with the `admin` key.
    pub fn admin(&self, id: u64) -> AdminClient<ClientChannel> {
        AdminClient::new(self.admin_channel(id))
    }

    /// A client channel of `region` (three regions only), with the `shop`
    /// key: its first endpoint in `cluster.json` (a node of the region, or
    /// for single-writer a link emulator in front of a us-east node).
    pub fn endpoint(&self, region: &str) -> ClientChannel {
        let endpoint = self
            .file
            .endpoints
            .as_ref()
            .and_then(|e| e.get(region))
            .and_then(|list| list.first())
            .unwrap_or_else(|| panic!("no endpoint for {region} in {:?}", self.file));
        channel(&self.shop, &endpoint.grpc)
    }

    /// Channels to every node with the `shop` key, starting with the
    /// `first`-th, for a [`Rotation`] of Inventory calls.
    pub fn rotation(&self, first: usize) -> Rotation {
        self.rotation_of(&self.shop, &self.ids(), first)
    }

    /// Channels to `region`'s nodes with the `shop` key, starting with its
    /// `first`-th, for the region's shoppers.
    pub fn rotation_in(&self, region: &str, first: usize) -> Rotation {
        self.rotation_of(&self.shop, &self.ids_in(region), first)
    }

    fn rotation_of(&self, credentials: &Credentials, ids: &[u64], first: usize) -> Rotation {
        let channels = ids
            .iter()
            .map(|&id| channel(credentials, &self.node(id).grpc))
            .collect();
        Rotation::new(channels, first % ids.len())
    }

    /// Channels to the home region's nodes with the `admin` key, for Admin
    /// calls: they reach the ledger without crossing a WAN link, so a
    /// partition of another region does not stand in the way (in a
    /// standalone region: every node).
    pub fn admin_rotation(&self) -> Rotation {
        self.rotation_of(&self.admin, &self.ids_in(HOME_REGION), 0)
    }

    // ----- the control API (three regions) -----

    /// Cuts `region` off from the other two regions.
    pub async fn partition_region(&self, region: &str) -> Vec<LinkState> {
        let body = serde_json::to_string(&PartitionRequest::region(region)).expect("serializes");
        let links = self.control_links(control_api::PARTITION, &body).await;
        let cut: BTreeSet<(&str, &str)> = links
            .iter()
            .filter(|l| l.cut)
            .map(|l| (l.a.as_str(), l.b.as_str()))
            .collect();
        assert!(
            links
                .iter()
                .filter(|l| l.a == region || l.b == region)
                .all(|l| l.cut),
            "partitioning {region} left a link of it up: {links:?}"
        );
        eprintln!("harness: {region} cut off; cut links {cut:?}");
        links
    }

    /// Cuts the link between `a` and `b`.
    pub async fn partition_link(&self, a: &str, b: &str) -> Vec<LinkState> {
        let body = serde_json::to_string(&PartitionRequest::link(a, b)).expect("serializes");
        self.control_links(control_api::PARTITION, &body).await
    }

    /// Heals every link.
    pub async fn heal(&self) -> Vec<LinkState> {
        let links = self.control_links(control_api::HEAL, "").await;
        assert!(links.iter().all(|l| !l.cut), "heal left a link cut: {links:?}");
        eprintln!("harness: every link healed");
        links
    }

    /// The links and whether each is cut.
    pub async fn links(&self) -> Vec<LinkState> {
        let (code, body) =
            http_get_authorized(self.control(), control_api::LINKS, self.control_token.as_deref())
                .await
                .unwrap_or_else(|e| panic!("GET /links: {e}"));
        assert_eq!(code, 200, "GET /links: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /links: {e}: {body}"))
    }

    /// A control-API POST that links answer.
    async fn control_links(&self, path: &str, body: &str) -> Vec<LinkState> {
        let text = self.control_post(path, body).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    /// A control-API POST, asserted to answer 200: the answer's body.
    async fn control_post(&self, path: &str, body: &str) -> String {
        let (code, text) = http_post(
            self.control(),
            path,
            body,
            self.control_token.as_deref(),
            CONTROL_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(code, 200, "POST {path} {body}: {text}");
        text
    }

    // ----- killing and restarting nodes -----

    /// Kills one node with SIGKILL and returns once its process is gone:
    /// through the control API when there is one (`up` reaps the node
    /// before answering), else by signal.
    pub async fn kill(&mut self, id: u64) {
        assert!(!self.down.contains(&id), "node {id} is already down");
        let pid = self.node(id).pid();
        if self.control.is_some() && !self.restarted.contains_key(&id) {
            self.control_post(&control_api::kill_path(id), "").await;
            assert!(!alive(pid), "node {id} (pid {pid}) outlived its kill");
            self.down.insert(id);
        } else {
            signal(pid, libc::SIGKILL, &format!("node {id}"));
            self.wait_gone(id).await;
        }
        eprintln!("harness: node {id} (pid {pid}) killed");
    }

    /// Kills every live node with SIGKILL, all at once by signal, and waits
    /// until they are gone.
    pub async fn kill_all(&mut self) {
        let pids: Vec<(u64, u32)> = self
            .live_ids()
            .into_iter()
            .map(|id| (id, self.node(id).pid()))
            .collect();
        for &(id, pid) in &pids {
            signal(pid, libc::SIGKILL, &format!("node {id}"));
        }
        for (id, _) in pids {
            self.wait_gone(id).await;
        }
    }

    /// After a SIGKILL already sent by the harness: waits until the node is
    /// gone (reaped by the test if it is the test's child; else `up` reaps
    /// it every 200 ms and until then it is a zombie, already without
    /// sockets), and marks it down.
    async fn wait_gone(&mut self, id: u64) {
        if let Some(mut child) = self.restarted.remove(&id) {
            wait_child(&mut child, GONE_DEADLINE).await;
        } else {
            let pid = self.node(id).pid();
            let give_up = Instant::now() + GONE_DEADLINE;
            while alive(pid) {
                assert!(Instant::now() < give_up, "node {id} (pid {pid}) survived SIGKILL");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        self.down.insert(id);
    }

    /// Sends SIGTERM to one node, a graceful stop (it drains, then exits),
    /// and returns at once; [`Cluster::wait_stopped`] waits for the exit.
    pub fn terminate(&self, id: u64) {
        assert!(!self.down.contains(&id), "node {id} is already down");
        signal(self.node(id).pid(), libc::SIGTERM, &format!("node {id}"));
    }

    /// Waits until a node the test signalled has exited, and marks it down;
    /// its exit status when the test is its parent (a standalone node
    /// restarted by hand), else `None` (`up` reaps it).
    pub async fn wait_stopped(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let status = match self.restarted.remove(&id) {
            Some(mut child) => Some(wait_child(&mut child, STOP_DEADLINE).await),
            None => {
                let pid = self.node(id).pid();
                let give_up = Instant::now() + STOP_DEADLINE;
                while alive(pid) {
                    assert!(Instant::now() < give_up, "node {id} (pid {pid}) did not stop");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                None
            }
        };
        self.down.insert(id);
        status
    }

    /// Restarts a killed node and waits for its `/readyz`: through the
    /// control API when there is one (the node becomes `up`'s child again
    /// and `cluster.json` is re-read for its new pid), else from its `cmd`
    /// in `cluster.json`, as a child of the test logging to its usual log.
    pub async fn restart(&mut self, id: u64) {
        self.restart_with(id, &[]).await
    }

    /// Restarts a killed node as the test's own child, from its `cmd` in
    /// `cluster.json`, with `env` added to its environment (e.g. libfaketime
    /// to skew its clock), and waits for its `/readyz`. Later kills of it
    /// are by signal.
    pub async fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        assert!(!env.is_empty(), "no environment to add");
        self.restart_with(id, env).await
    }

    async fn restart_with(&mut self, id: u64, env: &[(&str, &str)]) {
        assert!(self.down.contains(&id), "node {id} is not down");
        let old_pid = self.node(id).pid();
        let pid = if self.control.is_some() && env.is_empty() {
            self.control_post(&control_api::restart_path(id), "").await;
            // `up` rewrites cluster.json with the new pid before it answers.
            let json = self.dir().join("cluster.json");
            self.file = ClusterFile::load(&json).unwrap_or_else(|e| panic!("{e}"));
            let pid = self.node(id).pid();
            assert_ne!(pid, old_pid, "cluster.json kept node {id}'s old pid");
            pid
        } else {
            let node = self.node(id);
            let mut command = Command::new(&node.cmd[0]);
            command.args(&node.cmd[1..]).envs(env.iter().copied());
            let log = self.dir().join(format!("node-{id}.log"));
            let child = spawn_logged(command, &log).expect("the node's cmd starts");
            let pid = child.id();
            self.restarted.insert(id, child);
            for n in &mut self.file.nodes {
                if n.id == id {
                    n.pid = Some(pid);
                }
            }
            pid
        };
        self.down.remove(&id);
        let log = self.dir().join(format!("node-{id}.log"));
        let http = self.node(id).http();
        let give_up = Instant::now() + NODE_READY_DEADLINE;
        loop {
            if let Ok((200, _)) = http_get(&http, "/readyz").await {
                break;
            }
            // The test's own child is reaped here, so that its exit shows.
            let exited = match self.restarted.get_mut(&id) {
                Some(child) => child
                    .try_wait()
                    .expect("our child can be waited for")
                    .map(|status| status.to_string()),
                None => (!alive(pid)).then(|| "gone".to_string()),
            };
            if let Some(status) = exited {
                panic!(
                    "restarted node {id} (pid {pid}) exited: {status}\n{}",
                    log_tail(&log, LOG_TAIL_LINES)
                );
            }
            assert!(
                Instant::now() < give_up,
                "restarted node {id} not ready after {NODE_READY_DEADLINE:?}\n{}",
                log_tail(&log, LOG_TAIL_LINES)
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        eprintln!("harness: node {id} restarted (pid {pid}) and ready");
    }

    // ----- nodes, leaders -----

    /// A node's `GET /status`.
    pub async fn status(&self, id: u64) -> io::Result<NodeStatus> {
        crate::node_status(self.node(id).http()).await
    }

    /// The leader `region`'s live nodes agree on: a node that says it leads
    /// and that a majority of the region's nodes name.
    pub async fn region_leader(&self, region: &str) -> u64 {
        self.group_leader(region, &self.ids_in(region), |status| {
            Some((status.leader, status.role == Role::Leader))
        })
        .await
    }

    /// The ledger leader the live ledger hosts agree on (from their
    /// `/status` `ledger` section), like [`Cluster::region_leader`].
    pub async fn ledger_leader(&self) -> u64 {
        self.group_leader("the ledger", &self.ledger_ids(), |status| {
            status
                .ledger
                .map(|ledger| (ledger.leader, ledger.role == Role::Leader))
        })
        .await
    }

    /// The leader the live ones of a group's `hosts` agree on, from each
    /// one's `view` of the group in its `/status` (the leader it names,
    /// whether it leads): one that a majority of `hosts` name and that says
    /// it leads. Polls until there is one; panics after the deadline.
    async fn group_leader(
        &self,
        group: &str,
        hosts: &[u64],
        view: impl Fn(NodeStatus) -> Option<(Option<u64>, bool)>,
    ) -> u64 {
        let majority = hosts.len() / 2 + 1;
        let deadline = self.options.leader_deadline();
        let give_up = Instant::now() + deadline;
        loop {
            let mut views = Vec::new();
            for &id in hosts.iter().filter(|id| !self.down.contains(id)) {
                if let Some((leader, leads)) = self.status(id).await.ok().and_then(&view) {
                    views.push((id, leader, leads));
                }
            }
            match agreed_leader(&views, majority) {
                Ok(leader) => return leader,
                Err(seen) => assert!(
                    Instant::now() < give_up,
                    "{group}: no agreed leader after {deadline:?}: {seen}"
                ),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every live node of `region` shows the same replicated
    /// state in `/status`, and returns it (as the lowest live node reports
    /// it).
    pub async fn converged_in(&self, region: &str) -> NodeStatus {
        let give_up = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let live = self.live_ids_in(region);
            let mut statuses = Vec::new();
            for &id in &live {
                if let Ok(status) = self.status(id).await {
                    statuses.push(status);
                }
            }
            if statuses.len() == live.len()
                && statuses
                    .windows(2)
                    .all(|w| w[0].replicated_state() == w[1].replicated_state())
            {
                return statuses.swap_remove(0);
            }
            assert!(
                Instant::now() < give_up,
                "the live nodes of {region} did not converge within {CONVERGE_DEADLINE:?}: {statuses:#?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `region`'s replicated state as its leader reports it in `/status`.
    pub async fn region_status(&self, region: &str) -> NodeStatus {
        let deadline = self.options.leader_deadline();
        let give_up = Instant::now() + deadline;
        loop {
            let leader = self.region_leader(region).await;
            match self.status(leader).await {
                Ok(status) if status.role == Role::Leader => return status,
                other => assert!(
                    Instant::now() < give_up,
                    "{region}: no /status from its leader {leader}: {other:?}"
                ),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `region`'s available tokens of `sku` (its leader's `/status`).
    pub async fn available_in(&self, region: &str, sku: &str) -> u64 {
        self.region_status(region)
            .await
            .buckets
            .get(sku)
            .map_or(0, |b| b.available)
    }

    /// Polls until `done` holds for every region's available tokens of `sku`
    /// (in [`REGIONS`] order), and returns them; panics after `deadline`.
    pub async fn wait_available(
        &self,
        sku: &str,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[u64; 3]) -> bool,
    ) -> [u64; 3] {
        let give_up = Instant::now() + deadline;
        loop {
            let mut available = [0; 3];
            for (i, region) in REGIONS.iter().enumerate() {
                available[i] = self.available_in(region, sku).await;
            }
            if done(&available) {
                return available;
            }
            assert!(
                Instant::now() < give_up,
                "{sku}: {what} not reached within {deadline:?}: available {available:?} in {REGIONS:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    // ----- admin -----

    /// Adds `units` of `sku` (Admin `AdjustStock` on a home-region node: to
    /// the ledger's pool, or a standalone region's buckets), retried until
    /// acknowledged.
    pub async fn add_stock(&self, sku: &str, units: i64) -> v1::AdjustStockResponse {
        let n = self.stock_requests.fetch_add(1, Ordering::SeqCst);
        let request = v1::AdjustStockRequest {
            request_id: format!("test-stock-{sku}-{n}"),
            sku: sku.to_string(),
            delta: units,
        };
        let nodes = self.admin_rotation();
        retry(&nodes, RETRY_DEADLINE, |channel| {
            let request = request.clone();
            async move { AdminClient::new(channel).adjust_stock(request).await }
        })
        .await
        .result
        .unwrap_or_else(|s| panic!("adding stock of {sku}: {s:?}"))
    }

    /// Admin `GetStatus` from a home-region node, retried until answered.
    pub async fn cluster_status(&self) -> v1::ClusterStatus {
        let nodes = self.admin_rotation();
        retry(&nodes, RETRY_DEADLINE, |channel| async move {
            AdminClient::new(channel)
                .get_status(v1::GetStatusRequest {})
                .await
        })
        .await
        .result
        .unwrap_or_else(|s| panic!("GetStatus: {s:?}"))
    }

    /// The conservation audit (Admin `Audit`; with a ledger, run on its
    /// leader) from a home-region node, retried until answered.
    pub async fn audit(&self) -> v1::AuditReport {
        let nodes = self.admin_rotation();
        retry(&nodes, RETRY_DEADLINE, |channel| async move {
            AdminClient::new(channel).audit(v1::AuditRequest {}).await
        })
        .await
        .result
        .unwrap_or_else(|s| panic!("audit: {s:?}"))
    }

    /// Polls the audit until it balances with every sale settled (no region
    /// holds confirmed units the ledger has not settled), and returns it
    /// after asserting zero drift everywhere. Transient imbalance while
    /// transfers or settlements are in flight is logged, not failed.
    pub async fn settled_audit(&self, deadline: Duration) -> v1::AuditReport {
        let started = Instant::now();
        let give_up = started + deadline;
        let mut polls = 0;
        let mut drifted = 0;
        loop {
            polls += 1;
            let report = self.audit().await;
            let unsettled: u64 = report
                .skus
                .iter()
                .flat_map(|s| s.regions.iter())
                .map(|r| r.confirmed)
                .sum();
            if report.balanced && unsettled == 0 {
                assert_balanced(&report);
                eprintln!(
                    "harness: audit balanced and settled after {:?} ({polls} audits, {drifted} with drift)",
                    started.elapsed()
                );
                return report;
            }
            if report.missing_regions.is_empty() && !report.balanced {
                drifted += 1;
                eprintln!("harness: audit not balanced yet: {report:?}");
            }
            assert!(
                Instant::now() < give_up,
                "the audit did not balance with everything settled within {deadline:?} \
                 ({unsettled} confirmed units unsettled): {report:#?}"
            );
            tokio::time::sleep(POLL_INTERVAL * 4).await;
        }
    }

    /// Polls Admin `GetStatus` until every region reports a settlement lag
    /// of zero entries, and returns that status.
    pub async fn wait_no_settlement_lag(&self, deadline: Duration) -> v1::ClusterStatus {
        let give_up = Instant::now() + deadline;
        loop {
            let status = self.cluster_status().await;
            let lagging: Vec<&v1::SettlementLag> =
                status.settlement_lag.iter().filter(|l| l.entries > 0).collect();
            if lagging.is_empty() && status.settlement_lag.len() == REGIONS.len() {
                return status;
            }
            assert!(
                Instant::now() < give_up,
                "settlement still lags after {deadline:?}: {:?}",
                status.settlement_lag
            );
            tokio::time::sleep(POLL_INTERVAL * 4).await;
        }
    }

    /// A reservation read linearizably in its region, retried until answered.
    pub async fn get(&self, region: &str, reservation_id: &str) -> Result<v1::Reservation, Status> {
        let nodes = self.rotation_in(region, 0);
        let request = v1::GetReservationRequest {
            reservation_id: reservation_id.to_string(),
        };
        retry(&nodes, RETRY_DEADLINE, |channel| {
            let request = request.clone();
            async move { InventoryClient::new(channel).get_reservation(request).await }
        })
        .await
        .result
    }

    // ----- stopping and starting again -----

    /// Stops the cluster: SIGTERM to the nodes restarted by hand, `sig` to
    /// `up` (SIGTERM, or SIGINT as Ctrl-C sends it), which stops its own.
    /// Asserts that each exits successfully and that no process of the
    /// cluster is left: no pid of `cluster.json`, and no process whose
    /// command line names the cluster directory.
    pub async fn stop(&mut self, sig: libc::c_int) {
        let mut up = self.up.take().expect("up is running");
        let restarted = std::mem::take(&mut self.restarted);
        let pids: Vec<(u64, u32)> = self.file.nodes.iter().map(|n| (n.id, n.pid())).collect();
        // The check below can see the cluster's processes: here they are.
        let running: BTreeSet<u32> = processes_naming(self.dir())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        for &(id, pid) in pids.iter().filter(|(id, _)| !self.down.contains(id)) {
            assert!(
                running.contains(&pid),
                "node {id} (pid {pid}) is not among {running:?}"
            );
        }
        assert!(
            running.contains(&up.id()),
            "up (pid {}) is not among {running:?}",
            up.id()
        );
        for (id, child) in &restarted {
            signal(child.id(), libc::SIGTERM, &format!("node {id}"));
        }
        signal(up.id(), sig, "up");
        for (id, mut child) in restarted {
            let status = wait_child(&mut child, STOP_DEADLINE).await;
            assert!(status.success(), "node {id} stopped with {status}");
        }
        let status = wait_child(&mut up, STOP_DEADLINE).await;
        assert!(
            status.success(),
            "up stopped with {status} after signal {sig}\n{}",
            log_tail(&self.dir().join("up.log"), LOG_TAIL_LINES)
        );
        for (id, pid) in pids {
            assert!(!alive(pid), "node {id} (pid {pid}) outlived up");
        }
        let left = processes_naming(self.dir());
        assert!(left.is_empty(), "processes of the cluster outlived up: {left:?}");
    }

    /// Runs `up` again on the same directory (after [`Cluster::stop`]): the
    /// cluster comes back on its configs and data.
    pub async fn start_again(&mut self) {
        self.run_up().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // Stop everything first, so the logs are complete when printed.
        for child in self.restarted.values() {
            signal(child.id(), libc::SIGTERM, "a restarted node");
        }
        if let Some(up) = &self.up {
            signal(up.id(), libc::SIGTERM, "up");
        }
        for child in self.restarted.values_mut() {
            stop_blocking(child);
        }
        if let Some(up) = self.up.as_mut() {
            stop_blocking(up);
        }
        if panicking && let Some(dir) = self.dir.take() {
            print_logs(dir.keep());
        } else if std::env::var_os(KEEP_ENV).is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "harness: {KEEP_ENV} is set; the cluster is kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// What `cluster.json` (`file`, read from `path`) gives a client with `role`.
fn credentials_of(file: &ClusterFile, path: &Path, role: &str) -> Credentials {
    Credentials::for_cluster(file, path, role)
        .unwrap_or_else(|e| panic!("the {role} credentials of {}: {e}", path.display()))
}

/// For a failed test: says where its directory is kept and prints the tail
/// of every log in it.
fn print_logs(dir: PathBuf) {
    eprintln!(
        "harness: the test failed; its cluster is kept in {}",
        dir.display()
    );
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    for log in logs {
        eprintln!(
            "--- last lines of {} ---\n{}",
            log.display(),
            log_tail(&log, LOG_TAIL_LINES)
        );
    }
}

/// Spawns `command` (an `up`) into `up`, its output appended to
/// `DIR/up.log`, and waits until it has written `DIR/cluster.json` with
/// every node running; panics with its log if it exits or `deadline` passes.
async fn wait_cluster_file(
    up: &mut Option<Child>,
    dir: &Path,
    command: Command,
    deadline: Duration,
) -> ClusterFile {
    assert!(up.is_none(), "up is already running");
    let path = dir.join("cluster.json");
    // `up` removes a stale cluster.json too, but only once it runs: until
    // then the poll below would read the previous run's pids.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => panic!("removing {}: {e}", path.display()),
        _ => {}
    }
    *up = Some(spawn_logged(command, &dir.join("up.log")).expect("up starts"));
    let give_up = Instant::now() + deadline;
    loop {
        if let Ok(cluster) = ClusterFile::load(&path) {
            for node in &cluster.nodes {
                assert!(
                    alive(node.pid()),
                    "node {} (pid {}) of cluster.json is not running",
                    node.id,
                    node.pid()
                );
            }
            return cluster;
        }
        let child = up.as_mut().expect("up was just started");
        if let Some(status) = child.try_wait().expect("up can be waited for") {
            *up = None;
            panic!(
                "up exited before writing cluster.json: {status}\n{}",
                log_tail(&dir.join("up.log"), LOG_TAIL_LINES)
            );
        }
        assert!(
            Instant::now() < give_up,
            "no cluster.json after {deadline:?}\n{}",
            log_tail(&dir.join("up.log"), LOG_TAIL_LINES)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that an audit balances: `balanced`, no region missing, zero
/// drift of every kind, and the sheet adds up (pool + in flight + regions +
/// settled = stocked).
pub fn assert_balanced(report: &v1::AuditReport) {
    assert!(report.balanced, "the audit does not balance: {report:#?}");
    assert!(report.missing_regions.is_empty(), "{report:#?}");
    for s in &report.skus {
        assert_eq!(
            (s.drift, s.ledger_drift),
            (0, 0),
            "drift of {}: {report:#?}",
            s.sku
        );
        let in_regions: u64 = s.regions.iter().map(|r| r.available + r.held + r.confirmed).sum();
        assert_eq!(
            s.pool + s.in_flight_grants + s.in_flight_revokes + in_regions + s.settled_total,
            s.stocked_total,
            "{}: the sheet does not add up: {s:?}",
            s.sku
        );
        for r in &s.regions {
            assert_eq!(r.drift, 0, "{} in {}: {report:#?}", s.sku, r.region);
        }
        let regions: BTreeSet<&str> = s.regions.iter().map(|r| r.region.as_str()).collect();
        assert_eq!(
            regions,
            REGIONS.into_iter().collect(),
            "{}: every region is on the sheet",
            s.sku
        );
    }
}

/// One SKU's line of an audit.
pub fn sku_sheet<'a>(report: &'a v1::AuditReport, sku: &str) -> &'a v1::SkuBalance {
    report
        .skus
        .iter()
        .find(|s| s.sku == sku)
        .unwrap_or_else(|| panic!("no {sku} in the audit: {report:#?}"))
}

/// One region's line of a SKU's sheet.
pub fn region_sheet<'a>(sheet: &'a v1::SkuBalance, region: &str) -> &'a v1::RegionBalance {
    sheet
        .regions
        .iter()
        .find(|r| r.region == region)
        .unwrap_or_else(|| panic!("no {region} in {sheet:?}"))
}

/// The processes (pid, command line) whose command line mentions `dir`:
/// nodes run `reservoir node --config DIR/node-N.toml`, `up` runs with
/// `--dir DIR`.
pub fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    // `up` runs with the path as given and names its nodes' configs by the
    // canonical one.
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let needles = [
        dir.to_string_lossy().into_owned(),
        canonical.to_string_lossy().into_owned(),
    ];
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let path: PathBuf = entry.path().join("cmdline");
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let cmdline = bytes
            .split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        // A zombie has an empty command line and no sockets: it is gone in
        // every sense that matters here, its parent reaps it.
        if needles.iter().any(|n| cmdline.contains(n.as_str())) {
            found.push((pid, cmdline));
        }
    }
    found
}
