//! One Recommend, as its steps: plan (validate, resolve ids once) → retrieve → score →
//! finish (rules, backfill, explain, served-feature log). Each step is a function; the stages
//! are traits, in this process or behind gRPC.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_catalog::{Catalog, ItemIdx};
use tandem_experiments::ExperimentLedger;
use tandem_personalization::{QueryConfig, StateStore, UserHistory};
use tandem_retrieval::FilterSpec;
use tracing::Instrument as _;

use tandem_events::{ServedCandidate, ServedFeature, ServedLog, ServedRecord};
use tandem_ranking::{FeatureValues, ScoreRequest};

use crate::ItemStatus;
use crate::events::{EventIntake, IncomingEvent, Recorded, Rejection};
use crate::finish::{Finisher, ScoredCandidates, time_left};
use crate::plan::{Plan, check_user_id, plan};
use crate::reasons;
use crate::rules::{Placed, RuleEffect, RulesConfig};
use crate::sources::{
    CandidateSources, by_weekly_buyers, own_items, related_items, related_strength,
};
use crate::stages::Candidate;
use crate::{CandidateStage, RecommendError, ScoringStage, StageError};

pub const DEFAULT_K: usize = 10;
pub const MAX_K: usize = 1000;
pub const DEFAULT_NUM_CANDIDATES: usize = 200;
pub const MAX_NUM_CANDIDATES: usize = 5000;
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// `model_version` of answers that no model scored: users with no history (and fallbacks).
pub const TRENDING_VERSION: &str = "trending";
/// Context key the pipeline sets for the ranking model: "1" when the request allows repeat
/// purchases, else "0".
pub const REPEATS_ALLOWED: &str = "repeats_allowed";
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
    /// Which of the user's purchases may be recommended again.
    pub repeat_purchases: RepeatPurchases,
    /// Return a short reason per item (implied by `explain`).
    pub reasons: bool,
}

/// Which purchases may come back in an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RepeatPurchases {
    /// Not within the rules' purchase exclusion window.
    #[default]
    AfterWindow,
    /// Never an item the user bought.
    Never,
    /// Bought items may come back, and the user's own items are candidates.
    Allowed,
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
    pub sources: CandidateSources,
}

/// The UTC hour of `now_ms`, as the `hour_of_day` context feature reads it.
fn hour_of_day(now_ms: i64) -> String {
    (now_ms.div_euclid(3_600_000) % 24).to_string()
}

/// Wall-clock milliseconds since the epoch (what event, impression and checkpoint times are).
pub(crate) fn now_ms() -> i64 {
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
    /// With `reasons` or `explain`: why this item, in a few words.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// In served order: by score, then the business rules. Distinct.
    pub items: Vec<RecommendedItem>,
    pub model_version: String,
    /// Why a fallback answered, if one did.
    pub degraded: Option<String>,
}

/// What [`Recommender::forget_user`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Forgotten {
    pub events: crate::UserErased,
    /// Rows removed from the served-feature log, and the files rewritten.
    pub served_rows: u64,
    pub served_files: usize,
}

pub struct Recommender {
    catalog: Arc<Catalog>,
    state: Arc<dyn StateStore>,
    events: Arc<EventIntake>,
    retrieval: Arc<dyn CandidateStage>,
    ranking: Arc<dyn ScoringStage>,
    query: QueryConfig,
    rules: RulesConfig,
    budgets: Budgets,
    sources: CandidateSources,
    /// `buyers_7d` at or above this is "trending" in a reason (the catalog's 90th
    /// percentile); `None` when the catalog has no such column.
    trending_buyers: Option<f32>,
    /// The trending source's order (empty when it is off).
    weekly_buyers: Vec<ItemIdx>,
    /// Where a sample of answers is logged, and the sampled share.
    served: Option<(Arc<ServedLog>, f64)>,
    /// Impressions per model version and what followed them.
    experiments: Option<Arc<ExperimentLedger>>,
    /// Made with the recommender: after the metrics recorder, which the services install
    /// first (handles made before it record nothing).
    timers: StageTimers,
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

/// What scoring produced for the retrieved candidates.
struct Ranked {
    scores: Vec<f32>,
    model_version: String,
    features: Vec<FeatureValues>,
    /// Why the scores are retrieval's, if they are.
    degraded: Option<String>,
}

impl Recommender {
    pub fn new(
        catalog: Arc<Catalog>,
        state: Arc<dyn StateStore>,
        events: EventIntake,
        stages: Stages,
        settings: Settings,
    ) -> Self {
        let trending_buyers = reasons::trending_threshold(&catalog);
        let weekly_buyers = if settings.sources.trending > 0 {
            by_weekly_buyers(&catalog)
        } else {
            Vec::new()
        };
        Self {
            catalog,
            state,
            events: Arc::new(events),
            retrieval: stages.retrieval,
            ranking: stages.ranking,
            query: settings.query,
            trending_buyers,
            weekly_buyers,
            rules: settings.rules,
            budgets: settings.budgets,
            sources: settings.sources,
            served: None,
            experiments: None,
            timers: StageTimers::new(),
        }
    }

    /// Attributes later clicks, add-to-carts and purchases of answered items to the model
    /// version that answered, in `ledger`.
    pub fn with_experiments(mut self, ledger: Arc<ExperimentLedger>) -> Self {
        self.events.set_experiments(ledger.clone());
        self.experiments = Some(ledger);
        self
    }

    /// Impressions and outcomes per model version (`None`: not measured).
    pub fn experiments(&self) -> Option<&Arc<ExperimentLedger>> {
        self.experiments.as_ref()
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
        time_left(deadline, self.budgets.reserve)
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Erases a user everywhere tandem keeps them: live state, the event log, its Parquet
    /// exports, the checkpoints ([`EventIntake::forget_user`]) and the served-feature log.
    pub async fn forget_user(&self, user_id: &str) -> Result<Forgotten, RecommendError> {
        self.forget(user_id, true).await
    }

    /// The same, for an erasure another gateway announced (not announced again).
    pub async fn forget_announced_user(&self, user_id: &str) -> Result<Forgotten, RecommendError> {
        self.forget(user_id, false).await
    }

    async fn forget(&self, user_id: &str, announce: bool) -> Result<Forgotten, RecommendError> {
        let events = self.events.forget_user(user_id, announce).await?;
        if let Some(ledger) = &self.experiments {
            ledger.forget(user_id);
        }
        let served = match &self.served {
            Some((log, _)) => {
                let (log, user) = (log.clone(), user_id.to_owned());
                tokio::task::spawn_blocking(move || log.erase_user(&user))
                    .await
                    .map_err(|e| RecommendError::Unavailable(format!("served-feature log: {e}")))?
                    .map_err(|e| RecommendError::Unavailable(format!("served-feature log: {e}")))?
            }
            None => (0, 0),
        };
        Ok(Forgotten {
            events,
            served_rows: served.0,
            served_files: served.1,
        })
    }

    /// Checkpoints user state (see [`EventIntake::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<Option<crate::CheckpointWritten>, RecommendError> {
        self.events.checkpoint().await
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

    fn finisher(&self) -> Finisher<'_> {
        Finisher {
            catalog: &self.catalog,
            state: self.state.as_ref(),
            retrieval: self.retrieval.as_ref(),
            rules: &self.rules,
            items_timer: &self.timers.items,
        }
    }

    pub async fn recommend(
        &self,
        req: &RecommendRequest,
    ) -> Result<Recommendation, RecommendError> {
        check_user_id(&req.user_id)?;
        // A shared store out of reach: answered as for a new user, and said so.
        let (history, state_unavailable) = match self.state.user(&req.user_id).await {
            Ok(history) => (history, None),
            Err(why) => {
                count_degraded("state_unavailable");
                tracing::warn!(%why, "user state unavailable; answering without it");
                (
                    Arc::default(),
                    Some(format!("user state unavailable: {why}")),
                )
            }
        };
        let mut answer = self.answer(req, history).await?;
        if let Some(why) = state_unavailable {
            answer.degraded = Some(match answer.degraded.take() {
                Some(other) => format!("{why}; {other}"),
                None => why,
            });
        }
        Ok(answer)
    }

    async fn answer(
        &self,
        req: &RecommendRequest,
        history: Arc<UserHistory>,
    ) -> Result<Recommendation, RecommendError> {
        let now = now_ms();
        // The steps' spans (plan, retrieve, rank, rules) sit under the call's server span;
        // they cost nothing while no trace is exported.
        let plan = tracing::info_span!("plan")
            .in_scope(|| plan(&self.catalog, &self.rules, &self.query, req, history, now))?;
        let deadline = req.deadline;
        let Some(query) = &plan.query else {
            // Nothing to personalize on: trending items, those of the page's categories first.
            let prefer = plan.context_categories(&self.catalog);
            let mut items = self
                .finisher()
                .finish(&plan, &[] as &[Placed], &prefer, || {
                    self.time_left(deadline)
                })
                .instrument(rules_span())
                .await;
            if req.reasons || req.explain {
                self.give_reasons(&plan, &mut items, now);
            }
            let answer = Recommendation {
                items,
                model_version: TRENDING_VERSION.into(),
                degraded: None,
            };
            return Ok(self.served(&req.user_id, now, plan, answer));
        };
        let retrieve_span = tracing::info_span!(
            "retrieve",
            tandem.candidates = tracing::field::Empty,
            tandem.partial = tracing::field::Empty,
        );
        let retrieved = self
            .retrieve(&plan, query, deadline, now)
            .instrument(retrieve_span.clone())
            .await;
        let (candidates, partial) = match retrieved {
            Ok(retrieved) => {
                retrieve_span.record("tandem.candidates", retrieved.candidates.len());
                if let Some(partial) = &retrieved.partial {
                    retrieve_span.record("tandem.partial", partial.as_str());
                }
                (retrieved.candidates, retrieved.partial)
            }
            Err(StageError::Unavailable(why)) => {
                retrieve_span.in_scope(|| {
                    tracing::warn!(%why, "retrieval failed; answering with trending items");
                });
                count_degraded("retrieval_unavailable");
                let answer = Recommendation {
                    // Nor can retrieval be asked about the backfilled items.
                    items: self.finisher().finish_unchecked(&plan, &HashSet::new()),
                    model_version: TRENDING_VERSION.into(),
                    degraded: Some(format!("retrieval unavailable: {why}")),
                };
                return Ok(self.served(&req.user_id, now, plan, answer));
            }
            Err(e) => return Err(e.into()),
        };
        let log_this = self.sampled(&req.request_id);
        let rank_span = tracing::info_span!(
            "rank",
            tandem.model_version = tracing::field::Empty,
            tandem.degraded = tracing::field::Empty,
        );
        let mut ranked = self
            .score(&plan, req, query, &candidates, req.explain || log_this, now)
            .instrument(rank_span.clone())
            .await?;
        rank_span.record("tandem.model_version", ranked.model_version.as_str());
        if let Some(degraded) = &ranked.degraded {
            rank_span.record("tandem.degraded", degraded.as_str());
        }
        let scored = ScoredCandidates {
            candidates: &candidates,
            scores: &ranked.scores,
            catalog: &self.catalog,
        };
        let mut items = self
            .finisher()
            .finish(&plan, &scored, &HashSet::new(), || self.time_left(deadline))
            .instrument(rules_span())
            .await;
        if req.explain {
            explain(&mut items, &ranked.features);
        }
        if log_this {
            // The model's inputs for every candidate (hundreds of kilobytes): moved into the
            // log, never copied (explain above took its rows already; nothing reads them after).
            let features = std::mem::take(&mut ranked.features);
            self.log_served(req, &ranked, features, &candidates, &items);
        }
        if req.reasons || req.explain {
            self.give_reasons(&plan, &mut items, now);
        }
        if partial.is_some() {
            count_degraded("partial_retrieval");
        }
        let degraded = match (partial, ranked.degraded) {
            (None, d) => d,
            (Some(p), None) => Some(format!("partial retrieval: {p}")),
            (Some(p), Some(d)) => Some(format!("{d}; partial retrieval: {p}")),
        };
        Ok(self.served(
            &req.user_id,
            now,
            plan,
            Recommendation {
                items,
                model_version: ranked.model_version,
                degraded,
            },
        ))
    }

    /// Step 2: candidates within retrieval's share of the time left: the ANN search, then the
    /// other sources (the user's own items, related items) checked with retrieval.
    async fn retrieve(
        &self,
        plan: &Plan,
        query: &[f32],
        deadline: Option<Instant>,
        now_ms: i64,
    ) -> Result<crate::Retrieved, StageError> {
        let budget = self
            .time_left(deadline)
            .map(|left| left.mul_f64(self.budgets.retrieval_share.clamp(0.0, 1.0)));
        let started = Instant::now();
        let mut retrieved = within(budget, &self.timers.search, |deadline| {
            self.retrieval
                .search(query, plan.num_candidates, &plan.filter, deadline)
        })
        .await?;
        let extra = self.other_sources(plan, &retrieved.candidates, now_ms);
        if extra.is_empty() {
            return Ok(retrieved);
        }
        let budget = budget.map(|b| b.saturating_sub(started.elapsed()));
        match within(budget, &self.timers.items, |deadline| {
            self.retrieval.items(&extra, deadline)
        })
        .await
        {
            Ok(statuses) if statuses.len() == extra.len() => {
                for (idx, status) in extra.into_iter().zip(statuses) {
                    if let ItemStatus::Present(attributes) = status
                        && plan.filter.admits_item(idx, &attributes)
                    {
                        retrieved.candidates.push(Candidate {
                            idx,
                            score: dot(query, self.catalog.embedding(idx)),
                            attributes: Some(attributes),
                        });
                    }
                }
            }
            // The ANN candidates alone still make an answer.
            Ok(_) | Err(_) => {
                tracing::debug!("other candidate sources unchecked; left out");
            }
        }
        Ok(retrieved)
    }

    /// Candidates the ANN search did not return: the user's own items when repeats are
    /// allowed, the items most related to their history, and this week's most bought.
    fn other_sources(&self, plan: &Plan, found: &[Candidate], now_ms: i64) -> Vec<ItemIdx> {
        let own = plan.repeats == RepeatPurchases::Allowed
            && self.sources.own_items > 0
            && !plan.items.is_empty();
        let related = self.sources.related > 0 && self.catalog.has_related();
        let trending = self.sources.trending > 0 && !self.weekly_buyers.is_empty();
        if !(own || related || trending) {
            // The default: the search's candidates alone, no set of them to build.
            return Vec::new();
        }
        let mut seen: HashSet<ItemIdx> = found.iter().map(|c| c.idx).collect();
        let mut extra = Vec::new();
        let admit = |idx: ItemIdx| plan.filter.admits(self.catalog.as_ref(), idx);
        if own {
            for idx in own_items(&plan.items, self.sources.own_items) {
                if admit(idx) && seen.insert(idx) {
                    extra.push(idx);
                }
            }
        }
        if related {
            let strength = related_strength(
                &self.catalog,
                &plan.items,
                now_ms,
                self.sources.related_half_life_days,
            );
            for idx in related_items(&strength, self.sources.related, admit) {
                if seen.insert(idx) {
                    extra.push(idx);
                }
            }
        }
        let trending = self
            .weekly_buyers
            .iter()
            .copied()
            .filter(|&idx| admit(idx))
            .take(self.sources.trending);
        for idx in trending {
            if seen.insert(idx) {
                extra.push(idx);
            }
        }
        // One Rank call carries at most MAX_NUM_CANDIDATES (the ranking tier's default limit).
        extra.truncate(MAX_NUM_CANDIDATES.saturating_sub(found.len()));
        extra
    }

    /// Step 3: the model's scores, or retrieval's order (degraded) when ranking cannot answer
    /// in time; a caller's mistake (a bad pin) is an error.
    async fn score(
        &self,
        plan: &Plan,
        req: &RecommendRequest,
        query: &[f32],
        candidates: &[Candidate],
        with_features: bool,
        now_ms: i64,
    ) -> Result<Ranked, RecommendError> {
        let mut context = req.context.clone();
        context
            .entry("hour_of_day".to_owned())
            .or_insert_with(|| hour_of_day(now_ms));
        // Whether the user's own items compete: a model may read it (the history ranker does).
        context
            .entry(REPEATS_ALLOWED.to_owned())
            .or_insert_with(|| u8::from(plan.repeats == RepeatPurchases::Allowed).to_string());
        let request = ScoreRequest {
            user_id: req.user_id.clone(),
            user_vector: query.to_vec(),
            items: candidates.iter().map(|c| c.idx).collect(),
            retrieval_scores: candidates.iter().map(|c| c.score).collect(),
            recent_items: plan.history.recent.iter().rev().map(|e| e.item).collect(),
            context,
            version: req.model_version.clone().filter(|v| !v.is_empty()),
            history: plan.items.clone(),
            now_ms,
        };
        let scoring = within(
            self.time_left(req.deadline),
            &self.timers.rank,
            |deadline| self.ranking.score(request, with_features, deadline),
        );
        let why = match scoring.await {
            Ok(s) if s.scores.len() == candidates.len() => {
                return Ok(Ranked {
                    scores: s.scores,
                    model_version: s.model_version,
                    features: s.features,
                    degraded: None,
                });
            }
            Ok(s) => {
                count_degraded("ranking_failed");
                format!(
                    "ranking failed: {} scores for {} candidates",
                    s.scores.len(),
                    candidates.len()
                )
            }
            Err(StageError::Unavailable(why)) => {
                tracing::warn!(%why, "ranking failed; answering in retrieval order");
                count_degraded("ranking_unavailable");
                format!("ranking unavailable: {why}")
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Ranked {
            scores: candidates.iter().map(|c| c.score).collect(),
            model_version: RETRIEVAL_ORDER_VERSION.to_owned(),
            features: Vec::new(),
            degraded: Some(why),
        })
    }

    fn give_reasons(&self, plan: &Plan, items: &mut [RecommendedItem], now_ms: i64) {
        let why = reasons::Reasons {
            catalog: &self.catalog,
            history: &plan.items,
            now_ms,
            related_half_life_days: self.sources.related_half_life_days,
            trending_buyers: self.trending_buyers,
        };
        for item in items {
            item.reason = why.reason(item);
        }
    }

    /// Offers the answer to the served-feature log (never waits).
    fn log_served(
        &self,
        req: &RecommendRequest,
        ranked: &Ranked,
        features: Vec<FeatureValues>,
        candidates: &[Candidate],
        items: &[RecommendedItem],
    ) {
        let (model_version, scores) = (&ranked.model_version, &ranked.scores);
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
            model_version: model_version.clone(),
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
                .into_iter()
                .map(|f| ServedFeature {
                    input: f.input,
                    feature: f.feature,
                    width: f.width,
                    values: f.values,
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

    /// Notes the impressions (for demotion) and hands the answer back. The plan goes first:
    /// while it holds the user's state, the store would have to copy it to write.
    fn served(
        &self,
        user_id: &str,
        now: i64,
        plan: Plan,
        answer: Recommendation,
    ) -> Recommendation {
        drop(plan);
        let shown: Vec<ItemIdx> = answer.items.iter().map(|i| i.idx).collect();
        self.state.record_shown(user_id, &shown, now);
        if let Some(ledger) = &self.experiments {
            ledger.shown(user_id, &answer.model_version, &shown, now);
        }
        answer
    }
}

/// `tandem_stage_seconds{stage, call, outcome}` of one stage call, one handle per outcome,
/// made with the recommender (a registry lookup per call would hash the three labels).
#[derive(Debug, Clone)]
pub(crate) struct StageTimer {
    stage: &'static str,
    ok: metrics::Histogram,
    error: metrics::Histogram,
    timeout: metrics::Histogram,
    skipped: metrics::Histogram,
}

impl StageTimer {
    fn new(stage: &'static str, call: &'static str) -> Self {
        let outcome = |outcome: &'static str| metrics::histogram!("tandem_stage_seconds", "stage" => stage, "call" => call, "outcome" => outcome);
        Self {
            stage,
            ok: outcome("ok"),
            error: outcome("error"),
            timeout: outcome("timeout"),
            skipped: outcome("skipped"),
        }
    }
}

/// The timers of the three stage calls a Recommend makes.
#[derive(Debug, Clone)]
pub(crate) struct StageTimers {
    pub search: StageTimer,
    pub items: StageTimer,
    pub rank: StageTimer,
}

impl StageTimers {
    fn new() -> Self {
        Self {
            search: StageTimer::new("retrieval", "search"),
            items: StageTimer::new("retrieval", "items"),
            rank: StageTimer::new("ranking", "rank"),
        }
    }
}

/// Runs a stage call within `budget`; past it the call is dropped (a remote call is
/// cancelled) and the stage counts as unavailable, so the pipeline degrades in time. The call
/// is told its deadline, so that a remote stage learns it too. `timer` records each call's
/// time by outcome (ok, error, timeout, skipped).
pub(crate) async fn within<T, Call>(
    budget: Option<Duration>,
    timer: &StageTimer,
    call: impl FnOnce(Option<Instant>) -> Call,
) -> Result<T, StageError>
where
    Call: std::future::Future<Output = Result<T, StageError>>,
{
    let started = Instant::now();
    let stage = timer.stage;
    let record = |outcome: &metrics::Histogram| outcome.record(started.elapsed().as_secs_f64());
    let result = match budget {
        None => call(None).await,
        Some(budget) if budget.is_zero() => {
            record(&timer.skipped);
            return Err(StageError::Unavailable(format!(
                "{stage} skipped: no time left before the deadline"
            )));
        }
        Some(budget) => {
            let deadline = started.checked_add(budget);
            let mut pending = std::pin::pin!(call(deadline));
            // A stage in this process answers on its first poll: no timer to arm and disarm
            // (the timer wheel's lock, twice per call). A timeout polls its future first too,
            // so an answer that is ready is taken as before.
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(pending.as_mut().poll(cx))).await;
            match (first, deadline) {
                (std::task::Poll::Ready(result), _) => result,
                (std::task::Poll::Pending, None) => pending.await,
                (std::task::Poll::Pending, Some(deadline)) => {
                    match tokio::time::timeout_at(deadline.into(), pending).await {
                        Ok(result) => result,
                        Err(_) => {
                            record(&timer.timeout);
                            return Err(StageError::Unavailable(format!(
                                "{stage} timed out after its {} ms budget",
                                budget.as_millis()
                            )));
                        }
                    }
                }
            }
        }
    };
    record(if result.is_ok() {
        &timer.ok
    } else {
        &timer.error
    });
    result
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The span of the last step: business rules, backfill and the backfill's check.
fn rules_span() -> tracing::Span {
    tracing::info_span!("rules")
}

/// `tandem_recommend_degraded_total{reason}`: answers that a fallback made, by why.
fn count_degraded(reason: &'static str) {
    metrics::counter!("tandem_recommend_degraded_total", "reason" => reason).increment(1);
}

/// Puts each ranked item's model inputs beside it.
fn explain(items: &mut [RecommendedItem], features: &[FeatureValues]) {
    for item in items {
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
