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
        .arg("--served-log-sample=0")
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

/// The category whose mean item embedding has the highest cosine with `query`.
fn nearest_category(catalog: &tandem_catalog::Catalog, query: &[f64]) -> String {
    let mut centroids: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for idx in 0..catalog.len() as u32 {
        let sum = centroids
            .entry(catalog.category(idx))
            .or_insert_with(|| vec![0.0; catalog.dim()]);
        for (s, x) in sum.iter_mut().zip(catalog.embedding(idx)) {
            *s += f64::from(*x);
        }
    }
    let cosine = |c: &[f64]| {
        let dot: f64 = c.iter().zip(query).map(|(a, b)| a * b).sum();
        dot / c
            .iter()
            .map(|a| a * a)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE)
    };
    centroids
        .iter()
        .max_by(|a, b| cosine(a.1).total_cmp(&cosine(b.1)))
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or_default()
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
    let explained = |user: &str| pb::RecommendRequest {
        explain: true,
        ..request(user, 10)
    };
    let before = client
        .recommend(explained(user))
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
        .recommend(explained(user))
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
    // The query is rebuilt from the replayed log: the same vector as before the kill, and it
    // points at the clicked category (nearest category centroid).
    let user_vector = |r: &pb::RecommendResponse| {
        r.items
            .first()
            .map_or_else(Vec::new, |i| feature(i, "user_vector").to_vec())
    };
    let query_before = user_vector(&before);
    let query_after = user_vector(&after);
    assert_eq!(
        query_after.len(),
        catalog.dim(),
        "explain carries the query"
    );
    for (a, b) in query_after.iter().zip(&query_before) {
        assert!(
            (a - b).abs() < 1e-6,
            "replayed query {query_after:?} != {query_before:?}"
        );
    }
    assert_eq!(nearest_category(&catalog, &query_after), category);
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

/// The synthetic world's training events, as a producer would send them.
fn world_events() -> Vec<pb::Event> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int8Type, Int64Type};
    let file = std::fs::File::open(test_data().join("events/train.parquet")).expect("events");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let col = |name: &str| batch.column_by_name(name).expect("column").clone();
        let (users, items) = (col("user_id"), col("item_id"));
        let (users, items) = (users.as_string::<i32>(), items.as_string::<i32>());
        let kinds = col("event_type");
        let kinds = kinds.as_primitive::<Int8Type>();
        let times = col("timestamp_ms");
        let times = times.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            out.push(pb::Event {
                user_id: users.value(i).to_owned(),
                item_id: items.value(i).to_owned(),
                r#type: i32::from(kinds.value(i)),
                timestamp_ms: times.value(i),
                event_id: format!("world-{i}-{}", out.len()),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_events_roll_into_parquet_the_models_pipeline_trains_from() {
    let dir = state_dir();
    let events_dir = dir.path().join("events");
    let running = start(config(&[
        &format!("--event-log-dir={}", events_dir.display()),
        "--event-segment-mib=1",
    ]))
    .await;
    let mut client = recommender(running.addr).await;
    let events = world_events();
    let sent = events.len() as u64;
    let messages: Vec<pb::RecordEventStreamRequest> = events
        .chunks(5000)
        .map(|c| pb::RecordEventStreamRequest { events: c.to_vec() })
        .collect();
    let summary = client
        .record_event_stream(tokio_stream::iter(messages))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!((summary.accepted, summary.rejected), (sent, 0));

    // Closed 1 MiB segments are exported in the background.
    let export = events_dir.join("parquet");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exported = loop {
        let n = tandem_events::read_exported(&events_dir).map_or(0, |e| e.len());
        if n as u64 >= sent / 2 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exported as u64 >= sent / 2, "{exported} of {sent} exported");

    let out = dir.path().join("trained");
    let run = Command::new(python())
        .args([
            "-W",
            "ignore",
            "-m",
            "tandem_pipeline",
            "--eval-users",
            "200",
            "--out",
        ])
        .arg(&out)
        .arg("--events-from")
        .arg(&export)
        .arg("--catalog")
        .arg(test_data().join("items.parquet"))
        .current_dir(models_dir())
        .output()
        .expect("run the models pipeline");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report = String::from_utf8_lossy(&run.stdout);
    // "world: 3000 items, 1197 users, 41000 events (...)": the events it trained on.
    let trained: usize = report
        .split(" events (")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        trained >= exported && trained as u64 <= sent,
        "trained on the exported events ({trained}, {exported} exported): {report}"
    );
    assert!(out.join("models/ranker/1/model.onnx").is_file());
    assert!(out.join("items.parquet").is_file());
}
