//! Shared by the ranking tests: the pipeline's test data, libonnxruntime, reference cases.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_catalog::Catalog;
use tandem_ranking::{BatchConfig, ExecutionProvider, ItemHistory, RankerConfig, ScoreRequest};

pub fn test_data() -> PathBuf {
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

pub fn config(batch: BatchConfig) -> RankerConfig {
    let dylib = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so: run `make test`");
    RankerConfig {
        ort_dylib_path: dylib.into(),
        execution_provider: ExecutionProvider::Cpu,
        sessions: 2,
        intra_threads: 1,
        max_candidates: 1000,
        batch,
    }
}

pub fn batching() -> BatchConfig {
    BatchConfig {
        max_rows: 2048,
        max_wait: Duration::from_micros(500),
        max_queued_rows: 1 << 20,
    }
}

pub fn unbatched() -> BatchConfig {
    BatchConfig {
        max_rows: 0,
        ..batching()
    }
}

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::open(&test_data().join("items.parquet")).expect("catalog"))
}

#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    pub model_version: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Case {
    pub user_id: String,
    pub query_vector: Vec<f32>,
    pub item_ids: Vec<String>,
    pub retrieval_scores: Vec<f32>,
    #[serde(default)]
    pub recent_item_ids: Vec<String>,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(default)]
    pub now_ms: i64,
    pub scores: Vec<f32>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct HistoryEntry {
    pub item_id: String,
    pub purchases: u32,
    pub last_purchase_ms: i64,
    pub events: u32,
    pub last_event_ms: i64,
}

pub fn reference(file: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(test_data().join(file)).expect("reference"))
        .expect("json")
}

impl Case {
    pub fn request(&self, catalog: &Catalog) -> ScoreRequest {
        let idx = |id: &String| catalog.idx_of(id).expect("known item");
        ScoreRequest {
            user_id: self.user_id.clone(),
            user_vector: self.query_vector.clone(),
            items: self.item_ids.iter().map(idx).collect(),
            retrieval_scores: self.retrieval_scores.clone(),
            recent_items: self.recent_item_ids.iter().map(idx).collect(),
            context: self.context.clone(),
            version: None,
            history: self
                .history
                .iter()
                .map(|h| ItemHistory {
                    item: idx(&h.item_id),
                    purchases: h.purchases,
                    last_purchase_ms: h.last_purchase_ms,
                    events: h.events,
                    last_event_ms: h.last_event_ms,
                })
                .collect(),
            now_ms: self.now_ms,
        }
    }
}

pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: one score per candidate");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "{what} row {i}: tandem {a} vs expected {b}"
        );
    }
}

/// Copies a bundle directory to `to`, editing its spec.
pub fn copy_bundle(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).expect("copy model");
    let mut spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(from.join("feature_spec.json")).expect("read spec"),
    )
    .expect("json");
    edit(&mut spec);
    std::fs::write(to.join("feature_spec.json"), spec.to_string()).expect("write spec");
}
