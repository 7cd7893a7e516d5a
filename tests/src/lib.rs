//! reservoir-tests: cluster-level tests against real processes.
//!
//! Each test starts `reservoir up` on a fresh temporary directory, as a
//! child of the test — one standalone region (`up --standalone`) or the
//! three-region cluster with its ledger, WAN link emulators and control API
//! (or, `ClusterOptions::architecture`, one of the designs it is compared
//! with), both as a [`Cluster`] — and talks to it the way a client would:
//! gRPC on loopback, `127.0.0.1` or `localhost` (TLS trusting the cluster's development CA, with the
//! API keys `up` made: the `shop` key for every Inventory call, the `admin`
//! key for Admin calls; plaintext without a key for a cluster started with
//! `ClusterOptions::insecure`), the nodes' HTTP `/status`, and the control
//! API (with its token). The
//! harness here is what the tests share; the tests themselves are one test
//! binary, `tests/cluster/` (`region_*`, `bad_input`, `cluster_*`,
//! `architectures`, `load_tester`), run one at a time.
//!
//! Invariants the harness keeps:
//! - nothing is left behind: [`Cluster`]'s `Drop` stops `up`
//!   with SIGTERM (and SIGKILL after a grace) and stop every node the test
//!   restarted by hand, even when the test panics; every child also asks the
//!   kernel for SIGTERM if the test process dies (`PR_SET_PDEATHSIG`);
//! - every wait is a poll with a deadline, never a fixed sleep;
//! - when a test panics, the cluster's directory is kept and the tail of
//!   each log is printed, so the failure can be read afterwards.
//!
//! Layout:
//! - [`reservoir_exe`]: the `reservoir` binary, rebuilt first if stale;
//! - [`Cluster`] (`cluster.rs`): a standalone region or the three-region
//!   cluster, as [`ClusterOptions`] say: start, connect clients, kill -9 and
//!   restart nodes (through the control API when there is one), find region
//!   and ledger leaders, read `/status`, add stock, audit (until settled),
//!   partition and heal links, stop and check that no process is left,
//!   start again;
//! - [`Shopper`] (`shop.rs`): bounded load in one region that records every
//!   acknowledged reservation, [`resolve`] and [`verify_records`] to check
//!   them afterwards;
//! - [`reserve`], [`confirm`], [`release`]: one call sent to a region's
//!   nodes in turn until it is answered, with `reservoir_client`'s
//!   [`Rotation`] and [`retry`] (what the API says is safe to retry);
//! - small request builders, and HTTP GET and POST (`reservoir_client::http`)
//!   with the harness's timeouts.
//!
//! Caveats: Linux only (`PR_SET_PDEATHSIG`, signals by pid, `/proc`). A
//! stale binary is rebuilt with `cargo build -p reservoir-node` into the
//! test's own target directory; set `RESERVOIR_BIN` to use another binary
//! instead.

use std::collections::{BTreeMap, BTreeSet};

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

pub use reservoir_client::HostPort;
use reservoir_client::HttpError;
pub use reservoir_client::connect::unix_ms;
use reservoir_client::reason_of;
pub use reservoir_client::{ClientChannel, Credentials, Retried, Rotation, is_retryable, retry};
use reservoir_proto::v1;
use reservoir_proto::v1::inventory_client::InventoryClient;
use tonic::{Code, Status};

pub use reservoir_client::ClusterNode;
/// `GET /status`, as the client crate reads it.
pub use reservoir_client::{Bucket, GroupView, NodeStatus, Role, SnapshotStats};

/// What `up` writes for every node of its `cluster.json` (optional in the
/// schema, for hand-written files): the harness reads only files `up`
/// wrote.
pub trait UpNode {
    /// The node's process.
    fn pid(&self) -> u32;
    /// The node's HTTP address.
    fn http(&self) -> HostPort;
}

impl UpNode for ClusterNode {
    fn pid(&self) -> u32 {
        self.pid
            .unwrap_or_else(|| panic!("cluster.json gives node {} no pid", self.id))
    }
    fn http(&self) -> HostPort {
        self.http
            .clone()
            .unwrap_or_else(|| panic!("cluster.json gives node {} no http address", self.id))
    }
}

mod cluster;
mod operate;
mod shop;

pub use cluster::*;
pub use shop::*;

/// How long a standalone `up` has to write `cluster.json` (its own
/// readiness deadline is 30 s; a debug build on a loaded two-core machine
/// needs a margin).
pub const STANDALONE_START_DEADLINE: Duration = Duration::from_secs(45);
/// How long a three-region `up` has to write `cluster.json`: its own
/// readiness deadline is 60 s; nine debug processes on two loaded cores need
/// most of it.
pub const CLUSTER_START_DEADLINE: Duration = Duration::from_secs(90);
/// How long a standalone region may take to agree on a leader.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(15);
/// How long a group of the three-region cluster (a region's, or the ledger)
/// may take to agree on a leader; an election is well under 2 s, the rest
/// is a loaded machine.
pub const GROUP_LEADER_DEADLINE: Duration = Duration::from_secs(20);
/// How long the rebalancer has to move stock where the tests expect it.
pub const REBALANCE_DEADLINE: Duration = Duration::from_secs(20);
/// How long settlement and the audit have to catch up after load stops or a
/// partition heals.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// Set this environment variable to keep every cluster's directory (logs,
/// data), not only those of failed tests.
pub const KEEP_ENV: &str = "RESERVOIR_TEST_KEEP";
/// How long one control-API call may take (a kill waits for the process).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted node has to answer `/readyz` with 200.
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long the live nodes have to converge on the same state.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(15);
/// How long `up` (or a hand-restarted node) has to exit after SIGTERM before
/// it gets SIGKILL. `up` gives its nodes 10 s, and each node its calls 5 s.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a killed process has to disappear (be reaped by its parent).
pub const GONE_DEADLINE: Duration = Duration::from_secs(5);
/// How long one retried call may keep trying before the test gives up on it.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(15);
/// The pause between polls, and between retries of one call.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a client waits for a TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits for one call: longer than a node's own commit
/// timeout (5 s) and forward timeout (6 s), so the node answers first.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one HTTP GET may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 30;

/// Serializes the cluster tests (cargo runs a binary's tests in parallel,
/// and two clusters must not share two cores); every test holds it while
/// its cluster runs, and a test that panicked releases it as it unwinds.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

// ----- the binary -----

/// The `reservoir` binary the region runs: `RESERVOIR_BIN` if set, else
/// `reservoir` in this test's target directory, rebuilt first (once per test
/// process) if any source it is built from is newer.
///
/// A test of another package cannot use `CARGO_BIN_EXE_reservoir`. Under
/// `cargo test --workspace` the binary is fresh already (`node`'s own tests
/// need it); after a change to `node`, `cargo test -p reservoir-tests` would
/// otherwise run a stale one. The check is by modification time, as cargo's
/// own: building unconditionally would cost a second build of half the
/// dependencies, since `-p reservoir-node` alone unifies features differently.
pub fn reservoir_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| match std::env::var_os("RESERVOIR_BIN") {
        Some(path) => PathBuf::from(path),
        None => fresh_reservoir(),
    })
}

/// The workspace crates the binary is built from, and the files beside them.
const BINARY_INPUTS: [&str; 7] = [
    "proto",
    "client",
    "tokens",
    "raft",
    "node",
    "Cargo.toml",
    "Cargo.lock",
];

fn fresh_reservoir() -> PathBuf {
    // The test runs as <target>/<profile>/deps/<name>-<hash>.
    let test_exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let exe = profile_dir.join("reservoir");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lies in the workspace root");
    let built = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
    let newest_input = BINARY_INPUTS
        .iter()
        .filter_map(|input| newest_mtime(&workspace.join(input)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest_input)
        && built >= newest
    {
        return exe;
    }

    let target_dir = profile_dir
        .parent()
        .expect("the profile dir lies in a target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let output = Command::new(cargo)
        .args(["build", "--quiet", "-p", "reservoir-node", "--bin", "reservoir"])
        .arg("--profile")
        .arg(profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build -p reservoir-node failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(exe.is_file(), "cargo built no {}", exe.display());
    eprintln!("harness: built {} in {:?}", exe.display(), started.elapsed());
    exe
}

/// The newest modification time of a file, or of any file under a directory
/// (skipping `target`).
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name() != "target")
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

// ----- calls with retries -----

/// `Inventory.Reserve`, retried: the reservation.
pub async fn reserve(
    nodes: &Rotation,
    request: &v1::ReserveRequest,
    deadline: Duration,
) -> Retried<v1::Reservation> {
    retry(nodes, deadline, |channel| {
        let request = request.clone();
        async move { InventoryClient::new(channel).reserve(request).await }
    })
    .await
    .map(|answer| {
        answer
            .reservation
            .expect("a reserve answers with the reservation")
    })
}

/// `Inventory.Confirm` of everything held, retried: the reservation.
pub async fn confirm(
    nodes: &Rotation,
    reservation_id: &str,
    order_id: &str,
    deadline: Duration,
) -> Retried<v1::Reservation> {
    let request = v1::ConfirmRequest {
        reservation_id: reservation_id.to_string(),
        order_id: order_id.to_string(),
        lines: Vec::new(),
    };
    retry(nodes, deadline, |channel| {
        let request = request.clone();
        async move { InventoryClient::new(channel).confirm(request).await }
    })
    .await
    .map(|answer| {
        answer
            .reservation
            .expect("a confirm answers with the reservation")
    })
}

/// `Inventory.Release`, retried: the reservation.
pub async fn release(nodes: &Rotation, reservation_id: &str, deadline: Duration) -> Retried<v1::Reservation> {
    let request = v1::ReleaseRequest {
        reservation_id: reservation_id.to_string(),
    };
    retry(nodes, deadline, |channel| {
        let request = request.clone();
        async move { InventoryClient::new(channel).release(request).await }
    })
    .await
    .map(|answer| {
        answer
            .reservation
            .expect("a release answers with the reservation")
    })
}

/// The code and Reservoir reason of a refusal, for assertions.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, Option<String>) {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(status) => (status.code(), reason_of(&status)),
    }
}

// ----- requests -----

/// A line of `quantity` units of `sku`.
pub fn line(sku: &str, quantity: u64) -> v1::Line {
    v1::Line {
        sku: sku.to_string(),
        quantity,
    }
}

/// A reserve of `lines` under `request_id`, with the default TTL.
pub fn reserve_request(request_id: impl Into<String>, lines: Vec<v1::Line>) -> v1::ReserveRequest {
    v1::ReserveRequest {
        request_id: request_id.into(),
        lines,
        ttl_ms: 0,
        allow_partial: false,
        max_wait_ms: 0,
    }
}

/// The units of one SKU in a reservation's lines.
pub fn units_of(lines: &[v1::Line], sku: &str) -> u64 {
    lines.iter().filter(|l| l.sku == sku).map(|l| l.quantity).sum()
}

/// One SKU's balance sheet (single region) from an audit report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkuSheet {
    /// Stock ever added minus removed.
    pub stocked: u64,
    /// The region's available tokens.
    pub available: u64,
    /// The region's held tokens.
    pub held: u64,
    /// The region's confirmed tokens.
    pub confirmed: u64,
}

/// Every SKU's sheet in an audit, after asserting that the audit balances:
/// `balanced`, zero drift, and available + held + confirmed = stocked.
pub fn balanced_sheets(report: &v1::AuditReport) -> BTreeMap<String, SkuSheet> {
    assert!(report.balanced, "the audit does not balance: {report:#?}");
    assert!(report.missing_regions.is_empty(), "{report:#?}");
    report
        .skus
        .iter()
        .map(|s| {
            assert_eq!(s.drift, 0, "drift of {}: {report:#?}", s.sku);
            assert_eq!(s.regions.len(), 1, "one region for {}: {report:#?}", s.sku);
            let r = &s.regions[0];
            assert_eq!(r.drift, 0, "region drift of {}: {report:#?}", s.sku);
            let sheet = SkuSheet {
                stocked: s.stocked_total,
                available: r.available,
                held: r.held,
                confirmed: r.confirmed,
            };
            assert_eq!(
                sheet.available + sheet.held + sheet.confirmed,
                sheet.stocked,
                "available + held + confirmed != stocked for {}: {sheet:?}",
                s.sku
            );
            (s.sku.clone(), sheet)
        })
        .collect()
}

// ----- processes, channels, HTTP -----

/// A lazily connecting channel to a node's client address that presents
/// `credentials` (TLS trusting the cluster's CA, the API key with every
/// call; or plaintext without a key): the client settings of
/// `reservoir_client::connect`, with the harness's timeouts.
pub fn channel(credentials: &Credentials, addr: &HostPort) -> ClientChannel {
    let endpoint = credentials
        .endpoint(&addr.to_string())
        .expect("a host:port makes a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    credentials.wrap(endpoint.connect_lazy())
}

/// Spawns `command` with stdin closed and its output appended to `log`; the
/// child gets SIGTERM if the spawning thread (the test) dies first.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn spawn_logged(mut command: Command, log: &Path) -> io::Result<Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn signal(pid: u32, sig: libc::c_int, what: &str) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            eprintln!("harness: signal {sig} to {what} (pid {pid}) failed: {e}");
        }
    }
}

/// True while `pid` exists (a zombie counts until its parent reaps it).
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the pid exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Waits for our child to exit, up to `deadline`; then SIGKILLs it and panics.
async fn wait_child(child: &mut Child, deadline: Duration) -> ExitStatus {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("our child can be waited for") {
            return status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not exit within {deadline:?}", child.id());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// For `Drop`: waits (blocking) up to [`STOP_DEADLINE`] for a signalled
/// child, then SIGKILLs and reaps it.
fn stop_blocking(child: &mut Child) {
    let give_up = Instant::now() + STOP_DEADLINE;
    while Instant::now() < give_up {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    eprintln!("harness: pid {} ignored SIGTERM: SIGKILL", child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a file, indented.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}

/// A bounded HTTP GET ([`HTTP_TIMEOUT`]): the status code and body.
pub async fn http_get(addr: impl Into<HostPort>, path: &str) -> Result<(u16, String), HttpError> {
    reservoir_client::http::get(addr, path, HTTP_TIMEOUT).await
}

/// A bounded HTTP GET ([`HTTP_TIMEOUT`]) with `authorization: Bearer
/// {bearer}` when given: the status code and body. Used for the control API
/// of a three-region `up`.
pub async fn http_get_authorized(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), HttpError> {
    match bearer {
        Some(token) => reservoir_client::http::get_authorized(addr, path, token, HTTP_TIMEOUT).await,
        None => http_get(addr, path).await,
    }
}

/// A bounded HTTP POST of a JSON body, with `authorization: Bearer
/// {bearer}` when given: the status code and body. Used for the control API
/// of a three-region `up`.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    json: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    reservoir_client::http::post_json(addr, path, json, bearer, timeout).await
}

/// A node's `GET /status`, parsed.
pub async fn node_status(http: impl Into<HostPort>) -> io::Result<NodeStatus> {
    let (code, body) = http_get(http, "/status").await.map_err(io::Error::other)?;
    if code != 200 {
        return Err(io::Error::other(format!("/status answered {code}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The leader a group's nodes agree on, from each node's view
/// `(node, leader it names, whether it says it leads)`: a node that says it
/// leads and that at least `majority` nodes name. Otherwise what was seen,
/// for the caller's message.
pub fn agreed_leader(views: &[(u64, Option<u64>, bool)], majority: usize) -> Result<u64, String> {
    let mut named: BTreeMap<u64, usize> = BTreeMap::new();
    let mut leaders = BTreeSet::new();
    for &(id, names, leads) in views {
        if let Some(leader) = names {
            *named.entry(leader).or_default() += 1;
        }
        if leads {
            leaders.insert(id);
        }
    }
    named
        .iter()
        .find(|&(id, &votes)| votes >= majority && leaders.contains(id))
        .map(|(&leader, _)| leader)
        .ok_or_else(|| format!("named {named:?}, self-declared {leaders:?}"))
}
