//! The `reservoir` binary as a user runs it: exit codes and the one-line
//! errors of the command line, config loading, the client and `up`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const RESERVOIR: &str = env!("CARGO_BIN_EXE_reservoir");

/// Runs `reservoir args...` to completion.
fn reservoir(args: &[&str]) -> Output {
    Command::new(RESERVOIR)
        .args(args)
        .output()
        .expect("the reservoir binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh, empty directory under the system temp dir, unique per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reservoir-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A complete node config whose `node_id` is `node_id`.
fn config_text(node_id: u64, data_dir: &Path) -> String {
    format!(
        "node_id = {node_id}\nregion = \"us-east\"\ngrpc_addr = \"127.0.0.1:7001\"\n\
         peer_addr = \"127.0.0.1:7003\"\nhttp_addr = \"127.0.0.1:7002\"\ndata_dir = {:?}\n\
         standalone = true\ninsecure = true\n\n[[peers]]\nid = 1\npeer = \"127.0.0.1:7003\"\n",
        data_dir.display().to_string()
    )
}

/// `--version` prints the name and version.
#[test]
fn version() {
    let out = reservoir(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("reservoir {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A config with a bad field makes `reservoir node` exit 2 with one line naming the field.
#[test]
fn node_with_bad_config_exits_2_naming_the_field() {
    let dir = scratch("bad-config");
    let path = dir.join("node.toml");
    std::fs::write(&path, config_text(0, &dir.join("data"))).unwrap();
    let out = reservoir(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("node_id"), "{err}");
    assert!(err.contains("node.toml"), "{err}");

    std::fs::write(&path, config_text(1, &dir.join("data")) + "colour = \"blue\"\n").unwrap();
    let out = reservoir(&["node", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("colour"), "{}", stderr(&out));

    let out = reservoir(&["node", "--config", dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client command with nothing listening exits 1 with one clear line.
#[test]
fn client_without_a_node_exits_1_with_one_line() {
    for addr in ["127.0.0.1:1", "http://127.0.0.1:1"] {
        let out = reservoir(&["reserve", "--addr", addr, "--sku", "SKU-1", "--qty", "1"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: cannot connect to 127.0.0.1:1: "), "{err}");
        assert!(out.stdout.is_empty());
    }
}

/// Bad arguments are usage errors: exit 2.
#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["reserve", "--addr", "127.0.0.1", "--sku", "S", "--qty", "1"][..],
        &["reserve", "--addr", "127.0.0.1:1", "--sku", "S"],
        &["stock", "--addr", "127.0.0.1:1", "--sku", "S", "--delta", "many"],
        &["frobnicate"],
    ] {
        let out = reservoir(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// `up` (three regions) with an option it cannot use exits 2 with one line naming it, and writes nothing into DIR.
#[test]
fn up_three_regions_with_a_bad_option_exits_2() {
    let dir = scratch("up-multi");
    for (args, named) in [
        (&["--nodes", "3"][..], "--nodes-per-region"),
        (&["--nodes-per-region", "0"], "--nodes-per-region"),
        (&["--nodes-per-region", "8"], "--nodes-per-region"),
        (&["--policy", "random"], "policy"),
        (&["--wan", "moon"], "WAN profile"),
    ] {
        let mut all = vec!["up", "--dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = reservoir(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{args:?} wrote into DIR: {left:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `up` on a DIR holding a bad node config refuses to start, naming the file and field, exit 2.
#[test]
fn up_with_a_bad_config_in_dir_exits_2() {
    let dir = scratch("up-bad-config");
    std::fs::write(
        dir.join("node-1.toml"),
        config_text(1, &dir.join("node-1/data")).replace("us-east", "US East"),
    )
    .unwrap();
    let out = reservoir(&["up", "--standalone", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("node-1.toml"), "{}", stderr(&out));
    assert!(stderr(&out).contains("region"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `up` whose node cannot start (its gRPC port is taken) names the node, shows its log, exits 1.
#[test]
fn up_reports_a_node_that_cannot_start() {
    let dir = scratch("up-port-taken");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    if port == u16::MAX {
        return; // No room for the HTTP port after it; vanishingly rare.
    }
    let started = Instant::now();
    let out = reservoir(&[
        "up",
        "--standalone",
        "--dir",
        dir.to_str().unwrap(),
        "--nodes",
        "1",
        "--base-port",
        &port.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("node 1 (pid "), "{err}");
    assert!(err.contains("exited while starting"), "{err}");
    assert!(err.contains("--- reservoir up: starting node 1 ---"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    assert!(dir.join("node-1.toml").exists() && dir.join("node-1.log").exists());
    assert!(
        !dir.join("cluster.json").exists(),
        "cluster.json written for a region that never came up"
    );
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends `signal` to `pid`.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// True while a process with this pid exists (a zombie counts).
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the pid exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Starts `reservoir up --standalone --dir DIR` and waits (with a deadline) for its cluster.json.
fn start_region(dir: &Path) -> (std::process::Child, serde_json::Value) {
    // A previous run's file would be read before `up` removes it.
    let cluster_path = dir.join("cluster.json");
    let _ = std::fs::remove_file(&cluster_path);
    let mut up = Command::new(RESERVOIR)
        .args(["up", "--standalone", "--dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&cluster_path) {
            return (up, serde_json::from_str(&text).expect("cluster.json is JSON"));
        }
        if let Some(status) = up.try_wait().unwrap() {
            panic!("up exited before the region was ready: {status}");
        }
        if Instant::now() > give_up {
            kill(up.id(), libc::SIGTERM);
            let _ = up.wait();
            panic!("no cluster.json after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `up` and checks that it exits 0 within a deadline, leaving no node behind.
fn stop_region(mut up: std::process::Child, cluster: &serde_json::Value) {
    kill(up.id(), libc::SIGTERM);
    let give_up = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < give_up, "up still running 30 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    for node in cluster["nodes"].as_array().unwrap() {
        let pid = node["pid"].as_u64().unwrap() as u32;
        assert!(!alive(pid), "node {} (pid {pid}) left behind", node["id"]);
    }
}

/// `up` starts a ready three-node region, describes it in cluster.json, stops it cleanly on SIGTERM, and a second run reuses its ports.
#[test]
fn up_runs_a_region_and_stops_it_cleanly() {
    let dir = scratch("up-region");
    let (up, cluster) = start_region(&dir);
    let nodes = cluster["nodes"].as_array().expect("cluster.json has nodes");
    assert_eq!(nodes.len(), 3);
    let exe = std::fs::canonicalize(RESERVOIR).unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let id = i as u64 + 1;
        let keys: Vec<&str> = node.as_object().unwrap().keys().map(String::as_str).collect();
        for key in ["id", "region", "grpc", "http", "pid", "cmd"] {
            assert!(keys.contains(&key), "node {id} lacks {key:?}: {node}");
        }
        assert_eq!(node["id"].as_u64(), Some(id));
        assert_eq!(node["region"].as_str(), Some("us-east"));
        assert!(node["grpc"].as_str().unwrap().starts_with("127.0.0.1:"), "{node}");
        assert!(alive(node["pid"].as_u64().unwrap() as u32), "{node}");
        let cmd: Vec<&str> = node["cmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let config = dir.canonicalize().unwrap().join(format!("node-{id}.toml"));
        assert_eq!(
            cmd,
            [
                exe.to_str().unwrap(),
                "node",
                "--config",
                config.to_str().unwrap()
            ]
        );
    }
    stop_region(up, &cluster);

    let (up, again) = start_region(&dir);
    for (a, b) in cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["nodes"].as_array().unwrap())
    {
        assert_eq!(
            (&a["grpc"], &a["http"]),
            (&b["grpc"], &b["http"]),
            "second run moved node {}",
            a["id"]
        );
    }
    stop_region(up, &again);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `reservoir args...` with `env` added to the environment.
fn reservoir_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(RESERVOIR)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the reservoir binary runs")
}

/// `node --check-config` on a good config prints one line and exits 0
/// without starting: its client port may be taken (nothing binds) and its
/// data dir is not created (no database opens); the environment and
/// RESERVOIR_CONFIG apply as they would to a running node.
#[test]
fn check_config_accepts_a_good_config_without_starting() {
    let dir = scratch("check-good");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = dir.join("data");
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        config_text(1, &data).replace("127.0.0.1:7001", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let out = reservoir(&["node", "--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "config OK: node 1 (region us-east), client 127.0.0.1:{port}, peer 127.0.0.1:7003, \
             http 127.0.0.1:7002 (INSECURE: plaintext, no authentication)\n"
        )
    );
    assert!(!data.exists(), "--check-config made the data dir");
    let out = reservoir_env(
        &["node", "--check-config"],
        &[
            ("RESERVOIR_CONFIG", path.to_str().unwrap()),
            ("RESERVOIR_GRPC_ADDR", "0.0.0.0:7001"),
            ("RESERVOIR_GRPC_ADVERTISE", "localhost:7001"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("config OK: node 1 (region us-east), client localhost:7001, "),
        "{line}"
    );
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `node --check-config` on a broken config exits 2 with one line naming
/// the field (and the variable, when the environment set it): a bad
/// value, an unknown variable, a listener on 0.0.0.0 with no advertised
/// address, a data dir that cannot be made.
#[test]
fn check_config_refuses_a_broken_config_naming_the_field() {
    let dir = scratch("check-bad");
    let path = dir.join("node.toml");
    std::fs::write(&path, config_text(1, &dir.join("data"))).unwrap();
    std::fs::write(dir.join("file"), b"x").unwrap();
    let config = path.to_str().unwrap();
    let under_a_file = dir.join("file").join("data");
    for (env, named) in [
        (
            vec![("RESERVOIR_NODE_ID", "0")],
            "field `node_id` (from the environment, RESERVOIR_NODE_ID)",
        ),
        (
            vec![("RESERVOIR_COLOUR", "blue")],
            "RESERVOIR_COLOUR (from the environment)",
        ),
        (
            vec![("RESERVOIR_RAFT__HEARTBEAT_MS", "soon")],
            "RESERVOIR_RAFT__HEARTBEAT_MS",
        ),
        (
            vec![("RESERVOIR_PEER_ADDR", "0.0.0.0:7003")],
            "field `peer_advertise`",
        ),
        (
            vec![("RESERVOIR_PEERS", r#"[{id = 1, peer = "bad_host:7003"}]"#)],
            "RESERVOIR_PEERS",
        ),
        (
            vec![("RESERVOIR_DATA_DIR", under_a_file.to_str().unwrap())],
            "field `data_dir` (from the environment, RESERVOIR_DATA_DIR)",
        ),
    ] {
        let out = reservoir_env(&["node", "--config", config, "--check-config"], &env);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{env:?}: {err}");
        assert!(err.contains(named) && err.contains("node.toml"), "{env:?}: {err}");
        assert!(out.stdout.is_empty(), "{env:?}");
    }
    std::fs::write(&path, config_text(1, &dir.join("data")).replace("7002", "0x")).unwrap();
    let out = reservoir(&["node", "--config", config, "--check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`http_addr`"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `node --check-config` verifies TLS as peers will: `up`'s secure config
/// passes; advertising a host its certificate does not name, or a missing
/// key file, is refused naming the `tls` field.
#[test]
fn check_config_verifies_the_certificate_names_the_advertised_host() {
    let dir = scratch("check-tls");
    let plan = reservoir_node::up::prepare_configs(&dir, Some(1), None, None, false, None).unwrap();
    let config = plan[0].config_path.to_str().unwrap();
    let out = reservoir(&["node", "--config", config, "--check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let peer = plan[0].config.peer_addr.port().to_string();
    let elsewhere = format!("elsewhere.example:{peer}");
    let peers = format!("[{{id = 1, peer = \"{elsewhere}\"}}]");
    let out = reservoir_env(
        &["node", "--config", config, "--check-config"],
        &[
            ("RESERVOIR_PEER_ADVERTISE", &elsewhere),
            ("RESERVOIR_PEERS", &peers),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("field `tls.cert_file`") && err.contains("elsewhere.example"),
        "{err}"
    );
    let out = reservoir_env(
        &["node", "--config", config, "--check-config"],
        &[("RESERVOIR_TLS__KEY_FILE", "/nonexistent/node.key")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("field `tls.key_file` (from the environment, RESERVOIR_TLS__KEY_FILE)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A topology of three regions of three nodes, the ledger in us-east, the
/// TLS files where `deploy init` writes them (`secrets_dir` = `out`).
fn topology_text(out: &Path, data: &Path) -> String {
    let mut text = format!(
        "home = \"us-east\"\nsecrets_dir = {:?}\ndata_dir = {:?}\n",
        out.display().to_string(),
        data.display().to_string()
    );
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

/// `deploy init` writes a config per node that `node --check-config`
/// accepts (the certificate names the node's host), cluster.json names the
/// nodes by host, a second run keeps the CA, and a bad topology exits 2
/// naming the field.
#[test]
fn deploy_init_writes_configs_that_pass_check_config() {
    let dir = scratch("deploy");
    let out = dir.join("out");
    let topology = dir.join("topology.toml");
    std::fs::write(&topology, topology_text(&out, &dir.join("data"))).unwrap();
    let init = || {
        reservoir(&[
            "deploy",
            "init",
            "--topology",
            topology.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let first = init();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    for id in 1..=9 {
        let config = out.join(format!("nodes/node-{id}.toml"));
        let check = reservoir(&["node", "--config", config.to_str().unwrap(), "--check-config"]);
        assert_eq!(check.status.code(), Some(0), "node {id}: {}", stderr(&check));
        let line = String::from_utf8_lossy(&check.stdout);
        assert!(
            line.starts_with(&format!("config OK: node {id} (region ")),
            "{line}"
        );
        assert!(
            line.contains(":7000, peer ") && line.contains(", http 0.0.0.0:7002"),
            "{line}"
        );
    }
    let cluster: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(cluster["nodes"][4]["grpc"], "eu-west-2:7000");
    assert_eq!(cluster["tls"]["ca_file"], "tls/ca.pem");
    let ca = std::fs::read(out.join("tls/ca.pem")).unwrap();
    let again = init();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("kept the CA"));
    assert_eq!(
        std::fs::read(out.join("tls/ca.pem")).unwrap(),
        ca,
        "the CA was replaced"
    );
    // A node whose host is not what its certificate names fails the check.
    let moved = reservoir_env(
        &[
            "node",
            "--config",
            out.join("nodes/node-2.toml").to_str().unwrap(),
            "--check-config",
        ],
        &[("RESERVOIR_GRPC_ADVERTISE", "us-east-9:7000")],
    );
    assert_eq!(moved.status.code(), Some(2), "{}", stderr(&moved));
    assert!(stderr(&moved).contains("tls.cert_file"), "{}", stderr(&moved));
    std::fs::write(
        &topology,
        topology_text(&out, &dir.join("data")).replace("\"eu-west-2\"", "\"eu_west_2\""),
    )
    .unwrap();
    let bad = init();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let err = stderr(&bad);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("regions.nodes.host") && err.contains("eu_west_2"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
