//! Needs the pipeline's test data and libonnxruntime: `make test` provides both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_ranking::{RankRequest, Ranker, RankerConfig, RankingError};

fn test_data() -> PathBuf {
    let dir = std::env::var_os("TANDEM_TEST_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/test"),
        PathBuf::from,
    );
    assert!(
        dir.join("items.parquet").is_file(),
        "{} has no test data: run `make test`, which generates it",
        dir.display()
    );
    dir
}

fn config() -> RankerConfig {
    let dylib = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so: run `make test`");
    RankerConfig {
        ort_dylib_path: dylib.into(),
        sessions: 2,
        intra_threads: 1,
        max_candidates: 1000,
    }
}

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::open(&test_data().join("items.parquet")).expect("catalog"))
}

#[derive(serde::Deserialize)]
struct Reference {
    model_version: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    query_vector: Vec<f32>,
    item_ids: Vec<String>,
    retrieval_scores: Vec<f32>,
    scores: Vec<f32>,
}

#[test]
fn scores_equal_python_onnxruntime() {
    let data = test_data();
    let catalog = catalog();
    let ranker =
        Ranker::load(&data.join("models/ranker"), catalog.clone(), config()).expect("load");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(data.join("rank_reference.json")).expect("reference"),
    )
    .expect("json");
    assert_eq!(ranker.version(), reference.model_version);
    assert!(!reference.cases.is_empty());
    for case in &reference.cases {
        let items: Vec<u32> = case
            .item_ids
            .iter()
            .map(|id| catalog.idx_of(id).expect("known item"))
            .collect();
        let got = ranker
            .rank(RankRequest {
                user_vector: &case.query_vector,
                items: &items,
                retrieval_scores: &case.retrieval_scores,
            })
            .expect("rank");
        assert_eq!(got.scores.len(), case.scores.len());
        for (i, (a, b)) in got.scores.iter().zip(&case.scores).enumerate() {
            assert!((a - b).abs() <= 1e-5, "row {i}: tandem {a} vs python {b}");
        }
    }
}

/// Copies the bundle with its spec edited.
fn bundle_with(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = test_data().join("models/ranker/1");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("model.onnx"), dir.path().join("model.onnx")).expect("copy");
    let mut spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("feature_spec.json")).expect("read"),
    )
    .expect("json");
    edit(&mut spec);
    std::fs::write(dir.path().join("feature_spec.json"), spec.to_string()).expect("write");
    dir
}

#[test]
fn spec_mismatch_names_the_input() {
    let renamed = bundle_with(|s| s["inputs"][0]["name"] = "dense".into());
    let err = Ranker::load(renamed.path(), catalog(), config()).expect_err("renamed input");
    assert!(
        matches!(&err, RankingError::InputMismatch { input, .. } if input == "dense"),
        "{err}"
    );

    // Drop the one-hot block (and shrink the declared shape to match): the model wants 92 columns.
    let narrower = bundle_with(|s| {
        let features = s["inputs"][0]["features"].as_array_mut().expect("features");
        let last = features.pop().expect("one feature");
        let width = s["inputs"][0]["shape"][1].as_i64().expect("width")
            - last["width"].as_i64().expect("w");
        s["inputs"][0]["shape"][1] = width.into();
    });
    let err = Ranker::load(narrower.path(), catalog(), config()).expect_err("narrower input");
    assert!(
        matches!(&err, RankingError::InputMismatch { input, problem } if input == "features" && problem.contains("shape")),
        "{err}"
    );

    let bad_output = bundle_with(|s| s["output"]["name"] = "scores".into());
    let err = Ranker::load(bad_output.path(), catalog(), config()).expect_err("output");
    assert!(
        matches!(&err, RankingError::OutputMismatch { output, .. } if output == "scores"),
        "{err}"
    );
}

#[test]
fn bad_requests_are_rejected_not_run() {
    let catalog = catalog();
    let ranker = Ranker::load(
        &test_data().join("models/ranker"),
        catalog.clone(),
        config(),
    )
    .expect("load");
    let dim = catalog.dim();
    let items: Vec<u32> = (0..1001).collect();
    let err = ranker
        .rank(RankRequest {
            user_vector: &vec![0.1; dim],
            items: &items,
            retrieval_scores: &[],
        })
        .expect_err("too many");
    assert!(matches!(
        err,
        RankingError::TooManyCandidates {
            got: 1001,
            max: 1000
        }
    ));
    let err = ranker
        .rank(RankRequest {
            user_vector: &vec![0.1; dim - 1],
            items: &items[..3],
            retrieval_scores: &[],
        })
        .expect_err("short vector");
    assert!(matches!(
        err,
        RankingError::InvalidArgument {
            field: "user.query_vector",
            ..
        }
    ));
    let mut nan = vec![0.1; dim];
    nan[0] = f32::NAN;
    let err = ranker
        .rank(RankRequest {
            user_vector: &nan,
            items: &items[..3],
            retrieval_scores: &[],
        })
        .expect_err("nan");
    assert!(matches!(
        err,
        RankingError::InvalidArgument {
            field: "user.query_vector",
            ..
        }
    ));
    let ok = ranker
        .rank(RankRequest {
            user_vector: &vec![0.1; dim],
            items: &items[..3],
            retrieval_scores: &[],
        })
        .expect("rank");
    assert_eq!(ok.scores.len(), 3);
    assert!(ok.scores.iter().all(|s| (0.0..=1.0).contains(s)));
}
