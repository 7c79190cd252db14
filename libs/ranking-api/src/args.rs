//! Model options from the command line (`clap`, with env fallbacks), validated at start-up,
//! and loading the served versions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_catalog::Catalog;
use tandem_ranking::{
    BatchConfig, ExecutionProvider, Ranker, RankerConfig, RankingError, SplitEntry, parse_split,
};

/// Model options (`--help` shows the defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory: `NAME/` (its highest numeric version is served and newer ones are
    /// hot-reloaded) or `NAME/VERSION/` (that version only).
    #[arg(
        long,
        env = "TANDEM_MODEL_DIR",
        default_value = "data/demo/models/ranker"
    )]
    pub model_dir: PathBuf,
    /// ONNX Runtime shared library (libonnxruntime.so from the onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Execution provider: cpu, cuda (fail if CUDA cannot be used) or auto (CUDA, else CPU
    /// with a warning). cuda needs a build with `--features cuda` and the onnxruntime-gpu wheel.
    #[arg(long, env = "TANDEM_EXECUTION_PROVIDER", default_value = "cpu")]
    pub execution_provider: ExecutionProvider,
    /// ORT sessions per model version, each on its own worker thread. Default: cores divided
    /// by --ranking-intra-threads (1 on CUDA).
    #[arg(long, env = "TANDEM_RANKING_SESSIONS")]
    pub ranking_sessions: Option<usize>,
    /// Threads per ORT run; sessions × threads should not exceed the cores.
    #[arg(long, env = "TANDEM_RANKING_INTRA_THREADS", default_value_t = 1)]
    pub ranking_intra_threads: usize,
    /// Most candidates one Rank call may carry.
    #[arg(long, env = "TANDEM_MAX_CANDIDATES", default_value_t = 5000)]
    pub max_candidates: usize,
    /// Most rows coalesced into one model run; 0 turns dynamic batching off.
    #[arg(long, env = "TANDEM_BATCH_MAX_ROWS", default_value_t = 1024)]
    pub batch_max_rows: usize,
    /// How long a run waits for more requests after the first (microseconds).
    #[arg(long, env = "TANDEM_BATCH_MAX_WAIT_US", default_value_t = 200)]
    pub batch_max_wait_us: u64,
    /// Rows allowed to wait for a session; past this Rank answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "TANDEM_MAX_QUEUED_ROWS", default_value_t = 65_536)]
    pub max_queued_rows: usize,
    /// Versions to serve and their traffic shares by stable user hash, e.g. `1=90,2=10`.
    /// Default: the highest version, and each newer one as it appears.
    #[arg(long, env = "TANDEM_TRAFFIC_SPLIT")]
    pub traffic_split: Option<String>,
    /// How often to look for new version directories (seconds); 0 turns hot reload off.
    #[arg(long, env = "TANDEM_MODEL_POLL_INTERVAL_S", default_value_t = 10)]
    pub model_poll_interval_s: u64,
}

/// Validated model options.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub config: RankerConfig,
    pub split: Option<Vec<SplitEntry>>,
    pub poll_interval: Option<Duration>,
}

impl ModelArgs {
    pub fn validate(&self) -> Result<ModelSettings, String> {
        let dylib = self
            .ort_dylib_path
            .clone()
            .ok_or("--ort-dylib-path / ORT_DYLIB_PATH is required: point it at libonnxruntime.so (make run sets it)")?;
        if !dylib.is_file() {
            return Err(format!(
                "--ort-dylib-path {} does not exist",
                dylib.display()
            ));
        }
        if !self.model_dir.is_dir() {
            return Err(format!(
                "--model-dir {} does not exist (run `make data`)",
                self.model_dir.display()
            ));
        }
        if self.ranking_intra_threads == 0
            || self.max_candidates == 0
            || self.ranking_sessions == Some(0)
            || self.max_queued_rows == 0
        {
            return Err(
                "--ranking-sessions, --ranking-intra-threads, --max-candidates and --max-queued-rows must be positive"
                    .into(),
            );
        }
        if self.max_queued_rows < self.max_candidates {
            return Err(format!(
                "--max-queued-rows {} must be at least --max-candidates {}",
                self.max_queued_rows, self.max_candidates
            ));
        }
        let split = self
            .traffic_split
            .as_deref()
            .map(parse_split)
            .transpose()
            .map_err(|e| format!("--traffic-split: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let sessions = self
            .ranking_sessions
            .unwrap_or(match self.execution_provider {
                ExecutionProvider::Cpu => (cores / self.ranking_intra_threads).max(1),
                ExecutionProvider::Cuda | ExecutionProvider::Auto => 1,
            });
        Ok(ModelSettings {
            config: RankerConfig {
                ort_dylib_path: dylib,
                execution_provider: self.execution_provider,
                sessions,
                intra_threads: self.ranking_intra_threads,
                max_candidates: self.max_candidates,
                batch: BatchConfig {
                    max_rows: self.batch_max_rows,
                    max_wait: Duration::from_micros(self.batch_max_wait_us),
                    max_queued_rows: self.max_queued_rows,
                },
            },
            split,
            poll_interval: (self.model_poll_interval_s > 0)
                .then(|| Duration::from_secs(self.model_poll_interval_s)),
        })
    }
}

/// Loads the served versions against the catalog and starts the directory watcher (blocking).
pub fn load_ranker(
    model_dir: &Path,
    catalog: Arc<Catalog>,
    settings: ModelSettings,
) -> Result<Arc<Ranker>, RankingError> {
    let ranker = Arc::new(Ranker::open(
        model_dir,
        catalog,
        settings.config,
        settings.split,
    )?);
    if let Some(interval) = settings.poll_interval {
        ranker.watch(interval)?;
    }
    Ok(ranker)
}
