//! The request path's steps on fake stages: no ONNX Runtime, no generated data (a seeded
//! catalog is written to a temp dir). Each fake says what it was asked, so the tests check
//! what the pipeline hands the stages as well as what it answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tandem_catalog::testing::{synthetic_batch, with_numeric, write_parquet, write_related};
use tandem_catalog::{Catalog, ItemIdx, RELATED_FILE};
use tandem_events::EventLogConfig;
use tandem_personalization::{EventKind, InMemoryState, StateLimits, TrendingConfig};
use tandem_ranking::ScoreRequest;
use tandem_recommend::{
    Candidate, CandidateSources, CandidateStage, EventIntake, IncomingEvent, ItemStatus,
    RETRIEVAL_ORDER_VERSION, RecommendError, RecommendRequest, Recommendation, Recommender,
    RepeatPurchases, Retrieved, RuleEffect, Scored, ScoringStage, Settings, StageError, Stages,
    StateWriter, TRENDING_VERSION,
};
use tandem_retrieval::ItemFilter;

const ITEMS: usize = 400;
const DIM: usize = 8;
const CATEGORIES: usize = 8;

fn item_id(i: ItemIdx) -> String {
    format!("item-{i:06}")
}

/// What the catalog holds besides the seeded items.
#[derive(Default)]
struct Extras {
    /// (item, related item, weight): its co-occurrence file.
    related: Vec<(ItemIdx, ItemIdx, f32)>,
    /// Its `buyers_7d` column, one per item, when not empty.
    buyers_7d: Vec<f32>,
}

fn catalog(dir: &std::path::Path, extras: &Extras) -> Arc<Catalog> {
    let path = dir.join("items.parquet");
    let mut batch = synthetic_batch(ITEMS, DIM, CATEGORIES, 11);
    if !extras.buyers_7d.is_empty() {
        batch = with_numeric(&batch, "buyers_7d", extras.buyers_7d.clone());
    }
    write_parquet(&batch, &path).expect("fixture");
    if !extras.related.is_empty() {
        let ids: Vec<(String, String, f32)> = extras
            .related
            .iter()
            .map(|&(a, b, w)| (item_id(a), item_id(b), w))
            .collect();
        let pairs: Vec<(&str, &str, f32)> = ids
            .iter()
            .map(|(a, b, w)| (a.as_str(), b.as_str(), *w))
            .collect();
        write_related(&pairs, &dir.join(RELATED_FILE)).expect("related fixture");
    }
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
                // As an index in the process with no item changed answers: the catalog's.
                attributes: None,
            })
            .filter(|c| filter.admits_item(c.idx, &c.attributes_in(&self.catalog)))
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
    state: Arc<InMemoryState>,
    recommender: Recommender,
}

fn world(tune: impl FnOnce(&mut FakeRetrieval, &mut FakeRanking)) -> World {
    world_with(Settings::default(), &Extras::default(), tune)
}

fn world_with(
    settings: Settings,
    extras: &Extras,
    tune: impl FnOnce(&mut FakeRetrieval, &mut FakeRanking),
) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), extras);
    let mut retrieval = FakeRetrieval::new(&catalog);
    let mut ranking = FakeRanking::default();
    tune(&mut retrieval, &mut ranking);
    let (retrieval, ranking) = (Arc::new(retrieval), Arc::new(ranking));
    let state = Arc::new(InMemoryState::new(
        StateLimits {
            events_per_user: 50,
            ..StateLimits::default()
        },
        TrendingConfig::default(),
    ));
    let log = EventLogConfig {
        dir: dir.path().join("events"),
        segment_bytes: 1 << 20,
        export: false,
        retention: None,
    };
    let (events, _) = EventIntake::open(
        &log,
        catalog.clone(),
        StateWriter::Local(state.clone()),
        1000,
        None,
    )
    .expect("event log");
    let recommender = Recommender::new(
        catalog.clone(),
        state.clone(),
        events,
        Stages {
            retrieval: retrieval.clone(),
            ranking: ranking.clone(),
        },
        settings,
    );
    World {
        _dir: dir,
        catalog,
        retrieval,
        ranking,
        state,
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
    act_at(w, user, item, kind, 0).await;
}

/// `timestamp_ms` 0: now.
async fn act_at(w: &World, user: &str, item: ItemIdx, kind: EventKind, timestamp_ms: i64) {
    w.recommender
        .record_events(&[IncomingEvent {
            user_id: user.into(),
            item_id: w.catalog.item_id(item).into(),
            kind: Some(kind),
            timestamp_ms,
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
        (request(&"u".repeat(257)), "user_id"),
        (
            RecommendRequest {
                context_item_ids: vec![item_id(1), "i".repeat(300)],
                ..request("u")
            },
            "context_item_ids[1]",
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

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test]
async fn repeat_purchases_choose_what_comes_back_and_own_items_join_the_candidates() {
    // A three-item index: the user's own purchase (bought 40 days ago, twice) is far from it.
    let w = world(|r, _| r.limit = 3);
    let bought = (ITEMS - 1) as ItemIdx;
    for days in [60, 40] {
        act_at(
            &w,
            "u",
            bought,
            EventKind::Purchase,
            now_ms() - days * DAY_MS,
        )
        .await;
    }
    act(&w, "u", 1, EventKind::Click).await;
    let mut scored = Vec::new();
    for mode in [
        RepeatPurchases::AfterWindow,
        RepeatPurchases::Never,
        RepeatPurchases::Allowed,
    ] {
        let answer = w
            .recommender
            .recommend(&RecommendRequest {
                repeat_purchases: mode,
                reasons: true,
                in_stock_only: Some(false),
                ..request("u")
            })
            .await
            .expect("answer");
        let searched = w
            .retrieval
            .searched
            .lock()
            .expect("lock")
            .pop()
            .expect("searched");
        let admitted = searched.admits_item(bought, &w.catalog.attributes(bought));
        let requests = w.ranking.requests.lock().expect("lock");
        let last = requests.last().expect("scored");
        let candidate = last.items.contains(&bought);
        let flag = if mode == RepeatPurchases::Allowed {
            "1"
        } else {
            "0"
        };
        assert_eq!(
            last.context.get("repeats_allowed").map(String::as_str),
            Some(flag),
            "the model is told whether own items compete"
        );
        scored.push((mode, admitted, candidate, answer));
    }
    // Past the 30-day window the purchase may come back but is not sought; never: excluded;
    // allowed: the own-item source makes it a candidate although the index did not find it.
    assert!(
        scored[0].1 && !scored[0].2,
        "after the window: admitted, not sought"
    );
    assert!(!scored[1].1 && !scored[1].2, "never: excluded");
    assert!(scored[2].1 && scored[2].2, "allowed: a candidate");
    assert!(!ids(&scored[1].3.items).contains(&bought));
    let item = scored[2]
        .3
        .items
        .iter()
        .find(|i| i.idx == bought)
        .expect("the own item is served (the fake ranks by index: it is first)");
    assert_eq!(item.reason, "bought twice, last 40 days ago");
    let clicked = scored[2].3.items.iter().find(|i| i.idx == 1);
    if let Some(clicked) = clicked {
        assert_eq!(clicked.reason, "you looked at it once, last today");
    }
    assert!(
        scored[2].3.items.iter().all(|i| !i.reason.is_empty()),
        "every item has a reason when asked"
    );
    let without = w
        .recommender
        .recommend(&RecommendRequest {
            reasons: false,
            ..request("u")
        })
        .await
        .expect("answer");
    assert!(
        without.items.iter().all(|i| i.reason.is_empty()),
        "no reasons unasked"
    );
}

#[tokio::test]
async fn related_items_join_the_candidates_and_name_what_they_go_with() {
    let settings = Settings {
        sources: CandidateSources {
            related: 2,
            ..CandidateSources::default()
        },
        ..Settings::default()
    };
    // Item 1 goes with 398 and 397 (strongest first), and weakly with 396.
    let extras = Extras {
        related: vec![(1, 398, 0.9), (1, 397, 0.5), (1, 396, 0.01)],
        ..Extras::default()
    };
    let w = world_with(settings, &extras, |r, _| r.limit = 3);
    act(&w, "u", 1, EventKind::Purchase).await;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            reasons: true,
            in_stock_only: Some(false),
            ..request("u")
        })
        .await
        .expect("answer");
    let requests = w.ranking.requests.lock().expect("lock");
    let items = &requests.last().expect("scored").items;
    assert!(
        items.contains(&398) && items.contains(&397),
        "the two strongest: {items:?}"
    );
    assert!(!items.contains(&396), "only `related` of them");
    let top = answer.items.first().expect("an answer");
    assert_eq!(top.idx, 398, "the fake ranks by index");
    assert_eq!(top.reason, format!("often bought with {}", item_id(1)));
}

#[tokio::test]
async fn this_weeks_most_bought_join_the_candidates_and_say_they_trend() {
    let settings = Settings {
        sources: CandidateSources {
            trending: 2,
            ..CandidateSources::default()
        },
        ..Settings::default()
    };
    // Items 395..=397 sell most this week (397 most); 397 is out of stock.
    let mut buyers_7d = vec![0.0; ITEMS];
    buyers_7d[395] = 30.0;
    buyers_7d[396] = 40.0;
    buyers_7d[397] = 50.0;
    let extras = Extras {
        buyers_7d,
        ..Extras::default()
    };
    let w = world_with(settings, &extras, |r, _| r.limit = 3);
    let stocked = w.catalog.in_stock(397);
    act(&w, "u", 1, EventKind::Click).await;
    let answer = w
        .recommender
        .recommend(&RecommendRequest {
            reasons: true,
            in_stock_only: Some(true),
            ..request("u")
        })
        .await
        .expect("answer");
    let requests = w.ranking.requests.lock().expect("lock");
    let items = &requests.last().expect("scored").items;
    let trending: Vec<ItemIdx> = [397, 396, 395]
        .into_iter()
        .filter(|&i| w.catalog.in_stock(i))
        .take(2)
        .collect();
    for i in &trending {
        assert!(items.contains(i), "{i} trends: {items:?}");
    }
    if !stocked {
        assert!(!items.contains(&397), "the filter holds for every source");
    }
    let top = answer.items.first().expect("an answer");
    assert_eq!(top.idx, trending[0], "the fake ranks by index");
    assert!(
        top.reason.starts_with("trending in cat-") && top.reason.ends_with("buyers this week"),
        "{}",
        top.reason
    );
}

#[tokio::test]
async fn ids_are_bounded_and_answers_to_unknown_users_keep_no_state() {
    let w = world(|_, _| {});
    for user in 0..50 {
        let answer = w
            .recommender
            .recommend(&request(&format!("anonymous-{user}")))
            .await
            .expect("answer");
        assert!(!answer.items.is_empty());
    }
    assert_eq!(w.state.users(), 0, "no state for users who only asked");
    let longest = "u".repeat(256);
    act(&w, &longest, 1, EventKind::View).await;
    assert_eq!(w.state.users(), 1, "256 bytes is allowed");
    for (event, field) in [
        (
            IncomingEvent {
                user_id: "u".repeat(257),
                ..incoming(&w, 1)
            },
            "events[0].user_id",
        ),
        (
            IncomingEvent {
                item_id: "i".repeat(10 << 20),
                ..incoming(&w, 1)
            },
            "events[0].item_id",
        ),
        (
            IncomingEvent {
                event_id: "e".repeat(1 << 20),
                ..incoming(&w, 1)
            },
            "events[0].event_id",
        ),
    ] {
        match w.recommender.record_events(&[event]).await {
            Err(RecommendError::InvalidArgument { field: f, reason }) => {
                assert_eq!(f, field);
                assert!(reason.contains("at most 256 bytes"), "{reason}");
            }
            other => panic!("{field}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert_eq!(w.state.users(), 1, "nothing refused was kept");
}

fn incoming(w: &World, item: ItemIdx) -> IncomingEvent {
    IncomingEvent {
        user_id: "u".into(),
        item_id: w.catalog.item_id(item).into(),
        kind: Some(EventKind::View),
        timestamp_ms: 0,
        event_id: "e1".into(),
    }
}
