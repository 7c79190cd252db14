//! Candidate sources beside the ANN search: what one query vector cannot find. A shopper who
//! rebuys wants their own items back, and items bought together are often far apart in
//! embedding space. Mirrors `models/tandem_pipeline/history_ranker.py::candidates`, which the
//! history ranker was trained on.

use std::collections::HashMap;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_ranking::ItemHistory;

/// Catalog column of distinct buyers over the last seven days (written by the pipeline).
pub(crate) const BUYERS_7D: &str = "buyers_7d";

/// Which sources besides the ANN search add candidates, and how many each.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateSources {
    /// The user's own items (bought or among their recent events), most recent first; only
    /// when the request allows repeat purchases. 0 = off.
    pub own_items: usize,
    /// Items that co-occur with the user's items (the catalog's `co_occurrence.parquet`), by
    /// recency-weighted strength. 0 = off.
    pub related: usize,
    /// A history item this many days old adds half as much to its related items.
    pub related_half_life_days: f64,
    /// The items most bought over the last week (the catalog's `buyers_7d` column, as of its
    /// build): what is in fashion, which no embedding of the user finds. 0 = off.
    pub trending: usize,
}

impl Default for CandidateSources {
    fn default() -> Self {
        Self {
            own_items: 200,
            related: 0,
            related_half_life_days: 30.0,
            trending: 0,
        }
    }
}

/// Up to `limit` of the user's items, most recently touched first.
pub(crate) fn own_items(history: &[ItemHistory], limit: usize) -> Vec<ItemIdx> {
    let mut items: Vec<&ItemHistory> = history.iter().collect();
    items.sort_by_key(|h| (std::cmp::Reverse(h.last_touched_ms()), h.item));
    items.into_iter().take(limit).map(|h| h.item).collect()
}

/// Σ over the user's items of (½ per `half_life_days` of age) × similarity, per related item:
/// the strength by which the related source orders its items and explanations name a reason.
pub(crate) fn related_strength(
    catalog: &Catalog,
    history: &[ItemHistory],
    now_ms: i64,
    half_life_days: f64,
) -> HashMap<ItemIdx, f64> {
    let mut sums: HashMap<ItemIdx, f64> = HashMap::new();
    for h in history.iter().filter(|h| (h.item as usize) < catalog.len()) {
        let w = h.recency_weight(now_ms, half_life_days);
        let (items, weights) = catalog.related(h.item);
        for (&j, &sim) in items.iter().zip(weights) {
            *sums.entry(j).or_default() += w * f64::from(sim);
        }
    }
    sums
}

/// The `limit` strongest related items that `admit` lets through, strongest first (ties by
/// catalog index, as the training code breaks them).
pub(crate) fn related_items(
    strength: &HashMap<ItemIdx, f64>,
    limit: usize,
    admit: impl Fn(ItemIdx) -> bool,
) -> Vec<ItemIdx> {
    let mut items: Vec<(ItemIdx, f64)> = strength
        .iter()
        .filter(|&(&i, &s)| s > 0.0 && admit(i))
        .map(|(&i, &s)| (i, s))
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    items.truncate(limit);
    items.into_iter().map(|(i, _)| i).collect()
}

/// The catalog's items with weekly buyers, most first (ties by catalog index, as the training
/// code breaks them); empty when the catalog has no `buyers_7d`.
pub(crate) fn by_weekly_buyers(catalog: &Catalog) -> Vec<ItemIdx> {
    let mut items: Vec<(ItemIdx, f32)> = (0..catalog.len() as ItemIdx)
        .filter_map(|i| catalog.numeric(BUYERS_7D, i).map(|b| (i, b)))
        .filter(|&(_, b)| b > 0.0)
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    items.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bought(item: ItemIdx, at: i64) -> ItemHistory {
        ItemHistory {
            item,
            purchases: 1,
            last_purchase_ms: at,
            ..ItemHistory::default()
        }
    }

    #[test]
    fn own_items_come_most_recent_first_and_are_capped() {
        let history = [bought(4, 10), bought(2, 30), bought(9, 20)];
        assert_eq!(own_items(&history, 2), vec![2, 9]);
        assert_eq!(own_items(&history, 0), Vec::<ItemIdx>::new());
    }

    #[test]
    fn related_items_are_strongest_first_and_filtered() {
        let strength: HashMap<ItemIdx, f64> =
            [(1, 0.5), (2, 0.9), (3, 0.5), (4, 0.0), (5, 2.0)].into();
        assert_eq!(related_items(&strength, 3, |i| i != 5), vec![2, 1, 3]);
        assert_eq!(related_items(&strength, 10, |_| true), vec![5, 2, 1, 3]);
    }
}
