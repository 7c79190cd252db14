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
use tandem_proto::v1::recommender_service_server::RecommenderServiceServer;
use tandem_proto::v1::retrieval_service_server::RetrievalServiceServer;
use tandem_ranking_api::{RankingAdminApi, RankingApi, load_ranker};
use tandem_recommend::{
    CandidateStage, EventIntake, InProcessRanking, InProcessRetrieval, Recommender, RemoteRanking,
    RemoteRetrieval, ScoringStage, Settings, Stages,
};
use tandem_recommend_api::RecommenderApi;
use tandem_retrieval_api::RetrievalApi;
use tandem_server::{Health, Ready, service_name};
use tokio::task::JoinHandle;

pub use config::Config;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A started gateway: listening at once, SERVING once `loaded` finishes.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub health: Health,
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
    let mut names = vec![service_name::<RecommenderServiceServer<RecommenderApi>>()];
    if config.retrieval_addr.is_none() {
        names.push(service_name::<RetrievalServiceServer<RetrievalApi>>());
    }
    if config.ranking_addr.is_none() {
        names.push(service_name::<RankingServiceServer<RankingApi>>());
        names.push(service_name::<RankingAdminServiceServer<RankingAdminApi>>());
    }
    let (mut routes, health) = tandem_server::base_routes(&names).await?;
    let recommender = Ready::default();
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
    if config.retrieval_addr.is_none() || config.ranking_addr.is_none() {
        admin.warn_if_open(config.listen);
    }
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
            let history = Arc::new(InMemoryState::new(
                config.history_capacity,
                config.trending(),
            ));
            let (log_config, shared) = (config.event_log(), catalog.clone());
            let replay_history = history.clone();
            let (events, replayed) = tokio::task::spawn_blocking(move || {
                EventIntake::open(&log_config, shared, replay_history, config.dedupe_window)
            })
            .await??;
            tracing::info!(
                dir = %config.event_log_dir.display(),
                segments = replayed.segments,
                batches = replayed.batches,
                events = replayed.events,
                expired_segments = replayed.expired_segments,
                users = history.users(),
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
                history,
                events,
                Stages { retrieval, ranking },
                Settings {
                    query: config.query(),
                    rules: config.rules(),
                    budgets: config.budgets(),
                    sources: config.sources(),
                },
            );
            if let Some(served) = config.served_log() {
                let dir = served.dir.clone();
                let log = ServedLog::start(served)?;
                tracing::info!(dir = %dir.display(), sample = config.served_log_sample, "served-feature log on");
                built = built.with_served_log(Arc::new(log), config.served_log_sample);
            }
            recommender.set(Arc::new(built));
            health.set_serving(true).await;
            tracing::info!("serving");
            Ok(())
        }
    });
    Ok(Gateway {
        addr,
        health,
        index: index_handle,
        ranker: ranker_handle,
        loaded,
        server,
    })
}
