//! Compiles `reservoir/v1/*.proto` with the pure-Rust `protox`, so building
//! needs no system `protoc`, and hands the descriptors to tonic's generator
//! (and, encoded, to the library: `FILE_DESCRIPTOR_SET`, for reflection).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=reservoir");
    let fds = protox::compile(["reservoir/v1/inventory.proto"], ["."])?;
    // The descriptors also go into the library, for server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("reservoir_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
