use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_catalog::{Catalog, ItemIdx};
use tandem_personalization::{QueryConfig, StateStore, UserHistory, query_vector};
use tandem_retrieval::{Candidate, CurrentItems, FilterSpec, Index, ItemFilter};

use tandem_events::{ServedCandidate, ServedFeature, ServedLog, ServedRecord};
use tandem_ranking::FeatureValues;

use crate::availability;
use crate::events::{EventIntake, IncomingEvent, Recorded, Rejection};
use crate::rules::{self, Placed, RuleEffect, RulesConfig};
use crate::{
    CandidateStage, ItemNow, ItemStatus, RecommendError, ScoringContext, ScoringStage, StageError,
};

pub const DEFAULT_K: usize = 10;
pub const MAX_K: usize = 1000;
pub const DEFAULT_NUM_CANDIDATES: usize = 200;
pub const MAX_NUM_CANDIDATES: usize = 5000;
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// `model_version` of answers that no model scored: users with no history (and fallbacks).
pub const TRENDING_VERSION: &str = "trending";
/// `model_version` of answers in retrieval order because ranking could not answer.
pub const RETRIEVAL_ORDER_VERSION: &str = "retrieval";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecommendRequest {
    pub user_id: String,
    pub k: Option<u32>,
    pub num_candidates: Option<u32>,
    pub filter: FilterSpec,
    /// Overrides `filter.in_stock_only` and the rules' default when set.
    pub in_stock_only: Option<bool>,
    /// Overrides the rules' diversity cap for this request (0 = no cap).
    pub max_per_category: Option<u32>,
    pub context_item_ids: Vec<String>,
    /// Passed to the ranking model; `hour_of_day` is filled from the clock when absent.
    pub context: BTreeMap<String, String>,
    /// Score with this model version instead of the user's traffic-split share.
    pub model_version: Option<String>,
    /// When the caller stops waiting; stage budgets are cut from the time left.
    pub deadline: Option<Instant>,
    /// Return the model's features and the rules that moved each item.
    pub explain: bool,
    /// Names the request in logs and the served-feature log.
    pub request_id: String,
}

/// How the time a caller gives is shared between the stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    /// Share of the time left that retrieval may use; ranking gets what retrieval leaves.
    pub retrieval_share: f64,
    /// Kept back from the deadline for the rules, encoding and the network back.
    pub reserve: Duration,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            retrieval_share: 0.4,
            reserve: Duration::from_millis(5),
        }
    }
}

/// Everything about how answers are made, besides the stages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub query: QueryConfig,
    pub rules: RulesConfig,
    pub budgets: Budgets,
}

/// The UTC hour, as the `hour_of_day` context value.
fn hour_of_day_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((secs / 3600) % 24).to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecommendedItem {
    pub idx: ItemIdx,
    /// Ranking score; the trending count for cold-start and backfilled items (0 when the item
    /// came from catalog popularity alone).
    pub score: f32,
    pub retrieval_score: f32,
    /// Business rules that moved or added the item.
    pub effects: Vec<RuleEffect>,
    /// With `explain`: the model's input values for this item (one row each).
    pub features: Vec<FeatureValues>,
    /// Its place among the ranked candidates; `None` when it did not come from ranking.
    pub candidate: Option<usize>,
    /// As retrieval holds it now (upserts applied) where that was read, else as the catalog
    /// says.
    pub category: String,
    pub price: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// In served order: by score, then the business rules. Distinct.
    pub items: Vec<RecommendedItem>,
    pub model_version: String,
    /// Why a fallback answered, if one did.
    pub degraded: Option<String>,
}

pub struct Recommender {
    catalog: Arc<Catalog>,
    state: Arc<dyn StateStore>,
    events: EventIntake,
    retrieval: Arc<dyn CandidateStage>,
    ranking: Arc<dyn ScoringStage>,
    query: QueryConfig,
    rules: RulesConfig,
    budgets: Budgets,
    /// Where a sample of answers is logged, and the sampled share.
    served: Option<(Arc<ServedLog>, f64)>,
    /// The index in this process, whose upserts and deletes the catalog does not see.
    current: Option<Arc<Index>>,
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("catalog", &self.catalog)
            .field("query", &self.query)
            .field("rules", &self.rules)
            .finish()
    }
}

/// The stages a [`Recommender`] calls.
pub struct Stages {
    pub retrieval: Arc<dyn CandidateStage>,
    pub ranking: Arc<dyn ScoringStage>,
}

impl Recommender {
    pub fn new(
        catalog: Arc<Catalog>,
        state: Arc<dyn StateStore>,
        events: EventIntake,
        stages: Stages,
        settings: Settings,
    ) -> Self {
        Self {
            catalog,
            state,
            events,
            retrieval: stages.retrieval,
            ranking: stages.ranking,
            query: settings.query,
            rules: settings.rules,
            budgets: settings.budgets,
            served: None,
            current: None,
        }
    }

    /// Checks every item an answer may hold against `index`'s current rows (embedded
    /// topology): deleted items are never recommended, changed ones are filtered as changed.
    pub fn with_current_items(mut self, index: Arc<Index>) -> Self {
        self.current = Some(index);
        self
    }

    /// The index's items as they are now; `None` without an index in this process, or while
    /// no write changed an item the catalog holds (the common case costs no lookups).
    fn current_items(&self) -> Option<CurrentItems<'_>> {
        self.current
            .as_ref()
            .and_then(|index| index.current_items().ok())
            .filter(CurrentItems::has_changes)
    }

    /// Logs `sample` (0 to 1) of the answers that ranking scored to `log`.
    pub fn with_served_log(mut self, log: Arc<ServedLog>, sample: f64) -> Self {
        self.served = Some((log, sample.clamp(0.0, 1.0)));
        self
    }

    fn sampled(&self, request_id: &str) -> bool {
        self.served.as_ref().is_some_and(|(_, share)| {
            // FNV-1a: the same request id is always in or out of the sample.
            let h = request_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            ((h % 1_000_000) as f64) < share * 1_000_000.0
        })
    }

    /// Time left for stages: until the deadline less the reserve (`None`: no deadline).
    fn time_left(&self, deadline: Option<Instant>) -> Option<Duration> {
        deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .saturating_sub(self.budgets.reserve)
        })
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
        let now = now_ms();
        let history = self.state.user(&req.user_id);
        // Unknown context items are skipped: a page may show items newer than this catalog.
        let context: Vec<ItemIdx> = req
            .context_item_ids
            .iter()
            .filter_map(|id| self.catalog.idx_of(id))
            .collect();
        let bought_since = self
            .rules
            .purchase_exclusion_ms
            .map_or(i64::MIN, |window| now.saturating_sub(window));
        let excluded: HashSet<ItemIdx> = history
            .purchased_since(bought_since)
            .chain(context.iter().copied())
            .collect();
        let mut spec = req.filter.clone();
        spec.in_stock_only = req.in_stock_only.unwrap_or(self.rules.in_stock_only);
        let mut filter = ItemFilter::resolve(&self.catalog, &spec).map_err(|e| match e {
            tandem_retrieval::RetrievalError::InvalidArgument { field, reason } => {
                RecommendError::invalid(field, reason)
            }
            other => RecommendError::invalid("filter", other.to_string()),
        })?;
        filter.exclude(excluded.iter().copied());
        let plan = Plan {
            k,
            cap: req
                .max_per_category
                .map_or(self.rules.max_per_category, |c| c as usize),
            filter: &filter,
            history: &history,
        };

        let query = if history.is_empty() {
            None
        } else {
            query_vector(&self.catalog, &history, &context, &self.query)
        };
        let Some(query) = query else {
            let categories: HashSet<u32> = context
                .iter()
                .map(|&i| self.catalog.category_code(i))
                .collect();
            let items = self
                .apply_rules_checked(&plan, Vec::new(), &categories, HashMap::new(), req.deadline)
                .await;
            let answer = Recommendation {
                items,
                model_version: TRENDING_VERSION.into(),
                degraded: None,
            };
            return Ok(self.served(&req.user_id, now, answer));
        };
        spec.exclude_item_ids
            .extend(excluded.iter().map(|&i| self.catalog.item_id(i).to_owned()));

        let retrieval_budget = self
            .time_left(req.deadline)
            .map(|left| left.mul_f64(self.budgets.retrieval_share.clamp(0.0, 1.0)));
        let search = within(
            retrieval_budget,
            "retrieval",
            self.retrieval.search(&query, num_candidates, &spec),
        );
        let (candidates, partial, reported) = match search.await {
            Ok(r) => (r.candidates, r.partial, r.reported),
            Err(StageError::InvalidArgument { field, reason }) => {
                return Err(RecommendError::InvalidArgument { field, reason });
            }
            Err(StageError::NotFound(what)) => return Err(RecommendError::NotFound(what)),
            Err(StageError::Unavailable(why)) => {
                tracing::warn!(%why, "retrieval failed; answering with trending items");
                let answer = self.cold_start(
                    &plan,
                    &HashSet::new(),
                    Some(format!("retrieval unavailable: {why}")),
                );
                return Ok(self.served(&req.user_id, now, answer));
            }
        };
        // A remote stage may run on another catalog version, and an item may have changed
        // since the search: keep only what this catalog admits, on the attributes retrieval
        // holds now.
        let mut seen = HashSet::with_capacity(candidates.len());
        let candidates: Vec<Candidate> = {
            let current = self.current_items();
            candidates
                .into_iter()
                .filter(|c| {
                    (c.idx as usize) < self.catalog.len()
                        && match reported.get(&c.idx) {
                            Some(now) => availability::admits_as(
                                &self.catalog,
                                &filter,
                                c.idx,
                                &now.category,
                                now.price,
                                now.in_stock,
                            ),
                            None => availability::admits(
                                &self.catalog,
                                current.as_ref(),
                                &filter,
                                c.idx,
                            ),
                        }
                })
                .filter(|c| seen.insert(c.idx))
                .collect()
        };

        let log_this = self.sampled(&req.request_id);
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
            with_features: req.explain || log_this,
        };
        let scoring = within(
            self.time_left(req.deadline),
            "ranking",
            self.ranking.score(scoring, &candidates),
        );
        let mut features = Vec::new();
        let (scores, model_version, degraded) = match scoring.await {
            Ok(s) if s.scores.len() == candidates.len() => {
                features = s.features;
                (s.scores, s.model_version, None)
            }
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
        let ranked: Vec<Placed> = candidates
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(row, (c, &score))| Placed {
                candidate: Some(row),
                ..Placed::new(c.idx, score, c.score)
            })
            .collect();
        let mut items = self
            .apply_rules_checked(&plan, ranked, &HashSet::new(), reported, req.deadline)
            .await;
        if log_this {
            self.log_served(req, &model_version, &candidates, &scores, &items, &features);
        }
        if req.explain {
            for item in &mut items {
                if let Some(row) = item.candidate {
                    item.features = features
                        .iter()
                        .map(|f| FeatureValues {
                            input: f.input.clone(),
                            feature: f.feature.clone(),
                            width: f.width,
                            values: f.row(row).to_vec(),
                        })
                        .collect();
                }
            }
        }
        let degraded = match (partial, degraded) {
            (None, d) => d,
            (Some(p), None) => Some(format!("partial retrieval: {p}")),
            (Some(p), Some(d)) => Some(format!("{d}; partial retrieval: {p}")),
        };
        Ok(self.served(
            &req.user_id,
            now,
            Recommendation {
                items,
                model_version,
                degraded,
            },
        ))
    }

    /// Offers the answer to the served-feature log (never waits).
    fn log_served(
        &self,
        req: &RecommendRequest,
        model_version: &str,
        candidates: &[Candidate],
        scores: &[f32],
        items: &[RecommendedItem],
        features: &[FeatureValues],
    ) {
        let Some((log, _)) = &self.served else {
            return;
        };
        let mut position = vec![None; candidates.len()];
        for (at, item) in items.iter().enumerate() {
            if let Some(slot) = item.candidate.and_then(|row| position.get_mut(row)) {
                *slot = Some(at as u32);
            }
        }
        let record = ServedRecord {
            request_id: req.request_id.clone(),
            user_id: req.user_id.clone(),
            timestamp_ms: now_ms(),
            model_version: model_version.to_owned(),
            candidates: candidates
                .iter()
                .zip(scores)
                .zip(position)
                .map(|((c, &score), position)| ServedCandidate {
                    item_id: self.catalog.item_id(c.idx).to_owned(),
                    retrieval_score: c.score,
                    score,
                    position,
                })
                .collect(),
            features: features
                .iter()
                .map(|f| ServedFeature {
                    input: f.input.clone(),
                    feature: f.feature.clone(),
                    width: f.width,
                    values: f.values.clone(),
                })
                .collect(),
        };
        if !log.offer(record) {
            tracing::debug!(
                request_id = req.request_id,
                "served-feature log queue full; record dropped"
            );
        }
    }

    /// Notes the impressions (for demotion) and hands the answer back.
    fn served(&self, user_id: &str, now: i64, answer: Recommendation) -> Recommendation {
        let shown: Vec<ItemIdx> = answer.items.iter().map(|i| i.idx).collect();
        self.state.record_shown(user_id, &shown, now);
        answer
    }

    /// Rules steps 2 to 6, backfilled from trending then popular items (those in `prefer`
    /// categories first when given).
    fn apply_rules(
        &self,
        plan: &Plan<'_>,
        ranked: Vec<Placed>,
        prefer: &HashSet<u32>,
    ) -> Vec<RecommendedItem> {
        let demote_after = self.rules.demote_after_shown;
        let demoted = |idx: ItemIdx| {
            demote_after > 0
                && plan
                    .history
                    .shown
                    .get(&idx)
                    .is_some_and(|s| s.times >= demote_after)
        };
        let current = self.current_items();
        let placed = rules::apply(
            &self.catalog,
            ranked,
            plan.k,
            plan.cap,
            &demoted,
            self.backfill(plan, prefer, current.as_ref()),
        );
        placed
            .into_iter()
            .map(|p| {
                let (category, price) = match current
                    .as_ref()
                    .and_then(|c| c.get(self.catalog.item_id(p.idx)))
                {
                    Some(now) => (now.category.to_owned(), now.price),
                    None => (
                        self.catalog.category(p.idx).to_owned(),
                        self.catalog.price(p.idx),
                    ),
                };
                RecommendedItem {
                    idx: p.idx,
                    score: p.score,
                    retrieval_score: p.retrieval_score,
                    effects: p.effects,
                    features: Vec::new(),
                    candidate: p.candidate,
                    category,
                    price,
                }
            })
            .collect()
    }

    /// The rules, then, with retrieval behind gRPC, a check of the backfilled items (they did
    /// not come through retrieval's filter): those it deleted or no longer admits are replaced,
    /// for a few rounds at most, and the rest are shown with their current attributes, as are
    /// the searched items (`present`, as the search reported them). An embedded index was read
    /// during the rules already.
    async fn apply_rules_checked(
        &self,
        plan: &Plan<'_>,
        ranked: Vec<Placed>,
        prefer: &HashSet<u32>,
        mut present: HashMap<ItemIdx, ItemNow>,
        deadline: Option<Instant>,
    ) -> Vec<RecommendedItem> {
        if self.current.is_some() {
            return self.apply_rules(plan, ranked, prefer);
        }
        let mut items = self.apply_rules(plan, ranked.clone(), prefer);
        let mut filter = plan.filter.clone();
        let mut asked = HashSet::new();
        for _ in 0..BACKFILL_CHECK_ROUNDS {
            let unchecked: Vec<ItemIdx> = items
                .iter()
                .filter(|i| i.candidate.is_none())
                .map(|i| i.idx)
                .filter(|&idx| asked.insert(idx))
                .collect();
            if unchecked.is_empty() {
                break;
            }
            let ids: Vec<String> = unchecked
                .iter()
                .map(|&i| self.catalog.item_id(i).to_owned())
                .collect();
            let check = within(
                self.time_left(deadline),
                "retrieval",
                self.retrieval.item_status(&ids),
            );
            let statuses = match check.await {
                Ok(None) => return items,
                Ok(Some(statuses)) if statuses.len() == ids.len() => statuses,
                Ok(Some(statuses)) => {
                    tracing::warn!(
                        asked = ids.len(),
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
                    ItemStatus::Present(now)
                        if availability::admits_as(
                            &self.catalog,
                            &filter,
                            idx,
                            &now.category,
                            now.price,
                            now.in_stock,
                        ) =>
                    {
                        present.insert(idx, now);
                    }
                    ItemStatus::Present(_) | ItemStatus::Gone => gone.push(idx),
                    ItemStatus::Unknown => {}
                }
            }
            if gone.is_empty() {
                break;
            }
            filter.exclude(gone);
            let plan = Plan {
                filter: &filter,
                ..*plan
            };
            items = self.apply_rules(&plan, ranked.clone(), prefer);
        }
        for item in &mut items {
            if let Some(now) = present.get(&item.idx) {
                item.category.clone_from(&now.category);
                item.price = now.price;
            }
        }
        items
    }

    /// Trending then popular admitted items, those of `prefer` categories first.
    fn backfill<'a>(
        &'a self,
        plan: &'a Plan<'a>,
        prefer: &'a HashSet<u32>,
        current: Option<&'a CurrentItems<'a>>,
    ) -> impl Iterator<Item = Placed> + 'a {
        let catalog = &self.catalog;
        let admits = move |i: ItemIdx| availability::admits(catalog, current, plan.filter, i);
        let preferred = move |i: ItemIdx| prefer.contains(&catalog.category_code(i));
        let wanted = plan.k.saturating_mul(4).max(64);
        let by_popularity = move || catalog.by_popularity().iter().copied().map(|i| (i, 0.0));
        // Lazy: a ranked answer that fills k never reads trending or scans popularity.
        let preferred_first = (!prefer.is_empty()).then(move || {
            let trending = std::iter::once(())
                .flat_map(move |()| self.state.trending(wanted, &|i| admits(i) && preferred(i)));
            trending.chain(by_popularity().filter(move |&(i, _)| preferred(i) && admits(i)))
        });
        let everything = std::iter::once(())
            .flat_map(move |()| self.state.trending(wanted, &admits))
            .chain(by_popularity().filter(move |&(i, _)| admits(i)));
        preferred_first
            .into_iter()
            .flatten()
            .chain(everything)
            .map(|(i, score)| Placed::new(i, score, 0.0))
    }

    /// Trending and popular items when retrieval is down (nor can it be asked about them).
    fn cold_start(
        &self,
        plan: &Plan<'_>,
        prefer: &HashSet<u32>,
        degraded: Option<String>,
    ) -> Recommendation {
        // Everything comes from backfill, so rules apply to it alike (demotion aside: these
        // items have no model score to keep them apart).
        let items = self.apply_rules(plan, Vec::new(), prefer);
        Recommendation {
            items,
            model_version: TRENDING_VERSION.into(),
            degraded,
        }
    }
}

/// Rounds of asking retrieval about backfilled items: each replaces the deleted ones found.
const BACKFILL_CHECK_ROUNDS: usize = 3;

/// What the rules need to know about one request.
#[derive(Clone, Copy)]
struct Plan<'a> {
    k: usize,
    cap: usize,
    filter: &'a ItemFilter,
    history: &'a UserHistory,
}

/// Runs a stage call within `budget`; past it the call is dropped (a remote call is
/// cancelled) and the stage counts as unavailable, so the pipeline degrades in time.
async fn within<T>(
    budget: Option<Duration>,
    stage: &str,
    call: impl std::future::Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    let Some(budget) = budget else {
        return call.await;
    };
    if budget.is_zero() {
        return Err(StageError::Unavailable(format!(
            "{stage} skipped: no time left before the deadline"
        )));
    }
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| {
            Err(StageError::Unavailable(format!(
                "{stage} timed out after its {} ms budget",
                budget.as_millis()
            )))
        })
}

/// Scores that keep retrieval's order when ranking cannot answer.
fn retrieval_order(candidates: &[Candidate]) -> Vec<f32> {
    candidates.iter().map(|c| c.score).collect()
}
