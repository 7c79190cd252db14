//! Prometheus metrics: the exporter (`--metrics-listen`, metrics-exporter-prometheus serves the
//! text format; libraries record through the `metrics` facade and never see it), and the
//! go-grpc-prometheus server metrics every tandem server reports, so that existing gRPC
//! dashboards and alerts work unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prost::Message;

/// Histogram buckets of every `*_seconds` metric: from 100 µs (a warm Recommend's stages)
/// to 10 s (go-grpc-prometheus's top bucket).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `*_rows` histograms (ranking batch sizes).
pub const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// The metrics flag every server takes (flattened into its config).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP); unset = none.
    #[arg(long, env = "TANDEM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts the exporter on the current runtime when `--metrics-listen` is set. Call before
    /// [`crate::serve`]: handles made before the recorder exists record nothing.
    pub fn install(&self) -> Result<(), String> {
        let Some(addr) = self.metrics_listen else {
            return Ok(());
        };
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROWS_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("tandem_ranking_batch_requests".into()),
                    ROWS_BUCKETS,
                )
            })
            .map_err(|e| format!("--metrics-listen: {e}"))?
            .install()
            .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
        Ok(())
    }
}

/// go-grpc-prometheus's `grpc_type` of each method, read from the descriptors this server
/// serves (tandem's, health's, reflection's).
fn method_types() -> HashMap<String, &'static str> {
    let mut types = HashMap::new();
    for encoded in [
        tandem_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    let kind = match (
                        method.client_streaming.unwrap_or(false),
                        method.server_streaming.unwrap_or(false),
                    ) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    types.insert(
                        format!("/{service_name}/{}", method.name.unwrap_or_default()),
                        kind,
                    );
                }
            }
        }
    }
    types
}

/// The handles of one method, made once (a registry lookup per call would hash every label).
struct MethodMetrics {
    started: Counter,
    handling: Histogram,
    labels: [(&'static str, String); 3],
    /// `grpc_server_handled_total` by code, made on first use.
    handled: std::sync::Mutex<HashMap<&'static str, Counter>>,
}

impl MethodMetrics {
    fn new(kind: &'static str, service: &str, method: &str) -> Self {
        let labels = [
            ("grpc_type", kind.to_owned()),
            ("grpc_service", service.to_owned()),
            ("grpc_method", method.to_owned()),
        ];
        Self {
            started: metrics::counter!("grpc_server_started_total", &labels),
            handling: metrics::histogram!("grpc_server_handling_seconds", &labels),
            labels,
            handled: std::sync::Mutex::default(),
        }
    }

    fn finish(&self, code: &'static str, started: Instant) {
        self.handling.record(started.elapsed().as_secs_f64());
        let counter = match self.handled.lock() {
            Ok(mut handled) => handled
                .entry(code)
                .or_insert_with(|| {
                    let mut labels = self.labels.to_vec();
                    labels.push(("grpc_code", code.to_owned()));
                    metrics::counter!("grpc_server_handled_total", &labels)
                })
                .clone(),
            Err(_) => return,
        };
        counter.increment(1);
    }
}

/// go-grpc's names for the codes (`codes.Code.String()`), which dashboards match on.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// go-grpc-prometheus's server metrics and the server span (see [`crate::traces`]) of every
/// call. Metrics: `grpc_server_started_total`,
/// `grpc_server_handled_total` (by code: from the trailers, or from the headers of a
/// trailers-only answer; "Canceled" when the client went away first) and
/// `grpc_server_handling_seconds` (until the last frame).
#[derive(Clone)]
pub struct GrpcTelemetryLayer {
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
}

impl std::fmt::Debug for GrpcTelemetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTelemetryLayer")
            .field("methods", &self.methods.len())
            .finish()
    }
}

impl GrpcTelemetryLayer {
    /// One set of handles per known method; calls to unknown paths are not counted (they get
    /// UNIMPLEMENTED, and counting them would let callers mint label values).
    pub fn new() -> Self {
        let methods = method_types()
            .into_iter()
            .filter_map(|(path, kind)| {
                let (service, method) = path.trim_start_matches('/').split_once('/')?;
                let metrics = Arc::new(MethodMetrics::new(kind, service, method));
                Some((path, metrics))
            })
            .collect();
        Self {
            methods: Arc::new(methods),
        }
    }
}

impl Default for GrpcTelemetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower_layer::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
}

impl<S> std::fmt::Debug for GrpcTelemetry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcTelemetry")
    }
}

/// The method being called, when it started and its server span, until its answer is done.
struct InFlight {
    method: Arc<MethodMetrics>,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl InFlight {
    /// `code`: the `grpc-status` value.
    fn finish(&mut self, code: &[u8]) {
        if !self.done {
            self.done = true;
            self.method.finish(code_name(code), self.started);
            let code = std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.parse().ok())
                .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
            crate::traces::record_server_status(&self.span, code);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Dropped before the status went out: the client cancelled (or the connection died).
        self.finish(b"1");
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcTelemetry<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let in_flight = self.methods.get(request.uri().path()).map(|m| {
            m.started.increment(1);
            InFlight {
                method: m.clone(),
                started: Instant::now(),
                span: crate::traces::server_span(&m.labels[1].1, &m.labels[2].1, request.headers()),
                done: false,
            }
        });
        let span = in_flight
            .as_ref()
            .map_or_else(tracing::Span::none, |f| f.span.clone());
        let answer = tracing::Instrument::instrument(self.inner.call(request), span);
        Box::pin(async move {
            let response = answer.await?;
            let mut in_flight = in_flight;
            // A trailers-only answer (most errors) carries its status in the headers.
            if let (Some(flight), Some(code)) =
                (in_flight.as_mut(), response.headers().get("grpc-status"))
            {
                flight.finish(code.as_bytes());
            }
            Ok(response.map(|body| MeteredBody { body, in_flight }))
        })
    }
}

pin_project_lite::pin_project! {
    /// The answer's body; its trailers carry the call's status.
    pub struct MeteredBody<B> {
        #[pin]
        body: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(flight) = this.in_flight.as_mut()
        {
            flight.finish(trailers.get("grpc-status").map_or(b"2", |c| c.as_bytes()));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
