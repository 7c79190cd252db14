//! Upserts and deletes reach recommendations at once, in ranked answers and in trending and
//! popular backfill alike, though the gateway's catalog file is unchanged: sent to the embedded
//! gateway, or to the retrieval shards of a split one.

mod common;

use common::*;
use tandem_catalog::{Catalog, shard_of};
use tandem_proto::v1 as pb;
use tandem_retrieval::Shard;

fn ids(resp: &pb::RecommendResponse) -> Vec<&str> {
    resp.items.iter().map(|i| i.item_id.as_str()).collect()
}

/// A catalog item as an upsert states it, unchanged.
fn catalog_item(catalog: &Catalog, id: &str) -> pb::Item {
    let idx = catalog.idx_of(id).expect("catalog item");
    pb::Item {
        item_id: id.to_owned(),
        embedding: catalog.embedding(idx).to_vec(),
        category: catalog.category(idx).to_owned(),
        price: catalog.price(idx),
        in_stock: catalog.in_stock(idx),
        popularity: catalog.popularity(idx),
    }
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
                    ..catalog_item(&catalog, &sold_out)
                },
                pb::Item {
                    price: new_price,
                    ..catalog_item(&catalog, &repriced)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_gateway_serves_items_as_the_shards_hold_them_now() {
    let full = catalog();
    let logs = state_dir();
    let (s0, _s0) = serve_retrieval(
        &full,
        Some(Shard { index: 0, count: 2 }),
        Some(&logs.path().join("s0.wal")),
    )
    .await;
    let (s1, stop_s1) = serve_retrieval(
        &full,
        Some(Shard { index: 1, count: 2 }),
        Some(&logs.path().join("s1.wal")),
    )
    .await;
    let gw = start(config(&[&format!("--retrieval-addr={s0},{s1}")])).await;
    let mut client = recommender(gw.addr).await;
    let mut shards = Vec::new();
    for addr in [s0, s1] {
        shards.push(pb::retrieval_service_client::RetrievalServiceClient::new(
            channel(addr).await,
        ));
    }

    // Cold answers are trending and popular items: none of them came through a search.
    let cold = client
        .recommend(request("cold", 10))
        .await
        .expect("cold")
        .into_inner();
    let on = |shard: u32| {
        cold.items
            .iter()
            .map(|i| i.item_id.clone())
            .filter(move |id| shard_of(id, 2) == shard)
    };
    let deleted = on(0).next().expect("an item of shard 0");
    let sold_out = on(1).next().expect("an item of shard 1");
    let idx = full.idx_of(&sold_out).expect("catalog item");
    shards[0]
        .delete_items(pb::DeleteItemsRequest {
            item_ids: vec![deleted.clone()],
        })
        .await
        .expect("delete");
    shards[1]
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![pb::Item {
                in_stock: false,
                ..catalog_item(&full, &sold_out)
            }],
        })
        .await
        .expect("upsert");

    let after = client
        .recommend(request("cold", 10))
        .await
        .expect("cold")
        .into_inner();
    assert_eq!(after.items.len(), 10, "backfilled to k");
    assert!(
        !ids(&after).contains(&deleted.as_str()),
        "deleted item served"
    );
    assert!(
        !ids(&after).contains(&sold_out.as_str()),
        "sold-out item served"
    );

    // Searched items are kept and shown on what retrieval holds now, not on the gateway's
    // catalog file: an item back in stock is recommended, a re-priced one shows its price.
    let restocked = full
        .by_popularity()
        .iter()
        .map(|&i| full.item_id(i).to_owned())
        .find(|id| !full.in_stock(full.idx_of(id).expect("catalog item")))
        .expect("an out-of-stock item");
    let repriced = on(0).nth(1).expect("a second item of shard 0");
    let new_price = catalog_item(&full, &repriced).price + 10_000.0;
    for item in [
        pb::Item {
            in_stock: true,
            ..catalog_item(&full, &restocked)
        },
        pb::Item {
            price: new_price,
            ..catalog_item(&full, &repriced)
        },
    ] {
        shards[shard_of(&item.item_id, 2) as usize]
            .upsert_items(pb::UpsertItemsRequest { items: vec![item] })
            .await
            .expect("upsert");
    }
    let clicks: Vec<pb::Event> = [&restocked, &repriced]
        .iter()
        .enumerate()
        .map(|(n, id)| event("warm", id, pb::EventType::Click, t0() + n as i64))
        .collect();
    client
        .record_events(pb::RecordEventsRequest { events: clicks })
        .await
        .expect("events");
    let warm = client
        .recommend(pb::RecommendRequest {
            num_candidates: Some(200),
            ..request("warm", 200)
        })
        .await
        .expect("warm")
        .into_inner();
    assert_eq!(warm.model_version, "ranker/1");
    assert!(
        ids(&warm).contains(&restocked.as_str()),
        "restocked item left out"
    );
    let shown = warm
        .items
        .iter()
        .find(|i| i.item_id == repriced)
        .expect("repriced item among the candidates");
    assert_eq!(shown.price, new_price);

    // What the gateway asked: each shard answers for its own items only.
    let ask = |ids: &[&String]| pb::GetItemsRequest {
        item_ids: ids.iter().map(|s| (*s).clone()).collect(),
    };
    let at_0 = shards[0]
        .get_items(ask(&[&deleted, &sold_out]))
        .await
        .expect("get items")
        .into_inner()
        .items;
    assert_eq!(
        at_0.iter()
            .map(|i| (i.item_id.as_str(), i.found, i.owned))
            .collect::<Vec<_>>(),
        [
            (deleted.as_str(), false, true),
            (sold_out.as_str(), false, false)
        ]
    );
    let at_1 = shards[1]
        .get_items(ask(&[&sold_out]))
        .await
        .expect("get items")
        .into_inner()
        .items;
    assert!(at_1[0].found && at_1[0].owned && !at_1[0].in_stock);
    assert_eq!(at_1[0].category, full.category(idx));
    let too_many = shards[1]
        .get_items(pb::GetItemsRequest {
            item_ids: vec![sold_out.clone(); 10_001],
        })
        .await
        .expect_err("over the limit");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(too_many.message().starts_with("item_ids:"));

    // With a shard down its items cannot be checked and are served as they are; the other
    // shard's answers still hold.
    stop_s1.now().await;
    let partial = client
        .recommend(request("cold", 10))
        .await
        .expect("cold with a shard down")
        .into_inner();
    assert_eq!(partial.items.len(), 10);
    assert!(
        !ids(&partial).contains(&deleted.as_str()),
        "deleted item served"
    );
}
