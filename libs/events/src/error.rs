use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: parquet: {reason}")]
    Parquet { path: PathBuf, reason: String },
    /// The writer stopped (a failed write or fsync); nothing is acknowledged after that.
    #[error("the event log is closed: {0}")]
    Closed(String),
}

impl EventLogError {
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
