//! The `reservoir` command's arguments (clap): one subcommand per program
//! of this crate — `node` ([`crate::server`]), `up` ([`crate::up`]),
//! `deploy` ([`crate::deploy`]) and the client commands ([`crate::cli`]) —
//! and the exit codes they share.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code of a failed command: a refused call, no connection, a node or
/// cluster that could not run.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error: bad arguments or a bad config file.
pub const EXIT_USAGE: u8 = 2;

/// `reservoir`: a Reservoir node, the local cluster launcher, and a client.
#[derive(Debug, Parser)]
#[command(name = "reservoir", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node from its config file.
    Node(NodeArgs),
    /// Start a local cluster as child processes and keep it running until
    /// Ctrl-C or SIGTERM.
    Up(UpArgs),
    /// Files for a cluster on real hosts: node configs, TLS, keys.
    Deploy {
        /// What to make.
        #[command(subcommand)]
        command: DeployCommand,
    },
    /// Client commands.
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
    /// Operator commands on a Raft group.
    #[command(flatten)]
    Operate(crate::cli::operate::OperateCommand),
    /// Seed a node's empty data directory from a backup (`reservoir
    /// backup`), before its first start; run it on every node of the new
    /// cluster (or region), then start them.
    Restore(RestoreArgs),
    /// Ask a node's HTTP side whether it is ready (`/readyz`) or alive
    /// (`/healthz`), for container health checks: exit 0 when it is, 1 when
    /// it is not or does not answer within 2 s.
    Probe(ProbeArgs),
}

/// `reservoir restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub backup: PathBuf,
    /// The node's TOML config file (its region, data_dir, peers).
    #[arg(long, value_name = "FILE.toml")]
    pub config: PathBuf,
}

/// `reservoir probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The node's HTTP address (its `http_addr`), `host:port`.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7002")]
    pub http: String,
    /// `ready` (`/readyz`: the node can commit and serve) or `live`
    /// (`/healthz`: the process answers).
    #[arg(long, value_enum, default_value_t = ProbeCheck::Ready)]
    pub check: ProbeCheck,
}

/// What `reservoir probe` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeCheck {
    /// `/readyz`.
    Ready,
    /// `/healthz`.
    Live,
}

impl ProbeCheck {
    /// The HTTP path asked.
    pub fn path(self) -> &'static str {
        match self {
            ProbeCheck::Ready => "/readyz",
            ProbeCheck::Live => "/healthz",
        }
    }
}

/// `reservoir node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML config file [default: $RESERVOIR_CONFIG; with
    /// neither, every field comes from the environment]. Any field may be
    /// set or replaced by a `RESERVOIR_<FIELD>` variable (RESERVOIR_NODE_ID,
    /// RESERVOIR_RAFT__HEARTBEAT_MS: `__` nests; lists and tables as TOML
    /// inline values).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Load the config (file and environment), check every field, the TLS
    /// files and the data directory, print one line and exit: 0 when the
    /// node could start, 2 (naming the field) when not. Binds no port and
    /// opens no database.
    #[arg(long)]
    pub check_config: bool,
}

/// `reservoir deploy ...`.
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Write one config per node, the cluster's CA and node certificates,
    /// API keys and cluster.json into DIR, from a topology file (regions,
    /// nodes and their host names, the home region, ports). Run again on
    /// DIR, it keeps the CA, the certificates and the keys.
    Init(DeployInitArgs),
}

/// `reservoir deploy init`.
#[derive(Debug, Args)]
pub struct DeployInitArgs {
    /// The topology (TOML): `home`, `[[regions]]` with `name` and `nodes =
    /// [{ id, host }]`, optional `[ports]`, `data_dir`, `secrets_dir`,
    /// `insecure`, `[raft]`, `[rebalance]`, `[retention]`.
    #[arg(long, value_name = "FILE.toml")]
    pub topology: PathBuf,
    /// Where the files go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `reservoir up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// One standalone region (`us-east`, no ledger) instead of the
    /// three-region cluster.
    #[arg(long)]
    pub standalone: bool,
    /// Where the node configs, data, logs and cluster.json live [default: a
    /// fresh folder under ./target/]. Reused, with its ports and data, when it
    /// already holds node configs.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `--standalone`: nodes in the region [default: 3, or what DIR already holds].
    #[arg(long, value_name = "N")]
    pub nodes: Option<u64>,
    /// Three regions: the design, `tokens` (escrow tokens per region, the
    /// ledger, the rebalancer), `single-writer` (one us-east group; other
    /// regions cross the WAN) or `global-consensus` (one group, a voter per
    /// region). Only used when DIR holds no configs yet, and must match them
    /// when it does.
    #[arg(long, value_name = "DESIGN", value_enum, default_value = "tokens")]
    pub architecture: crate::up::cluster::Architecture,
    /// Three regions: nodes per region, 1-7 [default: 3; global-consensus: 1].
    #[arg(long, value_name = "N")]
    pub nodes_per_region: Option<u64>,
    /// Three regions: inter-region round trips, `aws` (us-east-eu-west 70 ms,
    /// eu-west-ap-south 120 ms, us-east-ap-south 186 ms) or `none`.
    #[arg(long, value_name = "PROFILE", value_parser = crate::up::wan::WanProfile::parse, default_value = "aws")]
    pub wan: crate::up::wan::WanProfile,
    /// Three regions: do not seed the demo catalog.
    #[arg(long)]
    pub no_demo: bool,
    /// Three regions: the rebalancer's policy, `proportional` or `take_half`.
    #[arg(long, value_name = "POLICY", value_enum, default_value = "proportional")]
    pub policy: crate::server::config::PolicyName,
    /// Node i listens for clients on BASE+3(i-1), for peers on BASE+3(i-1)+1
    /// and for HTTP on BASE+3(i-1)+2 [default: free ports]. Only used when
    /// DIR holds no configs yet.
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,
    /// Each node's `raft.proposal_queue_max` [default: 4096]. Only used when
    /// DIR holds no configs yet; tests set it small to provoke `OVERLOADED`.
    #[arg(long, value_name = "N")]
    pub proposal_queue_max: Option<usize>,
    /// No TLS and no authentication on either plane: every caller is an
    /// admin. For benchmarks on this machine only. Only used when DIR holds
    /// no configs yet.
    #[arg(long)]
    pub insecure: bool,
    /// `--standalone`: the nodes listen on every interface (0.0.0.0) and
    /// are reached, by each other and by clients, at HOST:PORT (a DNS name
    /// or IP of this machine; `localhost` works), which their certificates
    /// name. Only used when DIR holds no configs yet.
    #[arg(long, value_name = "HOST")]
    pub advertise_host: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ClientCommand;
    use clap::CommandFactory;

    /// The clap definition is internally consistent (no clashing flags).
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// A reserve parses with its defaults, and `--delta` takes negative numbers.
    #[test]
    fn client_commands_parse() {
        let cli = Cli::try_parse_from([
            "reservoir",
            "reserve",
            "--addr",
            "h:1",
            "--sku",
            "S",
            "--qty",
            "3",
        ])
        .unwrap();
        match cli.command {
            Command::Client(ClientCommand::Reserve {
                target,
                sku,
                qty,
                ttl_ms,
                request_id,
                allow_partial,
                max_wait_ms,
            }) => {
                assert_eq!(target.addr.map(|a| a.authority).as_deref(), Some("h:1"));
                assert_eq!(target.cluster, None);
                assert_eq!((sku.as_str(), qty, ttl_ms, max_wait_ms), ("S", 3, 0, 0));
                assert_eq!((request_id, allow_partial), (None, false));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "reservoir",
            "reserve-batch",
            "--addr",
            "h:1",
            "--item",
            "S:2",
            "--item",
            "a:b:1",
        ])
        .unwrap();
        match cli.command {
            Command::Client(ClientCommand::ReserveBatch {
                items,
                request_id_prefix,
                ..
            }) => {
                assert_eq!(items, vec![("S".to_string(), 2), ("a:b".to_string(), 1)]);
                assert_eq!(request_id_prefix, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in ["S", "S:x", "S:-1"] {
            assert!(
                Cli::try_parse_from(["reservoir", "reserve-batch", "--addr", "h:1", "--item", bad]).is_err(),
                "--item {bad}"
            );
        }
        assert!(
            Cli::try_parse_from(["reservoir", "reserve-batch", "--addr", "h:1"]).is_err(),
            "no --item"
        );
        let cli = Cli::try_parse_from([
            "reservoir",
            "stock",
            "--addr",
            "h:1",
            "--sku",
            "S",
            "--delta",
            "-5",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Stock { delta: -5, .. })
        ));
        let cli = Cli::try_parse_from(["reservoir", "up", "--standalone", "--dir", "d"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Up(UpArgs {
                standalone: true,
                nodes: None,
                base_port: None,
                ..
            })
        ));
        assert!(
            Cli::try_parse_from([
                "reservoir",
                "reserve",
                "--addr",
                "nope",
                "--sku",
                "S",
                "--qty",
                "1"
            ])
            .is_err()
        );
    }

    /// The operator commands parse with their flags; an id is required.
    #[test]
    fn operator_commands_parse() {
        use crate::cli::operate::OperateCommand;
        let cli = Cli::try_parse_from([
            "reservoir",
            "replace-node",
            "--cluster",
            "c.json",
            "--group",
            "ledger",
            "--old",
            "3",
            "--id",
            "7",
            "--address",
            "node-7.us-east:9001",
        ])
        .unwrap();
        match cli.command {
            Command::Operate(OperateCommand::ReplaceNode {
                group,
                old,
                id,
                address,
                timeout_s,
                ..
            }) => {
                assert_eq!((group.group.as_str(), old, id), ("ledger", 3, 7));
                assert_eq!((address.as_str(), timeout_s), ("node-7.us-east:9001", 300));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["reservoir", "transfer-leader", "--addr", "h:1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Operate(OperateCommand::TransferLeader { to: None, .. })
        ));
        for bad in [
            &["reservoir", "add-node", "--addr", "h:1", "--address", "a:1"][..],
            &["reservoir", "remove-node", "--addr", "h:1"],
            &["reservoir", "snapshot"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// `deploy init` takes a topology and an output folder; `node` takes
    /// its config from the flag, or none (the environment), and
    /// `--check-config`.
    #[test]
    fn deploy_and_node_parse() {
        let cli = Cli::try_parse_from([
            "reservoir",
            "deploy",
            "init",
            "--topology",
            "t.toml",
            "--out",
            "d",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy {
                command: DeployCommand::Init(args),
            } => assert_eq!((args.topology, args.out), ("t.toml".into(), "d".into())),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["reservoir", "deploy", "init", "--topology", "t.toml"]).is_err());
        let cli = Cli::try_parse_from(["reservoir", "node", "--check-config"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeArgs {
                config: None,
                check_config: true
            })
        ));
    }

    /// The credential flags: `--cluster` stands in for `--addr`, `--role`
    /// goes with `--cluster`, one of `--addr` and `--cluster` is needed.
    #[test]
    fn client_credential_flags_parse() {
        let cli = Cli::try_parse_from([
            "reservoir",
            "status",
            "--cluster",
            "d/cluster.json",
            "--role",
            "observer",
        ])
        .unwrap();
        match cli.command {
            Command::Client(ClientCommand::Status { target }) => {
                assert_eq!(target.addr, None);
                assert_eq!(target.cluster, Some(PathBuf::from("d/cluster.json")));
                assert_eq!(target.role.as_deref(), Some("observer"));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "reservoir",
            "get",
            "--addr",
            "https://h:1",
            "--ca-file",
            "ca.pem",
            "--token-file",
            "shop.key",
            "--id",
            "us-east-000001",
        ])
        .unwrap();
        match cli.command {
            Command::Client(ClientCommand::Get { target, .. }) => {
                assert_eq!(target.addr.and_then(|a| a.tls), Some(true));
                assert_eq!(target.ca_file, Some(PathBuf::from("ca.pem")));
                assert_eq!(target.token_file, Some(PathBuf::from("shop.key")));
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [
            &["reservoir", "audit"][..],
            &["reservoir", "audit", "--addr", "h:1", "--role", "admin"],
            &["reservoir", "audit", "--cluster", "c.json", "--role", "root"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
