//! ONNX Runtime sessions: the runtime library, execution providers, and the check of a
//! model's graph against its feature spec.

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorElementType;

use crate::RankingError;
use crate::spec::{FeatureSpec, InputDtype};

static RUNTIME: OnceLock<Environment> = OnceLock::new();

/// Loads libonnxruntime once per process; later calls reuse it.
pub fn init_runtime(dylib: &Path) -> Result<Environment, RankingError> {
    if let Some(env) = RUNTIME.get() {
        return Ok(env.clone());
    }
    let err = |message: String| RankingError::Runtime {
        path: dylib.to_owned(),
        message,
    };
    if !dylib.is_file() {
        return Err(err("no such file".into()));
    }
    let env = ort::init_from(dylib)
        .map_err(|e| err(e.to_string()))?
        .with_name("tandem")
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| env).clone())
}

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// CUDA or fail: start-up stops if the GPU cannot be used.
    Cuda,
    /// CUDA when it works, else CPU with a warning.
    Auto,
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => Err(format!("`{other}` is not one of cpu, cuda, auto")),
        }
    }
}

/// The provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveProvider {
    Cpu,
    Cuda,
}

impl ActiveProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOptions {
    pub provider: ExecutionProvider,
    pub intra_threads: usize,
}

fn builder(
    env: &Environment,
    intra_threads: usize,
) -> Result<ort::session::builder::SessionBuilder, RankingError> {
    let stage = "session";
    // `All` is ORT_ENABLE_ALL, Python's default; ort's `Level3` is only ORT_ENABLE_LAYOUT.
    Session::builder(env)
        .map_err(|e| RankingError::inference(stage, e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| RankingError::inference(stage, e))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| RankingError::inference(stage, e))?
        .with_inter_threads(1)
        .map_err(|e| RankingError::inference(stage, e))
}

/// Opens one session on the requested provider; `Auto` falls back to CPU with a warning.
pub(crate) fn open_session(
    env: &Environment,
    model: &[u8],
    path: &Path,
    options: SessionOptions,
) -> Result<(Session, ActiveProvider), RankingError> {
    let commit = |b: ort::session::builder::SessionBuilder| {
        let mut b = b;
        b.commit_from_memory(model)
            .map_err(|e| RankingError::inference("session", format!("{}: {e}", path.display())))
    };
    match options.provider {
        ExecutionProvider::Cpu => Ok((
            commit(builder(env, options.intra_threads)?)?,
            ActiveProvider::Cpu,
        )),
        ExecutionProvider::Cuda => cuda_session(env, model, path, options)
            .map(|s| (s, ActiveProvider::Cuda))
            .map_err(RankingError::Cuda),
        ExecutionProvider::Auto => match cuda_session(env, model, path, options) {
            Ok(s) => Ok((s, ActiveProvider::Cuda)),
            Err(why) => {
                tracing::warn!(%why, "CUDA execution provider unavailable; running on CPU");
                Ok((
                    commit(builder(env, options.intra_threads)?)?,
                    ActiveProvider::Cpu,
                ))
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_session(
    env: &Environment,
    model: &[u8],
    path: &Path,
    options: SessionOptions,
) -> Result<Session, String> {
    use ort::ep::ExecutionProvider as _;
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return Err(
                "the loaded libonnxruntime has no CUDA execution provider (install the onnxruntime-gpu wheel and point ORT_DYLIB_PATH at its library)".into(),
            );
        }
        Err(e) => return Err(e.to_string()),
    }
    let b = builder(env, options.intra_threads).map_err(|e| e.to_string())?;
    let mut b = b
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| e.to_string())?;
    b.commit_from_memory(model)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_session(
    _env: &Environment,
    _model: &[u8],
    _path: &Path,
    _options: SessionOptions,
) -> Result<Session, String> {
    Err("this build has no CUDA support (build with `--features cuda`)".into())
}

/// The model's graph inputs and the score output must be what the spec describes.
pub(crate) fn check_model(session: &Session, spec: &FeatureSpec) -> Result<(), RankingError> {
    let names = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| o.name().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for input in &spec.inputs {
        let mismatch = |problem: String| RankingError::InputMismatch {
            input: input.name.clone(),
            problem,
        };
        let outlet = session
            .inputs()
            .iter()
            .find(|o| o.name() == input.name)
            .ok_or_else(|| {
                mismatch(format!(
                    "the model has no such input (it has: {})",
                    names(session.inputs())
                ))
            })?;
        let dtype = outlet.dtype();
        let (want, label) = match input.dtype {
            InputDtype::Float32 => (TensorElementType::Float32, "float32"),
            InputDtype::Int64 => (TensorElementType::Int64, "int64"),
        };
        if dtype.tensor_type() != Some(want) {
            return Err(mismatch(format!(
                "the model takes {dtype:?}, the spec says {label}"
            )));
        }
        let shape: Vec<i64> = dtype.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        let width = input.width() as i64;
        if shape.len() != 2 || (shape[1] != width && shape[1] >= 0) {
            return Err(mismatch(format!(
                "the model's shape is {shape:?}, the spec's features make [-1, {width}]"
            )));
        }
    }
    if let Some(extra) = session
        .inputs()
        .iter()
        .find(|o| !spec.inputs.iter().any(|i| i.name == o.name()))
    {
        return Err(RankingError::InputMismatch {
            input: extra.name().to_owned(),
            problem: "the model needs it but the spec does not describe it".into(),
        });
    }
    let output = &spec.output;
    let mismatch = |problem: String| RankingError::OutputMismatch {
        output: output.name.clone(),
        problem,
    };
    let outlet = session
        .outputs()
        .iter()
        .find(|o| o.name() == output.name)
        .ok_or_else(|| {
            mismatch(format!(
                "the model has no such output (it has: {})",
                names(session.outputs())
            ))
        })?;
    if outlet.dtype().tensor_type() != Some(TensorElementType::Float32) {
        return Err(mismatch(format!(
            "the model gives {:?}, the spec says float32",
            outlet.dtype()
        )));
    }
    let shape: Vec<i64> = outlet
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    match shape.len() {
        1 if output.column == 0 => Ok(()),
        2 if shape[1] < 0 || (output.column as i64) < shape[1] => Ok(()),
        _ => Err(mismatch(format!(
            "column {} does not exist in shape {shape:?}",
            output.column
        ))),
    }
}
