//! Compiles `reservoir/v1/*.proto` with the pure-Rust `protox`, so building
//! needs no system `protoc`, and hands the descriptors to tonic's generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=reservoir");
    let fds = protox::compile(["reservoir/v1/inventory.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
