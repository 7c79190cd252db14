//! Explain and the served-feature log: the model's input values per item, the rules that moved
//! it, and a Parquet log of what was served that the models pipeline reads.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use common::*;
use tandem_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_returns_the_models_inputs_and_the_rules_that_moved_items() {
    let catalog = catalog();
    let gw = start(config(&[])).await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "curious", "music", 4).await;
    let resp = client
        .recommend(pb::RecommendRequest {
            explain: true,
            max_per_category: Some(2),
            filter: Some(pb::ItemFilter {
                categories: vec!["music".into()],
                ..Default::default()
            }),
            ..request("curious", 6)
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(resp.items.len(), 6);
    for (n, item) in resp.items.iter().enumerate() {
        let idx = catalog.idx_of(&item.item_id).expect("known");
        let embedding = feature(item, "item_embedding");
        let user = feature(item, "user_vector");
        assert_eq!(embedding.len(), catalog.dim(), "{item:?}");
        for (got, want) in embedding.iter().zip(catalog.embedding(idx)) {
            assert!((got - f64::from(*want)).abs() < 1e-6);
        }
        let dot: f64 = user.iter().zip(embedding).map(|(a, b)| a * b).sum();
        assert!((feature(item, "user_item_dot")[0] - dot).abs() < 1e-4);
        assert!(
            (feature(item, "item_numeric:price")[0] - f64::from(catalog.price(idx)).ln_1p()).abs()
                < 1e-4
        );
        let rules = &item.explanation.as_ref().expect("explained").rules;
        if n < 2 {
            assert!(rules.is_empty(), "placed by score: {rules:?}");
        } else {
            // Only music passes the filter: past the cap of 2, items stay to fill k.
            assert!(
                rules.iter().any(|r| r.starts_with("diversity")),
                "{rules:?}"
            );
        }
    }
    // Without explain, nothing extra.
    let plain = client
        .recommend(request("curious", 3))
        .await
        .expect("recommend")
        .into_inner();
    assert!(plain.items.iter().all(|i| i.explanation.is_none()));
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "parquet") {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_features_are_logged_as_parquet_the_pipeline_reads() {
    let state = state_dir();
    let served = state.path().join("served");
    let gw = start(config(&[
        "--served-log-sample=1",
        "--served-log-flush-ms=100",
        &format!("--served-log-dir={}", served.display()),
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "logged", "games", 4).await;
    let mut request_ids = Vec::new();
    for _ in 0..3 {
        let resp = client
            .recommend(pb::RecommendRequest {
                num_candidates: Some(50),
                ..request("logged", 5)
            })
            .await
            .expect("recommend")
            .into_inner();
        request_ids.push(resp.request_id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let mut rows = Vec::new();
        for path in parquet_files(&served) {
            let file = std::fs::File::open(&path).expect("open");
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("valid parquet")
                    .build()
                    .expect("reader");
            rows.extend(reader.map(|b| b.expect("batch")));
        }
        let n: usize = rows.iter().map(|b| b.num_rows()).sum();
        if n >= 150 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 150, "3 requests × 50 ranked candidates");
    let mut served_positions = 0;
    let mut logged_ids = std::collections::BTreeSet::new();
    for batch in &rows {
        let ids = batch
            .column_by_name("request_id")
            .expect("request_id")
            .as_string::<i32>();
        logged_ids.extend((0..ids.len()).map(|i| ids.value(i).to_owned()));
        let position = batch.column_by_name("position").expect("position");
        served_positions += position.len() - position.null_count();
        let user = batch
            .column_by_name("feature.features.user_vector")
            .expect("feature column")
            .as_fixed_size_list();
        assert_eq!(user.value_length() as usize, catalog().dim());
    }
    assert_eq!(served_positions, 15, "5 served of 50, three times");
    let want: std::collections::BTreeSet<String> = request_ids.into_iter().collect();
    assert_eq!(logged_ids, want);

    // The models pipeline reads them back into a training matrix.
    let out = std::process::Command::new(python())
        .args(["-m", "tandem_pipeline.served", "--served"])
        .arg(&served)
        .current_dir(models_dir())
        .output()
        .expect("run the pipeline's reader");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ranker = &summary["ranker/1"];
    assert_eq!(ranker["rows"], 150);
    assert_eq!(ranker["requests"], 3);
    assert_eq!(ranker["served_rows"], 15);
    assert_eq!(ranker["finite"], true);
    assert_eq!(
        ranker["matrix"][1], 92,
        "the model's 92 input values per row"
    );
}

/// The history ranker (the real-data world's model) over gRPC: repeat purchases by request,
/// the user's own items as candidates, and a reason per item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_purchases_are_the_callers_choice_and_every_item_says_why() {
    let catalog = catalog();
    let ranker = test_data().join("models/history-ranker");
    let gw = start(config(&[
        &format!("--model-dir={}", ranker.display()),
        "--related-candidates=50",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    let bought = items_in(&catalog, "music", 40)
        .into_iter()
        .find(|id| catalog.idx_of(id).is_some_and(|i| catalog.in_stock(i)))
        .expect("an in-stock music item");
    let events = vec![
        event("regular", &bought, pb::EventType::Purchase, t0()),
        event("regular", &bought, pb::EventType::Purchase, t0() + 1),
    ];
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("record");
    clicks_in(&mut client, "regular", "music", 3).await;
    let ask = |repeat: pb::RepeatPurchases| pb::RecommendRequest {
        repeat_purchases: repeat as i32,
        reasons: true,
        num_candidates: Some(1000),
        filter: Some(pb::ItemFilter {
            categories: vec!["music".into()],
            ..Default::default()
        }),
        ..request("regular", 1000)
    };
    let excluded = client
        .recommend(ask(pb::RepeatPurchases::Exclude))
        .await
        .expect("recommend")
        .into_inner();
    assert!(excluded.model_version.starts_with("history-ranker/"));
    assert!(!excluded.items.is_empty());
    assert!(excluded.items.iter().all(|i| i.item_id != bought));
    assert!(
        excluded.items.iter().all(|i| !i.reason.is_empty()),
        "every item says why"
    );
    assert!(excluded.items.iter().all(|i| i.explanation.is_none()));
    let allowed = client
        .recommend(ask(pb::RepeatPurchases::Allow))
        .await
        .expect("recommend")
        .into_inner();
    let again = allowed
        .items
        .iter()
        .find(|i| i.item_id == bought)
        .expect("the bought item may come back");
    assert_eq!(again.reason, "bought twice, last today");
    // The window default (720 h) keeps a purchase of six hours ago out.
    let default = client
        .recommend(ask(pb::RepeatPurchases::Unspecified))
        .await
        .expect("recommend")
        .into_inner();
    assert!(default.items.iter().all(|i| i.item_id != bought));
    let bad = client
        .recommend(pb::RecommendRequest {
            repeat_purchases: 9,
            ..request("regular", 5)
        })
        .await
        .expect_err("unknown enum value");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("repeat_purchases"),
        "{}",
        bad.message()
    );
}
