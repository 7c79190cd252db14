//! Ranking gRPC services: `tandem.v1.RankingService/Rank` and the model admin API.
//! The gateway mounts the same handlers in the embedded topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_proto::v1 as pb;
use tandem_ranking::{
    BatchConfig, ExecutionProvider, ModelVersion, Ranker, RankerConfig, RankingError, ScoreRequest,
    SplitEntry, parse_split,
};
use tandem_server::{AdminToken, Ready};
use tonic::{Request, Response, Status};

/// Model options (`--help` shows the defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory: `NAME/` (its highest numeric version is served and newer ones are
    /// hot-reloaded) or `NAME/VERSION/` (that version only).
    #[arg(
        long,
        env = "TANDEM_MODEL_DIR",
        default_value = "data/demo/models/ranker"
    )]
    pub model_dir: PathBuf,
    /// ONNX Runtime shared library (libonnxruntime.so from the onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Execution provider: cpu, cuda (fail if CUDA cannot be used) or auto (CUDA, else CPU
    /// with a warning). cuda needs a build with `--features cuda` and the onnxruntime-gpu wheel.
    #[arg(long, env = "TANDEM_EXECUTION_PROVIDER", default_value = "cpu")]
    pub execution_provider: ExecutionProvider,
    /// ORT sessions per model version, each on its own worker thread. Default: cores divided
    /// by --ranking-intra-threads (1 on CUDA).
    #[arg(long, env = "TANDEM_RANKING_SESSIONS")]
    pub ranking_sessions: Option<usize>,
    /// Threads per ORT run; sessions × threads should not exceed the cores.
    #[arg(long, env = "TANDEM_RANKING_INTRA_THREADS", default_value_t = 1)]
    pub ranking_intra_threads: usize,
    /// Most candidates one Rank call may carry.
    #[arg(long, env = "TANDEM_MAX_CANDIDATES", default_value_t = 5000)]
    pub max_candidates: usize,
    /// Most rows coalesced into one model run; 0 turns dynamic batching off.
    #[arg(long, env = "TANDEM_BATCH_MAX_ROWS", default_value_t = 1024)]
    pub batch_max_rows: usize,
    /// How long a run waits for more requests after the first (microseconds).
    #[arg(long, env = "TANDEM_BATCH_MAX_WAIT_US", default_value_t = 200)]
    pub batch_max_wait_us: u64,
    /// Rows allowed to wait for a session; past this Rank answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "TANDEM_MAX_QUEUED_ROWS", default_value_t = 65_536)]
    pub max_queued_rows: usize,
    /// Versions to serve and their traffic shares by stable user hash, e.g. `1=90,2=10`.
    /// Default: the highest version, and each newer one as it appears.
    #[arg(long, env = "TANDEM_TRAFFIC_SPLIT")]
    pub traffic_split: Option<String>,
    /// How often to look for new version directories (seconds); 0 turns hot reload off.
    #[arg(long, env = "TANDEM_MODEL_POLL_INTERVAL_S", default_value_t = 10)]
    pub model_poll_interval_s: u64,
}

/// Validated model options.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub config: RankerConfig,
    pub split: Option<Vec<SplitEntry>>,
    pub poll_interval: Option<Duration>,
}

impl ModelArgs {
    pub fn validate(&self) -> Result<ModelSettings, String> {
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
            || self.max_queued_rows == 0
        {
            return Err(
                "--ranking-sessions, --ranking-intra-threads, --max-candidates and --max-queued-rows must be positive"
                    .into(),
            );
        }
        if self.max_queued_rows < self.max_candidates {
            return Err(format!(
                "--max-queued-rows {} must be at least --max-candidates {}",
                self.max_queued_rows, self.max_candidates
            ));
        }
        let split = self
            .traffic_split
            .as_deref()
            .map(parse_split)
            .transpose()
            .map_err(|e| format!("--traffic-split: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let sessions = self
            .ranking_sessions
            .unwrap_or(match self.execution_provider {
                ExecutionProvider::Cpu => (cores / self.ranking_intra_threads).max(1),
                ExecutionProvider::Cuda | ExecutionProvider::Auto => 1,
            });
        Ok(ModelSettings {
            config: RankerConfig {
                ort_dylib_path: dylib,
                execution_provider: self.execution_provider,
                sessions,
                intra_threads: self.ranking_intra_threads,
                max_candidates: self.max_candidates,
                batch: BatchConfig {
                    max_rows: self.batch_max_rows,
                    max_wait: Duration::from_micros(self.batch_max_wait_us),
                    max_queued_rows: self.max_queued_rows,
                },
            },
            split,
            poll_interval: (self.model_poll_interval_s > 0)
                .then(|| Duration::from_secs(self.model_poll_interval_s)),
        })
    }
}

/// Loads the served versions against the catalog and starts the directory watcher (blocking).
pub fn load_ranker(
    model_dir: &Path,
    catalog: Arc<Catalog>,
    settings: ModelSettings,
) -> Result<Arc<Ranker>, RankingError> {
    let ranker = Arc::new(Ranker::open(
        model_dir,
        catalog,
        settings.config,
        settings.split,
    )?);
    if let Some(interval) = settings.poll_interval {
        ranker.watch(interval)?;
    }
    Ok(ranker)
}

/// The one place ranking errors become gRPC statuses.
pub fn status(err: RankingError) -> Status {
    match err {
        RankingError::InvalidArgument { .. }
        | RankingError::TooManyCandidates { .. }
        | RankingError::InvalidSplit(_) => Status::invalid_argument(err.to_string()),
        RankingError::Overloaded { .. } => Status::resource_exhausted(err.to_string()),
        RankingError::UnknownVersion(_) => Status::not_found(err.to_string()),
        RankingError::Inference { .. } => Status::internal(err.to_string()),
        RankingError::Runtime { .. }
        | RankingError::Io { .. }
        | RankingError::Spec { .. }
        | RankingError::NoVersion(_)
        | RankingError::InputMismatch { .. }
        | RankingError::OutputMismatch { .. }
        | RankingError::Rejected { .. }
        | RankingError::NonFiniteScores { .. }
        | RankingError::Cuda(_) => Status::failed_precondition(err.to_string()),
    }
}

/// A wire request in catalog terms: unknown candidates are NOT_FOUND, unknown recent items
/// are skipped (the page may know newer items than this catalog).
pub fn score_request(catalog: &Catalog, req: pb::RankRequest) -> Result<ScoreRequest, Status> {
    let user = req
        .user
        .ok_or_else(|| Status::invalid_argument("user: required (query_vector)"))?;
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
    Ok(ScoreRequest {
        user_id: user.user_id,
        user_vector: user.query_vector,
        items,
        retrieval_scores: req.candidates.iter().map(|c| c.retrieval_score).collect(),
        recent_items: user
            .recent_item_ids
            .iter()
            .filter_map(|id| catalog.idx_of(id))
            .collect(),
        context: user.context.into_iter().collect(),
        version: (!req.model_version.is_empty()).then_some(req.model_version),
    })
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
        let request = request.into_inner();
        let explain = request.explain;
        let req = score_request(ranker.catalog(), request)?;
        let rows = req.items.len();
        if !explain {
            let scores = ranker.rank(req).await.map_err(status)?;
            return Ok(Response::new(pb::RankResponse {
                scores: scores.scores,
                model_version: scores.model_version,
                features: Vec::new(),
            }));
        }
        let (scores, features) = ranker.rank_with_features(req).await.map_err(status)?;
        Ok(Response::new(pb::RankResponse {
            scores: scores.scores,
            model_version: scores.model_version,
            features: (0..rows)
                .map(|row| pb::CandidateFeatures {
                    features: features
                        .iter()
                        .map(|f| pb::FeatureValue {
                            input: f.input.clone(),
                            feature: f.feature.clone(),
                            values: f.row(row).to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RankingAdminApi {
    ranker: Ready<Ranker>,
    admin: AdminToken,
}

impl RankingAdminApi {
    pub fn new(ranker: Ready<Ranker>) -> Self {
        Self {
            ranker,
            admin: AdminToken::default(),
        }
    }

    /// LoadModel and SetTrafficSplit then require the token; GetModelInfo stays open.
    pub fn with_admin_token(mut self, admin: AdminToken) -> Self {
        self.admin = admin;
        self
    }

    pub fn into_service(self) -> pb::ranking_admin_service_server::RankingAdminServiceServer<Self> {
        pb::ranking_admin_service_server::RankingAdminServiceServer::new(self)
    }
}

fn version_info(v: &ModelVersion, intra_threads: usize) -> pb::ModelVersionInfo {
    let stats = v.stats();
    pb::ModelVersionInfo {
        version: v.version().to_owned(),
        label: v.label().to_owned(),
        execution_provider: v.provider().as_str().to_owned(),
        sessions: v.sessions() as u32,
        intra_op_threads: intra_threads as u32,
        pruned_nodes: v.pruned_nodes() as u32,
        inputs: v
            .spec()
            .inputs
            .iter()
            .map(|i| pb::ModelInput {
                name: i.name.clone(),
                dtype: match i.dtype {
                    tandem_ranking::InputDtype::Float32 => "float32",
                    tandem_ranking::InputDtype::Int64 => "int64",
                }
                .into(),
                shape: i.shape.clone(),
                sources: i.features.iter().map(|f| f.name().to_owned()).collect(),
            })
            .collect(),
        stats: Some(pb::ModelVersionStats {
            requests: stats.requests,
            rows: stats.rows,
            runs: stats.runs,
            failed_runs: stats.failed_runs,
            latency_p50_us: stats.latency_p50_us,
            latency_p99_us: stats.latency_p99_us,
            queue_wait_p50_us: stats.queue_wait_p50_us,
            queue_wait_p99_us: stats.queue_wait_p99_us,
        }),
        loaded_at_ms: v
            .loaded_at()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    }
}

fn shares(split: &[SplitEntry]) -> Vec<pb::TrafficShare> {
    split
        .iter()
        .map(|e| pb::TrafficShare {
            version: e.version.clone(),
            weight: e.weight,
        })
        .collect()
}

#[tonic::async_trait]
impl pb::ranking_admin_service_server::RankingAdminService for RankingAdminApi {
    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let ranker = self.ranker.get()?.clone();
        let info = tokio::task::spawn_blocking(move || ranker.info())
            .await
            .map_err(|e| Status::internal(format!("model info task failed: {e}")))?;
        let intra = info.config.intra_threads;
        Ok(Response::new(pb::GetModelInfoResponse {
            model_dir: info.model_dir.display().to_string(),
            versions: info
                .versions
                .iter()
                .map(|v| version_info(v, intra))
                .collect(),
            split: shares(&info.split),
            follows_latest: info.follows_latest,
            rejected: info
                .rejected
                .iter()
                .map(|r| pb::RejectedVersion {
                    version: r.version.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
            batching: Some(pb::BatchingInfo {
                max_rows: info.config.batch.max_rows as u32,
                max_wait_us: info.config.batch.max_wait.as_micros() as u32,
                max_queued_rows: info.config.batch.max_queued_rows as u32,
                max_candidates: info.config.max_candidates as u32,
            }),
        }))
    }

    async fn load_model(
        &self,
        request: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::LoadModelResponse>, Status> {
        self.admin.check(&request)?;
        let ranker = self.ranker.get()?.clone();
        let req = request.into_inner();
        let intra = ranker.config().intra_threads;
        let loaded =
            tokio::task::spawn_blocking(move || ranker.load_version(&req.version, req.serve))
                .await
                .map_err(|e| Status::internal(format!("load task failed: {e}")))?
                .map_err(status)?;
        Ok(Response::new(pb::LoadModelResponse {
            version: Some(version_info(&loaded, intra)),
        }))
    }

    async fn set_traffic_split(
        &self,
        request: Request<pb::SetTrafficSplitRequest>,
    ) -> Result<Response<pb::SetTrafficSplitResponse>, Status> {
        self.admin.check(&request)?;
        let ranker = self.ranker.get()?.clone();
        let split: Vec<SplitEntry> = request
            .into_inner()
            .split
            .into_iter()
            .map(|s| SplitEntry {
                version: s.version,
                weight: s.weight,
            })
            .collect();
        let applied = split.clone();
        tokio::task::spawn_blocking(move || ranker.set_split(split))
            .await
            .map_err(|e| Status::internal(format!("split task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::SetTrafficSplitResponse {
            split: shares(&applied),
        }))
    }
}
