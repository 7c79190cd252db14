//! Restart from a checkpoint: the state it holds plus only the log's tail, the same state a
//! full replay gives, retries still recognised, and a damaged checkpoint passed over.

use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_events::EventLogConfig;
use tandem_personalization::{EventKind, InMemoryState, StateLimits, TrendingConfig};
use tandem_recommend::{EventIntake, IncomingEvent, StateWriter, checkpoint_dir};

struct Dirs {
    _root: tempfile::TempDir,
    catalog: Arc<Catalog>,
    log: EventLogConfig,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("items.parquet");
    write_parquet(&synthetic_batch(50, 4, 3, 5), &path).expect("catalog");
    let catalog = Arc::new(Catalog::open(&path).expect("catalog"));
    let log = EventLogConfig {
        dir: root.path().join("events"),
        // Small segments, so that a checkpoint lets whole segments go unread.
        segment_bytes: 256,
        export: false,
        retention: None,
    };
    Dirs {
        _root: root,
        catalog,
        log,
    }
}

fn state() -> Arc<InMemoryState> {
    Arc::new(InMemoryState::new(
        StateLimits::default(),
        TrendingConfig::default(),
    ))
}

fn open(
    d: &Dirs,
    checkpoints: bool,
) -> (
    Arc<EventIntake>,
    Arc<InMemoryState>,
    tandem_events::Replayed,
) {
    let s = state();
    let (intake, replayed) = EventIntake::open(
        &d.log,
        d.catalog.clone(),
        StateWriter::Local(s.clone()),
        1000,
        checkpoints.then(|| checkpoint_dir(&d.log.dir)),
    )
    .expect("open");
    (Arc::new(intake), s, replayed)
}

fn event(d: &Dirs, user: &str, item: u32, kind: EventKind, id: &str) -> IncomingEvent {
    IncomingEvent {
        user_id: user.into(),
        item_id: d.catalog.item_id(item).into(),
        kind: Some(kind),
        timestamp_ms: 0,
        event_id: id.into(),
    }
}

#[tokio::test]
async fn a_restart_loads_the_checkpoint_and_replays_only_the_tail() {
    let d = dirs();
    {
        let (intake, s, _) = open(&d, true);
        for n in 0..20u32 {
            let user = format!("u{}", n % 4);
            intake
                .record(&[event(&d, &user, n, EventKind::Purchase, &format!("e{n}"))])
                .await
                .expect("recorded");
        }
        s.record_shown("u1", &[40, 41], 1_700_000_000_000);
        let written = intake
            .checkpoint()
            .await
            .expect("checkpoint")
            .expect("checkpoints are on");
        assert_eq!(written.seq, 20);
        assert_eq!(written.users, 4);
        for n in 20..23u32 {
            intake
                .record(&[event(&d, "u0", n, EventKind::View, &format!("e{n}"))])
                .await
                .expect("recorded");
        }
    }
    // The same log, replayed whole, for comparison.
    let copy = Dirs {
        log: EventLogConfig {
            dir: d.log.dir.with_file_name("events-copy"),
            ..d.log.clone()
        },
        catalog: d.catalog.clone(),
        _root: tempfile::tempdir().expect("tempdir"),
    };
    std::fs::create_dir_all(&copy.log.dir).expect("mkdir");
    for entry in std::fs::read_dir(&d.log.dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, copy.log.dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let (_, full_state, full) = open(&copy, false);
    assert_eq!(full.batches, 23);
    let (fast, fast_state, replayed) = open(&d, true);
    assert_eq!(replayed.batches, 3, "only the batches after the checkpoint");
    assert!(replayed.skipped_segments > 0, "{replayed:?}");
    assert_eq!(replayed.last_seq, 23);
    for user in ["u0", "u1", "u2", "u3"] {
        let (a, b) = (fast_state.user(user), full_state.user(user));
        assert_eq!(a.recent, b.recent, "{user}");
        assert_eq!(a.purchased, b.purchased, "{user}");
    }
    assert_eq!(
        fast_state.user("u1").shown.get(&40).map(|s| s.times),
        Some(1),
        "impressions survive in the checkpoint (the log does not have them)"
    );
    assert_eq!(
        fast_state.trending(5, &|_| true),
        full_state.trending(5, &|_| true)
    );
    // A retry of an event from before the checkpoint is still recognised.
    let again = fast
        .record(&[event(&d, "u1", 1, EventKind::Purchase, "e1")])
        .await
        .expect("recorded");
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    // New batches number on from the log.
    fast.record(&[event(&d, "u9", 1, EventKind::View, "")])
        .await
        .expect("recorded");
    drop(fast);
    let (_, _, after) = open(&d, true);
    assert_eq!(after.last_seq, 24);
}

#[tokio::test]
async fn a_damaged_checkpoint_is_passed_over_for_the_one_before() {
    let d = dirs();
    {
        let (intake, _, _) = open(&d, true);
        intake
            .record(&[event(&d, "a", 1, EventKind::Purchase, "")])
            .await
            .expect("recorded");
        intake.checkpoint().await.expect("first").expect("on");
        intake
            .record(&[event(&d, "b", 2, EventKind::Purchase, "")])
            .await
            .expect("recorded");
        let newest = intake.checkpoint().await.expect("second").expect("on");
        let mut bytes = std::fs::read(&newest.path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&newest.path, bytes).expect("damage");
    }
    let (_, s, replayed) = open(&d, true);
    assert_eq!(replayed.batches, 1, "the older checkpoint covers batch 1");
    assert_eq!(s.user("a").purchased.len(), 1);
    assert_eq!(s.user("b").purchased.len(), 1);
}

#[tokio::test]
async fn a_call_dropped_while_its_batch_is_written_still_gets_it_applied() {
    let d = dirs();
    let (intake, s, _) = open(&d, false);
    // The caller gives up right after its first poll, while the batch waits for its fsync.
    let events = [event(&d, "gone", 3, EventKind::Purchase, "")];
    let gave_up = tokio::select! {
        biased;
        _ = intake.record(&events) => false,
        () = std::future::ready(()) => true,
    };
    assert!(gave_up, "an fsync does not finish within one poll");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.user("gone").purchased.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.user("gone").purchased.len(),
        1,
        "logged, so applied to user state too"
    );
    drop(intake);
    let (_, _, replayed) = open(&d, false);
    assert_eq!(replayed.events, 1, "and on disk");
}
