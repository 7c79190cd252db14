//! Live updates: upserts, deletes, the write-ahead log and background rebuilds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_catalog::Catalog;
use tandem_catalog::testing::{SplitMix, synthetic_batch, write_parquet};
use tandem_retrieval::{
    FilterSpec, Index, IndexParams, ItemFilter, ItemUpdate, RetrievalError, SearchParams,
};

const DIM: usize = 16;

fn catalog(dir: &std::path::Path, n: usize) -> Arc<Catalog> {
    let path = dir.join("items.parquet");
    write_parquet(&synthetic_batch(n, DIM, 10, 3), &path).expect("write");
    Arc::new(Catalog::open(&path).expect("open"))
}

fn open(catalog: &Arc<Catalog>, wal: &std::path::Path, params: IndexParams) -> Arc<Index> {
    let index = Index::build(catalog.clone(), params).expect("build");
    index.attach_wal(wal).expect("wal");
    Arc::new(index)
}

fn item(id: &str, embedding: Vec<f32>, category: &str) -> ItemUpdate {
    ItemUpdate {
        item_id: id.into(),
        embedding,
        category: category.into(),
        price: 5.0,
        in_stock: true,
        popularity: 1.0,
    }
}

fn direction(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    (0..DIM).map(|_| rng.normal()).collect()
}

/// A vector along `direction(seed)` long enough to beat every catalog item on that query,
/// and every other such vector (equal norms: only the exact direction scores the full norm).
fn far(seed: u64) -> Vec<f32> {
    let d = direction(seed);
    let n = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    d.iter().map(|v| 30.0 * v / n).collect()
}

fn top_ids(index: &Index, query: &[f32], filter: &ItemFilter, k: usize) -> Vec<String> {
    index
        .search(query, filter, SearchParams { k, ef_search: None })
        .expect("search")
        .iter()
        .map(|c| index.item_id(c.idx).expect("row has an id"))
        .collect()
}

#[test]
fn upserted_items_are_found_and_deleted_ones_never_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), 2000);
    let index = open(&catalog, &dir.path().join("r.wal"), IndexParams::default());
    let none = ItemFilter::default();

    // A new item far out along q is the best match for q.
    let q = direction(1);
    let long: Vec<f32> = q.iter().map(|v| v * 50.0).collect();
    index
        .upsert(vec![item("new-1", long.clone(), "brand-new-category")])
        .expect("upsert");
    assert_eq!(top_ids(&index, &q, &none, 5)[0], "new-1");
    // Its new category is filterable at once.
    let only_new = index
        .resolve_filter(&FilterSpec {
            categories: vec!["brand-new-category".into()],
            ..Default::default()
        })
        .expect("filter");
    assert_eq!(top_ids(&index, &q, &only_new, 5), vec!["new-1".to_owned()]);

    // Replacing a catalog item moves it: its old category no longer matches.
    let old = catalog.item_id(7).to_owned();
    let old_category = catalog.category(7).to_owned();
    index
        .upsert(vec![item(
            &old,
            long.iter().map(|v| v * 2.0).collect(),
            "moved",
        )])
        .expect("upsert");
    assert_eq!(top_ids(&index, &q, &none, 1), vec![old.clone()]);
    let old_cat = index
        .resolve_filter(&FilterSpec {
            categories: vec![old_category],
            ..Default::default()
        })
        .expect("filter");
    assert!(!top_ids(&index, &q, &old_cat, 200).contains(&old));

    // Deleted: gone from approximate and exact answers alike, for any query.
    let outcome = index
        .delete(vec![old.clone(), "new-1".into(), "never-existed".into()])
        .expect("delete");
    assert_eq!((outcome.applied, outcome.not_found), (2, 1));
    for seed in 0..50 {
        let q = direction(seed);
        let got = top_ids(&index, &q, &none, 100);
        assert_eq!(got.len(), 100);
        assert!(!got.contains(&old) && !got.contains(&"new-1".to_owned()));
        let exact: Vec<u32> = index
            .exact(&q, &none, 100)
            .expect("exact")
            .iter()
            .map(|c| c.idx)
            .collect();
        assert!(exact.iter().all(|r| {
            let id = index.item_id(*r).expect("id");
            id != old && id != "new-1"
        }));
    }
    assert_eq!(index.live_items(), 2000 - 1);
}

#[test]
fn a_bad_item_rejects_the_whole_batch_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), 500);
    let index = open(&catalog, &dir.path().join("r.wal"), IndexParams::default());
    let good = item("good", direction(2), "c");
    let short = item("short", vec![1.0; DIM - 1], "c");
    match index.upsert(vec![good.clone(), short]) {
        Err(RetrievalError::InvalidArgument { field, reason }) => {
            assert_eq!(field, "items.embedding");
            assert!(reason.contains("short"), "{reason}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut nan = good.clone();
    nan.embedding[0] = f32::NAN;
    assert!(matches!(
        index.upsert(vec![nan]),
        Err(RetrievalError::InvalidArgument {
            field: "items.embedding",
            ..
        })
    ));
    let mut negative = good.clone();
    negative.price = -1.0;
    assert!(matches!(
        index.upsert(vec![negative]),
        Err(RetrievalError::InvalidArgument {
            field: "items.price",
            ..
        })
    ));
    assert!(matches!(
        index.search(
            &[1.0; DIM + 2],
            &ItemFilter::default(),
            SearchParams {
                k: 5,
                ef_search: None
            }
        ),
        Err(RetrievalError::InvalidArgument {
            field: "vector",
            ..
        })
    ));
    // Nothing of the rejected batches was applied.
    assert_eq!(index.live_items(), 500);
    let q = direction(2);
    assert!(!top_ids(&index, &q, &ItemFilter::default(), 50).contains(&"good".to_owned()));
}

#[test]
fn the_log_replays_into_a_fresh_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), 1000);
    let wal = dir.path().join("r.wal");
    let q = direction(3);
    let deleted = catalog.item_id(11).to_owned();
    {
        let index = open(&catalog, &wal, IndexParams::default());
        index
            .upsert(vec![item(
                "kept",
                q.iter().map(|v| v * 40.0).collect(),
                "c",
            )])
            .expect("upsert");
        index.delete(vec![deleted.clone()]).expect("delete");
    }
    let index = open(&catalog, &wal, IndexParams::default());
    assert_eq!(
        top_ids(&index, &q, &ItemFilter::default(), 1),
        vec!["kept".to_owned()]
    );
    let all = index
        .exact(&q, &ItemFilter::default(), 1000)
        .expect("exact");
    assert_eq!(all.len(), 1000, "1000 catalog items - 1 deleted + 1 new");
    assert!(
        all.iter()
            .all(|c| index.item_id(c.idx).as_deref() != Some(deleted.as_str()))
    );
    // Later writes continue the sequence.
    let next = index.delete(vec!["kept".into()]).expect("delete");
    assert_eq!(next.sequence, 3);
}

#[test]
fn rebuilds_merge_the_mutable_segment_while_searches_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), 3000);
    let params = IndexParams {
        fresh_capacity: 100,
        ..IndexParams::default()
    };
    let index = open(&catalog, &dir.path().join("r.wal"), params);
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = std::thread::spawn({
        let (index, stop) = (index.clone(), stop.clone());
        move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let got = index
                    .search(
                        &direction(n),
                        &ItemFilter::default(),
                        SearchParams {
                            k: 20,
                            ef_search: None,
                        },
                    )
                    .expect("search during rebuild");
                assert_eq!(got.len(), 20);
                n += 1;
            }
            n
        }
    });
    let mut ids = Vec::new();
    for batch in 0..5 {
        let items: Vec<ItemUpdate> = (0..40)
            .map(|i| {
                let id = format!("u-{batch}-{i}");
                ids.push(id.clone());
                item(&id, far(1000 + ids.len() as u64), "c")
            })
            .collect();
        index.upsert(items).expect("upsert");
    }
    index.delete(ids[..10].to_vec()).expect("delete");
    let deadline = Instant::now() + Duration::from_secs(120);
    while index.is_rebuilding() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!index.is_rebuilding(), "rebuild did not finish");
    stop.store(true, Ordering::Relaxed);
    assert!(searcher.join().expect("searcher") > 0);
    // Every live upserted item is its own nearest neighbour; deleted ones never come back.
    for (i, id) in ids.iter().enumerate() {
        let q = direction(1001 + i as u64);
        let top = top_ids(&index, &q, &ItemFilter::default(), 3);
        if i < 10 {
            assert!(!top.contains(id), "deleted {id} returned");
        } else {
            let exact: Vec<(String, f32)> = index
                .exact(&q, &ItemFilter::default(), 3)
                .expect("exact")
                .iter()
                .map(|c| (index.item_id(c.idx).expect("id"), c.score))
                .collect();
            assert_eq!(&top[0], id, "exact {exact:?}");
        }
    }
    assert_eq!(index.live_items(), 3000 + 190);
}

#[test]
fn a_shard_refuses_items_that_hash_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), 300);
    let params = IndexParams {
        shard: Some("1/3".parse().expect("shard")),
        ..IndexParams::default()
    };
    let index = open(&catalog, &dir.path().join("r.wal"), params);
    let (mine, theirs): (Vec<String>, Vec<String>) = (0..40)
        .map(|i| format!("new-{i}"))
        .partition(|id| tandem_catalog::shard_of(id, 3) == 1);
    assert!(!mine.is_empty() && !theirs.is_empty());
    index
        .upsert(vec![item(&mine[0], direction(9), "c")])
        .expect("own item");
    match index.upsert(vec![item(&theirs[0], direction(9), "c")]) {
        Err(RetrievalError::InvalidArgument { field, reason }) => {
            assert_eq!(field, "items.item_id");
            assert!(reason.contains("this server is shard 1/3"), "{reason}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!("3/3".parse::<tandem_retrieval::Shard>().is_err());
    assert!("x".parse::<tandem_retrieval::Shard>().is_err());
}
