//! The served-feature log's writer: what one sampled answer costs to put on disk, for the
//! demo model's shape (200 candidates, 92 input values per row: two 32-wide vectors and 28
//! single values). At the default 1 % sample this is a hundredth of a Recommend's share.

use std::time::Duration;

use cpu_time::ProcessTime;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_events::{ServedCandidate, ServedFeature, ServedLog, ServedLogConfig, ServedRecord};

/// The gateway's allocator (tandem-server's), so that the writer's buffers cost here what
/// they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 200;
const RECORDS: usize = 100;

fn record(n: usize) -> ServedRecord {
    let mut features = vec![("user_vector", 32), ("item_embedding", 32)];
    let singles: Vec<String> = (0..28).map(|i| format!("f{i}")).collect();
    features.extend(singles.iter().map(|s| (s.as_str(), 1)));
    // Values as a model's inputs look: mostly distinct floats, some repeating.
    let mut x = n as u64 * 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f64::from((x % 100_000) as f32 / 1000.0)
    };
    ServedRecord {
        request_id: format!("{n:032x}"),
        user_id: format!("user-{}", n % 97),
        timestamp_ms: 1_800_000_000_000 + n as i64,
        model_version: "ranker/1".into(),
        candidates: (0..ROWS)
            .map(|i| ServedCandidate {
                item_id: format!("item-{:06}", (n * 31 + i * 7) % 50_000),
                retrieval_score: i as f32 / 200.0,
                score: 1.0 - i as f32 / 200.0,
                position: (i < 10).then_some(i as u32),
            })
            .collect(),
        features: features
            .iter()
            .map(|&(name, width)| ServedFeature {
                input: "features".into(),
                feature: name.into(),
                width,
                values: (0..ROWS * width).map(|_| next()).collect(),
            })
            .collect(),
    }
}

fn writes(c: &mut Criterion) {
    let records: Vec<ServedRecord> = (0..RECORDS).map(record).collect();
    let mut group = c.benchmark_group("served_log");
    group.sample_size(10);
    // Per record: offered, batched, encoded, compressed and written, the file closed at the
    // end. Process CPU, not wall time: the file's fsync waits on the disk, not the CPU.
    group.bench_function("write_100_answers_of_200_rows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = start(dir.path());
                let batch = records.clone();
                let started = ProcessTime::now();
                for r in batch {
                    assert!(log.offer(r));
                }
                drop(log);
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    // What the same 100 answers take on disk: the writer's settings trade CPU for bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = start(dir.path());
    for r in records {
        assert!(log.offer(r));
    }
    drop(log);
    println!(
        "served_log: {} bytes of files for {RECORDS} answers",
        bytes_under(dir.path())
    );
}

/// A log in `dir` that holds all of a run's answers in one file, closed when dropped.
fn start(dir: &std::path::Path) -> ServedLog {
    ServedLog::start(ServedLogConfig {
        dir: dir.to_owned(),
        queue: RECORDS,
        rows_per_file: 100_000,
        flush_interval: Duration::from_secs(3600),
    })
    .expect("served log")
}

fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                bytes_under(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

criterion_group!(benches, writes);
criterion_main!(benches);
