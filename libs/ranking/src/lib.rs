//! Ranking: serves exported ONNX models through ONNX Runtime (`ort`, loaded dynamically) on
//! features assembled from a JSON feature spec.
//!
//! A model bundle is a directory `NAME/VERSION/` holding `model.onnx` and `feature_spec.json`.
//! The spec says, for each model input, its dtype and shape and where each column's values
//! come from; a version is refused at load when its graph disagrees with the spec or its
//! warm-up scores are not finite. Concurrent requests are batched into shared ORT runs
//! (`batcher`), versions are routed by user hash or pin and hot-reloaded (`registry`).

mod batcher;
mod error;
mod features;
mod history;
mod model;
mod prune;
mod registry;
mod session;
mod spec;
mod stats;

pub use batcher::BatchConfig;
pub use error::RankingError;
pub use features::{AssembledInput, Assembler, FeatureValues, InputValues, ScoreRequest, assemble};
pub use history::ItemHistory;
pub use model::{ModelVersion, RankerConfig};
pub use registry::{Ranker, RankerInfo, Rejection, Scores, SplitEntry, parse_split};
pub use session::{ActiveProvider, ExecutionProvider, init_runtime};
pub use spec::{
    FeatureSource, FeatureSpec, InputDtype, InputSpec, ModelMeta, OutputSpec, Transform,
};
pub use stats::StatsSnapshot;
