//! Real servers on loopback for the end-to-end tests. Needs `make test`'s data and ORT library.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tandem_catalog::Catalog;
use tandem_gateway::{Config, Gateway};
use tandem_proto::v1 as pb;
use tandem_retrieval::{Index, IndexParams, Shard};
use tandem_retrieval_api::RetrievalApi;
use tandem_server::Ready;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub fn test_data() -> PathBuf {
    let dir = std::env::var_os("TANDEM_TEST_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/test"),
        PathBuf::from,
    );
    assert!(
        dir.join("items.parquet").is_file(),
        "{} has no test data: run `make test`, which generates it",
        dir.display()
    );
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `make test`"
    );
    dir
}

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::open(&test_data().join("items.parquet")).expect("catalog"))
}

/// Gateway flags on a free port with the test data; `extra` appends or overrides.
pub fn config(extra: &[&str]) -> Config {
    let data = test_data();
    let items = data.join("items.parquet");
    let state = state_dir().keep();
    let models = data.join("models/ranker");
    let mut args = vec![
        "tandem-gateway".to_owned(),
        "--listen=127.0.0.1:0".into(),
        format!("--items={}", items.display()),
        format!("--model-dir={}", models.display()),
        "--ranking-sessions=2".into(),
        // Each gateway its own event log and served-feature log, kept (the gateway outlives
        // the config) under target/tmp, which `cargo clean` removes, rather than in the
        // system's temp dir or the source tree.
        format!("--event-log-dir={}", state.join("events").display()),
        format!("--served-log-dir={}", state.join("served").display()),
    ];
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
    args.retain(|a| !extra.iter().any(|e| flag(e) == flag(a)));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::try_parse_from(args).expect("valid flags")
}

pub struct Running {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a gateway and waits until its stages are loaded (health not checked: the caller
/// knows how to reach it, e.g. over TLS).
pub async fn start_loaded(config: Config) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway: Gateway = tandem_gateway::start(config, async {
        let _ = stopped.await;
    })
    .await
    .expect("start");
    gateway
        .loaded
        .await
        .expect("load task")
        .expect("stages load");
    Running {
        addr: gateway.addr,
        _stop: stop,
    }
}

/// Starts a gateway and waits until it is SERVING.
pub async fn start(config: Config) -> Running {
    let running = start_loaded(config).await;
    assert_eq!(health(running.addr, "").await, ServingStatus::Serving);
    running
}

pub async fn channel(addr: SocketAddr) -> Channel {
    for _ in 0..50 {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {addr}");
}

pub async fn health(addr: SocketAddr, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(addr).await);
    let resp = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check");
    ServingStatus::try_from(resp.into_inner().status).expect("known status")
}

pub async fn recommender(
    addr: SocketAddr,
) -> pb::recommender_service_client::RecommenderServiceClient<Channel> {
    pb::recommender_service_client::RecommenderServiceClient::new(channel(addr).await)
}

pub fn event(user: &str, item: &str, kind: pb::EventType, t: i64) -> pb::Event {
    pb::Event {
        user_id: user.to_owned(),
        item_id: item.to_owned(),
        r#type: kind as i32,
        timestamp_ms: t,
        event_id: String::new(),
    }
}

/// A fresh directory for one gateway's event log under cargo's target/tmp, removed when
/// dropped (left behind on a crash for inspection).
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tandem-gateway-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

pub fn request(user: &str, k: u32) -> pb::RecommendRequest {
    pb::RecommendRequest {
        user_id: user.to_owned(),
        k: Some(k),
        ..Default::default()
    }
}

/// Items of `category`, most popular first.
pub fn items_in(catalog: &Catalog, category: &str, n: usize) -> Vec<String> {
    catalog
        .by_popularity()
        .iter()
        .filter(|&&i| catalog.category(i) == category)
        .take(n)
        .map(|&i| catalog.item_id(i).to_owned())
        .collect()
}

/// A few hours ago: recent enough for every time window (purchase exclusion, trending).
pub fn t0() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - 6 * 3_600_000
}

/// The venv's Python (`make test` sets `TANDEM_PYTHON`), run from `models/` for the pipeline.
pub fn python() -> PathBuf {
    std::env::var_os("TANDEM_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        PathBuf::from,
    )
}

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub type RecommenderClient = pb::recommender_service_client::RecommenderServiceClient<Channel>;

/// Gives `user` a history: clicks on the `n` most popular items of `category`, just now.
pub async fn clicks_in(client: &mut RecommenderClient, user: &str, category: &str, n: usize) {
    let catalog = catalog();
    let events = items_in(&catalog, category, n)
        .iter()
        .enumerate()
        .map(|(i, item)| event(user, item, pb::EventType::Click, t0() + i as i64))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("record events");
}

/// One model input's values for `item`, as explain reports them; empty without explain.
pub fn feature<'a>(item: &'a pb::RecommendedItem, name: &str) -> &'a [f64] {
    item.explanation
        .as_ref()
        .and_then(|e| e.features.iter().find(|f| f.feature == name))
        .map_or(&[][..], |f| &f.values[..])
}

/// A retrieval server on loopback over `full`'s items (those of `shard`, when given), taking
/// writes when given a write-ahead log. Exact scans whenever a filter is given, so sharded and
/// unsharded answers can be compared item for item.
pub async fn serve_retrieval(
    full: &Catalog,
    shard: Option<Shard>,
    wal: Option<&Path>,
) -> (SocketAddr, Stop) {
    let rows: Vec<u32> = (0..full.len() as u32)
        .filter(|&r| shard.is_none_or(|s| s.owns(full.item_id(r))))
        .collect();
    let catalog = full.select(&rows);
    let params = IndexParams {
        exact_scan_below: 1.1,
        shard,
        ..IndexParams::default()
    };
    let index = tokio::task::spawn_blocking(move || Index::build(Arc::new(catalog), params))
        .await
        .expect("build task")
        .expect("build");
    if let Some(wal) = wal {
        index.attach_wal(wal).expect("write-ahead log");
    }
    let ready = Ready::default();
    ready.set(Arc::new(index));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(RetrievalApi::new(ready).into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    (addr, Stop(stop, server))
}

/// Stops a server and waits until its connections are closed.
pub struct Stop(tokio::sync::oneshot::Sender<()>, JoinHandle<()>);

impl Stop {
    pub async fn now(self) {
        let _ = self.0.send(());
        let _ = self.1.await;
    }
}
