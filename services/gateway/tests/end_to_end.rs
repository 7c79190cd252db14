//! The recommender API end to end: real gateway, index, ONNX model, gRPC on loopback.

mod common;

use std::collections::HashSet;

use common::*;
use tandem_proto::v1 as pb;
use tonic::Code;

fn assert_well_formed(catalog: &tandem_catalog::Catalog, resp: &pb::RecommendResponse, k: usize) {
    assert_eq!(resp.items.len(), k, "k items");
    let ids: HashSet<&str> = resp.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids.len(), k, "distinct");
    assert!(
        resp.items.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted by descending score"
    );
    for it in &resp.items {
        let idx = catalog
            .idx_of(&it.item_id)
            .expect("item exists in the catalog");
        assert_eq!(it.category, catalog.category(idx));
    }
    assert!(!resp.request_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_returns_k_distinct_sorted_catalog_items() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;

    // No history, and no events anywhere yet: popular in-stock items.
    let cold = client
        .recommend(request("nobody", 10))
        .await
        .expect("cold")
        .into_inner();
    assert_well_formed(&catalog, &cold, 10);
    assert_eq!(cold.model_version, "trending");
    let top: Vec<&str> = catalog
        .by_popularity()
        .iter()
        .filter(|&&i| catalog.in_stock(i))
        .take(10)
        .map(|&i| catalog.item_id(i))
        .collect();
    let got: Vec<&str> = cold.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(got, top);

    // With history: ranked by the model.
    let items = items_in(&catalog, "toys", 3);
    let events = items
        .iter()
        .map(|i| event("warm", i, pb::EventType::View, t0()))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("events");
    let warm = client
        .recommend(request("warm", 25))
        .await
        .expect("warm")
        .into_inner();
    assert_well_formed(&catalog, &warm, 25);
    assert_eq!(warm.model_version, "ranker/1");
    assert!(!warm.degraded);
    let default_k = client
        .recommend(pb::RecommendRequest {
            user_id: "warm".into(),
            ..Default::default()
        })
        .await
        .expect("default k")
        .into_inner();
    assert_eq!(default_k.items.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_recommendations_to_their_category_and_purchases_disappear() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    let share = |resp: &pb::RecommendResponse, cat: &str| {
        resp.items.iter().filter(|i| i.category == cat).count() as f64 / resp.items.len() as f64
    };
    // Start from a user who likes toys, then switch them to books.
    let toys = items_in(&catalog, "toys", 6);
    let events = toys
        .iter()
        .enumerate()
        .map(|(n, i)| event("switcher", i, pb::EventType::Click, t0() + n as i64))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("toys");
    let before = client
        .recommend(request("switcher", 20))
        .await
        .expect("before")
        .into_inner();

    let books = items_in(&catalog, "books", 8);
    let later = t0() + 3_600_000;
    let events = books
        .iter()
        .enumerate()
        .map(|(n, i)| event("switcher", i, pb::EventType::AddToCart, later + n as i64))
        .collect();
    let accepted = client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("books")
        .into_inner();
    assert_eq!(accepted.accepted, 8);
    let after = client
        .recommend(request("switcher", 20))
        .await
        .expect("after")
        .into_inner();
    assert_ne!(
        before.items.iter().map(|i| &i.item_id).collect::<Vec<_>>(),
        after.items.iter().map(|i| &i.item_id).collect::<Vec<_>>(),
        "recommendations changed"
    );
    // The query follows the events: books gain places, the earlier toys lose them.
    assert!(
        share(&after, "books") >= share(&before, "books") + 0.15,
        "books share {} -> {}",
        share(&before, "books"),
        share(&after, "books")
    );
    assert!(
        share(&after, "toys") < share(&before, "toys"),
        "toys share {} -> {}",
        share(&before, "toys"),
        share(&after, "toys")
    );

    // Buy the top item: never recommended to this user again.
    let bought = after.items[0].item_id.clone();
    client
        .record_events(pb::RecordEventsRequest {
            events: vec![event(
                "switcher",
                &bought,
                pb::EventType::Purchase,
                later + 100,
            )],
        })
        .await
        .expect("purchase");
    for k in [10, 200] {
        let resp = client
            .recommend(request("switcher", k))
            .await
            .expect("after purchase")
            .into_inner();
        assert!(
            resp.items.iter().all(|i| i.item_id != bought),
            "purchased item returned at k={k}"
        );
    }
    let with_context = client
        .recommend(pb::RecommendRequest {
            context_item_ids: vec![bought.clone(), books[0].clone()],
            ..request("switcher", 50)
        })
        .await
        .expect("context")
        .into_inner();
    assert!(
        with_context
            .items
            .iter()
            .all(|i| i.item_id != bought && i.item_id != books[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_item_satisfies_the_filter() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    let events = items_in(&catalog, "music", 4)
        .iter()
        .map(|i| event("filtered", i, pb::EventType::Click, t0()))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("events");
    let excluded: Vec<String> = catalog.by_popularity()[..40]
        .iter()
        .map(|&i| catalog.item_id(i).to_owned())
        .collect();
    let filters = [
        pb::ItemFilter {
            categories: vec!["garden".into(), "music".into()],
            ..Default::default()
        },
        pb::ItemFilter {
            min_price: Some(20.0),
            max_price: Some(60.0),
            in_stock_only: Some(true),
            ..Default::default()
        },
        pb::ItemFilter {
            categories: vec!["pets".into()],
            max_price: Some(30.0),
            exclude_item_ids: excluded.clone(),
            ..Default::default()
        },
        pb::ItemFilter {
            exclude_item_ids: excluded.clone(),
            ..Default::default()
        },
    ];
    for user in ["filtered", "cold-user"] {
        for f in &filters {
            let resp = client
                .recommend(pb::RecommendRequest {
                    filter: Some(f.clone()),
                    ..request(user, 15)
                })
                .await
                .expect("recommend")
                .into_inner();
            assert!(!resp.items.is_empty(), "{user} {f:?}");
            for it in &resp.items {
                let idx = catalog.idx_of(&it.item_id).expect("known");
                assert!(
                    f.categories.is_empty() || f.categories.contains(&it.category),
                    "{user} {f:?} category {}",
                    it.category
                );
                let price = catalog.price(idx);
                assert!(
                    f.min_price.is_none_or(|lo| price >= lo),
                    "{user} {f:?} price {price}"
                );
                assert!(
                    f.max_price.is_none_or(|hi| price <= hi),
                    "{user} {f:?} price {price}"
                );
                assert!(
                    !f.in_stock_only.unwrap_or(true) || catalog.in_stock(idx),
                    "{user} {f:?} out of stock"
                );
                assert!(
                    !f.exclude_item_ids.contains(&it.item_id),
                    "{user} {f:?} excluded {}",
                    it.item_id
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_topology_returns_what_embedded_returns() {
    let catalog = catalog();
    let embedded = start(config(&[])).await;
    // The split gateway calls retrieval and ranking over gRPC: here the stage servers are the
    // embedded gateway's own RetrievalService and RankingService, so both see one index and model.
    let stages = embedded.addr.to_string();
    let split = start(config(&[
        &format!("--retrieval-addr={stages}"),
        &format!("--ranking-addr={stages}"),
    ]))
    .await;
    let events: Vec<pb::Event> = items_in(&catalog, "electronics", 3)
        .iter()
        .chain(&items_in(&catalog, "sports", 2))
        .enumerate()
        .map(|(n, i)| event("both", i, pb::EventType::Click, t0() + n as i64 * 60_000))
        .collect();
    let req = pb::RecommendRequest {
        filter: Some(pb::ItemFilter {
            in_stock_only: Some(true),
            ..Default::default()
        }),
        context_item_ids: items_in(&catalog, "sports", 3)[2..].to_vec(),
        explain: true,
        ..request("both", 30)
    };
    let mut answers = Vec::new();
    for gw in [&embedded, &split] {
        let mut client = recommender(gw.addr).await;
        client
            .record_events(pb::RecordEventsRequest {
                events: events.clone(),
            })
            .await
            .expect("events");
        answers.push(
            client
                .recommend(req.clone())
                .await
                .expect("recommend")
                .into_inner(),
        );
    }
    let (e, s) = (&answers[0], &answers[1]);
    assert!(!s.degraded, "{}", s.degraded_reason);
    assert_eq!(e.model_version, s.model_version);
    assert_eq!(
        e.items.iter().map(|i| &i.item_id).collect::<Vec<_>>(),
        s.items.iter().map(|i| &i.item_id).collect::<Vec<_>>()
    );
    for (a, b) in e.items.iter().zip(&s.items) {
        assert!(
            (a.score - b.score).abs() <= 1e-6
                && (a.retrieval_score - b.retrieval_score).abs() <= 1e-6
        );
        // Explain crosses the wire: the same model inputs, item by item.
        let (ea, eb) = (a.explanation.as_ref(), b.explanation.as_ref());
        let features = |x: Option<&pb::ItemExplanation>| x.map(|x| x.features.clone());
        assert!(features(ea).is_some_and(|f| !f.is_empty()));
        assert_eq!(features(ea), features(eb));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranking_down_degrades_to_retrieval_order() {
    let catalog = catalog();
    // Nothing listens on port 1.
    let gw = start(config(&[
        "--ranking-addr=127.0.0.1:1",
        "--stage-timeout-ms=500",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    let events = items_in(&catalog, "garden", 3)
        .iter()
        .map(|i| event("d", i, pb::EventType::Click, t0()))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("events");
    let resp = client
        .recommend(request("d", 10))
        .await
        .expect("degraded, not failed")
        .into_inner();
    assert!(resp.degraded);
    assert_eq!(resp.model_version, "retrieval");
    assert!(
        resp.degraded_reason.contains("ranking"),
        "{}",
        resp.degraded_reason
    );
    assert_eq!(resp.items.len(), 10);
    assert!(
        resp.items
            .windows(2)
            .all(|w| w[0].retrieval_score >= w[1].retrieval_score)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_the_server_keeps_serving() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    let expect_invalid = |r: Result<tonic::Response<pb::RecommendResponse>, tonic::Status>,
                          field: &str| {
        let status = r.expect_err("must be rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(field),
            "`{}` should name {field}",
            status.message()
        );
    };
    expect_invalid(client.recommend(request("", 10)).await, "user_id");
    expect_invalid(client.recommend(request("u", 0)).await, "k");
    expect_invalid(client.recommend(request("u", 1001)).await, "k");
    expect_invalid(
        client
            .recommend(pb::RecommendRequest {
                num_candidates: Some(5),
                ..request("u", 10)
            })
            .await,
        "num_candidates",
    );
    expect_invalid(
        client
            .recommend(pb::RecommendRequest {
                filter: Some(pb::ItemFilter {
                    categories: vec!["no-such-category".into()],
                    ..Default::default()
                }),
                ..request("u", 10)
            })
            .await,
        "filter.categories",
    );
    expect_invalid(
        client
            .recommend(pb::RecommendRequest {
                filter: Some(pb::ItemFilter {
                    min_price: Some(f32::NAN),
                    ..Default::default()
                }),
                ..request("u", 10)
            })
            .await,
        "filter.min_price",
    );

    let item = catalog.item_id(0).to_owned();
    for (ev, field) in [
        (
            event("", &item, pb::EventType::View, t0()),
            "events[1].user_id",
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
            event("u", &item, pb::EventType::View, -5),
            "events[1].timestamp_ms",
        ),
    ] {
        let ok = event("u", &item, pb::EventType::Purchase, t0());
        let status = client
            .record_events(pb::RecordEventsRequest {
                events: vec![ok, ev],
            })
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    // The rejected batches were rejected whole: the purchase in them did not count.
    let resp = client
        .recommend(request("u", 5))
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(
        resp.model_version, "trending",
        "no event of a rejected batch was applied"
    );

    let mut retrieval =
        pb::retrieval_service_client::RetrievalServiceClient::new(channel(gw.addr).await);
    let dim = catalog.dim();
    let mut nan = vec![0.1; dim];
    nan[1] = f32::NAN;
    for (vector, k) in [(nan, 10), (vec![0.1; dim + 1], 10), (vec![0.1; dim], 0)] {
        let status = retrieval
            .search(pb::SearchRequest {
                vector,
                k,
                ..Default::default()
            })
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("vector") || status.message().starts_with("k"),
            "{}",
            status.message()
        );
    }
    let ok = retrieval
        .search(pb::SearchRequest {
            vector: vec![0.1; dim],
            k: 7,
            ..Default::default()
        })
        .await
        .expect("valid search")
        .into_inner();
    assert_eq!(ok.candidates.len(), 7);
    assert!(ok.candidates.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(
        health(gw.addr, "tandem.v1.RecommenderService").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}
