//! The few statistics a report needs, at 95 %: written out because they are a handful of
//! lines each (`libm` gives `erfc`).

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A rate with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proportion {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// `successes / trials` with the Wilson score interval (sound at small counts and rates near
/// 0, where the normal interval is not).
pub fn wilson(successes: u64, trials: u64) -> Proportion {
    if trials == 0 {
        return Proportion {
            value: 0.0,
            low: 0.0,
            high: 1.0,
        };
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Proportion {
        value: p,
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    }
}

/// Two-sided p-value of "the two rates are equal" (pooled two-proportion z-test).
pub fn two_proportion_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    libm::erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Mean of per-trial values from their sum and sum of squares, with a 95 % normal interval.
pub(crate) fn mean_interval(sum: f64, squares: f64, trials: u64) -> (f64, f64, f64) {
    if trials == 0 {
        return (0.0, 0.0, 0.0);
    }
    let n = trials as f64;
    let mean = sum / n;
    let variance = if trials > 1 {
        ((squares - n * mean * mean) / (n - 1.0)).max(0.0)
    } else {
        0.0
    };
    let half = Z95 * (variance / n).sqrt();
    (mean, mean - half, mean + half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 10 of 100: Wilson 95 % interval 0.0552 to 0.1744.
        let p = wilson(10, 100);
        assert!(
            (p.low - 0.0552).abs() < 1e-3 && (p.high - 0.1744).abs() < 1e-3,
            "{p:?}"
        );
        let zero = wilson(0, 20);
        assert_eq!(zero.low, 0.0);
        assert!((zero.high - 0.1611).abs() < 1e-3, "{zero:?}");
    }

    #[test]
    fn two_proportion_test_matches_a_textbook_case() {
        // 120/1000 against 100/1000: z = 1.43, p = 0.153.
        let p = two_proportion_p_value(120, 1000, 100, 1000);
        assert!((p - 0.153).abs() < 2e-3, "{p}");
        assert!(two_proportion_p_value(200, 1000, 100, 1000) < 1e-9);
        assert_eq!(two_proportion_p_value(0, 0, 1, 10), 1.0);
    }

    #[test]
    fn mean_interval_of_constant_values_is_a_point() {
        assert_eq!(mean_interval(30.0, 90.0, 10), (3.0, 3.0, 3.0));
    }
}
