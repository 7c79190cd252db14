//! When each request is meant to be sent. With a rate (rps, or a step/line schedule) the send
//! times are fixed in advance, independent of how fast the server answers: that is what makes
//! latency measured from them free of coordinated omission. Without a rate each worker sends
//! as soon as its previous call returns (closed loop), like ghz.
//!
//! The step and line schedules follow ghz's `load` package: the rate starts at `load-start`,
//! changes by `load-step` every `load-step-duration` (a line is a step of one second), stops
//! changing at `load-end` or after `load-max-duration`, and holds there.

use std::time::Duration;

use crate::config::{LoadSchedule, RunConfig};

/// One request to send: its number (from 0, for round-robin data and templates) and, in open
/// loop, its intended send time as an offset from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub number: u64,
    pub intended: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Rate {
    Closed,
    Const { rps: u64 },
    Step(StepRate),
}

/// Hands out ticks until the run's total, duration or schedule is used up.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Rate,
    /// Requests to send when no duration is set.
    max_count: Option<u64>,
    /// No request is scheduled (open loop) or started (closed loop) at or after this offset.
    duration: Option<Duration>,
    /// Wall-clock cap (ghz `max-duration`): whichever of it and `total` comes first.
    max_duration: Option<Duration>,
    issued: u64,
}

impl Pacer {
    /// The pacer for a run's settings.
    pub fn from_config(cfg: &RunConfig) -> Self {
        let rate = match cfg.load.schedule {
            LoadSchedule::Const if cfg.rps > 0 => Rate::Const { rps: cfg.rps },
            LoadSchedule::Const => Rate::Closed,
            LoadSchedule::Step | LoadSchedule::Line => Rate::Step(StepRate::new(
                cfg.load.start,
                cfg.load.step,
                cfg.load.end,
                cfg.load.step_duration,
                cfg.load.max_duration,
            )),
        };
        Self {
            rate,
            max_count: cfg.duration.is_none().then_some(cfg.total),
            duration: cfg.duration,
            max_duration: cfg.max_duration,
            issued: 0,
        }
    }

    /// Requests handed out so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Whether send times come from the schedule (open loop).
    pub fn is_open_loop(&self) -> bool {
        !matches!(self.rate, Rate::Closed)
    }

    /// The next request, or `None` when the run is over. `elapsed` is the time since the run
    /// started (closed loop stops on it; open loop stops on the schedule alone, so a slow
    /// server cannot reduce the number of requests).
    pub fn next(&mut self, elapsed: Duration) -> Option<Tick> {
        if self.max_count.is_some_and(|n| self.issued >= n) {
            return None;
        }
        if self.max_duration.is_some_and(|x| elapsed >= x) {
            return None;
        }
        let intended = match &mut self.rate {
            Rate::Closed => {
                if self.duration.is_some_and(|z| elapsed >= z) {
                    return None;
                }
                None
            }
            Rate::Const { rps } => {
                let ns = u128::from(self.issued) * 1_000_000_000 / u128::from(*rps);
                Some(Duration::from_nanos(u64::try_from(ns).ok()?))
            }
            Rate::Step(s) => Some(s.time_of(self.issued)?),
        };
        if let Some(t) = intended
            && (self.duration.is_some_and(|z| t >= z) || self.max_duration.is_some_and(|x| t >= x))
        {
            return None;
        }
        self.issued += 1;
        Some(Tick {
            number: self.issued - 1,
            intended,
        })
    }
}

/// ghz's step pacer as a piecewise-constant rate; request `i` is sent when the integral of the
/// rate reaches `i`.
#[derive(Debug, Clone)]
struct StepRate {
    start: f64,
    step: f64,
    step_secs: f64,
    /// From here on the rate is `stop_rate`.
    const_at: Option<f64>,
    stop_rate: f64,
    // Iteration state: the current segment and the hits scheduled before it.
    seg_start: f64,
    seg_end: f64,
    seg_rate: f64,
    hits_before: f64,
}

const EPS: f64 = 1e-9;

impl StepRate {
    fn new(
        start: u64,
        step: i64,
        end: u64,
        step_duration: Duration,
        max_duration: Duration,
    ) -> Self {
        let (start_f, step_f) = (start as f64, step as f64);
        let step_secs = step_duration.as_secs_f64().max(1e-6);
        let rate_at_step = |k: f64| (start_f + step_f * k).max(0.0);
        let (const_at, stop_rate) = if !max_duration.is_zero() {
            let c = max_duration.as_secs_f64();
            // ghz: without an end, hold the rate reached when the max duration ends.
            let stop = if end == 0 {
                rate_at_step((c / step_secs + EPS).floor())
            } else {
                end as f64
            };
            (Some(c), stop)
        } else if end > 0 {
            // ghz: the first step boundary whose rate passes the end; from there, the end.
            let end_f = end as f64;
            let mut k = 0.0;
            let at = loop {
                let r = rate_at_step(k);
                let passed = if step > 0 { r > end_f } else { r < end_f };
                if passed || k > 1e7 {
                    break k * step_secs;
                }
                k += 1.0;
            };
            (Some(at), end_f)
        } else {
            (None, 0.0)
        };
        let mut s = Self {
            start: start_f,
            step: step_f,
            step_secs,
            const_at,
            stop_rate,
            seg_start: 0.0,
            seg_end: 0.0,
            seg_rate: 0.0,
            hits_before: 0.0,
        };
        (s.seg_end, s.seg_rate) = s.segment_from(0.0);
        s
    }

    /// End and rate of the segment starting at `t0`.
    fn segment_from(&self, t0: f64) -> (f64, f64) {
        if let Some(c) = self.const_at
            && t0 >= c - EPS
        {
            return (f64::INFINITY, self.stop_rate);
        }
        let k = (t0 / self.step_secs + EPS).floor();
        let mut end = (k + 1.0) * self.step_secs;
        if let Some(c) = self.const_at {
            end = end.min(c);
        }
        ((end), (self.start + self.step * k).max(0.0))
    }

    /// Send time of request `i`; `None` once the rate has dropped to zero for good.
    /// Requests are asked for in order, so the segment only moves forward.
    fn time_of(&mut self, i: u64) -> Option<Duration> {
        let i = i as f64;
        for _ in 0..10_000_000 {
            let capacity = if self.seg_end.is_infinite() {
                f64::INFINITY
            } else {
                self.hits_before + self.seg_rate * (self.seg_end - self.seg_start)
            };
            if self.seg_rate > 0.0 && i < capacity - EPS {
                let t = self.seg_start + (i - self.hits_before) / self.seg_rate;
                return Some(Duration::from_secs_f64(t.max(0.0)));
            }
            let stuck_at_zero = self.seg_rate <= 0.0
                && (self.seg_end.is_infinite() || (self.step <= 0.0 && self.const_at.is_none()));
            if stuck_at_zero {
                return None;
            }
            self.hits_before = capacity;
            self.seg_start = self.seg_end;
            (self.seg_end, self.seg_rate) = self.segment_from(self.seg_start);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn pacer(json: &str) -> Pacer {
        let base = r#"{"call": "a.B.C", "host": "h:1", "#.to_string() + json + "}";
        let cfg = Settings::from_json_str(&base, "test").and_then(|s| s.resolve(true));
        match cfg {
            Ok(cfg) => Pacer::from_config(&cfg),
            Err(e) => panic!("bad test config: {e}"),
        }
    }

    fn all_times(p: &mut Pacer) -> Vec<f64> {
        std::iter::from_fn(|| p.next(Duration::ZERO))
            .take(100_000)
            .map(|t| t.intended.map_or(-1.0, |d| d.as_secs_f64()))
            .collect()
    }

    #[test]
    fn const_rate_fixed_times() {
        let mut p = pacer(r#""rps": 200, "duration": "1s""#);
        let times = all_times(&mut p);
        assert_eq!(times.len(), 200);
        assert!((times[1] - 0.005).abs() < 1e-9);
        assert!((times[199] - 0.995).abs() < 1e-9);
        let mut p = pacer(r#""rps": 10, "total": 7"#);
        assert_eq!(all_times(&mut p).len(), 7);
    }

    #[test]
    fn closed_loop_counts_and_stops_on_duration() {
        let mut p = pacer(r#""total": 3"#);
        assert!(!p.is_open_loop());
        assert_eq!(
            p.next(Duration::ZERO),
            Some(Tick {
                number: 0,
                intended: None
            })
        );
        assert_eq!(p.next(Duration::ZERO).map(|t| t.number), Some(1));
        assert_eq!(p.next(Duration::ZERO).map(|t| t.number), Some(2));
        assert_eq!(p.next(Duration::ZERO), None);
        let mut p = pacer(r#""duration": "1s""#);
        assert!(p.next(Duration::from_millis(999)).is_some());
        assert!(p.next(Duration::from_secs(1)).is_none());
    }

    /// Send times in [a, b) seconds.
    fn count_in(times: &[f64], a: f64, b: f64) -> usize {
        times
            .iter()
            .filter(|t| **t >= a - 1e-9 && **t < b - 1e-9)
            .count()
    }

    #[test]
    fn step_schedule_follows_ghz() {
        // 10 rps for 1s, 20 for 1s, then capped at 25.
        let mut p = pacer(
            r#""load-schedule": "step", "load-start": 10, "load-step": 10, "load-end": 25,
               "load-step-duration": "1s", "duration": "4s""#,
        );
        let times = all_times(&mut p);
        let in_window = |a: f64, b: f64| count_in(&times, a, b);
        assert_eq!(in_window(0.0, 1.0), 10);
        assert_eq!(in_window(1.0, 2.0), 20);
        assert_eq!(in_window(2.0, 3.0), 25);
        assert_eq!(in_window(3.0, 4.0), 25);
    }

    #[test]
    fn line_and_max_duration() {
        // Slope 5/s from 5 for 2s, then held at the rate reached (15).
        let mut p = pacer(
            r#""load-schedule": "line", "load-start": 5, "load-step": 5,
               "load-max-duration": "2s", "duration": "4s""#,
        );
        let times = all_times(&mut p);
        let in_window = |a: f64, b: f64| count_in(&times, a, b);
        assert_eq!(in_window(0.0, 1.0), 5);
        assert_eq!(in_window(1.0, 2.0), 10);
        assert_eq!(in_window(2.0, 3.0), 15);
        assert_eq!(in_window(3.0, 4.0), 15);
    }

    #[test]
    fn step_down_to_zero_ends() {
        let mut p = pacer(
            r#""load-schedule": "step", "load-start": 20, "load-step": -10,
               "load-step-duration": "1s", "total": 1000"#,
        );
        assert_eq!(all_times(&mut p).len(), 30);
    }
}
