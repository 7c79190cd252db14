//! The two-stage recommendation path: user state → query → retrieval → ranking → rules.
//!
//! Stages are traits so the same pipeline runs with them in-process (embedded topology)
//! or behind gRPC (split topology; the gateway service implements the remote stages).

mod availability;
mod error;
mod events;
mod pipeline;
mod rules;
mod stages;

pub use error::{RecommendError, StageError};
pub use events::{EventIntake, IncomingEvent, Recorded, Rejection};
pub use pipeline::{
    Budgets, DEFAULT_K, DEFAULT_NUM_CANDIDATES, MAX_EVENTS_PER_BATCH, MAX_K, MAX_NUM_CANDIDATES,
    RETRIEVAL_ORDER_VERSION, RecommendRequest, Recommendation, RecommendedItem, Recommender,
    Settings, Stages, TRENDING_VERSION,
};
pub use rules::{RuleEffect, RulesConfig};
pub use stages::{
    CandidateStage, InProcessRanking, InProcessRetrieval, ItemNow, ItemStatus, RemoteRanking,
    RemoteRetrieval, Retrieved, Scored, ScoringContext, ScoringStage,
};
