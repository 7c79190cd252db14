//! `tandem-load`: ghz's command line for the options tandem uses, plus an SLO gate.
//! Exit status: 0 done (and SLOs met), 1 SLO violated or the run failed, 2 bad settings
//! (nothing was sent).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::Value;
use tandem_load::config::{
    self, Format, LoadSchedule, RunConfig, Settings, as_string_map, check_data,
};
use tandem_load::descriptors::DescriptorSource;
use tandem_load::duration::{format_go_duration, parse_go_duration};
use tandem_load::error::{ConfigError, Error, RunError};
use tandem_load::slo::{SloGate, parse_fraction};
use tokio::sync::watch;

/// ghz-compatible gRPC load generator for tandem (reads ghz configs, writes ghz reports).
#[derive(Debug, Parser)]
#[command(name = "tandem-load", version)]
#[command(
    after_help = "Flags override the config file. Exit status: 0 ok, 1 SLO violated or \
                        run failed, 2 bad settings (nothing sent). See load-tests/ghz/README.md."
)]
struct Cli {
    /// ghz JSON config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Method to call: "package.Service.Method" or "package.Service/Method".
    #[arg(long)]
    call: Option<String>,
    /// Encoded FileDescriptorSet to use instead of reflection.
    #[arg(long)]
    protoset: Option<PathBuf>,
    /// Workers sending requests.
    #[arg(short = 'c', long)]
    concurrency: Option<u64>,
    /// Requests to send (ignored with --duration). Default 200.
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Run for this long (Go duration: 30s, 1m); overrides --total.
    #[arg(short = 'z', long, value_parser = parse_duration_arg)]
    duration: Option<Duration>,
    /// Stop after this long even if --total is not reached.
    #[arg(short = 'x', long = "max-duration", value_parser = parse_duration_arg)]
    max_duration: Option<Duration>,
    /// Requests per second (open loop); 0 or unset: as fast as responses allow.
    #[arg(short = 'r', long)]
    rps: Option<u64>,
    /// HTTP/2 connections shared by the workers. Default 1.
    #[arg(long)]
    connections: Option<u64>,
    /// Report format: summary, json or pretty.
    #[arg(short = 'O', long)]
    format: Option<String>,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Plaintext (no TLS).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    insecure: Option<bool>,
    /// Request data as JSON: an object, or an array used round-robin; "@" reads stdin.
    #[arg(short = 'd', long, allow_hyphen_values = true)]
    data: Option<String>,
    /// File holding the request data JSON.
    #[arg(short = 'D', long = "data-file")]
    data_file: Option<PathBuf>,
    /// Request metadata as a JSON object of strings.
    #[arg(short = 'm', long)]
    metadata: Option<String>,
    /// File holding the metadata JSON.
    #[arg(short = 'M', long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Per-call timeout (0: none). Default 20s.
    #[arg(short = 't', long, value_parser = parse_duration_arg)]
    timeout: Option<Duration>,
    /// Connection timeout. Default 10s.
    #[arg(long = "connect-timeout", value_parser = parse_duration_arg)]
    connect_timeout: Option<Duration>,
    /// HTTP/2 keepalive ping interval.
    #[arg(long, value_parser = parse_duration_arg)]
    keepalive: Option<Duration>,
    /// Rate schedule: const (uses --rps), step or line.
    #[arg(long = "load-schedule")]
    load_schedule: Option<String>,
    /// Starting rps for step and line schedules.
    #[arg(long = "load-start")]
    load_start: Option<u64>,
    /// Rps at which step and line schedules stop changing.
    #[arg(long = "load-end")]
    load_end: Option<u64>,
    /// Rps change per step (step) or per second (line); may be negative.
    #[arg(long = "load-step", allow_negative_numbers = true)]
    load_step: Option<i64>,
    /// Length of each step of the step schedule.
    #[arg(long = "load-step-duration", value_parser = parse_duration_arg)]
    load_step_duration: Option<Duration>,
    /// Stop changing the rate after this long.
    #[arg(long = "load-max-duration", value_parser = parse_duration_arg)]
    load_max_duration: Option<Duration>,
    /// PEM CA certificate for TLS.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// PEM client certificate (with --key).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM client key (with --cert).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Server name to verify the certificate against.
    #[arg(long)]
    cname: Option<String>,
    /// Name of the test, echoed in the report.
    #[arg(long)]
    name: Option<String>,
    /// JSON object of string tags, echoed in the report.
    #[arg(long)]
    tags: Option<String>,
    /// Leave the first N results out of the report (warm-up).
    #[arg(long = "skipFirst")]
    skip_first: Option<u64>,
    /// Count failed calls in latency statistics.
    #[arg(long = "count-errors", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    count_errors: Option<bool>,
    /// Worker threads for the client. Default: all cores.
    #[arg(long)]
    cpus: Option<u64>,

    /// SLO gate: exit 1 if p99 latency (successful calls) is above this (Go duration).
    #[arg(long = "max-p99", value_parser = parse_duration_arg)]
    max_p99: Option<Duration>,
    /// SLO gate: exit 1 if the fraction of calls not OK is above this (0.01 = 1%).
    #[arg(long = "max-error-rate", value_parser = parse_fraction)]
    max_error_rate: Option<f64>,
    /// Where message descriptors come from: server reflection with the built-in tandem.v1
    /// set as fallback (auto), reflection only, or the built-in set only.
    #[arg(long, value_enum, default_value_t = DescriptorsArg::Auto)]
    descriptors: DescriptorsArg,
    /// Only check the settings and the data against the descriptors (protoset or built-in);
    /// contacts no server.
    #[arg(long)]
    validate: bool,
    /// Include every call in the report's "details" (ghz always does; off by default here).
    #[arg(long)]
    details: bool,

    /// Host and port to test, e.g. 127.0.0.1:50051.
    host: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DescriptorsArg {
    Auto,
    Reflection,
    Builtin,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

fn json_arg(flag: &'static str, text: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Json {
        source_name: flag.to_string(),
        error: e.to_string(),
    })
}

impl Cli {
    /// The flags that were given, as settings to lay over the config file.
    fn settings(&self) -> Result<Settings, ConfigError> {
        let data = match self.data.as_deref() {
            None => None,
            Some("@") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|source| ConfigError::Read {
                        what: "data from",
                        path: PathBuf::from("stdin"),
                        source,
                    })?;
                Some(json_arg("--data", &text)?)
            }
            Some(text) => Some(json_arg("--data", text)?),
        };
        if let Some(d) = &data {
            check_data("--data", d)?;
        }
        let metadata = match &self.metadata {
            Some(text) => Some(as_string_map("--metadata", &json_arg("--metadata", text)?)?),
            None => None,
        };
        let tags = match &self.tags {
            Some(text) => Some(as_string_map("--tags", &json_arg("--tags", text)?)?),
            None => None,
        };
        Ok(Settings {
            call: self.call.clone(),
            host: self.host.clone(),
            protoset: self.protoset.clone(),
            data,
            data_file: self.data_file.clone(),
            metadata,
            metadata_file: self.metadata_file.clone(),
            concurrency: self.concurrency,
            connections: self.connections,
            total: self.total,
            duration: self.duration,
            max_duration: self.max_duration,
            rps: self.rps,
            insecure: self.insecure,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            load_schedule: self
                .load_schedule
                .as_deref()
                .map(config::parse_schedule)
                .transpose()?,
            load_start: self.load_start,
            load_end: self.load_end,
            load_step: self.load_step,
            load_step_duration: self.load_step_duration,
            load_max_duration: self.load_max_duration,
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            cname: self.cname.clone(),
            format: self
                .format
                .as_deref()
                .map(config::parse_format)
                .transpose()?,
            output: self.output.clone(),
            name: self.name.clone(),
            tags,
            skip_first: self.skip_first,
            count_errors: self.count_errors,
            cpus: self.cpus,
        })
    }
}

/// One line on what the run will do, for --validate.
fn describe(cfg: &RunConfig) -> String {
    let amount = match cfg.duration {
        Some(z) => format!("for {}", format_go_duration(z)),
        None => format!("{} calls", cfg.total),
    };
    let pacing = match cfg.load.schedule {
        LoadSchedule::Const if cfg.rps > 0 => format!("open loop at {} rps", cfg.rps),
        LoadSchedule::Const => "closed loop".to_string(),
        s => format!(
            "open loop, {} schedule from {} rps by {} per {}{}",
            s.as_str(),
            cfg.load.start,
            cfg.load.step,
            format_go_duration(cfg.load.step_duration),
            if cfg.load.end > 0 {
                format!(" up to {}", cfg.load.end)
            } else {
                String::new()
            }
        ),
    };
    format!(
        "{pacing}, {amount}, {} workers on {} connection(s)",
        cfg.concurrency, cfg.connections
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem-load: {e:#}");
            let code = if let Some(err) = e.downcast_ref::<Error>() {
                err.exit_code()
            } else if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let cfg = file.merge(cli.settings()?).resolve(!cli.validate)?;
    let gate = SloGate {
        max_p99: cli.max_p99,
        max_error_rate: cli.max_error_rate,
    };

    if cli.validate {
        let prepared = tandem_load::validate(&cfg)?;
        println!(
            "{}: ok: {} ({} -> {}), {} data item(s), {}",
            cli.config
                .as_ref()
                .map_or_else(|| "flags".to_string(), |p| p.display().to_string()),
            prepared.method.full_name(),
            prepared.method.input().full_name(),
            prepared.method.output().full_name(),
            prepared.data.len(),
            describe(&cfg)
        );
        return Ok(ExitCode::SUCCESS);
    }

    let source = match cli.descriptors {
        DescriptorsArg::Auto => DescriptorSource::Auto,
        DescriptorsArg::Reflection => DescriptorSource::Reflection,
        DescriptorsArg::Builtin => DescriptorSource::Builtin,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.cpus.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::from(RunError::Runtime(e)))?;
    let execution = runtime.block_on(async {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        tandem_load::execute(&cfg, source, rx, cli.details).await
    })?;
    // Workers are done; don't wait for the Ctrl-C listener.
    runtime.shutdown_background();

    let report = &execution.report;
    let text = match cfg.format {
        Format::Json => serde_json::to_string(report)?,
        Format::Pretty => serde_json::to_string_pretty(report)?,
        Format::Summary => report.summary(),
    };
    match &cfg.output {
        Some(path) => std::fs::write(path, text.as_bytes()).map_err(|source| {
            Error::from(RunError::Write {
                path: path.clone(),
                source,
            })
        })?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
        }
    }
    for note in &execution.notes {
        eprintln!("tandem-load: note: {note}");
    }

    let violations = gate.check(report);
    if !violations.is_empty() {
        for v in &violations {
            eprintln!("tandem-load: SLO violated: {v}");
        }
        return Ok(ExitCode::from(1));
    }
    if gate.is_set() {
        eprintln!("tandem-load: SLOs met");
    }
    Ok(ExitCode::SUCCESS)
}
