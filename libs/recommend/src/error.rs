/// Why a stage did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    /// The request is wrong; retrying or falling back won't help.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// Something the request named does not exist (a pinned model version).
    #[error("{0}")]
    NotFound(String),
    /// The stage is down, overloaded or too slow; the pipeline degrades.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    /// Something this request needs is down (the event log could not write).
    #[error("{0}")]
    Unavailable(String),
}

impl RecommendError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<tandem_retrieval::RetrievalError> for StageError {
    fn from(e: tandem_retrieval::RetrievalError) -> Self {
        match e {
            tandem_retrieval::RetrievalError::InvalidArgument { field, reason } => {
                Self::InvalidArgument {
                    field: field.to_owned(),
                    reason,
                }
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<tandem_ranking::RankingError> for StageError {
    fn from(e: tandem_ranking::RankingError) -> Self {
        use tandem_ranking::RankingError as E;
        match e {
            E::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: field.to_owned(),
                reason,
            },
            E::TooManyCandidates { got, max } => Self::InvalidArgument {
                field: "num_candidates".into(),
                reason: format!("ranking takes at most {max} candidates, got {got}"),
            },
            E::UnknownVersion(v) => Self::NotFound(format!("model_version: `{v}` is not loaded")),
            other @ (E::Runtime { .. }
            | E::Io { .. }
            | E::Spec { .. }
            | E::NoVersion(_)
            | E::InputMismatch { .. }
            | E::OutputMismatch { .. }
            | E::Inference { .. }
            | E::Overloaded { .. }
            | E::InvalidSplit(_)
            | E::Rejected { .. }
            | E::NonFiniteScores { .. }
            | E::Cuda(_)) => Self::Unavailable(other.to_string()),
        }
    }
}
