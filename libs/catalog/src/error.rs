use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open catalog {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read catalog {path} as Parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("catalog {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error("catalog column `{column}`: {reason}")]
    Column {
        column: &'static str,
        reason: String,
    },
    #[error("catalog column `{column}`: {reason}")]
    ExtraColumn { column: String, reason: String },
    #[error("co-occurrence table {path}: {reason}")]
    Related { path: PathBuf, reason: String },
    #[error("catalog has duplicate item id `{0}`")]
    DuplicateItemId(String),
    #[error("catalog {0} has no items")]
    Empty(PathBuf),
}
