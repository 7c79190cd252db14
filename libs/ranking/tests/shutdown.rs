//! Dropping a ranker releases its sessions before the drop returns. Its own test binary: it
//! counts this process's ranking worker threads, which other tests would add to.

mod common;

use common::{batching, catalog, config, reference, test_data};
use tandem_ranking::Ranker;

/// This process's threads named by the batcher (`rank-VERSION-I`).
fn ranking_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("rank-"))
        .count()
}

#[test]
fn dropping_a_ranker_joins_its_workers_before_returning() {
    let catalog = catalog();
    let model = test_data().join("models/ranker");
    let request = reference("rank_reference.json").cases[0].request(&catalog);
    // Several rounds: a detached worker's exit races the count, one round may miss it.
    for round in 0..30 {
        let mut cfg = config(batching());
        cfg.sessions = 3;
        let ranker = Ranker::open(&model, catalog.clone(), cfg, None).expect("load");
        let scores = ranker.rank_blocking(request.clone()).expect("rank").scores;
        assert!(!scores.is_empty());
        // A new thread names itself once it runs: wait for all three.
        let started = std::time::Instant::now();
        while ranking_workers() < 3 && started.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(ranking_workers(), 3, "one worker per session while serving");

        drop(ranker);
        // The drop itself joined them, so the sessions were released by this thread (a CUDA
        // session released by a detached worker while the process exits crashes in the CUDA
        // provider's teardown). The 200 µs only cover the kernel's removal of a joined
        // thread's /proc entry, far less than a detached worker takes to release sessions.
        std::thread::sleep(std::time::Duration::from_micros(200));
        assert_eq!(
            ranking_workers(),
            0,
            "round {round}: workers still running after the drop"
        );
    }
}
