//! The event log on real files: group commit under concurrency, replay, torn tails, rolling
//! into day-partitioned Parquet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_events::{EventLog, EventLogConfig, Logged, LoggedEvent, read_exported};
use tandem_personalization::EventKind;

const DAY_MS: i64 = 86_400_000;
const SEPT_1: i64 = 1_788_220_800_000;

fn config(dir: &std::path::Path, segment_bytes: u64) -> EventLogConfig {
    EventLogConfig {
        dir: dir.to_owned(),
        segment_bytes,
        export: true,
        retention: None,
    }
}

fn event(user: usize, n: usize, t: i64) -> LoggedEvent {
    LoggedEvent {
        event_id: format!("e-{user}-{n}"),
        user_id: format!("user-{user}"),
        item_id: format!("item-{n}"),
        kind: [
            EventKind::View,
            EventKind::Click,
            EventKind::AddToCart,
            EventKind::Purchase,
        ][n % 4],
        timestamp_ms: t,
    }
}

/// The events of a record (erasure records have none).
fn events_of(record: &Logged) -> Vec<LoggedEvent> {
    match record {
        Logged::Events(events) => events.clone(),
        Logged::ForgetUser(_) => Vec::new(),
    }
}

fn replay_all(cfg: &EventLogConfig) -> (EventLog, Vec<(u64, Vec<LoggedEvent>)>) {
    let mut seen = Vec::new();
    let (log, _) = EventLog::open(cfg, 0, |seq, record| seen.push((seq, events_of(record))))
        .expect("open log");
    (log, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_replay_in_sequence_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 64 << 20);
    let (log, seen) = replay_all(&cfg);
    assert!(seen.is_empty());
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..16)
        .map(|user| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..25 {
                    let batch = vec![event(user, n, SEPT_1 + n as i64)];
                    let seq = log.append(batch.clone()).await.expect("append");
                    acked.push((seq, batch));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    acked.sort_by_key(|a| a.0);
    let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<_>>(),
        "one sequence number per batch"
    );
    drop(Arc::into_inner(log).expect("sole owner"));

    let (log, replayed) = replay_all(&cfg);
    assert_eq!(replayed, acked, "every acknowledged batch, in order");
    assert_eq!(
        log.append(vec![event(0, 99, SEPT_1)])
            .await
            .expect("append"),
        401
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_appends_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 64 << 20);
    let (log, _) = replay_all(&cfg);
    for n in 0..3 {
        log.append(vec![event(1, n, SEPT_1)]).await.expect("append");
    }
    drop(log);
    // A crash mid-write: half a record after the last acknowledged one.
    let segment = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&segment, &bytes).expect("write");

    let (log, replayed) = replay_all(&cfg);
    assert_eq!(replayed.len(), 3);
    assert_eq!(
        std::fs::metadata(&segment).expect("stat").len() as usize,
        whole,
        "torn bytes removed"
    );
    assert_eq!(
        log.append(vec![event(1, 3, SEPT_1)]).await.expect("append"),
        4
    );
    drop(log);
    let (_, replayed) = replay_all(&cfg);
    assert_eq!(replayed.len(), 4);
}

#[tokio::test]
async fn closed_segments_become_day_partitioned_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Tiny segments: nearly every batch closes one.
    let cfg = config(dir.path(), 200);
    let (log, _) = replay_all(&cfg);
    let mut sent = Vec::new();
    for n in 0..12 {
        // Three days of events.
        let batch = vec![
            event(n % 3, n, SEPT_1 + (n as i64 % 3) * DAY_MS + 1000),
            event(7, n, SEPT_1 + 5),
        ];
        log.append(batch.clone()).await.expect("append");
        sent.extend(batch);
    }
    drop(log);
    // Export runs in the background: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let exported = loop {
        let (_log, _) = replay_all(&cfg);
        let exported = read_exported(dir.path()).expect("read parquet");
        if exported.len() >= sent.len() - 2 || Instant::now() > deadline {
            break exported;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Everything but the segment still open is exported, each event once.
    let mut want = sent.clone();
    let mut got = exported.clone();
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id).then(a.user_id.cmp(&b.user_id)));
    got.sort_by(|a, b| a.event_id.cmp(&b.event_id).then(a.user_id.cmp(&b.user_id)));
    got.dedup();
    assert_eq!(got.len(), exported.len(), "no event exported twice");
    assert!(got.iter().all(|e| want.contains(e)));
    assert!(
        exported.len() >= sent.len() - 2,
        "{} of {}",
        exported.len(),
        sent.len()
    );
    let days: Vec<String> = std::fs::read_dir(dir.path().join("parquet"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(days, ["day=2026-09-01", "day=2026-09-02", "day=2026-09-03"]);
    // Exported segments are kept for replay: nothing is lost on restart.
    let (_, replayed) = replay_all(&cfg);
    let count: usize = replayed.iter().map(|b| b.1.len()).sum();
    assert_eq!(count, sent.len());
}

/// Exported segments in `dir`, oldest first, with their first sequence numbers.
fn done_segments(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut out: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "done"))
        .map(|p| {
            let name = p.file_stem().expect("name").to_string_lossy().into_owned();
            let seq = name.trim_start_matches("seg-").parse().expect("sequence");
            (seq, p)
        })
        .collect();
    out.sort();
    out
}

fn age(path: &std::path::Path, by: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_modified(std::time::SystemTime::now() - by)
        .expect("set mtime");
}

#[tokio::test]
async fn segments_past_the_retention_are_deleted_and_their_parquet_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 200);
    let (log, _) = replay_all(&cfg);
    let mut sent = Vec::new();
    for n in 0..8 {
        let batch = vec![event(2, n, SEPT_1 + n as i64)];
        log.append(batch.clone()).await.expect("append");
        sent.extend(batch);
    }
    drop(log);
    // Wait until every batch is exported (a reopen exports what the last run left open).
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_exported(dir.path()).expect("parquet").len() < sent.len() {
        assert!(Instant::now() < deadline, "export did not finish");
        let _ = replay_all(&cfg);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = done_segments(dir.path());
    assert!(done.len() >= 3, "{done:?}");

    // The older half is three days old; the retention is one day.
    let (expired, kept) = done.split_at(done.len() / 2);
    for (_, path) in expired {
        age(path, Duration::from_secs(3 * 86_400));
    }
    let retained = EventLogConfig {
        retention: Some(Duration::from_secs(86_400)),
        ..cfg.clone()
    };
    let mut seen = Vec::new();
    let (log, replayed) = EventLog::open(&retained, 0, |seq, record| {
        seen.push((seq, events_of(record)))
    })
    .expect("open");
    assert_eq!(replayed.expired_segments, expired.len());
    assert!(expired.iter().all(|(_, p)| !p.exists()), "expired deleted");
    assert!(kept.iter().all(|(_, p)| p.exists()), "recent kept");
    // Replay starts where the oldest kept segment does; numbering goes on.
    let first_kept = kept[0].0;
    assert!(first_kept > 1);
    let seqs: Vec<u64> = seen.iter().map(|b| b.0).collect();
    assert_eq!(seqs, (first_kept..=8).collect::<Vec<_>>());
    assert_eq!(
        log.append(vec![event(2, 8, SEPT_1)]).await.expect("append"),
        9
    );
    // Training data outlives the log.
    let mut exported = read_exported(dir.path()).expect("parquet");
    exported.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    exported.dedup();
    assert!(sent.iter().all(|e| exported.contains(e)));

    // While running, each export deletes what has expired since.
    for (_, path) in kept {
        age(path, Duration::from_secs(3 * 86_400));
    }
    for n in 9..14 {
        log.append(vec![event(2, n, SEPT_1)]).await.expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    // (An empty segment a reopen made is made again under the same name: leave those out.)
    while kept.iter().any(|(seq, p)| *seq <= 8 && p.exists()) {
        assert!(
            Instant::now() < deadline,
            "expired segments not deleted while running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn erasing_a_user_rewrites_closed_segments_and_exports_and_survives_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments: the user's events spread over several, some exported already.
    let cfg = config(dir.path(), 400);
    let (log, _) = replay_all(&cfg);
    for n in 0..30 {
        log.append(vec![event(n % 3, n, SEPT_1 + n as i64)])
            .await
            .expect("append");
    }
    let forget_seq = log.log_forget("user-1").await.expect("forget");
    assert_eq!(forget_seq, 31);
    let erased = log.erase_user("user-1").await.expect("erase");
    assert_eq!(erased.log_events, 10, "{erased:?}");
    assert!(erased.log_segments >= 2, "{erased:?}");
    // New activity after the erasure is kept.
    log.append(vec![event(1, 99, SEPT_1 + 99)])
        .await
        .expect("append");
    drop(log);

    let exported = read_exported(dir.path()).expect("parquet");
    assert!(!exported.is_empty());
    assert!(
        exported.iter().all(|e| e.user_id != "user-1"),
        "no exported row of the user"
    );
    // Every closed segment was exported before the erasure ran (one thread, in order).
    assert_eq!(erased.exported_rows, 10, "{erased:?}");
    let mut records = Vec::new();
    let (_, replayed) =
        EventLog::open(&cfg, 0, |seq, record| records.push((seq, record.clone()))).expect("reopen");
    assert_eq!(replayed.last_seq, 32);
    let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=32).collect::<Vec<_>>(),
        "no sequence number lost"
    );
    let users: Vec<(u64, String)> = records
        .iter()
        .flat_map(|(seq, r)| events_of(r).into_iter().map(move |e| (*seq, e.user_id)))
        .filter(|(_, u)| u == "user-1")
        .collect();
    assert_eq!(users, [(32, "user-1".to_owned())], "only what came after");
    assert_eq!(records[30].1, Logged::ForgetUser("user-1".into()));
    assert!(
        records
            .iter()
            .flat_map(|(_, r)| events_of(r))
            .filter(|e| e.user_id == "user-0")
            .count()
            == 10,
        "others untouched"
    );
}
