//! Two gateways on one real Redis (`--state-store redis://…`): an event acknowledged by one
//! is in the other's very next answer, a retry that reaches the other is a duplicate, and
//! with Redis killed events are still acknowledged while answers say `degraded`; Redis
//! restarted empty is refilled from the gateways' event logs.

mod common;

use std::time::{Duration, Instant};

use common::{catalog, config, event, items_in, recommender, request, start, t0};
use tandem_events::{Logged, read_log};
use tandem_proto::v1 as pb;
use tandem_shared_state::testing::RedisServer;

const TOKEN: &str = "shared-s3cret";

/// Whether `user` has events in the event log in `dir`.
fn logged_events_of(dir: &std::path::Path, user: &str) -> usize {
    let mut n = 0;
    read_log(dir, 0, |_, record| {
        if let Logged::Events(events) = record {
            n += events.iter().filter(|e| e.user_id == user).count();
        }
        true
    })
    .expect("read the log");
    n
}

async fn answer(client: &mut common::RecommenderClient, user: &str) -> pb::RecommendResponse {
    client
        .recommend(request(user, 10))
        .await
        .expect("Recommend answers")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_one_redis_share_users_and_outlive_it() {
    let catalog = catalog();
    let mut redis = RedisServer::start();
    let store = format!("--state-store={}", redis.url());
    let token = format!("--admin-token={TOKEN}");
    let a = start(config(&[&store, &token])).await;
    let b = start(config(&[&store, &token])).await;
    let (mut on_a, mut on_b) = (recommender(a.addr).await, recommender(b.addr).await);

    assert_eq!(answer(&mut on_b, "shopper").await.model_version, "trending");
    let toys = items_in(&catalog, "toys", 4);
    let mut events: Vec<pb::Event> = toys[..3]
        .iter()
        .map(|i| event("shopper", i, pb::EventType::Click, t0()))
        .collect();
    events.push(pb::Event {
        event_id: "order-1".into(),
        ..event("shopper", &toys[3], pb::EventType::Purchase, t0() + 1)
    });
    let recorded = on_a
        .record_events(pb::RecordEventsRequest {
            events: events.clone(),
        })
        .await
        .expect("recorded")
        .into_inner();
    assert_eq!(recorded.accepted, 4);

    // The other gateway's very next answer is personalized, without the item just bought.
    let warm = answer(&mut on_b, "shopper").await;
    assert_ne!(warm.model_version, "trending");
    assert!(!warm.degraded, "{}", warm.degraded_reason);
    assert!(warm.items.iter().all(|i| i.item_id != toys[3]));

    // The producer retries the purchase against the other gateway: recognised.
    let retried = on_b
        .record_events(pb::RecordEventsRequest {
            events: events[3..].to_vec(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((retried.accepted, retried.duplicates), (0, 1));

    // Redis goes away: events are still acknowledged (they are in the log), answers say why
    // they are not personalized instead of failing.
    redis.kill();
    let late = items_in(&catalog, "books", 2);
    let started = Instant::now();
    let while_down = on_a
        .record_events(pb::RecordEventsRequest {
            events: late
                .iter()
                .map(|i| event("latecomer", i, pb::EventType::Click, t0()))
                .collect(),
        })
        .await
        .expect("acknowledged while Redis is down")
        .into_inner();
    assert_eq!(while_down.accepted, 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let degraded = answer(&mut on_b, "shopper").await;
    assert!(degraded.degraded);
    assert!(
        degraded.degraded_reason.contains("user state unavailable"),
        "{}",
        degraded.degraded_reason
    );
    assert_eq!(degraded.items.len(), 10, "answered from what it has");

    // Back, empty: refilled from the logs, including what was recorded while it was down.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shopper = answer(&mut on_b, "shopper").await;
        let latecomer = answer(&mut on_b, "latecomer").await;
        if !shopper.degraded
            && shopper.model_version != "trending"
            && latecomer.model_version != "trending"
        {
            assert!(shopper.items.iter().all(|i| i.item_id != toys[3]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up: {} / {} {}",
            shopper.model_version,
            latecomer.model_version,
            shopper.degraded_reason
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_forgotten_on_one_gateway_leaves_every_gateways_state_and_logs() {
    let catalog = catalog();
    let redis = RedisServer::start();
    let store = format!("--state-store={}", redis.url());
    let token = format!("--admin-token={TOKEN}");
    let a = start(config(&[&store, &token])).await;
    let b_config = config(&[&store, &token]);
    let b_log = b_config.event_log_dir.clone();
    let b = start(b_config).await;
    let (mut on_a, mut on_b) = (recommender(a.addr).await, recommender(b.addr).await);
    let toys = items_in(&catalog, "toys", 4);
    for (client, items) in [(&mut on_a, &toys[..2]), (&mut on_b, &toys[2..])] {
        client
            .record_events(pb::RecordEventsRequest {
                events: items
                    .iter()
                    .map(|i| event("leaving", i, pb::EventType::Click, t0()))
                    .chain([event("staying", &toys[0], pb::EventType::Click, t0())])
                    .collect(),
            })
            .await
            .expect("recorded");
    }
    assert_eq!(logged_events_of(&b_log, "leaving"), 2);
    assert_ne!(answer(&mut on_b, "leaving").await.model_version, "trending");

    let mut admin = pb::recommender_admin_service_client::RecommenderAdminServiceClient::new(
        common::channel(a.addr).await,
    );
    let mut forget = tonic::Request::new(pb::ForgetUserRequest {
        user_id: "leaving".into(),
    });
    forget.metadata_mut().insert(
        tandem_server::ADMIN_AUTH_HEADER,
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    let erased = admin
        .forget_user(forget)
        .await
        .expect("ForgetUser")
        .into_inner();
    assert!(erased.state_removed && erased.other_gateways_notified);
    assert_eq!(erased.log_events_removed, 2, "a's own log");

    // Gone from the shared state at once, for every gateway.
    assert_eq!(answer(&mut on_b, "leaving").await.model_version, "trending");
    // And from b's own log within a few seconds (b follows the announcements).
    let deadline = Instant::now() + Duration::from_secs(15);
    while logged_events_of(&b_log, "leaving") > 0 {
        assert!(
            Instant::now() < deadline,
            "b never erased the user from its log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(logged_events_of(&b_log, "staying"), 1, "others keep theirs");
    assert_ne!(answer(&mut on_a, "staying").await.model_version, "trending");
    drop(redis);
}

/// Keys `r:<user>` (recent events) in Redis for each user.
async fn users_in_redis(url: &str, users: &[String]) -> usize {
    let client = redis::Client::open(url).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut pipe = redis::pipe();
    for user in users {
        pipe.cmd("EXISTS").arg(format!("tandem:r:{user}"));
    }
    let found: Vec<i64> = pipe.query_async(&mut c).await.expect("EXISTS");
    found.into_iter().filter(|f| *f == 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_loses_no_acknowledged_event() {
    let catalog = catalog();
    let mut redis = RedisServer::start();
    let store = format!("--state-store={}", redis.url());
    let a = start(config(&[&store])).await;
    let b = start(config(&[&store])).await;
    let item = items_in(&catalog, "toys", 1).remove(0);

    // Two writers, one per gateway, each a new user per call, for as long as it takes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (name, addr) in [("a", a.addr), ("b", b.addr)] {
        let (stop, item) = (stop.clone(), item.clone());
        writers.push(tokio::spawn(async move {
            let mut client = recommender(addr).await;
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = format!("load-{name}-{n}");
                n += 1;
                let recorded = client
                    .record_events(pb::RecordEventsRequest {
                        events: vec![event(&user, &item, pb::EventType::View, t0())],
                    })
                    .await
                    .expect("every RecordEvents is acknowledged, Redis or not")
                    .into_inner();
                assert_eq!(recorded.accepted, 1);
                acknowledged.push(user);
            }
            acknowledged
        }));
    }
    let mut reader = recommender(b.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = answer(&mut reader, "load-a-0").await;
    assert!(during.degraded, "answers say Redis is gone");
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.expect("writer"));
    }
    assert!(acknowledged.len() > 20, "load ran: {}", acknowledged.len());

    // Every acknowledged event reaches the restarted (empty) Redis from the two logs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = users_in_redis(&redis.url(), &acknowledged).await;
        if found == acknowledged.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{found} of {} acknowledged users in Redis",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = answer(&mut reader, "load-a-0").await;
    assert!(!after.degraded && after.model_version != "trending");
}
