//! Hot paths of ranking on the pipeline's models: feature assembly alone, and a whole
//! request through the batcher (assembly + ORT run + split) for 500 candidates.
//! Needs `make test-data` (or TANDEM_TEST_DATA) and ORT_DYLIB_PATH; skipped without them.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_catalog::Catalog;
use tandem_ranking::{
    Assembler, BatchConfig, ExecutionProvider, Ranker, RankerConfig, ScoreRequest,
};

fn setup() -> Option<(PathBuf, PathBuf)> {
    let data = std::env::var_os("TANDEM_TEST_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/test"),
        PathBuf::from,
    );
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)?;
    data.join("items.parquet")
        .is_file()
        .then_some((data, dylib))
}

fn request(catalog: &Catalog, rows: usize) -> ScoreRequest {
    let items: Vec<u32> = (0..rows as u32)
        .map(|i| i * 5 % catalog.len() as u32)
        .collect();
    let mut user = catalog.embedding(1).to_vec();
    let norm = user.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    user.iter_mut().for_each(|v| *v /= norm);
    ScoreRequest {
        user_id: "bench".into(),
        user_vector: user,
        retrieval_scores: vec![0.5; items.len()],
        items,
        recent_items: (0..20).collect(),
        context: [("hour_of_day".to_owned(), "14".to_owned())].into(),
        version: None,
    }
}

fn ranking(c: &mut Criterion) {
    let Some((data, dylib)) = setup() else {
        eprintln!("ranking benches skipped: run `make test-data` and set ORT_DYLIB_PATH");
        return;
    };
    let catalog = Arc::new(Catalog::open(&data.join("items.parquet")).expect("catalog"));
    for model in ["ranker", "seqranker"] {
        let ranker = Ranker::open(
            &data.join("models").join(model),
            catalog.clone(),
            RankerConfig {
                ort_dylib_path: dylib.clone(),
                execution_provider: ExecutionProvider::Cpu,
                sessions: 1,
                intra_threads: 1,
                max_candidates: 5000,
                batch: BatchConfig::default(),
            },
            None,
        )
        .expect("load");
        let req = request(&catalog, 500);
        let assembler = Assembler::new(ranker.info().versions[0].spec(), &catalog);
        c.bench_function(&format!("assemble/{model}/500"), |b| {
            b.iter(|| assembler.assemble(&catalog, black_box(&[&req])))
        });
        c.bench_function(&format!("rank/{model}/500"), |b| {
            b.iter(|| ranker.rank_blocking(black_box(req.clone())).expect("rank"))
        });
    }
}

criterion_group!(benches, ranking);
criterion_main!(benches);
