//! User state shared by every gateway replica, in Redis: an event acknowledged by one gateway
//! is in the next answer of any other.
//!
//! Redis is not the source of truth: each gateway's event log is. Writes reach Redis only by
//! following the log (one script call per logged batch, in log order, recording how far
//! each gateway's log is applied, see `scripts.rs`), so a Redis that is stopped, restarted
//! empty or restored from an old snapshot is caught up from the logs, and a gateway that
//! cannot reach it still acknowledges events (they are on disk) and answers from what it can,
//! saying `degraded`.
//!
//! Reads on the answer path are one pipelined round trip per Recommend (recent events,
//! purchases, the impressions that demote an item); trending is read once a second into each gateway's memory;
//! impressions are written off the latency path.

mod error;
mod follower;
mod reads;
mod scripts;
#[cfg(feature = "test-util")]
pub mod testing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tandem_catalog::{Catalog, ItemIdx};
use tandem_personalization::TrendingConfig;
use tokio::sync::mpsc;

pub use error::SharedStateError;

/// Impressions remembered per user, as the in-memory store keeps.
const MAX_SHOWN: usize = 1000;

/// How tandem uses Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Put before every key, so several tandem deployments can share one Redis.
    pub key_prefix: String,
    /// Longest an answer waits for a user's state; past it the answer is degraded.
    pub read_timeout: Duration,
    /// Longest an acknowledgement waits for its events to reach Redis; past it they reach
    /// it with the catch-up from the log.
    pub write_timeout: Duration,
    /// How long a producer's event id is remembered across gateways.
    pub dedupe_ttl: Duration,
    pub events_per_user: usize,
    /// A user's keys expire after this long without events (`None`: never).
    pub idle_ttl: Option<Duration>,
    pub trending: TrendingConfig,
    /// Trending items kept in Redis and copied into each gateway every second.
    pub trending_items: usize,
    /// Impressions of an item from which answers demote it (`--demote-after-shown`; 0:
    /// never): an answer reads only the impressions that reached it.
    pub demote_after_shown: u32,
}

/// A Redis-backed state store that follows this gateway's event log.
pub struct RedisState {
    config: RedisConfig,
    catalog: Arc<Catalog>,
    conn: ConnectionManager,
    /// Trending as last read from Redis, best first, decayed counts.
    trending: RwLock<Vec<(ItemIdx, f32)>>,
    impressions: mpsc::Sender<Impression>,
    /// Logged records on their way to the applier (see `follower.rs`).
    committed: OnceLock<mpsc::UnboundedSender<follower::Committed>>,
    /// This gateway's event log and its id (set by `start`).
    log_dir: OnceLock<std::path::PathBuf>,
    log_id: OnceLock<String>,
    /// Itself, for the tasks it starts (which end when it is dropped).
    me: Weak<RedisState>,
    /// How far this gateway's log is applied in Redis, as far as it knows.
    applied: AtomicU64,
    /// Whether Redis answered the last time it was asked.
    reachable: AtomicBool,
    /// Whether Redis is behind this gateway's log (out of reach, or being caught up).
    behind: AtomicBool,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.config.key_prefix)
            .finish()
    }
}

struct Impression {
    user: String,
    items: Vec<String>,
    at_ms: i64,
}

/// Whether `url` is a Redis address this client can use (nothing is connected).
pub fn check_url(url: &str) -> Result<(), SharedStateError> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| SharedStateError::Config(e.to_string()))
}

impl RedisState {
    /// Connects (a Redis that is down at start is not an error: state is degraded until it
    /// is up, then caught up) and starts the trending and impression tasks.
    pub async fn connect(
        config: RedisConfig,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<Self>, SharedStateError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| SharedStateError::Config(format!("--state-store: {e}")))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.read_timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(config.write_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| SharedStateError::Config(format!("--state-store: {e}")))?;
        let (impressions, impressions_rx) = mpsc::channel(64 * 1024);
        let state = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            log_dir: OnceLock::new(),
            log_id: OnceLock::new(),
            config,
            catalog,
            conn,
            trending: RwLock::default(),
            impressions,
            committed: OnceLock::new(),
            applied: AtomicU64::new(0),
            reachable: AtomicBool::new(false),
            behind: AtomicBool::new(true),
        });
        if let Err(e) = state.refresh_trending().await {
            tracing::warn!(error = %e, "Redis is out of reach at start; answers are degraded until it is back");
        }
        tokio::spawn(reads::refresh_trending_periodically(Arc::downgrade(&state)));
        tokio::spawn(reads::write_impressions(
            Arc::downgrade(&state),
            impressions_rx,
        ));
        Ok(state)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.config.key_prefix.clone();
        for p in parts {
            k.push_str(p);
        }
        k
    }

    fn idle_ttl_s(&self) -> u64 {
        self.config.idle_ttl.map_or(0, |t| t.as_secs().max(1))
    }

    /// Whether Redis answered the last time it was asked.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Whether Redis holds everything this gateway logged (false while out of reach or
    /// being caught up).
    pub fn caught_up(&self) -> bool {
        !self.behind.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for [`RedisState::caught_up`]; says whether it got there.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while !self.caught_up() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Counts a failed call and logs (and exports) when reachability changes: not per call,
    /// since every answer reads Redis.
    fn note<T>(&self, outcome: &Result<T, SharedStateError>, op: &'static str) {
        let ok = outcome.is_ok();
        if !ok {
            metrics::counter!("tandem_shared_state_errors_total", "op" => op).increment(1);
        }
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("Redis is reachable");
            } else if let Err(e) = outcome {
                tracing::warn!(error = %e, "Redis is out of reach");
            }
            metrics::gauge!("tandem_shared_state_up").set(if ok { 1.0 } else { 0.0 });
        }
    }
}
