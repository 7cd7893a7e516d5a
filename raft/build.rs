//! Compiles the internal Raft transport's proto with the pure-Rust `protox`
//! (no system `protoc`) and hands it to tonic's generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["reservoir/internal/v1/raft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
