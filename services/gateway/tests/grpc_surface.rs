//! What every tandem server exposes: Rank parity with Python, health and reflection.

mod common;

use common::*;
use tandem_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[derive(serde::Deserialize)]
struct Reference {
    model_version: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    user_id: String,
    query_vector: Vec<f32>,
    item_ids: Vec<String>,
    retrieval_scores: Vec<f32>,
    scores: Vec<f32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_rpc_scores_equal_python_onnxruntime() {
    let gw = start(config(&[])).await;
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(test_data().join("rank_reference.json"))
            .expect("reference written by the pipeline"),
    )
    .expect("json");
    let mut client = pb::ranking_service_client::RankingServiceClient::new(channel(gw.addr).await);
    for case in &reference.cases {
        let resp = client
            .rank(pb::RankRequest {
                user: Some(pb::UserContext {
                    user_id: case.user_id.clone(),
                    query_vector: case.query_vector.clone(),
                }),
                candidates: case
                    .item_ids
                    .iter()
                    .zip(&case.retrieval_scores)
                    .map(|(id, rs)| pb::RankCandidate {
                        item_id: id.clone(),
                        retrieval_score: *rs,
                    })
                    .collect(),
            })
            .await
            .expect("rank")
            .into_inner();
        assert_eq!(resp.model_version, reference.model_version);
        assert_eq!(
            resp.scores.len(),
            case.scores.len(),
            "one score per candidate"
        );
        for (i, (got, want)) in resp.scores.iter().zip(&case.scores).enumerate() {
            assert!(
                (got - want).abs() <= 1e-5,
                "{} row {i}: tandem {got} vs python {want}",
                case.user_id
            );
        }
    }
    let status = client
        .rank(pb::RankRequest {
            user: Some(pb::UserContext {
                user_id: "u".into(),
                query_vector: reference.cases[0].query_vector.clone(),
            }),
            candidates: vec![pb::RankCandidate {
                item_id: "no-such-item".into(),
                retrieval_score: 0.0,
            }],
        })
        .await
        .expect_err("unknown candidate");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().starts_with("candidates[0].item_id"),
        "{}",
        status.message()
    );
}

async fn listed_services(addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_exactly_the_served_services() {
    let embedded = start(config(&[])).await;
    let mut names = listed_services(embedded.addr).await;
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "tandem.v1.RankingService",
            "tandem.v1.RecommenderService",
            "tandem.v1.RetrievalService",
        ]
    );
    let stages = embedded.addr.to_string();
    let split = start(config(&[
        &format!("--retrieval-addr={stages}"),
        &format!("--ranking-addr={stages}"),
    ]))
    .await;
    let names = listed_services(split.addr).await;
    assert!(
        names.iter().any(|n| n == "tandem.v1.RecommenderService"),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "tandem.v1.RetrievalService" || n == "tandem.v1.RankingService"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_not_serving_when_the_model_cannot_load() {
    // A bundle whose spec names an input the model lacks: loading must fail, never serve.
    let src = test_data().join("models/ranker/1");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("model.onnx"), dir.path().join("model.onnx")).expect("copy");
    let spec = std::fs::read_to_string(src.join("feature_spec.json")).expect("spec");
    std::fs::write(
        dir.path().join("feature_spec.json"),
        spec.replace("\"name\": \"features\"", "\"name\": \"dense\""),
    )
    .expect("write");
    let config = config(&[&format!("--model-dir={}", dir.path().display())]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tandem_gateway::start(config, async {
        let _ = stopped.await;
    })
    .await
    .expect("listening");
    let err = gateway
        .loaded
        .await
        .expect("task")
        .expect_err("model must be refused");
    assert!(err.to_string().contains("`dense`"), "{err}");
    assert_eq!(health(gateway.addr, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(gateway.addr, "tandem.v1.RecommenderService").await,
        ServingStatus::NotServing
    );
    let status = recommender(gateway.addr)
        .await
        .recommend(request("u", 5))
        .await
        .expect_err("not ready");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    drop(stop);
}
