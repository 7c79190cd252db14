//! Features from what the user did: their history of each candidate and its category, how
//! strongly the candidate co-occurs with their items, its price against what they pay, and
//! how active they are. Computed once per request from `ScoreRequest::history`; mirrors
//! `models/tandem_pipeline/history.py::history_features` (the parity tests compare them).

use std::collections::HashMap;

use tandem_catalog::{Catalog, ItemIdx};

use crate::features::ScoreRequest;

const DAY_MS: f64 = 86_400_000.0;
/// Days reported for "never", and the cap on any "days since": keeps log1p features bounded.
const NEVER_DAYS: f64 = 365.0;
/// Prices at or below this (free items) count as this in the logarithm.
const MIN_PRICE: f64 = 0.01;

/// What the user did with one item, as the gateway reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemHistory {
    pub item: ItemIdx,
    /// Every purchase the gateway has seen.
    pub purchases: u32,
    /// 0 when never bought.
    pub last_purchase_ms: i64,
    /// Events of any kind on the item among the user's recent ones.
    pub events: u32,
    /// 0 when none among them.
    pub last_event_ms: i64,
}

impl ItemHistory {
    /// When the user last bought or touched the item (0: never).
    pub fn last_touched_ms(&self) -> i64 {
        self.last_event_ms.max(self.last_purchase_ms)
    }

    /// ½ per `half_life_days` since the user last had the item ("never" counts as 365 days):
    /// how much it adds to the items related to it, in the co-occurrence feature, the related
    /// candidate source and the reasons alike.
    pub fn recency_weight(&self, now_ms: i64, half_life_days: f64) -> f64 {
        0.5f64.powf(days_since(now_ms, self.last_touched_ms()) / half_life_days)
    }
}

/// Which history feature to compute (the spec's sources, resolved).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HistoryFeature {
    Item,
    Category,
    CoOccurrence { half_life_days: f64 },
    Price,
    Activity,
}

impl HistoryFeature {
    pub(crate) fn width(self) -> usize {
        match self {
            Self::Item => 4,
            Self::Category => 3,
            Self::CoOccurrence { .. } | Self::Activity => 2,
            Self::Price => 1,
        }
    }
}

fn days_since(now_ms: i64, t_ms: i64) -> f64 {
    if t_ms <= 0 {
        return NEVER_DAYS;
    }
    ((now_ms - t_ms) as f64 / DAY_MS).clamp(0.0, NEVER_DAYS)
}

fn ln_price(catalog: &Catalog, item: ItemIdx) -> f64 {
    f64::from(catalog.price(item)).max(MIN_PRICE).ln()
}

type CoSums = HashMap<ItemIdx, (f64, f64)>;

/// A request's history, summed once and read for every candidate.
pub(crate) struct UserSummary<'a> {
    now_ms: i64,
    by_item: HashMap<ItemIdx, &'a ItemHistory>,
    /// Category code → (purchases, latest purchase, events).
    by_category: HashMap<u32, (f64, i64, f64)>,
    /// Per half-life asked: related item → (recency-weighted, latest-moment) similarity sums.
    co: Vec<(f64, CoSums)>,
    ref_ln_price: Option<f64>,
    distinct: usize,
    latest_ms: i64,
}

impl<'a> UserSummary<'a> {
    pub(crate) fn new(
        req: &'a ScoreRequest,
        catalog: &Catalog,
        features: &[HistoryFeature],
    ) -> Self {
        let history: Vec<&ItemHistory> = req
            .history
            .iter()
            .filter(|h| (h.item as usize) < catalog.len())
            .collect();
        let mut by_category: HashMap<u32, (f64, i64, f64)> = HashMap::new();
        for h in &history {
            let c = by_category
                .entry(catalog.category_code(h.item))
                .or_default();
            c.0 += f64::from(h.purchases);
            c.1 = c.1.max(h.last_purchase_ms);
            c.2 += f64::from(h.events);
        }
        let latest_ms = history
            .iter()
            .map(|h| h.last_touched_ms())
            .max()
            .unwrap_or(0);
        let mut co = Vec::new();
        for f in features {
            if let HistoryFeature::CoOccurrence { half_life_days } = *f {
                if co.iter().any(|(hl, _)| *hl == half_life_days) {
                    continue;
                }
                let mut sums = CoSums::new();
                for h in &history {
                    let w = h.recency_weight(req.now_ms, half_life_days);
                    let latest = if h.last_touched_ms() == latest_ms {
                        1.0
                    } else {
                        0.0
                    };
                    let (items, weights) = catalog.related(h.item);
                    for (&j, &sim) in items.iter().zip(weights) {
                        let s = sums.entry(j).or_default();
                        s.0 += w * f64::from(sim);
                        s.1 += latest * f64::from(sim);
                    }
                }
                co.push((half_life_days, sums));
            }
        }
        let bought: Vec<f64> = history
            .iter()
            .filter(|h| h.purchases > 0)
            .map(|h| ln_price(catalog, h.item))
            .collect();
        let paid = if bought.is_empty() {
            history.iter().map(|h| ln_price(catalog, h.item)).collect()
        } else {
            bought
        };
        let ref_ln_price = (!paid.is_empty()).then(|| paid.iter().sum::<f64>() / paid.len() as f64);
        Self {
            now_ms: req.now_ms,
            distinct: history.len(),
            by_item: history.into_iter().map(|h| (h.item, h)).collect(),
            by_category,
            co,
            ref_ln_price,
            latest_ms,
        }
    }

    /// The feature's values for `item`, written to `out` (`feature.width()` values).
    pub(crate) fn write(
        &self,
        feature: HistoryFeature,
        catalog: &Catalog,
        item: ItemIdx,
        out: &mut [f32],
    ) {
        let now = self.now_ms;
        let mut put = |values: &[f64]| {
            for (o, v) in out.iter_mut().zip(values) {
                *o = *v as f32;
            }
        };
        match feature {
            HistoryFeature::Item => {
                let h = self
                    .by_item
                    .get(&item)
                    .copied()
                    .copied()
                    .unwrap_or_default();
                put(&[
                    f64::from(h.purchases).ln_1p(),
                    days_since(now, h.last_purchase_ms).ln_1p(),
                    f64::from(h.events).ln_1p(),
                    days_since(now, h.last_event_ms).ln_1p(),
                ]);
            }
            HistoryFeature::Category => {
                let (p, last, e) = self
                    .by_category
                    .get(&catalog.category_code(item))
                    .copied()
                    .unwrap_or_default();
                put(&[p.ln_1p(), days_since(now, last).ln_1p(), e.ln_1p()]);
            }
            HistoryFeature::CoOccurrence { half_life_days } => {
                let sums = self
                    .co
                    .iter()
                    .find(|(hl, _)| *hl == half_life_days)
                    .and_then(|(_, sums)| sums.get(&item))
                    .copied()
                    .unwrap_or_default();
                put(&[sums.0, sums.1]);
            }
            HistoryFeature::Price => {
                put(&[self
                    .ref_ln_price
                    .map_or(0.0, |r| ln_price(catalog, item) - r)]);
            }
            HistoryFeature::Activity => {
                put(&[
                    (self.distinct as f64).ln_1p(),
                    days_since(now, self.latest_ms).ln_1p(),
                ]);
            }
        }
    }
}
