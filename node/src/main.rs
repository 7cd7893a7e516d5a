//! The `reservoir` command: a node, the local cluster launcher, and a
//! command-line client (see `reservoir --help`).
//!
//! Exit codes: 0 success (including a node or `up` stopped by SIGTERM /
//! Ctrl-C), 1 failure (a refused call, no connection, a node that could not
//! run), 2 usage (bad arguments, a bad config file).

use clap::Parser;
use reservoir_node::cli::{Cli, ClientCommand, Command, EXIT_FAILURE, EXIT_USAGE, NodeArgs, UpArgs};
use reservoir_node::config::NodeConfig;
use reservoir_node::{cli, server, up};
use std::process::ExitCode;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Node(args) => node(args),
        Command::Up(args) => up(args),
        Command::Client(command) => client(command),
    }
}

/// `reservoir node --config FILE`: one node until SIGTERM / Ctrl-C.
fn node(args: NodeArgs) -> ExitCode {
    let config = match NodeConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `reservoir up`: a local cluster as child processes.
fn up(args: UpArgs) -> ExitCode {
    if !args.standalone {
        eprintln!(
            "error: only `reservoir up --standalone` is supported yet (one region, no ledger); \
             the three-region cluster is not built"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the reservoir binary to run the nodes with: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let options = up::UpOptions {
        dir: args.dir,
        nodes: args.nodes,
        base_port: args.base_port,
        exe,
    };
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
    match runtime.block_on(up::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// A client command: one call, its answer on stdout or one error line on stderr.
fn client(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(cli::run(command)) {
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
