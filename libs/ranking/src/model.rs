//! The loaded model: a pool of ORT sessions, each run by one caller at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType};
use tandem_catalog::{Catalog, ItemIdx};

use crate::RankingError;
use crate::features::assemble;
use crate::spec::FeatureSpec;

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

#[derive(Debug, Clone)]
pub struct RankerConfig {
    /// libonnxruntime.so (ORT_DYLIB_PATH).
    pub ort_dylib_path: PathBuf,
    /// Sessions in the pool: how many requests score at once.
    pub sessions: usize,
    /// Threads each session uses inside one run.
    pub intra_threads: usize,
    /// Most candidates one request may score.
    pub max_candidates: usize,
}

/// What to score: one user, many candidates.
#[derive(Debug, Clone, Copy)]
pub struct RankRequest<'a> {
    pub user_vector: &'a [f32],
    pub items: &'a [ItemIdx],
    /// Empty, or one per item.
    pub retrieval_scores: &'a [f32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One per candidate, in request order.
    pub scores: Vec<f32>,
    pub model_version: String,
}

pub struct Ranker {
    spec: FeatureSpec,
    catalog: Arc<Catalog>,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    version: String,
    config: RankerConfig,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("version", &self.version)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl Ranker {
    /// Loads a bundle: `dir` is a version directory (holding `feature_spec.json`) or a model
    /// directory whose highest numeric version is taken.
    pub fn load(
        dir: &Path,
        catalog: Arc<Catalog>,
        config: RankerConfig,
    ) -> Result<Self, RankingError> {
        let started = Instant::now();
        let bundle = resolve_version(dir)?;
        let spec = FeatureSpec::load(&bundle.join("feature_spec.json"))?;
        spec.check_catalog(&catalog)?;
        let env = init_runtime(&config.ort_dylib_path)?;
        let model_path = bundle.join(&spec.model.file);
        if !model_path.is_file() {
            return Err(RankingError::Io {
                path: model_path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let sessions = (0..config.sessions.max(1))
            .map(|_| open_session(&env, &model_path, config.intra_threads))
            .collect::<Result<Vec<_>, _>>()?;
        check_model(&sessions[0], &spec)?;
        let version = spec.version_label();
        tracing::info!(
            version,
            model = %model_path.display(),
            sessions = sessions.len(),
            intra_threads = config.intra_threads,
            execution_provider = "cpu",
            seconds = started.elapsed().as_secs_f32(),
            "loaded ranking model"
        );
        Ok(Self {
            spec,
            catalog,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            version,
            config,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Scores every candidate in one ORT run. Blocking: call from a blocking thread.
    pub fn rank(&self, req: RankRequest<'_>) -> Result<Scores, RankingError> {
        if req.user_vector.len() != self.spec.embedding_dim {
            return Err(RankingError::InvalidArgument {
                field: "user.query_vector",
                reason: format!(
                    "expected {} values, got {}",
                    self.spec.embedding_dim,
                    req.user_vector.len()
                ),
            });
        }
        if let Some(i) = req.user_vector.iter().position(|v| !v.is_finite()) {
            return Err(RankingError::InvalidArgument {
                field: "user.query_vector",
                reason: format!("value {i} is not finite"),
            });
        }
        if !req.retrieval_scores.is_empty() && req.retrieval_scores.len() != req.items.len() {
            return Err(RankingError::InvalidArgument {
                field: "candidates.retrieval_score",
                reason: "one per candidate or none".into(),
            });
        }
        if req.items.len() > self.config.max_candidates {
            return Err(RankingError::TooManyCandidates {
                got: req.items.len(),
                max: self.config.max_candidates,
            });
        }
        if req.items.is_empty() {
            return Ok(Scores {
                scores: Vec::new(),
                model_version: self.version.clone(),
            });
        }
        let rows = req.items.len();
        let inputs = assemble(
            &self.spec,
            &self.catalog,
            req.user_vector,
            req.items,
            req.retrieval_scores,
        )
        .into_iter()
        .map(|(name, width, values)| Tensor::from_array(([rows, width], values)).map(|t| (name, t)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RankingError::inference("input", e))?;

        let mut session = self.session();
        let outputs = session
            .run(inputs)
            .map_err(|e| RankingError::inference("run", e))?;
        let out = outputs
            .get(&self.spec.output.name)
            .ok_or_else(|| RankingError::inference("output", "missing output"))?;
        let (shape, data) = out
            .try_extract_tensor::<f32>()
            .map_err(|e| RankingError::inference("output", e))?;
        let scores = match shape.len() {
            1 => data.to_vec(),
            2 => {
                let cols = usize::try_from(shape[1]).unwrap_or(0);
                let col = self.spec.output.column;
                if col >= cols || data.len() != rows * cols {
                    return Err(RankingError::inference(
                        "output",
                        format!("unexpected shape {shape:?}"),
                    ));
                }
                data.chunks_exact(cols).map(|r| r[col]).collect()
            }
            _ => {
                return Err(RankingError::inference(
                    "output",
                    format!("unexpected shape {shape:?}"),
                ));
            }
        };
        if scores.len() != rows {
            return Err(RankingError::inference(
                "output",
                format!("{} scores for {rows} rows", scores.len()),
            ));
        }
        Ok(Scores {
            scores,
            model_version: self.version.clone(),
        })
    }

    /// A free session if one is idle, else waits on the next in turn.
    fn session(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // A poisoned session mutex means a panic during a run; ORT sessions are still usable.
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn resolve_version(dir: &Path) -> Result<PathBuf, RankingError> {
    if dir.join("feature_spec.json").is_file() {
        return Ok(dir.to_owned());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| RankingError::Io {
        path: dir.to_owned(),
        source,
    })?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u64 = e.file_name().to_str()?.parse().ok()?;
            e.path()
                .join("feature_spec.json")
                .is_file()
                .then(|| (v, e.path()))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, p)| p)
        .ok_or_else(|| RankingError::NoVersion(dir.to_owned()))
}

fn open_session(
    env: &Environment,
    path: &Path,
    intra_threads: usize,
) -> Result<Session, RankingError> {
    let stage = "session";
    Session::builder(env)
        .map_err(|e| RankingError::inference(stage, e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| RankingError::inference(stage, e))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| RankingError::inference(stage, e))?
        .with_inter_threads(1)
        .map_err(|e| RankingError::inference(stage, e))?
        .commit_from_file(path)
        .map_err(|e| RankingError::inference(stage, format!("{}: {e}", path.display())))
}

/// The model's graph inputs and the score output must be what the spec describes.
fn check_model(session: &Session, spec: &FeatureSpec) -> Result<(), RankingError> {
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
        if dtype.tensor_type() != Some(TensorElementType::Float32) {
            return Err(mismatch(format!(
                "the model takes {dtype:?}, the spec says float32"
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
