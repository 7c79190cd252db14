//! Where a Recommend's CPU goes: the embedded gateway's server CPU per Recommend against its
//! stages run directly in the same process: ANN at k = num_candidates, a rank of those
//! candidates, and one minimal gRPC call (Health/Check). Prints the three, their sum and the
//! ratio, on the catalog in `TANDEM_E2E_DATA` (default `data/demo`).
//!
//! Server CPU is the process's CPU (every thread's, from /proc) less the client thread's: the
//! client runs on this thread, the gateway on its own runtime, so both are measured in one run
//! with the same binary. `make bench-e2e` runs it on the demo and the 1M catalogs.

use std::time::{Duration, Instant};

use clap::Parser;
use tandem_catalog::testing::SplitMix;
use tandem_proto::v1 as pb;
use tandem_ranking::ScoreRequest;
use tandem_retrieval::{FilterSpec, SearchParams};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const USERS: usize = 200;
const EVENTS_PER_USER: usize = 5;
const K: u32 = 10;
const NUM_CANDIDATES: usize = 200;

/// CPU time of every live thread of this process, in nanoseconds (`/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Server CPU per call of `f` (process CPU less this thread's), in microseconds.
fn server_us(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let (p0, t0) = (process_cpu_ns(), thread_cpu_ns());
    for i in 0..n {
        f(i);
    }
    let (p1, t1) = (process_cpu_ns(), thread_cpu_ns());
    ((p1 - p0).saturating_sub(t1 - t0)) as f64 / n as f64 / 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    // Relative to the workspace root: `cargo bench` runs in the package's directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = root.join(std::env::var("TANDEM_E2E_DATA").unwrap_or_else(|_| "data/demo".into()));
    let requests: usize = std::env::var("TANDEM_E2E_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
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
    let mut recommend = |i: usize| {
        let answer = client.block_on(rec.recommend(request(i)));
        assert!(answer.is_ok_and(|a| a.get_ref().items.len() == K as usize));
    };
    for i in 0..requests / 10 {
        recommend(i);
    }
    let recommend_us = server_us(requests, &mut recommend);

    // The stages on their own: the users' queries as the mean of their items.
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
    for i in 0..requests / 10 {
        search(i)?;
    }
    let (p0, t0) = (process_cpu_ns(), thread_cpu_ns());
    let mut found = Vec::with_capacity(USERS);
    for i in 0..requests {
        let f = search(i)?;
        if found.len() < USERS {
            found.push(f);
        }
    }
    let ann_us = (thread_cpu_ns() - t0) as f64 / requests as f64 / 1e3;
    let _ = p0;
    let rank_request = |i: usize| ScoreRequest {
        user_id: format!("bench-{}", i % USERS),
        user_vector: queries[i % USERS].clone(),
        items: found[i % USERS].iter().map(|c| c.idx).collect(),
        retrieval_scores: found[i % USERS].iter().map(|c| c.score).collect(),
        recent_items: histories[i % USERS].iter().rev().copied().collect(),
        context: [("hour_of_day".to_owned(), "12".to_owned())].into(),
        version: None,
    };
    let prepared: Vec<ScoreRequest> = (0..USERS).map(rank_request).collect();
    let rank = |i: usize| {
        let scored = client.block_on(ranker.rank(prepared[i % USERS].clone()));
        assert!(scored.is_ok());
    };
    for i in 0..requests / 10 {
        rank(i);
    }
    // All of the rank's CPU is the stage's (its batcher and ORT threads and this thread).
    let (p0, _) = (process_cpu_ns(), ());
    for i in 0..requests {
        rank(i);
    }
    let rank_us = (process_cpu_ns() - p0) as f64 / requests as f64 / 1e3;

    let mut check = |_: usize| {
        let answer = client.block_on(health.check(HealthCheckRequest::default()));
        assert!(answer.is_ok());
    };
    for i in 0..requests / 10 {
        check(i);
    }
    let grpc_us = server_us(requests, &mut check);

    let stages = ann_us + rank_us + grpc_us;
    println!(
        "catalog: {} items ({}-d), {} requests, k = {K}, num_candidates = {NUM_CANDIDATES}",
        catalog.len(),
        dim,
        requests
    );
    println!("in-process ANN (k = {NUM_CANDIDATES}):   {ann_us:8.1} us");
    println!("in-process rank ({NUM_CANDIDATES} rows): {rank_us:8.1} us");
    println!("minimal gRPC call (Health):  {grpc_us:8.1} us");
    println!("sum of the stages:           {stages:8.1} us");
    println!("Recommend server CPU:        {recommend_us:8.1} us");
    println!("ratio:                       {:8.2}", recommend_us / stages);
    std::thread::sleep(Duration::from_millis(10));
    server.shutdown_background();
    Ok(())
}
