//! Stages behind gRPC (split topology).

use std::sync::Arc;

use async_trait::async_trait;
use tandem_catalog::Catalog;
use tandem_proto::v1 as pb;
use tandem_ranking::Scores;
use tandem_recommend::{CandidateStage, ScoringStage, StageError};
use tandem_retrieval::{Candidate, FilterSpec};
use tonic::transport::{Channel, Endpoint};

use crate::{BoxError, Config};

fn channel(addr: &str, config: &Config) -> Result<Channel, BoxError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(config.stage_timeout())
        .timeout(config.stage_timeout())
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A stage's status as a stage error: its validation errors stay the caller's fault, anything
/// else means the stage could not answer.
fn stage_error(stage: &str, status: tonic::Status) -> StageError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            let (field, reason) = status
                .message()
                .split_once(": ")
                .unwrap_or((stage, status.message()));
            StageError::InvalidArgument {
                field: field.to_owned(),
                reason: reason.to_owned(),
            }
        }
        code => StageError::Unavailable(format!("{stage} {code:?}: {}", status.message())),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RemoteRetrieval {
    client: pb::retrieval_service_client::RetrievalServiceClient<Channel>,
    catalog: Arc<Catalog>,
}

impl RemoteRetrieval {
    pub(crate) fn new(
        addr: &str,
        config: &Config,
        catalog: Arc<Catalog>,
    ) -> Result<Self, BoxError> {
        let client =
            pb::retrieval_service_client::RetrievalServiceClient::new(channel(addr, config)?)
                .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
        Ok(Self { client, catalog })
    }
}

#[async_trait]
impl CandidateStage for RemoteRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &FilterSpec,
    ) -> Result<Vec<Candidate>, StageError> {
        let request = pb::SearchRequest {
            vector: query.to_vec(),
            k: k as u32,
            filter: Some(pb::ItemFilter {
                categories: filter.categories.clone(),
                min_price: filter.min_price,
                max_price: filter.max_price,
                in_stock_only: filter.in_stock_only,
                exclude_item_ids: filter.exclude_item_ids.clone(),
            }),
            ef_search: None,
        };
        let response = self
            .client
            .clone()
            .search(request)
            .await
            .map_err(|s| stage_error("retrieval", s))?;
        // Map by external id: the retrieval server's dense ids are its own.
        Ok(response
            .into_inner()
            .candidates
            .into_iter()
            .filter_map(|c| {
                self.catalog.idx_of(&c.item_id).map(|idx| Candidate {
                    idx,
                    score: c.score,
                    distance: c.distance,
                })
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RemoteRanking {
    client: pb::ranking_service_client::RankingServiceClient<Channel>,
    catalog: Arc<Catalog>,
}

impl RemoteRanking {
    pub(crate) fn new(
        addr: &str,
        config: &Config,
        catalog: Arc<Catalog>,
    ) -> Result<Self, BoxError> {
        let client = pb::ranking_service_client::RankingServiceClient::new(channel(addr, config)?)
            .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
        Ok(Self { client, catalog })
    }
}

#[async_trait]
impl ScoringStage for RemoteRanking {
    async fn score(
        &self,
        user_id: &str,
        query: &[f32],
        candidates: &[Candidate],
    ) -> Result<Scores, StageError> {
        let catalog = &self.catalog;
        let request = pb::RankRequest {
            user: Some(pb::UserContext {
                user_id: user_id.to_owned(),
                query_vector: query.to_vec(),
            }),
            candidates: candidates
                .iter()
                .map(|c| pb::RankCandidate {
                    item_id: catalog.item_id(c.idx).to_owned(),
                    retrieval_score: c.score,
                })
                .collect(),
        };
        let response = self
            .client
            .clone()
            .rank(request)
            .await
            .map_err(|s| stage_error("ranking", s))?
            .into_inner();
        Ok(Scores {
            scores: response.scores,
            model_version: response.model_version,
        })
    }
}
