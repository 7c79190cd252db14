//! Candidate retrieval: an HNSW graph over the catalog's embeddings, searched under attribute
//! filters.
//!
//! hnsw_rs builds the graph; [`graph`] holds the read-only copy queries run on, `codes` the
//! 8-bit codes its walk scores on, [`kernels`] the SIMD distances, [`space`] the metric (inner
//! product by default) and [`filter`] what a request may return.

mod codes;
mod error;
mod filter;
mod graph;
mod index;
pub mod kernels;
mod rows;
mod snapshot;
mod space;
mod wal;

pub use error::RetrievalError;
pub use filter::{Attributes, FilterSpec, ItemFilter};
pub use graph::SearchStats;
pub use index::{
    Candidate, CurrentItem, CurrentItems, Index, IndexCounts, IndexMemory, IndexParams, MAX_K,
    SearchParams, Shard, WriteOutcome,
};
pub use rows::ItemUpdate;
pub use space::{Metric, Space};
pub use wal::{Mutation, Wal};
