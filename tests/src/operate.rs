//! New nodes for the membership tests: a config for a node the cluster
//! never had (a new id, free ports, an empty data directory, `join = true`,
//! a certificate from the cluster's development CA), started as the test's
//! child; a node's data deleted as a dead disk would; and the `reservoir`
//! operator commands run as an operator runs them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::{
    Cluster, ClusterNode, LOG_TAIL_LINES, NODE_READY_DEADLINE, POLL_INTERVAL, UpNode, alive, http_get,
    log_tail, reservoir_exe, spawn_logged,
};

/// The development CA's subject, as `reservoir up` makes it
/// (`node/src/up/secrets.rs`): a certificate it signs names it as issuer.
const DEV_CA_NAME: &str = "Reservoir development CA (reservoir up)";

/// A free loopback port (bound and released: good enough on a test box).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Cluster {
    /// A node's config file, `DIR/node-{id}.toml`.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir().join(format!("node-{id}.toml"))
    }

    /// Deletes node `id`'s data directory, as a dead disk would. Its
    /// process must be gone.
    pub fn wipe_data(&self, id: u64) {
        let pid = self.node(id).pid();
        assert!(!alive(pid), "node {id} (pid {pid}) is running");
        let config: toml::Table = std::fs::read_to_string(self.config_path(id))
            .expect("the node's config")
            .parse()
            .expect("the node's config is TOML");
        let data = config["data_dir"].as_str().expect("data_dir");
        std::fs::remove_dir_all(data).unwrap_or_else(|e| panic!("removing {data}: {e}"));
        eprintln!("harness: node {id}'s data ({data}) deleted");
    }

    /// Writes the config of a new node `id` of the region of node `like`
    /// (a copy of its config with a new id, free ports, an empty data
    /// directory, `join = true`, itself added to `peers`, and a certificate
    /// for its id), starts it as the test's child and waits for its
    /// `/healthz` (a joining node is not ready until it is added). Returns
    /// its peer address, which `add-node` takes.
    pub async fn start_new_node(&mut self, like: u64, id: u64) -> String {
        let dir = self.dir().to_path_buf();
        let mut config: toml::Table = std::fs::read_to_string(self.config_path(like))
            .expect("the model node's config")
            .parse()
            .expect("the model node's config is TOML");
        let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (grpc, peer, http) = (address(free_port()), address(free_port()), address(free_port()));
        config.insert("node_id".into(), (id as i64).into());
        config.insert("grpc_addr".into(), grpc.to_string().into());
        config.insert("peer_addr".into(), peer.to_string().into());
        config.insert("http_addr".into(), http.to_string().into());
        let data = dir.join(format!("node-{id}")).join("data");
        config.insert("data_dir".into(), data.display().to_string().into());
        config.insert("join".into(), true.into());
        let mut me = toml::Table::new();
        me.insert("id".into(), (id as i64).into());
        me.insert("peer".into(), peer.to_string().into());
        config
            .get_mut("peers")
            .and_then(|p| p.as_array_mut())
            .expect("peers")
            .push(me.into());
        let region = config["region"].as_str().expect("region").to_string();
        if let Some(tls) = config.get_mut("tls").and_then(|t| t.as_table_mut()) {
            let (cert, key) = node_certificate(&dir, id, &region);
            tls.insert("cert_file".into(), cert.display().to_string().into());
            tls.insert("key_file".into(), key.display().to_string().into());
        }
        let path = self.config_path(id);
        std::fs::write(&path, toml::to_string(&config).expect("config as TOML")).expect("write config");
        let cmd: Vec<String> = vec![
            reservoir_exe().display().to_string(),
            "node".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        let log = dir.join(format!("node-{id}.log"));
        let mut command = Command::new(&cmd[0]);
        command.args(&cmd[1..]);
        let mut child = spawn_logged(command, &log).expect("the new node starts");
        let pid = child.id();
        let give_up = Instant::now() + NODE_READY_DEADLINE;
        while !matches!(http_get(http, "/healthz").await, Ok((200, _))) {
            if let Some(status) = child.try_wait().expect("our child") {
                panic!(
                    "new node {id} exited: {status}\n{}",
                    log_tail(&log, LOG_TAIL_LINES)
                );
            }
            assert!(
                Instant::now() < give_up,
                "new node {id} not up after {NODE_READY_DEADLINE:?}\n{}",
                log_tail(&log, LOG_TAIL_LINES)
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.adopt(
            ClusterNode {
                id,
                region,
                grpc: grpc.into(),
                peer: Some(peer.into()),
                http: Some(http.into()),
                pid: Some(pid),
                cmd,
            },
            child,
        );
        eprintln!("harness: new node {id} started (pid {pid}), waiting to be added");
        peer.to_string()
    }

    /// Runs `reservoir ARGS --cluster DIR/cluster.json` (an operator
    /// command, with the admin key unless ARGS say `--role`) off the async
    /// threads, and returns its output.
    pub async fn operator(&self, args: &[&str]) -> Output {
        let cluster = self.dir().join("cluster.json").display().to_string();
        let mut all = args.to_vec();
        all.extend(["--cluster", &cluster]);
        self.reservoir(&all).await
    }

    /// Runs `reservoir ARGS` off the async threads, and returns its output.
    pub async fn reservoir(&self, args: &[&str]) -> Output {
        let mut command = Command::new(reservoir_exe());
        command.args(args);
        let shown = format!("reservoir {}", args.join(" "));
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the command's thread")
            .expect("reservoir runs");
        eprintln!(
            "harness: {shown}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// A node certificate for `id` in `region` from the development CA in
/// `dir` (as `reservoir up` makes them); returns the certificate and key
/// files.
fn node_certificate(dir: &Path, id: u64, region: &str) -> (PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let tls = dir.join("tls");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca.key")).expect("the CA key"))
        .expect("the CA key parses");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, DEV_CA_NAME);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(ca, ca_key);
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("names");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("reservoir node {id} ({region})"));
    let uri = format!("spiffe://reservoir/node/{id}/{region}");
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().expect("an identity URI")));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let (cert_file, key_file) = (
        tls.join(format!("node-{id}.pem")),
        tls.join(format!("node-{id}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
    (cert_file, key_file)
}
