//! Retrieval sharded over two servers: the gateway fans out, merges the shards' top-k into what
//! one server holding every item returns, and degrades when a shard is down.

mod common;

use common::*;
use tandem_catalog::shard_of;
use tandem_proto::v1 as pb;
use tandem_retrieval::Shard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_merge_into_the_unsharded_answer_and_degrade_when_one_is_down() {
    let full = catalog();
    let (whole_addr, _whole) = serve_retrieval(&full, None, None).await;
    let (s0_addr, _s0) = serve_retrieval(&full, Some(Shard { index: 0, count: 2 }), None).await;
    let (s1_addr, s1) = serve_retrieval(&full, Some(Shard { index: 1, count: 2 }), None).await;

    let unsharded = start(config(&[&format!("--retrieval-addr={whole_addr}")])).await;
    let sharded = start(config(&[&format!("--retrieval-addr={s0_addr},{s1_addr}")])).await;

    let events: Vec<pb::Event> = items_in(&full, "electronics", 3)
        .iter()
        .enumerate()
        .map(|(n, i)| event("u", i, pb::EventType::Click, t0() + n as i64 * 60_000))
        .collect();
    let req = pb::RecommendRequest {
        filter: Some(pb::ItemFilter {
            in_stock_only: Some(true),
            ..Default::default()
        }),
        ..request("u", 40)
    };
    let mut answers = Vec::new();
    for gw in [&unsharded, &sharded] {
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
    let ids = |r: &pb::RecommendResponse| -> Vec<String> {
        r.items.iter().map(|i| i.item_id.clone()).collect()
    };
    assert!(!answers[1].degraded, "{}", answers[1].degraded_reason);
    assert_eq!(ids(&answers[0]).len(), 40);
    assert_eq!(ids(&answers[0]), ids(&answers[1]));
    // Both shards contributed.
    let owners: std::collections::HashSet<u32> =
        ids(&answers[1]).iter().map(|id| shard_of(id, 2)).collect();
    assert_eq!(owners.len(), 2);

    // Shard 1 goes away: the answer comes from shard 0 alone, marked degraded.
    s1.now().await;
    let mut client = recommender(sharded.addr).await;
    let partial = client
        .recommend(req.clone())
        .await
        .expect("recommend")
        .into_inner();
    assert!(partial.degraded);
    assert!(
        partial
            .degraded_reason
            .contains("1 of 2 retrieval shards failed"),
        "{}",
        partial.degraded_reason
    );
    assert_eq!(partial.items.len(), 40);
    assert!(partial.items.iter().all(|i| shard_of(&i.item_id, 2) == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_never_answers_is_cut_off_at_the_stage_deadline() {
    let full = catalog();
    let (s0_addr, _s0) = serve_retrieval(&full, Some(Shard { index: 0, count: 2 }), None).await;
    // Accepts connections and never speaks: a hung pod.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hole_addr = black_hole.local_addr().expect("addr");
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let gateway = start(config(&[
        &format!("--retrieval-addr={s0_addr},{hole_addr}"),
        "--stage-timeout-ms=300",
    ]))
    .await;
    let mut client = recommender(gateway.addr).await;
    client
        .record_events(pb::RecordEventsRequest {
            events: vec![event(
                "h",
                &items_in(&full, "electronics", 1)[0],
                pb::EventType::View,
                t0(),
            )],
        })
        .await
        .expect("events");
    let started = std::time::Instant::now();
    let answer = client
        .recommend(request("h", 10))
        .await
        .expect("recommend")
        .into_inner();
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert!(answer.degraded);
    assert!(
        answer.degraded_reason.contains(&hole_addr.to_string()),
        "{}",
        answer.degraded_reason
    );
    assert_eq!(answer.items.len(), 10);
    assert!(answer.items.iter().all(|i| shard_of(&i.item_id, 2) == 0));
}
