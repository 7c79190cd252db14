//! OpenTelemetry traces from the real binaries as separate processes, configured by the
//! standard `OTEL_*` environment, to OTLP receivers on loopback:
//! - split (gateway, retrieval, ranking), OTLP/HTTP (the default protocol): one Recommend
//!   that carries a caller's `traceparent` arrives as one trace with the expected spans,
//!   parents and attributes; under load every call's spans keep arriving while servers run;
//! - embedded, OTLP/gRPC (the chart's default), with the service name and resource
//!   attributes from the environment.
//!
//! The binaries are the workspace's own: `cargo test --workspace` (`make test`) builds them
//! next to this test's gateway.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<Got>,
    /// Export requests, by the service that sent them.
    posts: HashMap<String, usize>,
    /// Anything wrong with a request (path, content type, body).
    errors: Vec<String>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn take(store: &Mutex<Received>, request: &ExportTraceServiceRequest) {
    let Ok(mut store) = store.lock() else { return };
    for resource_spans in &request.resource_spans {
        let resource: HashMap<String, String> = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
            .collect();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        *store.posts.entry(service.clone()).or_default() += 1;
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            store.spans.push(Got {
                service: service.clone(),
                trace_id: span.trace_id.clone(),
                span_id: span.span_id.clone(),
                parent: span.parent_span_id.clone(),
                name: span.name.clone(),
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect(),
                resource: resource.clone(),
            });
        }
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on loopback.
async fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    receiver_with(None).await
}

/// The same receiver behind TLS: `tls` holds its certificate and the CA its clients'
/// certificates must be signed by.
async fn receiver_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let store = Arc::new(Mutex::new(Received::default()));
    let shared = store.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = shared.clone();
            let serve =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let problem = match ExportTraceServiceRequest::decode(body) {
                            Ok(_) if path != "/v1/traces" => Some(format!("POST to {path}")),
                            Ok(_) if content_type != "application/x-protobuf" => {
                                Some(format!("content-type {content_type}"))
                            }
                            Ok(export) => {
                                take(&store, &export);
                                None
                            }
                            Err(e) => Some(format!("undecodable body: {e}")),
                        };
                        if let (Some(problem), Ok(mut store)) = (problem, store.lock()) {
                            store.errors.push(problem);
                        }
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(reply)))
                                .expect("response"),
                        )
                    }
                });
            let tls = tls.clone();
            let errors = shared.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                let served = match tls {
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), serve)
                            .await
                    }
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), serve)
                                .await
                        }
                        Err(e) => {
                            if let Ok(mut store) = errors.lock() {
                                store.errors.push(format!("TLS handshake: {e}"));
                            }
                            return;
                        }
                    },
                };
                drop(served);
            });
        }
    });
    (addr, store)
}

/// An OTLP/gRPC receiver (`TraceService/Export`) on loopback.
struct GrpcReceiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        take(&self.0, request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    grpc_receiver_with(None).await
}

async fn grpc_receiver_with(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let store = Arc::new(Mutex::new(Received::default()));
    let service = TraceServiceServer::new(GrpcReceiver(store.clone()));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).expect("receiver TLS");
    }
    tokio::spawn(
        server
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, store)
}

/// A server process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_tandem-gateway"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` (make test), which builds every server",
        path.display()
    );
    path
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Starts `name` with `args`, exporting traces to `otlp` with the standard environment
/// (`env` adds to it).
fn spawn(name: &str, args: &[String], otlp: SocketAddr) -> Process {
    spawn_with(name, args, otlp, &[])
}

fn spawn_with(name: &str, args: &[String], otlp: SocketAddr, env: &[(&str, &str)]) -> Process {
    let child = Command::new(binary(name))
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_SAMPLER")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Process(child)
}

/// An embedded gateway on the test catalog exporting to `otlp` (`env` adds to the OTel
/// environment), once SERVING: the process, its address and its state directory.
async fn embedded_gateway(
    otlp: SocketAddr,
    env: &[(&str, &str)],
) -> (Process, SocketAddr, tempfile::TempDir) {
    let data = test_data();
    let gateway = free_port();
    let state = state_dir();
    let process = spawn_with(
        "tandem-gateway",
        &[
            format!("--listen={gateway}"),
            format!("--items={}", data.join("items.parquet").display()),
            format!("--model-dir={}", data.join("models/ranker").display()),
            "--ranking-sessions=1".into(),
            format!("--event-log-dir={}", state.path().join("events").display()),
            format!("--served-log-dir={}", state.path().join("served").display()),
        ],
        otlp,
        env,
    );
    wait_serving(gateway).await;
    (process, gateway, state)
}

async fn wait_serving(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(reply) = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                && reply.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{addr} not SERVING within 120 s");
}

/// Waits until `done` holds for what was received (or fails after 20 s, showing it).
async fn wait_for(store: &Mutex<Received>, what: &str, done: impl Fn(&Received) -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let got = store.lock().expect("store");
            if done(&got) {
                return;
            }
            if Instant::now() > until {
                let names: Vec<_> = got.spans.iter().map(|s| (&s.service, &s.name)).collect();
                panic!(
                    "{what}: not received within 20 s; errors {:?}; spans {names:?}",
                    got.errors
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_recommend_is_one_trace_across_three_processes_and_spans_keep_coming_under_load() {
    let data = test_data();
    let items = format!("--items={}", data.join("items.parquet").display());
    let (otlp, store) = receiver().await;
    let (retrieval, ranking, gateway) = (free_port(), free_port(), free_port());
    let state = state_dir();
    let _retrieval = spawn(
        "tandem-retrieval",
        &[format!("--listen={retrieval}"), items.clone()],
        otlp,
    );
    let _ranking = spawn(
        "tandem-ranking",
        &[
            format!("--listen={ranking}"),
            items.clone(),
            format!("--model-dir={}", data.join("models/ranker").display()),
            "--ranking-sessions=1".into(),
        ],
        otlp,
    );
    let _gateway = spawn(
        "tandem-gateway",
        &[
            format!("--listen={gateway}"),
            items,
            format!("--retrieval-addr={retrieval}"),
            format!("--ranking-addr={ranking}"),
            format!("--event-log-dir={}", state.path().join("events").display()),
            format!("--served-log-dir={}", state.path().join("served").display()),
        ],
        otlp,
    );
    for addr in [retrieval, ranking, gateway] {
        wait_serving(addr).await;
    }
    let mut client = recommender(gateway).await;
    for user in ["traced-user", "load-0", "load-1", "load-2"] {
        clicks_in(&mut client, user, "kitchen", 5).await;
    }

    // The calling microservice's trace, continued by the gateway.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut traced = tonic::Request::new(request("traced-user", 10));
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .expect("ascii"),
    );
    let answer = client
        .recommend(traced)
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(answer.items.len(), 10);
    assert!(!answer.degraded, "{}", answer.degraded_reason);

    let in_trace = |got: &Received| -> Vec<Got> {
        got.spans
            .iter()
            .filter(|s| hex(&s.trace_id) == caller_trace)
            .cloned()
            .collect()
    };
    wait_for(
        &store,
        "the Recommend's trace from all three processes",
        |got| {
            let spans = in_trace(got);
            let has = |service: &str, name: &str| {
                spans.iter().any(|s| s.service == service && s.name == name)
            };
            has("tandem-gateway", "rules")
                && has("tandem-retrieval", "tandem.v1.RetrievalService/Search")
                && has("tandem-ranking", "tandem.v1.RankingService/Rank")
        },
    )
    .await;
    let spans = in_trace(&store.lock().expect("store"));
    let one = |service: &str, name: &str| -> Got {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "{service} {name}: {spans:#?}");
        found[0].clone()
    };

    // The gateway's server span continues the caller's span, with the RPC conventions.
    let server = one("tandem-gateway", "tandem.v1.RecommenderService/Recommend");
    assert_eq!(hex(&server.parent), caller_span);
    assert_eq!(server.kind, SpanKind::Server as i32);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "tandem.v1.RecommenderService"),
        ("rpc.method", "Recommend"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(
            server.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    // Its steps, each a child of the server span.
    let steps: HashMap<&str, Got> = ["plan", "retrieve", "rank", "rules"]
        .into_iter()
        .map(|name| {
            let step = one("tandem-gateway", name);
            assert_eq!(
                step.parent, server.span_id,
                "{name} is not under the server span"
            );
            (name, step)
        })
        .collect();
    assert_eq!(
        steps["retrieve"]
            .attributes
            .get("tandem.candidates")
            .map(String::as_str),
        Some("200")
    );
    assert!(
        steps["rank"]
            .attributes
            .contains_key("tandem.model_version")
    );

    // Each stage call: a client span under its step, continued by the stage's server span.
    for (step, service, method, process) in [
        (
            "retrieve",
            "tandem.v1.RetrievalService",
            "Search",
            "tandem-retrieval",
        ),
        ("rank", "tandem.v1.RankingService", "Rank", "tandem-ranking"),
    ] {
        let name = format!("{service}/{method}");
        let client_span = one("tandem-gateway", &name);
        assert_eq!(client_span.kind, SpanKind::Client as i32, "{name}");
        assert_eq!(
            client_span.parent, steps[step].span_id,
            "{name} is not under {step}"
        );
        assert_eq!(
            client_span.attributes.get("rpc.method").map(String::as_str),
            Some(method)
        );
        assert_eq!(
            client_span
                .attributes
                .get("rpc.grpc.status_code")
                .map(String::as_str),
            Some("0")
        );
        assert!(client_span.attributes.contains_key("server.address"));
        let stage = one(process, &name);
        assert_eq!(stage.kind, SpanKind::Server as i32, "{name}");
        assert_eq!(
            stage.parent, client_span.span_id,
            "{process} did not continue the trace"
        );
        assert_eq!(
            stage.attributes.get("rpc.service").map(String::as_str),
            Some(service)
        );
    }
    let search = one("tandem-retrieval", "tandem.v1.RetrievalService/Search");
    assert_eq!(one("tandem-retrieval", "ann.search").parent, search.span_id);
    // Nothing else in the trace: no health checks, no stray roots.
    let ids: HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    for span in &spans {
        assert!(
            ids.contains(&span.parent) || hex(&span.parent) == caller_span,
            "{} {} has a parent outside the trace",
            span.service,
            span.name
        );
    }

    // Under load: every call's trace arrives, and exports keep coming while the servers run
    // (the batch processor's thread sends; nothing waits for exit).
    let before = store
        .lock()
        .expect("store")
        .posts
        .get("tandem-gateway")
        .copied()
        .unwrap_or(0);
    const CALLS: usize = 300;
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let mut client = client.clone();
        calls.spawn(async move {
            for i in (worker..CALLS).step_by(6) {
                client
                    .recommend(request(&format!("load-{}", i % 3), 10))
                    .await
                    .expect("recommend under load");
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("load worker");
    }
    wait_for(&store, "a server span for every call under load", |got| {
        let traces: HashSet<&Vec<u8>> = got
            .spans
            .iter()
            .filter(|s| s.service == "tandem-gateway" && s.name.ends_with("/Recommend"))
            .map(|s| &s.trace_id)
            .collect();
        let ranked: usize = got
            .spans
            .iter()
            .filter(|s| s.service == "tandem-ranking" && s.name.ends_with("/Rank"))
            .count();
        traces.len() > CALLS && ranked > CALLS
    })
    .await;
    let got = store.lock().expect("store");
    assert!(got.errors.is_empty(), "{:?}", got.errors);
    let during = got.posts.get("tandem-gateway").copied().unwrap_or(0) - before;
    assert!(
        during >= 2,
        "the gateway exported {during} times under load"
    );
    // Probes and the test's health checks are not traced.
    assert!(!got.spans.iter().any(|s| s.name.starts_with("grpc.health")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_gateway_exports_by_otlp_grpc_under_the_environment_s_service_name() {
    let (otlp, store) = grpc_receiver().await;
    let (_gateway, gateway, _state) = embedded_gateway(
        otlp,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "shop-recs"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=ci,team=recs",
            ),
        ],
    )
    .await;
    let mut client = recommender(gateway).await;
    clicks_in(&mut client, "grpc-user", "kitchen", 5).await;
    const CALLS: usize = 200;
    for _ in 0..CALLS {
        client
            .recommend(request("grpc-user", 10))
            .await
            .expect("recommend");
    }
    wait_for(&store, "every Recommend's spans by OTLP/gRPC", |got| {
        got.spans.iter().filter(|s| s.name == "rules").count() >= CALLS
    })
    .await;
    let got = store.lock().expect("store");
    let servers: Vec<&Got> = got
        .spans
        .iter()
        .filter(|s| s.name == "tandem.v1.RecommenderService/Recommend")
        .collect();
    assert_eq!(servers.len(), CALLS);
    let server = servers[0];
    assert_eq!(server.service, "shop-recs");
    assert_eq!(
        server
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("ci")
    );
    assert!(server.parent.is_empty(), "no caller trace: a root span");
    for step in ["plan", "retrieve", "rank", "rules"] {
        let children: Vec<&Got> = got
            .spans
            .iter()
            .filter(|s| s.name == step && s.parent == server.span_id)
            .collect();
        assert_eq!(children.len(), 1, "{step} under the server span");
        assert_eq!(children[0].trace_id, server.trace_id);
    }
    // In one process the stages are called, not dialled: no client spans.
    assert!(!got.spans.iter().any(|s| s.kind == SpanKind::Client as i32));
}

/// A collector that requires mutual TLS: its CA, its certificate and the client certificate
/// the servers present, as the `OTEL_EXPORTER_OTLP_*` TLS variables name them.
struct CollectorTls {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl CollectorTls {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority =
            tandem_server::testing::Authority::new(dir.path(), "collector").expect("CA");
        let ca = authority.ca_file().expect("CA file");
        let server = authority
            .leaf("collector", &["localhost", "127.0.0.1"])
            .expect("collector certificate");
        let client = authority
            .leaf("exporter", &["tandem-gateway"])
            .expect("client certificate");
        Self {
            _dir: dir,
            ca,
            server,
            client,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                self.ca.display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                self.client.0.display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                self.client.1.display().to_string(),
            ),
        ]
    }

    /// The HTTPS receiver's TLS: its certificate, client certificates required.
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("CA pem") {
            roots.add(cert.expect("CA cert")).expect("CA root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server.0)
            .expect("cert pem")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server.1).expect("key pem");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The gRPC receiver's TLS: its certificate, client certificates required.
    fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        let read = |p: &PathBuf| std::fs::read(p).expect("pem");
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read(&self.server.0),
                read(&self.server.1),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read(&self.ca)))
    }
}

/// Starts an embedded gateway exporting to `otlp` with `env`, makes `calls` Recommends and
/// waits until the collector has every one of their server spans.
async fn recommends_reach(
    otlp_env: &[(&str, &str)],
    store: &Mutex<Received>,
    user: &str,
    calls: usize,
) {
    // The endpoint comes with `otlp_env`.
    let (_gateway, gateway, _state) = embedded_gateway(free_port(), otlp_env).await;
    let mut client = recommender(gateway).await;
    clicks_in(&mut client, user, "kitchen", 3).await;
    for _ in 0..calls {
        client
            .recommend(request(user, 10))
            .await
            .expect("recommend");
    }
    wait_for(store, "every Recommend's server span over TLS", |got| {
        got.spans
            .iter()
            .filter(|s| s.name == "tandem.v1.RecommenderService/Recommend")
            .count()
            >= calls
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_reach_a_collector_that_requires_mutual_tls_by_http_and_by_grpc() {
    let tls = CollectorTls::new();
    let tls_env = tls.env();
    let with = |endpoint: String, protocol: &'static str| {
        let mut env: Vec<(&str, String)> = tls_env.clone();
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()));
        env
    };

    let (https, store) = receiver_with(Some(tls.acceptor())).await;
    let env = with(
        format!("https://localhost:{}", https.port()),
        "http/protobuf",
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    recommends_reach(&env, &store, "https-user", 20).await;
    {
        let got = store.lock().expect("store");
        assert!(got.errors.is_empty(), "{:?}", got.errors);
        assert_eq!(got.spans[0].service, "tandem-gateway");
    }

    let (grpcs, store) = grpc_receiver_with(Some(tls.tonic_server())).await;
    let env = with(format!("https://localhost:{}", grpcs.port()), "grpc");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    recommends_reach(&env, &store, "grpcs-user", 20).await;

    // Without the client certificate the collector refuses the connection: nothing arrives
    // (what the test above shows is the exporter presenting it, not a lenient receiver).
    let (strict, store) = receiver_with(Some(tls.acceptor())).await;
    let endpoint = format!("https://localhost:{}", strict.port());
    let ca = tls.ca.display().to_string();
    let (_gateway, gateway, _state) = embedded_gateway(
        strict,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ],
    )
    .await;
    let mut client = recommender(gateway).await;
    clicks_in(&mut client, "anonymous-exporter", "kitchen", 3).await;
    client
        .recommend(request("anonymous-exporter", 10))
        .await
        .expect("recommend");
    wait_for(&store, "the refused handshake", |got| {
        !got.errors.is_empty()
    })
    .await;
    let got = store.lock().expect("store");
    assert!(
        got.spans.is_empty(),
        "spans arrived without a client certificate"
    );
    assert!(
        got.errors.iter().all(|e| e.starts_with("TLS handshake")),
        "{:?}",
        got.errors
    );
}
