//! A store that applies this log's records elsewhere (a Redis shared by several gateways)
//! follows the log instead of being written by the request path: the log stays the source of
//! truth, and whatever the store loses is applied again from the log.

use std::path::Path;
use std::sync::Arc;

use crate::Logged;

/// What the event intake asks of a shared state store.
#[async_trait::async_trait]
pub trait LogFollower: Send + Sync + 'static {
    /// Claims producer event ids `(user_id, event_id)` across every gateway: `true` where
    /// the id is new. `None` when the store cannot answer (this gateway's own window of
    /// recent ids is then the only retry check).
    async fn claim(&self, ids: &[(&str, &str)]) -> Option<Vec<bool>>;
    /// Gives back ids claimed for events that were not logged after all, so that the
    /// producer's retry is taken.
    async fn release(&self, ids: &[(&str, &str)]);
    /// A record this gateway just logged as `seq` (records arrive here in any order; the
    /// follower applies them in log order). Resolves `true` once the record is visible to
    /// every gateway, `false` when it is left to the follower's catch-up from the log (the
    /// store is out of reach).
    async fn committed(&self, seq: u64, record: Arc<Logged>) -> bool;
    /// Tells the other gateways on the store that `user_id` was erased here, so each erases
    /// them from its own log, exports and served-feature log too. `false`: not delivered
    /// (the store is out of reach).
    async fn announce_erasure(&self, user_id: &str) -> bool;
    /// Starts following the log in `dir` (its earlier records are applied in the background
    /// from wherever the store got to), once, after the log is open at `last_seq`.
    fn start(&self, dir: &Path, last_seq: u64) -> Result<(), crate::EventLogError>;
}
