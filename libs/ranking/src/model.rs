//! One loaded model version: its spec, its session workers and its counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tandem_catalog::Catalog;

use crate::RankingError;
use crate::batcher::{Admission, BatchConfig, Batcher, Runner, run_batch};
use crate::features::{Assembler, FeatureValues, ScoreRequest, validate};
use crate::prune::prune_to_output;
use crate::session::{
    ActiveProvider, ExecutionProvider, SessionOptions, check_model, init_runtime, open_session,
};
use crate::spec::FeatureSpec;
use crate::stats::StatsSnapshot;

#[derive(Debug, Clone)]
pub struct RankerConfig {
    /// libonnxruntime.so (ORT_DYLIB_PATH).
    pub ort_dylib_path: PathBuf,
    pub execution_provider: ExecutionProvider,
    /// Sessions per version, each with its own worker thread: runs in flight at once.
    pub sessions: usize,
    /// Threads each session uses inside one run.
    pub intra_threads: usize,
    /// Most candidates one request may score.
    pub max_candidates: usize,
    pub batch: BatchConfig,
}

/// Rows of the warm-up batch every new version must score with finite values.
const WARM_UP_ROWS: usize = 64;

/// A version ready to serve. Dropping the last handle stops its workers once they drain.
pub struct ModelVersion {
    /// The directory name (`2`).
    version: String,
    /// `NAME/VERSION` from the spec, reported with every score.
    label: String,
    dir: PathBuf,
    spec: FeatureSpec,
    catalog: Arc<Catalog>,
    provider: ActiveProvider,
    sessions: usize,
    max_candidates: usize,
    /// Graph nodes dropped at load: the score output does not depend on them.
    pruned_nodes: usize,
    batcher: Arc<Batcher>,
    loaded_at: std::time::SystemTime,
    resident_bytes: u64,
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVersion")
            .field("label", &self.label)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Drop for ModelVersion {
    fn drop(&mut self) {
        self.batcher.shut_down();
    }
}

impl ModelVersion {
    /// Loads `dir` (`NAME/VERSION/`): spec, model, check against the spec and the catalog,
    /// a warm-up batch on every session that must give finite scores, then the workers.
    pub fn load(
        dir: &Path,
        catalog: Arc<Catalog>,
        config: &RankerConfig,
    ) -> Result<Self, RankingError> {
        let started = Instant::now();
        let resident_before = tandem_memory::resident_bytes();
        let spec = FeatureSpec::load(&dir.join("feature_spec.json"))?;
        spec.check_catalog(&catalog)?;
        let env = init_runtime(&config.ort_dylib_path)?;
        let model_path = dir.join(&spec.model.file);
        let model = std::fs::read(&model_path).map_err(|source| RankingError::Io {
            path: model_path.clone(),
            source,
        })?;
        // ORT would run the nodes that feed only other outputs on every request.
        let mut pruned = prune_to_output(&model, &spec.output.name);
        let options = SessionOptions {
            provider: config.execution_provider,
            intra_threads: config.intra_threads,
        };
        let mut sessions = Vec::with_capacity(config.sessions.max(1));
        let mut provider = ActiveProvider::Cpu;
        for _ in 0..config.sessions.max(1) {
            let opened = match &pruned {
                Some((graph, _)) => open_session(&env, graph, &model_path, options),
                None => open_session(&env, &model, &model_path, options),
            };
            let (session, active) = match opened {
                // Pruning only drops nodes, so this should not happen; if ORT disagrees, the
                // model as exported still serves.
                Err(e) if pruned.is_some() && sessions.is_empty() => {
                    tracing::warn!(
                        model = %model_path.display(),
                        error = %e,
                        "the graph pruned to the score output did not load; loading it as exported"
                    );
                    pruned = None;
                    open_session(&env, &model, &model_path, options)?
                }
                opened => opened?,
            };
            provider = active;
            sessions.push(Runner::new(session, &spec.output.name)?);
        }
        check_model(sessions[0].session(), &spec)?;
        let pruned_nodes = pruned.map_or(0, |(_, removed)| removed);
        let label = spec.version_label();
        let warm_up = warm_up_request(&catalog, &spec);
        let assembler = Assembler::new(&spec, &catalog);
        for session in &mut sessions {
            let scores = run_batch(session, &assembler, &catalog, &spec, &[&warm_up])?;
            if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
                return Err(RankingError::NonFiniteScores {
                    row: i,
                    value: scores[i],
                });
            }
        }
        let version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&spec.model.version)
            .to_owned();
        let sessions_len = sessions.len();
        let batcher = Batcher::start(
            sessions,
            config.batch,
            spec.clone(),
            catalog.clone(),
            &version,
        )?;
        // Sessions, their arenas after a warm-up run and the feature tables: loads run one at
        // a time at start-up, so the growth is this version's (a reload under traffic also
        // counts what requests allocated meanwhile).
        let resident_bytes = resident_before
            .zip(tandem_memory::resident_bytes())
            .map_or(0, |(before, after)| after.saturating_sub(before));
        tracing::info!(
            version = label,
            model = %model_path.display(),
            execution_provider = provider.as_str(),
            pruned_nodes,
            sessions = sessions_len,
            intra_threads = config.intra_threads,
            batch_max_rows = config.batch.max_rows,
            batch_max_wait_us = config.batch.max_wait.as_micros() as u64,
            resident_mib = resident_bytes >> 20,
            seconds = started.elapsed().as_secs_f32(),
            "loaded ranking model"
        );
        Ok(Self {
            version,
            label,
            dir: dir.to_owned(),
            spec,
            catalog,
            provider,
            sessions: sessions_len,
            max_candidates: config.max_candidates,
            pruned_nodes,
            batcher,
            loaded_at: std::time::SystemTime::now(),
            resident_bytes,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The features this version computes for `request`, by name (explain, served logs).
    /// Assembly is deterministic, so these are the values its scores came from.
    pub fn features(&self, request: &ScoreRequest) -> Result<Vec<FeatureValues>, RankingError> {
        validate(&self.spec, &self.catalog, request)?;
        Ok(self
            .batcher
            .assembler
            .named_features(&self.catalog, request))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn provider(&self) -> ActiveProvider {
        self.provider
    }

    pub fn sessions(&self) -> usize {
        self.sessions
    }

    pub fn pruned_nodes(&self) -> usize {
        self.pruned_nodes
    }

    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    /// How much the process's resident set grew while this version loaded (ONNX Runtime's
    /// sessions and arenas, the model's feature tables).
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.batcher.stats.snapshot()
    }

    /// Checks the request and admits it; `None` when there is nothing to score.
    fn admit(&self, request: ScoreRequest) -> Result<Option<Admission>, RankingError> {
        validate(&self.spec, &self.catalog, &request)?;
        if request.items.len() > self.max_candidates {
            return Err(RankingError::TooManyCandidates {
                got: request.items.len(),
                max: self.max_candidates,
            });
        }
        if request.items.is_empty() {
            return Ok(None);
        }
        self.batcher.admit(request).map(Some)
    }

    /// One score per candidate; runs on this thread when a session is idle.
    pub(crate) fn score_blocking(&self, request: ScoreRequest) -> Result<Vec<f32>, RankingError> {
        match self.admit(request)? {
            None => Ok(Vec::new()),
            Some(Admission::Lead(led)) => self.batcher.lead(led),
            Some(Admission::Queued(pending)) => pending.blocking_recv().map_err(|_| dropped())?,
        }
    }

    /// One score per candidate. A caller that leads a small run runs it on its own task, as
    /// a search does; a larger one in place on a multi-thread runtime (`block_in_place`), else
    /// on the blocking pool.
    ///
    /// See also [`ModelVersion::features`] for what the model saw.
    pub(crate) async fn score(&self, request: ScoreRequest) -> Result<Vec<f32>, RankingError> {
        match self.admit(request)? {
            None => Ok(Vec::new()),
            Some(Admission::Lead(led)) if led.rows() <= INLINE_MAX_ROWS => self.batcher.lead(led),
            Some(Admission::Lead(led)) => {
                let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi_thread {
                    tokio::task::block_in_place(|| self.batcher.lead(led))
                } else {
                    let batcher = self.batcher.clone();
                    tokio::task::spawn_blocking(move || batcher.lead(led))
                        .await
                        .map_err(|e| RankingError::inference("run", e))?
                }
            }
            Some(Admission::Queued(pending)) => pending.await.map_err(|_| dropped())?,
        }
    }
}

/// Most rows a led run scores on the caller's task without leaving it. Handing the worker
/// to another thread (`block_in_place`) costs two thread switches and the caches that go with
/// them, more CPU than a few hundred rows of the model (load-tests/e2e): below this the run
/// is a short, bounded CPU step like a search, above it the worker is handed off.
pub(crate) const INLINE_MAX_ROWS: usize = 512;

fn dropped() -> RankingError {
    RankingError::inference("run", "the worker dropped the request")
}

/// A plausible request: the most popular items for a user who looked at a few of them.
fn warm_up_request(catalog: &Catalog, spec: &FeatureSpec) -> ScoreRequest {
    let popular = catalog.by_popularity();
    let items: Vec<_> = popular.iter().copied().take(WARM_UP_ROWS).collect();
    let recent: Vec<_> = popular.iter().copied().skip(WARM_UP_ROWS).take(8).collect();
    let mut user = vec![0.0f32; spec.embedding_dim];
    for &i in &recent {
        for (u, e) in user.iter_mut().zip(catalog.embedding(i)) {
            *u += e;
        }
    }
    let norm = user.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        user.iter_mut().for_each(|v| *v /= norm);
    }
    ScoreRequest {
        user_id: "warm-up".into(),
        user_vector: user,
        retrieval_scores: vec![0.5; items.len()],
        items,
        recent_items: recent,
        ..ScoreRequest::default()
    }
}
