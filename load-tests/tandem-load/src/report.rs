//! Results and ghz's report: the same JSON field names and units (durations in nanoseconds,
//! histogram marks in seconds), so tooling written for ghz reads tandem-load's reports.
//! Percentiles come from an HDR histogram (3 significant digits) instead of a sorted copy of
//! every latency, so memory does not grow with the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::clock::rfc3339;
use crate::config::RunConfig;
use crate::duration::format_nano_unit;

/// ghz keeps at most this many per-call details.
pub const MAX_DETAILS: usize = 1_000_000;

/// Go's name for a gRPC status code (grpc-go `codes.Code.String()`), the keys ghz uses.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// grpc-go's error string, the keys of ghz's `errorDistribution`.
pub fn error_string(code: tonic::Code, message: &str) -> String {
    format!("rpc error: code = {} desc = {}", code_name(code), message)
}

/// One call's outcome, kept when details are requested.
#[derive(Debug, Clone, Serialize)]
pub struct ResultDetail {
    /// When the call was meant to be sent (RFC 3339, nanoseconds).
    pub timestamp: String,
    /// Nanoseconds.
    pub latency: u64,
    pub error: String,
    pub status: String,
}

/// What the workers measured; each worker keeps its own and they are merged at the end.
#[derive(Debug, Clone)]
pub struct Stats {
    pub count: u64,
    /// Over every result, errors included (ghz's average).
    pub sum_ns: u128,
    /// Latencies for percentiles and the histogram: OK calls, or all with count-errors.
    pub hist: Histogram<u64>,
    pub min_ns: u64,
    pub max_ns: u64,
    pub status: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub details: Vec<ResultDetail>,
    /// Calls sent more than `LATE_THRESHOLD` after their intended time (open loop).
    pub late: u64,
    pub max_lateness: Duration,
}

/// A send this late means the generator could not keep the schedule (too few workers for
/// rps × latency, or a starved client), not timer jitter.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(10);

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty stats.
    pub fn new() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            // Auto-resizing: memory follows the range of latencies actually seen.
            hist: Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()),
            min_ns: u64::MAX,
            max_ns: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            details: Vec::new(),
            late: 0,
            max_lateness: Duration::ZERO,
        }
    }

    /// Records one result.
    pub fn record(
        &mut self,
        latency: Duration,
        code: tonic::Code,
        error: Option<String>,
        count_errors: bool,
    ) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        *self.status.entry(code_name(code).to_string()).or_default() += 1;
        let is_error = error.is_some();
        if let Some(e) = error {
            *self.errors.entry(e).or_default() += 1;
        }
        if !is_error || count_errors {
            // `record` grows the auto-resizing histogram; `saturating_record` would clamp to
            // its current range instead.
            if self.hist.record(ns).is_err() {
                self.hist.saturating_record(ns);
            }
            self.min_ns = self.min_ns.min(ns);
            self.max_ns = self.max_ns.max(ns);
        }
    }

    /// Adds another worker's stats.
    pub fn merge(&mut self, other: Stats) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        // Both auto-resize, so adding cannot run out of range.
        let _ = self.hist.add(&other.hist);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        let room = MAX_DETAILS.saturating_sub(self.details.len());
        self.details.extend(other.details.into_iter().take(room));
        self.late += other.late;
        self.max_lateness = self.max_lateness.max(other.max_lateness);
    }

    /// Latencies recorded for percentiles.
    pub fn samples(&self) -> u64 {
        self.hist.len()
    }
}

/// `Histogram::new(3)` only fails for precision above 5.
fn unreachable_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 2, 3) {
        Ok(h) => h,
        Err(e) => panic!("hdrhistogram rejected fixed valid bounds: {e}"),
    }
}

/// Why the run ended (ghz `endReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The total was reached or the schedule ran out.
    Normal,
    /// Interrupted (Ctrl-C).
    Cancel,
    /// The duration or max-duration ran out.
    Timeout,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Cancel => "cancel",
            EndReason::Timeout => "timeout",
        }
    }
}

/// ghz's `LatencyDistribution`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyDistribution {
    pub percentage: u32,
    /// Nanoseconds.
    pub latency: u64,
}

/// ghz's histogram `Bucket`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Upper edge in seconds.
    pub mark: f64,
    pub count: u64,
    /// Fraction of the latencies in the bucket (0..1).
    pub frequency: f64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// ghz's `Options` echo: the effective settings, durations in nanoseconds. Field presence
/// follows ghz's `omitempty` tags.
#[derive(Debug, Clone, Serialize)]
pub struct ReportOptions {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub call: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protoset: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cacert: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cert: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cname: String,
    pub insecure: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub rps: u64,
    #[serde(rename = "load-schedule")]
    pub load_schedule: &'static str,
    #[serde(rename = "load-start")]
    pub load_start: u64,
    #[serde(rename = "load-end")]
    pub load_end: u64,
    #[serde(rename = "load-step")]
    pub load_step: i64,
    #[serde(rename = "load-step-duration")]
    pub load_step_duration: u64,
    #[serde(rename = "load-max-duration")]
    pub load_max_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub concurrency: u64,
    #[serde(rename = "concurrency-schedule")]
    pub concurrency_schedule: &'static str,
    #[serde(rename = "concurrency-start")]
    pub concurrency_start: u64,
    #[serde(rename = "concurrency-end")]
    pub concurrency_end: u64,
    #[serde(rename = "concurrency-step")]
    pub concurrency_step: i64,
    #[serde(rename = "concurrency-step-duration")]
    pub concurrency_step_duration: u64,
    #[serde(rename = "concurrency-max-duration")]
    pub concurrency_max_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub connections: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(rename = "dial-timeout", skip_serializing_if = "is_zero")]
    pub dial_timeout: u64,
    #[serde(rename = "keepalive", skip_serializing_if = "is_zero")]
    pub keepalive: u64,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
    pub binary: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "CPUs")]
    pub cpus: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "skipFirst", skip_serializing_if = "is_zero")]
    pub skip_first: u64,
    #[serde(rename = "count-errors", skip_serializing_if = "is_false")]
    pub count_errors: bool,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn path_str(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

impl ReportOptions {
    /// The echo of a run's settings.
    pub fn from_config(cfg: &RunConfig) -> Self {
        Self {
            call: cfg.call.clone(),
            host: cfg.host.clone(),
            protoset: path_str(&cfg.protoset),
            cacert: path_str(&cfg.tls.cacert),
            cert: path_str(&cfg.tls.cert),
            key: path_str(&cfg.tls.key),
            cname: cfg.tls.cname.clone().unwrap_or_default(),
            insecure: cfg.insecure,
            rps: cfg.rps,
            load_schedule: cfg.load.schedule.as_str(),
            load_start: cfg.load.start,
            load_end: cfg.load.end,
            load_step: cfg.load.step,
            load_step_duration: ns(cfg.load.step_duration),
            load_max_duration: ns(cfg.load.max_duration),
            concurrency: cfg.concurrency as u64,
            concurrency_schedule: "const",
            concurrency_start: 0,
            concurrency_end: 0,
            concurrency_step: 0,
            concurrency_step_duration: 0,
            concurrency_max_duration: 0,
            // ghz runs "unbounded" (MaxInt32 requests) when a duration is set, and echoes that.
            total: if cfg.duration.is_some() {
                i32::MAX as u64
            } else {
                cfg.total
            },
            connections: cfg.connections as u64,
            duration: cfg.duration.map_or(0, ns),
            timeout: ns(cfg.timeout),
            dial_timeout: ns(cfg.connect_timeout),
            keepalive: cfg.keepalive.map_or(0, ns),
            data: cfg.data.clone(),
            binary: false,
            metadata: (!cfg.metadata.is_empty()).then(|| cfg.metadata.clone()),
            cpus: cfg.cpus as u64,
            name: cfg.name.clone().unwrap_or_default(),
            skip_first: cfg.skip_first,
            count_errors: cfg.count_errors,
        }
    }
}

/// ghz's `Report`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "endReason")]
    pub end_reason: &'static str,
    pub options: ReportOptions,
    pub count: u64,
    /// Wall time of the run, nanoseconds.
    pub total: u64,
    /// Mean over all calls, nanoseconds.
    pub average: u64,
    /// Over OK calls (all with count-errors), nanoseconds.
    pub fastest: u64,
    pub slowest: u64,
    pub rps: f64,
    #[serde(rename = "errorDistribution")]
    pub error_distribution: BTreeMap<String, u64>,
    #[serde(rename = "statusCodeDistribution")]
    pub status_code_distribution: BTreeMap<String, u64>,
    /// `null` when no call succeeded, as in ghz.
    #[serde(rename = "latencyDistribution")]
    pub latency_distribution: Option<Vec<LatencyDistribution>>,
    pub histogram: Option<Vec<Bucket>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<ResultDetail>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// The percentiles ghz reports.
pub const PERCENTILES: [u32; 7] = [10, 25, 50, 75, 90, 95, 99];

impl Report {
    /// Builds the report from merged stats.
    pub fn build(
        cfg: &RunConfig,
        stats: Stats,
        total: Duration,
        end_reason: EndReason,
        with_details: bool,
    ) -> Self {
        let total_ns = ns(total);
        let (average, rps) = if stats.count > 0 {
            (
                (stats.sum_ns / u128::from(stats.count)) as u64,
                stats.count as f64 / total.as_secs_f64().max(1e-9),
            )
        } else {
            (0, 0.0)
        };
        let have_samples = stats.samples() > 0;
        let (fastest, slowest) = if have_samples {
            (stats.min_ns, stats.max_ns)
        } else {
            (0, 0)
        };
        let latency_distribution = have_samples.then(|| {
            PERCENTILES
                .iter()
                .map(|p| LatencyDistribution {
                    percentage: *p,
                    latency: stats
                        .hist
                        .value_at_quantile(f64::from(*p) / 100.0)
                        .clamp(fastest, slowest),
                })
                .collect()
        });
        let histogram = have_samples.then(|| histogram(&stats.hist, fastest, slowest));
        Self {
            date: rfc3339(SystemTime::now(), false),
            name: cfg.name.clone(),
            end_reason: end_reason.as_str(),
            options: ReportOptions::from_config(cfg),
            count: stats.count,
            total: total_ns,
            average,
            fastest,
            slowest,
            rps,
            error_distribution: stats.errors,
            status_code_distribution: stats.status,
            latency_distribution,
            histogram,
            details: with_details.then_some(stats.details),
            tags: cfg.tags.clone(),
        }
    }

    /// The latency at `percentage` (one of `PERCENTILES`), nanoseconds.
    pub fn percentile(&self, percentage: u32) -> Option<u64> {
        self.latency_distribution
            .as_ref()?
            .iter()
            .find(|l| l.percentage == percentage)
            .map(|l| l.latency)
    }

    /// Calls that did not end OK.
    pub fn error_count(&self) -> u64 {
        self.count
            - self
                .status_code_distribution
                .get("OK")
                .copied()
                .unwrap_or(0)
    }

    /// ghz's `summary` text.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        if let Some(name) = &self.name {
            let _ = writeln!(out, "  Name:\t\t{name}");
        }
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", format_nano_unit(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", format_nano_unit(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", format_nano_unit(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", format_nano_unit(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        let _ = writeln!(out, "\nResponse time histogram:");
        if let Some(buckets) = &self.histogram {
            let max_count = buckets.iter().map(|b| b.count).max().unwrap_or(0);
            let marks: Vec<String> = buckets
                .iter()
                .map(|b| format!("{:.3}", b.mark * 1000.0))
                .collect();
            let mark_w = marks.iter().map(String::len).max().unwrap_or(0);
            let count_w = buckets
                .iter()
                .map(|b| b.count.to_string().len())
                .max()
                .unwrap_or(0);
            for (b, mark) in buckets.iter().zip(&marks) {
                let bar = (b.count * 40 + max_count / 2)
                    .checked_div(max_count)
                    .unwrap_or(0) as usize;
                let count = b.count.to_string();
                let _ = writeln!(
                    out,
                    "  {mark:<mark_w$} [{count}]{} |{}",
                    " ".repeat(count_w - count.len()),
                    "∎".repeat(bar)
                );
            }
        }
        let _ = write!(out, "\nLatency distribution:");
        for l in self.latency_distribution.iter().flatten() {
            let _ = write!(
                out,
                "\n  {} % in {} ",
                l.percentage,
                format_nano_unit(l.latency)
            );
        }
        let _ = writeln!(out, "\n");
        if !self.status_code_distribution.is_empty() {
            let _ = writeln!(out, "Status code distribution:");
            for (status, count) in &self.status_code_distribution {
                let _ = writeln!(out, "  [{status}]   {count} responses");
            }
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (error, count) in &self.error_distribution {
                let _ = writeln!(out, "  [{count}]   {error}");
            }
        }
        out
    }
}

/// ghz's histogram: 10 equal-width buckets from fastest to slowest, plus one at slowest; each
/// latency lands in the first bucket whose mark is at or above it.
fn histogram(hist: &Histogram<u64>, fastest: u64, slowest: u64) -> Vec<Bucket> {
    const BUCKETS: usize = 10;
    let width = (slowest - fastest) as f64 / BUCKETS as f64;
    let mut marks: Vec<f64> = (0..BUCKETS)
        .map(|i| fastest as f64 + width * i as f64)
        .collect();
    marks.push(slowest as f64);
    let mut counts = vec![0u64; marks.len()];
    for v in hist.iter_recorded() {
        // The bucket's lowest value, so the fastest call lands in the first bucket as in ghz.
        let value = hist
            .lowest_equivalent(v.value_iterated_to())
            .clamp(fastest, slowest) as f64;
        let idx = marks.iter().position(|m| value <= *m).unwrap_or(BUCKETS);
        counts[idx] += v.count_at_value();
    }
    let n = hist.len().max(1) as f64;
    marks
        .into_iter()
        .zip(counts)
        .map(|(mark, count)| Bucket {
            mark: mark / 1e9,
            count,
            frequency: count as f64 / n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn percentiles_and_histogram() {
        let mut s = Stats::new();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), Code::Ok, None, false);
        }
        s.record(
            Duration::from_secs(5),
            Code::Unavailable,
            Some(error_string(Code::Unavailable, "down")),
            false,
        );
        let mut merged = Stats::new();
        merged.merge(s);
        let cfg = crate::config::Settings {
            call: Some("a.B.C".into()),
            host: Some("h:1".into()),
            ..Default::default()
        }
        .resolve(true);
        let Ok(cfg) = cfg else { panic!("config") };
        let r = Report::build(
            &cfg,
            merged,
            Duration::from_secs(1),
            EndReason::Normal,
            false,
        );
        assert_eq!(r.count, 101);
        assert_eq!(r.fastest, 1_000_000);
        assert_eq!(r.slowest, 100_000_000);
        let p50 = r.percentile(50).unwrap_or(0);
        assert!((49_900_000..=50_100_000).contains(&p50), "{p50}");
        let p99 = r.percentile(99).unwrap_or(0);
        assert!((98_900_000..=99_100_000).contains(&p99), "{p99}");
        assert_eq!(r.status_code_distribution.get("OK"), Some(&100));
        assert_eq!(r.status_code_distribution.get("Unavailable"), Some(&1));
        assert_eq!(
            r.error_distribution
                .get("rpc error: code = Unavailable desc = down"),
            Some(&1)
        );
        assert_eq!(r.error_count(), 1);
        let h = r.histogram.clone().unwrap_or_default();
        assert_eq!(h.len(), 11);
        assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 100);
        assert!((h[10].mark - 0.1).abs() < 1e-9);
        // Average counts the failed call too (ghz).
        assert_eq!(r.average, (5050 + 5000) * 1_000_000 / 101);
        let json = serde_json::to_value(&r).unwrap_or_default();
        for key in [
            "date",
            "options",
            "count",
            "total",
            "average",
            "fastest",
            "slowest",
            "rps",
            "errorDistribution",
            "statusCodeDistribution",
            "latencyDistribution",
            "histogram",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert!(json.get("details").is_none());
        assert!(r.summary().contains("99 % in"));
    }

    #[test]
    fn empty_run_has_null_distributions() {
        let cfg = crate::config::Settings {
            call: Some("a.B.C".into()),
            host: Some("h:1".into()),
            ..Default::default()
        }
        .resolve(true);
        let Ok(cfg) = cfg else { panic!("config") };
        let r = Report::build(
            &cfg,
            Stats::new(),
            Duration::from_secs(1),
            EndReason::Cancel,
            false,
        );
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert!(json["latencyDistribution"].is_null());
        assert!(json["histogram"].is_null());
        assert_eq!(json["endReason"], "cancel");
    }
}
