//! Every user event tandem accepted, kept so that none is lost: an append-only log of
//! segments on disk, group-committed (one fsync for all the batches that arrived during the
//! previous one) before the caller is answered, replayed at start-up to rebuild user state,
//! and rolled into Parquet files partitioned by day for the models pipeline to train from.
//!
//! Retried deliveries are recognised by their event id ([`SeenIds`]). A sample of what was
//! served, with the model's features, goes to Parquet too ([`ServedLog`]).

mod dedupe;
mod erase;
mod error;
mod export;
mod follow;
mod log;
mod record;
mod served;

pub use dedupe::SeenIds;
pub use erase::{Erased, erase_from_parquet};
pub use error::EventLogError;
pub use export::{EXPORT_DIR, export_segment, read_exported};
pub use follow::LogFollower;
pub use log::{EventLog, EventLogConfig, Replayed, log_id, read_log};
pub use record::{Logged, LoggedEvent, kind_code, kind_from_code};
pub use served::{ServedCandidate, ServedFeature, ServedLog, ServedLogConfig, ServedRecord};
