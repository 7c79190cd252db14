//! What gRPC adds to a search: the same query in-process and through `Search` over loopback
//! (tonic client and server in this process, real HTTP/2 over TCP).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_catalog::Catalog;
use tandem_catalog::testing::{SplitMix, synthetic_batch, write_parquet};
use tandem_proto::v1 as pb;
use tandem_retrieval::{Index, IndexParams, ItemFilter, SearchParams};
use tandem_retrieval_api::RetrievalApi;
use tandem_server::Ready;

const ITEMS: usize = 20_000;
const DIM: usize = 32;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(ITEMS, DIM, 20, 5), &path).expect("fixture");
    let catalog = Arc::new(Catalog::open(&path).expect("catalog"));
    let index = Arc::new(Index::build(catalog, IndexParams::default()).expect("build"));
    let mut rng = SplitMix::new(3);
    let queries: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..DIM).map(|_| rng.normal()).collect())
        .collect();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ready = Ready::default();
    ready.set(index.clone());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(RetrievalApi::new(ready).into_service())
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    let mut client = runtime
        .block_on(
            pb::retrieval_service_client::RetrievalServiceClient::connect(format!("http://{addr}")),
        )
        .expect("connect");

    for k in [10usize, 200] {
        let mut i = 0;
        c.bench_function(&format!("search/in-process/k{k}"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                index
                    .search(
                        &queries[i],
                        &ItemFilter::default(),
                        SearchParams { k, ef_search: None },
                    )
                    .expect("search")
            })
        });
        let mut i = 0;
        c.bench_function(&format!("search/grpc-loopback/k{k}"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                runtime
                    .block_on(client.search(pb::SearchRequest {
                        vector: queries[i].clone(),
                        k: k as u32,
                        filter: None,
                        ef_search: None,
                    }))
                    .expect("rpc")
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
