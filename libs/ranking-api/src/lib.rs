//! The ranking stage as a server sees it: command-line options, loading the model versions
//! and the `tandem.v1.RankingService` / `RankingAdminService` handlers.
//!
//! The `tandem-ranking` binary and the embedded gateway both serve these handlers; how the
//! request path reaches ranking (in process or over gRPC) lives in `tandem-recommend`.

mod args;
mod grpc;

pub use args::{ModelArgs, ModelSettings, load_ranker};
pub use grpc::{MODEL_VERSION_RESOURCE, RankingAdminApi, RankingApi, score_request, status};
