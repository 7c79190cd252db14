//! Ranking: runs an exported ONNX model through ONNX Runtime (`ort`, loaded dynamically) on
//! features assembled from a JSON feature spec.
//!
//! A model bundle is a directory `NAME/VERSION/` holding `model.onnx` and `feature_spec.json`.
//! The spec says, for each model input, its dtype and shape and where each column's values
//! come from; the model is refused at load when its inputs or output disagree with the spec.

mod error;
mod features;
mod model;
mod spec;

pub use error::RankingError;
pub use features::assemble;
pub use model::{RankRequest, Ranker, RankerConfig, Scores, init_runtime};
pub use spec::{FeatureSource, FeatureSpec, InputSpec, ModelMeta, OutputSpec, Transform};
