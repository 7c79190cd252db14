//! Index options from the command line (`clap`, with env fallbacks), validated at start-up.

use std::path::PathBuf;

use tandem_retrieval::{IndexParams, Metric};

/// Index parameters (`--help` shows the defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// HNSW links per node (M).
    #[arg(long, env = "TANDEM_HNSW_M", default_value_t = 16)]
    pub hnsw_m: usize,
    /// HNSW candidate list size while building.
    #[arg(long, env = "TANDEM_EF_CONSTRUCTION", default_value_t = 200)]
    pub ef_construction: usize,
    /// HNSW candidate list size while searching (raised to k when lower).
    #[arg(long, env = "TANDEM_EF_SEARCH", default_value_t = 64)]
    pub ef_search: usize,
    /// Upper bound on a request's own `ef_search`.
    #[arg(long, env = "TANDEM_MAX_EF_SEARCH", default_value_t = 4096)]
    pub max_ef_search: usize,
    /// Similarity: `ip` (inner product, what the pipeline's embeddings are trained for),
    /// `cosine` or `l2`.
    #[arg(long, env = "TANDEM_METRIC", default_value = "ip")]
    pub metric: Metric,
    /// Directory for the write-ahead log of upserts and deletes (replayed at start-up).
    /// Unset: the index is read-only and UpsertItems/DeleteItems answer FAILED_PRECONDITION.
    #[arg(long, env = "TANDEM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Upserted rows held in the mutable segment before a background rebuild merges them.
    #[arg(long, env = "TANDEM_FRESH_CAPACITY", default_value_t = 20_000)]
    pub fresh_capacity: usize,
    /// Seconds between snapshots of the index into `--state-dir` (taken only when writes
    /// happened; a first one right after a build). 0 = only that first one.
    #[arg(long, env = "TANDEM_SNAPSHOT_INTERVAL_S", default_value_t = 300)]
    pub snapshot_interval_s: u64,
    /// Fraction of tombstoned rows in the index that triggers a background rebuild.
    #[arg(long, env = "TANDEM_REBUILD_TOMBSTONE_RATIO", default_value_t = 0.2)]
    pub rebuild_tombstone_ratio: f64,
    /// Walk the graph on 8-bit codes of the vectors and rescore the beam exactly (`ip` and
    /// `cosine`; unfiltered searches). Costs one byte per dimension and item; `false` walks
    /// on the exact vectors.
    #[arg(long, env = "TANDEM_QUANTIZED_WALK", default_value_t = true, action = clap::ArgAction::Set)]
    pub quantized_walk: bool,
}

impl IndexArgs {
    pub fn validate(&self) -> Result<IndexParams, String> {
        if !(2..=256).contains(&self.hnsw_m) {
            return Err(format!("--hnsw-m must be 2 to 256, got {}", self.hnsw_m));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err("--ef-construction and --ef-search must be positive".into());
        }
        if self.max_ef_search < self.ef_search {
            return Err(format!(
                "--max-ef-search {} is below --ef-search {}",
                self.max_ef_search, self.ef_search
            ));
        }
        if self.fresh_capacity == 0 {
            return Err("--fresh-capacity must be positive".into());
        }
        if !(self.rebuild_tombstone_ratio > 0.0 && self.rebuild_tombstone_ratio <= 1.0) {
            return Err(format!(
                "--rebuild-tombstone-ratio must be in (0, 1], got {}",
                self.rebuild_tombstone_ratio
            ));
        }
        if let Some(dir) = &self.state_dir
            && dir.exists()
            && !dir.is_dir()
        {
            return Err(format!("--state-dir {} is not a directory", dir.display()));
        }
        Ok(IndexParams {
            fresh_capacity: self.fresh_capacity,
            rebuild_tombstone_ratio: self.rebuild_tombstone_ratio,
            max_connections: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            max_ef_search: self.max_ef_search,
            metric: self.metric,
            quantized_walk: self.quantized_walk,
            ..IndexParams::default()
        })
    }
}

/// Where the index keeps its log and snapshots, and how often it snapshots.
#[derive(Debug, Clone)]
pub struct StateArgs {
    pub dir: PathBuf,
    pub snapshot_interval: std::time::Duration,
}

impl IndexArgs {
    pub fn state(&self) -> Option<StateArgs> {
        self.state_dir.clone().map(|dir| StateArgs {
            dir,
            snapshot_interval: std::time::Duration::from_secs(self.snapshot_interval_s),
        })
    }
}
