//! What tandem knows about users right now: their recent events (bounded), what they bought,
//! what they were shown and ignored, which items trend, and the query vector built from a
//! user's events and the page context.
//!
//! State sits behind [`StateStore`] so a store shared by several gateway replicas can replace
//! the in-process one without touching the callers.

mod checkpoint;
mod history;
mod in_memory;
mod query;
mod trending;

pub use checkpoint::{SnapshotDecoder, StateSnapshot};
pub use history::{
    EventKind, ItemMap, Purchases, Shown, StateStore, StateUnavailable, UserEvent, UserHistory,
};
pub use in_memory::{InMemoryState, StateLimits};
pub use query::{QueryConfig, query_vector};
pub use trending::TrendingConfig;
