//! The ledger on a Recommend's path: one answer of 10 items noted (`shown`) while the ledger
//! holds its bound of impressions from many users, as a busy gateway's does.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_experiments::{ExperimentLedger, LedgerConfig};
use tandem_personalization::EventKind;

const USERS: u32 = 50_000;
const CATALOG: u32 = 1_000_000;
const K: u32 = 10;

fn items(answer: u32) -> Vec<u32> {
    (0..K)
        .map(|i| (answer.wrapping_mul(2_654_435_761).wrapping_add(i * 7_919)) % CATALOG)
        .collect()
}

fn ledger(c: &mut Criterion) {
    let ledger = ExperimentLedger::new(LedgerConfig::default());
    let users: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    // Full: 500,000 impressions held, the oldest expiring with each new answer.
    let mut answer = 0u32;
    let full = LedgerConfig::default().max_impressions as u32 / K + USERS;
    while answer < full {
        ledger.shown(
            &users[(answer % USERS) as usize],
            "a/1",
            &items(answer),
            1_000,
        );
        answer += 1;
    }
    c.bench_function("ledger/shown_10_items_at_500k_held", |b| {
        b.iter(|| {
            answer += 1;
            ledger.shown(
                black_box(&users[(answer % USERS) as usize]),
                "a/1",
                &items(answer),
                1_000,
            );
        });
    });
    c.bench_function("ledger/click_at_500k_held", |b| {
        b.iter(|| {
            answer += 1;
            let shown = answer.saturating_sub(USERS * 3);
            ledger.event(
                black_box(&users[(shown % USERS) as usize]),
                items(shown)[3],
                EventKind::Click,
                2_000,
                0.0,
            );
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = ledger
}
criterion_main!(benches);
