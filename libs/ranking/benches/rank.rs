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

/// The demo catalog (50,000 items) when it exists: candidates scattered over a catalog
/// larger than the caches are what serving sees. Else the test data (3,000 items).
fn setup() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo =
        std::env::var_os("TANDEM_DEMO_DATA").map_or_else(|| root.join("data/demo"), PathBuf::from);
    let test =
        std::env::var_os("TANDEM_TEST_DATA").map_or_else(|| root.join("data/test"), PathBuf::from);
    let data = if demo.join("items.parquet").is_file() {
        demo
    } else {
        test
    };
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)?;
    data.join("items.parquet")
        .is_file()
        .then_some((data, dylib))
}

/// `rows` distinct candidates spread pseudo-randomly over the catalog, as retrieval gives them.
fn request(catalog: &Catalog, rows: usize) -> ScoreRequest {
    let n = catalog.len() as u64;
    let mut seen = std::collections::HashSet::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut items: Vec<u32> = Vec::with_capacity(rows);
    while items.len() < rows.min(catalog.len()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let item = (x % n) as u32;
        if seen.insert(item) {
            items.push(item);
        }
    }
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
        history: Vec::new(),
        now_ms: 0,
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
        // Into reused buffers, as a session does.
        let mut buffers = Vec::new();
        c.bench_function(&format!("assemble/{model}/500"), |b| {
            b.iter(|| assembler.assemble_into(&catalog, black_box(&[&req]), &mut buffers))
        });
        // With the caches and TLB cleared of the catalog first, as after an ORT run.
        let mut other = vec![0u8; 8 << 20];
        let mut group = c.benchmark_group("assemble_cold");
        group
            .sample_size(20)
            .measurement_time(std::time::Duration::from_secs(2));
        group.bench_function(format!("{model}/500"), |b| {
            b.iter_batched_ref(
                || {
                    for line in other.chunks_mut(64) {
                        line[0] = line[0].wrapping_add(1);
                    }
                },
                |_| assembler.assemble_into(&catalog, black_box(&[&req]), &mut buffers),
                criterion::BatchSize::PerIteration,
            )
        });
        group.finish();
        c.bench_function(&format!("rank/{model}/500"), |b| {
            b.iter(|| ranker.rank_blocking(black_box(req.clone())).expect("rank"))
        });
    }
}

criterion_group!(benches, ranking);
criterion_main!(benches);
