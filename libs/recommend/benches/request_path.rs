//! tandem's own code between the stages: one warm user's Recommend (k = 10, 200 candidates)
//! through the whole pipeline (plan, the candidates placed, rules, backfill check,
//! impressions, the experiment ledger, the served-feature log at its default 1 %) on stages
//! that answer at once: retrieval hands back the same 200 candidates (their attributes left
//! to the catalog, as in-process retrieval does while no item changed), ranking the same 200
//! scores. What
//! this costs is what a Recommend adds to its two stages before the transport
//! (load-tests/e2e/README.md measures the rest); no ONNX Runtime, no generated data.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_catalog::{Catalog, ItemIdx};
use tandem_events::{EventLogConfig, ServedLog, ServedLogConfig};
use tandem_experiments::{ExperimentLedger, LedgerConfig};
use tandem_personalization::{EventKind, InMemoryState, StateLimits, TrendingConfig};
use tandem_ranking::ScoreRequest;
use tandem_recommend::{
    Candidate, CandidateStage, EventIntake, IncomingEvent, ItemStatus, RecommendRequest,
    Recommender, Retrieved, Scored, ScoringStage, Settings, StageError, Stages, StateWriter,
};
use tandem_retrieval::ItemFilter;

/// The demo catalog's shape: 50,000 items, 32-d, 24 categories.
const ITEMS: usize = 50_000;
const DIM: usize = 32;
const CATEGORIES: usize = 24;
const CANDIDATES: usize = 200;

/// The same candidates for every search, without attributes of their own, as in-process
/// retrieval answers while no item changed.
struct InstantRetrieval {
    catalog: Arc<Catalog>,
    found: Vec<(ItemIdx, f32)>,
}

#[async_trait]
impl CandidateStage for InstantRetrieval {
    async fn search(
        &self,
        _query: &[f32],
        k: usize,
        filter: &ItemFilter,
        _deadline: Option<Instant>,
    ) -> Result<Retrieved, StageError> {
        // The search honoured the filter: every candidate is in stock (chosen so at setup).
        debug_assert!(
            self.found
                .iter()
                .all(|&(i, _)| filter.admits(self.catalog.as_ref(), i))
        );
        let candidates = self.found[..k.min(self.found.len())]
            .iter()
            .map(|&(idx, score)| Candidate {
                idx,
                score,
                // As in-process retrieval answers while no item changed: read when placed.
                attributes: None,
            })
            .collect();
        Ok(Retrieved {
            candidates,
            partial: None,
        })
    }

    async fn items(
        &self,
        items: &[ItemIdx],
        _deadline: Option<Instant>,
    ) -> Result<Vec<ItemStatus>, StageError> {
        Ok(items
            .iter()
            .map(|&i| ItemStatus::Present(self.catalog.attributes(i)))
            .collect())
    }
}

/// A fixed score per candidate row.
struct InstantRanking;

#[async_trait]
impl ScoringStage for InstantRanking {
    async fn score(
        &self,
        request: ScoreRequest,
        _with_features: bool,
        _deadline: Option<Instant>,
    ) -> Result<Scored, StageError> {
        Ok(Scored {
            scores: (0..request.items.len())
                .map(|r| 1.0 / (1 + r) as f32)
                .collect(),
            model_version: "instant/1".into(),
            features: Vec::new(),
        })
    }
}

fn request_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("items.parquet");
    write_parquet(&synthetic_batch(ITEMS, DIM, CATEGORIES, 7), &path).expect("catalog fixture");
    let catalog = Arc::new(Catalog::open(&path).expect("catalog"));
    // Scattered over the catalog, as a search's candidates are.
    let found: Vec<(ItemIdx, f32)> = (0..ITEMS as u64)
        .map(|r| ((r * 0x9e37_79b9) % ITEMS as u64) as ItemIdx)
        .filter(|&idx| catalog.in_stock(idx))
        .take(CANDIDATES)
        .enumerate()
        .map(|(r, idx)| (idx, 1.0 - r as f32 / CANDIDATES as f32))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    bench_recommend(
        c,
        "request_path/warm_user_k10_200_candidates",
        &runtime,
        &catalog,
        &found,
    );
    // As a deployment runs it: metrics recorded (the chart sets --metrics-listen). Handles
    // the pipeline makes before a recorder exists record nothing, so a new recommender.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    bench_recommend(
        c,
        "request_path/warm_user_k10_200_candidates_metrics_on",
        &runtime,
        &catalog,
        &found,
    );
    let exposition = recorder.render();
    assert!(
        exposition.contains("tandem_stage_seconds"),
        "the stages' timings were recorded"
    );
}

/// One warm user's Recommend on a recommender of its own (its own state, logs and ledger).
fn bench_recommend(
    c: &mut Criterion,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    catalog: &Arc<Catalog>,
    found: &[(ItemIdx, f32)],
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(InMemoryState::new(
        StateLimits::default(),
        TrendingConfig::default(),
    ));
    let log = EventLogConfig {
        dir: dir.path().join("events"),
        segment_bytes: 64 << 20,
        export: false,
        retention: None,
    };
    let recommender = runtime.block_on(async {
        let (events, _) = EventIntake::open(
            &log,
            catalog.clone(),
            StateWriter::Local(state.clone()),
            1000,
            None,
        )
        .expect("event log");
        let served = ServedLog::start(ServedLogConfig {
            dir: dir.path().join("served"),
            queue: 1024,
            rows_per_file: 100_000,
            flush_interval: Duration::from_secs(60),
        })
        .expect("served log");
        Recommender::new(
            catalog.clone(),
            state.clone(),
            events,
            Stages {
                retrieval: Arc::new(InstantRetrieval {
                    catalog: catalog.clone(),
                    found: found.to_vec(),
                }),
                ranking: Arc::new(InstantRanking),
            },
            Settings::default(),
        )
        .with_experiments(Arc::new(ExperimentLedger::new(LedgerConfig::default())))
        .with_served_log(Arc::new(served), 0.01)
    });
    // A warm user: five clicks.
    runtime.block_on(async {
        let events: Vec<IncomingEvent> = (0..5)
            .map(|e| IncomingEvent {
                user_id: "bench".into(),
                item_id: catalog.item_id((1000 + 7 * e) as ItemIdx).into(),
                kind: Some(EventKind::Click),
                timestamp_ms: 0,
                event_id: String::new(),
            })
            .collect();
        recommender.record_events(&events).await.expect("events");
    });
    let mut n = 0u64;
    let mut request = || {
        n += 1;
        RecommendRequest {
            user_id: "bench".into(),
            k: Some(10),
            num_candidates: Some(CANDIDATES as u32),
            request_id: format!("request-{n}"),
            ..Default::default()
        }
    };
    // The e2e bench's user asks again and again: within 60 answers every candidate has been
    // shown three times and is demoted, the state criterion's warm-up leaves this user in.
    for _ in 0..10 {
        let answer = runtime
            .block_on(recommender.recommend(&request()))
            .expect("answer");
        assert_eq!(answer.items.len(), 10, "a full answer");
        assert_eq!(answer.model_version, "instant/1", "ranked, not degraded");
    }
    c.bench_function(name, |b| {
        b.iter_batched(
            &mut request,
            |req| black_box(runtime.block_on(recommender.recommend(&req))),
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = request_path
}
criterion_main!(benches);
