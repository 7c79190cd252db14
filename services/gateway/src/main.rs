//! `tandem-gateway`: the public recommender API (embedded by default, or split).

use clap::Parser;
use tandem_gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tandem_server::init_telemetry("tandem-gateway")?;
    let config = Config::parse();
    let gateway = tandem_gateway::start(config, tandem_server::shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut server = gateway.server;
    tokio::select! {
        loaded = gateway.loaded => {
            loaded?.map_err(|e| anyhow::anyhow!("cannot load: {e}"))?;
            server.await??;
        }
        served = &mut server => served??,
    }
    if let Ok(recommender) = gateway.recommender.get() {
        tandem_gateway::checkpoint(recommender).await;
    }
    Ok(())
}
