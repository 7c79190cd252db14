//! TLS and mutual TLS on a real server on loopback, with certificates made at run time: a
//! client with a certificate the server's CA signed is served; one without a certificate,
//! with one from another CA, or in plaintext is refused.

use std::path::Path;
use std::time::Duration;

use tandem_server::testing::Authority;
use tandem_server::{ServerTransport, TransportArgs};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn start(
    transport: ServerTransport,
) -> Result<std::net::SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    let (routes, health) = tandem_server::base_routes(&[]).await?;
    health.set_serving(true).await;
    let (listener, addr) = tandem_server::bind("127.0.0.1:0".parse()?).await?;
    tokio::spawn(tandem_server::serve(
        routes,
        listener,
        health,
        transport,
        std::future::pending(),
    ));
    Ok(addr)
}

/// SERVING, or the call's error as text.
async fn check(endpoint: Endpoint) -> Result<ServingStatus, String> {
    let channel = endpoint
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|a| a.into_inner().status())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_serves_certified_clients_and_refuses_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = Authority::new(dir.path(), "tandem")?;
    let rogue = Authority::new(dir.path(), "rogue")?;
    let (server_cert, server_key) = ca.leaf("server", &["localhost"])?;
    let (client_cert, client_key) = ca.leaf("client", &["gateway"])?;
    let (rogue_cert, rogue_key) = rogue.leaf("rogue-client", &["gateway"])?;
    let ca_file = ca.ca_file()?;

    let transport = TransportArgs {
        tls_cert: Some(server_cert),
        tls_key: Some(server_key),
        tls_client_ca: Some(ca_file.clone()),
        ..TransportArgs::default()
    }
    .load()?;
    assert!(transport.is_tls());
    let addr = start(transport).await?;
    let https = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?;
    let trust =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&ca_file)?));
    let identity = |cert: &Path, key: &Path| -> std::io::Result<Identity> {
        Ok(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ))
    };

    let served = check(
        https
            .clone()
            .tls_config(trust.clone().identity(identity(&client_cert, &client_key)?))?,
    )
    .await;
    assert_eq!(served, Ok(ServingStatus::Serving));

    let anonymous = check(https.clone().tls_config(trust.clone())?).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");

    let forged = check(
        https
            .clone()
            .tls_config(trust.clone().identity(identity(&rogue_cert, &rogue_key)?))?,
    )
    .await;
    assert!(
        forged.is_err(),
        "another CA's client certificate: {forged:?}"
    );

    let plaintext = check(Endpoint::from_shared(format!("http://{addr}"))?).await;
    assert!(plaintext.is_err(), "plaintext on a TLS port: {plaintext:?}");
    Ok(())
}

#[tokio::test]
async fn tls_without_client_ca_serves_any_client_that_trusts_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = Authority::new(dir.path(), "tandem")?;
    let (server_cert, server_key) = ca.leaf("server", &["localhost"])?;
    let transport = TransportArgs {
        tls_cert: Some(server_cert),
        tls_key: Some(server_key),
        ..TransportArgs::default()
    }
    .load()?;
    let addr = start(transport).await?;
    let trust =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca.ca_file()?)?));
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?;
    assert_eq!(
        check(endpoint.tls_config(trust)?).await,
        Ok(ServingStatus::Serving)
    );

    // A client that does not trust the server's CA refuses it.
    let other = Authority::new(dir.path(), "other")?;
    let distrust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(other.ca_file()?)?));
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?;
    assert!(check(endpoint.tls_config(distrust)?).await.is_err());
    Ok(())
}

#[test]
fn unreadable_or_non_pem_files_are_named_at_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate")?;
    let missing = dir.path().join("missing.pem");
    let args = |cert: &Path, key: &Path| TransportArgs {
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        ..TransportArgs::default()
    };
    let err = args(&missing, &garbage).load().err().unwrap_or_default();
    assert!(
        err.starts_with("--tls-cert") && err.contains("missing.pem"),
        "{err}"
    );
    let ca = Authority::new(dir.path(), "tandem")?;
    let (cert, _) = ca.leaf("server", &["localhost"])?;
    let err = args(&cert, &garbage).load().err().unwrap_or_default();
    assert!(
        err.starts_with("--tls-key") && err.contains("not a PEM file"),
        "{err}"
    );
    let err = TransportArgs {
        tls_client_ca: Some(cert),
        ..TransportArgs::default()
    }
    .load()
    .err()
    .unwrap_or_default();
    assert!(err.contains("--tls-client-ca needs --tls-cert"), "{err}");
    Ok(())
}

#[tokio::test]
async fn probes_get_plaintext_health_beside_a_mutual_tls_port() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = Authority::new(dir.path(), "tandem")?;
    let (server_cert, server_key) = ca.leaf("server", &["localhost"])?;
    let probe_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let transport = TransportArgs {
        tls_cert: Some(server_cert),
        tls_key: Some(server_key),
        tls_client_ca: Some(ca.ca_file()?),
        health_listen: Some(probe_addr),
        ..TransportArgs::default()
    }
    .load()?;
    start(transport).await?;
    let probe = Endpoint::from_shared(format!("http://{probe_addr}"))?;
    let mut status = check(probe.clone()).await;
    for _ in 0..50 {
        if status.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = check(probe.clone()).await;
    }
    assert_eq!(status, Ok(ServingStatus::Serving));
    // Only health: reflection (on the main port) is not served there.
    let channel = probe.connect().await?;
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let answer = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await;
    assert_eq!(
        answer.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unimplemented)
    );
    Ok(())
}
