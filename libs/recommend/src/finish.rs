//! The last step of a Recommend: business rules on the ranked candidates, backfill from
//! trending and popular items, and a check with retrieval of every backfilled item (it did
//! not come through retrieval's filter): deleted or no longer admitted ones are replaced, the
//! rest are shown as retrieval holds them now.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tandem_catalog::{Catalog, ItemAttributes, ItemIdx};
use tandem_personalization::StateStore;
use tandem_retrieval::ItemFilter;

use crate::pipeline::{RecommendedItem, StageTimer, within};
use crate::plan::Plan;
use crate::rules::{self, Placed, RankedRows, RulesConfig};
use crate::{Candidate, CandidateStage, ItemStatus};

/// Rounds of asking retrieval about backfilled items; each replaces the ones found gone.
/// After the last, items still unchecked are checked once more and dropped if gone.
const BACKFILL_CHECK_ROUNDS: usize = 3;

/// The candidates with the model's scores, row by row (`scores[row]` is `candidates[row]`'s).
pub(crate) struct ScoredCandidates<'a> {
    pub candidates: &'a [Candidate],
    pub scores: &'a [f32],
    /// The pipeline's, for the candidates that carry no attributes of their own.
    pub catalog: &'a Catalog,
}

impl RankedRows for ScoredCandidates<'_> {
    fn rows(&self) -> usize {
        self.candidates.len().min(self.scores.len())
    }

    fn idx(&self, row: usize) -> ItemIdx {
        self.candidates[row].idx
    }

    fn score(&self, row: usize) -> f32 {
        self.scores[row]
    }

    fn placed(&self, row: usize) -> Placed {
        let c = &self.candidates[row];
        Placed {
            candidate: Some(row),
            ..Placed::new(
                c.idx,
                self.scores[row],
                c.score,
                c.attributes_in(self.catalog),
            )
        }
    }
}

/// What the rules read besides the plan.
pub(crate) struct Finisher<'a> {
    pub catalog: &'a Catalog,
    pub state: &'a dyn StateStore,
    pub retrieval: &'a dyn CandidateStage,
    pub rules: &'a RulesConfig,
    pub items_timer: &'a StageTimer,
}

impl Finisher<'_> {
    /// Rules steps 2 to 6 on `ranked`, backfilled (those of `prefer` categories first), every
    /// backfilled item checked with retrieval within the time left.
    pub(crate) async fn finish<R: RankedRows + Sync + ?Sized>(
        &self,
        plan: &Plan,
        ranked: &R,
        prefer: &HashSet<u32>,
        time_left: impl Fn() -> Option<std::time::Duration>,
    ) -> Vec<RecommendedItem> {
        // Copied only when a backfilled item turns out gone and is excluded.
        let mut filter = std::borrow::Cow::Borrowed(&plan.filter);
        let mut checked: HashMap<ItemIdx, ItemAttributes> = HashMap::new();
        let mut placed = self.apply(plan, &filter, ranked, prefer);
        for round in 0..=BACKFILL_CHECK_ROUNDS {
            let unchecked: Vec<ItemIdx> = placed
                .iter()
                .filter(|p| p.candidate.is_none() && !checked.contains_key(&p.idx))
                .map(|p| p.idx)
                .collect();
            if unchecked.is_empty() {
                break;
            }
            let statuses = match within(time_left(), self.items_timer, |deadline| {
                self.retrieval.items(&unchecked, deadline)
            })
            .await
            {
                Ok(statuses) if statuses.len() == unchecked.len() => statuses,
                Ok(statuses) => {
                    tracing::warn!(
                        asked = unchecked.len(),
                        answered = statuses.len(),
                        "retrieval's item status does not match the request; backfill unchecked"
                    );
                    break;
                }
                Err(e) => {
                    // Late or down: the answer goes out as it is, in time.
                    tracing::debug!(error = %e, "backfilled items unchecked");
                    break;
                }
            };
            let mut gone = Vec::new();
            for (idx, status) in unchecked.into_iter().zip(statuses) {
                match status {
                    ItemStatus::Present(now) if filter.admits_item(idx, &now) => {
                        checked.insert(idx, now);
                    }
                    ItemStatus::Present(_) | ItemStatus::Gone => gone.push(idx),
                    // Its shard is down: shown as the catalog states it.
                    ItemStatus::Unknown => {
                        checked.insert(idx, self.catalog.attributes(idx));
                    }
                }
            }
            if gone.is_empty() {
                break;
            }
            filter.to_mut().exclude(gone.iter().copied());
            if round == BACKFILL_CHECK_ROUNDS {
                // Out of rounds: drop what is gone rather than show it.
                placed.retain(|p| !gone.contains(&p.idx));
                break;
            }
            placed = self.apply(plan, &filter, ranked, prefer);
        }
        placed
            .into_iter()
            .map(|mut p| {
                if let Some(now) = checked.remove(&p.idx) {
                    p.attributes = now;
                }
                self.shown(p)
            })
            .collect()
    }

    /// The rules without asking retrieval: for when it is down.
    pub(crate) fn finish_unchecked(
        &self,
        plan: &Plan,
        prefer: &HashSet<u32>,
    ) -> Vec<RecommendedItem> {
        self.apply(plan, &plan.filter, &[] as &[Placed], prefer)
            .into_iter()
            .map(|p| self.shown(p))
            .collect()
    }

    /// A placed item as the answer shows it.
    fn shown(&self, p: Placed) -> RecommendedItem {
        RecommendedItem {
            category: self
                .catalog
                .category_name(&p.attributes.category)
                .to_owned(),
            price: p.attributes.price,
            idx: p.idx,
            score: p.score,
            retrieval_score: p.retrieval_score,
            effects: p.effects,
            features: Vec::new(),
            candidate: p.candidate,
            reason: String::new(),
        }
    }

    fn apply<R: RankedRows + ?Sized>(
        &self,
        plan: &Plan,
        filter: &ItemFilter,
        ranked: &R,
        prefer: &HashSet<u32>,
    ) -> Vec<Placed> {
        let (demote_after, shown) = (self.rules.demote_after_shown, &plan.history.shown);
        let demoted = |idx: ItemIdx| shown.get(&idx).is_some_and(|s| s.times >= demote_after);
        rules::apply(
            ranked,
            plan.k,
            plan.cap,
            (demote_after > 0 && !shown.is_empty()).then_some(&demoted),
            self.backfill(plan.k, filter, prefer),
        )
    }

    /// Trending then popular items the filter admits as the catalog states them, those of
    /// `prefer` categories first.
    fn backfill<'a>(
        &'a self,
        k: usize,
        filter: &'a ItemFilter,
        prefer: &'a HashSet<u32>,
    ) -> impl Iterator<Item = Placed> + 'a {
        let catalog = self.catalog;
        let state = self.state;
        let admits = move |i: ItemIdx| filter.admits(catalog, i);
        let preferred = move |i: ItemIdx| prefer.contains(&catalog.category_code(i));
        let wanted = k.saturating_mul(4).max(64);
        let by_popularity = move || catalog.by_popularity().iter().copied().map(|i| (i, 0.0));
        // Lazy: a ranked answer that fills k never reads trending or scans popularity.
        let preferred_first = (!prefer.is_empty()).then(move || {
            let trending = std::iter::once(())
                .flat_map(move |()| state.trending(wanted, &|i| admits(i) && preferred(i)));
            trending.chain(by_popularity().filter(move |&(i, _)| preferred(i) && admits(i)))
        });
        let everything = std::iter::once(())
            .flat_map(move |()| state.trending(wanted, &admits))
            .chain(by_popularity().filter(move |&(i, _)| admits(i)));
        preferred_first
            .into_iter()
            .flatten()
            .chain(everything)
            .map(move |(i, score)| Placed::new(i, score, 0.0, catalog.attributes(i)))
    }
}

/// A deadline's time left for a stage, less the reserve.
pub(crate) fn time_left(
    deadline: Option<Instant>,
    reserve: std::time::Duration,
) -> Option<std::time::Duration> {
    deadline.map(|d| {
        d.saturating_duration_since(Instant::now())
            .saturating_sub(reserve)
    })
}
