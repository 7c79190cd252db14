//! A short reason per recommended item, for people: the strongest of the signals the history
//! ranker reads, in a fixed order of how personal they are (the user's own history of the
//! item, then co-occurrence with it, then the item's trend, then similarity). An MLP has no
//! exact attribution; this names a signal that was present and that the model weighs, not a
//! share of the score.

use tandem_catalog::{Catalog, ItemIdx};
use tandem_ranking::ItemHistory;

use crate::pipeline::RecommendedItem;
use crate::sources::BUYERS_7D;

const DAY_MS: i64 = 86_400_000;
/// A related item counts as "often bought with" from this recency-weighted similarity on.
const MIN_RELATED: f64 = 0.05;

/// What a reason may cite, for one request.
pub(crate) struct Reasons<'a> {
    pub catalog: &'a Catalog,
    /// Sorted by item (as the plan builds it).
    pub history: &'a [ItemHistory],
    pub now_ms: i64,
    pub related_half_life_days: f64,
    pub trending_buyers: Option<f32>,
}

impl Reasons<'_> {
    pub(crate) fn reason(&self, item: &RecommendedItem) -> String {
        if let Ok(at) = self.history.binary_search_by_key(&item.idx, |h| h.item) {
            let h = &self.history[at];
            if h.purchases > 0 {
                return format!(
                    "bought {}, last {}",
                    times(h.purchases),
                    ago(self.now_ms - h.last_purchase_ms)
                );
            }
            if h.events > 0 {
                return format!(
                    "you looked at it {}, last {}",
                    times(h.events),
                    ago(self.now_ms - h.last_event_ms)
                );
            }
        }
        if let Some(with) = self.bought_with(item.idx) {
            return format!("often bought with {}", self.catalog.item_id(with));
        }
        if let (Some(threshold), Some(buyers)) = (
            self.trending_buyers,
            self.catalog.numeric(BUYERS_7D, item.idx),
        ) && buyers >= threshold
        {
            return format!(
                "trending in {}: {} buyers this week",
                item.category, buyers as u64
            );
        }
        if item.candidate.is_none() {
            return format!("popular now in {}", item.category);
        }
        "like your recent items".to_owned()
    }

    /// The user's item that `item` co-occurs with most, recency-weighted as the related source
    /// weighs it, if strongly enough.
    fn bought_with(&self, item: ItemIdx) -> Option<ItemIdx> {
        let mut best: Option<(ItemIdx, f64)> = None;
        for h in self
            .history
            .iter()
            .filter(|h| (h.item as usize) < self.catalog.len())
        {
            let (related, weights) = self.catalog.related(h.item);
            let Some(at) = related.iter().position(|&j| j == item) else {
                continue;
            };
            let strength =
                h.recency_weight(self.now_ms, self.related_half_life_days) * f64::from(weights[at]);
            if strength >= MIN_RELATED && best.is_none_or(|(_, s)| strength > s) {
                best = Some((h.item, strength));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The catalog's 90th percentile of weekly buyers (at least one): above it an item is
/// "trending". `None` when the catalog has no such column.
pub(crate) fn trending_threshold(catalog: &Catalog) -> Option<f32> {
    if !catalog.has_numeric(BUYERS_7D) || catalog.is_empty() {
        return None;
    }
    let mut buyers: Vec<f32> = (0..catalog.len() as ItemIdx)
        .filter_map(|i| catalog.numeric(BUYERS_7D, i))
        .collect();
    let at = (buyers.len() * 9 / 10).min(buyers.len().saturating_sub(1));
    let (_, p90, _) = buyers.select_nth_unstable_by(at, f32::total_cmp);
    Some(p90.max(1.0))
}

fn times(n: u32) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

fn ago(ms: i64) -> String {
    match ms.max(0) / DAY_MS {
        0 => "today".to_owned(),
        1 => "yesterday".to_owned(),
        d => format!("{d} days ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages_read_as_words() {
        assert_eq!(times(1), "once");
        assert_eq!(times(2), "twice");
        assert_eq!(times(3), "3 times");
        assert_eq!(ago(DAY_MS / 2), "today");
        assert_eq!(ago(DAY_MS), "yesterday");
        assert_eq!(ago(40 * DAY_MS + 5), "40 days ago");
        assert_eq!(ago(-5), "today", "a clock skew is not the future");
    }
}
