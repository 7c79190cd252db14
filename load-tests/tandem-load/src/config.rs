//! ghz's JSON config format (the subset tandem-load implements), flag overrides, defaults and
//! the checks ghz makes before a run. Keys are checked one by one so an error names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::duration::parse_go_duration;
use crate::error::ConfigError;

/// ghz's default number of requests when neither total nor duration is set.
pub const DEFAULT_TOTAL: u64 = 200;
/// ghz's default number of workers.
pub const DEFAULT_CONCURRENCY: u64 = 50;
/// ghz's default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// ghz's default dial timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the request rate changes over the run (ghz `load-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadSchedule {
    #[default]
    Const,
    Step,
    Line,
}

impl LoadSchedule {
    /// Parses ghz's names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "const" => Some(Self::Const),
            "step" => Some(Self::Step),
            "line" => Some(Self::Line),
            _ => None,
        }
    }

    /// ghz's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Const => "const",
            Self::Step => "step",
            Self::Line => "line",
        }
    }
}

/// Report output format (ghz `format`, `-O`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Summary,
    Json,
    Pretty,
}

impl Format {
    /// Parses ghz's names; the other ghz formats are refused by the caller.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "summary" => Some(Self::Summary),
            "json" => Some(Self::Json),
            "pretty" => Some(Self::Pretty),
            _ => None,
        }
    }
}

/// Settings from one source (the config file, or the flags); `None` = not given there, so
/// a flag overrides the file only where it was set (ghz semantics).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub call: Option<String>,
    pub host: Option<String>,
    pub protoset: Option<PathBuf>,
    pub data: Option<Value>,
    pub data_file: Option<PathBuf>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub metadata_file: Option<PathBuf>,
    pub concurrency: Option<u64>,
    pub connections: Option<u64>,
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub rps: Option<u64>,
    pub insecure: Option<bool>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub load_schedule: Option<LoadSchedule>,
    pub load_start: Option<u64>,
    pub load_end: Option<u64>,
    pub load_step: Option<i64>,
    pub load_step_duration: Option<Duration>,
    pub load_max_duration: Option<Duration>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cname: Option<String>,
    pub format: Option<Format>,
    pub output: Option<PathBuf>,
    pub name: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub skip_first: Option<u64>,
    pub count_errors: Option<bool>,
    pub cpus: Option<u64>,
}

/// Every key tandem-load reads, for unknown-key suggestions.
const KNOWN_KEYS: &[&str] = &[
    "call",
    "host",
    "protoset",
    "data",
    "data-file",
    "metadata",
    "metadata-file",
    "concurrency",
    "connections",
    "total",
    "duration",
    "max-duration",
    "rps",
    "insecure",
    "timeout",
    "connect-timeout",
    "keepalive",
    "load-schedule",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
    "cacert",
    "cert",
    "key",
    "cname",
    "format",
    "output",
    "name",
    "tags",
    "skipFirst",
    "count-errors",
    "cpus",
];

/// ghz keys tandem-load does not implement, each with the value that means "off" (accepted so
/// a ghz config that spells out a default still loads) and why it is not there.
const UNSUPPORTED_KEYS: &[(&str, NoOp, &str)] = &[
    (
        "proto",
        NoOp::EmptyString,
        "it cannot compile .proto files; use server reflection (the default) or a protoset",
    ),
    (
        "import-paths",
        NoOp::EmptyArray,
        "it cannot compile .proto files",
    ),
    (
        "skipTLS",
        NoOp::False,
        "certificates are always verified; pass cacert (and cname)",
    ),
    ("authority", NoOp::EmptyString, "not implemented"),
    (
        "async",
        NoOp::False,
        "with rps set tandem-load is open-loop already: send times never wait for responses",
    ),
    (
        "concurrency-schedule",
        NoOp::Str("const"),
        "only a constant worker count is implemented",
    ),
    (
        "concurrency-start",
        NoOp::Zero,
        "only a constant worker count is implemented",
    ),
    (
        "concurrency-end",
        NoOp::Zero,
        "only a constant worker count is implemented",
    ),
    (
        "concurrency-step",
        NoOp::Zero,
        "only a constant worker count is implemented",
    ),
    (
        "concurrency-step-duration",
        NoOp::Zero,
        "only a constant worker count is implemented",
    ),
    (
        "concurrency-max-duration",
        NoOp::Zero,
        "only a constant worker count is implemented",
    ),
    (
        "duration-stop",
        NoOp::Str("wait"),
        "calls in flight when the duration ends are always waited for (ghz's \"wait\")",
    ),
    ("binary", NoOp::False, "binary call data is not implemented"),
    (
        "binary-file",
        NoOp::EmptyString,
        "binary call data is not implemented",
    ),
    (
        "stream-interval",
        NoOp::Zero,
        "only unary calls are implemented",
    ),
    (
        "stream-call-duration",
        NoOp::Zero,
        "only unary calls are implemented",
    ),
    (
        "stream-call-count",
        NoOp::Zero,
        "only unary calls are implemented",
    ),
    (
        "stream-dynamic-messages",
        NoOp::False,
        "only unary calls are implemented",
    ),
    ("reflect-metadata", NoOp::EmptyObject, "not implemented"),
    ("debug", NoOp::EmptyString, "not implemented"),
    ("enable-compression", NoOp::False, "not implemented"),
    ("lb-strategy", NoOp::EmptyString, "not implemented"),
    (
        "max-recv-message-size",
        NoOp::EmptyString,
        "not implemented",
    ),
    (
        "max-send-message-size",
        NoOp::EmptyString,
        "not implemented",
    ),
    ("disable-template-functions", NoOp::False, "not implemented"),
    ("disable-template-data", NoOp::False, "not implemented"),
];

#[derive(Debug, Clone, Copy)]
enum NoOp {
    False,
    Zero,
    EmptyString,
    EmptyArray,
    EmptyObject,
    Str(&'static str),
}

impl NoOp {
    fn matches(self, v: &Value) -> bool {
        match self {
            NoOp::False => v == &Value::Bool(false) || v.is_null(),
            NoOp::Zero => v.as_f64() == Some(0.0) || v == "0" || v == "0s" || v.is_null(),
            NoOp::EmptyString => v == "" || v.is_null(),
            NoOp::EmptyArray => v.as_array().is_some_and(Vec::is_empty) || v.is_null(),
            NoOp::EmptyObject => v.as_object().is_some_and(|o| o.is_empty()) || v.is_null(),
            NoOp::Str(s) => v == s || v == "" || v.is_null(),
        }
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn wrong(key: &str, expected: &'static str, v: &Value) -> ConfigError {
    ConfigError::WrongType {
        key: key.to_string(),
        expected,
        got: type_name(v),
    }
}

fn as_string(key: &str, v: &Value) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| wrong(key, "a string", v))
}

fn as_uint(key: &str, v: &Value) -> Result<u64, ConfigError> {
    v.as_u64()
        .ok_or_else(|| wrong(key, "a non-negative integer", v))
}

fn as_int(key: &str, v: &Value) -> Result<i64, ConfigError> {
    v.as_i64().ok_or_else(|| wrong(key, "an integer", v))
}

fn as_bool(key: &str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| wrong(key, "true or false", v))
}

/// Go durations are strings ("30s"); a bare 0 means zero, any other bare number lacks a unit.
fn as_duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
    match v {
        Value::String(s) => parse_duration(key, s),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Duration::ZERO),
        Value::Number(n) => parse_duration(key, &n.to_string()),
        other => Err(wrong(key, "a duration string like \"30s\"", other)),
    }
}

/// Parses a duration for `key`, naming the key on failure.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(s).map_err(|source| ConfigError::BadDuration {
        key: key.to_string(),
        source,
    })
}

/// An object of strings (metadata, tags), naming `key` on failure.
pub fn as_string_map(key: &str, v: &Value) -> Result<BTreeMap<String, String>, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| wrong(key, "an object of strings", v))?;
    obj.iter()
        .map(|(k, val)| {
            val.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| wrong(&format!("{key}.{k}"), "a string", val))
        })
        .collect()
}

/// ghz's data must be an object or a non-empty array of objects.
pub fn check_data(key: &str, v: &Value) -> Result<(), ConfigError> {
    match v {
        Value::Object(_) => Ok(()),
        Value::Array(items) if items.is_empty() => Err(ConfigError::Invalid {
            key: key.to_string(),
            reason: "data array must not be empty".into(),
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() {
                    return Err(wrong(&format!("{key}[{i}]"), "an object", item));
                }
            }
            Ok(())
        }
        other => Err(wrong(key, "an object or an array of objects", other)),
    }
}

/// Closest known key within edit distance 2, for "did you mean".
fn suggest(key: &str) -> Option<String> {
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Settings {
    /// Reads a ghz JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "config file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses ghz JSON config text; `source_name` names it in errors.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            source_name: source_name.to_string(),
            error: e.to_string(),
        })?;
        Self::from_json(&value, source_name)
    }

    /// Reads each key of a parsed config object, rejecting unknown keys and wrong types.
    pub fn from_json(value: &Value, source_name: &str) -> Result<Self, ConfigError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ConfigError::NotAnObject(source_name.to_string()))?;
        let mut s = Settings::default();
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                "call" => s.call = Some(as_string(k, v)?),
                "host" => s.host = Some(as_string(k, v)?),
                "protoset" => s.protoset = non_empty_path(k, v)?,
                "data" => {
                    check_data(k, v)?;
                    s.data = Some(v.clone());
                }
                "data-file" => s.data_file = non_empty_path(k, v)?,
                "metadata" => s.metadata = Some(as_string_map(k, v)?),
                "metadata-file" => s.metadata_file = non_empty_path(k, v)?,
                "concurrency" => s.concurrency = Some(as_uint(k, v)?),
                "connections" => s.connections = Some(as_uint(k, v)?),
                "total" => s.total = Some(as_uint(k, v)?),
                "duration" => s.duration = Some(as_duration(k, v)?),
                "max-duration" => s.max_duration = Some(as_duration(k, v)?),
                "rps" => s.rps = Some(as_uint(k, v)?),
                "insecure" => s.insecure = Some(as_bool(k, v)?),
                "timeout" => s.timeout = Some(as_duration(k, v)?),
                "connect-timeout" => s.connect_timeout = Some(as_duration(k, v)?),
                "keepalive" => s.keepalive = Some(as_duration(k, v)?),
                "load-schedule" => {
                    let name = as_string(k, v)?;
                    s.load_schedule = Some(parse_schedule(&name)?);
                }
                "load-start" => s.load_start = Some(as_uint(k, v)?),
                "load-end" => s.load_end = Some(as_uint(k, v)?),
                "load-step" => s.load_step = Some(as_int(k, v)?),
                "load-step-duration" => s.load_step_duration = Some(as_duration(k, v)?),
                "load-max-duration" => s.load_max_duration = Some(as_duration(k, v)?),
                "cacert" => s.cacert = non_empty_path(k, v)?,
                "cert" => s.cert = non_empty_path(k, v)?,
                "key" => s.key = non_empty_path(k, v)?,
                "cname" => s.cname = Some(as_string(k, v)?).filter(|c| !c.is_empty()),
                "format" => {
                    let name = as_string(k, v)?;
                    s.format = Some(parse_format(&name)?);
                }
                "output" => s.output = non_empty_path(k, v)?,
                "name" => s.name = Some(as_string(k, v)?).filter(|n| !n.is_empty()),
                "tags" => s.tags = Some(as_string_map(k, v)?),
                "skipFirst" => s.skip_first = Some(as_uint(k, v)?),
                "count-errors" => s.count_errors = Some(as_bool(k, v)?),
                "cpus" => s.cpus = Some(as_uint(k, v)?),
                _ => {
                    if let Some((_, noop, why)) = UNSUPPORTED_KEYS.iter().find(|(n, _, _)| *n == k)
                    {
                        if !noop.matches(v) {
                            return Err(ConfigError::Unsupported {
                                key: k.to_string(),
                                why: why.to_string(),
                            });
                        }
                    } else {
                        return Err(ConfigError::UnknownKey {
                            key: k.to_string(),
                            suggestion: suggest(k),
                        });
                    }
                }
            }
        }
        Ok(s)
    }

    /// `self` with every setting that `over` has replaced (flags over the file). Data and its
    /// file, and metadata and its file, are replaced as pairs so a `-d` beats a file's
    /// `data-file`.
    pub fn merge(mut self, over: Settings) -> Settings {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        if over.data.is_some() || over.data_file.is_some() {
            self.data = over.data;
            self.data_file = over.data_file;
        }
        if over.metadata.is_some() || over.metadata_file.is_some() {
            self.metadata = over.metadata;
            self.metadata_file = over.metadata_file;
        }
        take!(
            call,
            host,
            protoset,
            concurrency,
            connections,
            total,
            duration,
            max_duration,
            rps,
            insecure,
            timeout,
            connect_timeout,
            keepalive,
            load_schedule,
            load_start,
            load_end,
            load_step,
            load_step_duration,
            load_max_duration,
            cacert,
            cert,
            key,
            cname,
            format,
            output,
            name,
            tags,
            skip_first,
            count_errors,
            cpus
        );
        self
    }

    /// Applies ghz's defaults and checks; reads data and metadata files.
    /// `require_host` is false for `--validate`, which contacts no server.
    pub fn resolve(self, require_host: bool) -> Result<RunConfig, ConfigError> {
        let call = self
            .call
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .ok_or(ConfigError::Missing {
                key: "call",
                how: "\"call\" in the config or --call",
            })?;
        let host = self.host.map(|h| h.trim().to_string()).unwrap_or_default();
        if require_host && host.is_empty() {
            return Err(ConfigError::Missing {
                key: "host",
                how: "\"host\" in the config or the last argument",
            });
        }

        if self.data.is_some() && self.data_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "data-file".into(),
                reason: "set data or data-file, not both".into(),
            });
        }
        let data = match (self.data, &self.data_file) {
            (Some(d), _) => d,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    what: "data file",
                    path: path.clone(),
                    source,
                })?;
                let v: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
                    source_name: format!("data file {}", path.display()),
                    error: e.to_string(),
                })?;
                check_data("data-file", &v)?;
                v
            }
            (None, None) => Value::Object(Default::default()),
        };

        if self.metadata.is_some() && self.metadata_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "metadata-file".into(),
                reason: "set metadata or metadata-file, not both".into(),
            });
        }
        let metadata = match (self.metadata, &self.metadata_file) {
            (Some(m), _) => m,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    what: "metadata file",
                    path: path.clone(),
                    source,
                })?;
                let v: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
                    source_name: format!("metadata file {}", path.display()),
                    error: e.to_string(),
                })?;
                as_string_map("metadata-file", &v)?
            }
            (None, None) => BTreeMap::new(),
        };

        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        let connections = self.connections.unwrap_or(1);
        if connections == 0 {
            return Err(invalid("connections", "must be at least 1"));
        }
        if connections > concurrency {
            return Err(invalid(
                "connections",
                &format!(
                    "{connections} connections > concurrency {concurrency} (ghz: number of connections cannot be greater than concurrency)"
                ),
            ));
        }
        let duration = self.duration.filter(|d| !d.is_zero());
        let total = self.total.unwrap_or(DEFAULT_TOTAL);
        if total == 0 && duration.is_none() {
            return Err(invalid("total", "must be at least 1 (or set a duration)"));
        }

        let schedule = self.load_schedule.unwrap_or_default();
        let load = LoadSettings {
            schedule,
            start: self.load_start.unwrap_or(0),
            end: self.load_end.unwrap_or(0),
            step: self.load_step.unwrap_or(0),
            step_duration: match schedule {
                // ghz fixes a line's step duration at one second (the slope is per second).
                LoadSchedule::Line => Duration::from_secs(1),
                _ => self.load_step_duration.unwrap_or(Duration::ZERO),
            },
            max_duration: self.load_max_duration.unwrap_or(Duration::ZERO),
        };
        if schedule != LoadSchedule::Const {
            if load.start == 0 {
                return Err(invalid(
                    "load-start",
                    "must be at least 1 for step and line schedules",
                ));
            }
            if load.start == load.end {
                return Err(invalid("load-end", "load start cannot equal load end"));
            }
            if load.step == 0 {
                return Err(invalid(
                    "load-step",
                    "must not be 0 for step and line schedules",
                ));
            }
            // ghz would step away from an end on the wrong side forever; say so instead.
            if load.end > 0 && (load.step > 0) != (load.end > load.start) {
                return Err(invalid(
                    "load-end",
                    &format!(
                        "a load-step of {} never reaches load-end {} from load-start {}",
                        load.step, load.end, load.start
                    ),
                ));
            }
            if schedule == LoadSchedule::Step && load.step_duration.is_zero() {
                return Err(invalid(
                    "load-step-duration",
                    "must be set for the step schedule",
                ));
            }
        }

        let cpus = match self.cpus {
            Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n as usize,
        };
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid("cert", "cert and key must be set together"));
        }

        Ok(RunConfig {
            call,
            host,
            protoset: self.protoset,
            data,
            metadata,
            concurrency: concurrency as usize,
            connections: connections as usize,
            total,
            duration,
            max_duration: self.max_duration.filter(|d| !d.is_zero()),
            rps: self.rps.unwrap_or(0),
            insecure: self.insecure.unwrap_or(false),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: self
                .connect_timeout
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            keepalive: self.keepalive.filter(|d| !d.is_zero()),
            load,
            tls: TlsSettings {
                cacert: self.cacert,
                cert: self.cert,
                key: self.key,
                cname: self.cname,
            },
            format: self.format.unwrap_or_default(),
            output: self.output,
            name: self.name,
            tags: self.tags.unwrap_or_default(),
            skip_first: self.skip_first.unwrap_or(0),
            count_errors: self.count_errors.unwrap_or(false),
            cpus,
        })
    }
}

fn invalid(key: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn non_empty_path(key: &str, v: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let s = as_string(key, v)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// Parses a `load-schedule` value.
pub fn parse_schedule(name: &str) -> Result<LoadSchedule, ConfigError> {
    LoadSchedule::parse(name).ok_or_else(|| {
        invalid(
            "load-schedule",
            &format!("{name:?} is not one of \"const\", \"step\", \"line\""),
        )
    })
}

/// Parses a `format` value.
pub fn parse_format(name: &str) -> Result<Format, ConfigError> {
    Format::parse(name).ok_or_else(|| {
        invalid(
            "format",
            &format!(
                "{name:?} is not supported (tandem-load writes \"summary\", \"json\" or \"pretty\")"
            ),
        )
    })
}

/// The rate schedule settings (ghz `load-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    pub schedule: LoadSchedule,
    pub start: u64,
    pub end: u64,
    pub step: i64,
    pub step_duration: Duration,
    pub max_duration: Duration,
}

/// TLS settings; plaintext when `insecure`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cname: Option<String>,
}

/// The effective settings of a run, defaults applied and checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// As given ("pkg.Service.Method" or "pkg.Service/Method").
    pub call: String,
    pub host: String,
    pub protoset: Option<PathBuf>,
    /// An object, or a non-empty array of objects used round-robin by request number.
    pub data: Value,
    pub metadata: BTreeMap<String, String>,
    pub concurrency: usize,
    pub connections: usize,
    /// Ignored when `duration` is set (ghz).
    pub total: u64,
    pub duration: Option<Duration>,
    pub max_duration: Option<Duration>,
    /// Requests per second for the const schedule; 0 = closed loop (as fast as possible).
    pub rps: u64,
    pub insecure: bool,
    /// Per call; zero = none.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Option<Duration>,
    pub load: LoadSettings,
    pub tls: TlsSettings,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub skip_first: u64,
    pub count_errors: bool,
    pub cpus: usize,
}

impl RunConfig {
    /// Whether requests follow a rate schedule (open loop) rather than responses.
    pub fn is_open_loop(&self) -> bool {
        self.load.schedule != LoadSchedule::Const || self.rps > 0
    }
}

/// Splits "pkg.Service.Method" or "pkg.Service/Method" (optionally with a leading "/") into
/// the service's full name and the method name.
pub fn split_call(call: &str) -> Option<(&str, &str)> {
    let call = call.trim().trim_start_matches('/');
    let idx = call.rfind('/').or_else(|| call.rfind('.'))?;
    let (service, method) = (&call[..idx], &call[idx + 1..]);
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_json_str(text, "test")
    }

    #[test]
    fn reads_the_ghz_subset() -> Result<(), ConfigError> {
        let s = parse(
            r#"{"call": "tandem.v1.RecommenderService/Recommend", "host": "127.0.0.1:50051",
                "data": [{"user_id": "a"}, {"user_id": "b"}], "metadata": {"x-a": "1"},
                "concurrency": 4, "connections": 2, "total": 100, "duration": "1m30s",
                "rps": 200, "insecure": true, "timeout": "500ms", "load-schedule": "step",
                "load-start": 10, "load-end": 50, "load-step": 10, "load-step-duration": "5s",
                "load-max-duration": "0", "async": false, "concurrency-schedule": "const"}"#,
        )?;
        let cfg = s.resolve(true)?;
        assert_eq!(cfg.concurrency, 4);
        assert_eq!(cfg.connections, 2);
        assert_eq!(cfg.duration, Some(Duration::from_secs(90)));
        assert_eq!(cfg.timeout, Duration::from_millis(500));
        assert_eq!(cfg.load.schedule, LoadSchedule::Step);
        assert_eq!(cfg.load.step_duration, Duration::from_secs(5));
        assert!(cfg.insecure);
        assert!(cfg.data.is_array());
        Ok(())
    }

    #[test]
    fn names_unknown_keys_and_bad_values() {
        let e = parse(r#"{"concurency": 5}"#).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("unknown config key \"concurency\" (did you mean \"concurrency\"?)")
        );
        let e = parse(r#"{"total": "10"}"#).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("\"total\"") && e.contains("integer")));
        let e = parse(r#"{"duration": "30 seconds"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("\"duration\"")));
        let e = parse(r#"{"duration": 30}"#).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("missing unit")));
        let e = parse(r#"{"async": true}"#).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("\"async\"") && e.contains("not supported")));
        let e = parse(r#"{"data": [1]}"#).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("data[0]")));
        let e = parse(r#"{"load-schedule": "ramp"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("load-schedule")));
    }

    #[test]
    fn checks_like_ghz() {
        let base = || Settings {
            call: Some("a.B.C".into()),
            host: Some("h:1".into()),
            ..Default::default()
        };
        let cfg = base().resolve(true).ok();
        assert_eq!(cfg.as_ref().map(|c| c.total), Some(DEFAULT_TOTAL));
        assert_eq!(cfg.as_ref().map(|c| c.concurrency), Some(50));
        let mut s = base();
        s.connections = Some(60);
        assert!(s.resolve(true).is_err());
        let mut s = base();
        s.load_schedule = Some(LoadSchedule::Step);
        s.load_start = Some(10);
        s.load_step = Some(5);
        let e = s.resolve(true).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("load-step-duration")));
        let mut s = base();
        s.host = None;
        assert!(s.clone().resolve(true).is_err());
        assert!(s.resolve(false).is_ok());
    }

    #[test]
    fn flags_override_the_file() {
        let file = Settings {
            call: Some("a.B.C".into()),
            concurrency: Some(10),
            data_file: Some("x.json".into()),
            ..Default::default()
        };
        let flags = Settings {
            concurrency: Some(3),
            data: Some(serde_json::json!({"a": 1})),
            ..Default::default()
        };
        let merged = file.merge(flags);
        assert_eq!(merged.concurrency, Some(3));
        assert_eq!(merged.call.as_deref(), Some("a.B.C"));
        assert!(merged.data_file.is_none());
        assert!(merged.data.is_some());
    }

    #[test]
    fn splits_calls() {
        assert_eq!(
            split_call("tandem.v1.RecommenderService.Recommend"),
            Some(("tandem.v1.RecommenderService", "Recommend"))
        );
        assert_eq!(
            split_call("tandem.v1.RecommenderService/Recommend"),
            Some(("tandem.v1.RecommenderService", "Recommend"))
        );
        assert_eq!(
            split_call("/tandem.v1.RankingService/Rank"),
            Some(("tandem.v1.RankingService", "Rank"))
        );
        assert_eq!(split_call("Recommend"), None);
    }
}
