//! The retrieval stage as a server sees it: command-line options, the index's lifecycle
//! (restore, build, background snapshots) and the `tandem.v1.RetrievalService` handlers.
//!
//! The `tandem-retrieval` binary and the embedded gateway both serve these handlers; how the
//! request path reaches retrieval (in process or over gRPC) lives in `tandem-recommend`.

mod args;
mod grpc;
mod lifecycle;

pub use args::{IndexArgs, StateArgs};
pub use grpc::{MAX_GET_ITEMS, RetrievalApi, filter_from_proto, filter_to_proto, status};
pub use lifecycle::{SNAPSHOT_DIR, WAL_FILE, load_index, open_index};
