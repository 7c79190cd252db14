use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("the catalog has no items to index")]
    EmptyCatalog,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("this index takes no writes: it was started without a state directory")]
    ReadOnly,
}

impl RetrievalError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
