#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    #[error("{0}")]
    Config(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("Redis answered something unexpected: {0}")]
    Unexpected(String),
    #[error("event log: {0}")]
    Log(#[from] tandem_events::EventLogError),
}
