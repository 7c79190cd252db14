//! Dynamic batching over a pool of ORT sessions (ORT's `run` takes `&mut self`, so each run
//! takes a session out of the pool; the pool's mutex is never held across an inference).
//!
//! A caller that finds a session idle leads: it runs its own request together with whatever
//! is queued (up to `max_rows`) on its own thread, hands the others their slices, and returns
//! the session. No thread hand-off, so a lone caller pays only its run. Callers that find
//! every session busy queue up; worker threads (one per session) take a session as soon as one
//! is free and run the queue in batches of up to `max_rows`, waiting up to `max_wait` after
//! the first request for more only while another run is in progress (then callers are active
//! and more requests are on their way).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::session::SessionInputValue;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::TensorRef;
use tandem_catalog::Catalog;
use tokio::sync::oneshot;

use crate::RankingError;
use crate::features::{Assembler, InputValues, ScoreRequest};
use crate::spec::FeatureSpec;
use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows coalesced into one run; 0 turns batching off (one request per run).
    pub max_rows: usize,
    /// How long a queued batch may wait for more requests after the first one.
    pub max_wait: Duration,
    /// Rows allowed to wait in the queue; past this new requests are refused (overload).
    pub max_queued_rows: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 1024,
            max_wait: Duration::from_micros(200),
            max_queued_rows: 65_536,
        }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Vec<f32>, RankingError>>;
/// Where a queued request's scores arrive.
pub(crate) type Pending = oneshot::Receiver<Result<Vec<f32>, RankingError>>;

pub(crate) struct Job {
    request: ScoreRequest,
    reply: Reply,
    queued: Instant,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    rows: usize,
    /// Sessions not running: a leader or a worker takes one for each run.
    idle: Vec<Runner>,
    closed: bool,
}

/// A run a caller leads on its own thread: its request first, then queued followers.
pub(crate) struct Led {
    request: ScoreRequest,
    session: Runner,
    followers: Vec<Job>,
    started: Instant,
}

impl Led {
    /// Rows the run will score: the leader's and its followers'.
    pub(crate) fn rows(&self) -> usize {
        self.request.items.len()
            + self
                .followers
                .iter()
                .map(|j| j.request.items.len())
                .sum::<usize>()
    }
}

/// How a request gets its scores.
pub(crate) enum Admission {
    /// A session was idle: the caller runs now.
    Lead(Box<Led>),
    /// Every session is busy: a worker will answer on the receiver.
    Queued(Pending),
}

pub(crate) struct Batcher {
    queue: Mutex<Queue>,
    ready: Condvar,
    config: BatchConfig,
    pub(crate) assembler: Assembler,
    catalog: Arc<Catalog>,
    spec: FeatureSpec,
    /// Runs in progress, led or queued.
    running: AtomicUsize,
    pub(crate) stats: Stats,
    workers: Mutex<Vec<JoinHandle<()>>>,
    metrics: RunMetrics,
}

/// The batcher's histograms, made once with it (after the service installed its recorder): a
/// registry lookup per run would hash each name.
struct RunMetrics {
    queue_wait: metrics::Histogram,
    batch_rows: metrics::Histogram,
    batch_requests: metrics::Histogram,
    run_seconds: metrics::Histogram,
}

impl RunMetrics {
    fn new() -> Self {
        Self {
            queue_wait: metrics::histogram!("tandem_ranking_queue_wait_seconds"),
            batch_rows: metrics::histogram!("tandem_ranking_batch_rows"),
            batch_requests: metrics::histogram!("tandem_ranking_batch_requests"),
            run_seconds: metrics::histogram!("tandem_ranking_run_seconds"),
        }
    }
}

impl Batcher {
    pub(crate) fn start(
        sessions: Vec<Runner>,
        config: BatchConfig,
        spec: FeatureSpec,
        catalog: Arc<Catalog>,
        label: &str,
    ) -> Result<Arc<Self>, RankingError> {
        let workers = sessions.len();
        let batcher = Arc::new(Self {
            queue: Mutex::new(Queue {
                idle: sessions,
                ..Queue::default()
            }),
            ready: Condvar::new(),
            config,
            assembler: Assembler::new(&spec, &catalog),
            catalog,
            spec,
            running: AtomicUsize::new(0),
            stats: Stats::default(),
            workers: Mutex::new(Vec::with_capacity(workers)),
            metrics: RunMetrics::new(),
        });
        for i in 0..workers {
            let worker = batcher.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rank-{label}-{i}"))
                .spawn(move || worker.work());
            match handle {
                Ok(handle) => batcher
                    .workers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle),
                Err(e) => {
                    batcher.shut_down();
                    return Err(RankingError::inference("worker", e));
                }
            }
        }
        Ok(batcher)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the queue; a poisoned lock still holds valid state.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leads a run if a session is idle, else queues the request.
    pub(crate) fn admit(&self, request: ScoreRequest) -> Result<Admission, RankingError> {
        let rows = request.items.len();
        let mut queue = self.lock();
        if queue.closed {
            return Err(RankingError::inference(
                "queue",
                "this model version is unloading",
            ));
        }
        if let Some(session) = queue.idle.pop() {
            let mut followers = Vec::new();
            if self.config.max_rows > 0 {
                let mut total = rows;
                while let Some(next) = queue.jobs.front() {
                    let more = next.request.items.len();
                    if total + more > self.config.max_rows {
                        break;
                    }
                    total += more;
                    queue.rows -= more;
                    followers.extend(queue.jobs.pop_front());
                }
            }
            self.running.fetch_add(1, Ordering::AcqRel);
            return Ok(Admission::Lead(Box::new(Led {
                request,
                session,
                followers,
                started: Instant::now(),
            })));
        }
        if queue.rows > 0 && queue.rows + rows > self.config.max_queued_rows {
            return Err(RankingError::Overloaded {
                queued: queue.rows,
                max: self.config.max_queued_rows,
            });
        }
        let (reply, pending) = oneshot::channel();
        queue.rows += rows;
        queue.jobs.push_back(Job {
            request,
            reply,
            queued: Instant::now(),
        });
        drop(queue);
        self.ready.notify_one();
        Ok(Admission::Queued(pending))
    }

    /// Runs a led batch on the caller's thread; returns the leader's scores.
    pub(crate) fn lead(&self, led: Box<Led>) -> Result<Vec<f32>, RankingError> {
        let Led {
            request,
            mut session,
            followers,
            started,
        } = *led;
        // The leader did not wait; its followers waited from their arrival.
        let queue_wait = &self.metrics.queue_wait;
        queue_wait.record(0.0);
        for job in &followers {
            queue_wait.record(started.saturating_duration_since(job.queued).as_secs_f64());
        }
        let mut requests: Vec<&ScoreRequest> = Vec::with_capacity(1 + followers.len());
        requests.push(&request);
        requests.extend(followers.iter().map(|j| &j.request));
        let result = self.run_counted(&mut session, &requests, started);
        self.release(session);
        let own = request.items.len();
        match result {
            Ok(scores) => {
                self.stats.latency.record(started.elapsed());
                if followers.is_empty() {
                    return Ok(scores);
                }
                let (mine, rest) = scores.split_at(own);
                self.reply_all(followers, rest);
                Ok(mine.to_vec())
            }
            Err(e) => {
                self.fail_all(followers, &e);
                Err(e)
            }
        }
    }

    /// Puts a session back; a worker picks up what queued meanwhile.
    fn release(&self, session: Runner) {
        let mut queue = self.lock();
        queue.idle.push(session);
        let waiting = !queue.jobs.is_empty();
        drop(queue);
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Stops taking requests; workers finish what is queued, then exit.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// `close`, then waits for the workers to exit, so that their references are gone and
    /// the sessions are released by whoever drops the batcher last, not by a detached worker
    /// thread: a CUDA session released on such a thread while the process exits crashes
    /// in the CUDA provider's teardown.
    pub(crate) fn shut_down(&self) {
        self.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let current = std::thread::current().id();
        for worker in workers {
            // A worker never drops its own batcher's version; skip it rather than deadlock.
            if worker.thread().id() != current {
                let _ = worker.join();
            }
        }
    }

    fn work(&self) {
        while let Some((batch, mut session)) = self.next_batch() {
            self.run_queued(&mut session, batch);
            self.release(session);
        }
    }

    /// Blocks for queued work and a free session; `None` once closed and drained.
    fn next_batch(&self) -> Option<(Vec<Job>, Runner)> {
        let mut queue = self.lock();
        loop {
            if !queue.jobs.is_empty() && !queue.idle.is_empty() {
                break;
            }
            if queue.closed && queue.jobs.is_empty() {
                return None;
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        let session = queue.idle.pop()?;
        let first = queue.jobs.pop_front()?;
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
        self.running.fetch_add(1, Ordering::AcqRel);
        let more_work = !queue.jobs.is_empty() && !queue.idle.is_empty();
        drop(queue);
        if more_work {
            // What did not fit is another worker's: wake one in case this one took its signal.
            self.ready.notify_one();
        }
        Some((batch, session))
    }

    fn run_queued(&self, session: &mut Runner, mut batch: Vec<Job>) {
        // Callers that gave up (deadline, disconnect) need no scores.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let started = Instant::now();
        let queue_wait = &self.metrics.queue_wait;
        for job in &batch {
            self.stats.queue_wait.record(started - job.queued);
            queue_wait.record((started - job.queued).as_secs_f64());
        }
        let requests: Vec<&ScoreRequest> = batch.iter().map(|j| &j.request).collect();
        match self.run_counted(session, &requests, started) {
            Ok(scores) => self.reply_all(batch, &scores),
            Err(e) => self.fail_all(batch, &e),
        }
    }

    /// One run; `running` was raised by whoever took the session.
    fn run_counted(
        &self,
        session: &mut Runner,
        requests: &[&ScoreRequest],
        started: Instant,
    ) -> Result<Vec<f32>, RankingError> {
        let result = run_batch(
            session,
            &self.assembler,
            &self.catalog,
            &self.spec,
            requests,
        );
        self.running.fetch_sub(1, Ordering::AcqRel);
        let rows: usize = requests.iter().map(|r| r.items.len()).sum();
        self.stats
            .record_run(requests.len(), rows, started.elapsed(), result.is_ok());
        self.metrics.batch_rows.record(rows as f64);
        self.metrics.batch_requests.record(requests.len() as f64);
        self.metrics
            .run_seconds
            .record(started.elapsed().as_secs_f64());
        result
    }

    fn reply_all(&self, jobs: Vec<Job>, scores: &[f32]) {
        let mut rest = scores;
        for job in jobs {
            let (mine, tail) = rest.split_at(job.request.items.len());
            rest = tail;
            self.stats.latency.record(job.queued.elapsed());
            // A caller that went away meanwhile is no error.
            let _ = job.reply.send(Ok(mine.to_vec()));
        }
    }

    fn fail_all(&self, jobs: Vec<Job>, error: &RankingError) {
        let message = error.to_string();
        for job in jobs {
            let _ = job
                .reply
                .send(Err(RankingError::inference("run", message.clone())));
        }
    }
}

/// A session with the input buffers of its last run, reused by the next one.
pub(crate) struct Runner {
    session: Session,
    inputs: Vec<InputValues>,
    /// Asks for the score output only, so ORT copies out nothing else (what feeds only the
    /// other outputs was pruned from the graph at load: ORT would run it regardless).
    score_only: RunOptions<HasSelectedOutputs>,
}

impl Runner {
    pub(crate) fn new(session: Session, score_output: &str) -> Result<Self, RankingError> {
        let score_only = RunOptions::new()
            .map_err(|e| RankingError::inference("session", e))?
            .with_outputs(OutputSelector::no_default().with(score_output));
        Ok(Self {
            session,
            inputs: Vec::new(),
            score_only,
        })
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }
}

/// One ORT run over the rows of `requests`; the score column for every row, in order.
pub(crate) fn run_batch(
    runner: &mut Runner,
    assembler: &Assembler,
    catalog: &Catalog,
    spec: &FeatureSpec,
    requests: &[&ScoreRequest],
) -> Result<Vec<f32>, RankingError> {
    let rows: usize = requests.iter().map(|r| r.items.len()).sum();
    let Runner {
        session,
        inputs,
        score_only,
    } = runner;
    assembler.assemble_into(catalog, requests, inputs);
    let values = assembler
        .input_shapes()
        .zip(inputs.iter())
        .map(|((name, width), values)| {
            let shape = [rows, width];
            let value: SessionInputValue<'_> = match values {
                InputValues::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
                InputValues::I64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
            };
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, ort::Error>>()
        .map_err(|e| RankingError::inference("input", e))?;
    let outputs = session
        .run_with_options(values, score_only)
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
