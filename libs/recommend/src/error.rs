//! The request path's errors. `StageError` is what a stage (in process or remote) answers;
//! `RecommendError` what a Recommend answers. Every conversion is exhaustive
//! (`clippy::wildcard_enum_match_arm` is denied here): a new variant must be given a kind.
#![deny(clippy::wildcard_enum_match_arm)]

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

impl From<StageError> for RecommendError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::InvalidArgument { field, reason } => {
                Self::InvalidArgument { field, reason }
            }
            StageError::NotFound(what) => Self::NotFound(what),
            StageError::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

impl From<tandem_retrieval::RetrievalError> for StageError {
    fn from(e: tandem_retrieval::RetrievalError) -> Self {
        use tandem_retrieval::RetrievalError as E;
        match e {
            E::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: field.to_owned(),
                reason,
            },
            other @ (E::EmptyCatalog | E::ReadOnly | E::Io { .. } | E::Corrupt { .. }) => {
                Self::Unavailable(other.to_string())
            }
        }
    }
}

/// Resolving the request's filter against the catalog: only its fields can be wrong.
impl From<tandem_retrieval::RetrievalError> for RecommendError {
    fn from(e: tandem_retrieval::RetrievalError) -> Self {
        StageError::from(e).into()
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
