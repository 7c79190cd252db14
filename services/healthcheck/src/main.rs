//! `tandem-healthcheck`: asks a tandem server's `grpc.health.v1.Health/Check` and exits 0 only
//! on SERVING. The container image's `HEALTHCHECK` runs it; Kubernetes uses its native gRPC
//! probes instead. Part of the image so that nothing is downloaded at build time (the usual
//! `grpc_health_probe` is a GitHub release).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Exits 0 when the server answers SERVING, 1 otherwise (with the reason on stderr).
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    /// The server's address; its `--listen` (`TANDEM_LISTEN`), where an unspecified address
    /// (0.0.0.0, ::) means this host's loopback.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Service to ask about; empty: the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// The address to dial for a server listening on `listen`.
fn dial_address(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

async fn check(config: &Config) -> anyhow::Result<ServingStatus> {
    let timeout = Duration::from_millis(config.timeout_ms);
    let addr = dial_address(config.addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: config.service.clone(),
        })
        .await
        .with_context(|| format!("Health/Check on {addr}"))?;
    Ok(answer.into_inner().status())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = Config::parse();
    match check(&config).await {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{}: {}", config.addr, status.as_str_name());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_dial_loopback() {
        let dial = |s: &str| dial_address(s.parse().expect("address")).to_string();
        assert_eq!(dial("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(dial("[::]:50052"), "[::1]:50052");
        assert_eq!(dial("10.1.2.3:50053"), "10.1.2.3:50053");
    }
}
