//! The request path's steps on fake stages: no ONNX Runtime, no generated data (a seeded
//! catalog is written to a temp dir). Each fake says what it was asked, so the tests check
//! what the pipeline hands the stages as well as what it answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_catalog::{Catalog, ItemIdx};
use tandem_events::EventLogConfig;
use tandem_personalization::{EventKind, InMemoryState, TrendingConfig};
use tandem_ranking::ScoreRequest;
use tandem_recommend::{
    Candidate, CandidateStage, EventIntake, IncomingEvent, ItemStatus, RETRIEVAL_ORDER_VERSION,
    RecommendError, RecommendRequest, Recommendation, Recommender, Retrieved, RuleEffect, Scored,
    ScoringStage, Settings, StageError, Stages, TRENDING_VERSION,
};
use tandem_retrieval::ItemFilter;

const ITEMS: usize = 400;
const DIM: usize = 8;
const CATEGORIES: usize = 8;

fn catalog(dir: &std::path::Path) -> Arc<Catalog> {
    let path = dir.join("items.parquet");
    write_parquet(&synthetic_batch(ITEMS, DIM, CATEGORIES, 11), &path).expect("fixture");
    Arc::new(Catalog::open(&path).expect("catalog"))
}

/// Retrieval by brute force over the catalog (dot product), honouring the filter; items in
/// `gone` are deleted as far as it knows.
struct FakeRetrieval {
    catalog: Arc<Catalog>,
    gone: Vec<ItemIdx>,
    fail: bool,
    delay: Duration,
    /// Most candidates returned (a small index).
    limit: usize,
    /// The filter of each search, as the pipeline resolved it.
    searched: Mutex<Vec<ItemFilter>>,
    asked: Mutex<Vec<ItemIdx>>,
}

impl FakeRetrieval {
    fn new(catalog: &Arc<Catalog>) -> Self {
        Self {
            catalog: catalog.clone(),
            gone: Vec::new(),
            fail: false,
            delay: Duration::ZERO,
            limit: usize::MAX,
            searched: Mutex::default(),
            asked: Mutex::default(),
        }
    }
}

#[async_trait]
impl CandidateStage for FakeRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
        _deadline: Option<Instant>,
    ) -> Result<Retrieved, StageError> {
        self.searched.lock().expect("lock").push(filter.clone());
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(StageError::Unavailable("fake retrieval is down".into()));
        }
        let mut found: Vec<Candidate> = (0..self.catalog.len() as ItemIdx)
            .filter(|i| !self.gone.contains(i))
            .map(|i| Candidate {
                idx: i,
                score: self
                    .catalog
                    .embedding(i)
                    .iter()
                    .zip(query)
                    .map(|(a, b)| a * b)
                    .sum(),
                attributes: self.catalog.attributes(i),
            })
            .filter(|c| filter.admits_item(c.idx, &c.attributes))
            .collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        found.truncate(k.min(self.limit));
        Ok(Retrieved {
            candidates: found,
            partial: None,
        })
    }

    async fn items(
        &self,
        items: &[ItemIdx],
        _deadline: Option<Instant>,
    ) -> Result<Vec<ItemStatus>, StageError> {
        self.asked.lock().expect("lock").extend(items);
        Ok(items
            .iter()
            .map(|&i| {
                if self.gone.contains(&i) {
                    ItemStatus::Gone
                } else {
                    ItemStatus::Present(self.catalog.attributes(i))
                }
            })
            .collect())
    }
}

/// Scores by item index (higher first) so ranking visibly reorders retrieval's list.
#[derive(Default)]
struct FakeRanking {
    fail: Option<StageError>,
    delay: Duration,
    requests: Mutex<Vec<ScoreRequest>>,
}

#[async_trait]
impl ScoringStage for FakeRanking {
    async fn score(
        &self,
        request: ScoreRequest,
        _with_features: bool,
        _deadline: Option<Instant>,
    ) -> Result<Scored, StageError> {
        tokio::time::sleep(self.delay).await;
        let scores = request.items.iter().map(|&i| i as f32).collect();
        self.requests.lock().expect("lock").push(request);
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(Scored {
            scores,
            model_version: "fake/1".into(),
            features: Vec::new(),
        })
    }
}

struct World {
    _dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    retrieval: Arc<FakeRetrieval>,
    ranking: Arc<FakeRanking>,
    recommender: Recommender,
}

fn world(tune: impl FnOnce(&mut FakeRetrieval, &mut FakeRanking)) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path());
    let mut retrieval = FakeRetrieval::new(&catalog);
    let mut ranking = FakeRanking::default();
    tune(&mut retrieval, &mut ranking);
    let (retrieval, ranking) = (Arc::new(retrieval), Arc::new(ranking));
    let state = Arc::new(InMemoryState::new(50, TrendingConfig::default()));
    let log = EventLogConfig {
        dir: dir.path().join("events"),
        segment_bytes: 1 << 20,
        export: false,
        retention: None,
    };
    let (events, _) =
        EventIntake::open(&log, catalog.clone(), state.clone(), 1000).expect("event log");
    let recommender = Recommender::new(
        catalog.clone(),
        state,
        events,
        Stages {
            retrieval: retrieval.clone(),
            ranking: ranking.clone(),
        },
        Settings::default(),
    );
    World {
        _dir: dir,
        catalog,
        retrieval,
        ranking,
        recommender,
    }
}

fn request(user: &str) -> RecommendRequest {
    RecommendRequest {
        user_id: user.into(),
        request_id: "r".into(),
        ..Default::default()
    }
}

async fn act(w: &World, user: &str, item: ItemIdx, kind: EventKind) {
    w.recommender
        .record_events(&[IncomingEvent {
            user_id: user.into(),
            item_id: w.catalog.item_id(item).into(),
            kind: Some(kind),
            timestamp_ms: 0,
            event_id: String::new(),
        }])
        .await
        .expect("recorded");
}

/// A warm user's Recommend: one click on item 1, then the request.
async fn after_a_click(w: &World) -> Result<Recommendation, RecommendError> {
    act(w, "u", 1, EventKind::Click).await;
    w.recommender.recommend(&request("u")).await
}

fn ids(items: &[tandem_recommend::RecommendedItem]) -> Vec<ItemIdx> {
    items.iter().map(|i| i.idx).collect()
}

#[tokio::test]
async fn plan_names_the_bad_field_before_any_stage_is_called() {
    let w = world(|_, _| {});
    for (req, field) in [
        (request(""), "user_id"),
        (
            RecommendRequest {
                k: Some(0),
                ..request("u")
            },
            "k",
        ),
        (
            RecommendRequest {
                k: Some(20),
                num_candidates: Some(10),
                ..request("u")
            },
            "num_candidates",
        ),
        (
            RecommendRequest {
                filter: tandem_retrieval::FilterSpec {
                    categories: vec!["no-such-category".into()],
                    ..Default::default()
                },
                ..request("u")
            },
            "filter.categories",
        ),
    ] {
        match w.recommender.recommend(&req).await {
            Err(RecommendError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert!(w.retrieval.searched.lock().expect("lock").is_empty());
    assert!(w.ranking.requests.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn cold_start_is_trending_from_the_page_categories_without_a_search() {
    let w = world(|_, _| {});
    act(&w, "other", 7, EventKind::Purchase).await;
    let page = 3 as ItemIdx;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            context_item_ids: vec![w.catalog.item_id(page).into()],
            ..request("new-user")
        })
        .await
        .expect("answer");
    assert_eq!(answer.model_version, TRENDING_VERSION);
    assert_eq!(answer.degraded, None);
    assert_eq!(answer.items.len(), 10);
    assert!(
        !ids(&answer.items).contains(&page),
        "the page's item is excluded"
    );
    let page_category = w.catalog.category(page);
    assert!(
        answer.items.iter().all(|i| i.category == page_category),
        "the page's category first"
    );
    assert!(w.retrieval.searched.lock().expect("lock").is_empty());
    // Every backfilled item was checked with retrieval.
    let asked = w.retrieval.asked.lock().expect("lock").clone();
    assert!(ids(&answer.items).iter().all(|i| asked.contains(i)));
}

#[tokio::test]
async fn exclusions_reach_retrieval_resolved_once_and_ranking_orders() {
    let w = world(|_, _| {});
    act(&w, "u", 5, EventKind::Purchase).await;
    act(&w, "u", 6, EventKind::Click).await;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            context_item_ids: vec![w.catalog.item_id(9).into(), "unknown-item".into()],
            in_stock_only: Some(false),
            ..request("u")
        })
        .await
        .expect("answer");
    let filter = w.retrieval.searched.lock().expect("lock")[0].clone();
    let attributes = |i: ItemIdx| w.catalog.attributes(i);
    assert!(!filter.admits_item(5, &attributes(5)), "bought: excluded");
    assert!(
        !filter.admits_item(9, &attributes(9)),
        "on the page: excluded"
    );
    assert!(
        filter.admits_item(6, &attributes(6)),
        "clicked: not excluded"
    );
    assert_eq!(answer.model_version, "fake/1");
    let got = ids(&answer.items);
    assert!(!got.contains(&5) && !got.contains(&9));
    let mut sorted = got.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(got, sorted, "in the ranker's order");
    // Ranking was handed the retrieved candidates and the user's recent items, newest first.
    let scored = &w.ranking.requests.lock().expect("lock")[0];
    assert_eq!(scored.items.len(), 200);
    assert_eq!(scored.recent_items, [6, 5]);
    assert!(scored.context.contains_key("hour_of_day"));
}

#[tokio::test]
async fn retrieval_down_degrades_to_trending_and_ranking_down_to_retrieval_order() {
    let w = world(|r, _| r.fail = true);
    let answer = after_a_click(&w).await.expect("answer");
    assert_eq!(answer.model_version, TRENDING_VERSION);
    assert!(
        answer
            .degraded
            .as_deref()
            .is_some_and(|d| d.starts_with("retrieval unavailable")),
        "{answer:?}"
    );
    assert_eq!(answer.items.len(), 10);

    let w = world(|_, k| k.fail = Some(StageError::Unavailable("model crashed".into())));
    let answer = after_a_click(&w).await.expect("answer");
    assert_eq!(answer.model_version, RETRIEVAL_ORDER_VERSION);
    assert!(
        answer
            .degraded
            .as_deref()
            .is_some_and(|d| d.contains("model crashed"))
    );
    let scores: Vec<f32> = answer.items.iter().map(|i| i.retrieval_score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "retrieval order");

    // A caller's mistake is not degraded: it is the caller's error.
    let w = world(|_, k| k.fail = Some(StageError::NotFound("model_version: `9`".into())));
    let err = after_a_click(&w).await.expect_err("unknown pin");
    assert!(matches!(err, RecommendError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn deadlines_cut_slow_stages_and_the_answer_still_comes_in_time() {
    let w = world(|_, k| k.delay = Duration::from_secs(5));
    act(&w, "u", 1, EventKind::Click).await;
    let started = Instant::now();
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            deadline: Some(Instant::now() + Duration::from_millis(150)),
            ..request("u")
        })
        .await
        .expect("answer");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(answer.model_version, RETRIEVAL_ORDER_VERSION);
    assert!(
        answer
            .degraded
            .as_deref()
            .is_some_and(|d| d.contains("budget"))
    );

    let w = world(|r, _| r.delay = Duration::from_secs(5));
    act(&w, "u", 1, EventKind::Click).await;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            deadline: Some(Instant::now() + Duration::from_millis(150)),
            ..request("u")
        })
        .await
        .expect("answer");
    assert_eq!(answer.model_version, TRENDING_VERSION);
    assert!(answer.degraded.is_some());
}

#[tokio::test]
async fn backfill_is_checked_and_gone_items_are_replaced() {
    // Retrieval finds 5 items; the most popular ones (backfill's first choice) are deleted as
    // far as retrieval knows, while the catalog still lists them.
    let w = world(|r, _| {
        r.limit = 5;
        r.gone = vec![0, 1, 2, 3];
    });
    act(&w, "u", 10, EventKind::Click).await;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            k: Some(20),
            in_stock_only: Some(false),
            ..request("u")
        })
        .await
        .expect("answer");
    let got = ids(&answer.items);
    assert_eq!(got.len(), 20);
    assert!(
        got.iter().all(|i| *i > 3),
        "deleted items never shown: {got:?}"
    );
    let backfilled: Vec<ItemIdx> = answer
        .items
        .iter()
        .filter(|i| i.effects.contains(&RuleEffect::Backfill))
        .map(|i| i.idx)
        .collect();
    assert_eq!(backfilled.len(), 15, "{answer:?}");
    let asked = w.retrieval.asked.lock().expect("lock").clone();
    assert!(asked.contains(&0), "the deleted ones were asked about");
    assert!(
        backfilled.iter().all(|i| asked.contains(i)),
        "every backfilled item checked"
    );
    assert!(
        answer.items[..5].iter().all(|i| i.candidate.is_some()),
        "ranked first"
    );
}
