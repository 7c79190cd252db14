//! Per-version serving counters and latency histograms, cheap enough for every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Four buckets per power of two of microseconds, up to about 70 s.
const BUCKETS: usize = 4 * 26;

/// A lock-free latency histogram; quantiles are read as bucket upper bounds (≤ 19% high).
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let bucket = ((us.log2() * 4.0).floor() as usize).min(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 2f64.powf((i + 1) as f64 / 4.0);
            }
        }
        2f64.powf(BUCKETS as f64 / 4.0)
    }
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub rows: AtomicU64,
    pub runs: AtomicU64,
    pub failed_runs: AtomicU64,
    pub run_micros: AtomicU64,
    /// Queue to reply, per request.
    pub latency: Histogram,
    /// Queue to the start of its run, per request.
    pub queue_wait: Histogram,
}

impl Stats {
    pub(crate) fn record_run(&self, requests: usize, rows: usize, took: Duration, ok: bool) {
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.run_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if !ok {
            self.failed_runs.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: load(&self.requests),
            rows: load(&self.rows),
            runs: load(&self.runs),
            failed_runs: load(&self.failed_runs),
            run_seconds: load(&self.run_micros) as f64 / 1e6,
            latency_p50_us: self.latency.quantile_us(0.5),
            latency_p99_us: self.latency.quantile_us(0.99),
            queue_wait_p50_us: self.queue_wait.quantile_us(0.5),
            queue_wait_p99_us: self.queue_wait.quantile_us(0.99),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub rows: u64,
    pub runs: u64,
    pub failed_runs: u64,
    pub run_seconds: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub queue_wait_p50_us: f64,
    pub queue_wait_p99_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        let p50 = h.quantile_us(0.5);
        assert!((100.0..=120.0).contains(&p50), "{p50}");
        let p99 = h.quantile_us(0.99);
        assert!((100.0..=120.0).contains(&p99), "{p99}");
        let max = h.quantile_us(1.0);
        assert!((50_000.0..=60_000.0).contains(&max), "{max}");
    }
}
