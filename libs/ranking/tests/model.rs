//! The model contract: parity with Python onnxruntime on both reference models, refusals that
//! name what differs, and requests that are rejected before they reach ORT.
//! Needs the pipeline's test data and libonnxruntime: `make test` provides both.

mod common;

use common::*;
use tandem_ranking::{Ranker, RankingError, ScoreRequest};

fn parity(model: &str, reference_file: &str) {
    let catalog = catalog();
    let reference = reference(reference_file);
    assert!(!reference.cases.is_empty());
    for batch in [unbatched(), batching()] {
        let ranker = Ranker::open(
            &test_data().join("models").join(model),
            catalog.clone(),
            config(batch),
            None,
        )
        .expect("load");
        for case in &reference.cases {
            let got = ranker.rank_blocking(case.request(&catalog)).expect("rank");
            assert_eq!(got.model_version, reference.model_version);
            assert_close(&got.scores, &case.scores, &case.user_id);
        }
    }
}

#[test]
fn mlp_scores_equal_python_onnxruntime() {
    parity("ranker", "rank_reference.json");
}

#[test]
fn multi_input_model_scores_equal_python_onnxruntime() {
    parity("seqranker", "seq_rank_reference.json");
}

#[test]
fn history_model_scores_equal_python_onnxruntime() {
    parity("history-ranker", "history_rank_reference.json");
}

/// The history features are model inputs: the same candidates score differently without the
/// user's history, or a year later.
#[test]
fn the_users_history_and_the_time_change_the_history_model_scores() {
    let catalog = catalog();
    let ranker = Ranker::open(
        &test_data().join("models/history-ranker"),
        catalog.clone(),
        config(unbatched()),
        None,
    )
    .expect("load");
    let case = &reference("history_rank_reference.json").cases[0];
    assert!(!case.history.is_empty());
    let full = ranker.rank_blocking(case.request(&catalog)).expect("rank");
    let forgotten = ranker
        .rank_blocking(ScoreRequest {
            history: Vec::new(),
            ..case.request(&catalog)
        })
        .expect("rank");
    assert_ne!(full.scores, forgotten.scores, "history is a model input");
    let later = ranker
        .rank_blocking(ScoreRequest {
            now_ms: case.now_ms + 365 * 86_400_000,
            ..case.request(&catalog)
        })
        .expect("rank");
    assert_ne!(
        full.scores, later.scores,
        "the request time is a model input"
    );
}

#[test]
fn the_sequence_and_context_change_the_multi_input_scores() {
    let catalog = catalog();
    let ranker = Ranker::open(
        &test_data().join("models/seqranker"),
        catalog.clone(),
        config(unbatched()),
        None,
    )
    .expect("load");
    let case = &reference("seq_rank_reference.json").cases[0];
    let full = ranker.rank_blocking(case.request(&catalog)).expect("rank");
    let no_history = ranker
        .rank_blocking(ScoreRequest {
            recent_items: Vec::new(),
            ..case.request(&catalog)
        })
        .expect("rank");
    assert_ne!(
        full.scores, no_history.scores,
        "recent items are a model input"
    );
    let other_hour = ranker
        .rank_blocking(ScoreRequest {
            context: [("hour_of_day".to_owned(), "23.5".to_owned())].into(),
            ..case.request(&catalog)
        })
        .expect("rank");
    assert_ne!(full.scores, other_hour.scores, "context is a model input");
}

fn open_err(dir: &std::path::Path) -> RankingError {
    Ranker::open(dir, catalog(), config(unbatched()), None).expect_err("must be refused")
}

#[test]
fn spec_mismatch_names_the_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ranker_v1 = test_data().join("models/ranker/1");
    let seq_v1 = test_data().join("models/seqranker/1");

    let dir = tmp.path().join("renamed/1");
    copy_bundle(&ranker_v1, &dir, |s| {
        s["inputs"][0]["name"] = "dense".into()
    });
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::InputMismatch { input, .. } if input == "dense"),
        "{err}"
    );

    // Drop the one-hot block (and shrink the declared shape to match): the model wants more.
    let dir = tmp.path().join("narrower/1");
    copy_bundle(&ranker_v1, &dir, |s| {
        let features = s["inputs"][0]["features"].as_array_mut().expect("features");
        let last = features.pop().expect("one feature");
        let width = s["inputs"][0]["shape"][1].as_i64().expect("width")
            - last["width"].as_i64().expect("w");
        s["inputs"][0]["shape"][1] = width.into();
    });
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::InputMismatch { input, problem } if input == "features" && problem.contains("shape")),
        "{err}"
    );

    let dir = tmp.path().join("bad_output/1");
    copy_bundle(&ranker_v1, &dir, |s| s["output"]["name"] = "scores".into());
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::OutputMismatch { output, .. } if output == "scores"),
        "{err}"
    );

    // The multi-input model: a shorter sequence than the graph takes.
    let dir = tmp.path().join("short_sequence/1");
    copy_bundle(&seq_v1, &dir, |s| {
        s["inputs"][2]["features"][0]["width"] = 10.into();
        s["inputs"][2]["shape"][1] = 10.into();
    });
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::InputMismatch { input, problem } if input == "recent_items" && problem.contains("shape")),
        "{err}"
    );

    // A spec that leaves out one of the graph's inputs.
    let dir = tmp.path().join("missing_input/1");
    copy_bundle(&seq_v1, &dir, |s| {
        s["inputs"].as_array_mut().expect("inputs").remove(1);
    });
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::InputMismatch { input, problem } if input == "category" && problem.contains("spec does not describe")),
        "{err}"
    );

    // An id feature in a float32 tensor is refused by the spec check, naming the input.
    let dir = tmp.path().join("wrong_dtype/1");
    copy_bundle(&seq_v1, &dir, |s| {
        s["inputs"][1]["dtype"] = "float32".into()
    });
    let err = open_err(&dir);
    assert!(
        matches!(&err, RankingError::Spec { message, .. } if message.contains("`category`")),
        "{err}"
    );
}

#[test]
fn broken_models_are_refused() {
    let fixtures = test_data().join("fixtures");
    let err = open_err(&fixtures.join("nan_model"));
    assert!(matches!(err, RankingError::NonFiniteScores { .. }), "{err}");
    let err = open_err(&fixtures.join("garbage_model"));
    assert!(
        matches!(
            &err,
            RankingError::Inference {
                stage: "session",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_requests_are_rejected_not_run() {
    let catalog = catalog();
    let ranker = Ranker::open(
        &test_data().join("models/seqranker"),
        catalog.clone(),
        config(batching()),
        None,
    )
    .expect("load");
    let dim = catalog.dim();
    let ok = ScoreRequest {
        user_id: "u".into(),
        user_vector: vec![0.1; dim],
        items: (0..3).collect(),
        ..ScoreRequest::default()
    };
    let field = |req: ScoreRequest| match ranker.rank_blocking(req) {
        Err(RankingError::InvalidArgument { field, .. }) => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let err = ranker
        .rank_blocking(ScoreRequest {
            items: (0..1001).collect(),
            ..ok.clone()
        })
        .expect_err("too many");
    assert!(matches!(
        err,
        RankingError::TooManyCandidates {
            got: 1001,
            max: 1000
        }
    ));
    assert_eq!(
        field(ScoreRequest {
            user_vector: vec![0.1; dim - 1],
            ..ok.clone()
        }),
        "user.query_vector"
    );
    let mut nan = vec![0.1; dim];
    nan[0] = f32::NAN;
    assert_eq!(
        field(ScoreRequest {
            user_vector: nan,
            ..ok.clone()
        }),
        "user.query_vector"
    );
    assert_eq!(
        field(ScoreRequest {
            context: [("hour_of_day".to_owned(), "noon".to_owned())].into(),
            ..ok.clone()
        }),
        "user.context"
    );
    assert_eq!(
        field(ScoreRequest {
            retrieval_scores: vec![1.0],
            ..ok.clone()
        }),
        "candidates.retrieval_score"
    );
    assert_eq!(
        field(ScoreRequest {
            retrieval_scores: vec![0.5, f32::INFINITY, 0.5],
            ..ok.clone()
        }),
        "candidates.retrieval_score"
    );
    let outside = catalog.len() as u32;
    match ranker.rank_blocking(ScoreRequest {
        items: vec![0, outside, 1],
        ..ok.clone()
    }) {
        Err(RankingError::InvalidArgument { field, reason }) => {
            assert_eq!(field, "candidates");
            assert!(reason.contains(&outside.to_string()), "{reason}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let err = ranker
        .rank_blocking(ScoreRequest {
            version: Some("7".into()),
            ..ok.clone()
        })
        .expect_err("unknown version");
    assert!(matches!(err, RankingError::UnknownVersion(v) if v == "7"));

    let scores = ranker.rank_blocking(ok).expect("rank");
    assert_eq!(scores.scores.len(), 3);
    assert!(scores.scores.iter().all(|s| (0.0..=1.0).contains(s)));
}

#[test]
fn execution_provider_cuda_fails_clearly_and_auto_falls_back_to_cpu() {
    use tandem_ranking::{ActiveProvider, ExecutionProvider, RankerConfig};
    let model = test_data().join("models/ranker");
    let with = |provider| RankerConfig {
        execution_provider: provider,
        ..config(unbatched())
    };
    // CI machines have no GPU and the CPU wheel has no CUDA provider: `cuda` must refuse.
    match Ranker::open(&model, catalog(), with(ExecutionProvider::Cuda), None) {
        Err(RankingError::Cuda(why)) => assert!(!why.is_empty()),
        Err(other) => panic!("expected a CUDA error, got {other}"),
        // A machine with the GPU wheel and a GPU may run it; then it must say so.
        Ok(r) => assert_eq!(r.info().versions[0].provider(), ActiveProvider::Cuda),
    }
    let auto = Ranker::open(&model, catalog(), with(ExecutionProvider::Auto), None).expect("auto");
    let provider = auto.info().versions[0].provider();
    let case = &reference("rank_reference.json").cases[0];
    let scores = auto.rank_blocking(case.request(&catalog())).expect("rank");
    if provider == ActiveProvider::Cpu {
        assert_close(&scores.scores, &case.scores, "auto on cpu");
    }
}

/// The parity tests above score the pruned graphs; this pins what was pruned.
#[test]
fn nodes_the_score_does_not_need_are_pruned_at_load() {
    let catalog = catalog();
    // skl2onnx's label branch feeds only `label`; the sequence model has one output.
    for (model, pruned) in [("ranker", 4), ("seqranker", 0)] {
        let ranker = Ranker::open(
            &test_data().join("models").join(model),
            catalog.clone(),
            config(unbatched()),
            None,
        )
        .expect("load");
        assert_eq!(ranker.info().versions[0].pruned_nodes(), pruned, "{model}");
    }
}
