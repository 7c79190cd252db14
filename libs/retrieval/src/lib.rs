//! Candidate retrieval: an HNSW index (hnsw_rs) over the catalog's embeddings, searched under
//! attribute filters.
//!
//! The metric is inner product, as the embeddings carry popularity in their norm. HNSW here
//! runs on cosine distance, so items are mapped onto the unit sphere with one extra coordinate
//! (the MIPS-to-cosine reduction): for R = the largest item norm, x ↦ [x/R, √(1 − |x|²/R²)] and a
//! unit query q ↦ [q, 0], whose dot product is q·x/R, ordered as q·x.

mod error;
mod filter;
mod index;

pub use error::RetrievalError;
pub use filter::{FilterSpec, ItemFilter};
pub use index::{Candidate, Index, IndexParams, SearchParams};
