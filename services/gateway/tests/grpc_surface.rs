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
                    ..Default::default()
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
                ..Default::default()
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
                ..Default::default()
            }),
            candidates: vec![pb::RankCandidate {
                item_id: "no-such-item".into(),
                retrieval_score: 0.0,
            }],
            ..Default::default()
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
            "tandem.v1.RankingAdminService",
            "tandem.v1.RankingService",
            "tandem.v1.RecommenderAdminService",
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
        !names.iter().any(|n| n.starts_with("tandem.v1.R")
            && n != "tandem.v1.RecommenderService"
            && n != "tandem.v1.RecommenderAdminService"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranking_admin_reports_loads_and_splits_versions() {
    // A model directory of our own, so versions can be added while serving.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ranker");
    std::fs::create_dir_all(&root).expect("mkdir");
    let copy = |from: &std::path::Path, version: &str| {
        let to = root.join(version);
        std::fs::create_dir_all(&to).expect("mkdir");
        for file in ["model.onnx", "feature_spec.json"] {
            std::fs::copy(from.join(file), to.join(file)).expect("copy");
        }
    };
    copy(&test_data().join("models/ranker/1"), "1");
    let model_dir = format!("--model-dir={}", root.display());
    let gw = start(config(&[&model_dir, "--model-poll-interval-s=0"])).await;
    let mut admin =
        pb::ranking_admin_service_client::RankingAdminServiceClient::new(channel(gw.addr).await);
    let info = admin
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.versions.len(), 1);
    let v1 = &info.versions[0];
    assert_eq!((v1.version.as_str(), v1.label.as_str()), ("1", "ranker/1"));
    assert_eq!(v1.execution_provider, "cpu");
    assert_eq!(v1.sessions, 2);
    // skl2onnx's label branch (ArgMax, ArrayFeatureExtractor, Reshape, Cast) feeds only
    // `label`, which the spec does not read.
    assert_eq!(v1.pruned_nodes, 4);
    assert_eq!(v1.inputs[0].name, "features");
    assert_eq!(info.split.len(), 1);
    assert!(info.follows_latest);
    assert_eq!(info.batching.expect("batching").max_rows, 1024);

    // Scoring counts show up in the stats.
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(test_data().join("rank_reference.json")).expect("reference"),
    )
    .expect("json");
    let case = &reference.cases[0];
    let request = |version: &str| pb::RankRequest {
        user: Some(pb::UserContext {
            user_id: case.user_id.clone(),
            query_vector: case.query_vector.clone(),
            ..Default::default()
        }),
        candidates: case
            .item_ids
            .iter()
            .map(|id| pb::RankCandidate {
                item_id: id.clone(),
                retrieval_score: 0.5,
            })
            .collect(),
        model_version: version.to_owned(),
        explain: false,
    };
    let mut ranking = pb::ranking_service_client::RankingServiceClient::new(channel(gw.addr).await);
    ranking.rank(request("")).await.expect("rank");
    let stats = admin
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .versions[0]
        .stats
        .expect("stats");
    assert_eq!(
        (stats.requests, stats.rows),
        (1, case.item_ids.len() as u64)
    );

    // A broken version is refused; the serving one keeps serving.
    copy(&test_data().join("fixtures/nan_model"), "2");
    let status = admin
        .load_model(pb::LoadModelRequest {
            version: "2".into(),
            serve: true,
        })
        .await
        .expect_err("NaN model");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("non-finite"),
        "{}",
        status.message()
    );
    let resp = ranking
        .rank(request(""))
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(resp.model_version, "ranker/1");

    // A good version loads, then a split routes users between the two.
    copy(&test_data().join("models/seqranker/1"), "3");
    let loaded = admin
        .load_model(pb::LoadModelRequest {
            version: "3".into(),
            serve: false,
        })
        .await
        .expect("load v3")
        .into_inner();
    assert_eq!(loaded.version.expect("info").label, "seqranker/1");
    let pinned = ranking
        .rank(request("3"))
        .await
        .expect("pinned")
        .into_inner();
    assert_eq!(pinned.model_version, "seqranker/1");
    let status = ranking.rank(request("8")).await.expect_err("unknown pin");
    assert_eq!(status.code(), tonic::Code::NotFound);
    admin
        .set_traffic_split(pb::SetTrafficSplitRequest {
            split: vec![
                pb::TrafficShare {
                    version: "1".into(),
                    weight: 50,
                },
                pb::TrafficShare {
                    version: "3".into(),
                    weight: 50,
                },
            ],
        })
        .await
        .expect("split");
    let status = admin
        .set_traffic_split(pb::SetTrafficSplitRequest {
            split: vec![pb::TrafficShare {
                version: "2".into(),
                weight: 1,
            }],
        })
        .await
        .expect_err("rejected version");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Recommend names the version; a pinned Recommend uses it, an unknown pin is NOT_FOUND.
    let mut rec =
        pb::recommender_service_client::RecommenderServiceClient::new(channel(gw.addr).await);
    let mut versions = std::collections::BTreeSet::new();
    for u in 0..40 {
        let user_id = format!("user-{u}");
        rec.record_events(pb::RecordEventsRequest {
            events: vec![pb::Event {
                user_id: user_id.clone(),
                item_id: case.item_ids[u % 10].clone(),
                r#type: pb::EventType::Click as i32,
                timestamp_ms: 1_790_000_000_000,
                event_id: String::new(),
            }],
        })
        .await
        .expect("events");
        let resp = rec
            .recommend(pb::RecommendRequest {
                user_id,
                ..Default::default()
            })
            .await
            .expect("recommend")
            .into_inner();
        versions.insert(resp.model_version);
    }
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["ranker/1", "seqranker/1"],
        "a 50/50 split serves both versions"
    );
    let status = rec
        .recommend(pb::RecommendRequest {
            user_id: "user-1".into(),
            model_version: "8".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown pin");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // Oversized requests are refused before they reach ONNX Runtime.
    let mut big = request("");
    let first = big.candidates[0].clone();
    big.candidates = vec![first; 5001];
    let status = ranking.rank(big).await.expect_err("oversized");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// `value` as the `authorization` metadata of a request.
fn with_auth<T>(message: T, value: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = value {
        request.metadata_mut().insert(
            tandem_server::ADMIN_AUTH_HEADER,
            value.parse().expect("ascii"),
        );
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_require_the_admin_token_when_one_is_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ranker");
    for (version, from) in [("1", "models/ranker/1"), ("2", "models/seqranker/1")] {
        let to = root.join(version);
        std::fs::create_dir_all(&to).expect("mkdir");
        for file in ["model.onnx", "feature_spec.json"] {
            std::fs::copy(test_data().join(from).join(file), to.join(file)).expect("copy");
        }
    }
    let state = state_dir();
    let gw = start(config(&[
        &format!("--model-dir={}", root.display()),
        "--model-poll-interval-s=0",
        "--traffic-split=1=100",
        &format!("--state-dir={}", state.path().display()),
        "--admin-token=s3cret",
    ]))
    .await;
    let mut admin =
        pb::ranking_admin_service_client::RankingAdminServiceClient::new(channel(gw.addr).await);
    let mut retrieval =
        pb::retrieval_service_client::RetrievalServiceClient::new(channel(gw.addr).await);
    let load = || pb::LoadModelRequest {
        version: "2".into(),
        serve: false,
    };
    let split = || pb::SetTrafficSplitRequest {
        split: vec![pb::TrafficShare {
            version: "1".into(),
            weight: 1,
        }],
    };
    let dim = catalog().dim();
    let upsert = || pb::UpsertItemsRequest {
        items: vec![pb::Item {
            item_id: "admin-test-item".into(),
            embedding: vec![0.1; dim],
            category: "cat-00".into(),
            price: 10.0,
            in_stock: true,
            popularity: 1.0,
        }],
    };
    let delete = || pb::DeleteItemsRequest {
        item_ids: vec!["admin-test-item".into()],
    };

    // Without the token, or with another one, nothing changes.
    for (auth, code) in [
        (None, tonic::Code::Unauthenticated),
        (Some("s3cret"), tonic::Code::Unauthenticated),
        (Some("Bearer guess"), tonic::Code::PermissionDenied),
    ] {
        let got = [
            admin.load_model(with_auth(load(), auth)).await.map(|_| ()),
            admin
                .set_traffic_split(with_auth(split(), auth))
                .await
                .map(|_| ()),
            retrieval
                .upsert_items(with_auth(upsert(), auth))
                .await
                .map(|_| ()),
            retrieval
                .delete_items(with_auth(delete(), auth))
                .await
                .map(|_| ()),
        ];
        for result in got {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), code, "{auth:?}: {status:?}");
        }
    }
    let info = admin
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .expect("reads need no token")
        .into_inner();
    assert_eq!(info.versions.len(), 1, "no version was loaded");

    // With it, the same calls go through.
    let token = Some("Bearer s3cret");
    let loaded = admin
        .load_model(with_auth(load(), token))
        .await
        .expect("load")
        .into_inner();
    assert_eq!(loaded.version.expect("info").label, "seqranker/1");
    admin
        .set_traffic_split(with_auth(split(), token))
        .await
        .expect("split");
    let upserted = retrieval
        .upsert_items(with_auth(upsert(), token))
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(upserted.upserted, 1);
    let deleted = retrieval
        .delete_items(with_auth(delete(), token))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);

    // Public RPCs stay open.
    let mut rec = recommender(gw.addr).await;
    let resp = rec
        .recommend(request("admin-test-user", 5))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(resp.items.len(), 5);
}
