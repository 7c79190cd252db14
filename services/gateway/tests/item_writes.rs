//! Upserts and deletes sent to the embedded gateway reach its recommendations at once, in
//! ranked answers and in trending/popular backfill alike, though its catalog file is unchanged.

mod common;

use common::*;
use tandem_proto::v1 as pb;

fn ids(resp: &pb::RecommendResponse) -> Vec<&str> {
    resp.items.iter().map(|i| i.item_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_changed_items_leave_recommendations_at_once() {
    let catalog = catalog();
    let state = state_dir();
    let gw = start(config(&[&format!(
        "--state-dir={}",
        state.path().display()
    )]))
    .await;
    let mut client = recommender(gw.addr).await;
    let mut retrieval =
        pb::retrieval_service_client::RetrievalServiceClient::new(channel(gw.addr).await);

    // A cold user gets the most popular in-stock items.
    let cold = client
        .recommend(request("cold", 10))
        .await
        .expect("cold")
        .into_inner();
    let [deleted, sold_out, repriced] = [0, 1, 2].map(|n| cold.items[n].item_id.clone());

    // A user who clicked the first two: ranked over all 200 candidates, which hold both.
    let warm = |user: &str| pb::RecommendRequest {
        num_candidates: Some(200),
        ..request(user, 200)
    };
    let clicks: Vec<pb::Event> = [&deleted, &sold_out]
        .iter()
        .enumerate()
        .map(|(n, id)| event("warm", id, pb::EventType::Click, t0() + n as i64))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events: clicks })
        .await
        .expect("events");
    let before = client
        .recommend(warm("warm"))
        .await
        .expect("warm")
        .into_inner();
    assert_eq!(before.model_version, "ranker/1");
    for id in [&deleted, &sold_out] {
        assert!(ids(&before).contains(&id.as_str()), "{id} among candidates");
    }

    let as_is = |id: &str| {
        let idx = catalog.idx_of(id).expect("catalog item");
        pb::Item {
            item_id: id.to_owned(),
            embedding: catalog.embedding(idx).to_vec(),
            category: catalog.category(idx).to_owned(),
            price: catalog.price(idx),
            in_stock: catalog.in_stock(idx),
            popularity: catalog.popularity(idx),
        }
    };
    let old_price = catalog.price(catalog.idx_of(&repriced).expect("catalog item"));
    let new_price = old_price + 10_000.0;
    retrieval
        .delete_items(pb::DeleteItemsRequest {
            item_ids: vec![deleted.clone()],
        })
        .await
        .expect("delete");
    retrieval
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![
                pb::Item {
                    in_stock: false,
                    ..as_is(&sold_out)
                },
                pb::Item {
                    price: new_price,
                    ..as_is(&repriced)
                },
            ],
        })
        .await
        .expect("upsert");

    // Backfill (cold start) and ranked answers alike.
    let cold = client
        .recommend(request("cold", 10))
        .await
        .expect("cold")
        .into_inner();
    let after = client
        .recommend(warm("warm"))
        .await
        .expect("warm")
        .into_inner();
    for resp in [&cold, &after] {
        assert!(
            !ids(resp).contains(&deleted.as_str()),
            "deleted item served"
        );
        assert!(
            !ids(resp).contains(&sold_out.as_str()),
            "sold-out item served"
        );
    }
    assert_eq!(cold.items.len(), 10, "backfilled to k");
    let shown = cold
        .items
        .iter()
        .find(|i| i.item_id == repriced)
        .expect("repriced item still popular");
    assert_eq!(shown.price, new_price, "the answer states the new price");

    // Filters apply to the new attributes: the old price passes, the new one does not.
    let cheap = client
        .recommend(pb::RecommendRequest {
            filter: Some(pb::ItemFilter {
                max_price: Some(old_price + 1.0),
                ..Default::default()
            }),
            ..request("cold", 10)
        })
        .await
        .expect("filtered")
        .into_inner();
    assert!(!ids(&cheap).contains(&repriced.as_str()));
    assert!(cheap.items.iter().all(|i| i.price <= old_price + 1.0));

    // Out of stock is still recommendable when the request asks for it; deleted never is.
    let any_stock = client
        .recommend(pb::RecommendRequest {
            filter: Some(pb::ItemFilter {
                in_stock_only: Some(false),
                ..Default::default()
            }),
            ..warm("warm")
        })
        .await
        .expect("any stock")
        .into_inner();
    assert!(ids(&any_stock).contains(&sold_out.as_str()));
    assert!(!ids(&any_stock).contains(&deleted.as_str()));
}
