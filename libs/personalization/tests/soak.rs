//! A million distinct users through the in-memory store leave its memory within the budget.
//! Alone in its binary: it reads the process's resident set size.

use tandem_personalization::{EventKind, InMemoryState, StateLimits, TrendingConfig, UserEvent};

fn rss_bytes() -> usize {
    // statm: size resident shared ... in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[test]
fn a_million_distinct_users_stay_within_the_budget() {
    const BUDGET: usize = 64 << 20;
    let store = InMemoryState::new(
        StateLimits {
            events_per_user: 100,
            max_users: 1_000_000,
            max_bytes: BUDGET,
            idle_ttl_ms: None,
        },
        TrendingConfig::default(),
    );
    let before = rss_bytes();
    let mut peak = 0;
    for user in 0..1_000_000u32 {
        let id = format!("anonymous-{user:08}-{}", user.wrapping_mul(2_654_435_761));
        let events: Vec<UserEvent> = (0..3)
            .map(|i| UserEvent {
                item: (user + i) % 5_000,
                kind: if i == 2 {
                    EventKind::Purchase
                } else {
                    EventKind::View
                },
                timestamp_ms: 1_700_000_000_000 + i64::from(user),
            })
            .collect();
        store.record(&id, &events);
        store.record_shown(&id, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1_700_000_000_000);
        if user % 50_000 == 0 {
            assert!(store.bytes() <= BUDGET, "{} bytes counted", store.bytes());
            peak = peak.max(rss_bytes());
        }
    }
    let users = store.users();
    let grown = peak.max(rss_bytes()).saturating_sub(before);
    eprintln!(
        "1,000,000 users recorded: {users} kept, {} MiB counted, RSS grew {} MiB (budget {} MiB)",
        store.bytes() >> 20,
        grown >> 20,
        BUDGET >> 20
    );
    assert!(store.bytes() <= BUDGET);
    assert!(
        users > 50_000 && users < 1_000_000,
        "{users} users kept: eviction should keep many but not all"
    );
    assert!(
        grown <= BUDGET,
        "RSS grew {} MiB for a {} MiB budget",
        grown >> 20,
        BUDGET >> 20
    );
}
