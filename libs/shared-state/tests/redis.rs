//! The Redis store against a real redis-server: two gateways' stores on one Redis see each
//! other's events, retries are recognised across them, erasure and impressions reach every
//! reader, trending matches the in-memory store, and a Redis that was down or restarted
//! empty is caught up from the event logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_catalog::Catalog;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_events::{EventLog, EventLogConfig, LogFollower, Logged, LoggedEvent};
use tandem_personalization::{
    EventKind, InMemoryState, StateLimits, StateStore, TrendingConfig, UserEvent, UserHistory,
};
use tandem_shared_state::testing::RedisServer;
use tandem_shared_state::{RedisConfig, RedisState};

const T0: i64 = 1_760_000_000_000;

struct Gateway {
    store: Arc<RedisState>,
    log: EventLog,
}

impl Gateway {
    /// What the event intake does: log, then hand the record to the follower.
    async fn record(&self, events: &[(&str, usize, EventKind, i64)]) -> bool {
        let logged: Vec<LoggedEvent> = events
            .iter()
            .map(|(user, item, kind, t)| LoggedEvent {
                event_id: String::new(),
                user_id: (*user).to_owned(),
                item_id: format!("item-{item:06}"),
                kind: *kind,
                timestamp_ms: *t,
            })
            .collect();
        let seq = self.log.append(logged.clone()).await.expect("append");
        self.store
            .committed(seq, Arc::new(Logged::Events(logged)))
            .await
    }

    async fn forget(&self, user: &str) -> bool {
        let seq = self.log.log_forget(user).await.expect("log");
        self.store
            .committed(seq, Arc::new(Logged::ForgetUser(user.to_owned())))
            .await
    }
}

struct World {
    _dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    redis: RedisServer,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(200, 8, 4, 7), &path).expect("catalog");
    let catalog = Arc::new(Catalog::open(&path).expect("open catalog"));
    World {
        _dir: dir,
        catalog,
        redis: RedisServer::start(),
    }
}

fn config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        key_prefix: "t:".into(),
        read_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(500),
        dedupe_ttl: Duration::from_secs(60),
        events_per_user: 5,
        idle_ttl: None,
        trending: TrendingConfig {
            half_life_ms: 3_600_000,
            ..TrendingConfig::default()
        },
        trending_items: 1000,
        demote_after_shown: 2,
    }
}

async fn gateway(w: &World, name: &str) -> Gateway {
    let dir = w._dir.path().join(name);
    let (log, replayed) = EventLog::open(
        &EventLogConfig {
            dir: dir.clone(),
            segment_bytes: 1 << 20,
            export: false,
            retention: None,
        },
        0,
        |_, _| {},
    )
    .expect("event log");
    let store = RedisState::connect(config(&w.redis.url()), w.catalog.clone())
        .await
        .expect("connect");
    store.start(&dir, replayed.last_seq).expect("follow");
    assert!(store.wait_caught_up(Duration::from_secs(10)).await);
    Gateway { store, log }
}

fn idx(catalog: &Catalog, item: usize) -> u32 {
    catalog.idx_of(&format!("item-{item:06}")).expect("item")
}

/// Polls `read` until `done` holds (the catch-up runs in the background).
async fn eventually(
    store: &RedisState,
    user: &str,
    done: impl Fn(&UserHistory) -> bool,
) -> Arc<UserHistory> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(h) = store.user(user).await
            && done(&h)
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "state of `{user}` never got there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acknowledged_by_one_gateway_is_in_the_others_next_read() {
    let w = world();
    let (a, b) = (gateway(&w, "a").await, gateway(&w, "b").await);
    assert!(
        a.record(&[
            ("u1", 1, EventKind::View, T0),
            ("u1", 2, EventKind::Purchase, T0 + 1000),
            ("u2", 3, EventKind::Click, T0 + 500),
        ])
        .await,
        "applied before the acknowledgement"
    );
    let h = b.store.user("u1").await.expect("read");
    let items: Vec<u32> = h.recent.iter().map(|e| e.item).collect();
    assert_eq!(items, [idx(&w.catalog, 1), idx(&w.catalog, 2)]);
    assert_eq!(h.recent[1].kind, EventKind::Purchase);
    let p = h.purchased[&idx(&w.catalog, 2)];
    assert_eq!((p.count, p.last_ms), (1, T0 + 1000));

    // b's own event, late (older than a's): lands in time order; recent is bounded (5).
    assert!(
        b.record(&[
            ("u1", 4, EventKind::View, T0 - 10),
            ("u1", 5, EventKind::View, T0 + 2000),
            ("u1", 6, EventKind::View, T0 + 3000),
            ("u1", 2, EventKind::Purchase, T0 + 4000),
        ])
        .await
    );
    let h = a.store.user("u1").await.expect("read");
    let times: Vec<i64> = h.recent.iter().map(|e| e.timestamp_ms).collect();
    // Six events, five kept: the late one (the oldest) went.
    assert_eq!(times, [T0, T0 + 1000, T0 + 2000, T0 + 3000, T0 + 4000]);
    let p = h.purchased[&idx(&w.catalog, 2)];
    assert_eq!(
        (p.count, p.last_ms),
        (2, T0 + 4000),
        "purchases counted across gateways"
    );
    assert!(a.store.user("nobody").await.expect("read").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_erasure_and_impressions_reach_every_gateway() {
    let w = world();
    let (a, b) = (gateway(&w, "a").await, gateway(&w, "b").await);
    assert_eq!(
        a.store.claim(&[("u", "e1"), ("u", "e2")]).await,
        Some(vec![true, true])
    );
    assert_eq!(
        b.store.claim(&[("u", "e1"), ("v", "e1")]).await,
        Some(vec![false, true]),
        "a retry that reaches the other gateway is a duplicate; ids are per user"
    );
    b.store.release(&[("v", "e1")]).await;
    assert_eq!(
        a.store.claim(&[("v", "e1")]).await,
        Some(vec![true]),
        "released: taken again"
    );

    assert!(a.record(&[("u", 1, EventKind::View, T0)]).await);
    let shown = [idx(&w.catalog, 7), idx(&w.catalog, 8)];
    b.store.record_shown("u", &shown, T0 + 5);
    b.store.record_shown("u", &shown[..1], T0 + 9);
    b.store.record_shown("stranger", &shown, T0 + 9);
    // Answers read the impressions that demote an item (twice, here), no others.
    let h = eventually(&a.store, "u", |h| {
        h.shown.len() == 1 && h.shown.get(&shown[0]).is_some_and(|s| s.times == 2)
    })
    .await;
    assert_eq!(h.shown[&shown[0]].last_ms, T0 + 9);
    assert!(
        a.store
            .user("stranger")
            .await
            .expect("read")
            .shown
            .is_empty(),
        "an answer to an unknown user creates no state"
    );
    // An event on a shown item resets its impressions; the other item's second impression
    // (the first was kept) makes it demoted.
    assert!(b.record(&[("u", 7, EventKind::Click, T0 + 20)]).await);
    b.store.record_shown("u", &shown[1..], T0 + 30);
    let h = eventually(&a.store, "u", |h| h.shown.contains_key(&shown[1])).await;
    assert!(!h.shown.contains_key(&shown[0]));
    assert_eq!(h.shown[&shown[1]].times, 2);

    assert!(a.record(&[("other", 1, EventKind::Purchase, T0)]).await);
    assert!(b.forget("u").await);
    assert!(a.store.user("u").await.expect("read").is_empty());
    let h = a.store.user("u").await.expect("read");
    assert!(
        h.purchased.is_empty() && h.shown.is_empty(),
        "everything about them"
    );
    assert_eq!(
        a.store.claim(&[("u", "e1")]).await,
        Some(vec![true]),
        "their event ids are gone too"
    );
    assert_eq!(
        b.store.user("other").await.expect("read").recent.len(),
        1,
        "others keep theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_matches_the_in_memory_store() {
    let w = world();
    let a = gateway(&w, "a").await;
    let local = InMemoryState::new(StateLimits::default(), config(&w.redis.url()).trending);
    let hour = 3_600_000;
    let events = [
        ("u1", 1, EventKind::Purchase, T0),
        ("u2", 2, EventKind::View, T0 + 2 * hour),
        ("u3", 2, EventKind::View, T0 + 2 * hour),
        ("u4", 2, EventKind::View, T0 + 2 * hour),
        ("u3", 3, EventKind::Click, T0 + 3 * hour),
        ("u4", 4, EventKind::View, T0 + hour),
    ];
    assert!(a.record(&events).await);
    for (user, item, kind, t) in events {
        local.record(
            user,
            &[UserEvent {
                item: idx(&w.catalog, item),
                kind,
                timestamp_ms: t,
            }],
        );
    }
    let want = local.trending(10, &|_| true);
    // Decayed to the newest event: 2 (click now), 1.5, 1 (a purchase three half-lives ago), 0.25.
    let scores: Vec<f32> = want.iter().map(|x| x.1).collect();
    assert_eq!(scores, [2.0, 1.5, 1.0, 0.25]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = a.store.trending(10, &|_| true);
        if got.len() == want.len() {
            for ((gi, gs), (wi, ws)) in got.iter().zip(&want) {
                assert_eq!(gi, wi);
                assert!((gs - ws).abs() < 1e-4, "{gs} vs {ws}");
            }
            let filtered = a.store.trending(1, &|i| i != want[0].0);
            assert_eq!(filtered, [want[1]]);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trending never refreshed: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_was_down_or_lost_its_data_is_caught_up_from_the_logs() {
    let mut w = world();
    let (a, b) = (gateway(&w, "a").await, gateway(&w, "b").await);
    assert!(a.record(&[("u", 1, EventKind::View, T0)]).await);
    assert!(b.record(&[("u", 2, EventKind::Purchase, T0 + 1)]).await);

    // Down: events are still logged and acknowledged (not applied), reads fail fast.
    w.redis.kill();
    let started = Instant::now();
    assert!(!a.record(&[("u", 3, EventKind::View, T0 + 2)]).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(b.store.user("u").await.is_err());
    assert!(!b.store.reachable());

    // Back, empty: both logs are applied again, including what was logged meanwhile.
    w.redis.restart();
    let h = eventually(&b.store, "u", |h| h.recent.len() == 3).await;
    let items: Vec<u32> = h.recent.iter().map(|e| e.item).collect();
    assert_eq!(items, [1, 2, 3].map(|i| idx(&w.catalog, i)));
    assert_eq!(
        h.purchased[&idx(&w.catalog, 2)].count,
        1,
        "applied once, not twice"
    );

    // Emptied while up (FLUSHALL): noticed without a write, and refilled.
    let client = redis::Client::open(w.redis.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .expect("flush");
    assert!(a.store.user("u").await.expect("read").is_empty());
    let h = eventually(&a.store, "u", |h| h.recent.len() == 3).await;
    assert_eq!(h.purchased[&idx(&w.catalog, 2)].count, 1);
    assert!(
        a.record(&[("u", 4, EventKind::View, T0 + 3)]).await,
        "live again"
    );
    assert_eq!(b.store.user("u").await.expect("read").recent.len(), 4);
}
