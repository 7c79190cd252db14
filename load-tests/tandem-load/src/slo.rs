//! tandem's SLO gate: fail a load test (exit status 1, after the report is written) when p99
//! latency or the error rate is over budget, so CI and scripts need no report parsing.

use std::time::Duration;

use crate::duration::format_nano_unit;
use crate::report::Report;

/// Budgets; unset ones are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloGate {
    pub max_p99: Option<Duration>,
    /// Fraction of calls not OK, 0..=1.
    pub max_error_rate: Option<f64>,
}

impl SloGate {
    /// Whether any budget is set.
    pub fn is_set(&self) -> bool {
        self.max_p99.is_some() || self.max_error_rate.is_some()
    }

    /// One message per violated budget, saying by how much; empty when all are met.
    pub fn check(&self, report: &Report) -> Vec<String> {
        let mut violations = Vec::new();
        if let Some(max) = self.max_p99 {
            let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
            match report.percentile(99) {
                Some(p99) if p99 > max_ns => violations.push(format!(
                    "p99 latency {} exceeds --max-p99 {} by {}",
                    format_nano_unit(p99),
                    format_nano_unit(max_ns),
                    format_nano_unit(p99 - max_ns)
                )),
                Some(_) => {}
                None => violations.push(format!(
                    "p99 latency unknown: no successful calls (--max-p99 {})",
                    format_nano_unit(max_ns)
                )),
            }
        }
        if let Some(max) = self.max_error_rate {
            if report.count == 0 {
                violations.push(format!(
                    "error rate unknown: no calls completed (--max-error-rate {max})"
                ));
            } else {
                let errors = report.error_count();
                let rate = errors as f64 / report.count as f64;
                if rate > max {
                    violations.push(format!(
                        "error rate {:.2}% ({errors} of {} calls) exceeds --max-error-rate {:.2}% by {:.2} percentage points",
                        rate * 100.0,
                        report.count,
                        max * 100.0,
                        (rate - max) * 100.0
                    ));
                }
            }
        }
        violations
    }
}

/// Parses a `--max-error-rate` fraction in 0..=1 (a clap value parser).
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!(
            "{v} is not a fraction between 0 and 1 (0.01 means 1%)"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::report::{EndReason, Stats, error_string};
    use tonic::Code;

    fn report(ok_ms: &[u64], errors: u64) -> Report {
        let mut s = Stats::new();
        for ms in ok_ms {
            s.record(Duration::from_millis(*ms), Code::Ok, None, false);
        }
        for _ in 0..errors {
            s.record(
                Duration::from_millis(1),
                Code::Unavailable,
                Some(error_string(Code::Unavailable, "x")),
                false,
            );
        }
        let cfg = Settings {
            call: Some("a.B.C".into()),
            host: Some("h:1".into()),
            ..Default::default()
        }
        .resolve(true);
        let Ok(cfg) = cfg else { panic!("config") };
        Report::build(&cfg, s, Duration::from_secs(1), EndReason::Normal, false)
    }

    #[test]
    fn gate_says_which_and_by_how_much() {
        let r = report(&[10; 99], 1);
        let gate = SloGate {
            max_p99: Some(Duration::from_millis(5)),
            max_error_rate: Some(0.001),
        };
        let v = gate.check(&r);
        assert_eq!(v.len(), 2);
        assert!(
            v[0].contains("p99 latency 10.00 ms exceeds --max-p99 5.00 ms by 5.00 ms"),
            "{v:?}"
        );
        assert!(v[1].contains("error rate 1.00% (1 of 100 calls)"), "{v:?}");
        let ok = SloGate {
            max_p99: Some(Duration::from_millis(20)),
            max_error_rate: Some(0.01),
        };
        assert!(ok.check(&r).is_empty());
        assert!(
            !SloGate::default()
                .check(&report(&[], 3))
                .iter()
                .any(|_| true)
        );
        assert_eq!(ok.check(&report(&[], 3)).len(), 2);
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.01"), Ok(0.01));
        assert!(parse_fraction("5").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
