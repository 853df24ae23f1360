//! Generates the Zerobus gRPC service (server and client; tests use the client) from the
//! proto Databricks publishes, with a vendored `protoc` so no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(
            config,
            &[PathBuf::from("proto/zerobus_service.proto")],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto/zerobus_service.proto");
    Ok(())
}
