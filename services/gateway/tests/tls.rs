//! Mutual TLS between a split gateway and its stages, with certificates made at run time: the
//! stages (an embedded gateway serves both stage APIs) require client certificates from the
//! deployment's CA; a gateway that presents one is answered by the model, one that does not
//! is refused and degrades. Callers reach the front gateway over TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tandem_proto::v1 as pb;
use tandem_server::testing::Authority;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A TLS channel to `addr` trusting `ca`, as `localhost`, presenting `identity` if given.
async fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls");
    for _ in 0..50 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {addr} over TLS");
}

/// Starts a gateway whose port speaks TLS and waits until it is SERVING.
async fn start_tls(
    config: tandem_gateway::Config,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Running {
    let running = start_loaded(config).await;
    let status = HealthClient::new(tls_channel(running.addr, ca, identity).await)
        .check(HealthCheckRequest::default())
        .await
        .expect("health over TLS")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_stages_over_mutual_tls_serve_certified_gateways_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::new(dir.path(), "deployment").expect("ca");
    let ca_file = ca.ca_file().expect("ca file");
    let (stage_cert, stage_key) = ca.leaf("stages", &["localhost"]).expect("stage cert");
    let (front_cert, front_key) = ca.leaf("gateway", &["localhost"]).expect("gateway cert");
    let flag = |name: &str, path: &Path| format!("--{name}={}", path.display());

    let stages = start_tls(
        config(&[
            &flag("tls-cert", &stage_cert),
            &flag("tls-key", &stage_key),
            &flag("tls-client-ca", &ca_file),
        ]),
        &ca_file,
        Some((&front_cert, &front_key)),
    )
    .await;
    let stage_addr = format!("localhost:{}", stages.addr.port());
    let split = |extra: &[String]| {
        let mut flags = vec![
            format!("--retrieval-addr={stage_addr}"),
            format!("--ranking-addr={stage_addr}"),
            flag("tls-ca", &ca_file),
            "--stage-timeout-ms=3000".to_owned(),
        ];
        flags.extend(extra.iter().cloned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        config(&flags)
    };

    // With its certificate: the stages answer, the model ranks.
    let front = start_tls(
        split(&[flag("tls-cert", &front_cert), flag("tls-key", &front_key)]),
        &ca_file,
        None,
    )
    .await;
    let mut client = pb::recommender_service_client::RecommenderServiceClient::new(
        tls_channel(front.addr, &ca_file, None).await,
    );
    clicks_in(&mut client, "secure", "kitchen", 3).await;
    let answer = client
        .recommend(request("secure", 10))
        .await
        .expect("served")
        .into_inner();
    assert!(!answer.degraded, "{answer:?}");
    assert_eq!(answer.items.len(), 10);
    assert!(
        answer.model_version.starts_with("ranker/"),
        "{}",
        answer.model_version
    );

    // Without one (TLS, but no client certificate): the stages refuse the handshake and the
    // gateway degrades to trending rather than failing.
    let anonymous = start(split(&[])).await;
    let mut client = recommender(anonymous.addr).await;
    clicks_in(&mut client, "secure", "kitchen", 3).await;
    let answer = client
        .recommend(request("secure", 10))
        .await
        .expect("degraded, not failed")
        .into_inner();
    assert!(answer.degraded, "{answer:?}");
    assert_eq!(answer.model_version, "trending");
    assert!(
        answer.degraded_reason.contains("retrieval"),
        "{}",
        answer.degraded_reason
    );
}
