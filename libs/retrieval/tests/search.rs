use std::collections::HashSet;
use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tandem_catalog::Catalog;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_retrieval::{FilterSpec, Index, IndexParams, ItemFilter, RetrievalError, SearchParams};

fn index(n: usize, dim: usize) -> Index {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(n, dim, 10, 3), &path).expect("write");
    let catalog = Arc::new(Catalog::open(&path).expect("open"));
    Index::build(catalog, IndexParams::default()).expect("build")
}

fn random_query(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// The pipeline's 50k demo catalog (`make test` generates it); `TANDEM_DEMO_DATA` overrides.
fn demo_index() -> Index {
    let dir = std::env::var_os("TANDEM_DEMO_DATA").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo"),
        std::path::PathBuf::from,
    );
    let path = dir.join("items.parquet");
    assert!(
        path.is_file(),
        "{} is missing: run `make test`",
        path.display()
    );
    let catalog = Arc::new(Catalog::open(&path).expect("open"));
    Index::build(catalog, IndexParams::default()).expect("build")
}

/// The bar: recall@10 >= 0.95 on the generated 50k catalog at default parameters.
#[test]
fn unfiltered_search_matches_brute_force() {
    let index = demo_index();
    let mut rng = StdRng::seed_from_u64(1);
    let mut hits = 0;
    let queries = 200;
    for _ in 0..queries {
        // Queries look like user vectors: near some item, not uniform noise.
        let anchor = index
            .catalog()
            .embedding(rng.random_range(0..index.catalog().len() as u32));
        let q: Vec<f32> = anchor
            .iter()
            .map(|x| x + rng.random_range(-0.3..0.3))
            .collect();
        let got = index
            .search(
                &q,
                &ItemFilter::default(),
                SearchParams {
                    k: 10,
                    ef_search: None,
                },
            )
            .expect("search");
        assert_eq!(got.len(), 10);
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score), "sorted");
        let exact: HashSet<u32> = index
            .exact(&q, &ItemFilter::default(), 10)
            .expect("exact")
            .iter()
            .map(|c| c.idx)
            .collect();
        hits += got.iter().filter(|c| exact.contains(&c.idx)).count();
    }
    let recall = hits as f64 / (queries * 10) as f64;
    eprintln!("recall@10 {recall}");
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn every_result_passes_random_filters_and_selective_ones_still_fill_k() {
    let index = index(3000, 8);
    let catalog = index.catalog().clone();
    let mut rng = StdRng::seed_from_u64(2);
    for round in 0..60 {
        let mut spec = FilterSpec::default();
        let n_cats = rng.random_range(0..3);
        spec.categories = (0..n_cats)
            .map(|_| format!("cat-{:02}", rng.random_range(0..10)))
            .collect();
        if rng.random_bool(0.5) {
            spec.min_price = Some(rng.random_range(1.0..60.0));
        }
        if rng.random_bool(0.5) {
            spec.max_price = Some(spec.min_price.unwrap_or(1.0) + rng.random_range(0.5..50.0));
        }
        spec.in_stock_only = rng.random_bool(0.5);
        spec.exclude_item_ids = (0..20)
            .map(|_| format!("item-{:06}", rng.random_range(0..3000)))
            .collect();
        let filter = ItemFilter::resolve(&catalog, &spec).expect("valid filter");
        let passing = (0..catalog.len() as u32)
            .filter(|&i| filter.admits(&catalog, i))
            .count();
        let k = 25;
        let got = index
            .search(
                &random_query(&mut rng, 8),
                &filter,
                SearchParams { k, ef_search: None },
            )
            .expect("search");
        assert_eq!(got.len(), k.min(passing), "round {round}: {spec:?}");
        for c in &got {
            assert!(
                filter.admits(&catalog, c.idx),
                "round {round}: item {} fails {spec:?}",
                c.idx
            );
        }
        let distinct: HashSet<u32> = got.iter().map(|c| c.idx).collect();
        assert_eq!(distinct.len(), got.len());
    }
}

#[test]
fn bad_queries_and_filters_name_the_field() {
    let index = index(500, 8);
    let none = ItemFilter::default();
    let k10 = SearchParams {
        k: 10,
        ef_search: None,
    };
    assert_eq!(field(index.search(&[1.0; 7], &none, k10)), "vector");
    let mut nan = vec![1.0; 8];
    nan[3] = f32::NAN;
    assert_eq!(field(index.search(&nan, &none, k10)), "vector");
    assert_eq!(field(index.search(&[0.0; 8], &none, k10)), "vector");
    assert_eq!(
        field(index.search(
            &[1.0; 8],
            &none,
            SearchParams {
                k: 0,
                ef_search: None
            }
        )),
        "k"
    );
    let spec = FilterSpec {
        categories: vec!["no-such-category".into()],
        ..Default::default()
    };
    assert_eq!(
        field(ItemFilter::resolve(index.catalog(), &spec)),
        "filter.categories"
    );
    let spec = FilterSpec {
        min_price: Some(10.0),
        max_price: Some(5.0),
        ..Default::default()
    };
    assert_eq!(
        field(ItemFilter::resolve(index.catalog(), &spec)),
        "filter.min_price"
    );
}

fn field<T: std::fmt::Debug>(r: Result<T, RetrievalError>) -> &'static str {
    match r {
        Err(RetrievalError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Cosine and L2 spaces: scores mean what they say and the graph finds the exact answer.
#[test]
fn cosine_and_l2_metrics_match_their_brute_force() {
    use tandem_retrieval::Metric;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(3000, 12, 10, 8), &path).expect("write");
    let catalog = Arc::new(Catalog::open(&path).expect("open"));
    let mut rng = StdRng::seed_from_u64(4);
    for metric in [Metric::Cosine, Metric::L2] {
        let params = IndexParams {
            metric,
            ..IndexParams::default()
        };
        let index = Index::build(catalog.clone(), params).expect("build");
        let mut hits = 0;
        for _ in 0..100 {
            let q = random_query(&mut rng, 12);
            let got = index
                .search(
                    &q,
                    &ItemFilter::default(),
                    SearchParams {
                        k: 10,
                        ef_search: None,
                    },
                )
                .expect("search");
            // Scores by hand: cosine similarity, or minus the squared distance.
            let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt();
            let mut truth: Vec<(f32, u32)> = (0..catalog.len() as u32)
                .map(|i| {
                    let x = catalog.embedding(i);
                    let s = match metric {
                        Metric::Cosine => {
                            let xn = x.iter().map(|v| v * v).sum::<f32>().sqrt();
                            q.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() / (qn * xn)
                        }
                        _ => -q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
                    };
                    (s, i)
                })
                .collect();
            truth.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: HashSet<u32> = truth[..10].iter().map(|t| t.1).collect();
            for c in &got {
                let exact = truth.iter().find(|t| t.1 == c.idx).expect("scored").0;
                assert!(
                    (c.score - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                    "{metric}: {} vs {exact}",
                    c.score
                );
            }
            hits += got.iter().filter(|c| want.contains(&c.idx)).count();
        }
        assert!(hits >= 950, "{metric}: recall@10 {}", hits as f64 / 1000.0);
    }
}
