//! The real `tandem-retrieval` binary on loopback: writes acknowledged before a SIGKILL are
//! there after a restart, and bad writes get INVALID_ARGUMENT naming the field.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_proto::v1 as pb;
use tandem_proto::v1::retrieval_service_client::RetrievalServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DIM: usize = 8;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start(items: &Path, state: &Path) -> Server {
    start_logging(items, state, Stdio::null()).await
}

async fn start_logging(items: &Path, state: &Path, log: impl Into<Stdio>) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_tandem-retrieval"))
        .args([
            "--listen",
            &addr,
            "--hnsw-m",
            "8",
            "--ef-construction",
            "64",
        ])
        .arg("--items")
        .arg(items)
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tandem-retrieval");
    let server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "server never became SERVING");
        if let Ok(channel) = Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await
        {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(server: &Server) -> RetrievalServiceClient<Channel> {
    RetrievalServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect")
}

async fn search(c: &mut RetrievalServiceClient<Channel>, vector: Vec<f32>, k: u32) -> Vec<String> {
    c.search(pb::SearchRequest {
        vector,
        k,
        filter: None,
        ef_search: None,
    })
    .await
    .expect("search")
    .into_inner()
    .candidates
    .into_iter()
    .map(|c| c.item_id)
    .collect()
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let items = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(1500, DIM, 6, 4), &items).expect("fixture");
    let state = dir.path().join("state");
    let query: Vec<f32> = (0..DIM).map(|i| if i == 2 { 1.0 } else { 0.0 }).collect();
    let gone = "item-000042".to_owned();

    let mut server = start(&items, &state).await;
    let mut c = client(&server).await;
    let upserted = c
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![pb::Item {
                item_id: "brand-new".into(),
                embedding: query.iter().map(|v| v * 100.0).collect(),
                category: "new-category".into(),
                price: 3.0,
                in_stock: true,
                popularity: 0.5,
            }],
        })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(upserted.upserted, 1);
    let deleted = c
        .delete_items(pb::DeleteItemsRequest {
            item_ids: vec![gone.clone(), "no-such-item".into()],
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!((deleted.deleted, deleted.not_found), (1, 1));
    assert!(deleted.sequence > upserted.sequence);
    assert_eq!(search(&mut c, query.clone(), 1).await, vec!["brand-new"]);
    // The first start snapshots the freshly built index in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(state.join("snapshots"))
        .map(|d| {
            !d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".tsnap"))
        })
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGKILL right after the acknowledgements: no shutdown path runs.
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");

    let log_path = dir.path().join("restart.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = start_logging(&items, &state, log).await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("loaded index snapshot") && !log.contains("built HNSW index"),
        "restart should load the snapshot, not rebuild:\n{log}"
    );
    let mut c = client(&server).await;
    assert_eq!(search(&mut c, query.clone(), 1).await, vec!["brand-new"]);
    let everything = search(&mut c, query.clone(), 1500).await;
    assert_eq!(everything.len(), 1500, "1500 items - 1 deleted + 1 new");
    assert!(!everything.contains(&gone));
    let filtered = c
        .search(pb::SearchRequest {
            vector: query.clone(),
            k: 10,
            filter: Some(pb::ItemFilter {
                categories: vec!["new-category".into()],
                ..Default::default()
            }),
            ef_search: None,
        })
        .await
        .expect("filtered search")
        .into_inner();
    assert_eq!(filtered.candidates.len(), 1);
}

#[tokio::test]
async fn bad_writes_and_queries_are_invalid_argument_and_apply_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let items = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(500, DIM, 4, 5), &items).expect("fixture");
    let server = start(&items, &dir.path().join("state")).await;
    let mut c = client(&server).await;
    let good = pb::Item {
        item_id: "ok".into(),
        embedding: vec![1.0; DIM],
        category: "c".into(),
        price: 1.0,
        in_stock: true,
        popularity: 1.0,
    };
    let short = pb::Item {
        item_id: "short".into(),
        embedding: vec![1.0; DIM - 3],
        ..good.clone()
    };
    let err = c
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![good.clone(), short],
        })
        .await
        .expect_err("dimension mismatch");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("items.embedding"),
        "{}",
        err.message()
    );
    let err = c
        .search(pb::SearchRequest {
            vector: vec![1.0; DIM + 1],
            k: 5,
            filter: None,
            ef_search: None,
        })
        .await
        .expect_err("wrong-length query");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("vector"), "{}", err.message());
    let err = c
        .delete_items(pb::DeleteItemsRequest { item_ids: vec![] })
        .await
        .expect_err("empty delete");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The valid item of the rejected batch was not applied; the server still serves.
    let all = search(&mut c, vec![1.0; DIM], 600).await;
    assert_eq!(all.len(), 500);
    assert!(!all.contains(&"ok".to_owned()));
}
