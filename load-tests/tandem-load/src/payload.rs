//! Request messages and metadata from the config's JSON, with ghz's semantics: a data array is
//! used round-robin by request number, and template actions are rendered per call. Every item
//! is built once up front so a field the message lacks fails before anything is sent.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataKey, MetadataMap};

use crate::error::ConfigError;
use crate::template::{CallData, MethodNames, Template};

/// A JSON value whose strings (and object keys) may hold template actions.
#[derive(Debug, Clone)]
enum TValue {
    /// No actions anywhere below: used as is.
    Static(Value),
    Str(Template),
    Array(Vec<TValue>),
    Object(Vec<(Template, TValue)>),
}

impl TValue {
    fn compile(v: &Value, location: &str) -> Result<Self, ConfigError> {
        let template = |s: &str, loc: &str| {
            Template::parse(s).map_err(|source| ConfigError::Template {
                location: loc.to_string(),
                source,
            })
        };
        let compiled = match v {
            Value::String(s) => {
                let t = template(s, location)?;
                if !t.has_actions() {
                    return Ok(TValue::Static(v.clone()));
                }
                TValue::Str(t)
            }
            Value::Array(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| TValue::compile(item, &format!("{location}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|i| matches!(i, TValue::Static(_))) {
                    return Ok(TValue::Static(v.clone()));
                }
                TValue::Array(items)
            }
            Value::Object(map) => {
                let mut entries = Vec::with_capacity(map.len());
                let mut all_static = true;
                for (k, item) in map {
                    let loc = format!("{location}.{k}");
                    let key = template(k, &loc)?;
                    let item = TValue::compile(item, &loc)?;
                    all_static &= !key.has_actions() && matches!(item, TValue::Static(_));
                    entries.push((key, item));
                }
                if all_static {
                    return Ok(TValue::Static(v.clone()));
                }
                TValue::Object(entries)
            }
            other => TValue::Static(other.clone()),
        };
        Ok(compiled)
    }

    fn render(&self, cd: &CallData<'_>) -> Value {
        match self {
            TValue::Static(v) => v.clone(),
            TValue::Str(t) => Value::String(t.render(cd)),
            TValue::Array(items) => Value::Array(items.iter().map(|i| i.render(cd)).collect()),
            TValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.render(cd), v.render(cd)))
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Fixed(DynamicMessage),
    Templated(TValue),
}

/// The request message for each call.
#[derive(Debug, Clone)]
pub struct DataProvider {
    input: MessageDescriptor,
    items: Vec<Item>,
}

/// Builds a message from protobuf JSON (canonical mapping: lowerCamelCase or original field
/// names, enum names as strings); unknown fields are errors.
pub fn message_from_json(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    DynamicMessage::deserialize(desc.clone(), v).map_err(|e| match locate(desc, v) {
        Some(path) => format!("field {path}: {e}"),
        None => e.to_string(),
    })
}

/// The path of the first field whose value fails to convert ("filter.min_price",
/// "events[2].type"), since value errors from serde do not say which field they are about.
fn locate(desc: &MessageDescriptor, v: &Value) -> Option<String> {
    let obj = v.as_object()?;
    for (key, val) in obj {
        let single = Value::Object([(key.clone(), val.clone())].into_iter().collect());
        if DynamicMessage::deserialize(desc.clone(), &single).is_ok() {
            continue;
        }
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key));
        let Some(field) = field else {
            return Some(key.clone());
        };
        let inner = match field.kind() {
            prost_reflect::Kind::Message(m) if !field.is_map() => m,
            _ => return Some(key.clone()),
        };
        if let (true, Some(items)) = (field.is_list(), val.as_array()) {
            for (i, item) in items.iter().enumerate() {
                if DynamicMessage::deserialize(inner.clone(), item).is_err() {
                    let sub = locate(&inner, item).map_or_else(String::new, |p| format!(".{p}"));
                    return Some(format!("{key}[{i}]{sub}"));
                }
            }
            return Some(key.clone());
        }
        return Some(match locate(&inner, val) {
            Some(p) => format!("{key}.{p}"),
            None => key.clone(),
        });
    }
    None
}

impl DataProvider {
    /// Checks every data item against the input message (templated items rendered for a
    /// sample call) and builds the ones without templates.
    pub fn new(
        data: &Value,
        input: MessageDescriptor,
        method: &MethodNames,
    ) -> Result<Self, ConfigError> {
        let elems: Vec<(String, &Value)> = match data {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("data[{i}]"), v))
                .collect(),
            other => vec![("data".to_string(), other)],
        };
        let sample = CallData::new("g0c0", 0, method);
        let mut items = Vec::with_capacity(elems.len());
        for (location, v) in elems {
            let compiled = TValue::compile(v, &location)?;
            let data_error = |error: String| ConfigError::Data {
                location: location.clone(),
                message_type: input.full_name().to_string(),
                error,
            };
            match compiled {
                TValue::Static(v) => {
                    items.push(Item::Fixed(
                        message_from_json(&input, &v).map_err(data_error)?,
                    ));
                }
                templated => {
                    message_from_json(&input, &templated.render(&sample)).map_err(data_error)?;
                    items.push(Item::Templated(templated));
                }
            }
        }
        Ok(Self { input, items })
    }

    /// How many data items there are (the round-robin period).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The message for a call: item `request_number % len`, rendered for this call.
    pub fn message(&self, cd: &CallData<'_>) -> Result<DynamicMessage, String> {
        let idx = (cd.request_number % self.items.len().max(1) as u64) as usize;
        match self.items.get(idx) {
            Some(Item::Fixed(m)) => Ok(m.clone()),
            Some(Item::Templated(t)) => message_from_json(&self.input, &t.render(cd)),
            None => Err("no data".to_string()),
        }
    }
}

#[derive(Debug, Clone)]
enum MetaEntry {
    Ascii(MetadataKey<tonic::metadata::Ascii>, Template),
    Binary(MetadataKey<tonic::metadata::Binary>, Template),
}

/// Request metadata (headers) for each call. Keys ending in "-bin" take base64 values, as in
/// ghz.
#[derive(Debug, Clone)]
pub struct MetadataProvider {
    entries: Vec<MetaEntry>,
    /// Built once when nothing is templated.
    fixed: Option<MetadataMap>,
}

impl MetadataProvider {
    /// Checks keys and values (templated values rendered for a sample call).
    pub fn new(
        metadata: &BTreeMap<String, String>,
        method: &MethodNames,
    ) -> Result<Self, ConfigError> {
        let mut entries = Vec::with_capacity(metadata.len());
        let mut any_template = false;
        for (k, v) in metadata {
            let err = |reason: String| ConfigError::Metadata {
                key: k.clone(),
                reason,
            };
            // gRPC keys are lowercase; Go's metadata package lowercases them too.
            let key = k.to_ascii_lowercase();
            let t = Template::parse(v).map_err(|e| err(e.to_string()))?;
            any_template |= t.has_actions();
            if key.ends_with("-bin") {
                let mk = MetadataKey::from_bytes(key.as_bytes())
                    .map_err(|e| err(format!("invalid key: {e}")))?;
                entries.push(MetaEntry::Binary(mk, t));
            } else {
                let mk = MetadataKey::from_bytes(key.as_bytes())
                    .map_err(|e| err(format!("invalid key: {e}")))?;
                entries.push(MetaEntry::Ascii(mk, t));
            }
        }
        let mut provider = Self {
            entries,
            fixed: None,
        };
        let sample = CallData::new("g0c0", 0, method);
        let built = provider
            .build(&sample)
            .map_err(|(key, reason)| ConfigError::Metadata { key, reason })?;
        if !any_template {
            provider.fixed = Some(built);
        }
        Ok(provider)
    }

    /// The metadata for one call; errors name the key.
    pub fn metadata(&self, cd: &CallData<'_>) -> Result<MetadataMap, String> {
        match &self.fixed {
            Some(m) => Ok(m.clone()),
            None => self
                .build(cd)
                .map_err(|(k, reason)| format!("metadata {k:?}: {reason}")),
        }
    }

    fn build(&self, cd: &CallData<'_>) -> Result<MetadataMap, (String, String)> {
        let mut map = MetadataMap::new();
        for entry in &self.entries {
            match entry {
                MetaEntry::Ascii(k, t) => {
                    let v: AsciiMetadataValue = t
                        .render(cd)
                        .parse()
                        .map_err(|e| (k.to_string(), format!("invalid value: {e}")))?;
                    map.insert(k.clone(), v);
                }
                MetaEntry::Binary(k, t) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(t.render(cd))
                        .map_err(|e| (k.to_string(), format!("value is not base64: {e}")))?;
                    map.insert_bin(k.clone(), BinaryMetadataValue::from_bytes(&bytes));
                }
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::{builtin_pool, resolve_method};
    use serde_json::json;

    fn recommend_input() -> Result<MessageDescriptor, ConfigError> {
        let pool = builtin_pool()?;
        Ok(resolve_method(&pool, "tandem.v1.RecommenderService/Recommend", "builtin")?.input())
    }

    #[test]
    fn round_robin_with_templates() -> Result<(), Box<dyn std::error::Error>> {
        let names = MethodNames::default();
        let dp = DataProvider::new(
            &json!([{"user_id": "a", "k": 5}, {"userId": "u-{{.RequestNumber}}", "k": "{{.RequestNumber}}"}]),
            recommend_input()?,
            &names,
        )?;
        assert_eq!(dp.len(), 2);
        let user = |n: u64| -> Result<String, Box<dyn std::error::Error>> {
            let m = dp.message(&CallData::new("w", n, &names))?;
            let v = serde_json::to_value(&m)?;
            Ok(format!("{}/{}", v["userId"], v["k"]))
        };
        assert_eq!(user(0)?, "\"a\"/5");
        assert_eq!(user(1)?, "\"u-1\"/1");
        assert_eq!(user(2)?, "\"a\"/5");
        assert_eq!(user(7)?, "\"u-7\"/7");
        Ok(())
    }

    #[test]
    fn unknown_fields_are_named() -> Result<(), ConfigError> {
        let names = MethodNames::default();
        let e = DataProvider::new(
            &json!([{"user_id": "a"}, {"user_idd": "b"}]),
            recommend_input()?,
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            e.clone()
                .is_some_and(|e| e.contains("data[1]") && e.contains("user_idd")),
            "{e:?}"
        );
        let e = DataProvider::new(
            &json!({"filter": {"categoriez": []}}),
            recommend_input()?,
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(e.clone().is_some_and(|e| e.contains("categoriez")), "{e:?}");
        let e = DataProvider::new(
            &json!({"k": "{{randomString 3}}"}),
            recommend_input()?,
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(e.is_some());
        Ok(())
    }

    #[test]
    fn value_errors_name_the_field() -> Result<(), ConfigError> {
        let names = MethodNames::default();
        let e = DataProvider::new(
            &json!({"user_id": "a", "k": -1}),
            recommend_input()?,
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(e.clone().is_some_and(|e| e.contains("field k:")), "{e:?}");
        let e = DataProvider::new(
            &json!({"user_id": "a", "filter": {"min_price": "cheap"}}),
            recommend_input()?,
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            e.clone()
                .is_some_and(|e| e.contains("field filter.min_price:")),
            "{e:?}"
        );
        let pool = builtin_pool()?;
        let events = resolve_method(&pool, "tandem.v1.RecommenderService/RecordEvents", "b")?;
        let e = DataProvider::new(
            &json!({"events": [{"user_id": "a", "type": "EVENT_TYPE_VIEW"}, {"type": "LIKE"}]}),
            events.input(),
            &names,
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            e.clone()
                .is_some_and(|e| e.contains("field events[1].type:")),
            "{e:?}"
        );
        Ok(())
    }

    #[test]
    fn metadata_checks() -> Result<(), ConfigError> {
        let names = MethodNames::default();
        let md: BTreeMap<String, String> = [
            (
                "X-Request-Id".to_string(),
                "r-{{.RequestNumber}}".to_string(),
            ),
            ("trace-bin".to_string(), "AQID".to_string()),
        ]
        .into();
        let p = MetadataProvider::new(&md, &names)?;
        let m = p.metadata(&CallData::new("w", 3, &names));
        assert_eq!(
            m.ok().and_then(|m| m
                .get("x-request-id")
                .and_then(|v| v.to_str().ok().map(str::to_string))),
            Some("r-3".to_string())
        );
        let bad: BTreeMap<String, String> = [("x-b-bin".to_string(), "!!".to_string())].into();
        assert!(MetadataProvider::new(&bad, &names).is_err());
        let bad: BTreeMap<String, String> = [("bad key".to_string(), "v".to_string())].into();
        assert!(MetadataProvider::new(&bad, &names).is_err());
        Ok(())
    }
}
