//! A short black-friday against a real `reservoir up --nodes-per-region 1
//! --wan none` cluster: the load tester stocks its catalog, spikes one
//! region while the hot SKUs sell out, and reconciles with the ledger —
//! oversell 0, the audit balanced, and every confirmed unit settled once;
//! the server sampler read every node once a second.
//!
//! The `reservoir` binary is `RESERVOIR_BIN` if set, else built with
//! `cargo build -p reservoir-node` into this test's target directory (a
//! no-op when fresh). The loadtest crate does not depend on the node crate;
//! only this test runs its binary.

use std::io::Read as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reservoir_loadtest::app::{self, AppOptions};
use reservoir_loadtest::scenario::{BuiltIn, Scenario};
use reservoir_loadtest::target::TargetKind;

/// How long `up` has to write `cluster.json` (debug nodes on two busy cores).
const CLUSTER_DEADLINE: Duration = Duration::from_secs(90);
/// How long `up` has to stop after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How often the test polls for the cluster file and for exits.
const POLL: Duration = Duration::from_millis(100);

/// The `reservoir` binary.
fn reservoir_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("RESERVOIR_BIN") {
        return PathBuf::from(path);
    }
    // The test runs as <target>/<profile>/deps/<name>-<hash>.
    let test_exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .expect("the profile dir lies in a target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the loadtest package lies in the workspace root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "reservoir-node",
            "--bin",
            "reservoir",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build -p reservoir-node failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    profile_dir.join("reservoir")
}

/// `reservoir up` as a child; stopped (SIGTERM, then SIGKILL) on drop, and
/// killed by the kernel if the test process dies first.
struct Up {
    child: Child,
    dir: tempfile::TempDir,
}

impl Up {
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    fn start() -> Up {
        let dir = tempfile::Builder::new()
            .prefix("reservoir-loadtest-up-")
            .tempdir()
            .expect("temporary folder");
        let log = std::fs::File::create(dir.path().join("up.log")).expect("log file");
        let mut cmd = Command::new(reservoir_exe());
        cmd.args([
            "up",
            "--nodes-per-region",
            "1",
            "--wan",
            "none",
            "--no-demo",
            "--dir",
        ])
        .arg(dir.path().join("cluster"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
        // SAFETY: prctl(2) only, in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("reservoir up starts");
        Up { child, dir }
    }

    fn cluster_file(&self) -> PathBuf {
        self.dir.path().join("cluster").join("cluster.json")
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("up.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        while !self.cluster_file().is_file() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("reservoir up exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no cluster.json within {CLUSTER_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Up {
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seconds-long black-friday against one node per region: no oversell, a
/// balanced audit, and settled units equal to the units seen confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_friday_against_a_cluster() {
    let mut up = Up::start();
    up.wait_ready().await;
    let mut scenario = Scenario::built_in(BuiltIn::BlackFriday);
    scenario.duration_s = 8.0;
    scenario.rate_per_region = 15.0;
    scenario.catalog.skus = 30;
    scenario.sessions.hold_ttl_ms = 1_500;
    scenario.sessions.think_ms = 50;
    let report = app::run(AppOptions {
        scenario,
        target: TargetKind::Reservoir,
        cluster: Some(up.cluster_file()),
        seed: 5,
        connections_per_region: 1,
        progress: false,
        stop_rx: None,
    })
    .await
    .unwrap_or_else(|e| panic!("load test failed: {e}\n{}", up.log()));
    eprintln!("{}", report.summary());
    let t = &report.totals;
    assert_eq!(t.oversell_units, 0, "oversold");
    assert!(t.audit_balanced, "audit not balanced: {:?}", report.server_notes);
    assert!(
        t.settled_caught_up,
        "settlement did not catch up: {:?}",
        report.server_notes
    );
    assert!(
        t.settled_matches_confirmed,
        "settled != confirmed: {:?}",
        report.server_notes
    );
    assert!(t.sold > 0, "nothing sold");
    assert!(report.skus.iter().all(|s| s.settled <= s.stocked));
    let spike = &report.windows[0];
    assert!(spike.end_s > spike.start_s, "the spike window is marked");
    // The server sampler read every node's /status, and its RSS (from
    // /status or, for binaries that do not report it, from /proc).
    let servers = report.servers.as_ref().expect("a servers section for Reservoir");
    assert_eq!(servers.nodes.len(), 3, "one node per region");
    for n in &servers.nodes {
        assert!(n.samples_answered >= 5, "node {}: {n:?}", n.id);
        assert!(n.rss_peak_bytes.is_some_and(|b| b > 0), "node {}: no RSS", n.id);
    }
    assert_eq!(
        servers.leader_holds().len(),
        3,
        "a leader's holds in every region"
    );
}
