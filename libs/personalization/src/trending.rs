//! Items trending now: type-weighted event counts that halve every `half_life_ms`, updated on
//! every event. Scores are kept scaled by `2^((t - reference) / half_life)` so that adding an
//! event is one addition and no stored score needs decaying; ratios between items are what
//! the decayed counts' ratios would be.

use std::collections::HashMap;

use tandem_catalog::ItemIdx;

use crate::{EventKind, UserEvent};

/// How events count towards trending.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendingConfig {
    pub half_life_ms: i64,
    /// Weight of view, click, add-to-cart and purchase events.
    pub type_weights: [f64; 4],
}

impl Default for TrendingConfig {
    fn default() -> Self {
        Self {
            half_life_ms: 6 * 3_600_000,
            type_weights: [1.0, 2.0, 4.0, 8.0],
        }
    }
}

/// Rescale once scaled scores grow past 2^RESCALE_EXPONENT (keeps f64 far from overflow).
const RESCALE_EXPONENT: f64 = 64.0;

#[derive(Debug, Clone)]
pub(crate) struct Trending {
    config: TrendingConfig,
    reference_ms: i64,
    /// Newest event time seen: scores are reported as decayed counts at this moment.
    latest_ms: i64,
    scaled: HashMap<ItemIdx, f64>,
}

impl Trending {
    pub(crate) fn new(config: TrendingConfig) -> Self {
        Self {
            config,
            reference_ms: i64::MIN,
            latest_ms: i64::MIN,
            scaled: HashMap::new(),
        }
    }

    fn weight(&self, kind: EventKind) -> f64 {
        self.config.type_weights[match kind {
            EventKind::View => 0,
            EventKind::Click => 1,
            EventKind::AddToCart => 2,
            EventKind::Purchase => 3,
        }]
    }

    fn exponent(&self, t: i64) -> f64 {
        (t - self.reference_ms) as f64 / self.config.half_life_ms.max(1) as f64
    }

    pub(crate) fn record(&mut self, event: &UserEvent) {
        if self.reference_ms == i64::MIN {
            self.reference_ms = event.timestamp_ms;
        }
        self.latest_ms = self.latest_ms.max(event.timestamp_ms);
        if self.exponent(event.timestamp_ms) > RESCALE_EXPONENT {
            let factor = (-self.exponent(event.timestamp_ms)).exp2();
            self.scaled.retain(|_, s| {
                *s *= factor;
                // Below a millionth of an event: forgotten.
                *s > 1e-6
            });
            self.reference_ms = event.timestamp_ms;
        }
        let add = self.weight(event.kind) * self.exponent(event.timestamp_ms).exp2();
        *self.scaled.entry(event.item).or_insert(0.0) += add;
    }

    pub(crate) fn encode(&self, w: &mut tandem_storage::codec::Writer) {
        w.i64(self.reference_ms);
        w.i64(self.latest_ms);
        w.u64(self.scaled.len() as u64);
        for (&item, &score) in &self.scaled {
            w.u32(item);
            w.f64(score);
        }
    }

    /// Counts as [`Trending::encode`] wrote them; the configuration is the default until
    /// [`Trending::restore`] puts the counts into a configured one.
    pub(crate) fn decode(r: &mut tandem_storage::codec::Reader) -> Option<Self> {
        let mut t = Self::new(TrendingConfig::default());
        t.reference_ms = r.i64()?;
        t.latest_ms = r.i64()?;
        for _ in 0..r.u64()? {
            let (item, score) = (r.u32()?, r.f64()?);
            t.scaled.insert(item, score);
        }
        Some(t)
    }

    /// Renumbers items (`None`: dropped).
    pub(crate) fn retain_items(&mut self, new_idx: impl Fn(ItemIdx) -> Option<ItemIdx>) {
        self.scaled = self
            .scaled
            .drain()
            .filter_map(|(i, s)| new_idx(i).map(|n| (n, s)))
            .collect();
    }

    /// Takes `saved`'s counts, keeping this one's configuration.
    pub(crate) fn restore(&mut self, saved: Trending) {
        self.reference_ms = saved.reference_ms;
        self.latest_ms = saved.latest_ms;
        self.scaled = saved.scaled;
    }

    /// The `k` highest items that `admits` accepts, with their decayed counts now (at the newest
    /// event), best first.
    pub(crate) fn top(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)> {
        let mut all: Vec<(ItemIdx, f64)> = self
            .scaled
            .iter()
            .filter(|(i, _)| admits(**i))
            .map(|(&i, &s)| (i, s))
            .collect();
        let by_score =
            |a: &(ItemIdx, f64), b: &(ItemIdx, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if all.len() > k {
            all.select_nth_unstable_by(k, by_score);
            all.truncate(k);
        }
        all.sort_by(by_score);
        let now = (-self.exponent(self.latest_ms)).exp2();
        all.into_iter()
            .map(|(i, s)| (i, (s * now) as f32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(item: ItemIdx, kind: EventKind, t: i64) -> UserEvent {
        UserEvent {
            item,
            kind,
            timestamp_ms: t,
        }
    }

    #[test]
    fn counts_decay_by_half_life_and_weights_by_type() {
        let hour = 3_600_000;
        let mut t = Trending::new(TrendingConfig {
            half_life_ms: hour,
            type_weights: [1.0, 2.0, 4.0, 8.0],
        });
        t.record(&ev(1, EventKind::Purchase, 0));
        t.record(&ev(2, EventKind::View, 2 * hour));
        t.record(&ev(2, EventKind::View, 2 * hour));
        t.record(&ev(3, EventKind::Click, 2 * hour));
        let top = t.top(10, &|_| true);
        // Item 1: 8 two half-lives ago = 2; item 2: two views now = 2; item 3: one click = 2.
        for (item, score) in &top {
            assert!((score - 2.0).abs() < 1e-5, "item {item}: {score}");
        }
        t.record(&ev(3, EventKind::View, 2 * hour));
        let top = t.top(2, &|i| i != 2);
        assert_eq!(top.iter().map(|x| x.0).collect::<Vec<_>>(), [3, 1]);
        assert!((top[0].1 - 3.0).abs() < 1e-5);
    }

    #[test]
    fn rescaling_keeps_ratios_over_long_spans() {
        let mut t = Trending::new(TrendingConfig {
            half_life_ms: 1,
            ..TrendingConfig::default()
        });
        t.record(&ev(1, EventKind::Purchase, 0));
        for step in 1..=400 {
            t.record(&ev(2, EventKind::View, step * 10));
        }
        let top = t.top(5, &|_| true);
        assert_eq!(top.len(), 1, "item 1 decayed to nothing and was dropped");
        assert_eq!(top[0].0, 2);
        assert!(top[0].1.is_finite() && top[0].1 >= 1.0);
    }
}
