//! Generates the Zerobus gRPC service (server and client; tests use the client) from the
//! proto Databricks publishes, with a vendored `protoc` so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [
        std::path::PathBuf::from("proto"),
        protoc_bin_vendored::include_path()?,
    ];
    tonic_build::configure()
        .build_transport(false)
        .compile_protos_with_config(config, &["proto/zerobus_service.proto"], &includes)?;
    println!("cargo:rerun-if-changed=proto/zerobus_service.proto");
    Ok(())
}
