//! Generates the tandem.v1 messages and services, plus a file descriptor set for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["common", "recommender", "retrieval", "ranking"]
        .map(|name| root.join(format!("tandem/v1/{name}.proto")));
    // protoc comes from a crate, so no system install is needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    unsafe_set_protoc(&protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tandem_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // SAFETY: no other thread runs in this build script.
    unsafe { std::env::set_var("PROTOC", path) };
}
