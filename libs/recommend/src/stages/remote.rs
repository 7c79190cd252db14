//! Stages behind gRPC (split topology): the retrieval shards fanned out and merged, and the
//! ranking server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    CandidateStage, ItemNow, ItemStatus, Retrieved, Scored, ScoringContext, ScoringStage,
    StageError,
};
use async_trait::async_trait;
use tandem_catalog::Catalog;
use tandem_proto::v1 as pb;
use tandem_ranking::FeatureValues;
use tandem_retrieval::{Candidate, FilterSpec};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn channel(addr: &str, timeout: Duration) -> Result<Channel, BoxError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A stage's status as a stage error: its validation errors stay the caller's fault, anything
/// else means the stage could not answer.
fn stage_error(stage: &str, status: tonic::Status) -> StageError {
    match status.code() {
        tonic::Code::NotFound if status.message().starts_with("model version") => {
            StageError::NotFound(format!("model_version: {}", status.message()))
        }
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

/// Retrieval over gRPC: one server, or the shards of one catalog (each serving the items
/// whose id hashes to it), searched in parallel and merged.
#[derive(Debug, Clone)]
pub struct RemoteRetrieval {
    shards: Vec<(
        String,
        pb::retrieval_service_client::RetrievalServiceClient<Channel>,
    )>,
    catalog: Arc<Catalog>,
    deadline: Duration,
}

impl RemoteRetrieval {
    /// `timeout`: the most one call to a shard may take before the shard counts as failed.
    pub fn new(
        addrs: &[String],
        timeout: Duration,
        catalog: Arc<Catalog>,
    ) -> Result<Self, BoxError> {
        let shards = addrs
            .iter()
            .map(|addr| {
                let client = pb::retrieval_service_client::RetrievalServiceClient::new(channel(
                    addr, timeout,
                )?)
                .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
                Ok((addr.clone(), client))
            })
            .collect::<Result<_, BoxError>>()?;
        Ok(Self {
            shards,
            catalog,
            deadline: timeout,
        })
    }
}

#[async_trait]
impl CandidateStage for RemoteRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &FilterSpec,
    ) -> Result<Retrieved, StageError> {
        let request = pb::SearchRequest {
            vector: query.to_vec(),
            k: k as u32,
            filter: Some(tandem_retrieval_api::filter_to_proto(filter)),
            ef_search: None,
        };
        let answers = self
            .each_shard(move |mut client| {
                let request = request.clone();
                async move { client.search(request).await }
            })
            .await?;
        let mut merged = Vec::new();
        let mut failed = Vec::new();
        for (addr, answer) in answers {
            match answer {
                Some(Ok(response)) => merged.extend(response.candidates),
                Some(Err(status)) => match stage_error("retrieval", status) {
                    // Every shard validates the same request: a bad one is the caller's fault.
                    e @ (StageError::InvalidArgument { .. } | StageError::NotFound(_)) => {
                        return Err(e);
                    }
                    StageError::Unavailable(why) => failed.push(format!("{addr}: {why}")),
                },
                None => failed.push(format!(
                    "{addr}: no answer within {} ms",
                    self.deadline.as_millis()
                )),
            }
        }
        if failed.len() == self.shards.len() {
            return Err(StageError::Unavailable(failed.join("; ")));
        }
        merged.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item_id.cmp(&b.item_id)));
        merged.truncate(k);
        // Map by external id: the retrieval servers' dense ids are their own.
        let mut reported = HashMap::with_capacity(merged.len());
        let candidates = merged
            .into_iter()
            .filter_map(|c| {
                let idx = self.catalog.idx_of(&c.item_id)?;
                // None until writes changed an item (the catalog is current), or from an
                // older server.
                if !c.category.is_empty() {
                    reported.insert(
                        idx,
                        ItemNow {
                            category: c.category,
                            price: c.price,
                            in_stock: c.in_stock,
                        },
                    );
                }
                Some(Candidate {
                    idx,
                    score: c.score,
                    distance: c.distance,
                })
            })
            .collect();
        let partial = (!failed.is_empty()).then(|| {
            format!(
                "{} of {} retrieval shards failed ({})",
                failed.len(),
                self.shards.len(),
                failed.join("; ")
            )
        });
        Ok(Retrieved {
            candidates,
            partial,
            reported,
        })
    }

    /// Asks every shard at once: an item is present where a shard holds it, gone where its
    /// own shard (or every shard) answered without it, unknown while its shard is down.
    async fn item_status(
        &self,
        item_ids: &[String],
    ) -> Result<Option<Vec<ItemStatus>>, StageError> {
        let request = pb::GetItemsRequest {
            item_ids: item_ids.to_vec(),
        };
        let answers = self
            .each_shard(move |mut client| {
                let request = request.clone();
                async move { client.get_items(request).await }
            })
            .await?;
        let mut statuses: Vec<Option<ItemStatus>> = vec![None; item_ids.len()];
        let mut failed = Vec::new();
        for (addr, answer) in answers {
            let items = match answer {
                Some(Ok(response)) => response.items,
                Some(Err(status)) => {
                    failed.push(format!("{addr}: {}", status.message()));
                    continue;
                }
                None => {
                    failed.push(format!("{addr}: no answer in time"));
                    continue;
                }
            };
            if items.len() != item_ids.len() {
                failed.push(format!(
                    "{addr}: {} states for {} ids",
                    items.len(),
                    item_ids.len()
                ));
                continue;
            }
            for (status, item) in statuses.iter_mut().zip(items) {
                if item.found {
                    *status = Some(ItemStatus::Present(ItemNow {
                        category: item.category,
                        price: item.price,
                        in_stock: item.in_stock,
                    }));
                } else if item.owned && status.is_none() {
                    *status = Some(ItemStatus::Gone);
                }
            }
        }
        if failed.len() == self.shards.len() {
            return Err(StageError::Unavailable(failed.join("; ")));
        }
        // Held by none of the shards that answered: gone if all did, else its shard is down.
        let unheld = if failed.is_empty() {
            ItemStatus::Gone
        } else {
            ItemStatus::Unknown
        };
        Ok(Some(
            statuses
                .into_iter()
                .map(|s| s.unwrap_or_else(|| unheld.clone()))
                .collect(),
        ))
    }
}

impl RemoteRetrieval {
    /// Runs `call` on every shard in parallel, each within the stage deadline (`None`: none
    /// came), and returns the answers by shard address.
    async fn each_shard<T, Fut>(
        &self,
        call: impl Fn(pb::retrieval_service_client::RetrievalServiceClient<Channel>) -> Fut,
    ) -> Result<Vec<(String, Option<Result<T, tonic::Status>>)>, StageError>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let calls: Vec<_> = self
            .shards
            .iter()
            .map(|(addr, client)| {
                let (answer, deadline, addr) = (call(client.clone()), self.deadline, addr.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(deadline, answer).await.ok();
                    (addr, answer.map(|a| a.map(tonic::Response::into_inner)))
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(calls.len());
        for call in calls {
            answers.push(
                call.await
                    .map_err(|e| StageError::Unavailable(format!("retrieval task failed: {e}")))?,
            );
        }
        Ok(answers)
    }
}

#[derive(Debug, Clone)]
pub struct RemoteRanking {
    client: pb::ranking_service_client::RankingServiceClient<Channel>,
    catalog: Arc<Catalog>,
}

impl RemoteRanking {
    pub fn new(addr: &str, timeout: Duration, catalog: Arc<Catalog>) -> Result<Self, BoxError> {
        let client = pb::ranking_service_client::RankingServiceClient::new(channel(addr, timeout)?)
            .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
        Ok(Self { client, catalog })
    }
}

#[async_trait]
impl ScoringStage for RemoteRanking {
    async fn score(
        &self,
        request: ScoringContext<'_>,
        candidates: &[Candidate],
    ) -> Result<Scored, StageError> {
        let catalog = &self.catalog;
        let request = pb::RankRequest {
            user: Some(pb::UserContext {
                user_id: request.user_id.to_owned(),
                query_vector: request.query.to_vec(),
                recent_item_ids: request
                    .recent_items
                    .iter()
                    .map(|&i| catalog.item_id(i).to_owned())
                    .collect(),
                context: request
                    .context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            model_version: request.model_version.unwrap_or_default().to_owned(),
            explain: request.with_features,
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
        Ok(Scored {
            features: features_by_name(&response.features),
            scores: response.scores,
            model_version: response.model_version,
        })
    }
}

/// Per-candidate feature lists from the wire, back to one column per feature.
fn features_by_name(per_candidate: &[pb::CandidateFeatures]) -> Vec<FeatureValues> {
    let Some(first) = per_candidate.first() else {
        return Vec::new();
    };
    first
        .features
        .iter()
        .enumerate()
        .map(|(f, head)| FeatureValues {
            input: head.input.clone(),
            feature: head.feature.clone(),
            width: head.values.len(),
            values: per_candidate
                .iter()
                .flat_map(|c| c.features.get(f).map_or(&[][..], |v| &v.values[..]))
                .copied()
                .collect(),
        })
        .collect()
}
