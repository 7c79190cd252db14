//! `tandem-retrieval`: the retrieval stage as its own server (split topology).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tandem_proto::v1::retrieval_service_server::RetrievalServiceServer;
use tandem_retrieval::Shard;
use tandem_retrieval_api::{IndexArgs, RetrievalApi, load_index};
use tandem_server::{AdminArgs, MetricsArgs, Ready, TransportArgs};

/// Retrieval server: nearest catalog items to a query vector under a filter.
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    /// Item catalog (written by the models pipeline).
    #[arg(long, env = "TANDEM_ITEMS", default_value = "data/demo/items.parquet")]
    items: PathBuf,
    /// Serve only shard i of n (`0/3`): the items whose id hashes to i. The gateway takes
    /// every shard's address in `--retrieval-addr`, comma-separated.
    #[arg(long, env = "TANDEM_SHARD")]
    shard: Option<Shard>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    index: IndexArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tandem_server::init_telemetry("tandem-retrieval")?;
    let config = Config::parse();
    let transport = config.transport.load().map_err(anyhow::Error::msg)?;
    config.metrics.install().map_err(anyhow::Error::msg)?;
    let mut params = config.index.validate().map_err(anyhow::Error::msg)?;
    params.shard = config.shard;
    anyhow::ensure!(
        config.items.is_file(),
        "--items {} does not exist (run `make data`)",
        config.items.display()
    );

    let (routes, health) = tandem_server::base_routes(&[tandem_server::service_name::<
        RetrievalServiceServer<RetrievalApi>,
    >()])
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let index = Ready::default();
    let admin = config.admin.token();
    admin.warn_if_open(config.listen);
    let routes = routes.add_service(
        RetrievalApi::new(index.clone())
            .with_admin_token(admin)
            .into_service(),
    );
    let (listener, addr) = tandem_server::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    tracing::info!(%addr, "listening (NOT_SERVING until the index is built)");

    let server = tokio::spawn(tandem_server::serve(
        routes,
        listener,
        health.clone(),
        transport,
        tandem_server::shutdown_signal(),
    ));
    let items = config.items.clone();
    let state = config.index.state();
    let built = tokio::task::spawn_blocking(move || load_index(&items, params, state.as_ref()))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open the index: {e}"))?;
    index.set(built);
    health.set_serving(true).await;
    tracing::info!(%addr, "serving");
    server.await??;
    Ok(())
}
