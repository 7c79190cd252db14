//! Logs and traces. Logs go to stderr (`RUST_LOG`). Traces leave by OTLP when the standard
//! `OTEL_*` environment asks for them (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `_PROTOCOL`,
//! `_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_BSP_*`), as collectors and operators expect; unset, no span is even built. An
//! `https://` endpoint is reached over TLS, verified against
//! `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` when set (the system's roots otherwise), with a
//! client certificate from `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY` for mutual TLS.
//!
//! Spans are `tracing` spans made into OpenTelemetry ones by `tracing-opentelemetry`, so the
//! libraries only ever say `info_span!`. The W3C `traceparent` travels in gRPC metadata: a
//! server continues its caller's trace, and the gateway's stage calls carry theirs on.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Target of every span tandem makes for traces; only these reach the exporter.
const SPAN_TARGET_PREFIX: &str = "tandem";

/// Why traces could not be set up (a start-up error: the environment asked for them).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?}: expected `http/protobuf` (the default), `http/json` or `grpc`")]
    Protocol { var: &'static str, value: String },
    #[error("{var}={path}: {error}")]
    TlsFile {
        var: &'static str,
        path: String,
        error: String,
    },
    #[error("{set} is set but {missing} is not: mutual TLS needs both the certificate and its key")]
    TlsPair {
        set: &'static str,
        missing: &'static str,
    },
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Keeps the trace pipeline alive; dropping it flushes the spans still queued.
#[must_use = "dropping it stops and flushes the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("OTLP trace exporter: flushing at exit failed: {e}");
        }
    }
}

/// The OTLP protocol, as the specification resolves it (signal variable first; default
/// `http/protobuf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

fn env_value(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn protocol() -> Result<Protocol, TelemetryError> {
    let var = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|var| env_value(var).map(|value| (var, value)));
    match var {
        None => Ok(Protocol::HttpProtobuf),
        Some((var, value)) => match value.to_ascii_lowercase().as_str() {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err(TelemetryError::Protocol { var, value }),
        },
    }
}

/// Whether the environment asks for exported traces: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns them off.
fn exporting_wanted() -> bool {
    let endpoint = env_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = env_value("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let no_exporter =
        env_value("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    endpoint.is_some() && !disabled && !no_exporter
}

/// The resource: the environment's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with
/// `service.name` = this binary's role when the environment names none.
fn resource(default_service_name: &str) -> opentelemetry_sdk::Resource {
    let named = env_value("OTEL_SERVICE_NAME").is_some()
        || env_value("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = opentelemetry_sdk::Resource::builder();
    if named {
        builder.build()
    } else {
        builder
            .with_service_name(default_service_name.to_owned())
            .build()
    }
}

/// The tracer provider for the configured protocol. HTTP export runs on the SDK's batch
/// thread with a blocking client (an async client there, without a Tokio runtime, would drop
/// every span without a word); gRPC export needs tonic, so its batches run on this runtime.
fn provider(
    protocol: Protocol,
    default_service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
    let tls = CollectorTls::from_env()?;
    let tls = endpoint_is_https(protocol).then_some(tls);
    let builder = SdkTracerProvider::builder().with_resource(resource(default_service_name));
    let exporter_error =
        |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
    let builder = match protocol {
        protocol @ (Protocol::HttpProtobuf | Protocol::HttpJson) => {
            let exporter = SpanExporter::builder().with_http().with_protocol(
                if protocol == Protocol::HttpJson {
                    opentelemetry_otlp::Protocol::HttpJson
                } else {
                    opentelemetry_otlp::Protocol::HttpBinary
                },
            );
            let exporter = match tls {
                Some(tls) => exporter.with_http_client(tls.http_client()?),
                None => exporter,
            }
            .build()
            .map_err(exporter_error)?;
            builder.with_batch_exporter(exporter)
        }
        Protocol::Grpc => {
            let exporter = SpanExporter::builder().with_tonic();
            let exporter = match tls {
                Some(tls) => exporter.with_tls_config(tls.tonic_config()),
                None => exporter,
            }
            .build()
            .map_err(exporter_error)?;
            let batches = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            builder.with_span_processor(batches)
        }
    };
    Ok(builder.build())
}

/// Whether the configured endpoint is reached over TLS: `https://`, or (gRPC only, as the
/// exporter specification says) no scheme at all unless `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`
/// is true.
fn endpoint_is_https(protocol: Protocol) -> bool {
    let Some(endpoint) = env_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return false;
    };
    let endpoint = endpoint.to_ascii_lowercase();
    if endpoint.starts_with("https://") {
        return true;
    }
    let insecure = env_value("OTEL_EXPORTER_OTLP_TRACES_INSECURE")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_INSECURE"))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    protocol == Protocol::Grpc && !endpoint.contains("://") && !insecure
}

/// TLS material for the collector connection, from the OTLP exporter specification's
/// variables (the `TRACES_` one first), read at start-up so that a wrong path stops the
/// process instead of every export failing later.
#[derive(Debug, Clone, Default)]
struct CollectorTls {
    /// PEM roots that verify the collector (and the variable that named them); the system's
    /// roots when unset.
    ca: Option<(&'static str, Vec<u8>)>,
    /// PEM certificate chain and key presented to the collector (and the certificate's
    /// variable).
    client: Option<(&'static str, Vec<u8>, Vec<u8>)>,
}

/// The first of a variable's signal-specific and general names that is set, read as a file.
fn tls_file(vars: [&'static str; 2]) -> Result<Option<(&'static str, Vec<u8>)>, TelemetryError> {
    let Some((var, path)) = vars
        .into_iter()
        .find_map(|var| env_value(var).map(|path| (var, path)))
    else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(pem) => Ok(Some((var, pem))),
        Err(e) => Err(TelemetryError::TlsFile {
            var,
            path,
            error: e.to_string(),
        }),
    }
}

/// A TLS file the collector connection cannot use, named by its variable.
fn invalid_pem(var: &'static str, error: &str) -> TelemetryError {
    TelemetryError::TlsFile {
        var,
        path: env_value(var).unwrap_or_default(),
        error: error.to_owned(),
    }
}

impl CollectorTls {
    /// Empty when no TLS variable is set: an `https://` endpoint then uses the system's roots
    /// and no client certificate.
    fn from_env() -> Result<Self, TelemetryError> {
        let ca = tls_file([
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ])?;
        let cert = tls_file([
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ])?;
        let key = tls_file([
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ])?;
        let client = match (cert, key) {
            (Some((var, cert)), Some((key_var, key))) => {
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(invalid_pem(key_var, "no PEM private key in it"));
                }
                Some((var, cert, key))
            }
            (None, None) => None,
            (Some((set, _)), None) => {
                return Err(TelemetryError::TlsPair {
                    set,
                    missing: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                });
            }
            (None, Some((set, _))) => {
                return Err(TelemetryError::TlsPair {
                    set,
                    missing: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                });
            }
        };
        let certificates = ca.iter().map(|(var, pem)| (*var, pem));
        let client_certificates = client.iter().map(|(var, pem, _)| (*var, pem));
        for (var, pem) in certificates.chain(client_certificates) {
            let certificates = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>();
            if !certificates.is_ok_and(|c| !c.is_empty()) {
                return Err(invalid_pem(var, "no PEM certificate in it"));
            }
        }
        Ok(Self { ca, client })
    }

    /// The TLS settings of the OTLP/gRPC channel.
    fn tonic_config(self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new();
        let config = match self.ca {
            Some((_, ca)) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        match self.client {
            Some((_, cert, key)) => {
                config.identity(tonic::transport::Identity::from_pem(cert, key))
            }
            None => config,
        }
    }

    /// The blocking HTTP client of OTLP/HTTP export (it runs on the SDK's batch thread), with
    /// these roots and identity and the exporter's timeout (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`,
    /// milliseconds, default 10 s).
    fn http_client(self) -> Result<reqwest::blocking::Client, TelemetryError> {
        let timeout_ms = env_value("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env_value("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(10_000);
        let invalid = |var: &'static str| move |e: reqwest::Error| invalid_pem(var, &e.to_string());
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_millis(timeout_ms));
        if let Some((var, ca)) = self.ca {
            let roots = reqwest::Certificate::from_pem_bundle(&ca).map_err(invalid(var))?;
            builder = builder.tls_certs_only(roots);
        }
        if let Some((var, mut cert, key)) = self.client {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            builder = builder.identity(reqwest::Identity::from_pem(&cert).map_err(invalid(var))?);
        }
        // A blocking client owns a runtime of its own, which must not be built (nor later
        // dropped) on a Tokio worker: build it on a short-lived thread, as the exporter does.
        std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| TelemetryError::Exporter("building the HTTP client panicked".into()))?
            .map_err(|e| TelemetryError::Exporter(format!("HTTP client: {e}")))
    }
}

/// Logs to stderr (`RUST_LOG` filters; default `info`) and, when the `OTEL_*` environment
/// names an endpoint, exports tandem's spans by OTLP under `default_service_name` (unless
/// `OTEL_SERVICE_NAME` says otherwise). Call inside the Tokio runtime; keep the guard until
/// exit. A second call (tests starting several servers) leaves the first one's set-up.
pub fn init_telemetry(default_service_name: &str) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn,hnsw_rs=warn"));
    // Logs never need spans: keeping this layer out of them leaves a span unbuilt (a few
    // nanoseconds) whenever nothing exports traces.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.is_event()).and(filter));
    if !exporting_wanted() {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry { provider: None });
    }
    let protocol = protocol()?;
    // The HTTP client's TLS (rustls) takes the process's crypto provider: ring, which tonic's
    // TLS already links (reqwest's default would add a second one, aws-lc). Already set: kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = provider(protocol, default_service_name)?;
    let tracer = provider.tracer("tandem");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target().starts_with(SPAN_TARGET_PREFIX)
                && (m.is_span() || *m.level() <= tracing::Level::WARN)
        }));
    if tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_err()
    {
        // Someone else owns the subscriber: exporting from here would send nothing.
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    tracing::info!(?protocol, "exporting traces by OTLP (OTEL_* environment)");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Reads `traceparent`/`tracestate` from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes `traceparent`/`tracestate` into outgoing gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Calls whose spans would only be noise: probes every few seconds, reflection.
fn untraced(service: &str) -> bool {
    service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.")
}

/// The server span of one call to `/service/method`, continuing the caller's trace when its
/// headers carry a `traceparent`. Disabled (free) while nothing exports traces.
pub(crate) fn server_span(service: &str, method: &str, headers: &http::HeaderMap) -> Span {
    if untraced(service) {
        return Span::none();
    }
    let span = rpc_span("server", service, method);
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// One call's span with the RPC semantic conventions; `kind` is `server` or `client`.
fn rpc_span(kind: &'static str, service: &str, method: &str) -> Span {
    tracing::info_span!(
        target: "tandem::rpc",
        "rpc",
        otel.name = format_args!("{service}/{method}"),
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
    )
}

/// Records a server call's status: codes that are the server's fault mark the span an error
/// (the RPC semantic conventions' rule for servers).
pub(crate) fn record_server_status(span: &Span, code: tonic::Code) {
    use tonic::Code;
    span.record("rpc.grpc.status_code", code as i64);
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The client span of one outgoing call (a child of the current span), with its context put
/// into `request`'s metadata so that the server continues this trace.
pub fn client_span<T>(
    request: &mut tonic::Request<T>,
    service: &'static str,
    method: &'static str,
    peer: &str,
) -> Span {
    let span = rpc_span("client", service, method);
    if !span.is_disabled() {
        span.record("server.address", peer);
        TraceContextPropagator::new().inject_context(
            &span.context(),
            &mut MetadataInjector(request.metadata_mut()),
        );
    }
    span
}

/// Records how an outgoing call ended: any status but OK is an error for the caller.
pub fn record_client_status(span: &Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}
