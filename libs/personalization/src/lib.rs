//! What tandem knows about a user right now: their recent events (bounded), what they bought,
//! and the query vector built from those events and the page context.
//!
//! History sits behind [`HistoryStore`] so a shared store for several gateway replicas can
//! replace the in-process one without touching the callers.

mod history;
mod query;

pub use history::{EventKind, HistoryStore, InMemoryHistory, UserEvent, UserHistory};
pub use query::{QueryConfig, query_vector};
