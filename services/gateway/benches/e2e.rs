//! Where a Recommend's CPU goes: the embedded gateway's server CPU per Recommend against its
//! stages run directly in the same process: ANN at k = num_candidates, a rank of those
//! candidates, and one minimal gRPC call (Health/Check). Prints the three, their sum and the
//! ratio, on the catalog in `TANDEM_E2E_DATA` (default `data/demo`).
//!
//! Server CPU is the process's CPU (every thread's) less this thread's. The calls come from
//! h2load (Debian `nghttp2-client`) when it is on PATH: a client in another process, as the
//! issue measured, whose work neither shares this process's caches nor its runtime. Without
//! it (or with `TANDEM_E2E_CLIENT=tonic`) a tonic client on this thread makes them, which
//! costs the gateway more (its caches and cores are shared with the client). Either way the
//! gateway and its stages are measured in one run with the same binary. `make bench-e2e` runs
//! it on the demo and the 1M catalogs. h2load makes one call at a time unless
//! `TANDEM_E2E_STREAMS` asks for more in flight, as under load: then the server rarely waits
//! between calls, and what a wait costs the next call drops out of every served figure.
//!
//! A fourth figure separates what tandem's request path adds from what serving adds: the two
//! stages behind one gRPC call with nothing between them ([`StagesOnly`]), called by the same
//! client the same way. Recommend against it is the cost of the code between the stages; it
//! against the stages in loops is what a call costs them on this machine whatever the code
//! between them (waiting between calls, the stages evicting each other).
//!
//! A fifth takes serving out altogether: Recommend called on this thread (no gRPC, no other
//! process on the cores) against the two stages taking turns on it, same users. Its rounds
//! agree within a few per cent where the served ones swing by a third, so it is the figure
//! to compare builds of the request path with; `TANDEM_E2E_IN_THREAD_ONLY=1` measures only it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use prost::Message;
use tandem_catalog::testing::SplitMix;
use tandem_proto::v1 as pb;
use tandem_ranking::{Ranker, ScoreRequest};
use tandem_retrieval::{FilterSpec, Index, ItemFilter, SearchParams};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const USERS: usize = 200;
const EVENTS_PER_USER: usize = 5;
const K: u32 = 10;
const NUM_CANDIDATES: usize = 200;
/// Rounds unless `TANDEM_E2E_ROUNDS` says otherwise: each round asks for another user.
const ROUNDS: usize = 9;
const RECOMMEND: &str = "/tandem.v1.RecommenderService/Recommend";
const HEALTH: &str = "/grpc.health.v1.Health/Check";
/// The served-feature log's writer thread (`tandem_events::ServedLog`).
const SERVED_LOG_THREAD: &str = "served-log";

/// CPU time of every thread of this process, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`:
/// exact, unlike `/proc/*/schedstat`, which lags for a running thread).
fn process_cpu_ns() -> u64 {
    cpu_time::ProcessTime::now().as_duration().as_nanos() as u64
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    cpu_time::ThreadTime::now().as_duration().as_nanos() as u64
}

/// CPU time so far of this process's threads named `name` (`/proc/self/task/*/comm`), in ns;
/// 0 without one. The served-feature log's writer is such a thread: its share of a figure.
/// Read from `schedstat`, which lags by up to a scheduler tick while the thread runs.
fn named_threads_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Server CPU of calls `from..from + n` of `f` (process CPU less this thread's), in ns.
fn server_ns(
    from: usize,
    n: usize,
    mut f: impl FnMut(usize) -> Result<(), BenchError>,
) -> Result<u64, BenchError> {
    let (p0, t0) = (process_cpu_ns(), thread_cpu_ns());
    for i in from..from + n {
        f(i)?;
    }
    let (p1, t1) = (process_cpu_ns(), thread_cpu_ns());
    Ok((p1 - p0).saturating_sub(t1 - t0))
}

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The cpuidle driver and, under KVM's haltpoll driver, how long an idle vCPU polls before it
/// halts: at one call at a time every call follows an idle wait, and on a VM whose vCPUs halt
/// at once (0) each wake-up pays an exit to the host (see load-tests/e2e/README.md).
fn idle_settings() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    let driver =
        read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_else(|_| "unknown".into());
    match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Ok(ns) => format!("cpuidle driver {driver}, guest_halt_poll_ns {ns}"),
        Err(_) => format!("cpuidle driver {driver}"),
    }
}

/// h2load (Debian `nghttp2-client`) as the bench drives it: one connection, `streams` calls
/// in flight on it (1: one call at a time).
struct H2load {
    binary: PathBuf,
    streams: usize,
}

impl H2load {
    /// h2load on PATH, unless `TANDEM_E2E_CLIENT=tonic` asks for the in-process client.
    fn find(streams: usize) -> Option<Self> {
        if std::env::var("TANDEM_E2E_CLIENT").is_ok_and(|c| c == "tonic") {
            return None;
        }
        let path = std::env::var_os("PATH")?;
        let binary = std::env::split_paths(&path)
            .map(|dir| dir.join("h2load"))
            .find(|p| p.is_file())?;
        Some(Self { binary, streams })
    }

    /// `n` calls of `url` with `body` (one gRPC frame).
    fn run(&self, url: &str, body: &Path, n: usize) -> Result<(), BenchError> {
        let out = Command::new(&self.binary)
            .args([
                "-n",
                &n.to_string(),
                "-c",
                "1",
                "-m",
                &self.streams.to_string(),
                "-d",
            ])
            .arg(body)
            .args([
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                url,
            ])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // h2load counts HTTP 200 as success: the answers' content is checked before (tonic).
        if !out.status.success() || !stdout.contains(&format!("{n} succeeded")) {
            return Err(format!("h2load {url}: not every call succeeded:\n{stdout}").into());
        }
        Ok(())
    }
}

/// The two stages behind one gRPC call with nothing of tandem's between them: the search of a
/// user's query, its candidates straight into a rank. It answers `Health/Check`, whose
/// `service` names the user (0-based), so that h2load can call it with a fixed body as it
/// calls Recommend. What a Recommend costs beyond this is the code between the stages;
/// what this costs beyond the stages measured in loops is what the stages cost each other
/// and what waiting between calls costs them.
struct StagesOnly {
    index: Arc<Index>,
    ranker: Arc<Ranker>,
    filter: ItemFilter,
    queries: Vec<Vec<f32>>,
    histories: Vec<Vec<u32>>,
}

impl StagesOnly {
    /// The rank request the bench's own loops use for user `u`, on these candidates.
    fn score_request(&self, u: usize, found: &[tandem_retrieval::Candidate]) -> ScoreRequest {
        ScoreRequest {
            user_id: format!("bench-{u}"),
            user_vector: self.queries[u].clone(),
            items: found.iter().map(|c| c.idx).collect(),
            retrieval_scores: found.iter().map(|c| c.score).collect(),
            recent_items: self.histories[u].iter().rev().copied().collect(),
            context: [("hour_of_day".to_owned(), "12".to_owned())].into(),
            version: None,
            history: Vec::new(),
            now_ms: 0,
        }
    }
}

#[tonic::async_trait]
impl Health for StagesOnly {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let u = request
            .get_ref()
            .service
            .parse::<usize>()
            .ok()
            .filter(|&u| u < self.queries.len())
            .ok_or_else(|| Status::invalid_argument("service: a user number"))?;
        let params = SearchParams {
            k: NUM_CANDIDATES,
            ef_search: None,
        };
        let found = self
            .index
            .search(&self.queries[u], &self.filter, params)
            .map_err(|e| Status::internal(e.to_string()))?;
        let scored = self
            .ranker
            .rank(self.score_request(u, &found))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if scored.scores.len() != found.len() {
            return Err(Status::internal("a score per candidate"));
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// Serves `stages` on loopback through the gateway's own serving path (`tandem_server::serve`:
/// no Nagle, one write per answer, the telemetry layer) with the default transport settings.
async fn serve_stages_only(stages: StagesOnly) -> Result<std::net::SocketAddr, BenchError> {
    let (listener, addr) = tandem_server::bind("127.0.0.1:0".parse()?).await?;
    // Only its health handle is used (turned NOT_SERVING at shutdown); the routes are ours.
    let (_, health) = tandem_server::base_routes(&[]).await?;
    let transport = tandem_server::TransportArgs::default().load()?;
    tokio::spawn(tandem_server::serve(
        tonic::service::Routes::new(HealthServer::new(stages)),
        listener,
        health,
        transport,
        std::future::pending(),
    ));
    Ok(addr)
}

/// A gRPC length-prefixed message: uncompressed, 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// CPU per figure in one round: nanoseconds in total, then microseconds per call.
#[derive(Default)]
struct Figures<T = u64> {
    recommend: T,
    ann: T,
    rank: T,
    grpc: T,
    ann_in_turn: T,
    rank_in_turn: T,
    stages_call: T,
    recommend_here: T,
    /// The served-feature log's writer thread while Recommend was measured (part of it).
    log_writer: T,
    log_writer_here: T,
}

impl Figures<u64> {
    fn per_call_us(&self, n: usize) -> Figures<f64> {
        let us = |ns: u64| ns as f64 / n as f64 / 1e3;
        Figures {
            recommend: us(self.recommend),
            ann: us(self.ann),
            rank: us(self.rank),
            grpc: us(self.grpc),
            ann_in_turn: us(self.ann_in_turn),
            rank_in_turn: us(self.rank_in_turn),
            stages_call: us(self.stages_call),
            recommend_here: us(self.recommend_here),
            log_writer: us(self.log_writer),
            log_writer_here: us(self.log_writer_here),
        }
    }
}

impl Figures<f64> {
    /// The figure: Recommend against ANN + rank + one minimal gRPC call.
    fn ratio(&self) -> f64 {
        self.recommend / (self.ann + self.rank + self.grpc)
    }

    /// Recommend in the bench's thread against the stages taking turns in it.
    fn in_thread_ratio(&self) -> f64 {
        self.recommend_here / (self.ann_in_turn + self.rank_in_turn)
    }
}

fn main() -> Result<(), BenchError> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    // Relative to the workspace root: `cargo bench` runs in the package's directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = root.join(std::env::var("TANDEM_E2E_DATA").unwrap_or_else(|_| "data/demo".into()));
    let requests: usize = std::env::var("TANDEM_E2E_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    // More, shorter rounds: each pair of runs closer in time, each median over more users.
    let rounds: usize = std::env::var("TANDEM_E2E_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| (1..=USERS).contains(&n))
        .unwrap_or(ROUNDS);
    // Calls in flight on h2load's connection: 1 is the measure (every call follows
    // an idle wait); more keeps the server busy, as under load (load-tests/e2e/README.md).
    let streams: usize = std::env::var("TANDEM_E2E_STREAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n >= 1)
        .unwrap_or(1);
    if std::env::var_os("ORT_DYLIB_PATH").is_none() || !data.join("items.parquet").is_file() {
        // `cargo bench --workspace` reaches here without the data: `make bench-e2e` sets it up.
        eprintln!(
            "e2e: skipped (needs ORT_DYLIB_PATH and {}): run `make bench-e2e`",
            data.display()
        );
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    let mut args = vec![
        "tandem-gateway".to_owned(),
        "--listen=127.0.0.1:0".into(),
        format!("--items={}", data.join("items.parquet").display()),
        format!("--model-dir={}", data.join("models/ranker").display()),
        format!(
            "--event-log-dir={}",
            scratch.path().join("events").display()
        ),
        format!(
            "--served-log-dir={}",
            scratch.path().join("served").display()
        ),
    ];
    // A large catalog restores its index from a snapshot after the first run.
    if let Ok(state) = std::env::var("TANDEM_E2E_STATE_DIR") {
        args.push(format!("--state-dir={}", root.join(state).display()));
    }
    let config = tandem_gateway::Config::try_parse_from(args)?;

    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let gateway = server.block_on(tandem_gateway::start(config, std::future::pending()))?;
    let started = Instant::now();
    server.block_on(gateway.loaded)??;
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    let index = gateway.index.get()?.clone();
    let ranker = gateway.ranker.get()?.clone();
    let catalog = ranker.catalog().clone();

    let channel = client.block_on(
        tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.addr))?
            .tcp_nodelay(true)
            .connect(),
    )?;
    let mut rec = pb::recommender_service_client::RecommenderServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);

    // Warm users: a few clicks each on items of one category.
    let mut rng = SplitMix::new(42);
    let mut histories = Vec::with_capacity(USERS);
    for u in 0..USERS {
        let seed = (rng.next_u64() % catalog.len() as u64) as u32;
        let items: Vec<u32> = (0..EVENTS_PER_USER)
            .map(|_| {
                let near = seed as u64 + rng.next_u64() % 50;
                (near % catalog.len() as u64) as u32
            })
            .collect();
        let events = items
            .iter()
            .map(|&i| pb::Event {
                user_id: format!("bench-{u}"),
                item_id: catalog.item_id(i).to_owned(),
                r#type: pb::EventType::Click as i32,
                ..Default::default()
            })
            .collect();
        client.block_on(rec.record_events(pb::RecordEventsRequest { events }))?;
        histories.push(items);
    }
    let request = |i: usize| pb::RecommendRequest {
        user_id: format!("bench-{}", i % USERS),
        k: Some(K),
        num_candidates: Some(NUM_CANDIDATES as u32),
        ..Default::default()
    };
    // Every user's answer ranked by the model, not degraded: h2load sees only HTTP status.
    for u in 0..USERS {
        let answer = client.block_on(rec.recommend(request(u)))?.into_inner();
        if answer.degraded || answer.items.len() != K as usize {
            return Err(format!("bench-{u}: not a full, ranked answer: {answer:?}").into());
        }
    }
    let h2load_client = H2load::find(streams);
    if streams > 1 && h2load_client.is_none() {
        return Err(
            "TANDEM_E2E_STREAMS above 1 needs h2load (the tonic client calls one at a time)".into(),
        );
    }
    let url = format!("http://{}", gateway.addr);
    let bodies = scratch.path().join("bodies");
    std::fs::create_dir_all(&bodies)?;
    let body_of = |u: usize| bodies.join(format!("recommend-{u}.bin"));
    for u in 0..rounds {
        std::fs::write(body_of(u), grpc_frame(&request(u).encode_to_vec()))?;
    }
    let health_body = bodies.join("health.bin");
    std::fs::write(&health_body, grpc_frame(&[]))?;
    let recommender = gateway.recommender.get()?.clone();
    let domain_request = |i: usize| tandem_recommend::RecommendRequest {
        user_id: format!("bench-{}", i % USERS),
        k: Some(K),
        num_candidates: Some(NUM_CANDIDATES as u32),
        request_id: format!("here-{i}"),
        ..Default::default()
    };
    let mut recommend = |i: usize| -> Result<(), BenchError> {
        let answer = client.block_on(rec.recommend(request(i)));
        assert!(answer.is_ok_and(|a| a.get_ref().items.len() == K as usize));
        Ok(())
    };

    // The stages on their own: the users' queries as the mean of their items (the pipeline
    // weighs recent events more; the direction, and so the walk, is the same for these users).
    let dim = catalog.dim();
    let queries: Vec<Vec<f32>> = histories
        .iter()
        .map(|items| {
            let mut q = vec![0.0; dim];
            for &i in items {
                for (q, x) in q.iter_mut().zip(catalog.embedding(i)) {
                    *q += x / items.len() as f32;
                }
            }
            q
        })
        .collect();
    let filter = index.resolve_filter(&FilterSpec {
        in_stock_only: true,
        ..Default::default()
    })?;
    let params = SearchParams {
        k: NUM_CANDIDATES,
        ef_search: None,
    };
    let search = |i: usize| index.search(&queries[i % USERS], &filter, params);
    let found = (0..USERS).map(search).collect::<Result<Vec<_>, _>>()?;
    // The stages behind one call (served below) build their rank request as the loops do.
    let stages_only = StagesOnly {
        index: index.clone(),
        ranker: ranker.clone(),
        filter: filter.clone(),
        queries: queries.clone(),
        histories,
    };
    let prepared: Vec<ScoreRequest> = (0..USERS)
        .map(|u| stages_only.score_request(u, &found[u]))
        .collect();
    let rank = |i: usize| {
        let scored = client.block_on(ranker.rank(prepared[i % USERS].clone()));
        assert!(scored.is_ok());
    };
    let mut check = |_: usize| -> Result<(), BenchError> {
        let answer = client.block_on(health.check(HealthCheckRequest::default()));
        assert!(answer.is_ok());
        Ok(())
    };
    // The stages behind one call, on the gateway's runtime, called like Recommend.
    let stages_addr = server.block_on(serve_stages_only(stages_only))?;
    let mut stages_client = HealthClient::new(
        client.block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{stages_addr}"))?
                .tcp_nodelay(true)
                .connect(),
        )?,
    );
    let stages_request = |i: usize| HealthCheckRequest {
        service: (i % USERS).to_string(),
    };
    let stages_url = format!("http://{stages_addr}");
    let stages_body_of = |u: usize| bodies.join(format!("stages-{u}.bin"));
    for u in 0..rounds {
        std::fs::write(
            stages_body_of(u),
            grpc_frame(&stages_request(u).encode_to_vec()),
        )?;
    }
    let mut stages_call = |i: usize| -> Result<(), BenchError> {
        let answer = client.block_on(stages_client.check(stages_request(i)))?;
        assert_eq!(answer.get_ref().status, ServingStatus::Serving as i32);
        Ok(())
    };

    // Warm-up, then rounds that take turns, so that drift on a shared machine (other tenants,
    // frequency) weighs on every figure alike.
    for i in 0..requests / 10 {
        recommend(i)?;
        search(i)?;
        rank(i);
        check(i)?;
        stages_call(i)?;
    }
    if let Some(h2) = &h2load_client {
        h2.run(&format!("{url}{RECOMMEND}"), &body_of(0), requests / 10)?;
        h2.run(&format!("{url}{HEALTH}"), &health_body, requests / 10)?;
        h2.run(
            &format!("{stages_url}{HEALTH}"),
            &stages_body_of(0),
            requests / 10,
        )?;
    }
    let per_round = (requests / rounds).max(1);
    // Only the stages taking turns and Recommend in this thread: no gRPC, no other process on
    // the cores, rounds within a few per cent of each other (for A/B runs of the request path).
    let in_thread_only = std::env::var_os("TANDEM_E2E_IN_THREAD_ONLY").is_some();
    let mut figures = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let from = round * per_round;
        // h2load sends one body per run: each round asks for another user.
        let writer0 = named_threads_cpu_ns(SERVED_LOG_THREAD);
        let recommend_cpu = match &h2load_client {
            _ if in_thread_only => 1,
            // One h2load run of `per_round` calls; this thread only waits for it.
            Some(h2) => server_ns(0, 1, |_| {
                h2.run(&format!("{url}{RECOMMEND}"), &body_of(round), per_round)
            })?,
            None => server_ns(from, per_round, &mut recommend)?,
        };
        let mut cpu = Figures {
            recommend: recommend_cpu,
            log_writer: named_threads_cpu_ns(SERVED_LOG_THREAD).saturating_sub(writer0),
            ..Figures::default()
        };
        // ANN: this thread's CPU (the search runs on it).
        let t0 = thread_cpu_ns();
        for i in from..from + per_round {
            search(i)?;
        }
        cpu.ann = thread_cpu_ns() - t0;
        // Rank: the whole process's CPU (a large run would leave this thread).
        let p0 = process_cpu_ns();
        for i in from..from + per_round {
            rank(i);
        }
        cpu.rank = process_cpu_ns() - p0;
        cpu.grpc = match &h2load_client {
            _ if in_thread_only => 1,
            Some(h2) => server_ns(0, 1, |_| {
                h2.run(&format!("{url}{HEALTH}"), &health_body, per_round)
            })?,
            None => server_ns(from, per_round, &mut check)?,
        };
        cpu.stages_call = match &h2load_client {
            _ if in_thread_only => 1,
            Some(h2) => server_ns(0, 1, |_| {
                h2.run(
                    &format!("{stages_url}{HEALTH}"),
                    &stages_body_of(round),
                    per_round,
                )
            })?,
            None => server_ns(from, per_round, &mut stages_call)?,
        };
        // The two stages taking turns, as a request runs them: each finds the caches as
        // the other left them.
        for i in from..from + per_round {
            let t0 = thread_cpu_ns();
            search(i)?;
            cpu.ann_in_turn += thread_cpu_ns() - t0;
            let p0 = process_cpu_ns();
            rank(i);
            cpu.rank_in_turn += process_cpu_ns() - p0;
        }
        // Recommend called in this thread, no gRPC: the request path and the stages as they
        // run inside it, against the stages taking turns above (same users, same thread; the
        // served-feature log's writer is the one other thread that works meanwhile).
        let (p0, writer0) = (process_cpu_ns(), named_threads_cpu_ns(SERVED_LOG_THREAD));
        for i in from..from + per_round {
            let answer = client.block_on(recommender.recommend(&domain_request(i)))?;
            assert_eq!(answer.items.len(), K as usize);
        }
        cpu.recommend_here = process_cpu_ns() - p0;
        cpu.log_writer_here = named_threads_cpu_ns(SERVED_LOG_THREAD).saturating_sub(writer0);
        figures.push(cpu.per_call_us(per_round));
    }
    // The round with the median ratio: a round that a neighbour slowed down does not count.
    if in_thread_only {
        figures.sort_by(|a, b| a.in_thread_ratio().total_cmp(&b.in_thread_ratio()));
    } else {
        figures.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    }
    let all_ratios: Vec<String> = figures
        .iter()
        .map(|r| format!("{:.2}", r.ratio()))
        .collect();
    let m = &figures[figures.len() / 2];
    // The median first, then every round.
    let list = |xs: &[f64]| {
        let all = xs
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        format!("median {:.2}; {all}", xs[xs.len() / 2])
    };
    let mut here: Vec<f64> = figures.iter().map(Figures::in_thread_ratio).collect();
    here.sort_by(f64::total_cmp);
    let in_thread = |m: &Figures<f64>| {
        println!(
            "Recommend in this thread, no gRPC: {:8.1} us; / stages taking turns (ANN {:.1} + rank {:.1}): {:.2}",
            m.recommend_here,
            m.ann_in_turn,
            m.rank_in_turn,
            m.in_thread_ratio()
        );
        println!(
            "  of it the served-feature log's writer: {:.1} us; without it: {:.2}",
            m.log_writer_here,
            (m.recommend_here - m.log_writer_here) / (m.ann_in_turn + m.rank_in_turn)
        );
    };
    if in_thread_only {
        println!(
            "catalog: {} items, {rounds} rounds of {per_round} requests, in this thread only; the median round:",
            catalog.len()
        );
        in_thread(m);
        println!(
            "by round: Recommend in this thread / stages taking turns: {}",
            list(&here)
        );
        server.shutdown_background();
        return Ok(());
    }
    let stages = m.ann + m.rank + m.grpc;
    let in_turn = m.ann_in_turn + m.rank_in_turn + m.grpc;
    println!(
        "catalog: {} items ({}-d), {rounds} rounds of {per_round} requests, k = {K}, \
         num_candidates = {NUM_CANDIDATES}, client: {}, calls in flight: {streams}; {}; \
         the median round:",
        catalog.len(),
        dim,
        match &h2load_client {
            Some(_) => "h2load (another process)",
            None => "tonic on the bench's thread",
        },
        idle_settings(),
    );
    println!("in-process ANN (k = {NUM_CANDIDATES}):   {:8.1} us", m.ann);
    println!("in-process rank ({NUM_CANDIDATES} rows): {:8.1} us", m.rank);
    println!("minimal gRPC call (Health):  {:8.1} us", m.grpc);
    println!("sum of the stages:           {stages:8.1} us");
    println!("Recommend server CPU:        {:8.1} us", m.recommend);
    println!("ratio:                       {:8.2}", m.ratio());
    println!("ratios of all rounds:        {}", all_ratios.join(" "));
    println!(
        "  of Recommend the served-feature log's writer: {:.1} us; without it: {:.2}",
        m.log_writer,
        (m.recommend - m.log_writer) / stages
    );
    println!(
        "stages taking turns:         {in_turn:8.1} us (ANN {:.1} + rank {:.1} + gRPC); \
         ratio to them {:.2}",
        m.ann_in_turn,
        m.rank_in_turn,
        m.recommend / in_turn
    );
    println!(
        "the stages behind one gRPC call: {:8.1} us (nothing between them; {:.2} x ANN + rank + gRPC); \
         Recommend / it: {:.2}",
        m.stages_call,
        m.stages_call / stages,
        m.recommend / m.stages_call
    );
    in_thread(m);
    // Per round, each against its own round's figures, sorted: the spread says how far the
    // medians can be trusted.
    let mut floor: Vec<f64> = figures
        .iter()
        .map(|r| r.stages_call / (r.ann + r.rank + r.grpc))
        .collect();
    let mut glue: Vec<f64> = figures
        .iter()
        .map(|r| r.recommend / r.stages_call)
        .collect();
    floor.sort_by(f64::total_cmp);
    glue.sort_by(f64::total_cmp);
    println!(
        "by round: the stages behind one call / (ANN + rank + gRPC): {}",
        list(&floor)
    );
    println!(
        "by round: Recommend / the stages behind one call:          {}",
        list(&glue)
    );
    println!(
        "by round: Recommend in this thread / stages taking turns:  {}",
        list(&here)
    );
    let mut unlogged: Vec<f64> = figures
        .iter()
        .map(|r| (r.recommend - r.log_writer) / (r.ann + r.rank + r.grpc))
        .collect();
    unlogged.sort_by(f64::total_cmp);
    println!(
        "by round: Recommend less the log's writer / (ANN + rank + gRPC): {}",
        list(&unlogged)
    );
    std::thread::sleep(Duration::from_millis(10));
    server.shutdown_background();
    Ok(())
}
