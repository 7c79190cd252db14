//! In-process retrieval on a real index: candidates carry their attributes exactly when the
//! index holds them otherwise than the pipeline's catalog states them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, RecordBatch};
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_catalog::{Catalog, ItemIdx, columns};
use tandem_recommend::{CandidateStage, InProcessRetrieval};
use tandem_retrieval::{FilterSpec, Index, IndexParams, ItemFilter};

const ITEMS: usize = 400;

fn catalog(dir: &std::path::Path, name: &str, batch: &RecordBatch) -> Arc<Catalog> {
    let path = dir.join(name);
    write_parquet(batch, &path).expect("write catalog");
    Arc::new(Catalog::open(&path).expect("open catalog"))
}

/// The same items with every price doubled: another version of the catalog.
fn repriced(batch: &RecordBatch) -> RecordBatch {
    let schema = batch.schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if field.name() != columns::PRICE {
                return column.clone();
            }
            let prices = column
                .as_any()
                .downcast_ref::<Float32Array>()
                .expect("price is f32");
            Arc::new(Float32Array::from_iter_values(
                prices.values().iter().map(|p| p * 2.0),
            )) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("same schema")
}

async fn search(
    retrieval: &InProcessRetrieval,
    pipeline: &Catalog,
) -> Vec<tandem_recommend::Candidate> {
    let filter = ItemFilter::resolve(pipeline, &FilterSpec::default()).expect("filter");
    let query = pipeline.embedding(3).to_vec();
    let found = retrieval
        .search(&query, 50, &filter, None)
        .await
        .expect("search")
        .candidates;
    assert_eq!(found.len(), 50, "a full page of candidates");
    found
}

#[tokio::test]
async fn candidates_of_an_unchanged_index_of_the_same_catalog_leave_attributes_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(
        dir.path(),
        "items.parquet",
        &synthetic_batch(ITEMS, 8, 4, 3),
    );
    let index = Arc::new(Index::build(catalog.clone(), IndexParams::default()).expect("index"));
    let retrieval = InProcessRetrieval::new(index, catalog.clone());
    for c in search(&retrieval, &catalog).await {
        assert_eq!(c.attributes, None, "item {}", c.idx);
        assert_eq!(c.attributes_in(&catalog), catalog.attributes(c.idx));
    }
}

#[tokio::test]
async fn an_index_of_another_version_of_the_items_sends_the_attributes_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = synthetic_batch(ITEMS, 8, 4, 3);
    let indexed = catalog(dir.path(), "indexed.parquet", &batch);
    // The same items, read again (as a restored snapshot's catalog is): nothing differs.
    let same = catalog(dir.path(), "same.parquet", &batch);
    let index = Arc::new(Index::build(indexed.clone(), IndexParams::default()).expect("index"));
    let retrieval = InProcessRetrieval::new(index.clone(), same.clone());
    assert!(
        search(&retrieval, &same)
            .await
            .iter()
            .all(|c| c.attributes.is_none()),
        "an equal catalog in another Arc"
    );
    // Repriced: the answer shows the index's prices, which the pipeline's catalog does not.
    let pipeline = catalog(dir.path(), "repriced.parquet", &repriced(&batch));
    let retrieval = InProcessRetrieval::new(index, pipeline.clone());
    for c in search(&retrieval, &pipeline).await {
        let now = c.attributes.clone().expect("carried");
        assert_eq!(now, indexed.attributes(c.idx as ItemIdx), "item {}", c.idx);
        assert_ne!(now.price, pipeline.price(c.idx));
        assert_eq!(c.attributes_in(&pipeline), now);
    }
}
