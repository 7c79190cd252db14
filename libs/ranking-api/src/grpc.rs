//! `tandem.v1.RankingService` and `RankingAdminService` handlers.

use tandem_catalog::{Catalog, ItemIdx};
use tandem_proto::v1 as pb;
use tandem_ranking::{ItemHistory, ModelVersion, Ranker, RankingError, ScoreRequest, SplitEntry};
use tandem_server::{AdminToken, Ready};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ResourceInfo.resource_type` of a NOT_FOUND model version (`tandem-recommend`'s remote
/// ranking reads it back).
pub const MODEL_VERSION_RESOURCE: &str = "model_version";

/// The one place ranking errors become gRPC statuses. A bad field is also named in a
/// `google.rpc.BadRequest` and a missing version in a `ResourceInfo`, so a remote caller maps
/// them back without reading the text.
#[deny(clippy::wildcard_enum_match_arm)]
pub fn status(err: RankingError) -> Status {
    let message = err.to_string();
    match err {
        RankingError::InvalidArgument { field, reason } => Status::with_error_details(
            tonic::Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request_violation(field, reason),
        ),
        RankingError::TooManyCandidates { got, max } => Status::with_error_details(
            tonic::Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request_violation(
                "candidates",
                format!("ranking takes at most {max} candidates, got {got}"),
            ),
        ),
        RankingError::InvalidSplit(_) => Status::invalid_argument(message),
        RankingError::Overloaded { .. } => Status::resource_exhausted(message),
        RankingError::UnknownVersion(version) => Status::with_error_details(
            tonic::Code::NotFound,
            message,
            ErrorDetails::with_resource_info(MODEL_VERSION_RESOURCE, version, "", "not loaded"),
        ),
        RankingError::Inference { .. } => Status::internal(message),
        RankingError::Runtime { .. }
        | RankingError::Io { .. }
        | RankingError::Spec { .. }
        | RankingError::NoVersion(_)
        | RankingError::InputMismatch { .. }
        | RankingError::OutputMismatch { .. }
        | RankingError::Rejected { .. }
        | RankingError::NonFiniteScores { .. }
        | RankingError::Cuda(_) => Status::failed_precondition(message),
    }
}

/// History entries a Rank request may carry: a user's distinct items, far above any shopper's.
const MAX_HISTORY: usize = 20_000;

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
                Status::with_error_details(
                    tonic::Code::NotFound,
                    format!("candidates[{i}].item_id: unknown item `{}`", c.item_id),
                    ErrorDetails::with_resource_info(
                        "item",
                        c.item_id.clone(),
                        "",
                        "not in this catalog",
                    ),
                )
            })
        })
        .collect::<Result<Vec<ItemIdx>, Status>>()?;
    if user.history.len() > MAX_HISTORY {
        return Err(Status::with_error_details(
            tonic::Code::InvalidArgument,
            format!(
                "user.history: at most {MAX_HISTORY} entries, got {}",
                user.history.len()
            ),
            ErrorDetails::with_bad_request_violation(
                "user.history",
                format!("at most {MAX_HISTORY} entries"),
            ),
        ));
    }
    if let Some(at) = user
        .history
        .iter()
        .position(|h| h.last_purchase_ms < 0 || h.last_event_ms < 0)
    {
        return Err(Status::with_error_details(
            tonic::Code::InvalidArgument,
            format!("user.history[{at}]: times are ms since the Unix epoch, not negative"),
            ErrorDetails::with_bad_request_violation(
                format!("user.history[{at}]"),
                "negative time",
            ),
        ));
    }
    if user.now_ms < 0 {
        return Err(Status::with_error_details(
            tonic::Code::InvalidArgument,
            "user.now_ms: ms since the Unix epoch, not negative",
            ErrorDetails::with_bad_request_violation("user.now_ms", "negative time"),
        ));
    }
    let now_ms = if user.now_ms > 0 {
        user.now_ms
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let history = user
        .history
        .iter()
        .filter_map(|h| {
            Some(ItemHistory {
                item: catalog.idx_of(&h.item_id)?,
                purchases: h.purchases,
                last_purchase_ms: h.last_purchase_ms,
                events: h.events,
                last_event_ms: h.last_event_ms,
            })
        })
        .collect();
    Ok(ScoreRequest {
        history,
        now_ms,
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
