//! Compiles the internal control plane's proto (regions ↔ ledger) with the
//! pure-Rust `protox` (no system `protoc`) and hands it to tonic's generator.
//! The public API's protos are `reservoir-proto`'s.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["reservoir/internal/v1/control.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
