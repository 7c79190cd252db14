//! The subset of ghz's call-data templates (Go `text/template`) that load tests use: the
//! per-call variables (`{{.RequestNumber}}`, `{{.WorkerID}}`, `{{.UUID}}`, timestamps, method
//! names) and the functions `newUUID`, `randomString N`, `randomInt MIN MAX`. Anything else is
//! rejected when the config is loaded, not in the middle of a run.

use std::time::SystemTime;

use rand::Rng;

use crate::clock::rfc3339;

/// Why a template string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed action (missing \"}}}}\") in {0:?}")]
    Unclosed(String),
    #[error("unknown template variable .{name} in {input:?} (known: {known})")]
    UnknownField {
        name: String,
        input: String,
        known: String,
    },
    #[error(
        "unsupported template function {name:?} in {input:?} (tandem-load supports newUUID, randomString N, randomInt MIN MAX)"
    )]
    UnknownFunction { name: String, input: String },
    #[error("bad arguments to {func} in {input:?}: {reason}")]
    BadArgs {
        func: &'static str,
        input: String,
        reason: String,
    },
}

/// A per-call variable (ghz's `CallData` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    WorkerId,
    RequestNumber,
    FullyQualifiedName,
    MethodName,
    ServiceName,
    InputName,
    OutputName,
    IsClientStreaming,
    IsServerStreaming,
    Timestamp,
    TimestampUnix,
    TimestampUnixMilli,
    TimestampUnixNano,
    Uuid,
}

const FIELDS: &[(&str, Field)] = &[
    ("WorkerID", Field::WorkerId),
    ("RequestNumber", Field::RequestNumber),
    ("FullyQualifiedName", Field::FullyQualifiedName),
    ("MethodName", Field::MethodName),
    ("ServiceName", Field::ServiceName),
    ("InputName", Field::InputName),
    ("OutputName", Field::OutputName),
    ("IsClientStreaming", Field::IsClientStreaming),
    ("IsServerStreaming", Field::IsServerStreaming),
    ("Timestamp", Field::Timestamp),
    ("TimestampUnix", Field::TimestampUnix),
    ("TimestampUnixMilli", Field::TimestampUnixMilli),
    ("TimestampUnixNano", Field::TimestampUnixNano),
    ("UUID", Field::Uuid),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Field(Field),
    NewUuid,
    RandomString(i64),
    RandomInt(i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action(Action),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a call's template sees: fixed per call, so `{{.UUID}}` twice in one message is the
/// same value (ghz semantics) while `{{newUUID}}` is fresh each time.
#[derive(Debug, Clone)]
pub struct CallData<'a> {
    pub worker_id: &'a str,
    pub request_number: u64,
    pub method: &'a MethodNames,
    pub now: SystemTime,
    pub uuid: String,
}

/// Names of the called method, for the template variables about it.
#[derive(Debug, Clone, Default)]
pub struct MethodNames {
    pub fully_qualified_name: String,
    pub method_name: String,
    pub service_name: String,
    pub input_name: String,
    pub output_name: String,
    pub is_client_streaming: bool,
    pub is_server_streaming: bool,
}

impl<'a> CallData<'a> {
    /// Call data for one request, stamped now.
    pub fn new(worker_id: &'a str, request_number: u64, method: &'a MethodNames) -> Self {
        Self {
            worker_id,
            request_number,
            method,
            now: SystemTime::now(),
            uuid: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl Template {
    /// Parses `input`; a string without `{{` is a single text part.
    pub fn parse(input: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = input;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next_text {
                text = text.trim_start();
            }
            let after_open = &rest[open + 2..];
            let close = after_open
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(input.to_string()))?;
            let mut inner = &after_open[..close];
            if let Some(stripped) = inner.strip_prefix("- ") {
                text = text.trim_end();
                inner = stripped;
            }
            trim_next_text = false;
            if let Some(stripped) = inner.strip_suffix(" -") {
                trim_next_text = true;
                inner = stripped;
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_string()));
            }
            let inner = inner.trim();
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                parts.push(Part::Action(parse_action(inner, input)?));
            }
            rest = &after_open[close + 2..];
        }
        let text = if trim_next_text {
            rest.trim_start()
        } else {
            rest
        };
        if !text.is_empty() {
            parts.push(Part::Text(text.to_string()));
        }
        Ok(Self { parts })
    }

    /// Whether rendering can differ between calls (else the value can be built once).
    pub fn has_actions(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Action(_)))
    }

    /// Renders the template for one call.
    pub fn render(&self, data: &CallData<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(a) => render_action(a, data, &mut out),
            }
        }
        out
    }
}

fn parse_action(inner: &str, input: &str) -> Result<Action, TemplateError> {
    let words = split_words(inner);
    let Some(first) = words.first() else {
        return Err(TemplateError::UnknownFunction {
            name: String::new(),
            input: input.to_string(),
        });
    };
    if let Some(name) = first.strip_prefix('.') {
        if words.len() > 1 {
            return Err(TemplateError::UnknownFunction {
                name: inner.to_string(),
                input: input.to_string(),
            });
        }
        return FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| Action::Field(*f))
            .ok_or_else(|| TemplateError::UnknownField {
                name: name.to_string(),
                input: input.to_string(),
                known: FIELDS
                    .iter()
                    .map(|(n, _)| format!(".{n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
    }
    let int_args = |func: &'static str, n: usize| -> Result<Vec<i64>, TemplateError> {
        let args = &words[1..];
        if args.len() != n {
            return Err(TemplateError::BadArgs {
                func,
                input: input.to_string(),
                reason: format!("expected {n} integer argument(s), got {}", args.len()),
            });
        }
        args.iter()
            .map(|a| {
                a.parse::<i64>().map_err(|_| TemplateError::BadArgs {
                    func,
                    input: input.to_string(),
                    reason: format!("{a:?} is not an integer"),
                })
            })
            .collect()
    };
    match first.as_str() {
        "newUUID" => {
            int_args("newUUID", 0)?;
            Ok(Action::NewUuid)
        }
        "randomString" => {
            let a = int_args("randomString", 1)?;
            Ok(Action::RandomString(a[0]))
        }
        "randomInt" => {
            let a = int_args("randomInt", 2)?;
            // ghz clamps min to >= 0 and max to >= 1, then draws from [min, max).
            let (min, max) = (a[0].max(0), if a[1] <= 0 { 1 } else { a[1] });
            if max <= min {
                return Err(TemplateError::BadArgs {
                    func: "randomInt",
                    input: input.to_string(),
                    reason: format!("empty range [{min}, {max})"),
                });
            }
            Ok(Action::RandomInt(min, max))
        }
        other => Err(TemplateError::UnknownFunction {
            name: other.to_string(),
            input: input.to_string(),
        }),
    }
}

fn split_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn render_action(action: &Action, d: &CallData<'_>, out: &mut String) {
    let nanos = d
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.as_nanos())
        .unwrap_or(0);
    match action {
        Action::Field(f) => {
            let s = match f {
                Field::WorkerId => d.worker_id.to_string(),
                Field::RequestNumber => d.request_number.to_string(),
                Field::FullyQualifiedName => d.method.fully_qualified_name.clone(),
                Field::MethodName => d.method.method_name.clone(),
                Field::ServiceName => d.method.service_name.clone(),
                Field::InputName => d.method.input_name.clone(),
                Field::OutputName => d.method.output_name.clone(),
                Field::IsClientStreaming => d.method.is_client_streaming.to_string(),
                Field::IsServerStreaming => d.method.is_server_streaming.to_string(),
                Field::Timestamp => rfc3339(d.now, false),
                Field::TimestampUnix => (nanos / 1_000_000_000).to_string(),
                Field::TimestampUnixMilli => (nanos / 1_000_000).to_string(),
                Field::TimestampUnixNano => nanos.to_string(),
                Field::Uuid => d.uuid.clone(),
            };
            out.push_str(&s);
        }
        Action::NewUuid => out.push_str(&uuid::Uuid::new_v4().to_string()),
        Action::RandomString(len) => {
            let mut rng = rand::rng();
            let len = if *len <= 0 {
                rng.random_range(2..=16)
            } else {
                *len as usize
            };
            out.extend((0..len).map(|_| CHARSET[rng.random_range(0..CHARSET.len())] as char));
        }
        Action::RandomInt(min, max) => {
            let v = rand::rng().random_range(*min..*max);
            out.push_str(&v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(method: &MethodNames) -> CallData<'_> {
        CallData {
            worker_id: "g3c1",
            request_number: 42,
            method,
            now: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            uuid: "fixed".to_string(),
        }
    }

    #[test]
    fn renders_variables() -> Result<(), TemplateError> {
        let m = MethodNames {
            method_name: "Recommend".into(),
            ..Default::default()
        };
        let t = Template::parse("u-{{.RequestNumber}}-{{ .WorkerID }}-{{.MethodName}}")?;
        assert!(t.has_actions());
        assert_eq!(t.render(&data(&m)), "u-42-g3c1-Recommend");
        let t = Template::parse("{{.TimestampUnixMilli}} {{.UUID}}{{.UUID}}")?;
        assert_eq!(t.render(&data(&m)), "1700000000123 fixedfixed");
        let t = Template::parse("{{.Timestamp}}")?;
        assert_eq!(t.render(&data(&m)), "2023-11-14T22:13:20Z");
        Ok(())
    }

    #[test]
    fn renders_functions_and_trim() -> Result<(), TemplateError> {
        let m = MethodNames::default();
        let t = Template::parse("a {{- randomInt 5 6 -}} b")?;
        assert_eq!(t.render(&data(&m)), "a5b");
        let t = Template::parse("{{randomString 8}}")?;
        assert_eq!(t.render(&data(&m)).len(), 8);
        let t = Template::parse("{{newUUID}}")?;
        assert_eq!(t.render(&data(&m)).len(), 36);
        let t = Template::parse("plain")?;
        assert!(!t.has_actions());
        assert_eq!(t.render(&data(&m)), "plain");
        Ok(())
    }

    #[test]
    fn rejects_unknown_actions() {
        assert!(matches!(
            Template::parse("{{.RequestNum}}"),
            Err(TemplateError::UnknownField { .. })
        ));
        assert!(matches!(
            Template::parse("{{ upper .WorkerID }}"),
            Err(TemplateError::UnknownFunction { .. })
        ));
        assert!(matches!(
            Template::parse("{{randomInt 5}}"),
            Err(TemplateError::BadArgs { .. })
        ));
        assert!(matches!(
            Template::parse("{{.RequestNumber"),
            Err(TemplateError::Unclosed(_))
        ));
    }
}
