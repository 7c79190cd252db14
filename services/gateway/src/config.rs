use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_ranking::RankerConfig;
use tandem_ranking_service::ModelArgs;
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
    /// Remote retrieval server (host:port); unset = in-process.
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
    pub ranker: Option<RankerConfig>,
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
        for (flag, addr) in [
            ("--retrieval-addr", &self.retrieval_addr),
            ("--ranking-addr", &self.ranking_addr),
        ] {
            if let Some(a) = addr
                && a.parse::<SocketAddr>().is_err()
                && !a.contains(':')
            {
                return Err(format!("{flag} {a} is not host:port"));
            }
        }
        let index = self.index.validate()?;
        let ranker = match self.ranking_addr {
            Some(_) => None,
            None => Some(self.model.validate()?),
        };
        Ok(Checked { index, ranker })
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
