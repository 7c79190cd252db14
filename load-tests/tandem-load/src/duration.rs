//! Go `time.ParseDuration` syntax, because ghz configs and flags are written in it
//! ("30s", "1m30s", "1.5s", "250ms", "0").

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("missing unit in duration {0:?} (use ns, us, ms, s, m or h, e.g. \"30s\")")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit { unit: String, input: String },
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go duration: a sequence of decimal numbers with units, e.g. "1h2m3.5s".
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None => s,
    };
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    input: input.to_string(),
                });
            }
        };
        total_ns += value * scale;
        rest = next;
    }
    // Go caps durations at ~292 years (i64 nanoseconds).
    if !total_ns.is_finite() || total_ns > i64::MAX as f64 {
        return Err(DurationError::Overflow(input.to_string()));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Formats like Go's `Duration.String()` ("1m30s", "250ms", "1.5µs", "0s"), so echoed
/// values read the way ghz users write them.
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_float(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_float(ns as f64 / 1e6));
    }
    let total_secs = ns as f64 / 1e9;
    let hours = (ns / 3_600_000_000_000) as u64;
    let minutes = ((ns / 60_000_000_000) % 60) as u64;
    let secs = total_secs - (hours as f64 * 3600.0) - (minutes as f64 * 60.0);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", trim_float(secs)));
    out
}

/// Human latency for summaries: "850 ns", "12.34 ms", "1.20 s" (ghz's formatNanoUnit).
pub fn format_nano_unit(ns: u64) -> String {
    if ns < 10_000 {
        return format!("{ns} ns");
    }
    let ms = ns as f64 / 1e6;
    if ms < 1000.0 {
        return format!("{ms:.2} ms");
    }
    format!("{:.2} s", ms / 1000.0)
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("2h45m"), Ok(Duration::from_secs(9900)));
    }

    #[test]
    fn rejects_bad_durations() {
        assert!(matches!(
            parse_go_duration("30"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_duration("30 seconds"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go_duration("-1s"),
            Err(DurationError::Negative)
        ));
        assert!(matches!(parse_go_duration(""), Err(DurationError::Empty)));
        assert!(matches!(
            parse_go_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("1.2.3s"),
            Err(DurationError::Invalid(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_nano_unit(1_234_567), "1.23 ms");
    }
}
