//! Connections and workers. `concurrency` workers share `connections` HTTP/2 connections
//! round-robin (worker w uses connection w mod connections, as in ghz). Workers claim requests
//! from one pacer in order; in open loop a worker sleeps until the claimed request's intended
//! send time and latency is measured from that time, so when the server stalls (or every
//! worker is busy) the waiting shows up as latency instead of as requests never sent.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost_reflect::{DynamicMessage, MethodDescriptor};
use tokio::sync::watch;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::clock::rfc3339;
use crate::codec::DynamicCodec;
use crate::config::RunConfig;
use crate::error::{ConfigError, RunError};
use crate::payload::{DataProvider, MetadataProvider};
use crate::report::{EndReason, LATE_THRESHOLD, MAX_DETAILS, ResultDetail, Stats, error_string};
use crate::schedule::Pacer;
use crate::template::{CallData, MethodNames};

/// Lateness forgiven per request: tokio's timer has millisecond resolution, so a wake-up up to
/// this late is the timer, not the server or a backlog. Anything later counts as latency.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// The endpoint for `cfg.host`, plaintext when `insecure`.
pub fn endpoint(cfg: &RunConfig) -> Result<Endpoint, ConfigError> {
    let host = cfg.host.trim();
    let scheme = if cfg.insecure { "http" } else { "https" };
    let uri = if host.contains("://") {
        host.to_string()
    } else {
        format!("{scheme}://{host}")
    };
    let bad_host = |e: String| ConfigError::Invalid {
        key: "host".into(),
        reason: format!("{host:?} is not host:port ({e})"),
    };
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|e| bad_host(e.to_string()))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true);
    if let Some(k) = cfg.keepalive {
        ep = ep.http2_keep_alive_interval(k).keep_alive_while_idle(true);
    }
    if !cfg.insecure {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let Some(ca) = &cfg.tls.cacert else {
            return Err(ConfigError::Invalid {
                key: "cacert".into(),
                reason: "TLS needs a CA certificate (tandem-load has no system trust store): \
                         set cacert to a PEM file, or insecure: true for plaintext"
                    .into(),
            });
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("cacert", ca)?));
        if let Some(name) = &cfg.tls.cname {
            tls = tls.domain_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        ep = ep.tls_config(tls).map_err(|e| ConfigError::Invalid {
            key: "cacert".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(ep)
}

/// Opens `cfg.connections` separate HTTP/2 connections.
pub async fn connect(cfg: &RunConfig, ep: &Endpoint) -> Result<Vec<Channel>, RunError> {
    let mut channels = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let ch = ep.connect().await.map_err(|e| RunError::Connect {
            host: cfg.host.clone(),
            error: error_chain(&e),
        })?;
        channels.push(ch);
    }
    Ok(channels)
}

/// An error with its causes, since tonic's transport errors say little at the top level.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the run measured and how it ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub stats: Stats,
    pub total: Duration,
    pub end_reason: EndReason,
}

/// Everything a worker needs, shared.
struct Shared {
    cfg: RunConfig,
    pacer: Mutex<Pacer>,
    start: Instant,
    wall_start: SystemTime,
    completed: std::sync::atomic::AtomicU64,
    path: PathAndQuery,
    codec: DynamicCodec,
    data: DataProvider,
    metadata: MetadataProvider,
    names: MethodNames,
    with_details: bool,
}

/// The method's HTTP/2 path, "/pkg.Service/Method".
pub fn method_path(method: &MethodDescriptor) -> Result<PathAndQuery, ConfigError> {
    let p = format!("/{}/{}", method.parent_service().full_name(), method.name());
    PathAndQuery::from_str(&p).map_err(|e| ConfigError::Invalid {
        key: "call".into(),
        reason: format!("{p:?} is not a valid path: {e}"),
    })
}

/// Resolves when `rx` says cancel; never if the sender is gone.
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the load and gathers the results.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &RunConfig,
    channels: Vec<Channel>,
    method: &MethodDescriptor,
    names: MethodNames,
    data: DataProvider,
    metadata: MetadataProvider,
    cancel: watch::Receiver<bool>,
    with_details: bool,
) -> Result<RunOutcome, ConfigError> {
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        pacer: Mutex::new(Pacer::from_config(cfg)),
        start: Instant::now(),
        wall_start: SystemTime::now(),
        completed: std::sync::atomic::AtomicU64::new(0),
        path: method_path(method)?,
        codec: DynamicCodec::new(method.output()),
        data,
        metadata,
        names,
        with_details,
    });
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for w in 0..cfg.concurrency {
        let conn = w % channels.len().max(1);
        let Some(channel) = channels.get(conn).cloned() else {
            break;
        };
        let worker_id = format!("g{w}c{conn}");
        handles.push(tokio::spawn(worker(
            shared.clone(),
            worker_id,
            channel,
            cancel.clone(),
        )));
    }
    let mut stats = Stats::new();
    for h in handles {
        // A worker that panicked loses its results; the others still report.
        if let Ok(s) = h.await {
            stats.merge(s);
        }
    }
    let total = shared.start.elapsed();
    let end_reason = if *cancel.borrow() {
        EndReason::Cancel
    } else if cfg.duration.is_some()
        || (cfg.max_duration.is_some() && pacer_issued(&shared) < cfg.total)
    {
        EndReason::Timeout
    } else {
        EndReason::Normal
    };
    Ok(RunOutcome {
        stats,
        total,
        end_reason,
    })
}

fn pacer_issued(shared: &Shared) -> u64 {
    shared
        .pacer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .issued()
}

async fn worker(
    shared: Arc<Shared>,
    worker_id: String,
    channel: Channel,
    mut cancel: watch::Receiver<bool>,
) -> Stats {
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut stats = Stats::new();
    let cfg = &shared.cfg;
    loop {
        if *cancel.borrow() {
            break;
        }
        let tick = {
            let mut pacer = shared.pacer.lock().unwrap_or_else(|e| e.into_inner());
            pacer.next(shared.start.elapsed())
        };
        let Some(tick) = tick else {
            break;
        };
        let intended = match tick.intended {
            Some(offset) => {
                let at = shared.start + offset;
                if at > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = cancelled(&mut cancel) => break,
                    }
                }
                Some(at)
            }
            None => None,
        };
        let sent = Instant::now();
        let lateness = intended.map_or(Duration::ZERO, |at| sent.saturating_duration_since(at));
        let measure_from = match intended {
            Some(at) => at + lateness.min(TIMER_SLACK),
            None => sent,
        };

        let cd = CallData::new(&worker_id, tick.number, &shared.names);
        let outcome = match (shared.data.message(&cd), shared.metadata.metadata(&cd)) {
            (Ok(msg), Ok(md)) => {
                let call = unary(&mut grpc, &shared, msg, md);
                tokio::select! {
                    r = call => r,
                    _ = cancelled(&mut cancel) => break,
                }
            }
            (Err(e), _) | (_, Err(e)) => Err(Status::internal(format!(
                "grpc: error while marshaling: {e}"
            ))),
        };
        let latency = measure_from.elapsed();
        if shared
            .completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            < cfg.skip_first
        {
            continue;
        }
        let (code, error) = match outcome {
            Ok(()) => (Code::Ok, None),
            Err(s) => (s.code(), Some(error_string(s.code(), s.message()))),
        };
        if shared.with_details && stats.details.len() < MAX_DETAILS {
            let at = shared.wall_start + (intended.unwrap_or(sent) - shared.start);
            stats.details.push(ResultDetail {
                timestamp: rfc3339(at, true),
                latency: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                error: error.clone().unwrap_or_default(),
                status: crate::report::code_name(code).to_string(),
            });
        }
        stats.record(latency, code, error, cfg.count_errors);
        if lateness > LATE_THRESHOLD {
            stats.late += 1;
            stats.max_lateness = stats.max_lateness.max(lateness);
        }
    }
    stats
}

/// One unary call with the per-call timeout enforced here (and sent as grpc-timeout).
async fn unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    shared: &Shared,
    msg: DynamicMessage,
    md: tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    let timeout = shared.cfg.timeout;
    let mut req = Request::new(msg);
    *req.metadata_mut() = md;
    if !timeout.is_zero() {
        req.set_timeout(timeout);
    }
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(error_chain(&e)))?;
        grpc.unary::<DynamicMessage, DynamicMessage, _>(
            req,
            shared.path.clone(),
            shared.codec.clone(),
        )
        .await
        .map(|_| ())
    };
    if timeout.is_zero() {
        return call.await;
    }
    let started = Instant::now();
    match tokio::time::timeout(timeout, call).await {
        // A tonic server answers an expired grpc-timeout with CANCELLED, which can beat the
        // local timer; past the deadline it is the deadline, as grpc-go clients report it.
        Err(_) => Err(deadline_exceeded()),
        Ok(Err(_)) if started.elapsed() >= timeout => Err(deadline_exceeded()),
        Ok(r) => r,
    }
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("context deadline exceeded")
}
