//! The `reservoir` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("version") => {
            println!("reservoir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "reservoir {}: the node, cluster and client commands are not built yet; \
                 see README.md for the project's status",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}
