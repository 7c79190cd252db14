//! The probe against a real `grpc.health.v1` server on loopback: exit 0 only for SERVING,
//! 1 with the status or the connection error on stderr otherwise.

use std::process::Command;

use tonic_health::ServingStatus;

fn probe(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem-healthcheck"))
        .args(args)
        .env_remove("TANDEM_LISTEN")
        .output()
        .expect("run tandem-healthcheck");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_passes_not_serving_and_nothing_listening_fail() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let addr_flag = format!("--addr={addr}");

    let (ok, stderr) = probe(&[&addr_flag]);
    assert!(!ok);
    assert!(stderr.contains("NOT_SERVING"), "{stderr}");

    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let (ok, stderr) = probe(&[&addr_flag]);
    assert!(ok, "{stderr}");

    // An unknown service is not SERVING.
    let (ok, stderr) = probe(&[&addr_flag, "--service=tandem.v1.Nope"]);
    assert!(!ok);
    assert!(stderr.contains("Health/Check"), "{stderr}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let (ok, stderr) = probe(&[&format!("--addr={closed}"), "--timeout-ms=500"]);
    assert!(!ok);
    assert!(stderr.contains("connect to"), "{stderr}");
}
