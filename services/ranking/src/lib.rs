//! Ranking gRPC service: `tandem.v1.RankingService/Rank` with the ONNX model.
//! The gateway mounts the same handler in the embedded topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_proto::v1 as pb;
use tandem_ranking::{RankRequest, Ranker, RankerConfig, RankingError};
use tandem_server::Ready;
use tonic::{Request, Response, Status};

/// Model options (`--help` shows the defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory: `NAME/` (highest numeric version is served) or `NAME/VERSION/`.
    #[arg(
        long,
        env = "TANDEM_MODEL_DIR",
        default_value = "data/demo/models/ranker"
    )]
    pub model_dir: PathBuf,
    /// ONNX Runtime shared library (libonnxruntime.so from the onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// ORT sessions, i.e. requests scored at once. Default: the number of cores.
    #[arg(long, env = "TANDEM_RANKING_SESSIONS")]
    pub ranking_sessions: Option<usize>,
    /// Threads per ORT run; sessions × threads should not exceed the cores.
    #[arg(long, env = "TANDEM_RANKING_INTRA_THREADS", default_value_t = 1)]
    pub ranking_intra_threads: usize,
    /// Most candidates one Rank call may carry.
    #[arg(long, env = "TANDEM_MAX_CANDIDATES", default_value_t = 5000)]
    pub max_candidates: usize,
}

impl ModelArgs {
    pub fn validate(&self) -> Result<RankerConfig, String> {
        let dylib = self
            .ort_dylib_path
            .clone()
            .ok_or("--ort-dylib-path / ORT_DYLIB_PATH is required: point it at libonnxruntime.so (make run sets it)")?;
        if !dylib.is_file() {
            return Err(format!(
                "--ort-dylib-path {} does not exist",
                dylib.display()
            ));
        }
        if !self.model_dir.is_dir() {
            return Err(format!(
                "--model-dir {} does not exist (run `make data`)",
                self.model_dir.display()
            ));
        }
        if self.ranking_intra_threads == 0
            || self.max_candidates == 0
            || self.ranking_sessions == Some(0)
        {
            return Err(
                "--ranking-sessions, --ranking-intra-threads and --max-candidates must be positive"
                    .into(),
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(RankerConfig {
            ort_dylib_path: dylib,
            sessions: self.ranking_sessions.unwrap_or(cores),
            intra_threads: self.ranking_intra_threads,
            max_candidates: self.max_candidates,
        })
    }
}

/// Loads the model bundle against the catalog (blocking).
pub fn load_ranker(
    model_dir: &Path,
    catalog: Arc<Catalog>,
    config: RankerConfig,
) -> Result<Arc<Ranker>, RankingError> {
    Ranker::load(model_dir, catalog, config).map(Arc::new)
}

/// The one place ranking errors become gRPC statuses.
pub fn status(err: RankingError) -> Status {
    match err {
        RankingError::InvalidArgument { .. } | RankingError::TooManyCandidates { .. } => {
            Status::invalid_argument(err.to_string())
        }
        RankingError::Inference { .. } => Status::internal(err.to_string()),
        RankingError::Runtime { .. }
        | RankingError::Io { .. }
        | RankingError::Spec { .. }
        | RankingError::NoVersion(_)
        | RankingError::InputMismatch { .. }
        | RankingError::OutputMismatch { .. } => Status::failed_precondition(err.to_string()),
    }
}

#[derive(Debug, Clone, Default)]
pub struct RankingApi {
    ranker: Ready<Ranker>,
}

impl RankingApi {
    pub fn new(ranker: Ready<Ranker>) -> Self {
        Self { ranker }
    }

    pub fn into_service(self) -> pb::ranking_service_server::RankingServiceServer<Self> {
        pb::ranking_service_server::RankingServiceServer::new(self)
            .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl pb::ranking_service_server::RankingService for RankingApi {
    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        let ranker = self.ranker.get()?.clone();
        let req = request.into_inner();
        let user = req
            .user
            .ok_or_else(|| Status::invalid_argument("user: required (query_vector)"))?;
        let catalog = ranker.catalog();
        let items = req
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                catalog.idx_of(&c.item_id).ok_or_else(|| {
                    Status::not_found(format!(
                        "candidates[{i}].item_id: unknown item `{}`",
                        c.item_id
                    ))
                })
            })
            .collect::<Result<Vec<ItemIdx>, Status>>()?;
        let retrieval: Vec<f32> = req.candidates.iter().map(|c| c.retrieval_score).collect();
        let scores = tokio::task::spawn_blocking(move || {
            ranker.rank(RankRequest {
                user_vector: &user.query_vector,
                items: &items,
                retrieval_scores: &retrieval,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("ranking task failed: {e}")))?
        .map_err(status)?;
        Ok(Response::new(pb::RankResponse {
            scores: scores.scores,
            model_version: scores.model_version,
        }))
    }
}
