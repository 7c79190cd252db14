//! Error types. Config errors (exit status 2) are everything that can be known wrong before a
//! single call is sent; run errors (exit status 1) are what the server or network did.

use std::path::PathBuf;

use crate::duration::DurationError;
use crate::template::TemplateError;

/// Something wrong with the settings, found before any call is sent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name} is not valid JSON: {error}")]
    Json { source_name: String, error: String },
    #[error("{0} must be a JSON object")]
    NotAnObject(String),
    #[error("unknown config key {key:?}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("ghz option {key:?} is not supported by tandem-load: {why}")]
    Unsupported { key: String, why: String },
    #[error("config key {key:?} must be {expected}, got {got}")]
    WrongType {
        key: String,
        expected: &'static str,
        got: String,
    },
    #[error("config key {key:?}: bad duration: {source}")]
    BadDuration { key: String, source: DurationError },
    #[error("config key {key:?}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{key} is required (set {how})")]
    Missing {
        key: &'static str,
        how: &'static str,
    },
    #[error("{location}: {source}")]
    Template {
        location: String,
        source: TemplateError,
    },
    #[error("{location} does not match {message_type}: {error}")]
    Data {
        location: String,
        message_type: String,
        error: String,
    },
    #[error("call {call:?} not found in the {source_name}{}", if available.is_empty() { String::new() } else { format!("; available: {}", available.join(", ")) })]
    CallNotFound {
        call: String,
        source_name: String,
        available: Vec<String>,
    },
    #[error("call {call:?} is {kind}; tandem-load sends unary calls only")]
    NotUnary { call: String, kind: &'static str },
    #[error("metadata key {key:?}: {reason}")]
    Metadata { key: String, reason: String },
    #[error("cannot load descriptors from {source_name}: {error}")]
    Descriptors { source_name: String, error: String },
}

/// A failure after the settings were accepted: connecting, reflection, writing the report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to {host}: {error}")]
    Connect { host: String, error: String },
    #[error("server reflection on {host} failed: {error}")]
    Reflection { host: String, error: String },
    #[error("cannot write report to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// Either kind, so callers can map to the exit status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Error {
    /// 2 for bad settings (nothing was sent), 1 for failures of the run itself.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Run(_) => 1,
        }
    }
}
