//! Dynamic batching under concurrency: every caller gets its own scores, in its own order,
//! exactly as an unbatched run gives them; a full queue refuses instead of growing.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_ranking::{BatchConfig, Ranker, RankingError, ScoreRequest};

fn random_request(rng: &mut StdRng, n_items: u32, dim: usize, user: usize) -> ScoreRequest {
    // Sizes from 1 to past max_rows, so some requests run alone.
    let size = if rng.random_bool(0.1) {
        rng.random_range(600..=1000)
    } else {
        rng.random_range(1..=300)
    };
    let items: Vec<u32> = (0..size).map(|_| rng.random_range(0..n_items)).collect();
    let mut user_vector: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let norm = user_vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    user_vector.iter_mut().for_each(|v| *v /= norm);
    ScoreRequest {
        user_id: format!("user-{user}"),
        user_vector,
        retrieval_scores: items.iter().map(|_| rng.random_range(0.0..1.0)).collect(),
        recent_items: (0..rng.random_range(0..30))
            .map(|_| rng.random_range(0..n_items))
            .collect(),
        context: [(
            "hour_of_day".to_owned(),
            rng.random_range(0..24).to_string(),
        )]
        .into(),
        items,
        version: None,
        history: Vec::new(),
        now_ms: 0,
    }
}

#[test]
fn concurrent_callers_each_get_their_own_scores_in_order() {
    let catalog = catalog();
    let model = test_data().join("models/seqranker");
    let reference = Ranker::open(&model, catalog.clone(), config(unbatched()), None).expect("load");
    let batched = Arc::new(
        Ranker::open(
            &model,
            catalog.clone(),
            config(BatchConfig {
                max_rows: 512,
                max_wait: std::time::Duration::from_millis(2),
                max_queued_rows: 1 << 20,
            }),
            None,
        )
        .expect("load"),
    );
    const THREADS: usize = 16;
    const PER_THREAD: usize = 12;
    let mut rng = StdRng::seed_from_u64(42);
    let work: Vec<Vec<(ScoreRequest, Vec<f32>)>> = (0..THREADS)
        .map(|t| {
            (0..PER_THREAD)
                .map(|i| {
                    let req =
                        random_request(&mut rng, catalog.len() as u32, catalog.dim(), t * 100 + i);
                    let want = reference
                        .rank_blocking(req.clone())
                        .expect("reference")
                        .scores;
                    (req, want)
                })
                .collect()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = work
        .into_iter()
        .map(|jobs| {
            let (ranker, barrier) = (batched.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for (req, want) in jobs {
                    let got = ranker.rank_blocking(req.clone()).expect("rank");
                    assert_close(&got.scores, &want, &req.user_id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("caller thread");
    }
    let stats = batched.info().versions[0].stats();
    assert_eq!(stats.requests, (THREADS * PER_THREAD) as u64);
    assert!(
        stats.runs < stats.requests,
        "concurrent requests should share runs: {} runs for {} requests",
        stats.runs,
        stats.requests
    );
}

#[test]
fn a_full_queue_refuses_new_requests_and_serves_the_rest() {
    let catalog = catalog();
    let ranker = Arc::new(
        Ranker::open(
            &test_data().join("models/seqranker"),
            catalog.clone(),
            tandem_ranking::RankerConfig {
                sessions: 1,
                ..config(BatchConfig {
                    max_rows: 0,
                    max_queued_rows: 1000,
                    ..batching()
                })
            },
            None,
        )
        .expect("load"),
    );
    let mut rng = StdRng::seed_from_u64(7);
    let req = ScoreRequest {
        items: (0..1000)
            .map(|_| rng.random_range(0..catalog.len() as u32))
            .collect(),
        ..random_request(&mut rng, catalog.len() as u32, catalog.dim(), 1)
    };
    let req = ScoreRequest {
        retrieval_scores: Vec::new(),
        ..req
    };
    let want = ranker.rank_blocking(req.clone()).expect("alone").scores;
    let barrier = Arc::new(Barrier::new(32));
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let (ranker, barrier, req) = (ranker.clone(), barrier.clone(), req.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ranker.rank_blocking(req)
            })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for h in handles {
        match h.join().expect("thread") {
            Ok(got) => {
                assert_close(&got.scores, &want, "served under overload");
                served += 1;
            }
            Err(RankingError::Overloaded { max: 1000, .. }) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(served >= 1, "the first request is always queued");
    assert!(
        refused >= 1,
        "32 simultaneous 1000-row requests overflow a 1000-row queue"
    );
}
