//! The two stages as the request path sees them: [`CandidateStage`] finds items near a query
//! and says what it holds now, [`ScoringStage`] scores them. Each has one implementation that
//! runs in this process and one that calls the stage's gRPC server; the pipeline is given one
//! of each and never learns which.
//!
//! Both speak in the gateway catalog's item indexes: the implementations translate to the
//! index's rows or to item ids on the wire, once, at their edge.

use std::time::Instant;

use async_trait::async_trait;
use tandem_catalog::{Catalog, ItemAttributes, ItemIdx};
use tandem_ranking::{FeatureValues, ScoreRequest};
use tandem_retrieval::ItemFilter;

use crate::StageError;

mod in_process;
mod remote;

pub use in_process::{InProcessRanking, InProcessRetrieval};
pub use remote::{RemoteRanking, RemoteRetrieval, StageConnection};

/// An item retrieval found, as it holds it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub idx: ItemIdx,
    /// Similarity to the query under the index's metric; larger is better.
    pub score: f32,
    /// The item as retrieval holds it now; `None` when that is exactly as the pipeline's
    /// catalog states it (an index in this process that loaded the same catalog and has
    /// changed none of its items). Then the attributes are read from the catalog only for
    /// the few candidates an answer reaches, not for all the hundreds a search returns.
    pub attributes: Option<ItemAttributes>,
}

impl Candidate {
    /// The item's current attributes; `catalog` is the pipeline's.
    pub fn attributes_in(&self, catalog: &Catalog) -> ItemAttributes {
        self.attributes
            .clone()
            .unwrap_or_else(|| catalog.attributes(self.idx))
    }
}

/// What retrieval returned: distinct candidates best first, and why they may be incomplete (a
/// shard that failed or missed its deadline).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retrieved {
    pub candidates: Vec<Candidate>,
    pub partial: Option<String>,
}

/// What retrieval knows about one item now.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemStatus {
    Present(ItemAttributes),
    /// Deleted, or never held.
    Gone,
    /// The part of retrieval that holds it did not answer.
    Unknown,
}

#[async_trait]
pub trait CandidateStage: Send + Sync {
    /// The `k` items nearest `query` that `filter` admits on their current attributes, best
    /// first. Items this catalog does not hold (upserted since it was written) are left out:
    /// nothing downstream could score or show them. `deadline`: when the caller stops waiting
    /// (a remote stage is told, as `grpc-timeout`, and stops too).
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
        deadline: Option<Instant>,
    ) -> Result<Retrieved, StageError>;

    /// `items` as the stage holds them now, one status each, in order: how the pipeline checks
    /// items that did not come from `search` (trending and popular backfill).
    async fn items(
        &self,
        items: &[ItemIdx],
        deadline: Option<Instant>,
    ) -> Result<Vec<ItemStatus>, StageError>;
}

/// What ranking answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    /// One per candidate, in request order.
    pub scores: Vec<f32>,
    pub model_version: String,
    /// With `with_features`: each feature's values for every candidate (rows in order).
    pub features: Vec<FeatureValues>,
}

#[async_trait]
pub trait ScoringStage: Send + Sync {
    /// One score per item of `request`, in order, and the model version that produced them;
    /// `with_features` also returns the model's input values (explain, served-feature log).
    /// `deadline` as for [`CandidateStage::search`].
    async fn score(
        &self,
        request: ScoreRequest,
        with_features: bool,
        deadline: Option<Instant>,
    ) -> Result<Scored, StageError>;
}
