//! `--metrics-listen`: after known traffic, the Prometheus scrape counts it. One test in its
//! own binary: the metrics recorder is process-wide.

mod common;

use std::collections::BTreeMap;

use common::*;
use tandem_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample of the text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> Vec<Sample> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("response");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    parse(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_counts_known_traffic() {
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr");
    let gw = start(config(&[&format!("--metrics-listen={metrics_addr}")])).await;
    let mut client = recommender(gw.addr).await;

    // Events: 3 accepted, then the same 3 again with ids (duplicates), then a batch of 2
    // with an unknown item (rejected whole).
    let items = items_in(&catalog(), "kitchen", 3);
    let with_id = |i: usize| pb::Event {
        event_id: format!("e{i}"),
        ..event("counted", &items[i], pb::EventType::Click, t0() + i as i64)
    };
    for _ in 0..2 {
        client
            .record_events(pb::RecordEventsRequest {
                events: (0..3).map(with_id).collect(),
            })
            .await
            .expect("recorded");
    }
    let bad = client
        .record_events(pb::RecordEventsRequest {
            events: vec![
                with_id(0),
                event("counted", "no-such-item", pb::EventType::Click, t0()),
            ],
        })
        .await;
    assert_eq!(
        bad.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::InvalidArgument)
    );

    // Recommends: 3 served, 1 refused (k out of range).
    for _ in 0..3 {
        client
            .recommend(request("counted", 10))
            .await
            .expect("served");
    }
    let refused = client.recommend(request("counted", 100_000)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::InvalidArgument)
    );

    let samples = scrape(metrics_addr).await;
    // Every served item is an impression of the version that answered.
    assert_eq!(
        value(&samples, "tandem_experiment_impressions_total", &[]),
        30.0
    );
    let recommend = [
        ("grpc_type", "unary"),
        ("grpc_service", "tandem.v1.RecommenderService"),
        ("grpc_method", "Recommend"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = recommend.to_vec();
        labels.push(extra);
        labels
    };
    assert_eq!(
        value(&samples, "grpc_server_started_total", &recommend),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "grpc_server_handled_total",
            &with(("grpc_code", "OK"))
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "grpc_server_handled_total",
            &with(("grpc_code", "InvalidArgument"))
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "grpc_server_handling_seconds_count", &recommend),
        4.0
    );
    let record = [("grpc_method", "RecordEvents")];
    assert_eq!(value(&samples, "grpc_server_started_total", &record), 3.0);

    assert_eq!(
        value(&samples, "tandem_events_total", &[("outcome", "accepted")]),
        3.0
    );
    assert_eq!(
        value(&samples, "tandem_events_total", &[("outcome", "duplicate")]),
        3.0
    );
    assert_eq!(
        value(&samples, "tandem_events_total", &[("outcome", "rejected")]),
        2.0
    );
    assert!(value(&samples, "tandem_event_log_fsync_seconds_count", &[]) >= 1.0);

    // Each served Recommend searched once and ranked once; none degraded.
    let search = [
        ("stage", "retrieval"),
        ("call", "search"),
        ("outcome", "ok"),
    ];
    assert_eq!(value(&samples, "tandem_stage_seconds_count", &search), 3.0);
    let rank = [("stage", "ranking"), ("call", "rank"), ("outcome", "ok")];
    assert_eq!(value(&samples, "tandem_stage_seconds_count", &rank), 3.0);
    assert_eq!(value(&samples, "tandem_recommend_degraded_total", &[]), 0.0);
    assert!(value(&samples, "tandem_ranking_batch_rows_count", &[]) >= 3.0);
    assert!(value(&samples, "tandem_ranking_queue_wait_seconds_count", &[]) >= 3.0);

    // The loaded model and its share, the index's rows.
    assert_eq!(value(&samples, "tandem_model_loaded", &[]), 1.0);
    assert_eq!(value(&samples, "tandem_traffic_split_share", &[]), 1.0);
    assert_eq!(
        value(&samples, "tandem_index_rows", &[]),
        catalog().len() as f64
    );
    // Memory by component: the graph's vectors are the catalog's, as stored (4 bytes each).
    let catalog = catalog();
    let stored = value(
        &samples,
        "tandem_memory_bytes",
        &[("component", "index_vectors")],
    );
    assert!(
        stored >= (4 * catalog.len() * catalog.dim()) as f64,
        "index_vectors {stored}"
    );
    // ONNX Runtime's part: the resident set's growth while the model loaded.
    for component in [
        "index_links",
        "catalog_embeddings",
        "catalog_ids",
        "ranking_models",
    ] {
        assert!(
            value(&samples, "tandem_memory_bytes", &[("component", component)]) > 0.0,
            "{component}"
        );
    }
}
