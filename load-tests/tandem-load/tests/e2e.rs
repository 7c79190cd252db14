//! tandem-load against a real tonic server on loopback: the binary is run as a user would,
//! and what the server saw is compared with what the report says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_proto::v1::recommender_service_server::{RecommenderService, RecommenderServiceServer};
use tandem_proto::v1::{
    RecommendRequest, RecommendResponse, RecommendedItem, RecordEventStreamRequest,
    RecordEventStreamResponse, RecordEventsRequest, RecordEventsResponse,
};
use tonic::{Request, Response, Status, Streaming};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// One Recommend call as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    user_id: String,
    run_header: Option<String>,
    peer: Option<SocketAddr>,
    at: Instant,
}

/// How the test server answers.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Every call takes this long.
    delay: Duration,
    /// Call number N (from 0) takes `stall` instead.
    stall_on: Option<u64>,
    stall: Duration,
    /// Users starting with this get NOT_FOUND.
    fail_prefix: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    calls: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

impl State {
    fn count(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct TestRecommender {
    state: Arc<State>,
    behaviour: Behaviour,
}

#[tonic::async_trait]
impl RecommenderService for TestRecommender {
    async fn recommend(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<RecommendResponse>, Status> {
        let n = self.state.calls.fetch_add(1, Ordering::SeqCst);
        let seen = Seen {
            user_id: request.get_ref().user_id.clone(),
            run_header: request
                .metadata()
                .get("x-run")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            peer: request.remote_addr(),
            at: Instant::now(),
        };
        if let Ok(mut s) = self.state.seen.lock() {
            s.push(seen);
        }
        let pause = if self.behaviour.stall_on == Some(n) {
            self.behaviour.stall
        } else {
            self.behaviour.delay
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let user = &request.get_ref().user_id;
        if let Some(prefix) = &self.behaviour.fail_prefix
            && user.starts_with(prefix.as_str())
        {
            return Err(Status::not_found(format!("no such user {user}")));
        }
        Ok(Response::new(RecommendResponse {
            items: vec![RecommendedItem {
                item_id: "item-000001".into(),
                score: 1.0,
                ..Default::default()
            }],
            model_version: "test".into(),
            ..Default::default()
        }))
    }

    async fn record_events(
        &self,
        _request: Request<RecordEventsRequest>,
    ) -> Result<Response<RecordEventsResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn record_event_stream(
        &self,
        _request: Request<Streaming<RecordEventStreamRequest>>,
    ) -> Result<Response<RecordEventStreamResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

/// Starts a server on a free loopback port; with `reflection` it serves reflection v1 too.
async fn start_server(
    behaviour: Behaviour,
    reflection: bool,
) -> Result<(SocketAddr, Arc<State>), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State::default());
    let svc = RecommenderServiceServer::new(TestRecommender {
        state: state.clone(),
        behaviour,
    });
    let reflection_svc = if reflection {
        Some(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
                .build_v1()?,
        )
    } else {
        None
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .add_optional_service(reflection_svc)
            .serve_with_incoming(incoming),
    );
    Ok((addr, state))
}

static FILES: AtomicU64 = AtomicU64::new(0);

fn temp_path(name: &str) -> PathBuf {
    let n = FILES.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!(
        "tandem-load-test-{}-{n}-{name}",
        std::process::id()
    ))
}

/// What a run of the binary produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stderr: String,
    report: Option<Value>,
}

/// Runs tandem-load with `args`, the JSON report written to a temp file.
async fn tandem_load(args: &[&str]) -> Result<Run, Box<dyn std::error::Error + Send + Sync>> {
    let out = temp_path("report.json");
    let mut full: Vec<String> = vec![
        "-O".into(),
        "json".into(),
        "-o".into(),
        out.display().to_string(),
        // Two client threads are plenty for these rates and leave the server a core.
        "--cpus".into(),
        "2".into(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem-load"))
            .args(&full)
            .output()
    })
    .await??;
    let report = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let _ = std::fs::remove_file(&out);
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    })
}

fn write_config(value: &Value) -> Result<PathBuf, std::io::Error> {
    let path = temp_path("config.json");
    std::fs::write(&path, value.to_string())?;
    Ok(path)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

fn percentile(report: &Value, p: u64) -> u64 {
    report["latencyDistribution"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["percentage"] == p))
        .map_or(0, |l| u(&l["latency"]))
}

const CALL: &str = "tandem.v1.RecommenderService/Recommend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_n_calls_over_the_connections_and_reports_them() -> TestResult {
    let (addr, state) = start_server(Behaviour::default(), true).await?;
    let host = addr.to_string();
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "-n",
        "50",
        "-c",
        "4",
        "--connections",
        "2",
        "-d",
        r#"[{"user_id":"a"},{"userId":"b"},{"user_id":"c"},{"user_id":"d"},{"user_id":"e"}]"#,
        &host,
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(state.count(), 50);
    let peers: std::collections::HashSet<_> = state.seen().iter().filter_map(|s| s.peer).collect();
    assert_eq!(peers.len(), 2, "two HTTP/2 connections: {peers:?}");

    let r = run.report.ok_or("no report")?;
    assert_eq!(r["count"], 50);
    assert_eq!(r["statusCodeDistribution"], serde_json::json!({"OK": 50}));
    assert_eq!(r["errorDistribution"], serde_json::json!({}));
    assert_eq!(r["endReason"], "normal");
    let pcts: Vec<u64> = r["latencyDistribution"]
        .as_array()
        .ok_or("latencyDistribution")?
        .iter()
        .map(|l| u(&l["percentage"]))
        .collect();
    assert_eq!(pcts, vec![10, 25, 50, 75, 90, 95, 99]);
    let hist = r["histogram"].as_array().ok_or("histogram")?;
    assert_eq!(hist.len(), 11);
    assert_eq!(hist.iter().map(|b| u(&b["count"])).sum::<u64>(), 50);
    assert!(u(&r["fastest"]) <= percentile(&r, 50) && percentile(&r, 50) <= u(&r["slowest"]));
    assert!(u(&r["average"]) > 0 && u(&r["total"]) > 0 && r["rps"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(r["options"]["call"], CALL);
    assert_eq!(r["options"]["host"], host.as_str());
    assert_eq!(r["options"]["concurrency"], 4);
    assert_eq!(r["options"]["connections"], 2);
    assert_eq!(r["options"]["total"], 50);
    assert_eq!(r["options"]["insecure"], true);
    assert!(r["options"]["data"].is_array());
    assert!(
        r["date"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z') && d.len() == 20)
    );
    assert!(r.get("details").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_data_and_templates_reach_the_server_in_order() -> TestResult {
    let (addr, state) = start_server(Behaviour::default(), false).await?;
    let host = addr.to_string();
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "-c",
        "1",
        "-n",
        "7",
        "-d",
        r#"[{"user_id":"a"},{"user_id":"b"},{"user_id":"c"}]"#,
        &host,
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let users: Vec<String> = state.seen().into_iter().map(|s| s.user_id).collect();
    assert_eq!(users, vec!["a", "b", "c", "a", "b", "c", "a"]);
    // No reflection on this server: the built-in descriptors stand in, and the user is told.
    assert!(
        run.stderr.contains("no reflection service"),
        "{}",
        run.stderr
    );

    let (addr, state) = start_server(Behaviour::default(), false).await?;
    let host = addr.to_string();
    let run = tandem_load(&[
        "--call",
        "tandem.v1.RecommenderService.Recommend",
        "--insecure",
        "-c",
        "1",
        "-n",
        "4",
        "-d",
        r#"{"user_id":"u-{{.RequestNumber}}-{{.WorkerID}}"}"#,
        "-m",
        r#"{"x-run":"r{{.RequestNumber}}"}"#,
        "--descriptors",
        "builtin",
        &host,
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = state.seen();
    let users: Vec<&str> = seen.iter().map(|s| s.user_id.as_str()).collect();
    assert_eq!(users, vec!["u-0-g0c0", "u-1-g0c0", "u-2-g0c0", "u-3-g0c0"]);
    let headers: Vec<&str> = seen
        .iter()
        .filter_map(|s| s.run_header.as_deref())
        .collect();
    assert_eq!(headers, vec!["r0", "r1", "r2", "r3"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_counted_by_status() -> TestResult {
    let behaviour = Behaviour {
        fail_prefix: Some("bad-".into()),
        ..Default::default()
    };
    let (addr, state) = start_server(behaviour, true).await?;
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "-c",
        "2",
        "-n",
        "10",
        "-d",
        r#"[{"user_id":"good-1"},{"user_id":"bad-1"}]"#,
        &addr.to_string(),
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(state.count(), 10);
    let r = run.report.ok_or("no report")?;
    assert_eq!(r["count"], 10);
    assert_eq!(
        r["statusCodeDistribution"],
        serde_json::json!({"OK": 5, "NotFound": 5})
    );
    assert_eq!(
        r["errorDistribution"],
        serde_json::json!({"rpc error: code = NotFound desc = no such user bad-1": 5})
    );
    // Percentiles cover successful calls only (ghz); the histogram too.
    let hist = r["histogram"].as_array().ok_or("histogram")?;
    assert_eq!(hist.iter().map(|b| u(&b["count"])).sum::<u64>(), 5);

    let slow = Behaviour {
        delay: Duration::from_millis(1500),
        ..Default::default()
    };
    let (addr, _state) = start_server(slow, false).await?;
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "-c",
        "2",
        "-n",
        "2",
        "-t",
        "100ms",
        "-d",
        r#"{"user_id":"x"}"#,
        &addr.to_string(),
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.ok_or("no report")?;
    assert_eq!(
        r["statusCodeDistribution"],
        serde_json::json!({"DeadlineExceeded": 2})
    );
    assert!(r["latencyDistribution"].is_null());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_holds_the_rate() -> TestResult {
    let (addr, state) = start_server(Behaviour::default(), false).await?;
    let started = Instant::now();
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "--rps",
        "200",
        "-z",
        "1s",
        "-c",
        "10",
        "-d",
        r#"{"user_id":"u"}"#,
        &addr.to_string(),
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let count = state.count();
    assert!((170..=230).contains(&count), "server saw {count} calls");
    let r = run.report.ok_or("no report")?;
    assert_eq!(u(&r["count"]), count);
    let rps = r["rps"].as_f64().unwrap_or(0.0);
    assert!((170.0..=230.0).contains(&rps), "report rps {rps}");
    assert_eq!(r["endReason"], "timeout");
    // Paced across the second, not sent in a burst.
    let seen = state.seen();
    let (first, last) = (seen.first().map(|s| s.at), seen.last().map(|s| s.at));
    if let (Some(first), Some(last)) = (first, last) {
        let spread = last.duration_since(first);
        assert!(
            spread >= Duration::from_millis(900),
            "calls spread over {spread:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_as_latency_not_as_missing_requests() -> TestResult {
    // One worker, 100 rps for 1 s; call 10 stalls 300 ms. Closed-loop tools would record one
    // slow call and ~30 fewer calls; measured from the intended send times, the ~30 calls
    // scheduled during the stall carry the wait.
    let behaviour = Behaviour {
        stall_on: Some(10),
        stall: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, state) = start_server(behaviour, false).await?;
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "--rps",
        "100",
        "-z",
        "1s",
        "-c",
        "1",
        "-d",
        r#"{"user_id":"u"}"#,
        &addr.to_string(),
    ])
    .await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.ok_or("no report")?;
    assert_eq!(r["count"], 100, "every scheduled call is sent");
    assert_eq!(state.count(), 100);
    let slowest = u(&r["slowest"]);
    let p99 = percentile(&r, 99);
    let p90 = percentile(&r, 90);
    assert!(slowest >= 295_000_000, "slowest {slowest}");
    assert!(p99 >= 250_000_000, "p99 {p99}");
    assert!(
        p90 >= 100_000_000,
        "p90 {p90}: the backlog behind the stall must count"
    );
    assert!(
        run.stderr.contains("after their scheduled time"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_gate_exits_1_when_violated_and_0_when_met() -> TestResult {
    let behaviour = Behaviour {
        delay: Duration::from_millis(30),
        fail_prefix: Some("bad-".into()),
        ..Default::default()
    };
    let (addr, _state) = start_server(behaviour, false).await?;
    let host = addr.to_string();
    let base = ["--call", CALL, "--insecure", "-c", "5", "-n", "10"];

    let mut args = base.to_vec();
    args.extend(["-d", r#"{"user_id":"ok"}"#, "--max-p99", "5ms", &host]);
    let run = tandem_load(&args).await?;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("SLO violated: p99 latency"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("exceeds --max-p99 5.00 ms by"),
        "{}",
        run.stderr
    );
    assert!(run.report.is_some(), "the report is written before failing");

    let mut args = base.to_vec();
    args.extend([
        "-d",
        r#"{"user_id":"ok"}"#,
        "--max-p99",
        "10s",
        "--max-error-rate",
        "0",
        &host,
    ]);
    let run = tandem_load(&args).await?;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("SLOs met"), "{}", run.stderr);

    let mut args = base.to_vec();
    args.extend([
        "-d",
        r#"[{"user_id":"ok"},{"user_id":"bad-1"}]"#,
        "--max-error-rate",
        "0.1",
        &host,
    ]);
    let run = tandem_load(&args).await?;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error rate 50.00% (5 of 10 calls) exceeds --max-error-rate 10.00% by 40.00"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_exit_2_naming_the_problem_before_any_call() -> TestResult {
    let (addr, state) = start_server(Behaviour::default(), true).await?;
    let host = addr.to_string();
    let base = serde_json::json!({
        "call": CALL, "host": host, "insecure": true, "total": 5,
        "data": {"user_id": "u"}
    });
    let with = |key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("concurency", serde_json::json!(4)), "\"concurency\""),
        (
            with("duration", serde_json::json!("10 seconds")),
            "\"duration\"",
        ),
        (with("total", serde_json::json!("5")), "\"total\""),
        (
            with(
                "data",
                serde_json::json!([{"user_id": "u"}, {"user_idd": "v"}]),
            ),
            "user_idd",
        ),
        (
            with(
                "call",
                serde_json::json!("tandem.v1.RecommenderService/Recomend"),
            ),
            "Recomend",
        ),
        (
            with("load-schedule", serde_json::json!("ramp")),
            "load-schedule",
        ),
    ];
    for (config, needle) in cases {
        let path = write_config(&config)?;
        let run = tandem_load(&["--config", &path.display().to_string()]).await?;
        let _ = std::fs::remove_file(&path);
        assert_eq!(run.code, 2, "{needle}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{needle} not in: {}",
            run.stderr
        );
        assert!(run.report.is_none());
    }
    // The same check where the server has no reflection (built-in descriptors).
    let (addr2, state2) = start_server(Behaviour::default(), false).await?;
    let run = tandem_load(&[
        "--call",
        CALL,
        "--insecure",
        "-d",
        r#"{"user_idd":"u"}"#,
        &addr2.to_string(),
    ])
    .await?;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("user_idd"), "{}", run.stderr);
    assert_eq!(state.count(), 0, "no call reached the server");
    assert_eq!(state2.count(), 0, "no call reached the server");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() -> TestResult {
    let (addr, state) = start_server(Behaviour::default(), false).await?;
    let config = serde_json::json!({
        "call": CALL, "host": "127.0.0.1:1", "insecure": true, "total": 50,
        "concurrency": 3, "data": {"user_id": "from-file"}
    });
    let path = write_config(&config)?;
    let run = tandem_load(&[
        "--config",
        &path.display().to_string(),
        "-n",
        "3",
        "-d",
        r#"{"user_id":"from-flag"}"#,
        &addr.to_string(),
    ])
    .await?;
    let _ = std::fs::remove_file(&path);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(state.count(), 3);
    assert!(state.seen().iter().all(|s| s.user_id == "from-flag"));
    let r = run.report.ok_or("no report")?;
    assert_eq!(
        r["options"]["concurrency"], 3,
        "unset flags keep the file's value"
    );
    Ok(())
}
