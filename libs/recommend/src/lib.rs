//! The request path: user state → plan → retrieval → ranking → business rules.
//!
//! Stages are traits ([`CandidateStage`], [`ScoringStage`]) with an in-process and a gRPC
//! implementation each (`stages/`); the pipeline (`pipeline.rs`, with its steps in
//! `plan.rs` and `finish.rs`) is given one of each and never learns which.

mod checkpoint;
mod error;
mod events;
mod finish;
mod pipeline;
mod plan;
mod reasons;
mod rules;
mod sources;
mod stages;

pub use checkpoint::{CheckpointWritten, checkpoint_dir};
pub use error::{RecommendError, StageError};
pub use events::{EventIntake, IncomingEvent, Recorded, Rejection, StateWriter, UserErased};
pub use pipeline::{
    Budgets, DEFAULT_K, DEFAULT_NUM_CANDIDATES, Forgotten, MAX_EVENTS_PER_BATCH, MAX_K,
    MAX_NUM_CANDIDATES, RETRIEVAL_ORDER_VERSION, RecommendRequest, Recommendation, RecommendedItem,
    Recommender, RepeatPurchases, Settings, Stages, TRENDING_VERSION,
};
pub use rules::{RuleEffect, RulesConfig};
pub use sources::CandidateSources;
pub use stages::{
    Candidate, CandidateStage, InProcessRanking, InProcessRetrieval, ItemStatus, RemoteRanking,
    RemoteRetrieval, Retrieved, Scored, ScoringStage, StageConnection,
};
