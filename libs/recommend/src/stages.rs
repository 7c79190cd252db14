use std::sync::Arc;

use async_trait::async_trait;
use tandem_catalog::{Catalog, ItemIdx};
use tandem_ranking::{RankRequest, Ranker, Scores};
use tandem_retrieval::{Candidate, FilterSpec, Index, SearchParams};

use crate::StageError;

/// What retrieval returned: candidates best first, and why they may be incomplete (a shard
/// that failed or missed its deadline).
#[derive(Debug, Clone, Default)]
pub struct Retrieved {
    pub candidates: Vec<Candidate>,
    pub partial: Option<String>,
}

impl From<Vec<Candidate>> for Retrieved {
    fn from(candidates: Vec<Candidate>) -> Self {
        Self {
            candidates,
            partial: None,
        }
    }
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
}

/// One score per candidate, in order, and the model version that produced them.
#[async_trait]
pub trait ScoringStage: Send + Sync {
    async fn score(
        &self,
        user_id: &str,
        query: &[f32],
        candidates: &[Candidate],
    ) -> Result<Scores, StageError>;
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

/// Ranking in this process, on the blocking pool.
#[derive(Debug, Clone)]
pub struct InProcessRanking(pub Arc<Ranker>);

#[async_trait]
impl ScoringStage for InProcessRanking {
    async fn score(
        &self,
        _user_id: &str,
        query: &[f32],
        candidates: &[Candidate],
    ) -> Result<Scores, StageError> {
        let ranker = self.0.clone();
        let query = query.to_vec();
        let items: Vec<ItemIdx> = candidates.iter().map(|c| c.idx).collect();
        let retrieval: Vec<f32> = candidates.iter().map(|c| c.score).collect();
        tokio::task::spawn_blocking(move || {
            ranker.rank(RankRequest {
                user_vector: &query,
                items: &items,
                retrieval_scores: &retrieval,
            })
        })
        .await
        .map_err(|e| StageError::Unavailable(format!("ranking task failed: {e}")))?
        .map_err(StageError::from)
    }
}
