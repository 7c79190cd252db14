//! RFC 3339 timestamps in UTC, the format ghz writes `date` and template timestamps in, without
//! pulling in a calendar crate for one function.

use std::time::SystemTime;

/// `2024-05-01T12:00:00Z`, or with nanoseconds `2024-05-01T12:00:00.123456789Z`.
pub fn rfc3339(t: SystemTime, with_nanos: bool) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    if with_nanos {
        format!(
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:09}Z",
            since.subsec_nanos()
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t, false), "2000-02-29T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_714_564_800, 5);
        assert_eq!(rfc3339(t, true), "2024-05-01T12:00:00.000000005Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH, false),
            "1970-01-01T00:00:00Z"
        );
    }
}
