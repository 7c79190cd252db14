//! Deadlines and load shedding: a slow ranking tier (a real gRPC server on loopback that takes
//! its time) degrades the answer inside the caller's deadline; past --max-in-flight, new calls
//! are shed with RESOURCE_EXHAUSTED at once while the accepted ones are answered.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tandem_proto::v1 as pb;
use tonic::{Code, Request, Response, Status};

/// Answers Rank after `delay` with a score per candidate.
#[derive(Clone)]
struct SlowRanking {
    delay: Duration,
}

#[tonic::async_trait]
impl pb::ranking_service_server::RankingService for SlowRanking {
    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        let n = request.into_inner().candidates.len();
        Ok(Response::new(pb::RankResponse {
            scores: (0..n).map(|i| i as f32).collect(),
            model_version: "slow/1".into(),
            features: Vec::new(),
        }))
    }
}

/// A ranking server on loopback answering with `service`.
async fn serve_ranking(
    service: impl pb::ranking_service_server::RankingService + 'static,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::ranking_service_server::RankingServiceServer::new(
                service,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn slow_ranking(delay: Duration) -> SocketAddr {
    serve_ranking(SlowRanking { delay }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_ranking_degrades_inside_the_callers_deadline() {
    let ranking = slow_ranking(Duration::from_secs(3)).await;
    let gw = start(config(&[
        &format!("--ranking-addr={ranking}"),
        "--stage-timeout-ms=10000",
        // A shared 2-core CI machine running this binary's other tests delays the reply by
        // more than the default 5 ms after ranking's budget ends.
        "--deadline-reserve-ms=30",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "hurried", "kitchen", 3).await;
    for deadline_ms in [150u64, 400] {
        let mut request = Request::new(request("hurried", 10));
        request.set_timeout(Duration::from_millis(deadline_ms));
        let started = Instant::now();
        let resp = client
            .recommend(request)
            .await
            .expect("degraded, not failed")
            .into_inner();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(deadline_ms),
            "answered in {took:?}, deadline {deadline_ms} ms"
        );
        assert!(resp.degraded);
        assert_eq!(resp.model_version, "retrieval");
        assert!(
            resp.degraded_reason.contains("ranking timed out"),
            "{}",
            resp.degraded_reason
        );
        assert_eq!(resp.items.len(), 10);
    }
    // Without a caller deadline the gateway's default (1000 ms) bounds it.
    let started = Instant::now();
    let resp = client
        .recommend(request("hurried", 10))
        .await
        .expect("degraded")
        .into_inner();
    assert!(resp.degraded && started.elapsed() < Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_down_answers_trending_degraded() {
    let gw = start(config(&[
        "--retrieval-addr=127.0.0.1:1",
        "--stage-timeout-ms=300",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "stranded", "kitchen", 3).await;
    let resp = client
        .recommend(request("stranded", 10))
        .await
        .expect("degraded, not failed")
        .into_inner();
    assert!(resp.degraded);
    assert_eq!(resp.model_version, "trending");
    assert!(
        resp.degraded_reason.contains("retrieval"),
        "{}",
        resp.degraded_reason
    );
    assert_eq!(resp.items.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_new_calls_are_shed_at_once() {
    let ranking = slow_ranking(Duration::from_millis(400)).await;
    let gw = start(config(&[
        &format!("--ranking-addr={ranking}"),
        "--max-in-flight=2",
        "--default-deadline-ms=5000",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "crowd", "kitchen", 3).await;
    let calls: Vec<_> = (0..6)
        .map(|n| {
            let mut client = client.clone();
            tokio::spawn(async move {
                // Stagger slightly so the first two are surely in flight.
                tokio::time::sleep(Duration::from_millis(if n < 2 { 0 } else { 100 })).await;
                let started = Instant::now();
                let result = client.recommend(request("crowd", 10)).await;
                (result.map(|r| r.into_inner()), started.elapsed())
            })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for call in calls {
        let (result, took) = call.await.expect("task");
        match result {
            Ok(resp) => {
                served += 1;
                assert!(
                    !resp.degraded,
                    "accepted calls are served in full: {resp:?}"
                );
                assert_eq!(resp.model_version, "slow/1");
            }
            Err(status) => {
                shed += 1;
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    took < Duration::from_millis(100),
                    "shed at once, took {took:?}"
                );
            }
        }
    }
    assert_eq!((served, shed), (2, 4));
    // Capacity comes back when they finish.
    let resp = client
        .recommend(request("crowd", 10))
        .await
        .expect("served");
    assert_eq!(resp.into_inner().model_version, "slow/1");
}

/// What a ranking server learnt of one call: the `grpc-timeout` it was sent, and whether its
/// handler ran to the end or was dropped when the caller went away.
#[derive(Clone, Default)]
struct Observed(std::sync::Arc<std::sync::Mutex<Vec<Call>>>);

/// The `grpc-timeout` sent, and "running", "finished" or "dropped".
type Call = (Option<String>, &'static str);

#[derive(Clone)]
struct ObservedRanking {
    delay: Duration,
    seen: Observed,
}

/// Records "dropped" unless the handler reached its end.
struct Outcome(Observed, usize, &'static str);

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(call) = self.0.0.lock().expect("lock").get_mut(self.1) {
            call.1 = self.2;
        }
    }
}

#[tonic::async_trait]
impl pb::ranking_service_server::RankingService for ObservedRanking {
    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let at = {
            let mut seen = self.seen.0.lock().expect("lock");
            seen.push((timeout, "running"));
            seen.len() - 1
        };
        let mut outcome = Outcome(self.seen.clone(), at, "dropped");
        tokio::time::sleep(self.delay).await;
        outcome.2 = "finished";
        let n = request.into_inner().candidates.len();
        Ok(Response::new(pb::RankResponse {
            scores: (0..n).map(|i| i as f32).collect(),
            model_version: "observed/1".into(),
            features: Vec::new(),
        }))
    }
}

/// `grpc-timeout` values are an integer and a unit (n u m S M H).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "n" => Duration::from_nanos(n),
        "u" => Duration::from_micros(n),
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        "M" => Duration::from_secs(n * 60),
        "H" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_stages_learn_the_deadline_and_stop_when_it_passes() {
    let seen = Observed::default();
    let ranking = serve_ranking(ObservedRanking {
        delay: Duration::from_secs(5),
        seen: seen.clone(),
    })
    .await;
    let gw = start(config(&[
        &format!("--ranking-addr={ranking}"),
        "--stage-timeout-ms=10000",
        "--deadline-reserve-ms=30",
    ]))
    .await;
    let mut client = recommender(gw.addr).await;
    clicks_in(&mut client, "timed", "kitchen", 3).await;
    let mut request = Request::new(request("timed", 10));
    request.set_timeout(Duration::from_millis(600));
    let resp = client
        .recommend(request)
        .await
        .expect("degraded")
        .into_inner();
    assert!(
        resp.degraded && resp.model_version == "retrieval",
        "{resp:?}"
    );

    // The stage was told how long it had: less than the caller's 600 ms (retrieval and the
    // reserve took their share), far less than --stage-timeout-ms.
    let calls = seen.0.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let told = calls[0]
        .0
        .as_deref()
        .and_then(parse_grpc_timeout)
        .unwrap_or_else(|| panic!("no grpc-timeout sent: {calls:?}"));
    assert!(
        told > Duration::ZERO && told < Duration::from_millis(600),
        "grpc-timeout {told:?}"
    );
    // ... and it stopped working for the caller that had gone, long before its 5 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.0.lock().expect("lock")[0].1 == "running" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.0.lock().expect("lock")[0].1, "dropped");
}
