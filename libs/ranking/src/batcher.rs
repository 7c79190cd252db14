//! Dynamic batching: concurrent requests queue up and each session's worker thread takes as
//! many as fit in one ORT run (up to `max_rows`), then hands every caller its own slice of
//! the output. A worker waits up to `max_wait` after the first request for more only while
//! another session is running: then callers are active and more requests are on their way.
//! With nothing else running it starts at once, so a lone caller pays no batching delay.
//!
//! Each worker owns its session (ORT's `run` takes `&mut self`), so no lock is held across an
//! inference; the queue's mutex only guards pushing and popping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use tandem_catalog::Catalog;
use tokio::sync::oneshot;

use crate::RankingError;
use crate::features::{InputValues, ScoreRequest, assemble};
use crate::spec::FeatureSpec;
use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows coalesced into one run; 0 turns batching off (one request per run).
    pub max_rows: usize,
    /// How long a run waits for more requests after the first one queued.
    pub max_wait: Duration,
    /// Rows allowed to wait in the queue; past this new requests are refused (overload).
    pub max_queued_rows: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 4096,
            max_wait: Duration::from_micros(200),
            max_queued_rows: 65_536,
        }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Vec<f32>, RankingError>>;
/// Where a queued request's scores arrive.
pub(crate) type Pending = oneshot::Receiver<Result<Vec<f32>, RankingError>>;

struct Job {
    request: ScoreRequest,
    reply: Reply,
    queued: Instant,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    rows: usize,
    closed: bool,
}

/// What the workers share: the queue and what they need to assemble and split a batch.
pub(crate) struct Batcher {
    queue: Mutex<Queue>,
    ready: Condvar,
    config: BatchConfig,
    spec: FeatureSpec,
    catalog: Arc<Catalog>,
    /// Workers inside a model run right now.
    running: AtomicUsize,
    pub(crate) stats: Stats,
}

impl Batcher {
    pub(crate) fn start(
        sessions: Vec<Session>,
        config: BatchConfig,
        spec: FeatureSpec,
        catalog: Arc<Catalog>,
        label: &str,
    ) -> Result<Arc<Self>, RankingError> {
        let batcher = Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            config,
            spec,
            catalog,
            running: AtomicUsize::new(0),
            stats: Stats::default(),
        });
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = batcher.clone();
            std::thread::Builder::new()
                .name(format!("rank-{label}-{i}"))
                .spawn(move || worker.work(session))
                .map_err(|e| RankingError::inference("worker", e))?;
        }
        Ok(batcher)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Workers never panic while holding the queue; a poisoned lock still holds valid jobs.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a validated request; its scores arrive on `reply`.
    pub(crate) fn submit(&self, request: ScoreRequest, reply: Reply) -> Result<(), RankingError> {
        let rows = request.items.len();
        let mut queue = self.lock();
        if queue.closed {
            return Err(RankingError::inference(
                "queue",
                "this model version is unloading",
            ));
        }
        if queue.rows > 0 && queue.rows + rows > self.config.max_queued_rows {
            return Err(RankingError::Overloaded {
                queued: queue.rows,
                max: self.config.max_queued_rows,
            });
        }
        queue.rows += rows;
        queue.jobs.push_back(Job {
            request,
            reply,
            queued: Instant::now(),
        });
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }

    /// Stops taking requests; workers finish what is queued, then exit.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn work(&self, mut session: Session) {
        while let Some(batch) = self.next_batch() {
            self.run(&mut session, batch);
        }
    }

    /// Blocks for the next batch; `None` once closed and drained.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut queue = self.lock();
        let first = loop {
            if let Some(job) = queue.jobs.pop_front() {
                break job;
            }
            if queue.closed {
                return None;
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        };
        let mut rows = first.request.items.len();
        queue.rows -= rows;
        let deadline = first.queued + self.config.max_wait;
        let mut batch = vec![first];
        if self.config.max_rows > 0 {
            loop {
                while let Some(next) = queue.jobs.front() {
                    let more = next.request.items.len();
                    if rows + more > self.config.max_rows {
                        break;
                    }
                    rows += more;
                    queue.rows -= more;
                    batch.extend(queue.jobs.pop_front());
                }
                let now = Instant::now();
                // Only while another run is in progress are more requests likely to arrive.
                let others_running = self.running.load(Ordering::Acquire) > 0;
                if !queue.jobs.is_empty()
                    || rows >= self.config.max_rows
                    || now >= deadline
                    || queue.closed
                    || !others_running
                {
                    break;
                }
                queue = self
                    .ready
                    .wait_timeout(queue, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let left_over = !queue.jobs.is_empty();
        drop(queue);
        if left_over {
            // What did not fit is another worker's: wake one in case this one took its signal.
            self.ready.notify_one();
        }
        Some(batch)
    }

    fn run(&self, session: &mut Session, mut batch: Vec<Job>) {
        // Callers that gave up (deadline, disconnect) need no scores.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        for job in &batch {
            self.stats.queue_wait.record(started - job.queued);
        }
        let requests: Vec<&ScoreRequest> = batch.iter().map(|j| &j.request).collect();
        self.running.fetch_add(1, Ordering::AcqRel);
        let result = run_batch(session, &self.spec, &self.catalog, &requests);
        self.running.fetch_sub(1, Ordering::AcqRel);
        let rows: usize = requests.iter().map(|r| r.items.len()).sum();
        self.stats
            .record_run(batch.len(), rows, started.elapsed(), result.is_ok());
        match result {
            Ok(scores) => {
                let mut rest = scores.as_slice();
                for job in batch {
                    let (mine, tail) = rest.split_at(job.request.items.len());
                    rest = tail;
                    self.stats.latency.record(job.queued.elapsed());
                    // A caller that went away meanwhile is no error.
                    let _ = job.reply.send(Ok(mine.to_vec()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(RankingError::inference("run", message.clone())));
                }
            }
        }
    }
}

/// One ORT run over the rows of `requests`; the score column for every row, in order.
pub(crate) fn run_batch(
    session: &mut Session,
    spec: &FeatureSpec,
    catalog: &Catalog,
    requests: &[&ScoreRequest],
) -> Result<Vec<f32>, RankingError> {
    let rows: usize = requests.iter().map(|r| r.items.len()).sum();
    let inputs = assemble(spec, catalog, requests)
        .into_iter()
        .map(|input| {
            let shape = [rows, input.width];
            let value: DynValue = match input.values {
                InputValues::F32(v) => Tensor::from_array((shape, v))?.into_dyn(),
                InputValues::I64(v) => Tensor::from_array((shape, v))?.into_dyn(),
            };
            Ok((input.name, value))
        })
        .collect::<Result<Vec<_>, ort::Error>>()
        .map_err(|e| RankingError::inference("input", e))?;
    let outputs = session
        .run(inputs)
        .map_err(|e| RankingError::inference("run", e))?;
    let out = outputs
        .get(&spec.output.name)
        .ok_or_else(|| RankingError::inference("output", "missing output"))?;
    let (shape, data) = out
        .try_extract_tensor::<f32>()
        .map_err(|e| RankingError::inference("output", e))?;
    let scores = match shape.len() {
        1 => data.to_vec(),
        2 => {
            let cols = usize::try_from(shape[1]).unwrap_or(0);
            let col = spec.output.column;
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
    Ok(scores)
}
