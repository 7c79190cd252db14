//! What every tandem gRPC server shares: message limits, health (NOT_SERVING until loaded),
//! reflection v1 and v1alpha, readiness of lazily loaded state, graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use subtle::ConstantTimeEq as _;

use tokio::net::TcpListener;

mod metrics;
mod one_write;
#[cfg(feature = "test-util")]
pub mod testing;
mod traces;
mod transport;
pub use metrics::{GrpcTelemetryLayer, MetricsArgs, ROWS_BUCKETS, SECONDS_BUCKETS};
pub use one_write::OneWrite;
use tonic::Status;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
pub use traces::{Telemetry, TelemetryError, client_span, init_telemetry, record_client_status};
pub use transport::{ServerTransport, TransportArgs};

/// Every binary that links the servers' plumbing (the three services, their tests and the e2e
/// bench) runs on mimalloc, not glibc's malloc: a Recommend costs about a tenth less server
/// CPU with it (cheaper small allocations, and its large segments sit on transparent huge
/// pages, which the index's random reads want); figures in load-tests/e2e/README.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest request or response, in bytes (5000 candidates with ids fit well within).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long in-flight requests may run after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// State loaded after the server starts listening; handlers answer UNAVAILABLE until then.
#[derive(Debug)]
pub struct Ready<T>(Arc<OnceLock<Arc<T>>>);

impl<T> Clone for Ready<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Ready<T> {
    fn default() -> Self {
        Self(Arc::new(OnceLock::new()))
    }
}

impl<T> Ready<T> {
    pub fn loaded(value: Arc<T>) -> Self {
        let ready = Self::default();
        ready.set(value);
        ready
    }

    pub fn set(&self, value: Arc<T>) {
        let _ = self.0.set(value);
    }

    pub fn get(&self) -> Result<&Arc<T>, Status> {
        self.0
            .get()
            .ok_or_else(|| Status::unavailable("still loading; health reports SERVING when ready"))
    }
}

/// Health service plus the names it reports on.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    /// The health service alone, for the plaintext probe listener.
    probe_routes: Routes,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.services)
            .finish()
    }
}

impl Health {
    /// Sets the whole server ("") and each service NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Routes with health and reflection added; everything starts NOT_SERVING.
pub async fn base_routes(
    services: &[&'static str],
) -> Result<(Routes, Health), Box<dyn std::error::Error + Send + Sync>> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        services: services.to_vec(),
        probe_routes: Routes::new(health_service.clone()),
    };
    health.set_serving(false).await;
    // Advertise what this server serves, not every service in the descriptor set.
    let reflection = |reflection_name: &str| {
        services
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health", reflection_name])
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
    };
    let v1 = reflection("grpc.reflection.v1.ServerReflection").build_v1()?;
    let v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
    let routes = Routes::new(health_service)
        .add_service(v1)
        .add_service(v1alpha);
    Ok((routes, health))
}

/// Service name as health and reflection report it.
pub fn service_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// Binds `addr` (port 0 picks a free one) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `routes` until `shutdown` resolves, then drains in-flight requests for at most
/// [`SHUTDOWN_GRACE`]. Health turns NOT_SERVING first, so that balancers stop sending.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    health: Health,
    transport: ServerTransport,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Nagle's algorithm with delayed ACKs adds ~40 ms to small unary calls; the builder's
    // tcp_nodelay only covers listeners tonic binds itself.
    let incoming = tokio_stream::StreamExt::map(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        |accepted| accepted.map(OneWrite::new),
    );
    // Aborted when this returns: the probes go with the server.
    let _probes = match transport.health_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            tracing::info!(%addr, "health probes: plaintext, grpc.health.v1 only");
            let probes = tonic::transport::Server::builder()
                .add_routes(health.probe_routes.clone())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
            Some(AbortOnDrop(tokio::spawn(probes)))
        }
        None => None,
    };
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        health.set_serving(false).await;
        tracing::info!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "shutting down: draining in-flight requests"
        );
        let _ = draining_tx.send(());
    };
    let server = transport
        .apply(tonic::transport::Server::builder().tcp_nodelay(true))?
        .layer(GrpcTelemetryLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    let grace_expired = async {
        if draining_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = &mut server => Ok(result?),
        () = grace_expired => {
            tracing::warn!("grace period over: dropping requests still in flight");
            Ok(())
        }
    }
}

/// Why a server stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A task that ends with its handle.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The shared secret that RPCs changing what a server serves (model loads, traffic splits,
/// catalog upserts and deletes) require when set; reads stay open. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminToken(Option<Arc<str>>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(set)"
        } else {
            "AdminToken(none)"
        })
    }
}

/// The admin flag every server takes (flattened into its config).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// Shared secret that model loads, traffic splits, catalog upserts and deletes and user
    /// erasure require as `authorization: Bearer <token>`; unset = anyone may call them (warned
    /// about when not listening on loopback). Reads never need it.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", value_parser = AdminToken::parse, hide_env_values = true)]
    admin_token: Option<AdminToken>,
}

impl AdminArgs {
    /// The configured token, or none (admin RPCs open).
    pub fn token(&self) -> AdminToken {
        self.admin_token.clone().unwrap_or_default()
    }
}

/// The metadata key admin calls carry the token in, as `Bearer <token>`.
pub const ADMIN_AUTH_HEADER: &str = "authorization";

impl AdminToken {
    /// `None` leaves admin RPCs open. A token must be non-empty printable ASCII without
    /// spaces, so that it fits in a gRPC header.
    pub fn new(token: Option<String>) -> Result<Self, String> {
        match token {
            None => Ok(Self(None)),
            Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                Err("--admin-token must be non-empty printable ASCII without spaces".into())
            }
            Some(t) => Ok(Self(Some(t.into()))),
        }
    }

    /// For clap's `value_parser`.
    pub fn parse(token: &str) -> Result<Self, String> {
        Self::new(Some(token.to_owned()))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// UNAUTHENTICATED without `authorization: Bearer <token>`, PERMISSION_DENIED with another
    /// token; always OK when no token is configured.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.0 else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get(ADMIN_AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this admin RPC needs `authorization: Bearer <token>` (the server's --admin-token)",
                )
            })?;
        // Constant time (subtle's optimisation barriers), so the response time does not
        // reveal how much of a guess was right.
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "the admin token does not match the server's --admin-token",
            ))
        }
    }

    /// Warns at start-up when admin RPCs are open to more than this host.
    pub fn warn_if_open(&self, listen: SocketAddr) {
        if !self.is_set() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "admin RPCs (model loads, traffic split, catalog upserts and deletes) accept any caller: set --admin-token / TANDEM_ADMIN_TOKEN"
            );
        }
    }
}

#[cfg(test)]
mod admin_token_tests {
    use super::*;

    fn call(auth: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(auth) = auth {
            request
                .metadata_mut()
                .insert(ADMIN_AUTH_HEADER, auth.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn a_set_token_is_required_and_must_match() {
        let token = AdminToken::new(Some("s3cret".into())).expect("valid");
        assert_eq!(
            token.check(&call(None)).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            token.check(&call(Some("s3cret"))).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            token
                .check(&call(Some("Bearer s3cre")))
                .map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(token.check(&call(Some("Bearer s3cret"))).is_ok());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn no_token_leaves_admin_open_and_bad_tokens_are_refused_at_start() {
        assert!(
            AdminToken::new(None)
                .expect("none")
                .check(&call(None))
                .is_ok()
        );
        for bad in ["", "two words", "tab\t"] {
            assert!(AdminToken::new(Some(bad.into())).is_err(), "{bad:?}");
        }
    }
}
