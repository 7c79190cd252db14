use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    #[error(
        "cannot load the ONNX Runtime library {path}: {message} (set ORT_DYLIB_PATH to libonnxruntime.so from the onnxruntime wheel; `make run` does)"
    )]
    Runtime { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("feature spec {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("no model version under {0} (expected VERSION/feature_spec.json)")]
    NoVersion(PathBuf),
    #[error("model input `{input}` does not match the feature spec: {problem}")]
    InputMismatch { input: String, problem: String },
    #[error("model output `{output}` does not match the feature spec: {problem}")]
    OutputMismatch { output: String, problem: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("too many candidates: {got}, at most {max}")]
    TooManyCandidates { got: usize, max: usize },
    #[error("ranking queue is full ({queued} rows waiting, at most {max}): retry later")]
    Overloaded { queued: usize, max: usize },
    #[error("model version `{0}` is not loaded")]
    UnknownVersion(String),
    #[error("traffic split: {0}")]
    InvalidSplit(String),
    #[error("model version `{version}` rejected: {reason}")]
    Rejected { version: String, reason: String },
    #[error("warm-up batch scored {value} on row {row}: the model gives non-finite scores")]
    NonFiniteScores { row: usize, value: f32 },
    #[error("CUDA execution provider: {0}")]
    Cuda(String),
    #[error("ONNX Runtime {stage}: {message}")]
    Inference {
        stage: &'static str,
        message: String,
    },
}

impl RankingError {
    pub(crate) fn inference(stage: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Inference {
            stage,
            message: e.to_string(),
        }
    }
}
