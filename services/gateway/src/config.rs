use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_ranking_api::{ModelArgs, ModelSettings};
use tandem_retrieval::IndexParams;
use tandem_retrieval_api::IndexArgs;
use tandem_server::{AdminArgs, MetricsArgs, TransportArgs};

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
    /// Users whose state is kept in memory; beyond it the least recently used are forgotten
    /// (their events stay in the event log and come back at the next restart).
    #[arg(long, env = "TANDEM_MAX_USERS", default_value_t = 1_000_000)]
    pub max_users: usize,
    /// Memory for user state, in MiB (events, purchases, impressions, ids); beyond it the least
    /// recently used users are forgotten.
    #[arg(long, env = "TANDEM_USER_STATE_MIB", default_value_t = 1024)]
    pub user_state_mib: usize,
    /// Seconds between checkpoints of user state (into `<event-log-dir>/checkpoints`, with the
    /// log position they cover): a restart loads the newest and replays only the log after
    /// it. 0 = none (a restart replays the whole log).
    #[arg(long, env = "TANDEM_CHECKPOINT_INTERVAL_S", default_value_t = 300)]
    pub checkpoint_interval_s: u64,
    /// Clicks, add-to-carts and purchases of an answered item by the same user within this
    /// many minutes count for the model version that answered (`GetExperimentReport`,
    /// `tandem_experiment_*` metrics); 0 = not measured.
    #[arg(long, env = "TANDEM_ATTRIBUTION_WINDOW_MIN", default_value_t = 1440)]
    pub attribution_window_min: u64,
    /// Impressions remembered for attribution; beyond it the oldest can no longer be
    /// attributed to. Each costs up to about 110 bytes (500,000: 55 MB), on top of
    /// --user-state-mib.
    #[arg(
        long,
        env = "TANDEM_ATTRIBUTION_MAX_IMPRESSIONS",
        default_value_t = 500_000
    )]
    pub attribution_max_impressions: usize,
    /// Users neither seen nor written for this many minutes are forgotten; 0 = never. With
    /// Redis: a user's keys expire this long after their last event.
    #[arg(long, env = "TANDEM_USER_IDLE_TTL_MIN", default_value_t = 0)]
    pub user_idle_ttl_min: u64,
    /// Where user state lives: `memory` (this process; the default) or
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), shared by every
    /// gateway on it: an event recorded by one is in any other's next answer. Redis follows
    /// each gateway's event log and is caught up from it when it lost data or was out of
    /// reach; --max-users, --user-state-mib and checkpoints are then not used (size Redis
    /// with its own `maxmemory`, policy `volatile-lru`).
    #[arg(long, env = "TANDEM_STATE_STORE", default_value = "memory")]
    pub state_store: String,
    /// Put before every Redis key (several deployments on one Redis).
    #[arg(long, env = "TANDEM_REDIS_KEY_PREFIX", default_value = "tandem:")]
    pub redis_key_prefix: String,
    /// Longest a Recommend waits for a user's state in Redis, in milliseconds; past it the
    /// answer is made without it and says `degraded`.
    #[arg(long, env = "TANDEM_REDIS_READ_TIMEOUT_MS", default_value_t = 50)]
    pub redis_read_timeout_ms: u64,
    /// Longest a RecordEvents waits for its events to reach Redis, in milliseconds; past it
    /// it is acknowledged anyway (the events are in the log) and Redis gets them from the
    /// log's catch-up.
    #[arg(long, env = "TANDEM_REDIS_WRITE_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_write_timeout_ms: u64,
    /// How long producer event ids are remembered in Redis for retries that reach another
    /// gateway, in seconds.
    #[arg(long, env = "TANDEM_REDIS_DEDUPE_TTL_S", default_value_t = 86_400)]
    pub redis_dedupe_ttl_s: u64,
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
    /// Exported event log segments older than this many hours are deleted (their Parquet
    /// export stays), which bounds the disk and the replay at start-up; user state then goes
    /// back this far after a restart. 0 = keep every segment.
    #[arg(long, env = "TANDEM_EVENT_RETENTION_HOURS", default_value_t = 0)]
    pub event_retention_hours: u64,
    /// Recommend only in-stock items unless a request's filter sets `in_stock_only = false`.
    #[arg(long, env = "TANDEM_IN_STOCK_ONLY", default_value_t = true, action = clap::ArgAction::Set)]
    pub in_stock_only: bool,
    /// At most this many items of one category per answer (diversity); 0 = no cap. A request's
    /// `max_per_category` overrides it.
    #[arg(long, env = "TANDEM_MAX_PER_CATEGORY", default_value_t = 0)]
    pub max_per_category: usize,
    /// Items recommended this many times without the user acting on them move down; 0 = never.
    #[arg(long, env = "TANDEM_DEMOTE_AFTER_SHOWN", default_value_t = 3)]
    pub demote_after_shown: u32,
    /// Bought items are not recommended again for this many hours; 0 = never again.
    #[arg(long, env = "TANDEM_PURCHASE_EXCLUSION_HOURS", default_value_t = 720)]
    pub purchase_exclusion_hours: u64,
    /// The query vector: an event this many hours older than the user's latest counts half.
    #[arg(long, env = "TANDEM_QUERY_HALF_LIFE_HOURS", default_value_t = 24.0)]
    pub query_half_life_hours: f64,
    /// The query vector reads the user's newest this many events (at most
    /// --history-capacity).
    #[arg(long, env = "TANDEM_QUERY_MAX_EVENTS", default_value_t = 50)]
    pub query_max_events: usize,
    /// With repeat purchases allowed (RepeatPurchases.ALLOW), up to this many of the user's
    /// own items, most recent first, are candidates beside the ANN search; 0 = none.
    #[arg(long, env = "TANDEM_OWN_ITEM_CANDIDATES", default_value_t = 200)]
    pub own_item_candidates: usize,
    /// Candidates added from the items most often bought with the user's items (the catalog's
    /// co_occurrence.parquet); 0 = off. The history ranker was trained with 100.
    #[arg(long, env = "TANDEM_RELATED_CANDIDATES", default_value_t = 0)]
    pub related_candidates: usize,
    /// A history item this many days old adds half as much to its related items (as the
    /// history ranker's co_occurrence feature weighs it).
    #[arg(long, env = "TANDEM_RELATED_HALF_LIFE_DAYS", default_value_t = 30.0)]
    pub related_half_life_days: f64,
    /// Candidates added from the items most bought in the catalog's last week (its buyers_7d
    /// column); 0 = off.
    #[arg(long, env = "TANDEM_TRENDING_CANDIDATES", default_value_t = 0)]
    pub trending_candidates: usize,
    /// Trending counts halve every this many minutes.
    #[arg(long, env = "TANDEM_TRENDING_HALF_LIFE_MIN", default_value_t = 360)]
    pub trending_half_life_min: u64,
    /// Deadline of a Recommend whose caller set none (`grpc-timeout`), in milliseconds.
    #[arg(long, env = "TANDEM_DEFAULT_DEADLINE_MS", default_value_t = 1000)]
    pub default_deadline_ms: u64,
    /// Share of a request's time left that retrieval may use; ranking gets the rest.
    #[arg(long, env = "TANDEM_RETRIEVAL_BUDGET_SHARE", default_value_t = 0.4)]
    pub retrieval_budget_share: f64,
    /// Milliseconds kept back from the deadline for business rules and the reply.
    #[arg(long, env = "TANDEM_DEADLINE_RESERVE_MS", default_value_t = 5)]
    pub deadline_reserve_ms: u64,
    /// Recommend calls served at once; past this new ones get RESOURCE_EXHAUSTED at once (load
    /// shedding) so accepted ones keep their latency. Default: 32 per core.
    #[arg(long, env = "TANDEM_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Directory of the served-feature log (Parquet by day).
    #[arg(
        long,
        env = "TANDEM_SERVED_LOG_DIR",
        default_value = "data/demo/state/served"
    )]
    pub served_log_dir: PathBuf,
    /// Share of ranked answers written to the served-feature log, 0 to 1; 0 = off.
    #[arg(long, env = "TANDEM_SERVED_LOG_SAMPLE", default_value_t = 0.01)]
    pub served_log_sample: f64,
    /// Answers waiting to be written; past this new ones are dropped, never waited for.
    #[arg(long, env = "TANDEM_SERVED_LOG_QUEUE", default_value_t = 1024)]
    pub served_log_queue: usize,
    /// A served-feature file is written at this many rows, or this long after its first row.
    #[arg(
        long,
        env = "TANDEM_SERVED_LOG_ROWS_PER_FILE",
        default_value_t = 100_000
    )]
    pub served_log_rows_per_file: usize,
    #[arg(long, env = "TANDEM_SERVED_LOG_FLUSH_MS", default_value_t = 60_000)]
    pub served_log_flush_ms: u64,
    /// Event ids remembered to recognise retries (the most recent ones).
    #[arg(long, env = "TANDEM_DEDUPE_WINDOW", default_value_t = 1_000_000)]
    pub dedupe_window: usize,
    /// PEM CA bundle that the stages' certificates must chain to: calls to --retrieval-addr and
    /// --ranking-addr use TLS and present --tls-cert/--tls-key (mutual TLS); unset = plaintext.
    #[arg(long, env = "TANDEM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name to check the stages' certificates against, when it is not the address's host
    /// (e.g. stages addressed by IP).
    #[arg(long, env = "TANDEM_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
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
    pub transport: tandem_server::ServerTransport,
    /// How remote stages are dialled.
    pub stages: tandem_recommend::StageConnection,
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
        if self.max_users == 0 || self.user_state_mib == 0 {
            return Err("--max-users and --user-state-mib must be positive".into());
        }
        if self.state_store != "memory" {
            if !(self.state_store.starts_with("redis://")
                || self.state_store.starts_with("rediss://"))
            {
                return Err(format!(
                    "--state-store must be `memory` or a redis:// (rediss://) URL, got `{}`",
                    self.state_store
                ));
            }
            if let Err(e) = redis_url_check(&self.state_store) {
                return Err(format!("--state-store: {e}"));
            }
            if self.redis_read_timeout_ms == 0 || self.redis_write_timeout_ms == 0 {
                return Err(
                    "--redis-read-timeout-ms and --redis-write-timeout-ms must be positive".into(),
                );
            }
        }
        if self.event_segment_mib == 0 {
            return Err("--event-segment-mib must be positive".into());
        }
        if self.default_deadline_ms == 0 {
            return Err("--default-deadline-ms must be positive".into());
        }
        if !(self.retrieval_budget_share > 0.0 && self.retrieval_budget_share < 1.0) {
            return Err(format!(
                "--retrieval-budget-share must be between 0 and 1 (exclusive), got {}",
                self.retrieval_budget_share
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err("--max-in-flight must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.served_log_sample) {
            return Err(format!(
                "--served-log-sample must be between 0 and 1, got {}",
                self.served_log_sample
            ));
        }
        if self.served_log_queue == 0
            || self.served_log_rows_per_file == 0
            || self.served_log_flush_ms == 0
        {
            return Err(
                "--served-log-queue, --served-log-rows-per-file and --served-log-flush-ms must be positive"
                    .into(),
            );
        }
        if !(self.query_half_life_hours.is_finite() && self.query_half_life_hours > 0.0) {
            return Err(format!(
                "--query-half-life-hours must be positive, got {}",
                self.query_half_life_hours
            ));
        }
        if self.query_max_events == 0 || self.query_max_events > self.history_capacity {
            return Err(format!(
                "--query-max-events must be 1 to --history-capacity ({}), got {}",
                self.history_capacity, self.query_max_events
            ));
        }
        if !(self.related_half_life_days.is_finite() && self.related_half_life_days > 0.0) {
            return Err(format!(
                "--related-half-life-days must be positive, got {}",
                self.related_half_life_days
            ));
        }
        if self.trending_half_life_min == 0 {
            return Err("--trending-half-life-min must be positive".into());
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
        let transport = self.transport.load()?;
        let tls = match &self.tls_ca {
            Some(ca) => Some(transport.client_tls(ca, self.tls_server_name.as_deref())?),
            None => None,
        };
        let stages = tandem_recommend::StageConnection {
            timeout: self.stage_timeout(),
            tls,
            keepalive: transport.keepalive(),
        };
        Ok(Checked {
            index,
            ranker,
            transport,
            stages,
        })
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
            retention: (self.event_retention_hours > 0)
                .then(|| Duration::from_secs(self.event_retention_hours.saturating_mul(3600))),
        }
    }

    pub(crate) fn rules(&self) -> tandem_recommend::RulesConfig {
        tandem_recommend::RulesConfig {
            in_stock_only: self.in_stock_only,
            max_per_category: self.max_per_category,
            demote_after_shown: self.demote_after_shown,
            purchase_exclusion_ms: (self.purchase_exclusion_hours > 0)
                .then(|| (self.purchase_exclusion_hours as i64).saturating_mul(3_600_000)),
        }
    }

    pub(crate) fn query(&self) -> tandem_personalization::QueryConfig {
        tandem_personalization::QueryConfig {
            half_life_ms: (self.query_half_life_hours * 3_600_000.0) as i64,
            max_events: self.query_max_events,
            ..tandem_personalization::QueryConfig::default()
        }
    }

    pub(crate) fn sources(&self) -> tandem_recommend::CandidateSources {
        tandem_recommend::CandidateSources {
            own_items: self.own_item_candidates,
            related: self.related_candidates,
            related_half_life_days: self.related_half_life_days,
            trending: self.trending_candidates,
        }
    }

    pub(crate) fn budgets(&self) -> tandem_recommend::Budgets {
        tandem_recommend::Budgets {
            retrieval_share: self.retrieval_budget_share,
            reserve: Duration::from_millis(self.deadline_reserve_ms),
        }
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
            .unwrap_or_else(|| 32 * std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub(crate) fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// `None` when the served-feature log is off.
    pub(crate) fn served_log(&self) -> Option<tandem_events::ServedLogConfig> {
        (self.served_log_sample > 0.0).then(|| tandem_events::ServedLogConfig {
            dir: self.served_log_dir.clone(),
            queue: self.served_log_queue,
            rows_per_file: self.served_log_rows_per_file,
            flush_interval: Duration::from_millis(self.served_log_flush_ms),
        })
    }

    pub(crate) fn experiments(&self) -> Option<tandem_experiments::LedgerConfig> {
        (self.attribution_window_min > 0).then(|| tandem_experiments::LedgerConfig {
            window_ms: (self.attribution_window_min as i64).saturating_mul(60_000),
            max_impressions: self.attribution_max_impressions.max(1),
        })
    }

    pub(crate) fn state_limits(&self) -> tandem_personalization::StateLimits {
        tandem_personalization::StateLimits {
            events_per_user: self.history_capacity,
            max_users: self.max_users,
            max_bytes: self.user_state_mib.saturating_mul(1 << 20),
            idle_ttl_ms: (self.user_idle_ttl_min > 0)
                .then(|| (self.user_idle_ttl_min as i64).saturating_mul(60_000)),
        }
    }

    /// Redis settings, when user state is shared.
    pub(crate) fn redis(&self) -> Option<tandem_shared_state::RedisConfig> {
        (self.state_store != "memory").then(|| tandem_shared_state::RedisConfig {
            url: self.state_store.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            read_timeout: Duration::from_millis(self.redis_read_timeout_ms),
            write_timeout: Duration::from_millis(self.redis_write_timeout_ms),
            dedupe_ttl: Duration::from_secs(self.redis_dedupe_ttl_s.max(1)),
            events_per_user: self.history_capacity,
            idle_ttl: (self.user_idle_ttl_min > 0)
                .then(|| Duration::from_secs(self.user_idle_ttl_min.saturating_mul(60))),
            trending: self.trending(),
            trending_items: 10_000,
            demote_after_shown: self.demote_after_shown,
        })
    }

    pub(crate) fn trending(&self) -> tandem_personalization::TrendingConfig {
        tandem_personalization::TrendingConfig {
            half_life_ms: (self.trending_half_life_min as i64).saturating_mul(60_000),
            ..Default::default()
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

/// Whether `url` parses as a Redis address (without connecting).
fn redis_url_check(url: &str) -> Result<(), String> {
    tandem_shared_state::check_url(url).map_err(|e| e.to_string())
}
