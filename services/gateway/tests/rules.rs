//! Cold start and business rules end to end: trending that follows the events, the context's
//! categories, in-stock by default, the diversity cap with backfill, demotion of ignored items.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use tandem_proto::v1 as pb;

fn ids(resp: &pb::RecommendResponse) -> Vec<String> {
    resp.items.iter().map(|i| i.item_id.clone()).collect()
}

async fn record(
    client: &mut pb::recommender_service_client::RecommenderServiceClient<
        tonic::transport::Channel,
    >,
    events: Vec<pb::Event>,
) {
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("record events");
}

#[tokio::test]
async fn cold_users_get_trending_items_and_trending_follows_new_events() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    // An in-stock item far down the popularity list.
    let quiet = catalog
        .by_popularity()
        .iter()
        .rev()
        .find(|&&i| catalog.in_stock(i))
        .map(|&i| catalog.item_id(i).to_owned())
        .expect("an in-stock item");
    let before = client
        .recommend(request("newcomer", 10))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(before.model_version, "trending");
    assert!(!ids(&before).contains(&quiet));

    // Other users start buying it.
    for u in 0..3 {
        record(
            &mut client,
            vec![event(
                &format!("buyer-{u}"),
                &quiet,
                pb::EventType::Purchase,
                0,
            )],
        )
        .await;
    }
    let after = client
        .recommend(request("newcomer", 10))
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(after.model_version, "trending");
    assert_eq!(after.items[0].item_id, quiet, "now the top trending item");
    assert!(
        (after.items[0].score - 24.0).abs() < 0.01,
        "3 purchases × 8"
    );
    assert!(after.items.windows(2).all(|w| w[0].score >= w[1].score));
}

#[tokio::test]
async fn cold_users_with_context_get_items_of_the_context_categories() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    let page = items_in(&catalog, "garden", 2);
    let resp = client
        .recommend(pb::RecommendRequest {
            context_item_ids: page.clone(),
            ..request("page-visitor", 20)
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(resp.model_version, "trending");
    assert_eq!(resp.items.len(), 20);
    assert!(
        resp.items.iter().all(|i| i.category == "garden"),
        "{resp:?}"
    );
    assert!(
        ids(&resp).iter().all(|i| !page.contains(i)),
        "context items are not returned"
    );
}

#[tokio::test]
async fn the_category_cap_and_in_stock_hold_and_backfill_keeps_k() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "toy-fan", "toys", 8).await;

    // Uncapped, categories repeat.
    let plain = client
        .recommend(pb::RecommendRequest {
            max_per_category: Some(0),
            ..request("toy-fan", 12)
        })
        .await
        .expect("recommend")
        .into_inner();
    let per_category = |r: &pb::RecommendResponse| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for i in &r.items {
            *n.entry(i.category.clone()).or_default() += 1;
        }
        n
    };
    let most = per_category(&plain).values().copied().max().unwrap_or(0);
    assert!(most >= 2, "{:?}", per_category(&plain));

    let capped = client
        .recommend(pb::RecommendRequest {
            max_per_category: Some(1),
            ..request("toy-fan", 12)
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(capped.items.len(), 12, "k items, backfilled");
    assert!(
        per_category(&capped).values().all(|&n| n <= 1),
        "{:?}",
        per_category(&capped)
    );
    for item in &capped.items {
        let idx = catalog.idx_of(&item.item_id).expect("known");
        assert!(
            catalog.in_stock(idx),
            "in stock by default: {}",
            item.item_id
        );
    }

    // A filter leaves only toys: the cap yields rather than return fewer than k.
    let only_toys = client
        .recommend(pb::RecommendRequest {
            max_per_category: Some(2),
            filter: Some(pb::ItemFilter {
                categories: vec!["toys".into()],
                ..Default::default()
            }),
            ..request("toy-fan", 10)
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(only_toys.items.len(), 10);
    assert!(only_toys.items.iter().all(|i| i.category == "toys"));

    // Out-of-stock items are allowed when the request says so.
    let any_stock = client
        .recommend(pb::RecommendRequest {
            filter: Some(pb::ItemFilter {
                in_stock_only: Some(false),
                ..Default::default()
            }),
            num_candidates: Some(1000),
            ..request("toy-fan", 300)
        })
        .await
        .expect("recommend")
        .into_inner();
    assert!(
        any_stock
            .items
            .iter()
            .any(|i| { !catalog.in_stock(catalog.idx_of(&i.item_id).expect("known")) }),
        "300 items with out-of-stock allowed include some"
    );
}

#[tokio::test]
async fn items_shown_and_ignored_move_down() {
    let gw = start(config(&["--demote-after-shown=2"])).await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "reader", "books", 5).await;
    let first = ids(&client
        .recommend(request("reader", 5))
        .await
        .expect("1")
        .into_inner());
    let second = ids(&client
        .recommend(request("reader", 5))
        .await
        .expect("2")
        .into_inner());
    assert_eq!(first, second, "shown once: not yet demoted");
    let third = ids(&client
        .recommend(request("reader", 5))
        .await
        .expect("3")
        .into_inner());
    let shown: HashSet<&String> = first.iter().collect();
    assert!(
        third.iter().all(|i| !shown.contains(i)),
        "shown twice and ignored: moved below fresh items ({first:?} then {third:?})"
    );
    // Acting on one of them lifts its demotion.
    record(
        &mut client,
        vec![event("reader", &first[0], pb::EventType::View, 0)],
    )
    .await;
    let after_view = client
        .recommend(pb::RecommendRequest {
            num_candidates: Some(400),
            ..request("reader", 400)
        })
        .await
        .expect("4")
        .into_inner();
    let pos = |id: &String| ids(&after_view).iter().position(|x| x == id);
    let viewed = pos(&first[0]).expect("still eligible");
    let ignored = pos(&first[1]).expect("still eligible");
    assert!(viewed < ignored, "the viewed item is no longer demoted");
}
