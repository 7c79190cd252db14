//! Measures the ranking tier in process: rows/s and p50/p99 request latency for each
//! candidate count and client concurrency, with dynamic batching on and off. Requests come
//! from a JSON file (written by `load-tests/ranking/compare.py`, which runs the Python
//! onnxruntime floor on the same batches); prints one JSON object per line.
//!
//! Then, per candidate count, one thread alternates a `Ranker` request with a bare ORT run of
//! the same model on that request's already assembled tensors (a session opened here with the
//! same options, on the model as exported, as the floor runs it): request by request, so the
//! machine's drift hits both alike, which separate timed runs on a shared VM cannot promise.
//! That line (`"mode": "overhead"`) gives what tandem adds to the ORT call itself (feature
//! assembly and request handling) less what pruning the graph to the score output saves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;
use tandem_catalog::Catalog;
use tandem_ranking::{
    ActiveProvider, Assembler, BatchConfig, ExecutionProvider, InputValues, Ranker, RankerConfig,
    ScoreRequest, init_runtime,
};

struct Args {
    model: PathBuf,
    items: PathBuf,
    requests: PathBuf,
    concurrency: Vec<usize>,
    seconds: f64,
    sessions: usize,
    intra_threads: usize,
    max_rows: usize,
    max_wait_us: u64,
    provider: ExecutionProvider,
    /// Read `N` lines on stdin and answer each with the seconds N requests took (one thread).
    lockstep: bool,
}

fn parse() -> Result<Args, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = Args {
        model: PathBuf::new(),
        items: PathBuf::new(),
        requests: PathBuf::new(),
        concurrency: vec![1, 8, 32],
        seconds: 3.0,
        sessions: cores,
        intra_threads: 1,
        max_rows: 1024,
        max_wait_us: 200,
        provider: ExecutionProvider::Cpu,
        lockstep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--items" => args.items = value.into(),
            "--requests" => args.requests = value.into(),
            "--concurrency" => {
                args.concurrency = value.split(',').map(num).collect::<Result<_, _>>()?
            }
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--sessions" => args.sessions = num(&value)?,
            "--intra-threads" => args.intra_threads = num(&value)?,
            "--batch-max-rows" => args.max_rows = num(&value)?,
            "--batch-max-wait-us" => args.max_wait_us = num(&value)? as u64,
            "--execution-provider" => args.provider = value.parse()?,
            "--lockstep" => args.lockstep = value == "true",
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[derive(serde::Deserialize)]
struct WireRequest {
    user_vector: Vec<f32>,
    items: Vec<u32>,
    retrieval_scores: Vec<f32>,
    recent_items: Vec<u32>,
    hour: u32,
}

/// Runs `clients` threads sending `requests` round-robin for `seconds`; the first fifth of
/// the time warms up and is not counted.
fn measure(
    ranker: &Arc<Ranker>,
    requests: &[ScoreRequest],
    clients: usize,
    seconds: f64,
) -> serde_json::Value {
    let started = Instant::now();
    let warm = Duration::from_secs_f64(seconds * 0.2);
    let end = Duration::from_secs_f64(seconds * 1.2);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let ranker = ranker.clone();
            let requests = requests.to_vec();
            std::thread::spawn(move || {
                let (mut rows, mut latencies) = (0usize, Vec::new());
                let mut i = c;
                loop {
                    let t0 = Instant::now();
                    if t0 - started >= end {
                        break;
                    }
                    let req = requests[i % requests.len()].clone();
                    let n = req.items.len();
                    if let Err(e) = ranker.rank_blocking(req) {
                        eprintln!("rank failed: {e}");
                        std::process::exit(1);
                    }
                    let t1 = Instant::now();
                    if t0 - started >= warm && t1 - started <= end {
                        rows += n;
                        latencies.push((t1 - t0).as_secs_f64() * 1e6);
                    }
                    i += clients;
                }
                (rows, latencies)
            })
        })
        .collect();
    let (mut rows, mut latencies) = (0usize, Vec::new());
    for t in threads {
        let (r, l) = t.join().unwrap_or_default();
        rows += r;
        latencies.extend(l);
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let window = end.as_secs_f64() - warm.as_secs_f64();
    serde_json::json!({
        "rows_per_s": rows as f64 / window,
        "requests": latencies.len(),
        "p50_us": q(0.5),
        "p99_us": q(0.99),
    })
}

/// A session opened here with the served options and no tandem around it: ONNX Runtime
/// alone on each request's already assembled tensors, or after assembling them here.
struct BareOrt {
    session: Session,
    score_only: RunOptions<HasSelectedOutputs>,
    output: String,
    assembler: Assembler,
    /// `(name, width)` per model input, in spec order.
    inputs: Vec<(String, usize)>,
    assembled: Vec<Vec<InputValues>>,
    buffers: Vec<InputValues>,
}

impl BareOrt {
    fn open(
        ranker: &Ranker,
        catalog: &Catalog,
        model_dir: &std::path::Path,
        dylib: &std::path::Path,
        requests: &[ScoreRequest],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let version = &ranker.info().versions[0];
        let spec = version.spec();
        let env = init_runtime(dylib)?;
        let model = std::fs::read(model_dir.join(version.version()).join(&spec.model.file))?;
        let mut builder = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_inter_threads(1)?;
        // The same provider as the ranker's sessions, so bare and tandem runs compare.
        if version.provider() == ActiveProvider::Cuda {
            #[cfg(feature = "cuda")]
            {
                builder = builder.with_execution_providers([ort::ep::CUDA::default()
                    .build()
                    .error_on_failure()])?;
            }
            #[cfg(not(feature = "cuda"))]
            return Err("the bare session needs a build with `--features cuda`".into());
        }
        let session = builder.commit_from_memory(&model)?;
        let score_only =
            RunOptions::new()?.with_outputs(OutputSelector::no_default().with(&spec.output.name));
        let assembler = Assembler::new(spec, catalog);
        let assembled = requests
            .iter()
            .map(|r| {
                let mut values = Vec::new();
                assembler.assemble_into(catalog, &[r], &mut values);
                values
            })
            .collect();
        Ok(Self {
            session,
            score_only,
            output: spec.output.name.clone(),
            inputs: assembler
                .input_shapes()
                .map(|(name, width)| (name.to_owned(), width))
                .collect(),
            assembler,
            assembled,
            buffers: Vec::new(),
        })
    }

    /// Runs request `k`'s tensors, assembled beforehand, and reads the scores.
    fn run(&mut self, k: usize, rows: usize) -> Result<(), Box<dyn std::error::Error>> {
        let values = &self.assembled[k % self.assembled.len()];
        run_inputs(
            &mut self.session,
            &self.score_only,
            &self.output,
            &self.inputs,
            rows,
            values,
        )
    }

    /// Assembles `request` into buffers kept from the previous call, as a ranker session does.
    fn assemble(&mut self, catalog: &Catalog, request: &ScoreRequest) {
        self.assembler
            .assemble_into(catalog, &[request], &mut self.buffers);
    }

    /// [`BareOrt::assemble`], then a run of what it built: tandem's work without its request
    /// handling.
    fn assemble_and_run(
        &mut self,
        catalog: &Catalog,
        request: &ScoreRequest,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.assemble(catalog, request);
        run_inputs(
            &mut self.session,
            &self.score_only,
            &self.output,
            &self.inputs,
            request.items.len(),
            &self.buffers,
        )
    }
}

fn run_inputs(
    session: &mut Session,
    score_only: &RunOptions<HasSelectedOutputs>,
    output: &str,
    inputs: &[(String, usize)],
    rows: usize,
    values: &[InputValues],
) -> Result<(), Box<dyn std::error::Error>> {
    let inputs = inputs
        .iter()
        .zip(values)
        .map(|((name, width), values)| {
            let shape = [rows, *width];
            let value: SessionInputValue<'_> = match values {
                InputValues::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
                InputValues::I64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
            };
            Ok((name.as_str(), value))
        })
        .collect::<Result<Vec<_>, ort::Error>>()?;
    let outputs = session.run_with_options(inputs, score_only)?;
    let (_, scores) = outputs[output].try_extract_tensor::<f32>()?;
    std::hint::black_box(scores.to_vec());
    Ok(())
}

/// Mean microseconds of a `Ranker` request and of a bare ORT run on the same request's
/// assembled tensors, alternated request by request on one thread.
fn overhead(
    ranker: &Ranker,
    catalog: &Catalog,
    bare: &mut BareOrt,
    requests: &[ScoreRequest],
    iterations: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let half = u32::try_from(catalog.len() / 2)?;
    let shifted: Vec<ScoreRequest> = requests
        .iter()
        .map(|r| ScoreRequest {
            items: r
                .items
                .iter()
                .map(|&i| (i + half) % (2 * half).max(1))
                .collect(),
            ..r.clone()
        })
        .collect();
    let (mut tandem, mut bare_time, mut assembly) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..2 * iterations {
        let k = i % requests.len();
        // Assembly alone, as tandem meets it right after a run, on other catalog rows than the
        // requests' (the same rows shifted by half the catalog), so it warms nothing for them.
        let other = &shifted[k];
        let t_asm = Instant::now();
        bare.assemble(catalog, other);
        let asm_time = t_asm.elapsed();
        let request = requests[k].clone();
        let t0 = Instant::now();
        ranker.rank_blocking(request)?;
        let t1 = Instant::now();
        bare.run(k, requests[k].items.len())?;
        let t2 = Instant::now();
        // The first half warms up.
        if i >= iterations {
            tandem += t1 - t0;
            bare_time += t2 - t1;
            assembly += asm_time;
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / iterations as f64;
    Ok(serde_json::json!({
        "tandem_us": per(tandem),
        "bare_ort_us": per(bare_time),
        "bare_over_tandem": bare_time.as_secs_f64() / tandem.as_secs_f64(),
        "assembly_us": per(assembly),
    }))
}

/// Concurrency 1 in slices the caller alternates with its own (the Python floor's), so that
/// the machine's drift hits all alike. Each stdin line `MODE N` runs the first N requests
/// (round-robin, as the floor does) and prints how long they took: `tandem` through the
/// ranker, `bare` their already assembled tensors through ONNX Runtime alone, `assemble`
/// assembly into reused buffers plus that bare run. The bare runs use the model as exported;
/// tandem's sessions run it pruned to the score output.
fn lockstep(
    ranker: &Ranker,
    catalog: &Catalog,
    bare: &mut BareOrt,
    requests: &[ScoreRequest],
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, Write};
    if requests.is_empty() {
        return Err("the requests file holds no requests".into());
    }
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (mode, count) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{line}` is not `MODE N`"))?;
        let count: usize = count.trim().parse()?;
        // The floor's loop is handed its tensors, so tandem is handed its requests: built
        // before the clock starts, moved into the ranker inside it.
        let owned: Vec<ScoreRequest> = match mode {
            "tandem" => (0..count)
                .map(|k| requests[k % requests.len()].clone())
                .collect(),
            _ => Vec::new(),
        };
        let mut owned = owned.into_iter();
        let started = Instant::now();
        let mut rows = 0;
        for k in 0..count {
            let request = &requests[k % requests.len()];
            rows += request.items.len();
            match mode {
                "tandem" => {
                    let own = owned.next().ok_or("one request per count")?;
                    ranker.rank_blocking(own)?;
                }
                "bare" => bare.run(k, request.items.len())?,
                "assemble" => bare.assemble_and_run(catalog, request)?,
                other => return Err(format!("unknown lockstep mode `{other}`").into()),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        writeln!(
            stdout.lock(),
            "{}",
            serde_json::json!({"seconds": seconds, "rows": rows})
        )?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let catalog = Arc::new(Catalog::open(&args.items)?);
    let wire: BTreeMap<String, Vec<WireRequest>> =
        serde_json::from_str(&std::fs::read_to_string(&args.requests)?)?;
    let dylib = std::env::var_os("ORT_DYLIB_PATH").ok_or("set ORT_DYLIB_PATH")?;
    for (mode, max_rows) in [("batched", args.max_rows), ("unbatched", 0)] {
        let config = RankerConfig {
            ort_dylib_path: dylib.clone().into(),
            execution_provider: args.provider,
            sessions: args.sessions,
            intra_threads: args.intra_threads,
            max_candidates: 5000,
            batch: BatchConfig {
                max_rows,
                max_wait: Duration::from_micros(args.max_wait_us),
                max_queued_rows: 1 << 22,
            },
        };
        let ranker = Arc::new(Ranker::open(&args.model, catalog.clone(), config, None)?);
        let provider = ranker.info().versions[0].provider().as_str();
        for (size, reqs) in &wire {
            let requests: Vec<ScoreRequest> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| ScoreRequest {
                    user_id: format!("bench-{i}"),
                    user_vector: r.user_vector.clone(),
                    items: r.items.clone(),
                    retrieval_scores: r.retrieval_scores.clone(),
                    recent_items: r.recent_items.clone(),
                    context: [("hour_of_day".to_owned(), r.hour.to_string())].into(),
                    version: None,
                    history: Vec::new(),
                    now_ms: 0,
                })
                .collect();
            let dylib_path = std::path::Path::new(&dylib);
            if args.lockstep {
                // The served configuration (batching on); at concurrency 1 both modes lead.
                let mut bare =
                    BareOrt::open(&ranker, &catalog, &args.model, dylib_path, &requests)?;
                return lockstep(&ranker, &catalog, &mut bare, &requests);
            }
            if mode == "batched" {
                // Each request's scores, for compare.py's parity check against the floor on
                // the same execution provider.
                let scores = requests
                    .iter()
                    .map(|r| ranker.rank_blocking(r.clone()).map(|s| s.scores))
                    .collect::<Result<Vec<_>, _>>()?;
                let candidates = size.parse::<usize>()?;
                println!(
                    "{}",
                    serde_json::json!({"mode": "scores", "candidates": candidates, "provider": provider, "scores": scores})
                );
            }
            for &clients in &args.concurrency {
                let mut row = measure(&ranker, &requests, clients, args.seconds);
                row["mode"] = mode.into();
                row["candidates"] = size.parse::<usize>()?.into();
                row["concurrency"] = clients.into();
                row["sessions"] = args.sessions.into();
                row["intra_threads"] = args.intra_threads.into();
                row["provider"] = provider.into();
                println!("{row}");
            }
            if mode == "unbatched" {
                let rows = requests.first().map_or(1, |r| r.items.len().max(1));
                let iterations = (1_500_000 / rows).clamp(500, 10_000);
                let mut bare =
                    BareOrt::open(&ranker, &catalog, &args.model, dylib_path, &requests)?;
                let mut row = overhead(&ranker, &catalog, &mut bare, &requests, iterations)?;
                row["mode"] = "overhead".into();
                row["candidates"] = size.parse::<usize>()?.into();
                row["iterations"] = iterations.into();
                println!("{row}");
            }
        }
    }
    Ok(())
}
