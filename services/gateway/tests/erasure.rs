//! ForgetUser over gRPC: the user leaves live state, the event log, its Parquet exports, the
//! served-feature log and the checkpoints; a restart does not bring them back; others keep
//! everything; the RPC needs the admin token.

mod common;

use std::time::{Duration, Instant};

use common::{catalog, config, event, recommender, request, start, state_dir};
use tandem_proto::v1 as pb;

const TOKEN: &str = "erase-s3cret";

fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            tandem_server::ADMIN_AUTH_HEADER,
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request
}

fn parquet_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .map(|p| {
                if p.is_dir() {
                    parquet_files(&p)
                } else {
                    usize::from(p.extension().is_some_and(|e| e == "parquet"))
                }
            })
            .sum()
    })
}

type AdminClient =
    pb::recommender_admin_service_client::RecommenderAdminServiceClient<tonic::transport::Channel>;

async fn forget(
    admin: &mut AdminClient,
    user_id: impl Into<String>,
    token: Option<&str>,
) -> Result<pb::ForgetUserResponse, tonic::Status> {
    admin
        .forget_user(authorized(
            pb::ForgetUserRequest {
                user_id: user_id.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_user_erases_every_copy_and_a_restart_does_not_bring_it_back() {
    let dir = state_dir();
    let (events_dir, served_dir) = (dir.path().join("events"), dir.path().join("served"));
    let flags = [
        format!("--event-log-dir={}", events_dir.display()),
        format!("--served-log-dir={}", served_dir.display()),
        "--served-log-sample=1".to_owned(),
        "--served-log-flush-ms=20".to_owned(),
        format!("--admin-token={TOKEN}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let items = catalog();
    let item = |i: u32| items.item_id(i).to_owned();
    let t = common::t0();

    let running = start(config(&flags)).await;
    let mut client = recommender(running.addr).await;
    let mut events = Vec::new();
    for n in 0..12u32 {
        events.push(event(
            "erase-me",
            &item(n),
            pb::EventType::Click,
            t + i64::from(n),
        ));
        events.push(event(
            "keep-me",
            &item(n + 20),
            pb::EventType::View,
            t + i64::from(n),
        ));
    }
    client
        .record_events(pb::RecordEventsRequest { events })
        .await
        .expect("recorded");
    for _ in 0..3 {
        let answer = client
            .recommend(request("erase-me", 5))
            .await
            .expect("answer")
            .into_inner();
        assert_ne!(answer.model_version, "trending", "warm before the erasure");
    }
    // The served-feature log writes its files every 20 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    while parquet_files(&served_dir) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(parquet_files(&served_dir) > 0, "served rows written");

    let mut admin = pb::recommender_admin_service_client::RecommenderAdminServiceClient::new(
        common::channel(running.addr).await,
    );
    let refused = forget(&mut admin, "erase-me", None)
        .await
        .expect_err("needs the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let too_long = forget(&mut admin, "u".repeat(300), Some(TOKEN))
        .await
        .expect_err("bounded id");
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);

    let erased = forget(&mut admin, "erase-me", Some(TOKEN))
        .await
        .expect("erased");
    assert!(erased.state_removed, "{erased:?}");
    assert_eq!(erased.log_events_removed, 12, "{erased:?}");
    assert_eq!(erased.log_segments_rewritten, 1, "{erased:?}");
    assert_eq!(
        erased.exported_rows_removed, 12,
        "the closed segment was exported first: {erased:?}"
    );
    assert!(erased.served_rows_removed >= 5, "{erased:?}");
    assert!(erased.checkpoint_rewritten, "{erased:?}");

    // Nothing of the user is left in the files; the other user is whole.
    let exported = tandem_events::read_exported(&events_dir).expect("exports");
    assert!(exported.iter().all(|e| e.user_id != "erase-me"));
    assert_eq!(
        exported.iter().filter(|e| e.user_id == "keep-me").count(),
        12
    );
    assert_eq!(
        tandem_events::erase_from_parquet(&served_dir, "user_id", "erase-me").expect("scan"),
        (0, 0),
        "no served row left"
    );
    let checkpoints: Vec<_> = std::fs::read_dir(events_dir.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "older checkpoints held the user");

    let answer = client
        .recommend(request("erase-me", 5))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(answer.model_version, "trending", "no state left");
    // New activity after the erasure is kept.
    client
        .record_events(pb::RecordEventsRequest {
            events: vec![event(
                "erase-me",
                &item(40),
                pb::EventType::Purchase,
                t + 100,
            )],
        })
        .await
        .expect("recorded");
    drop(client);
    drop(admin);
    drop(running);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restarted on the same files: the checkpoint and the log's tail.
    let running = start(config(&flags)).await;
    let mut client = recommender(running.addr).await;
    let keep = client
        .recommend(request("keep-me", 5))
        .await
        .expect("answer")
        .into_inner();
    assert_ne!(
        keep.model_version, "trending",
        "the other user kept their state"
    );
    // Erasing again finds only what came after the first erasure: the purchase.
    let mut admin = pb::recommender_admin_service_client::RecommenderAdminServiceClient::new(
        common::channel(running.addr).await,
    );
    let again = forget(&mut admin, "erase-me", Some(TOKEN))
        .await
        .expect("erased");
    assert!(again.state_removed, "{again:?}");
    assert_eq!(again.log_events_removed, 1, "{again:?}");
}
