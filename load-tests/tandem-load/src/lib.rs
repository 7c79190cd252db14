//! tandem-load: a ghz-compatible gRPC load generator. It reads ghz's config subset and flags,
//! writes ghz's JSON report, and differs where ghz's numbers mislead: with a rate set, latency
//! is measured from each request's intended send time (no coordinated omission). See
//! `load-tests/ghz/README.md`.

pub mod clock;
pub mod codec;
pub mod config;
pub mod descriptors;
pub mod duration;
pub mod error;
pub mod payload;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod slo;
pub mod template;

use prost_reflect::{DescriptorPool, MethodDescriptor};
use tokio::sync::watch;

use crate::config::RunConfig;
use crate::descriptors::{DescriptorSource, ReflectFailure};
use crate::duration::format_go_duration;
use crate::error::{ConfigError, Error, RunError};
use crate::payload::{DataProvider, MetadataProvider};
use crate::report::{LATE_THRESHOLD, Report};
use crate::template::MethodNames;

/// A call checked against its descriptors, with its request data and metadata built.
#[derive(Debug)]
pub struct Prepared {
    pub method: MethodDescriptor,
    pub names: MethodNames,
    pub data: DataProvider,
    pub metadata: MetadataProvider,
    /// Where the descriptors came from, for messages.
    pub source_name: String,
}

/// Resolves the call and checks every data item and metadata entry.
pub fn prepare(
    cfg: &RunConfig,
    pool: &DescriptorPool,
    source_name: &str,
) -> Result<Prepared, ConfigError> {
    let method = descriptors::resolve_method(pool, &cfg.call, source_name)?;
    let names = MethodNames {
        fully_qualified_name: method.full_name().to_string(),
        method_name: method.name().to_string(),
        service_name: method.parent_service().name().to_string(),
        input_name: method.input().name().to_string(),
        output_name: method.output().name().to_string(),
        is_client_streaming: method.is_client_streaming(),
        is_server_streaming: method.is_server_streaming(),
    };
    let data = DataProvider::new(&cfg.data, method.input(), &names)?;
    let metadata = MetadataProvider::new(&cfg.metadata, &names)?;
    Ok(Prepared {
        method,
        names,
        data,
        metadata,
        source_name: source_name.to_string(),
    })
}

/// Descriptors available without a server: the config's protoset, else the built-in set.
pub fn offline_pool(cfg: &RunConfig) -> Result<(DescriptorPool, String), ConfigError> {
    match &cfg.protoset {
        Some(path) => Ok((
            descriptors::protoset_pool(path)?,
            format!("protoset {}", path.display()),
        )),
        None => Ok((
            descriptors::builtin_pool()?,
            "built-in tandem.v1 descriptors".to_string(),
        )),
    }
}

/// Checks a config completely without contacting a server (`--validate`).
pub fn validate(cfg: &RunConfig) -> Result<Prepared, ConfigError> {
    let (pool, name) = offline_pool(cfg)?;
    let prepared = prepare(cfg, &pool, &name)?;
    if !cfg.host.is_empty() {
        runner::endpoint(cfg)?;
    }
    Ok(prepared)
}

/// A finished run: the report and anything worth telling the user about it.
#[derive(Debug)]
pub struct Execution {
    pub report: Report,
    /// Notes for stderr (descriptor fallback, schedule lag).
    pub notes: Vec<String>,
}

/// Connects, loads descriptors, checks the data, runs the load and builds the report.
/// Settings that can be checked without the server are checked before connecting.
pub async fn execute(
    cfg: &RunConfig,
    source: DescriptorSource,
    cancel: watch::Receiver<bool>,
    with_details: bool,
) -> Result<Execution, Error> {
    let mut notes = Vec::new();
    let ep = runner::endpoint(cfg)?;
    let offline = cfg.protoset.is_some() || source == DescriptorSource::Builtin;
    let early = if offline {
        let (pool, name) = offline_pool(cfg)?;
        Some(prepare(cfg, &pool, &name)?)
    } else {
        None
    };
    let channels = runner::connect(cfg, &ep).await?;
    let prepared = match early {
        Some(p) => p,
        None => {
            let first = channels.first().cloned().ok_or_else(|| RunError::Connect {
                host: cfg.host.clone(),
                error: "no connection".into(),
            })?;
            let source_name = format!("server reflection of {}", cfg.host);
            match descriptors::reflection_pool(first, &cfg.call).await {
                Ok(pool) => prepare(cfg, &pool, &source_name)?,
                Err(ReflectFailure::Unimplemented) if source == DescriptorSource::Auto => {
                    notes.push(format!(
                        "{} has no reflection service; using the built-in tandem.v1 descriptors",
                        cfg.host
                    ));
                    let (pool, name) = offline_pool(cfg)?;
                    prepare(cfg, &pool, &name)?
                }
                Err(ReflectFailure::Unimplemented) => {
                    return Err(RunError::Reflection {
                        host: cfg.host.clone(),
                        error: "the server has no reflection service (v1 or v1alpha)".into(),
                    }
                    .into());
                }
                Err(ReflectFailure::NotFound(msg)) => {
                    return Err(ConfigError::CallNotFound {
                        call: cfg.call.clone(),
                        source_name: format!("{source_name} ({msg})"),
                        available: vec![],
                    }
                    .into());
                }
                Err(ReflectFailure::Other(error)) => {
                    return Err(RunError::Reflection {
                        host: cfg.host.clone(),
                        error,
                    }
                    .into());
                }
            }
        }
    };
    let outcome = runner::run(
        cfg,
        channels,
        &prepared.method,
        prepared.names,
        prepared.data,
        prepared.metadata,
        cancel,
        with_details,
    )
    .await?;
    if outcome.stats.late > 0 {
        notes.push(format!(
            "{} of {} calls were sent more than {} after their scheduled time (worst {}): the \
             client could not keep the schedule, and that wait is counted as latency. Raise \
             concurrency (calls in flight needed ≈ rps × latency) or give the client more CPU.",
            outcome.stats.late,
            outcome.stats.count,
            format_go_duration(LATE_THRESHOLD),
            format_go_duration(outcome.stats.max_lateness),
        ));
    }
    let report = Report::build(
        cfg,
        outcome.stats,
        outcome.total,
        outcome.end_reason,
        with_details,
    );
    Ok(Execution { report, notes })
}
