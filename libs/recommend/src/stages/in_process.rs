//! The stages in this process (embedded topology): the index and the ranker are called
//! directly, with no copy of the request on the way.

use std::sync::Arc;

use std::time::Instant;

use async_trait::async_trait;
use tandem_catalog::{Catalog, Category, ItemAttributes, ItemIdx};
use tandem_ranking::{Ranker, ScoreRequest};
use tandem_retrieval::{CurrentItem, Index, ItemFilter, SearchParams};

use super::{Candidate, CandidateStage, ItemStatus, Retrieved, Scored, ScoringStage};
use crate::StageError;

/// Retrieval from an index in this process.
///
/// The search runs on the calling task: it is a bounded CPU step (tens of microseconds at the
/// default ef), and handing it to the blocking pool cost as much CPU again in thread wake-ups.
#[derive(Debug, Clone)]
pub struct InProcessRetrieval {
    index: Arc<Index>,
    catalog: Arc<Catalog>,
    /// The index's first rows are the catalog's items in order, with its category vocabulary:
    /// catalog indexes and category codes are the index's own, and a filter resolved against
    /// the catalog applies to the index as it is until a write deletes or replaces an item.
    same_rows: bool,
    /// Same rows, and each as the catalog states it (category, price, stock): until a write
    /// deletes or replaces an item, candidates need not carry their attributes.
    same_attributes: bool,
}

impl InProcessRetrieval {
    /// `catalog`: the gateway's, whose indexes the pipeline speaks in. The index may hold
    /// another version of it (restored from a snapshot) or upserts.
    pub fn new(index: Arc<Index>, catalog: Arc<Catalog>) -> Self {
        let same_catalog = Arc::ptr_eq(index.catalog(), &catalog);
        let same_rows = same_catalog || same_items(index.catalog(), &catalog);
        if !same_rows {
            tracing::info!(
                "the index holds another catalog version than --items: filters are resolved \
                 against the index by item id"
            );
        }
        let same_attributes =
            same_catalog || (same_rows && same_item_attributes(&index, &catalog).unwrap_or(false));
        Self {
            index,
            catalog,
            same_rows,
            same_attributes,
        }
    }

    /// The item's attributes in the catalog's terms.
    fn attributes(&self, now: CurrentItem<'_>) -> ItemAttributes {
        let category =
            if self.same_rows && (now.category_code as usize) < self.catalog.categories().len() {
                Category::Code(now.category_code)
            } else {
                self.catalog.category_named(now.category)
            };
        ItemAttributes {
            category,
            price: now.price,
            in_stock: now.in_stock,
        }
    }
}

/// Whether the index's rows of `catalog`'s items hold what `catalog` states (an index restored
/// from a snapshot may hold another version of the same items).
fn same_item_attributes(index: &Index, catalog: &Catalog) -> Result<bool, StageError> {
    let current = index.current_items()?;
    Ok((0..catalog.len() as ItemIdx).all(|i| {
        current.row_attributes(i).is_some_and(|now| {
            now.category_code == catalog.category_code(i)
                && now.price.to_bits() == catalog.price(i).to_bits()
                && now.in_stock == catalog.in_stock(i)
        })
    }))
}

fn same_items(a: &Catalog, b: &Catalog) -> bool {
    a.len() == b.len()
        && a.categories() == b.categories()
        && (0..a.len() as ItemIdx).all(|i| a.item_id(i) == b.item_id(i))
}

#[async_trait]
impl CandidateStage for InProcessRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
        // A search runs on the caller's task and is done in well under a deadline.
        _deadline: Option<Instant>,
    ) -> Result<Retrieved, StageError> {
        let changed = self.index.current_items()?.has_changes();
        let params = SearchParams { k, ef_search: None };
        let found = if self.same_rows && !changed {
            self.index.search(query, filter, params)?
        } else {
            // Replaced items live in new rows: resolve by id so their exclusions follow them.
            let resolved = self.index.resolve_filter(&filter.spec(&self.catalog))?;
            self.index.search(query, &resolved, params)?
        };
        if self.same_attributes && !changed {
            // Each candidate is its catalog row as the catalog states it: nothing to read.
            // Sized once (a filtered iterator would grow the list by doubling).
            let mut candidates = Vec::with_capacity(found.len());
            for c in found {
                if (c.idx as usize) < self.catalog.len() {
                    candidates.push(Candidate {
                        idx: c.idx,
                        score: c.score,
                        attributes: None,
                    });
                }
            }
            return Ok(Retrieved {
                candidates,
                partial: None,
            });
        }
        let items = self.index.current_items()?;
        items.prefetch_rows(found.iter().map(|c| c.idx));
        // Sized once: collected through `filter_map`, the list would grow from 4 by doubling.
        let mut candidates = Vec::with_capacity(found.len());
        candidates.extend(found.into_iter().filter_map(|c| {
            let now = items.row_attributes(c.idx)?;
            // Same rows: the index's row is the catalog's index, no id to look up.
            let idx = if self.same_rows && (c.idx as usize) < self.catalog.len() {
                c.idx
            } else {
                self.catalog.idx_of(items.row_id(c.idx)?)?
            };
            Some(Candidate {
                idx,
                score: c.score,
                attributes: Some(self.attributes(now)),
            })
        }));
        Ok(Retrieved {
            candidates,
            partial: None,
        })
    }

    async fn items(
        &self,
        items: &[ItemIdx],
        _deadline: Option<Instant>,
    ) -> Result<Vec<ItemStatus>, StageError> {
        let current = self.index.current_items()?;
        Ok(items
            .iter()
            .map(|&idx| {
                let now = if self.same_rows {
                    current.live_row(idx)
                } else {
                    None
                };
                match now.or_else(|| current.get(self.catalog.item_id(idx))) {
                    Some(now) => ItemStatus::Present(self.attributes(now)),
                    None => ItemStatus::Gone,
                }
            })
            .collect())
    }
}

/// Ranking in this process: requests join the model's dynamic batches.
#[derive(Debug, Clone)]
pub struct InProcessRanking(pub Arc<Ranker>);

#[async_trait]
impl ScoringStage for InProcessRanking {
    async fn score(
        &self,
        request: ScoreRequest,
        with_features: bool,
        // The caller's future is dropped at its deadline; the batcher skips rows whose
        // caller has gone.
        _deadline: Option<Instant>,
    ) -> Result<Scored, StageError> {
        let (scores, features) = if with_features {
            self.0.rank_with_features(request).await?
        } else {
            (self.0.rank(request).await?, Vec::new())
        };
        Ok(Scored {
            scores: scores.scores,
            model_version: scores.model_version,
            features,
        })
    }
}
