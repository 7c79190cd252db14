#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("the catalog has no items to index")]
    EmptyCatalog,
}

impl RetrievalError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
