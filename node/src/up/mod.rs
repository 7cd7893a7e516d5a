//! `reservoir up`: a local cluster as child processes of this one, for
//! local use, tests and the load tester. This module is `--standalone` (one
//! region) and what every `up` shares (configs, child processes, readiness,
//! `cluster.json`, clean stop); [`cluster`] is the three-region cluster and
//! its control API, [`wan`] the WAN link emulator between regions.
//!
//! `reservoir up --standalone --dir DIR`: one standalone region (`us-east`)
//! as child processes on loopback ports (or, `--advertise-host HOST`,
//! listening on every interface and reached at `HOST:PORT`).
//!
//! The steps, each a small function below: write (or reuse) one config per
//! node in DIR → spawn `reservoir node --config DIR/node-{id}.toml` per node,
//! its output appended to `DIR/node-{id}.log` → poll every node's `/readyz`
//! until all answer 200 → write `DIR/cluster.json` → report children that
//! exit, without restarting them → on Ctrl-C / SIGTERM stop every child.
//!
//! Running `up` again on the same DIR reuses the configs unchanged (same
//! ports, same data dirs), so the region comes back on its data. Re-running a
//! node's `cmd` from cluster.json by hand restarts that one node.
//!
//! Caveats: a child restarted by hand is not `up`'s child, so `up` neither
//! sees it nor stops it. Nothing guards against two `up`s on one DIR; the
//! second one's nodes fail to bind and it says so.

pub mod cluster;
pub mod secrets;
pub mod wan;

use crate::server::config::{NodeConfig, PEERS_MAX, PROPOSAL_QUEUE_MAX_LIMIT, Peer, RaftTuning};
use crate::server::security::clients::ApiKey;
use reservoir_client::{HOME_REGION, HostPort};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Duration, Instant};

/// Nodes when `--nodes` is not given and DIR holds no configs.
pub const NODES_DEFAULT: u64 = 3;
/// How long every node has to become ready before `up` gives up.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often `up` polls `/readyz` while waiting.
pub const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one `/readyz` probe may take.
pub const HTTP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of a `/readyz` answer a probe reads (a node answers `ok`).
pub const READY_BODY_BYTES_MAX: usize = 1024;
/// How often a running `up` checks whether a child has exited.
pub const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long children have after SIGTERM before they get SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a node's log shown when it fails to start.
pub const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
pub const LOG_TAIL_BYTES_MAX: u64 = 16 * 1024;

/// What `up --standalone` was asked for.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The cluster directory; created if missing.
    pub dir: PathBuf,
    /// Nodes in the region; `None` means [`NODES_DEFAULT`], or what DIR holds.
    pub nodes: Option<u64>,
    /// First port of a fixed range instead of free ports.
    pub base_port: Option<u16>,
    /// Each node's `raft.proposal_queue_max`; `None` means the default.
    pub proposal_queue_max: Option<usize>,
    /// The `reservoir` binary the children run.
    pub exe: PathBuf,
    /// Fresh configs run without TLS or authentication.
    pub insecure: bool,
    /// Fresh configs listen on every interface and advertise this host
    /// (a DNS name or IP of this machine), which their certificates name.
    pub advertise_host: Option<String>,
}

/// `DIR/cluster.json`'s schema lives in the client crate: it is what
/// every program that drives a cluster reads.
pub use reservoir_client::{ClusterEndpoint, ClusterFile, ClusterNode, LedgerInfo};

/// Why `up` failed.
#[derive(Debug)]
pub enum UpError {
    /// Bad options, or a DIR whose configs do not fit them; exit code 2.
    Usage(String),
    /// A file or process operation failed.
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A node config in DIR is invalid.
    Config(crate::server::config::ConfigError),
    /// A node exited or was not ready in time.
    NodeFailed {
        /// The node.
        id: u64,
        /// What happened.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
}

impl UpError {
    /// True for errors in what `up` was asked to do, as opposed to failures
    /// while doing it; `main` exits 2 for these.
    pub fn is_usage(&self) -> bool {
        matches!(self, UpError::Usage(_) | UpError::Config(_))
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpError {
        let what = what.into();
        move |source| UpError::Io { what, source }
    }
}

impl fmt::Display for UpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpError::Usage(message) => f.write_str(message),
            UpError::Io { what, source } => write!(f, "{what}: {source}"),
            UpError::Config(e) => write!(f, "{e}"),
            UpError::NodeFailed {
                id,
                reason,
                log,
                tail,
            } => {
                write!(f, "node {id} {reason}; last lines of {}:\n{tail}", log.display())
            }
        }
    }
}

impl std::error::Error for UpError {}

/// A node config in DIR, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNode {
    /// `DIR/node-{id}.toml`, absolute.
    pub config_path: PathBuf,
    /// Its contents.
    pub config: NodeConfig,
}

/// A running child and what `up` knows about it.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pub(crate) id: u64,
    pub(crate) config: NodeConfig,
    pub(crate) log_path: PathBuf,
    pub(crate) cmd: Vec<String>,
    pub(crate) pid: u32,
    pub(crate) child: Child,
    /// Set once the child has been reaped; it is never signalled after that,
    /// so a recycled pid is never hit.
    pub(crate) exited: Option<ExitStatus>,
}

/// Runs a standalone region until Ctrl-C / SIGTERM. Returns once every child
/// has stopped. Run it on a current-thread runtime on the main thread: a
/// child's `PR_SET_PDEATHSIG` fires when the *thread* that spawned it exits.
pub async fn run(options: UpOptions) -> Result<(), UpError> {
    // Before any child exists, so a signal can never kill `up` by default
    // disposition and leave the children to their death signal alone.
    let mut signals = ShutdownSignals::install().map_err(UpError::io("installing signal handlers"))?;
    let dir = cluster_dir(&options.dir)?;
    let plan = prepare_configs(
        &dir,
        options.nodes,
        options.base_port,
        options.proposal_queue_max,
        options.insecure,
        options.advertise_host.as_deref(),
    )?;
    // cluster.json appears only once this run is ready; an old one would
    // point at processes that are gone.
    let cluster_path = dir.join("cluster.json");
    match std::fs::remove_file(&cluster_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(UpError::io(format!("removing stale {}", cluster_path.display()))(
                e,
            ));
        }
        _ => {}
    }

    let Some(mut nodes) =
        start_nodes(&options.exe, &dir, &plan, READY_DEADLINE, &mut signals, "region").await?
    else {
        return Ok(());
    };

    let cluster = cluster_file(&nodes);
    let mut json = serde_json::to_vec_pretty(&cluster).expect("a ClusterFile always serializes");
    json.push(b'\n');
    if let Err(e) = write_atomically(&cluster_path, &json) {
        stop_all(&mut nodes, STOP_GRACE).await;
        return Err(UpError::io(format!("writing {}", cluster_path.display()))(e));
    }
    print_endpoints(&nodes, &cluster_path);

    let signal_name = supervise(&mut nodes, &mut signals).await;
    eprintln!("{signal_name}: stopping the nodes");
    stop_all(&mut nodes, STOP_GRACE).await;
    Ok(())
}

// ----- configs -----

/// The node configs for DIR: those already there, unchanged, when DIR holds
/// any `node-{id}.toml`; otherwise fresh ones, written to DIR, with
/// `proposal_queue_max` (if given) as every node's `raft.proposal_queue_max`,
/// TLS and API keys from [`secrets`] unless `insecure`, and with
/// `advertise_host`, listening on every interface and reached (by peers and
/// clients alike) at that host.
pub fn prepare_configs(
    dir: &Path,
    nodes: Option<u64>,
    base_port: Option<u16>,
    proposal_queue_max: Option<usize>,
    insecure: bool,
    advertise_host: Option<&str>,
) -> Result<Vec<PlannedNode>, UpError> {
    let existing = existing_node_ids(dir).map_err(UpError::io(format!("reading {}", dir.display())))?;
    if !existing.is_empty() {
        let plan = load_configs(dir, &existing)?;
        if let Some(n) = nodes.filter(|&n| n != plan.len() as u64) {
            return Err(UpError::Usage(format!(
                "{} holds a {}-node region; --nodes {n} does not match (use another --dir for a new region)",
                dir.display(),
                plan.len()
            )));
        }
        if base_port.is_some() {
            eprintln!(
                "note: --base-port ignored; {} already holds node configs",
                dir.display()
            );
        }
        if proposal_queue_max.is_some() {
            eprintln!(
                "note: --proposal-queue-max ignored; {} already holds node configs",
                dir.display()
            );
        }
        if advertise_host.is_some() {
            eprintln!(
                "note: --advertise-host ignored; {} already holds node configs",
                dir.display()
            );
        }
        return Ok(plan);
    }
    let advertise_host = advertise_host
        .map(|host| {
            HostPort::new(host, 1)
                .map(|addr| addr.host_str())
                .map_err(|e| UpError::Usage(format!("--advertise-host: {e}")))
        })
        .transpose()?;
    let n = nodes.unwrap_or(NODES_DEFAULT);
    if n == 0 || n > PEERS_MAX as u64 {
        return Err(UpError::Usage(format!("--nodes must be 1-{PEERS_MAX}, got {n}")));
    }
    let mut raft = RaftTuning::default();
    if let Some(max) = proposal_queue_max {
        if max == 0 || max > PROPOSAL_QUEUE_MAX_LIMIT {
            return Err(UpError::Usage(format!(
                "--proposal-queue-max must be 1-{PROPOSAL_QUEUE_MAX_LIMIT}, got {max}"
            )));
        }
        raft.proposal_queue_max = max;
    }
    let ports = match base_port {
        Some(base) => fixed_ports(base, n)?,
        None => {
            free_ports(PORTS_PER_NODE * n as usize).map_err(UpError::io("picking free loopback ports"))?
        }
    };
    let api_keys = if insecure {
        None
    } else {
        let nodes: Vec<secrets::NodeCert> = (1..=n)
            .map(|id| secrets::NodeCert {
                id,
                region: HOME_REGION.to_string(),
                hosts: advertise_host.iter().cloned().collect(),
            })
            .collect();
        Some(secrets::make(dir, secrets::UP_CA_NAME, &nodes)?.api_keys)
    };
    let plan = fresh_configs(dir, &ports, &raft, api_keys, advertise_host.as_deref());
    for planned in &plan {
        let text = toml::to_string(&planned.config).expect("a NodeConfig always serializes to TOML");
        write_atomically(&planned.config_path, text.as_bytes())
            .map_err(UpError::io(format!("writing {}", planned.config_path.display())))?;
    }
    Ok(plan)
}

/// `DIR/node-{id}.toml`.
pub fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.toml"))
}

/// `DIR/node-{id}.log`.
pub fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.log"))
}

/// The ids of the `node-{id}.toml` files in DIR, ascending.
pub(crate) fn existing_node_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.strip_suffix(".toml"))
            .and_then(|n| n.parse::<u64>().ok());
        ids.extend(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Loads the configs of a previous run and checks that they describe one
/// standalone region whose voters are exactly these files.
fn load_configs(dir: &Path, ids: &[u64]) -> Result<Vec<PlannedNode>, UpError> {
    let mut plan = Vec::with_capacity(ids.len());
    for &id in ids {
        let path = config_path(dir, id);
        let config = NodeConfig::load(&path).map_err(UpError::Config)?;
        let inconsistent = |why: String| UpError::Usage(format!("{}: {why}", path.display()));
        if config.node_id != id {
            return Err(inconsistent(format!(
                "node_id is {}, the file name says {id}",
                config.node_id
            )));
        }
        if !config.standalone {
            return Err(inconsistent(
                "not a standalone node; `up --standalone` runs only those".into(),
            ));
        }
        let mut voters: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
        voters.sort_unstable();
        if voters != ids {
            return Err(inconsistent(format!(
                "peers are {voters:?}, but DIR holds configs for {ids:?}"
            )));
        }
        if let Some(first) = plan.first().map(|p: &PlannedNode| &p.config)
            && (first.region != config.region || first.peers != config.peers)
        {
            return Err(inconsistent(format!(
                "region or peers differ from node {}'s",
                first.node_id
            )));
        }
        plan.push(PlannedNode {
            config_path: path,
            config,
        });
    }
    Ok(plan)
}

/// Ports a node listens on: client gRPC, peer gRPC, HTTP.
pub const PORTS_PER_NODE: usize = 3;

/// Fresh configs for nodes 1..=N of the standalone region: node i gets
/// `ports[3(i-1)]` for client gRPC, `ports[3(i-1)+1]` for the peer plane and
/// `ports[3(i-1)+2]` for HTTP, its data in `DIR/node-{i}/data`, and the Raft
/// tuning `raft`; every node lists every node as a voter. With `api_keys`,
/// TLS from DIR's development CA and those keys; without, insecure. Nodes
/// listen on loopback and are reached there, or with `advertise_host`,
/// listen on every interface and are reached at `advertise_host:PORT`.
fn fresh_configs(
    dir: &Path,
    ports: &[u16],
    raft: &RaftTuning,
    api_keys: Option<Vec<ApiKey>>,
    advertise_host: Option<&str>,
) -> Vec<PlannedNode> {
    assert!(
        ports.len().is_multiple_of(PORTS_PER_NODE),
        "{} ports for nodes that need {PORTS_PER_NODE} each",
        ports.len()
    );
    let listen = |port: u16| match advertise_host {
        Some(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        None => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    };
    let advertise = |port: u16| {
        advertise_host.map(|host| HostPort::new(host, port).expect("the host was checked, the port is not 0"))
    };
    let reach = |port: u16| advertise(port).unwrap_or_else(|| listen(port).into());
    let ids = 1..=(ports.len() / PORTS_PER_NODE) as u64;
    let peers: Vec<Peer> = ids
        .clone()
        .map(|id| Peer {
            id,
            peer: reach(ports[PORTS_PER_NODE * (id as usize - 1) + 1]),
        })
        .collect();
    ids.map(|id| {
        let i = PORTS_PER_NODE * (id as usize - 1);
        PlannedNode {
            config_path: config_path(dir, id),
            config: NodeConfig {
                node_id: id,
                region: HOME_REGION.to_string(),
                location: None,
                grpc_addr: listen(ports[i]),
                grpc_advertise: advertise(ports[i]),
                peer_addr: listen(ports[i + 1]),
                peer_advertise: advertise(ports[i + 1]),
                http_addr: listen(ports[i + 2]),
                data_dir: dir.join(format!("node-{id}")).join("data"),
                standalone: true,
                join: false,
                peers: peers.clone(),
                raft: raft.clone(),
                ledger_peers: Vec::new(),
                ledger_nodes: Vec::new(),
                regions: Vec::new(),
                rebalance: Default::default(),
                retention: Default::default(),
                insecure: api_keys.is_none(),
                tls: api_keys.is_some().then(|| secrets::tls_files(dir, id)),
                api_keys: api_keys.clone().unwrap_or_default(),
                // Nothing balances load in front of a local region: stop at once.
                drain_ms: 0,
                log: Default::default(),
                metrics: Default::default(),
            },
        }
    })
    .collect()
}

/// `3n` consecutive ports from `base`, refused if they run past 65535.
fn fixed_ports(base: u16, n: u64) -> Result<Vec<u16>, UpError> {
    let last = u64::from(base) + PORTS_PER_NODE as u64 * n - 1;
    if base == 0 || last > u64::from(u16::MAX) {
        return Err(UpError::Usage(format!(
            "--base-port {base}: {n} nodes need ports {base}-{last}, which must lie in 1-65535"
        )));
    }
    Ok((0..(PORTS_PER_NODE as u64 * n) as u16)
        .map(|i| base + i)
        .collect())
}

/// `count` distinct free loopback ports: all bound at once to 127.0.0.1:0
/// (so the kernel hands out distinct ones), read, then released for the
/// nodes to bind. Another process could take one in between; the node would
/// then fail to start and `up` would say so.
pub(crate) fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Writes a file so that readers see the old contents or the new, never a
/// torn write: a temporary file beside it, flushed, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

// ----- processes -----

/// DIR, created if missing, as an absolute path (node configs and
/// `cluster.json` name their files by it).
pub(crate) fn cluster_dir(dir: &Path) -> Result<PathBuf, UpError> {
    std::fs::create_dir_all(dir).map_err(UpError::io(format!("creating {}", dir.display())))?;
    dir.canonicalize()
        .map_err(UpError::io(format!("resolving {}", dir.display())))
}

/// Spawns every planned node and waits until all are ready. `Ok(None)`: a
/// shutdown signal came first and the nodes were stopped (not an error);
/// on a failure the nodes already started are stopped too. `what` names
/// the cluster in the message.
pub(crate) async fn start_nodes(
    exe: &Path,
    dir: &Path,
    plan: &[PlannedNode],
    deadline: Duration,
    signals: &mut ShutdownSignals,
    what: &str,
) -> Result<Option<Vec<NodeProcess>>, UpError> {
    let mut nodes = Vec::with_capacity(plan.len());
    for planned in plan {
        match spawn_node(exe, dir, planned) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(&mut nodes, STOP_GRACE).await;
                return Err(e);
            }
        }
    }
    let startup = tokio::select! {
        ready = wait_ready(&mut nodes, deadline) => Ok(ready),
        name = signals.recv() => Err(name),
    };
    match startup {
        Ok(Ok(())) => Ok(Some(nodes)),
        Ok(Err(e)) => {
            stop_all(&mut nodes, STOP_GRACE).await;
            Err(e)
        }
        Err(signal_name) => {
            eprintln!("{signal_name} before the {what} was ready: stopping the nodes");
            stop_all(&mut nodes, STOP_GRACE).await;
            Ok(None)
        }
    }
}

/// Starts one node: `exe node --config <abs path>`, its output appended to
/// `DIR/node-{id}.log`, its data dir created.
pub(crate) fn spawn_node(exe: &Path, dir: &Path, planned: &PlannedNode) -> Result<NodeProcess, UpError> {
    let id = planned.config.node_id;
    std::fs::create_dir_all(&planned.config.data_dir).map_err(UpError::io(format!(
        "creating {}",
        planned.config.data_dir.display()
    )))?;
    let cmd = vec![
        exe.to_string_lossy().into_owned(),
        "node".to_string(),
        "--config".to_string(),
        planned.config_path.to_string_lossy().into_owned(),
    ];
    let log_path = log_path(dir, id);
    let child = spawn_logged(&cmd, &log_path, &format!("starting node {id}"))
        .map_err(UpError::io(format!("starting node {id} ({})", exe.display())))?;
    let pid = child.id().expect("a just-spawned child has not been reaped");
    Ok(NodeProcess {
        id,
        config: planned.config.clone(),
        log_path,
        cmd,
        pid,
        child,
        exited: None,
    })
}

/// Starts `cmd` with stdin closed and stdout and stderr appended to
/// `log_path`, after a marker line so one node's runs can be told apart. On
/// Linux the child asks for SIGTERM when `up` dies (`PR_SET_PDEATHSIG`), so
/// killing `up` even with SIGKILL still stops the region.
fn spawn_logged(cmd: &[String], log_path: &Path, marker: &str) -> io::Result<Child> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    writeln!(log, "--- reservoir up: {marker} ---")?;
    let stderr_log = log.try_clone()?;
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr_log))
        .kill_on_drop(false);
    die_with_parent(&mut command);
    command.spawn()
}

/// Makes the child get SIGTERM when its parent dies (Linux only; elsewhere
/// children of a killed `up` live on until stopped by hand).
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died between fork and prctl: the signal will
                // never come, so do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Polls every node until each `/readyz` answers 200. Fails, naming the node
/// and showing its log's tail, when a child exits or `deadline` passes.
pub(crate) async fn wait_ready(nodes: &mut [NodeProcess], deadline: Duration) -> Result<(), UpError> {
    let give_up = Instant::now() + deadline;
    let mut ready = vec![false; nodes.len()];
    let mut last_probe = vec![String::from("not probed yet"); nodes.len()];
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if let Some(status) = reap(node) {
                return Err(node_failed(
                    node,
                    format!("(pid {}) exited while starting: {status}", node.pid),
                ));
            }
            match probe_ready(node.config.http_advertised()).await {
                Ok(200) => ready[i] = true,
                Ok(code) => last_probe[i] = format!("/readyz answered {code}"),
                Err(e) => last_probe[i] = format!("/readyz failed: {e}"),
            }
        }
        if ready.iter().all(|&r| r) {
            return Ok(());
        }
        if Instant::now() >= give_up {
            let i = ready.iter().position(|&r| !r).expect("some node is not ready");
            let reason = format!("not ready after {} s ({})", deadline.as_secs(), last_probe[i]);
            return Err(node_failed(&nodes[i], reason));
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

fn node_failed(node: &NodeProcess, reason: String) -> UpError {
    UpError::NodeFailed {
        id: node.id,
        reason,
        log: node.log_path.clone(),
        tail: log_tail(&node.log_path, LOG_TAIL_LINES),
    }
}

/// One `/readyz` probe, bounded by [`HTTP_PROBE_TIMEOUT`] and
/// [`READY_BODY_BYTES_MAX`]: the status code.
async fn probe_ready(
    addr: impl Into<reservoir_client::HostPort>,
) -> Result<u16, reservoir_client::HttpError> {
    let (code, _) =
        reservoir_client::http::get_bounded(addr, "/readyz", HTTP_PROBE_TIMEOUT, READY_BODY_BYTES_MAX)
            .await?;
    Ok(code)
}

/// The exit status of a child that has exited since the last look, reaping
/// it; `None` while it runs (or if it was reaped before).
pub(crate) fn reap(node: &mut NodeProcess) -> Option<ExitStatus> {
    if node.exited.is_some() {
        return None;
    }
    match node.child.try_wait() {
        Ok(Some(status)) => {
            node.exited = Some(status);
            Some(status)
        }
        Ok(None) => None,
        Err(e) => {
            // Only possible if the child is no longer ours to wait for; treat
            // it as gone rather than report it on every poll.
            eprintln!(
                "node {} (pid {}): cannot check its status: {e}",
                node.id, node.pid
            );
            node.exited = Some(ExitStatus::default());
            None
        }
    }
}

/// While the region runs: reports each child that exits, once, and does not
/// restart it. Returns the name of the signal that asked `up` to stop.
async fn supervise(nodes: &mut [NodeProcess], signals: &mut ShutdownSignals) -> &'static str {
    let mut tick = tokio::time::interval(CHILD_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            name = signals.recv() => return name,
            _ = tick.tick() => {
                for node in nodes.iter_mut() {
                    if let Some(status) = reap(node) {
                        eprintln!("node {} (pid {}) exited: {status}", node.id, node.pid);
                    }
                }
            }
        }
    }
}

/// Stops every child still running: SIGTERM to all at once, up to `grace`
/// for them to exit, then SIGKILL for any left; every child is reaped, so
/// none outlives `up` and none stays a zombie.
pub(crate) async fn stop_all(nodes: &mut [NodeProcess], grace: Duration) {
    for node in nodes.iter_mut() {
        if let Some(status) = reap(node) {
            eprintln!("node {} (pid {}) exited: {status}", node.id, node.pid);
        } else if node.exited.is_none() {
            send_signal(node, libc::SIGTERM);
        }
    }
    let give_up = Instant::now() + grace;
    for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
        let status = match tokio::time::timeout_at(give_up, node.child.wait()).await {
            Ok(waited) => waited,
            Err(_) => {
                eprintln!(
                    "node {} (pid {}) still running after {} s: SIGKILL",
                    node.id,
                    node.pid,
                    grace.as_secs()
                );
                // start_kill sends SIGKILL; wait reaps.
                let _ = node.child.start_kill();
                node.child.wait().await
            }
        };
        match status {
            Ok(status) => {
                eprintln!("node {} (pid {}) stopped: {status}", node.id, node.pid);
                node.exited = Some(status);
            }
            Err(e) => eprintln!("node {} (pid {}): waiting for it failed: {e}", node.id, node.pid),
        }
    }
}

/// Sends a signal to a child that has not been reaped, so its pid is still
/// ours and cannot have been recycled.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub(crate) fn send_signal(node: &NodeProcess, signal: libc::c_int) {
    debug_assert!(node.exited.is_none(), "signalling reaped node {}", node.id);
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(node.pid as libc::pid_t, signal) } != 0 {
        let e = io::Error::last_os_error();
        eprintln!("node {} (pid {}): signal {signal} failed: {e}", node.id, node.pid);
    }
}

/// The last `lines` lines of a log (from at most its last
/// [`LOG_TAIL_BYTES_MAX`] bytes), indented; a note if it cannot be read.
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "    (empty)".to_string()
            } else {
                tail.iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

// ----- reporting -----

/// The contents of `cluster.json` for the running nodes.
fn cluster_file(nodes: &[NodeProcess]) -> ClusterFile {
    let (tls, credentials) = trust_of(nodes.iter().map(|n| &n.config));
    ClusterFile {
        architecture: None,
        endpoints: None,
        nodes: nodes.iter().map(cluster_node).collect(),
        control: None,
        ledger: None,
        tls,
        credentials,
        control_token_file: None,
    }
}

/// A running node, as `cluster.json` lists it.
pub(crate) fn cluster_node(n: &NodeProcess) -> ClusterNode {
    ClusterNode {
        id: n.id,
        region: n.config.region.clone(),
        grpc: n.config.grpc_advertised(),
        peer: Some(n.config.peer_advertised()),
        http: Some(n.config.http_advertised()),
        pid: Some(n.pid),
        cmd: n.cmd.clone(),
    }
}

/// What `cluster.json` says about trust for nodes with these configs: DIR's
/// CA and key files unless the nodes run insecure.
pub(crate) fn trust_of<'a>(
    mut configs: impl Iterator<Item = &'a NodeConfig>,
) -> (
    Option<reservoir_client::TlsInfo>,
    std::collections::BTreeMap<String, PathBuf>,
) {
    if configs.any(|c| !c.insecure) {
        let (tls, credentials) = secrets::cluster_trust();
        (Some(tls), credentials)
    } else {
        (None, Default::default())
    }
}

/// Prints where the region's nodes listen, on stdout.
fn print_endpoints(nodes: &[NodeProcess], cluster_path: &Path) {
    let mut rows = vec![["NODE", "PID", "GRPC", "HTTP", "LOG"].map(String::from).to_vec()];
    for n in nodes {
        rows.push(vec![
            n.id.to_string(),
            n.pid.to_string(),
            n.config.grpc_advertised().to_string(),
            n.config.http_advertised().to_string(),
            n.log_path.display().to_string(),
        ]);
    }
    println!(
        "region {HOME_REGION} is ready: {} nodes, standalone; {}",
        nodes.len(),
        cluster_path.display()
    );
    print!("{}", reservoir_client::text::table(&rows, ""));
    println!("Ctrl-C stops the region.");
}

/// Ctrl-C (SIGINT) and SIGTERM, registered once at start-up.
pub(crate) struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    pub(crate) fn install() -> io::Result<Self> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either; returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener as AsyncListener;

    /// A fresh, empty directory under the system temp dir, unique per test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reservoir-up-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    /// A fresh DIR gets N valid configs on distinct loopback ports, and a second run reuses them unchanged.
    #[test]
    fn configs_are_generated_then_reused() {
        let dir = scratch("configs");
        let first = prepare_configs(&dir, None, None, None, true, None).unwrap();
        assert_eq!(first.len(), NODES_DEFAULT as usize);
        let mut addrs = Vec::new();
        for (i, p) in first.iter().enumerate() {
            let c = &p.config;
            assert_eq!(c.node_id, i as u64 + 1);
            assert_eq!(c.region, HOME_REGION);
            assert!(c.standalone);
            assert_eq!(c.peers.len(), first.len());
            assert_eq!(c.data_dir, dir.join(format!("node-{}/data", c.node_id)));
            assert_eq!(p.config_path, dir.join(format!("node-{}.toml", c.node_id)));
            assert_eq!(
                &NodeConfig::load(&p.config_path).unwrap(),
                c,
                "written config loads back"
            );
            addrs.extend([c.grpc_addr, c.http_addr]);
        }
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 2 * first.len(), "every port distinct");

        let again = prepare_configs(&dir, None, Some(9000), None, true, None).unwrap();
        assert_eq!(
            again, first,
            "second run reuses the configs, ignoring --base-port"
        );
        assert_eq!(
            prepare_configs(&dir, Some(3), None, None, true, None).unwrap(),
            first
        );
        assert!(
            prepare_configs(&dir, Some(5), None, None, true, None)
                .unwrap_err()
                .is_usage()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// --base-port lays the ports out as documented and refuses ranges past 65535.
    #[test]
    fn base_port_layout() {
        let dir = scratch("base-port");
        let plan = prepare_configs(&dir, Some(2), Some(20000), None, false, None).unwrap();
        let c = &plan[1].config;
        // A secure region: each node's certificate and key from DIR's CA,
        // one key per role, and configs that load.
        let tls = c.tls.as_ref().expect("a secure config names its TLS files");
        assert!(tls.ca_file.exists() && tls.cert_file.exists() && tls.key_file.exists());
        assert_eq!(c.api_keys.len(), 3);
        assert_eq!(NodeConfig::load(&plan[1].config_path).unwrap(), *c);
        assert_eq!(c.grpc_addr, "127.0.0.1:20003".parse().unwrap());
        assert_eq!(c.peer_addr, "127.0.0.1:20004".parse().unwrap());
        assert_eq!(c.http_addr, "127.0.0.1:20005".parse().unwrap());
        assert_eq!(c.peers[0].peer, "127.0.0.1:20001".parse().unwrap());
        assert!(fixed_ports(65528, 3).unwrap_err().is_usage());
        assert_eq!(fixed_ports(65527, 3).unwrap().last(), Some(&65535));
        let other = scratch("bad-nodes");
        assert!(
            prepare_configs(&other, Some(0), None, None, true, None)
                .unwrap_err()
                .is_usage()
        );
        assert!(
            prepare_configs(&other, Some(PEERS_MAX as u64 + 1), None, None, true, None)
                .unwrap_err()
                .is_usage()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    /// --advertise-host: fresh configs listen on every interface, advertise
    /// HOST:PORT and name each other by it, their certificates name it, and
    /// they pass every check `--check-config` makes; a bad host is refused.
    #[test]
    fn advertise_host_in_fresh_configs() {
        let dir = scratch("advertise");
        let plan = prepare_configs(&dir, Some(3), None, None, false, Some("localhost")).unwrap();
        for p in &plan {
            let c = &p.config;
            assert!(c.grpc_addr.ip().is_unspecified() && c.peer_addr.ip().is_unspecified());
            assert_eq!(
                c.grpc_advertised(),
                HostPort::new("localhost", c.grpc_addr.port()).unwrap()
            );
            assert_eq!(
                c.http_advertised(),
                HostPort::new("localhost", c.http_addr.port()).unwrap()
            );
            assert!(c.peers.iter().all(|peer| peer.peer.host_str() == "localhost"));
            assert_eq!(&NodeConfig::load(&p.config_path).unwrap(), c);
            crate::server::check::check(c).unwrap();
        }
        let other = scratch("advertise-bad");
        let e = prepare_configs(&other, Some(1), None, None, false, Some("no_such host")).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("--advertise-host"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    /// --proposal-queue-max lands in every fresh config, is ignored on reuse, and is refused out of range.
    #[test]
    fn proposal_queue_max_in_fresh_configs() {
        let dir = scratch("queue-max");
        let plan = prepare_configs(&dir, None, None, Some(2), true, None).unwrap();
        for p in &plan {
            assert_eq!(p.config.raft.proposal_queue_max, 2);
            assert_eq!(NodeConfig::load(&p.config_path).unwrap(), p.config);
        }
        let again = prepare_configs(&dir, None, None, Some(8), true, None).unwrap();
        assert_eq!(again, plan, "a second run reuses the configs, ignoring the flag");
        let other = scratch("queue-max-bad");
        assert!(
            prepare_configs(&other, None, None, Some(0), true, None)
                .unwrap_err()
                .is_usage()
        );
        assert!(
            prepare_configs(&other, None, None, Some(PROPOSAL_QUEUE_MAX_LIMIT + 1), true, None)
                .unwrap_err()
                .is_usage()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    /// A DIR whose configs do not describe one region is refused, naming the file.
    #[test]
    fn inconsistent_configs_are_refused() {
        let dir = scratch("inconsistent");
        let plan = prepare_configs(&dir, Some(3), None, None, true, None).unwrap();
        std::fs::remove_file(&plan[2].config_path).unwrap();
        let e = prepare_configs(&dir, None, None, None, true, None).unwrap_err();
        assert!(e.is_usage(), "{e}");
        assert!(e.to_string().contains("node-1.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// cluster.json has exactly the contract's keys, and round-trips.
    #[test]
    fn cluster_json_shape() {
        let file = ClusterFile {
            architecture: None,
            endpoints: None,
            nodes: vec![ClusterNode {
                id: 1,
                region: "us-east".into(),
                grpc: "127.0.0.1:7001".parse().unwrap(),
                peer: Some("127.0.0.1:7003".parse().unwrap()),
                http: Some("127.0.0.1:7002".parse().unwrap()),
                pid: Some(1234),
                cmd: vec![
                    "/bin/reservoir".into(),
                    "node".into(),
                    "--config".into(),
                    "/d/node-1.toml".into(),
                ],
            }],
            control: None,
            ledger: None,
            tls: Some(reservoir_client::TlsInfo {
                ca_file: "tls/ca.pem".into(),
            }),
            credentials: [("shop".to_string(), PathBuf::from("credentials/shop.key"))].into(),
            control_token_file: None,
        };
        let value = serde_json::to_value(&file).unwrap();
        let expected = serde_json::json!({"nodes": [{
            "id": 1, "region": "us-east", "grpc": "127.0.0.1:7001", "peer": "127.0.0.1:7003",
            "http": "127.0.0.1:7002",
            "pid": 1234, "cmd": ["/bin/reservoir", "node", "--config", "/d/node-1.toml"],
        }], "tls": {"ca_file": "tls/ca.pem"}, "credentials": {"shop": "credentials/shop.key"}});
        assert_eq!(value, expected);
        let back: ClusterFile = serde_json::from_value(value).unwrap();
        assert_eq!(back, file);
    }

    /// An atomic write replaces the file and leaves no temporary behind.
    #[test]
    fn atomic_write_replaces() {
        let dir = scratch("atomic");
        let path = dir.join("cluster.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Serves one canned HTTP answer on a fresh loopback port; returns the port's address.
    async fn canned(answer: &'static [u8]) -> SocketAddr {
        let listener = AsyncListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            stream.write_all(answer).await.unwrap();
        });
        addr
    }

    /// The probe reads the status code and refuses garbage and oversized answers.
    #[tokio::test]
    async fn probe_reads_the_status() {
        let addr = canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(probe_ready(addr).await.unwrap(), 200);
        let addr = canned(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(probe_ready(addr).await.unwrap(), 503);
        let addr = canned(b"SSH-2.0-nope\r\n").await;
        assert!(probe_ready(addr).await.is_err());
        let addr = canned(b"HTTP/1.1 20").await;
        assert!(probe_ready(addr).await.is_err());
        // A whole answer, but a body over READY_BODY_BYTES_MAX.
        let oversized = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n{}",
            "x".repeat(2000)
        );
        let addr = canned(Box::leak(oversized.into_bytes().into_boxed_slice())).await;
        let e = probe_ready(addr).await.unwrap_err();
        assert!(matches!(e, reservoir_client::HttpError::TooLarge { .. }), "{e:?}");
    }

    /// A closed port is an error, not a hang.
    #[tokio::test]
    async fn probe_of_a_closed_port_fails() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(probe_ready(addr).await.is_err());
    }

    /// A NodeProcess running `sh -c script` in place of a node, logging to `DIR/node-{id}.log`.
    fn fake_node(dir: &Path, id: u64, script: &str) -> NodeProcess {
        let ports = free_ports(PORTS_PER_NODE).unwrap();
        let mut config = fresh_configs(dir, &ports, &RaftTuning::default(), None, None)
            .remove(0)
            .config;
        config.node_id = id;
        let cmd: Vec<String> = ["/bin/sh", "-c", script].map(String::from).to_vec();
        let log_path = log_path(dir, id);
        let child = spawn_logged(&cmd, &log_path, &format!("starting node {id}")).unwrap();
        NodeProcess {
            id,
            config,
            log_path,
            cmd,
            pid: child.id().unwrap(),
            child,
            exited: None,
        }
    }

    /// Waits (with a deadline) until a node's log contains `text`.
    async fn wait_for_log(node: &NodeProcess, text: &str) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&node.log_path)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(Instant::now() < give_up, "node {} never logged {text:?}", node.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// stop_all ends children that obey SIGTERM at once, SIGKILLs one that ignores it after the grace, and reaps all.
    #[tokio::test]
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    async fn stop_all_terms_then_kills() {
        use std::os::unix::process::ExitStatusExt;
        let dir = scratch("stop");
        let mut nodes = vec![
            fake_node(&dir, 1, "exec sleep 30"),
            fake_node(&dir, 2, "trap '' TERM; echo trapped; exec sleep 30"),
        ];
        wait_for_log(&nodes[1], "trapped").await;
        let started = Instant::now();
        stop_all(&mut nodes, Duration::from_millis(500)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stop_all took {:?}",
            started.elapsed()
        );
        assert_eq!(nodes[0].exited.unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(nodes[1].exited.unwrap().signal(), Some(libc::SIGKILL));
        for n in &nodes {
            // SAFETY: signal 0 only checks whether the pid exists.
            let alive = unsafe { libc::kill(n.pid as libc::pid_t, 0) } == 0;
            assert!(!alive, "node {} (pid {}) left behind", n.id, n.pid);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A child that exits while starting fails the wait at once, naming the node and showing its log.
    #[tokio::test]
    async fn wait_ready_reports_an_exited_child() {
        let dir = scratch("exited");
        let mut nodes = vec![fake_node(&dir, 1, "echo cannot bind; exit 3")];
        let e = wait_ready(&mut nodes, Duration::from_secs(10)).await.unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("node 1 (pid "), "{text}");
        assert!(text.contains("exited while starting: exit status: 3"), "{text}");
        assert!(
            text.contains("--- reservoir up: starting node 1 ---\n    cannot bind"),
            "{text}"
        );
        stop_all(&mut nodes, Duration::from_secs(1)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A node that never becomes ready fails the wait at the deadline with its last probe result.
    #[tokio::test]
    async fn wait_ready_gives_up_at_the_deadline() {
        let dir = scratch("deadline");
        let mut nodes = vec![fake_node(&dir, 1, "exec sleep 30")];
        // Its HTTP port came from free_ports and nothing listens there.
        let e = wait_ready(&mut nodes, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not ready after"), "{e}");
        stop_all(&mut nodes, Duration::from_secs(1)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
