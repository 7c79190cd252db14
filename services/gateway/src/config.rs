use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_ranking_service::{ModelArgs, ModelSettings};
use tandem_retrieval::IndexParams;
use tandem_retrieval_service::IndexArgs;

/// tandem gateway: personalized recommendations over gRPC. With no stage addresses it runs
/// every stage in this process (embedded); `--retrieval-addr` / `--ranking-addr` split them out.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tandem-gateway", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Item catalog (written by the models pipeline).
    #[arg(long, env = "TANDEM_ITEMS", default_value = "data/demo/items.parquet")]
    pub items: PathBuf,
    /// Remote retrieval server (host:port); unset = in-process. Several, comma-separated, are
    /// the shards of one catalog: searched in parallel and merged; a shard that fails or
    /// misses the stage deadline leaves the answer partial and `degraded`.
    #[arg(long, env = "TANDEM_RETRIEVAL_ADDR")]
    pub retrieval_addr: Option<String>,
    /// Remote ranking server (host:port); unset = in-process.
    #[arg(long, env = "TANDEM_RANKING_ADDR")]
    pub ranking_addr: Option<String>,
    /// Deadline for one call to a remote stage, in milliseconds; past it the gateway degrades.
    #[arg(long, env = "TANDEM_STAGE_TIMEOUT_MS", default_value_t = 1000)]
    pub stage_timeout_ms: u64,
    /// Events kept per user.
    #[arg(long, env = "TANDEM_HISTORY_CAPACITY", default_value_t = 200)]
    pub history_capacity: usize,
    /// Directory of the event log: every accepted event is written (fsynced) here before it
    /// is acknowledged and replayed at start-up; closed segments are exported as Parquet to
    /// `<dir>/parquet/day=YYYY-MM-DD/`.
    #[arg(
        long,
        env = "TANDEM_EVENT_LOG_DIR",
        default_value = "data/demo/state/events"
    )]
    pub event_log_dir: PathBuf,
    /// An event log segment is closed and exported past this many MiB (or at midnight UTC).
    #[arg(long, env = "TANDEM_EVENT_SEGMENT_MIB", default_value_t = 64)]
    pub event_segment_mib: u64,
    /// Event ids remembered to recognise retries (the most recent ones).
    #[arg(long, env = "TANDEM_DEDUPE_WINDOW", default_value_t = 1_000_000)]
    pub dedupe_window: usize,
    #[command(flatten)]
    pub index: IndexArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What validation derived from the flags.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub index: IndexParams,
    /// Present when ranking runs in-process.
    pub ranker: Option<ModelSettings>,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<Checked, String> {
        if !self.items.is_file() {
            return Err(format!(
                "--items {} does not exist (run `make data`)",
                self.items.display()
            ));
        }
        if self.stage_timeout_ms == 0 {
            return Err("--stage-timeout-ms must be positive".into());
        }
        if self.history_capacity == 0 {
            return Err("--history-capacity must be positive".into());
        }
        if self.event_segment_mib == 0 {
            return Err("--event-segment-mib must be positive".into());
        }
        if self.dedupe_window == 0 {
            return Err("--dedupe-window must be positive".into());
        }
        if self.event_log_dir.exists() && !self.event_log_dir.is_dir() {
            return Err(format!(
                "--event-log-dir {} is not a directory",
                self.event_log_dir.display()
            ));
        }
        let retrieval = self.retrieval_shards();
        for (flag, addr) in retrieval
            .iter()
            .map(|a| ("--retrieval-addr", a))
            .chain(self.ranking_addr.iter().map(|a| ("--ranking-addr", a)))
        {
            if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
                return Err(format!("{flag} {addr} is not host:port"));
            }
        }
        let index = self.index.validate()?;
        let ranker = match self.ranking_addr {
            Some(_) => None,
            None => Some(self.model.validate()?),
        };
        Ok(Checked { index, ranker })
    }

    /// The retrieval addresses, one per shard; empty when retrieval runs in-process.
    pub(crate) fn retrieval_shards(&self) -> Vec<String> {
        self.retrieval_addr
            .iter()
            .flat_map(|a| a.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn event_log(&self) -> tandem_events::EventLogConfig {
        tandem_events::EventLogConfig {
            dir: self.event_log_dir.clone(),
            segment_bytes: self.event_segment_mib << 20,
            export: true,
        }
    }

    pub(crate) fn stage_timeout(&self) -> Duration {
        Duration::from_millis(self.stage_timeout_ms)
    }

    pub fn topology(&self) -> &'static str {
        match (&self.retrieval_addr, &self.ranking_addr) {
            (None, None) => "embedded",
            (Some(_), Some(_)) => "split",
            _ => "mixed",
        }
    }
}
