//! Events that keep: durable before the reply (SIGKILL right after the ack loses nothing),
//! retries counted once, a streaming intake that rejects bad events one by one.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tandem_proto::v1 as pb;
use tonic::Code;

struct Process {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real gateway binary on a free port with `events` as its log; waits for SERVING.
async fn spawn_gateway(events: &Path) -> Process {
    let data = test_data();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_tandem-gateway"))
        .arg(format!("--listen={addr}"))
        .arg(format!("--items={}", data.join("items.parquet").display()))
        .arg(format!(
            "--model-dir={}",
            data.join("models/ranker").display()
        ))
        .arg("--ranking-sessions=1")
        .arg(format!("--event-log-dir={}", events.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tandem-gateway");
    let process = Process { child, addr };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "gateway never became SERVING");
        if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let status = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if status.is_ok_and(|s| {
                s.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            }) {
                return process;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_id(mut e: pb::Event, id: &str) -> pb::Event {
    e.event_id = id.to_owned();
    e
}

#[tokio::test]
async fn acknowledged_events_survive_sigkill_and_retries_still_count_once() {
    let catalog = catalog();
    let dir = state_dir();
    let events_dir = dir.path().join("events");
    let category = catalog.category(catalog.by_popularity()[0]).to_owned();
    let items = items_in(&catalog, &category, 6);
    let user = "kill-9-user";
    let batch: Vec<pb::Event> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let kind = if i == 0 {
                pb::EventType::Purchase
            } else {
                pb::EventType::Click
            };
            with_id(event(user, item, kind, t0() + i as i64), &format!("ev-{i}"))
        })
        .collect();

    let mut gateway = spawn_gateway(&events_dir).await;
    let mut client = recommender(gateway.addr).await;
    let ack = client
        .record_events(pb::RecordEventsRequest {
            events: batch.clone(),
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!((ack.accepted, ack.duplicates), (6, 0));
    let before = client
        .recommend(request(user, 10))
        .await
        .expect("recommend")
        .into_inner();
    assert_ne!(before.model_version, "trending", "the events made a query");
    // SIGKILL straight after the acknowledgement: no shutdown path runs.
    gateway.child.kill().expect("kill -9");
    gateway.child.wait().expect("reap");
    drop(gateway);

    let gateway = spawn_gateway(&events_dir).await;
    let mut client = recommender(gateway.addr).await;
    let after = client
        .recommend(request(user, 10))
        .await
        .expect("recommend")
        .into_inner();
    assert_ne!(after.model_version, "trending", "history replayed");
    let ids = |r: &pb::RecommendResponse| -> Vec<String> {
        r.items.iter().map(|i| i.item_id.clone()).collect()
    };
    assert!(
        !ids(&after).contains(&items[0]),
        "the purchase was replayed: the bought item stays excluded"
    );
    let same_category = after
        .items
        .iter()
        .filter(|i| i.category == category)
        .count();
    assert!(
        same_category * 2 >= after.items.len(),
        "replayed clicks steer the query: {same_category} of {} in {category}",
        after.items.len()
    );
    let overlap = ids(&after)
        .iter()
        .filter(|i| ids(&before).contains(i))
        .count();
    assert!(
        overlap >= 5,
        "same state, similar answer: {overlap} of 10 shared"
    );

    // The producer never saw the ack and retries: nothing is counted twice, across the restart.
    let retry = client
        .record_events(pb::RecordEventsRequest {
            events: batch.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((retry.accepted, retry.duplicates), (0, 6));
}

#[tokio::test]
async fn a_retried_event_id_counts_once_and_ids_are_per_user() {
    let catalog = catalog();
    let running = start(config(&[])).await;
    let mut client = recommender(running.addr).await;
    let item = catalog.item_id(catalog.by_popularity()[0]).to_owned();
    let first = vec![
        with_id(event("u1", &item, pb::EventType::View, t0()), "a"),
        with_id(event("u1", &item, pb::EventType::Click, t0() + 1), "b"),
        // No id: never a duplicate.
        event("u1", &item, pb::EventType::View, t0() + 2),
    ];
    let ack = client
        .record_events(pb::RecordEventsRequest {
            events: first.clone(),
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!((ack.accepted, ack.duplicates), (3, 0));
    let mut again = first.clone();
    // The same id from another user is another event.
    again.push(with_id(event("u2", &item, pb::EventType::View, t0()), "a"));
    // Repeated inside one batch: once.
    again.push(with_id(event("u2", &item, pb::EventType::View, t0()), "c"));
    again.push(with_id(event("u2", &item, pb::EventType::View, t0()), "c"));
    let ack = client
        .record_events(pb::RecordEventsRequest { events: again })
        .await
        .expect("record")
        .into_inner();
    assert_eq!((ack.accepted, ack.duplicates), (3, 3));
}

#[tokio::test]
async fn bad_events_are_invalid_argument_naming_the_field_and_record_nothing() {
    let catalog = catalog();
    let running = start(config(&[])).await;
    let mut client = recommender(running.addr).await;
    let item = catalog.item_id(catalog.by_popularity()[0]).to_owned();
    let cases = [
        (
            event("u", &item, pb::EventType::View, 1_790_000_000),
            "events[1].timestamp_ms",
        ),
        (
            event("u", "no-such-item", pb::EventType::View, t0()),
            "events[1].item_id",
        ),
        (
            event("u", &item, pb::EventType::Unspecified, t0()),
            "events[1].type",
        ),
        (
            event("", &item, pb::EventType::View, t0()),
            "events[1].user_id",
        ),
    ];
    for (bad, field) in cases {
        let good = with_id(
            event("bad-batch-user", &item, pb::EventType::Purchase, t0()),
            "x",
        );
        let err = client
            .record_events(pb::RecordEventsRequest {
                events: vec![good, bad],
            })
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // Nothing of the rejected batches was recorded, not even the good event's id.
    let ack = client
        .record_events(pb::RecordEventsRequest {
            events: vec![with_id(
                event("bad-batch-user", &item, pb::EventType::Purchase, t0()),
                "x",
            )],
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!((ack.accepted, ack.duplicates), (1, 0));
}

#[tokio::test]
async fn the_stream_records_good_events_and_lists_the_bad_ones() {
    let catalog = catalog();
    let running = start(config(&[])).await;
    let mut client = recommender(running.addr).await;
    let category = catalog.category(catalog.by_popularity()[0]).to_owned();
    let items = items_in(&catalog, &category, 4);
    let user = "stream-user";
    let messages = vec![
        pb::RecordEventStreamRequest {
            events: vec![
                with_id(event(user, &items[0], pb::EventType::Click, t0()), "s0"),
                event(user, "unknown-item", pb::EventType::View, t0()),
            ],
        },
        pb::RecordEventStreamRequest {
            events: vec![
                with_id(
                    event(user, &items[1], pb::EventType::AddToCart, t0() + 1),
                    "s1",
                ),
                // A retry of the first message's event.
                with_id(event(user, &items[0], pb::EventType::Click, t0()), "s0"),
                event(user, &items[2], pb::EventType::View, 12),
                with_id(
                    event(user, &items[3], pb::EventType::Purchase, t0() + 2),
                    "s3",
                ),
            ],
        },
    ];
    let summary = client
        .record_event_stream(tokio_stream::iter(messages))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        (summary.accepted, summary.duplicates, summary.rejected),
        (3, 1, 2)
    );
    let rejected: Vec<(u64, &str)> = summary
        .rejections
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(rejected, [(1, "item_id"), (4, "timestamp_ms")]);
    let recs = client
        .recommend(request(user, 10))
        .await
        .expect("recommend")
        .into_inner();
    assert_ne!(
        recs.model_version, "trending",
        "streamed events are history"
    );
    assert!(
        recs.items.iter().all(|i| i.item_id != items[3]),
        "the streamed purchase is excluded"
    );
}
