//! Gateway: owns the public `tandem.v1.RecommenderService`. Embedded (default) runs retrieval
//! and ranking in this process and serves their APIs on the same port; split calls them over
//! gRPC at `--retrieval-addr` / `--ranking-addr` (either or both).

mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_events::ServedLog;
use tandem_personalization::{InMemoryState, StateStore};
use tandem_proto::v1::ranking_admin_service_server::RankingAdminServiceServer;
use tandem_proto::v1::ranking_service_server::RankingServiceServer;
use tandem_proto::v1::recommender_admin_service_server::RecommenderAdminServiceServer;
use tandem_proto::v1::recommender_service_server::RecommenderServiceServer;
use tandem_proto::v1::retrieval_service_server::RetrievalServiceServer;
use tandem_ranking_api::{RankingAdminApi, RankingApi, load_ranker};
use tandem_recommend::{
    CandidateStage, EventIntake, InProcessRanking, InProcessRetrieval, Recommender, RemoteRanking,
    RemoteRetrieval, ScoringStage, Settings, Stages, StateWriter,
};
use tandem_recommend_api::{RecommenderAdminApi, RecommenderApi};
use tandem_retrieval_api::RetrievalApi;
use tandem_server::{Health, Ready, service_name};
use tandem_shared_state::RedisState;
use tokio::task::JoinHandle;

pub use config::Config;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A started gateway: listening at once, SERVING once `loaded` finishes.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub health: Health,
    /// The request path once loaded: [`checkpoint`] takes a last checkpoint through it.
    pub recommender: Ready<Recommender>,
    /// The embedded stages once loaded (empty when remote): benchmarks and tests measure them
    /// directly.
    pub index: Ready<tandem_retrieval::Index>,
    pub ranker: Ready<tandem_ranking::Ranker>,
    /// Loads catalog, index and model; an error here means the gateway will never serve.
    pub loaded: JoinHandle<Result<(), BoxError>>,
    pub server: JoinHandle<Result<(), tandem_server::ServeError>>,
}

/// Binds, starts serving (NOT_SERVING) and loads the stages in the background.
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Gateway, BoxError> {
    let checked = config.validate()?;
    config.metrics.install()?;
    let mut names = vec![
        service_name::<RecommenderServiceServer<RecommenderApi>>(),
        service_name::<RecommenderAdminServiceServer<RecommenderAdminApi>>(),
    ];
    if config.retrieval_addr.is_none() {
        names.push(service_name::<RetrievalServiceServer<RetrievalApi>>());
    }
    if config.ranking_addr.is_none() {
        names.push(service_name::<RankingServiceServer<RankingApi>>());
        names.push(service_name::<RankingAdminServiceServer<RankingAdminApi>>());
    }
    let (mut routes, health) = tandem_server::base_routes(&names).await?;
    let recommender = Ready::default();
    let recommender_handle = recommender.clone();
    let index = Ready::default();
    let ranker = Ready::default();
    let (index_handle, ranker_handle) = (index.clone(), ranker.clone());
    routes = routes.add_service(
        RecommenderApi::new(
            recommender.clone(),
            config.max_in_flight(),
            config.default_deadline(),
        )
        .into_service(),
    );
    let admin = config.admin.token();
    admin.warn_if_open(config.listen);
    routes = routes.add_service(
        RecommenderAdminApi::new(recommender.clone())
            .with_admin_token(admin.clone())
            .into_service(),
    );
    if config.retrieval_addr.is_none() {
        routes = routes.add_service(
            RetrievalApi::new(index.clone())
                .with_admin_token(admin.clone())
                .into_service(),
        );
    }
    if config.ranking_addr.is_none() {
        routes = routes
            .add_service(RankingApi::new(ranker.clone()).into_service())
            .add_service(
                RankingAdminApi::new(ranker.clone())
                    .with_admin_token(admin)
                    .into_service(),
            );
    }
    let (listener, addr) = tandem_server::bind(config.listen).await?;
    tracing::info!(
        %addr,
        topology = config.topology(),
        "listening (NOT_SERVING until loaded)"
    );
    let server = tokio::spawn(tandem_server::serve(
        routes,
        listener,
        health.clone(),
        checked.transport.clone(),
        shutdown,
    ));

    let loaded = tokio::spawn({
        let health = health.clone();
        async move {
            let items = config.items.clone();
            let catalog =
                tokio::task::spawn_blocking(move || Catalog::open(&items).map(Arc::new)).await??;
            tracing::info!(items = catalog.len(), dim = catalog.dim(), "loaded catalog");

            let retrieval: Arc<dyn CandidateStage> = match &config.retrieval_addr {
                Some(_) => Arc::new(RemoteRetrieval::new(
                    &config.retrieval_shards(),
                    checked.stages.clone(),
                    catalog.clone(),
                )?),
                None => {
                    let (shared, params) = (catalog.clone(), checked.index);
                    let state = config.index.state();
                    let built = tokio::task::spawn_blocking(move || {
                        tandem_retrieval_api::open_index(shared, params, state.as_ref())
                    });
                    let built = built.await??;
                    index.set(built.clone());
                    Arc::new(InProcessRetrieval::new(built, catalog.clone()))
                }
            };
            let ranking: Arc<dyn ScoringStage> = match (&config.ranking_addr, checked.ranker) {
                (Some(addr), _) => Arc::new(RemoteRanking::new(
                    addr,
                    checked.stages.clone(),
                    catalog.clone(),
                )?),
                (None, Some(ranker_config)) => {
                    let (dir, shared) = (config.model.model_dir.clone(), catalog.clone());
                    let loaded = tokio::task::spawn_blocking(move || {
                        load_ranker(&dir, shared, ranker_config)
                    })
                    .await??;
                    ranker.set(loaded.clone());
                    Arc::new(InProcessRanking(loaded))
                }
                (None, None) => {
                    return Err(
                        "ranking is embedded but its configuration was not validated".into(),
                    );
                }
            };
            // Redis shared by the replicas, or this process's memory.
            let (state, writer, redis, local): (Arc<dyn StateStore>, StateWriter, _, _) =
                match config.redis() {
                    Some(redis) => {
                        let shared = RedisState::connect(redis, catalog.clone()).await?;
                        let writer = StateWriter::Shared(shared.clone());
                        (shared.clone(), writer, Some(shared), None)
                    }
                    None => {
                        let local =
                            Arc::new(InMemoryState::new(config.state_limits(), config.trending()));
                        tokio::spawn(watch_user_state(local.clone()));
                        let writer = StateWriter::Local(local.clone());
                        (local.clone(), writer, None, Some(local))
                    }
                };
            let (log_config, shared) = (config.event_log(), catalog.clone());
            let checkpoints = (config.checkpoint_interval_s > 0 && local.is_some())
                .then(|| tandem_recommend::checkpoint_dir(&config.event_log_dir));
            let intake_writer = writer.clone();
            let (events, replayed) = tokio::task::spawn_blocking(move || {
                // The shared store's follower is started from here: inside the runtime.
                EventIntake::open(
                    &log_config,
                    shared,
                    intake_writer,
                    config.dedupe_window,
                    checkpoints,
                )
            })
            .await??;
            // Serve once Redis holds this gateway's log, or after a few seconds without it:
            // answers are then degraded or missing recent events until it catches up.
            if let Some(redis) = &redis
                && !redis
                    .wait_caught_up(std::time::Duration::from_secs(10))
                    .await
            {
                tracing::warn!(
                    "Redis is not caught up with the event log yet; serving, and catching it up in the background"
                );
            }
            tracing::info!(
                dir = %config.event_log_dir.display(),
                segments = replayed.segments,
                batches = replayed.batches,
                events = replayed.events,
                expired_segments = replayed.expired_segments,
                users = local.as_ref().map(|l| l.users()),
                "replayed event log"
            );
            if config.event_retention_hours > 0
                && (config.purchase_exclusion_hours == 0
                    || config.purchase_exclusion_hours > config.event_retention_hours)
            {
                tracing::warn!(
                    event_retention_hours = config.event_retention_hours,
                    purchase_exclusion_hours = config.purchase_exclusion_hours,
                    "event retention is shorter than the purchase exclusion: after a restart, \
                     purchases older than the retention may be recommended again"
                );
            }
            let mut built = Recommender::new(
                catalog,
                state,
                events,
                Stages { retrieval, ranking },
                Settings {
                    query: config.query(),
                    rules: config.rules(),
                    budgets: config.budgets(),
                    sources: config.sources(),
                },
            );
            if let Some(ledger) = config.experiments() {
                built = built
                    .with_experiments(Arc::new(tandem_experiments::ExperimentLedger::new(ledger)));
            }
            if let Some(served) = config.served_log() {
                let dir = served.dir.clone();
                let log = ServedLog::start(served)?;
                tracing::info!(dir = %dir.display(), sample = config.served_log_sample, "served-feature log on");
                built = built.with_served_log(Arc::new(log), config.served_log_sample);
            }
            let built = Arc::new(built);
            recommender.set(built.clone());
            if let Some(redis) = redis {
                // Users erased on another gateway leave this one's logs too.
                let here = built.clone();
                tokio::spawn(redis.follow_erasures(move |user: String| {
                    let here = here.clone();
                    async move {
                        match here.forget_announced_user(&user).await {
                            Ok(_) => true,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not erase a user another gateway forgot; retrying");
                                false
                            }
                        }
                    }
                }));
            }
            if config.checkpoint_interval_s > 0 && local.is_some() {
                tokio::spawn(checkpoint_periodically(
                    built,
                    std::time::Duration::from_secs(config.checkpoint_interval_s),
                ));
            }
            health.set_serving(true).await;
            tracing::info!("serving");
            Ok(())
        }
    });
    Ok(Gateway {
        addr,
        health,
        recommender: recommender_handle,
        index: index_handle,
        ranker: ranker_handle,
        loaded,
        server,
    })
}

/// Forgets idle users and reports the state's size, every few seconds, for the process's life.
async fn watch_user_state(state: Arc<InMemoryState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let probe = state.clone();
        let Ok((users, bytes)) = tokio::task::spawn_blocking(move || {
            probe.expire_idle();
            (probe.users(), probe.bytes())
        })
        .await
        else {
            return;
        };
        metrics::gauge!("tandem_user_state_users").set(users as f64);
        metrics::gauge!("tandem_user_state_bytes").set(bytes as f64);
    }
}

async fn checkpoint_periodically(recommender: Arc<Recommender>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        checkpoint(&recommender).await;
    }
}

/// Checkpoints user state now (at shutdown, so the next start replays nothing), logging the
/// outcome; a failure costs only a longer replay at the next start.
pub async fn checkpoint(recommender: &Recommender) {
    let started = std::time::Instant::now();
    match recommender.checkpoint().await {
        Ok(Some(written)) => {
            metrics::histogram!("tandem_checkpoint_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::info!(
                path = %written.path.display(),
                seq = written.seq,
                users = written.users,
                bytes = written.bytes,
                seconds = started.elapsed().as_secs_f64(),
                "wrote user state checkpoint"
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "user state checkpoint failed; a restart replays more of the log")
        }
    }
}
