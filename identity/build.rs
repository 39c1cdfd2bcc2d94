fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc keeps the build independent of whatever protoc the host has.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/ca.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &["proto/ca.proto".into()],
            &[std::path::PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
