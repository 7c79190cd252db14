//! `tandem-ranking`: the ranking stage as its own server (split topology).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tandem_catalog::Catalog;
use tandem_proto::v1::ranking_admin_service_server::RankingAdminServiceServer;
use tandem_proto::v1::ranking_service_server::RankingServiceServer;
use tandem_ranking_api::{ModelArgs, RankingAdminApi, RankingApi, load_ranker};
use tandem_server::{AdminArgs, MetricsArgs, Ready, TransportArgs};

/// Ranking server: scores candidates with the ONNX ranking model.
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:50053")]
    listen: SocketAddr,
    /// Item catalog, for the item features.
    #[arg(long, env = "TANDEM_ITEMS", default_value = "data/demo/items.parquet")]
    items: PathBuf,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tandem_server::init_telemetry("tandem-ranking")?;
    let config = Config::parse();
    let transport = config.transport.load().map_err(anyhow::Error::msg)?;
    config.metrics.install().map_err(anyhow::Error::msg)?;
    let settings = config.model.validate().map_err(anyhow::Error::msg)?;
    let admin = config.admin.token();
    admin.warn_if_open(config.listen);
    anyhow::ensure!(
        config.items.is_file(),
        "--items {} does not exist (run `make data`)",
        config.items.display()
    );

    let (routes, health) = tandem_server::base_routes(&[
        tandem_server::service_name::<RankingServiceServer<RankingApi>>(),
        tandem_server::service_name::<RankingAdminServiceServer<RankingAdminApi>>(),
    ])
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let ranker = Ready::default();
    let routes = routes
        .add_service(RankingApi::new(ranker.clone()).into_service())
        .add_service(
            RankingAdminApi::new(ranker.clone())
                .with_admin_token(admin.clone())
                .into_service(),
        );
    let (listener, addr) = tandem_server::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    tracing::info!(%addr, "listening (NOT_SERVING until the model is loaded)");

    let server = tokio::spawn(tandem_server::serve(
        routes,
        listener,
        health.clone(),
        transport,
        tandem_server::shutdown_signal(),
    ));
    let (items, model_dir) = (config.items.clone(), config.model.model_dir.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        let catalog = Arc::new(Catalog::open(&items)?);
        load_ranker(&model_dir, catalog, settings).map_err(anyhow::Error::from)
    })
    .await?
    .context("cannot load the ranking model")?;
    ranker.set(loaded);
    health.set_serving(true).await;
    tracing::info!(%addr, "serving");
    server.await??;
    Ok(())
}
