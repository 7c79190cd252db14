use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use tandem_catalog::{Catalog, ItemIdx};
use tandem_ranking::{FeatureValues, Ranker, ScoreRequest};
use tandem_retrieval::{Candidate, FilterSpec, Index, SearchParams};

use crate::StageError;

mod remote;

pub use remote::{RemoteRanking, RemoteRetrieval};

/// What retrieval returned: candidates best first, and why they may be incomplete (a shard
/// that failed or missed its deadline).
#[derive(Debug, Clone, Default)]
pub struct Retrieved {
    pub candidates: Vec<Candidate>,
    pub partial: Option<String>,
    /// The candidates' attributes as a remote retrieval reported them (upserts applied), by
    /// catalog index; empty in process, where the index is read directly.
    pub reported: HashMap<ItemIdx, ItemNow>,
}

impl From<Vec<Candidate>> for Retrieved {
    fn from(candidates: Vec<Candidate>) -> Self {
        Self {
            candidates,
            ..Self::default()
        }
    }
}

/// An item as retrieval holds it now, upserts applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemNow {
    pub category: String,
    pub price: f32,
    pub in_stock: bool,
}

/// What retrieval knows about one item now.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemStatus {
    Present(ItemNow),
    /// Deleted, or never held.
    Gone,
    /// The part of retrieval that holds it did not answer.
    Unknown,
}

/// Nearest items to a query vector under a filter, best first.
#[async_trait]
pub trait CandidateStage: Send + Sync {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &FilterSpec,
    ) -> Result<Retrieved, StageError>;

    /// The status of `item_ids`, one per id in order, for items the answer holds that did not
    /// come from `search` (trending and popular backfill). `None`: this stage leaves the
    /// check to the caller (an index in this process is read directly).
    async fn item_status(
        &self,
        item_ids: &[String],
    ) -> Result<Option<Vec<ItemStatus>>, StageError> {
        let _ = item_ids;
        Ok(None)
    }
}

/// What ranking knows about the request besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct ScoringContext<'a> {
    pub user_id: &'a str,
    pub query: &'a [f32],
    /// The user's recent items, newest first.
    pub recent_items: &'a [ItemIdx],
    pub context: &'a BTreeMap<String, String>,
    /// A pinned model version, if the request named one.
    pub model_version: Option<&'a str>,
    /// Return the model's input values too (explain, served-feature logging).
    pub with_features: bool,
}

/// What ranking answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    /// One per candidate, in request order.
    pub scores: Vec<f32>,
    pub model_version: String,
    /// With `with_features`: each feature's values for every candidate (rows in order).
    pub features: Vec<FeatureValues>,
}

/// One score per candidate, in order, and the model version that produced them.
#[async_trait]
pub trait ScoringStage: Send + Sync {
    async fn score(
        &self,
        request: ScoringContext<'_>,
        candidates: &[Candidate],
    ) -> Result<Scored, StageError>;
}

/// Retrieval in this process. The search runs on the blocking pool: it is CPU work.
#[derive(Debug, Clone)]
pub struct InProcessRetrieval {
    index: Arc<Index>,
    /// The catalog ranking reads features from; the index's rows map to it by item id (the
    /// index may come from a snapshot, hold upserts, or serve a shard).
    catalog: Arc<Catalog>,
}

impl InProcessRetrieval {
    pub fn new(index: Arc<Index>, catalog: Arc<Catalog>) -> Self {
        Self { index, catalog }
    }
}

#[async_trait]
impl CandidateStage for InProcessRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &FilterSpec,
    ) -> Result<Retrieved, StageError> {
        let index = self.index.clone();
        let filter = index.resolve_filter(filter)?;
        let query = query.to_vec();
        let found = tokio::task::spawn_blocking({
            let index = index.clone();
            move || index.search(&query, &filter, SearchParams { k, ef_search: None })
        })
        .await
        .map_err(|e| StageError::Unavailable(format!("retrieval task failed: {e}")))?
        .map_err(StageError::from)?;
        // Items the catalog does not know yet (upserted since it was written) are left out:
        // ranking could not compute their features.
        let catalog = &self.catalog;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let idx = index.item_id(c.idx).and_then(|id| catalog.idx_of(&id))?;
                Some(Candidate { idx, ..c })
            })
            .collect::<Vec<_>>()
            .into())
    }
}

/// Ranking in this process: requests join the model's dynamic batches.
#[derive(Debug, Clone)]
pub struct InProcessRanking(pub Arc<Ranker>);

#[async_trait]
impl ScoringStage for InProcessRanking {
    async fn score(
        &self,
        request: ScoringContext<'_>,
        candidates: &[Candidate],
    ) -> Result<Scored, StageError> {
        let score_request = ScoreRequest {
            user_id: request.user_id.to_owned(),
            user_vector: request.query.to_vec(),
            items: candidates.iter().map(|c| c.idx).collect(),
            retrieval_scores: candidates.iter().map(|c| c.score).collect(),
            recent_items: request.recent_items.to_vec(),
            context: request.context.clone(),
            version: request.model_version.map(str::to_owned),
        };
        let (scores, features) = if request.with_features {
            self.0.rank_with_features(score_request).await?
        } else {
            (self.0.rank(score_request).await?, Vec::new())
        };
        Ok(Scored {
            scores: scores.scores,
            model_version: scores.model_version,
            features,
        })
    }
}
