//! Hot paths of retrieval: the distance kernels, the graph search (unfiltered and filtered)
//! and the exact scan a selective filter switches to.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_catalog::Catalog;
use tandem_catalog::testing::{SplitMix, synthetic_batch, write_parquet};
use tandem_retrieval::kernels::{Kernels, portable_dot};
use tandem_retrieval::{FilterSpec, Index, IndexParams, ItemFilter, SearchParams};

const ITEMS: usize = 20_000;
const DIM: usize = 32;

fn index() -> Index {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(ITEMS, DIM, 20, 5), &path).expect("write fixture");
    let catalog = Arc::new(Catalog::open(&path).expect("open fixture"));
    Index::build(catalog, IndexParams::default()).expect("build")
}

fn kernels(c: &mut Criterion) {
    let k = Kernels::detect();
    for dim in [32, 64, 128] {
        let a: Vec<f32> = (0..dim).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..dim).map(|i| (i as f32).cos()).collect();
        c.bench_function(&format!("dot/{}/{dim}", k.name), |bench| {
            bench.iter(|| (k.dot)(black_box(&a), black_box(&b)))
        });
        c.bench_function(&format!("dot/portable/{dim}"), |bench| {
            bench.iter(|| portable_dot(black_box(&a), black_box(&b)))
        });
    }
}

fn search(c: &mut Criterion) {
    let index = index();
    let mut rng = SplitMix::new(9);
    let queries: Vec<Vec<f32>> = (0..256)
        .map(|_| {
            let anchor = index
                .catalog()
                .embedding((rng.next_u64() % ITEMS as u64) as u32);
            anchor.iter().map(|x| x + 0.3 * rng.normal()).collect()
        })
        .collect();
    let none = ItemFilter::default();
    let category = ItemFilter::resolve(
        index.catalog(),
        &FilterSpec {
            categories: (0..6).map(|i| format!("cat-{i:02}")).collect(),
            ..Default::default()
        },
    )
    .expect("filter");
    let selective = ItemFilter::resolve(
        index.catalog(),
        &FilterSpec {
            categories: vec!["cat-03".into()],
            min_price: Some(10.0),
            max_price: Some(15.0),
            ..Default::default()
        },
    )
    .expect("filter");
    for (name, filter, ef) in [
        ("search/ef32", &none, 32),
        ("search/ef64", &none, 64),
        ("search/ef128", &none, 128),
        ("search/ef64/30pct-categories", &category, 64),
        ("search/exact-scan/selective", &selective, 64),
    ] {
        let mut i = 0;
        c.bench_function(name, |bench| {
            bench.iter(|| {
                i = (i + 1) % queries.len();
                index
                    .search(
                        &queries[i],
                        filter,
                        SearchParams {
                            k: 10,
                            ef_search: Some(ef),
                        },
                    )
                    .expect("search")
            })
        });
    }
}

criterion_group!(benches, kernels, search);
criterion_main!(benches);
