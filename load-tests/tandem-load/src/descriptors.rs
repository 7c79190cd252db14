//! Where message descriptors come from: the server's reflection service (ghz's default, so the
//! server's own view of its API is what gets checked), a protoset file, or the `tandem.v1`
//! descriptors compiled into this binary (no server needed: `--validate`, servers without
//! reflection).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message as _;
use prost_reflect::prost_types::FileDescriptorProto;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::transport::Channel;

use crate::config::split_call;
use crate::error::ConfigError;

/// Which descriptors to check data against and encode with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DescriptorSource {
    /// Server reflection, falling back to the built-in set when the server has no reflection.
    #[default]
    Auto,
    /// Server reflection only.
    Reflection,
    /// The `tandem.v1` descriptors compiled into tandem-load.
    Builtin,
}

/// The built-in `tandem.v1` descriptors.
pub fn builtin_pool() -> Result<DescriptorPool, ConfigError> {
    DescriptorPool::decode(tandem_proto::FILE_DESCRIPTOR_SET).map_err(|e| {
        ConfigError::Descriptors {
            source_name: "the built-in tandem.v1 descriptors".into(),
            error: e.to_string(),
        }
    })
}

/// Descriptors from a protoset file (an encoded `FileDescriptorSet`, `protoc -o`).
pub fn protoset_pool(path: &Path) -> Result<DescriptorPool, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        what: "protoset",
        path: path.to_path_buf(),
        source,
    })?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|e| ConfigError::Descriptors {
        source_name: format!("protoset {}", path.display()),
        error: e.to_string(),
    })
}

/// Finds the called method; the error lists what there is instead.
pub fn resolve_method(
    pool: &DescriptorPool,
    call: &str,
    source_name: &str,
) -> Result<MethodDescriptor, ConfigError> {
    let not_found = |available: Vec<String>| ConfigError::CallNotFound {
        call: call.to_string(),
        source_name: source_name.to_string(),
        available,
    };
    let (service_name, method_name) = split_call(call).ok_or_else(|| not_found(vec![]))?;
    let Some(service) = pool.get_service_by_name(service_name) else {
        return Err(not_found(
            pool.services().map(|s| s.full_name().to_string()).collect(),
        ));
    };
    let Some(method) = service.methods().find(|m| m.name() == method_name) else {
        return Err(not_found(
            service
                .methods()
                .map(|m| format!("{}.{}", service.full_name(), m.name()))
                .collect(),
        ));
    };
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => Ok(method),
        (true, true) => Err(ConfigError::NotUnary {
            call: call.to_string(),
            kind: "bidirectional streaming",
        }),
        (true, false) => Err(ConfigError::NotUnary {
            call: call.to_string(),
            kind: "client streaming",
        }),
        (false, true) => Err(ConfigError::NotUnary {
            call: call.to_string(),
            kind: "server streaming",
        }),
    }
}

/// Why reflection gave no descriptors.
#[derive(Debug)]
pub enum ReflectFailure {
    /// The server has no reflection service (of that version).
    Unimplemented,
    /// Reflection works but does not know the symbol.
    NotFound(String),
    /// Anything else (network, malformed answers).
    Other(String),
}

macro_rules! reflection_fetch {
    ($fn_name:ident, $($pb:ident)::+) => {
        /// Fetches the file defining `symbol` and, recursively, the files it imports.
        async fn $fn_name(
            channel: Channel,
            symbol: &str,
        ) -> Result<Vec<FileDescriptorProto>, ReflectFailure> {
            use $($pb)::+::server_reflection_client::ServerReflectionClient;
            use $($pb)::+::server_reflection_request::MessageRequest;
            use $($pb)::+::server_reflection_response::MessageResponse;
            use $($pb)::+::ServerReflectionRequest;

            let mut client = ServerReflectionClient::new(channel);
            let mut files: HashMap<String, FileDescriptorProto> = HashMap::new();
            let mut requested: HashSet<String> = HashSet::new();
            let mut queue = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
            while let Some(req) = queue.pop() {
                let is_symbol = matches!(req, MessageRequest::FileContainingSymbol(_));
                let what = match &req {
                    MessageRequest::FileByFilename(f) => format!("file {f:?}"),
                    _ => format!("symbol {symbol:?}"),
                };
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(req),
                };
                let mut stream = client
                    .server_reflection_info(tokio_stream::once(request))
                    .await
                    .map_err(status_failure)?
                    .into_inner();
                let response = stream
                    .message()
                    .await
                    .map_err(status_failure)?
                    .ok_or_else(|| ReflectFailure::Other(format!("no answer for {what}")))?;
                match response.message_response {
                    Some(MessageResponse::FileDescriptorResponse(fdr)) => {
                        for bytes in fdr.file_descriptor_proto {
                            let fd = FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
                                ReflectFailure::Other(format!("bad descriptor for {what}: {e}"))
                            })?;
                            for dep in &fd.dependency {
                                if !files.contains_key(dep) && requested.insert(dep.clone()) {
                                    queue.push(MessageRequest::FileByFilename(dep.clone()));
                                }
                            }
                            requested.insert(fd.name().to_string());
                            files.insert(fd.name().to_string(), fd);
                        }
                    }
                    Some(MessageResponse::ErrorResponse(e)) if is_symbol => {
                        return Err(ReflectFailure::NotFound(e.error_message));
                    }
                    Some(MessageResponse::ErrorResponse(e)) => {
                        return Err(ReflectFailure::Other(format!(
                            "{what}: {}",
                            e.error_message
                        )));
                    }
                    _ => {
                        return Err(ReflectFailure::Other(format!(
                            "unexpected answer for {what}"
                        )));
                    }
                }
            }
            Ok(files.into_values().collect())
        }
    };
}

reflection_fetch!(fetch_v1, tonic_reflection::pb::v1);
reflection_fetch!(fetch_v1alpha, tonic_reflection::pb::v1alpha);

fn status_failure(status: tonic::Status) -> ReflectFailure {
    match status.code() {
        tonic::Code::Unimplemented => ReflectFailure::Unimplemented,
        _ => ReflectFailure::Other(format!(
            "{}: {}",
            crate::report::code_name(status.code()),
            status.message()
        )),
    }
}

/// Descriptors for `call` from the server's reflection service (v1, then v1alpha).
pub async fn reflection_pool(
    channel: Channel,
    call: &str,
) -> Result<DescriptorPool, ReflectFailure> {
    let service = split_call(call)
        .map(|(s, _)| s.to_string())
        .ok_or_else(|| ReflectFailure::NotFound(format!("{call:?} is not Service.Method")))?;
    let files = match fetch_v1(channel.clone(), &service).await {
        Err(ReflectFailure::Unimplemented) => fetch_v1alpha(channel, &service).await?,
        other => other?,
    };
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(dependency_order(files))
        .map_err(|e| ReflectFailure::Other(format!("inconsistent descriptors: {e}")))?;
    Ok(pool)
}

/// Orders files so each comes after the files it imports.
fn dependency_order(files: Vec<FileDescriptorProto>) -> Vec<FileDescriptorProto> {
    let mut by_name: HashMap<String, FileDescriptorProto> = files
        .into_iter()
        .map(|f| (f.name().to_string(), f))
        .collect();
    let mut names: Vec<String> = by_name.keys().cloned().collect();
    names.sort();
    let mut done: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    fn visit(
        name: &str,
        by_name: &mut HashMap<String, FileDescriptorProto>,
        done: &mut HashSet<String>,
        out: &mut Vec<FileDescriptorProto>,
    ) {
        if !done.insert(name.to_string()) {
            return;
        }
        let deps = by_name
            .get(name)
            .map(|f| f.dependency.clone())
            .unwrap_or_default();
        for dep in deps {
            visit(&dep, by_name, done, out);
        }
        if let Some(f) = by_name.remove(name) {
            out.push(f);
        }
    }
    for name in names {
        visit(&name, &mut by_name, &mut done, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_tandem_calls() -> Result<(), ConfigError> {
        let pool = builtin_pool()?;
        for call in [
            "tandem.v1.RecommenderService.Recommend",
            "tandem.v1.RecommenderService/RecordEvents",
            "tandem.v1.RetrievalService/Search",
            "tandem.v1.RankingService.Rank",
        ] {
            resolve_method(&pool, call, "builtin")?;
        }
        Ok(())
    }

    #[test]
    fn unknown_calls_list_alternatives() -> Result<(), ConfigError> {
        let pool = builtin_pool()?;
        let e = resolve_method(&pool, "tandem.v1.RecommenderService/Recomend", "builtin")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.is_some_and(|e| e.contains("Recomend") && e.contains("RecommenderService.Recommend"))
        );
        let e = resolve_method(
            &pool,
            "tandem.v1.RecommenderService/RecordEventStream",
            "builtin",
        )
        .err()
        .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("client streaming")));
        Ok(())
    }
}
