//! The `tandem.v1` gRPC API, generated at build time from `proto/tandem/v1/` (never edited by hand).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tandem.v1");
}

/// Encoded `FileDescriptorSet` of `tandem.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tandem_descriptor");
