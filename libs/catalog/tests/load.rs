use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch};
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_catalog::{Catalog, CatalogError};

fn write(batch: &RecordBatch) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(batch, &path).expect("write fixture");
    (dir, path)
}

#[test]
fn round_trips_columns_and_ids() {
    let batch = synthetic_batch(1000, 8, 5, 1);
    let (_dir, path) = write(&batch);
    let catalog = Catalog::open(&path).expect("open");
    assert_eq!(catalog.len(), 1000);
    assert_eq!(catalog.dim(), 8);
    assert_eq!(
        catalog.categories(),
        ["cat-00", "cat-01", "cat-02", "cat-03", "cat-04"]
    );
    assert_eq!(catalog.embeddings().len(), 8000);

    let idx = catalog.idx_of("item-000123").expect("known id");
    assert_eq!(idx, 123);
    assert_eq!(catalog.item_id(idx), "item-000123");
    assert_eq!(catalog.category(idx), "cat-03");
    assert_eq!(catalog.category_code_of("cat-03"), Some(3));
    assert_eq!(catalog.category_code_of("nope"), None);
    assert_eq!(catalog.idx_of("item-999999"), None);

    let emb = batch
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::FixedSizeListArray>()
        .expect("list")
        .value(123);
    let emb = emb.as_any().downcast_ref::<Float32Array>().expect("f32");
    assert_eq!(catalog.embedding(idx), emb.values().as_ref());
    // Popularity falls with the id in the fixture.
    assert_eq!(&catalog.by_popularity()[..3], &[0, 1, 2]);
    assert_eq!(
        catalog.numeric("in_stock", idx),
        Some(if catalog.in_stock(idx) { 1.0 } else { 0.0 })
    );
}

#[test]
fn rejects_missing_column_by_name() {
    let batch = synthetic_batch(10, 4, 2, 1);
    let batch = batch.project(&[0, 1, 2, 3, 4]).expect("project"); // drop popularity
    let (_dir, path) = write(&batch);
    let err = Catalog::open(&path).expect_err("must fail");
    assert!(
        matches!(
            err,
            CatalogError::Column {
                column: "popularity",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_non_finite_price_and_duplicate_ids() {
    let batch = synthetic_batch(10, 4, 2, 1);
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols[3] = Arc::new(Float32Array::from(vec![f32::NAN; 10]));
    let bad = RecordBatch::try_new(batch.schema(), cols).expect("batch");
    let (_d1, path) = write(&bad);
    let err = Catalog::open(&path).expect_err("NaN price");
    assert!(
        matches!(
            err,
            CatalogError::Column {
                column: "price",
                ..
            }
        ),
        "{err}"
    );

    let twice = arrow::compute::concat_batches(&batch.schema(), [&batch, &batch]).expect("concat");
    let (_d2, path) = write(&twice);
    let err = Catalog::open(&path).expect_err("duplicates");
    assert!(
        matches!(err, CatalogError::DuplicateItemId(ref id) if id == "item-000000"),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let err = Catalog::open(std::path::Path::new("/nonexistent/items.parquet")).expect_err("io");
    assert!(matches!(err, CatalogError::Io { .. }));
}

#[test]
fn reads_the_pipeline_output_when_present() {
    // The Python pipeline writes with pyarrow; arrow-rs must restore the FixedSizeList.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/test/items.parquet");
    if !path.exists() {
        eprintln!(
            "skipping: {} not generated (make test generates it)",
            path.display()
        );
        return;
    }
    let catalog = Catalog::open(&path).expect("pipeline catalog");
    assert!(!catalog.is_empty());
    assert_eq!(catalog.dim(), 32);
    assert!(catalog.categories().len() > 1);
}

#[test]
fn a_shard_keeps_its_items_and_the_whole_vocabulary() {
    use tandem_catalog::shard_of;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(600, 4, 7, 1), &path).expect("write");
    let full = Catalog::open(&path).expect("open");
    let mut total = 0;
    for shard in 0..3 {
        let rows: Vec<u32> = (0..full.len() as u32)
            .filter(|&r| shard_of(full.item_id(r), 3) == shard)
            .collect();
        let part = full.select(&rows);
        total += part.len();
        assert_eq!(part.categories(), full.categories());
        for (i, &r) in rows.iter().enumerate() {
            let i = i as u32;
            assert_eq!(part.item_id(i), full.item_id(r));
            assert_eq!(part.idx_of(full.item_id(r)), Some(i));
            assert_eq!(part.embedding(i), full.embedding(r));
            assert_eq!(part.category(i), full.category(r));
            assert_eq!(part.price(i), full.price(r));
            assert_eq!(part.in_stock(i), full.in_stock(r));
        }
        // Roughly even: a third each, give or take.
        assert!(
            (150..250).contains(&part.len()),
            "shard {shard}: {}",
            part.len()
        );
    }
    assert_eq!(total, 600);
    assert_eq!(shard_of("item-000123", 4), shard_of("item-000123", 4));
}

/// A co-occurrence table larger than one resolving chunk, with each item's rows split into
/// several runs, ids the catalog does not hold in either column, and weights to tell rows
/// apart: every item gets its known pairs in file order, nothing else.
#[test]
fn related_pairs_keep_file_order_and_skip_unknown_ids() {
    let batch = synthetic_batch(50, 4, 3, 7);
    let (dir, path) = write(&batch);
    let id = |i: usize| format!("item-{i:06}");
    let mut rows: Vec<(String, String, f32)> = Vec::new();
    let mut expected: Vec<Vec<(u32, f32)>> = vec![Vec::new(); 50];
    for n in 0..30_000usize {
        // Runs of 1 to 4 rows per item, items revisited all through the file.
        let item = (n / (1 + n % 4)) * 7 % 53;
        let related = (n * 13 + 5) % 57;
        let weight = n as f32 / 1000.0;
        rows.push((id(item), id(related), weight));
        if item < 50 && related < 50 {
            expected[item].push((related as u32, weight));
        }
    }
    let pairs: Vec<(&str, &str, f32)> = rows
        .iter()
        .map(|(a, b, w)| (a.as_str(), b.as_str(), *w))
        .collect();
    tandem_catalog::testing::write_related(&pairs, &dir.path().join(tandem_catalog::RELATED_FILE))
        .expect("write related");
    let catalog = Catalog::open(&path).expect("open");
    for (item, want) in expected.iter().enumerate() {
        let (items, weights) = catalog.related(item as u32);
        let got: Vec<(u32, f32)> = items.iter().copied().zip(weights.iter().copied()).collect();
        assert_eq!(&got, want, "item {item}");
    }
    assert!(expected.iter().map(Vec::len).sum::<usize>() > 20_000);

    // A bad weight anywhere (here in a later chunk) names the file and the weight.
    let mut bad = pairs.clone();
    bad[20_000].2 = -1.0;
    tandem_catalog::testing::write_related(&bad, &dir.path().join(tandem_catalog::RELATED_FILE))
        .expect("write related");
    match Catalog::open(&path) {
        Err(CatalogError::Related { reason, .. }) => {
            assert!(reason.contains("weight -1"), "{reason}")
        }
        other => panic!("expected a related-table error, got {other:?}"),
    }
}

/// The catalog's columns as a snapshot stores them.
fn parts_of(catalog: &Catalog) -> tandem_catalog::CatalogParts {
    let rows = 0..catalog.len() as u32;
    tandem_catalog::CatalogParts {
        item_ids: rows
            .clone()
            .map(|i| catalog.item_id(i).to_owned())
            .collect(),
        embeddings: catalog.embeddings().to_vec(),
        dim: catalog.dim(),
        categories: catalog.categories().to_vec(),
        category_codes: catalog.category_codes().to_vec(),
        price: catalog.prices().to_vec(),
        in_stock: rows.clone().map(|i| catalog.in_stock(i)).collect(),
        popularity: rows.map(|i| catalog.popularity(i)).collect(),
    }
}

/// One value of a catalog's columns changed.
type Change = fn(&mut tandem_catalog::CatalogParts);

#[test]
fn holds_exactly_its_own_rows_and_nothing_that_differs_in_one_value() {
    let (_dir, path) = write(&synthetic_batch(300, 8, 5, 4));
    let catalog = Catalog::open(&path).expect("open");
    let parts = parts_of(&catalog);
    assert!(catalog.holds_exactly(&parts));
    let changes: [(&str, Change); 7] = [
        ("an id", |p| p.item_ids[7].push('x')),
        ("an embedding value", |p| {
            p.embeddings[40] = -p.embeddings[40]
        }),
        ("a category", |p| {
            p.category_codes[9] = (p.category_codes[9] + 1) % 5
        }),
        ("a price", |p| p.price[11] += 1.0),
        ("stock", |p| p.in_stock[12] = !p.in_stock[12]),
        ("popularity", |p| p.popularity[13] += 1.0),
        ("one more row", |p| {
            p.item_ids.push("extra".into());
            p.embeddings.extend([0.5; 8]);
            p.category_codes.push(0);
            p.price.push(1.0);
            p.in_stock.push(true);
            p.popularity.push(0.0);
        }),
    ];
    for (what, change) in changes {
        let mut other = parts.clone();
        change(&mut other);
        assert!(!catalog.holds_exactly(&other), "{what} differs");
    }
}
