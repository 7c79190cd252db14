//! Restart time of the gateway's user state: full event-log replay against checkpoint + tail.
//!
//! cargo run --release -p tandem-recommend --example restart_bench -- [users] [events] [dir]
//!
//! Writes a log of `events` events (default 20,000,000) over `users` users (default
//! 1,000,000) on a synthetic 50,000-item catalog, then times: a start that replays the whole
//! log, writing a checkpoint, a start that loads the checkpoint and replays a 1 % tail, and
//! erasing one user (ForgetUser: every segment read, those holding the user rewritten).

use std::sync::Arc;
use std::time::Instant;

use tandem_catalog::Catalog;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_events::{EventLog, EventLogConfig, LoggedEvent};
use tandem_personalization::{EventKind, InMemoryState, StateLimits, TrendingConfig};
use tandem_recommend::{EventIntake, StateWriter, checkpoint_dir};

const ITEMS: usize = 50_000;
const BATCH: usize = 5_000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1 << 20) as f64)
}

fn append(
    log: &EventLog,
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    users: u64,
    range: std::ops::Range<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    for n in range {
        // A fixed mix: mostly views, some clicks, few purchases; users and items spread.
        let user = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % users;
        let item = (n.wrapping_mul(2_654_435_761) >> 7) % ITEMS as u64;
        batch.push(LoggedEvent {
            event_id: String::new(),
            user_id: format!("user-{user}"),
            item_id: catalog.item_id(item as u32).to_owned(),
            kind: match n % 20 {
                0 => EventKind::Purchase,
                1..=4 => EventKind::Click,
                _ => EventKind::View,
            },
            timestamp_ms: 1_700_000_000_000 + n as i64,
        });
        if batch.len() == BATCH {
            rt.block_on(log.append(std::mem::take(&mut batch)))
                .expect("append");
        }
    }
    if !batch.is_empty() {
        rt.block_on(log.append(batch)).expect("append");
    }
}

fn open(
    config: &EventLogConfig,
    catalog: &Arc<Catalog>,
    checkpoints: bool,
) -> (EventIntake, Arc<InMemoryState>, f64) {
    let state = Arc::new(InMemoryState::new(
        StateLimits {
            events_per_user: 100,
            max_users: 10_000_000,
            max_bytes: 16 << 30,
            idle_ttl_ms: None,
        },
        TrendingConfig::default(),
    ));
    let started = Instant::now();
    let (intake, replayed) = EventIntake::open(
        config,
        catalog.clone(),
        StateWriter::Local(state.clone()),
        100_000,
        checkpoints.then(|| checkpoint_dir(&config.dir)),
    )
    .expect("open");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  replayed {} events in {} batches ({} segments skipped), {} users, {seconds:.2} s, RSS {:.0} MiB",
        replayed.events,
        replayed.batches,
        replayed.skipped_segments,
        state.users(),
        rss_mib()
    );
    (intake, state, seconds)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let users: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let root = args.next().map_or_else(
        || tempfile::tempdir().expect("tempdir").keep(),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&root).expect("dir");
    let path = root.join("items.parquet");
    write_parquet(&synthetic_batch(ITEMS, 8, 20, 3), &path).expect("catalog");
    let catalog = Arc::new(Catalog::open(&path).expect("catalog"));
    let config = EventLogConfig {
        dir: root.join("events"),
        segment_bytes: 64 << 20,
        export: false,
        retention: None,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tail = events / 100;
    let started = Instant::now();
    {
        let (log, _) = EventLog::open(&config, 0, |_, _| {}).expect("log");
        append(&log, &rt, &catalog, users, 0..events - tail);
    }
    println!(
        "wrote {} events over {users} users in {:.1} s ({})",
        events - tail,
        started.elapsed().as_secs_f64(),
        config.dir.display()
    );

    println!("full replay:");
    let (intake, state, full_s) = open(&config, &catalog, true);
    // What a checkpoint holds events back for: copying the state (the write comes after).
    let started = Instant::now();
    let copied = state.snapshot().users.len();
    println!(
        "state copy for a checkpoint (events wait meanwhile): {copied} users in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let written = rt
        .block_on(intake.checkpoint())
        .expect("checkpoint")
        .expect("checkpoints on");
    println!(
        "checkpoint: {} users, {:.0} MiB, {:.2} s",
        written.users,
        written.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    drop((intake, state));
    {
        let (log, _) = EventLog::open(&config, written.seq, |_, _| {}).expect("log");
        append(&log, &rt, &catalog, users, events - tail..events);
    }
    println!("from the checkpoint, with a tail of {tail} events:");
    let (intake, _, fast_s) = open(&config, &catalog, true);
    println!(
        "full replay {full_s:.2} s, checkpoint + tail {fast_s:.2} s ({:.1} x faster)",
        full_s / fast_s
    );
    let started = Instant::now();
    let erased = rt
        .block_on(intake.forget_user("user-7", false))
        .expect("forget");
    println!(
        "ForgetUser(user-7): {} events removed, {} segments rewritten, checkpoint rewritten {}, {:.2} s",
        erased.log.log_events,
        erased.log.log_segments,
        erased.checkpoint,
        started.elapsed().as_secs_f64()
    );
}
