//! Event log appends on the local disk: one producer (each batch pays a whole fsync) and 32
//! concurrent producers (group commit: batches that arrive during an fsync share the next one).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_events::{EventLog, EventLogConfig, LoggedEvent};
use tandem_personalization::EventKind;

fn batch(n: usize) -> Vec<LoggedEvent> {
    (0..n)
        .map(|i| LoggedEvent {
            event_id: format!("e-{i}"),
            user_id: format!("user-{}", i % 97),
            item_id: format!("item-{i:06}"),
            kind: EventKind::Click,
            timestamp_ms: 1_790_000_000_000 + i as i64,
        })
        .collect()
}

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EventLogConfig {
        dir: dir.path().to_owned(),
        segment_bytes: 256 << 20,
        export: false,
        retention: None,
    };
    let (log, _) = EventLog::open(&config, 0, |_, _| {}).expect("open");
    let log = Arc::new(log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let events = batch(10);

    let mut group = c.benchmark_group("event_log");
    group.sample_size(20);
    group.throughput(Throughput::Elements(10));
    group.bench_function("append/1 producer/10 events", |b| {
        b.iter(|| {
            runtime
                .block_on(log.append(events.clone()))
                .expect("append")
        })
    });
    group.throughput(Throughput::Elements(32 * 10));
    group.bench_function("append/32 producers/10 events each", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let calls: Vec<_> = (0..32)
                    .map(|_| {
                        let (log, events) = (log.clone(), events.clone());
                        tokio::spawn(async move { log.append(events).await })
                    })
                    .collect();
                for call in calls {
                    call.await.expect("task").expect("append");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
