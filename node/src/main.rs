//! The `reservoir` command: a node, the local cluster launcher, the
//! deployment generator, and a command-line client (see `reservoir --help`).
//!
//! Exit codes: 0 success (including a node or `up` stopped by SIGTERM /
//! Ctrl-C), 1 failure (a refused call, no connection, a node that could not
//! run), 2 usage (bad arguments, a bad config file).

use clap::Parser;
use reservoir_node::args::{
    Cli, Command, DeployCommand, EXIT_FAILURE, EXIT_USAGE, NodeArgs, ProbeArgs, RestoreArgs, UpArgs,
};
use reservoir_node::cli;
use reservoir_node::server::{self, config, config::NodeConfig};
use reservoir_node::up::{self, cluster};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: the nodes spend a visible share of their CPU in malloc (many
/// small, short-lived allocations per request), where it is cheaper than the
/// system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Node(args) => node(args),
        Command::Up(args) => up(args),
        Command::Deploy {
            command: DeployCommand::Init(args),
        } => deploy_init(args),
        Command::Client(command) => client(cli::run(command)),
        Command::Operate(command) => client(cli::operate::run(command)),
        Command::Restore(args) => restore(args),
        Command::Probe(args) => probe(args),
    }
}

/// `reservoir restore --backup FILE --config FILE`: seeds the node's empty
/// data directory from the backup.
fn restore(args: RestoreArgs) -> ExitCode {
    // The config as the node will read it: the file and the environment.
    let config = match NodeConfig::load_with_env(Some(&args.config), config::process_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let bytes = match server::backup::read_file(&args.backup) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: {}: {e}", args.backup.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match server::backup::restore(&config, &bytes) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.backup.display());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// How long `reservoir probe` waits for the name, the connection and the answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `reservoir probe`: asks one node's `/readyz` or `/healthz`; prints the
/// answer's first line.
fn probe(args: ProbeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let asked = runtime.block_on(async {
        let addr: reservoir_client::HostPort = args.http.parse().map_err(|e| format!("--http: {e}"))?;
        // The HTTP client resolves the name; the bound covers that too.
        let get = reservoir_client::http::get(addr, args.check.path(), PROBE_TIMEOUT);
        match tokio::time::timeout(PROBE_TIMEOUT, get).await {
            Ok(answer) => answer.map_err(|e| format!("{}{}: {e}", args.http, args.check.path())),
            Err(_) => Err(format!("{}: no answer within 2 s", args.http)),
        }
    });
    match asked {
        Ok((status, body)) => {
            println!("{status} {}", body.lines().next().unwrap_or(""));
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `reservoir node --config FILE`: one node until SIGTERM / Ctrl-C; with
/// `--check-config`, the config's check alone. Until its config is read,
/// errors are plain `error: ...` lines; from then on the node logs as
/// `[log]` (or `RUST_LOG`) says.
fn node(args: NodeArgs) -> ExitCode {
    let env = config::process_env();
    let path = args.config.clone().or_else(|| {
        env.iter()
            .find(|(name, value)| name == config::CONFIG_ENV && !value.is_empty())
            .map(|(_, value)| PathBuf::from(value))
    });
    let config = match NodeConfig::load_with_env(path.as_deref(), env.clone()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check_config {
        return match server::check::check(&config) {
            Ok(()) => {
                println!("{}", server::check::summary(&config));
                ExitCode::SUCCESS
            }
            Err((field, message)) => {
                // Named as a config error of that field, with the variable
                // that set it (or its table), if one did.
                let set_by = [field, field.split('.').next().unwrap_or(field)]
                    .map(config::env_var)
                    .into_iter()
                    .find(|var| env.iter().any(|(name, _)| name == var));
                let error = config::ConfigError::Field {
                    path: path.map_or_else(|| "(environment)".to_string(), |p| p.display().to_string()),
                    field: field.to_string(),
                    var: set_by,
                    message,
                };
                eprintln!("error: {error}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if let Err(e) = server::logging::init(&config.log) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the node could not run");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `reservoir up`: a local cluster as child processes.
fn up(args: UpArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the reservoir binary to run the nodes with: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        PathBuf::from("target").join(format!("reservoir-up-{stamp}"))
    });
    // Current-thread, so the children are spawned by the main thread: their
    // PR_SET_PDEATHSIG fires when the spawning thread exits, and the main
    // thread lives exactly as long as `up`.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if !args.standalone && args.advertise_host.is_some() {
        eprintln!(
            "error: --advertise-host goes with --standalone (the three-region cluster's links are emulated on loopback)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if args.standalone
        && (args.architecture != cluster::Architecture::Tokens || args.nodes_per_region.is_some())
    {
        eprintln!(
            "error: --architecture and --nodes-per-region go with the three-region cluster, not --standalone"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let result = if args.standalone {
        runtime.block_on(up::run(up::UpOptions {
            dir,
            nodes: args.nodes,
            base_port: args.base_port,
            proposal_queue_max: args.proposal_queue_max,
            exe,
            insecure: args.insecure,
            advertise_host: args.advertise_host,
        }))
    } else {
        if args.nodes.is_some() || args.base_port.is_some() {
            eprintln!("error: --nodes and --base-port go with --standalone; use --nodes-per-region");
            return ExitCode::from(EXIT_USAGE);
        }
        let architecture = args.architecture;
        println!("cluster directory: {}", dir.display());
        runtime.block_on(cluster::run(cluster::ClusterOptions {
            dir,
            architecture,
            nodes_per_region: args.nodes_per_region,
            wan: args.wan,
            demo: !args.no_demo,
            policy: args.policy,
            proposal_queue_max: args.proposal_queue_max,
            exe,
            insecure: args.insecure,
        }))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// `reservoir deploy init`: a deployment's files, what was made or kept on
/// stdout.
fn deploy_init(args: reservoir_node::args::DeployInitArgs) -> ExitCode {
    let options = reservoir_node::deploy::InitOptions {
        topology: args.topology,
        out: args.out,
    };
    match reservoir_node::deploy::init(&options) {
        Ok(report) => {
            for line in report {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// A client or operator command: its answer on stdout or one error line on
/// stderr.
fn client(command: impl std::future::Future<Output = Result<String, cli::ClientError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(command) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A command-line error on one line (clap spreads it over several, with a
/// pointer to `--help` that every error repeats).
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}
