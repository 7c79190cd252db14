use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_personalization::{HistoryStore, QueryConfig, query_vector};
use tandem_retrieval::{Candidate, FilterSpec, ItemFilter};

use crate::events::{EventIntake, IncomingEvent, Recorded, Rejection};
use crate::{CandidateStage, RecommendError, ScoringContext, ScoringStage, StageError};

pub const DEFAULT_K: usize = 10;
pub const MAX_K: usize = 1000;
pub const DEFAULT_NUM_CANDIDATES: usize = 200;
pub const MAX_NUM_CANDIDATES: usize = 5000;
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// `model_version` of answers that no model scored.
pub const POPULARITY_VERSION: &str = "popularity";
/// `model_version` of answers in retrieval order because ranking could not answer.
pub const RETRIEVAL_ORDER_VERSION: &str = "retrieval";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecommendRequest {
    pub user_id: String,
    pub k: Option<u32>,
    pub num_candidates: Option<u32>,
    pub filter: FilterSpec,
    pub context_item_ids: Vec<String>,
    /// Passed to the ranking model; `hour_of_day` is filled from the clock when absent.
    pub context: BTreeMap<String, String>,
    /// Score with this model version instead of the user's traffic-split share.
    pub model_version: Option<String>,
}

/// The UTC hour, as the `hour_of_day` context value.
fn hour_of_day_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((secs / 3600) % 24).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecommendedItem {
    pub idx: ItemIdx,
    pub score: f32,
    pub retrieval_score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// Best first, distinct.
    pub items: Vec<RecommendedItem>,
    pub model_version: String,
    /// Why a fallback answered, if one did.
    pub degraded: Option<String>,
}

pub struct Recommender {
    catalog: Arc<Catalog>,
    history: Arc<dyn HistoryStore>,
    events: EventIntake,
    retrieval: Arc<dyn CandidateStage>,
    ranking: Arc<dyn ScoringStage>,
    query: QueryConfig,
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("catalog", &self.catalog)
            .field("query", &self.query)
            .finish()
    }
}

impl Recommender {
    pub fn new(
        catalog: Arc<Catalog>,
        history: Arc<dyn HistoryStore>,
        events: EventIntake,
        retrieval: Arc<dyn CandidateStage>,
        ranking: Arc<dyn ScoringStage>,
        query: QueryConfig,
    ) -> Self {
        Self {
            catalog,
            history,
            events,
            retrieval,
            ranking,
            query,
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Records a batch whole or not at all; once this returns the events are on disk and the
    /// next `recommend` sees them.
    pub async fn record_events(
        &self,
        events: &[IncomingEvent],
    ) -> Result<Recorded, RecommendError> {
        self.events.record(events).await
    }

    /// Records the valid events of a batch and says why the others were refused.
    pub async fn record_each_event(
        &self,
        events: &[IncomingEvent],
    ) -> Result<(Recorded, Vec<Rejection>), RecommendError> {
        self.events.record_each(events).await
    }

    pub async fn recommend(
        &self,
        req: &RecommendRequest,
    ) -> Result<Recommendation, RecommendError> {
        if req.user_id.is_empty() {
            return Err(RecommendError::invalid("user_id", "must not be empty"));
        }
        let k = match req.k {
            None => DEFAULT_K,
            Some(k) if k == 0 || k as usize > MAX_K => {
                return Err(RecommendError::invalid(
                    "k",
                    format!("must be 1 to {MAX_K}, got {k}"),
                ));
            }
            Some(k) => k as usize,
        };
        let num_candidates = match req.num_candidates {
            None => DEFAULT_NUM_CANDIDATES.max(k),
            Some(n) if (n as usize) < k || n as usize > MAX_NUM_CANDIDATES => {
                return Err(RecommendError::invalid(
                    "num_candidates",
                    format!("must be k ({k}) to {MAX_NUM_CANDIDATES}, got {n}"),
                ));
            }
            Some(n) => n as usize,
        };
        let history = self.history.get(&req.user_id);
        // Unknown context items are skipped: a page may show items newer than this catalog.
        let context: Vec<ItemIdx> = req
            .context_item_ids
            .iter()
            .filter_map(|id| self.catalog.idx_of(id))
            .collect();
        let excluded: HashSet<ItemIdx> =
            history.purchased.iter().chain(&context).copied().collect();
        let mut filter = ItemFilter::resolve(&self.catalog, &req.filter).map_err(|e| match e {
            tandem_retrieval::RetrievalError::InvalidArgument { field, reason } => {
                RecommendError::invalid(field, reason)
            }
            other => RecommendError::invalid("filter", other.to_string()),
        })?;
        filter.exclude(excluded.iter().copied());

        let Some(query) = query_vector(&self.catalog, &history, &context, &self.query) else {
            return Ok(self.popular(k, &filter, None));
        };
        let mut spec = req.filter.clone();
        spec.exclude_item_ids
            .extend(excluded.iter().map(|&i| self.catalog.item_id(i).to_owned()));

        let (candidates, partial) = match self.retrieval.search(&query, num_candidates, &spec).await
        {
            Ok(r) => (r.candidates, r.partial),
            Err(StageError::InvalidArgument { field, reason }) => {
                return Err(RecommendError::InvalidArgument { field, reason });
            }
            Err(StageError::NotFound(what)) => return Err(RecommendError::NotFound(what)),
            Err(StageError::Unavailable(why)) => {
                tracing::warn!(%why, "retrieval failed; answering with popular items");
                return Ok(self.popular(k, &filter, Some(format!("retrieval unavailable: {why}"))));
            }
        };
        // A remote stage may run on another catalog version: keep only what this one admits.
        let mut seen = HashSet::with_capacity(candidates.len());
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| {
                (c.idx as usize) < self.catalog.len() && filter.admits(&self.catalog, c.idx)
            })
            .filter(|c| seen.insert(c.idx))
            .collect();

        let recent: Vec<ItemIdx> = history.recent.iter().rev().map(|e| e.item).collect();
        let mut context = req.context.clone();
        context
            .entry("hour_of_day".to_owned())
            .or_insert_with(hour_of_day_now);
        let scoring = ScoringContext {
            user_id: &req.user_id,
            query: &query,
            recent_items: &recent,
            context: &context,
            model_version: req.model_version.as_deref().filter(|v| !v.is_empty()),
        };
        let (scores, model_version, degraded) = match self.ranking.score(scoring, &candidates).await
        {
            Ok(s) if s.scores.len() == candidates.len() => (s.scores, s.model_version, None),
            Ok(s) => {
                let why = format!(
                    "{} scores for {} candidates",
                    s.scores.len(),
                    candidates.len()
                );
                (
                    retrieval_order(&candidates),
                    RETRIEVAL_ORDER_VERSION.to_owned(),
                    Some(format!("ranking failed: {why}")),
                )
            }
            Err(StageError::InvalidArgument { field, reason }) => {
                return Err(RecommendError::InvalidArgument { field, reason });
            }
            Err(StageError::NotFound(what)) => return Err(RecommendError::NotFound(what)),
            Err(StageError::Unavailable(why)) => {
                tracing::warn!(%why, "ranking failed; answering in retrieval order");
                (
                    retrieval_order(&candidates),
                    RETRIEVAL_ORDER_VERSION.to_owned(),
                    Some(format!("ranking unavailable: {why}")),
                )
            }
        };
        let mut items: Vec<RecommendedItem> = candidates
            .iter()
            .zip(scores)
            .map(|(c, score)| RecommendedItem {
                idx: c.idx,
                score,
                retrieval_score: c.score,
            })
            .collect();
        items.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.idx.cmp(&b.idx)));
        items.truncate(k);
        let degraded = match (partial, degraded) {
            (None, d) => d,
            (Some(p), None) => Some(format!("partial retrieval: {p}")),
            (Some(p), Some(d)) => Some(format!("{d}; partial retrieval: {p}")),
        };
        Ok(Recommendation {
            items,
            model_version,
            degraded,
        })
    }

    /// Most popular admitted items, scored by popularity.
    fn popular(&self, k: usize, filter: &ItemFilter, degraded: Option<String>) -> Recommendation {
        let items = self
            .catalog
            .by_popularity()
            .iter()
            .filter(|&&i| filter.admits(&self.catalog, i))
            .take(k)
            .map(|&idx| RecommendedItem {
                idx,
                score: self.catalog.popularity(idx),
                retrieval_score: 0.0,
            })
            .collect();
        Recommendation {
            items,
            model_version: POPULARITY_VERSION.into(),
            degraded,
        }
    }
}

/// Scores that keep retrieval's order when ranking cannot answer.
fn retrieval_order(candidates: &[Candidate]) -> Vec<f32> {
    candidates.iter().map(|c| c.score).collect()
}
