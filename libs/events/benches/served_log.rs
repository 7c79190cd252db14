//! The served-feature log's writer: what one sampled answer costs to put on disk, for the
//! demo model's shape (200 candidates, 92 input values per row: the user's 32-wide vector, the
//! item's 32-wide embedding, a 24-wide one-hot category and four single values). At the
//! default 1 % sample this is a hundredth of a Recommend's share.

use std::time::Duration;

use cpu_time::ProcessTime;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_catalog::testing::SplitMix;
use tandem_events::{ServedCandidate, ServedFeature, ServedLog, ServedLogConfig, ServedRecord};

/// The gateway's allocator (tandem-server's), so that the writer's buffers cost here what
/// they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 200;
const RECORDS: usize = 100;
const ITEMS: u64 = 50_000;
const CATEGORIES: usize = 24;

/// A model's f32 input, as the log holds it (f64): uniform in [-1, 1).
fn input(rng: &mut SplitMix) -> f64 {
    f64::from(rng.unit() * 2.0 - 1.0)
}

/// One feature's values for every row, `value` appending a row's `width` values.
fn feature(name: &str, width: usize, mut value: impl FnMut(usize, &mut Vec<f64>)) -> ServedFeature {
    let mut values = Vec::with_capacity(ROWS * width);
    for row in 0..ROWS {
        value(row, &mut values);
    }
    ServedFeature {
        input: "features".into(),
        feature: name.into(),
        width,
        values,
    }
}

/// Answers as the gateway logs them: each from another user (one of 97), the candidates drawn
/// with a long tail (popular items recur across answers, as in a shop), each item's embedding,
/// category and attributes the same wherever it appears, the user's vector on all its rows.
fn record(n: usize) -> ServedRecord {
    let mut draw = SplitMix::new(n as u64 + 1);
    let mut items: Vec<u64> = Vec::with_capacity(ROWS);
    while items.len() < ROWS {
        let item = (ITEMS as f64 * f64::from(draw.unit()).powi(3)) as u64;
        if !items.contains(&item) {
            items.push(item);
        }
    }
    let user = n % 97;
    let mut user_numbers = SplitMix::new(1_000_000 + user as u64);
    let user_vector: Vec<f64> = (0..32).map(|_| input(&mut user_numbers)).collect();
    let per_item = |item: u64, width: usize, out: &mut Vec<f64>| {
        let mut numbers = SplitMix::new(2_000_000 + item);
        out.extend((0..width).map(|_| input(&mut numbers)));
    };
    let features = vec![
        feature("user_vector", 32, |_, out| {
            out.extend_from_slice(&user_vector)
        }),
        feature("item_embedding", 32, |row, out| {
            per_item(items[row], 32, out)
        }),
        feature("user_item_dot", 1, |_, out| out.push(input(&mut draw))),
        feature("item_numeric:price", 1, |row, out| {
            out.push(f64::from((items[row] % 9_000) as f32 / 100.0))
        }),
        feature("item_numeric:popularity", 1, |row, out| {
            out.push(f64::from(1.0 / (1.0 + items[row] as f32)))
        }),
        feature("item_numeric:in_stock", 1, |row, out| {
            out.push(if items[row].is_multiple_of(10) {
                0.0
            } else {
                1.0
            })
        }),
        feature("item_category_one_hot", CATEGORIES, |row, out| {
            let category = (items[row] % CATEGORIES as u64) as usize;
            out.extend((0..CATEGORIES).map(|c| if c == category { 1.0 } else { 0.0 }))
        }),
    ];
    ServedRecord {
        request_id: format!("{n:032x}"),
        user_id: format!("user-{user}"),
        timestamp_ms: 1_800_000_000_000 + n as i64,
        model_version: "ranker/1".into(),
        candidates: items
            .iter()
            .enumerate()
            .map(|(i, item)| ServedCandidate {
                item_id: format!("item-{item:06}"),
                retrieval_score: i as f32 / 200.0,
                score: 1.0 - i as f32 / 200.0,
                position: (i < 10).then_some(i as u32),
            })
            .collect(),
        features,
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
