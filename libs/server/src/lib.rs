//! What every tandem gRPC server shares: message limits, health (NOT_SERVING until loaded),
//! reflection v1 and v1alpha, readiness of lazily loaded state, graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::Status;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Largest request or response, in bytes (5000 candidates with ids fit well within).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long in-flight requests may run after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn,hnsw_rs=warn"));
    // A second init (tests starting several servers) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

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
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Nagle's algorithm with delayed ACKs adds ~40 ms to small unary calls; the builder's
    // tcp_nodelay only covers listeners tonic binds itself.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
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
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
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
        result = &mut server => result,
        () = grace_expired => {
            tracing::warn!("grace period over: dropping requests still in flight");
            Ok(())
        }
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
