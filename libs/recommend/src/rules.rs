//! Business rules, applied to the ranked candidates in this order:
//!
//! 1. Exclusions and filters (before retrieval, in the search filter, and checked again on
//!    what comes back): request filter (categories, price range, in-stock: on unless the
//!    request says otherwise), request `exclude_item_ids`, the page's context items, items the
//!    user bought within the purchase window.
//! 2. Dedupe: an item appears once, at its best score.
//! 3. Order by score.
//! 4. Demotion: items shown to the user `demote_after_shown` times without any event on them
//!    move below the others (keeping their order).
//! 5. Diversity: at most `max_per_category` items per category; the rest step aside.
//! 6. Backfill to k: trending, then popular items that pass step 1 and the cap; then the items
//!    the cap set aside, in order. So k items come back whenever k items pass step 1.

use std::collections::{HashMap, HashSet};

use tandem_catalog::{Category, ItemAttributes, ItemIdx};

/// Business-rule settings; a request may override the diversity cap and in-stock.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    /// Only in-stock items unless the request's filter sets `in_stock_only = false`.
    pub in_stock_only: bool,
    /// At most this many items of one category in the top k; 0 = no cap.
    pub max_per_category: usize,
    /// Items shown this many times without an event on them are demoted; 0 = never.
    pub demote_after_shown: u32,
    /// Bought items are not recommended for this long; `None` = never again.
    pub purchase_exclusion_ms: Option<i64>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            in_stock_only: true,
            max_per_category: 0,
            demote_after_shown: 3,
            purchase_exclusion_ms: Some(30 * 86_400_000),
        }
    }
}

/// What a rule did to an item (reported by `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleEffect {
    /// Shown repeatedly and ignored: moved below the others.
    Demoted,
    /// Over the category cap; returned only because nothing else could fill k.
    OverCategoryCap,
    /// Not among the ranked candidates: added to fill k (trending or popular).
    Backfill,
}

impl RuleEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Demoted => "demoted: shown repeatedly without interaction",
            Self::OverCategoryCap => "diversity: over the category cap, kept to fill k",
            Self::Backfill => "backfill: trending or popular, to fill k",
        }
    }
}

/// A candidate on its way through the rules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placed {
    pub idx: ItemIdx,
    pub score: f32,
    pub retrieval_score: f32,
    pub effects: Vec<RuleEffect>,
    /// Its place among the ranked candidates; `None` for backfill.
    pub candidate: Option<usize>,
    /// As retrieval holds it now (searched items), or as the catalog states it until
    /// retrieval was asked (backfill).
    pub attributes: ItemAttributes,
}

impl Placed {
    pub(crate) fn new(
        idx: ItemIdx,
        score: f32,
        retrieval_score: f32,
        attributes: ItemAttributes,
    ) -> Self {
        Self {
            idx,
            score,
            retrieval_score,
            effects: Vec::new(),
            candidate: None,
            attributes,
        }
    }
}

/// Item-id sets and per-category counts of one request: a few hundred small keys, no
/// untrusted input to defend against, so a fast hasher.
type FastSet<T> = HashSet<T, foldhash::fast::FixedState>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Steps 2 to 6 on `ranked` (any order); `backfill` yields further admitted items best first.
/// `ranked` is only read: the rules order indexes into it and copy the at most `k` items they
/// place (and those the cap sets aside), not all the candidates.
pub(crate) fn apply(
    ranked: &[Placed],
    k: usize,
    max_per_category: usize,
    demoted: &dyn Fn(ItemIdx) -> bool,
    backfill: impl Iterator<Item = Placed>,
) -> Vec<Placed> {
    let mut order: Vec<usize> = (0..ranked.len()).collect();
    // Stable, as before: equal (score, id) pairs keep their input order.
    order.sort_by(|&a, &b| {
        let (a, b) = (&ranked[a], &ranked[b]);
        b.score.total_cmp(&a.score).then(a.idx.cmp(&b.idx))
    });
    let mut seen = FastSet::with_capacity_and_hasher(ranked.len() + k, Default::default());
    order.retain(|&i| seen.insert(ranked[i].idx));
    let (kept, moved): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|&i| !demoted(ranked[i].idx));

    let cap = if max_per_category == 0 {
        usize::MAX
    } else {
        max_per_category
    };
    let mut per_category: FastMap<Category, usize> = FastMap::default();
    let mut out = Vec::with_capacity(k);
    let mut set_aside = Vec::new();
    let in_order = kept
        .iter()
        .map(|&i| (i, false))
        .chain(moved.iter().map(|&i| (i, true)));
    for (i, was_demoted) in in_order {
        if out.len() == k {
            break;
        }
        let mut p = ranked[i].clone();
        if was_demoted {
            p.effects.push(RuleEffect::Demoted);
        }
        let n = per_category
            .entry(p.attributes.category.clone())
            .or_default();
        if *n < cap {
            *n += 1;
            out.push(p);
        } else {
            set_aside.push(p);
        }
    }
    if out.len() < k {
        for mut p in backfill {
            if out.len() == k {
                break;
            }
            if !seen.insert(p.idx) {
                continue;
            }
            let n = per_category
                .entry(p.attributes.category.clone())
                .or_default();
            if *n < cap {
                *n += 1;
                p.effects.push(RuleEffect::Backfill);
                out.push(p);
            }
        }
    }
    for mut p in set_aside {
        if out.len() == k {
            break;
        }
        p.effects.push(RuleEffect::OverCategoryCap);
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use tandem_catalog::Catalog;
    use tandem_catalog::testing::{synthetic_batch, write_parquet};

    use super::*;

    fn catalog() -> Catalog {
        let dir = std::env::temp_dir().join(format!("tandem-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("items.parquet");
        write_parquet(&synthetic_batch(40, 4, 4, 3), &path).expect("write");
        Catalog::open(&path).expect("open")
    }

    fn ids(out: &[Placed]) -> Vec<ItemIdx> {
        out.iter().map(|p| p.idx).collect()
    }

    #[test]
    fn dedupe_demote_cap_and_backfill_in_that_order() {
        let catalog = catalog();
        let of = |c: u32| -> Vec<ItemIdx> {
            (0..catalog.len() as ItemIdx)
                .filter(|&i| catalog.category_code(i) == c)
                .collect()
        };
        let (a, b) = (of(0), of(1));
        let placed = |i: ItemIdx, score: f32| Placed::new(i, score, 0.0, catalog.attributes(i));
        // Category 0 scores highest; a[0] appears twice; a[1] was ignored before.
        let ranked = vec![
            placed(a[0], 0.9),
            placed(a[0], 0.5),
            placed(a[1], 0.95),
            placed(a[2], 0.8),
            placed(a[3], 0.7),
            placed(b[0], 0.1),
        ];
        let demoted = |i: ItemIdx| i == a[1];

        let plain = apply(&ranked, 4, 0, &demoted, std::iter::empty());
        assert_eq!(
            ids(&plain),
            [a[0], a[2], a[3], b[0]],
            "deduped, a[1] demoted"
        );
        let all = apply(&ranked, 10, 0, &demoted, std::iter::empty());
        assert_eq!(ids(&all), [a[0], a[2], a[3], b[0], a[1]]);
        assert_eq!(all[4].effects, [RuleEffect::Demoted]);

        // Cap 2: two of category 0, then b[0], then backfill from category 2, then the set-aside.
        let c = of(2);
        let fill = c.iter().map(|&i| placed(i, 0.0)).chain([placed(a[0], 0.0)]);
        let capped = apply(&ranked, 6, 2, &demoted, fill);
        assert_eq!(ids(&capped)[..5], [a[0], a[2], b[0], c[0], c[1]]);
        assert_eq!(capped[3].effects, [RuleEffect::Backfill]);
        assert_eq!(
            capped[5].idx, a[3],
            "the cap yields only when nothing else fills k"
        );
        assert_eq!(capped[5].effects, [RuleEffect::OverCategoryCap]);
    }
}
