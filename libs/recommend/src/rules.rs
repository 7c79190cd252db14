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

/// The ranked candidates as the rules read them, by row: the order needs only each row's item
/// and score; a row is copied into a [`Placed`] only when the answer reaches it (a few of the
/// hundreds of candidates), so no list of them all is built per request.
pub(crate) trait RankedRows {
    fn rows(&self) -> usize;
    fn idx(&self, row: usize) -> ItemIdx;
    fn score(&self, row: usize) -> f32;
    fn placed(&self, row: usize) -> Placed;
}

impl RankedRows for [Placed] {
    fn rows(&self) -> usize {
        self.len()
    }

    fn idx(&self, row: usize) -> ItemIdx {
        self[row].idx
    }

    fn score(&self, row: usize) -> f32 {
        self[row].score
    }

    fn placed(&self, row: usize) -> Placed {
        self[row].clone()
    }
}

/// Item-id sets and per-category counts of one request: a few hundred small keys, no
/// untrusted input to defend against, so a fast hasher.
type FastSet<T> = HashSet<T, foldhash::fast::FixedState>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Steps 2 to 6 on `ranked` (any order); `backfill` yields further admitted items best first;
/// `demoted` says which items step 4 moves down (`None`: none).
/// `ranked` is only read: the rules order indexes into it and copy the at most `k` items they
/// place (and those the cap sets aside), not all the candidates.
pub(crate) fn apply<R: RankedRows + ?Sized>(
    ranked: &R,
    k: usize,
    max_per_category: usize,
    demoted: Option<&dyn Fn(ItemIdx) -> bool>,
    backfill: impl Iterator<Item = Placed>,
) -> Vec<Placed> {
    let cap = if max_per_category == 0 {
        usize::MAX
    } else {
        max_per_category
    };
    // Sized for what an answer usually reads (a little over k items), not for every row.
    let expected = k.saturating_mul(2).saturating_add(8).min(ranked.rows() + k);
    let mut seen = FastSet::with_capacity_and_hasher(expected, Default::default());
    let mut per_category: FastMap<Category, usize> = FastMap::default();
    let mut out = Vec::with_capacity(k);
    let mut set_aside = Vec::new();
    // Places `p` under the category cap, or hands it back.
    let mut place = |out: &mut Vec<Placed>, p: Placed| {
        let n = per_category
            .entry(p.attributes.category.clone())
            .or_default();
        if *n < cap {
            *n += 1;
            out.push(p);
            None
        } else {
            Some(p)
        }
    };
    // Asked of every candidate in one pass rather than as the order reaches it: the lookups
    // (in the user's impressions, each a likely cache miss) do not wait on each other, and a
    // user shown everything already (all demoted) has the best k selected, not all sorted.
    let is_demoted: Vec<bool> = match demoted {
        Some(demoted) => (0..ranked.rows())
            .map(|row| demoted(ranked.idx(row)))
            .collect(),
        None => Vec::new(),
    };
    let demoted_row = |row: usize| is_demoted.get(row).copied().unwrap_or(false);
    // Best first, each item once (at its best score): the items not demoted, then the
    // demoted ones (an item's copies are all demoted or none). Stops at k: the order is only
    // paid for the items an answer reaches.
    let fresh = (0..ranked.rows()).filter(|&row| !demoted_row(row));
    for row in BestFirst::new(ranked, fresh, k) {
        if out.len() == k {
            break;
        }
        if seen.insert(ranked.idx(row)) {
            set_aside.extend(place(&mut out, ranked.placed(row)));
        }
    }
    if out.len() < k && !is_demoted.is_empty() {
        let moved = (0..ranked.rows()).filter(|&row| demoted_row(row));
        for row in BestFirst::new(ranked, moved, k - out.len()) {
            if out.len() == k {
                break;
            }
            if !seen.insert(ranked.idx(row)) {
                continue;
            }
            let mut p = ranked.placed(row);
            p.effects.push(RuleEffect::Demoted);
            set_aside.extend(place(&mut out, p));
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
            p.effects.push(RuleEffect::Backfill);
            // Over the cap, a backfilled item is not kept in reserve.
            let _ = place(&mut out, p);
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

/// Indexes into the candidates, best first: score descending, then catalog index, then
/// position (a strict order, so sorting without stability keeps the input order of equals).
/// Sorts integer keys (no reads through the indexes while sorting), and only as far as it is
/// read: a selection brings the best few to the front and they are sorted; the rest is sorted
/// if a caller reads past them. An answer of k items most often reads a little over k of the
/// hundreds of candidates.
struct BestFirst {
    /// (score descending, then catalog index) as one key, and the position.
    order: Vec<(u64, u32)>,
    /// `order[..sorted]` is in final order.
    sorted: usize,
    next: usize,
    first: usize,
}

impl BestFirst {
    /// The candidates at `rows`, best first.
    fn new<R: RankedRows + ?Sized>(
        ranked: &R,
        rows: impl Iterator<Item = usize>,
        k: usize,
    ) -> Self {
        // Sized for every row at once: `rows` is filtered, and would grow the list by doubling.
        let mut order = Vec::with_capacity(ranked.rows());
        order.extend(rows.map(|row| {
            // `f32::total_cmp`'s order as an unsigned key, flipped for descending.
            let bits = ranked.score(row).to_bits() as i32;
            let ascending = (bits ^ ((((bits >> 31) as u32) >> 1) as i32)) as u32 ^ (1 << 31);
            (
                (u64::from(!ascending) << 32) | u64::from(ranked.idx(row)),
                row as u32,
            )
        }));
        Self {
            order,
            sorted: 0,
            next: 0,
            first: k.saturating_mul(2).saturating_add(8),
        }
    }
}

impl Iterator for BestFirst {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.next == self.sorted {
            let rest = &mut self.order[self.sorted..];
            if rest.is_empty() {
                return None;
            }
            // The first read sorts the best few; a second sorts the rest.
            let take = if self.sorted == 0 {
                self.first.min(rest.len())
            } else {
                rest.len()
            };
            if take < rest.len() {
                rest.select_nth_unstable(take);
            }
            rest[..take].sort_unstable();
            self.sorted += take;
        }
        let (_, row) = self.order[self.next];
        self.next += 1;
        Some(row as usize)
    }
}

#[cfg(test)]
mod tests {
    use tandem_catalog::Catalog;
    use tandem_catalog::testing::{synthetic_batch, write_parquet};

    use super::*;

    fn catalog() -> Catalog {
        // A file per call: the tests run in parallel, and one must not read another's half
        // written file.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tandem-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(format!("items-{call}.parquet"));
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

        let plain = apply(ranked.as_slice(), 4, 0, Some(&demoted), std::iter::empty());
        assert_eq!(
            ids(&plain),
            [a[0], a[2], a[3], b[0]],
            "deduped, a[1] demoted"
        );
        let all = apply(ranked.as_slice(), 10, 0, Some(&demoted), std::iter::empty());
        assert_eq!(ids(&all), [a[0], a[2], a[3], b[0], a[1]]);
        assert_eq!(all[4].effects, [RuleEffect::Demoted]);

        // Cap 2: two of category 0, then b[0], then backfill from category 2, then the set-aside.
        let c = of(2);
        let fill = c.iter().map(|&i| placed(i, 0.0)).chain([placed(a[0], 0.0)]);
        let capped = apply(ranked.as_slice(), 6, 2, Some(&demoted), fill);
        assert_eq!(ids(&capped)[..5], [a[0], a[2], b[0], c[0], c[1]]);
        assert_eq!(capped[3].effects, [RuleEffect::Backfill]);
        assert_eq!(
            capped[5].idx, a[3],
            "the cap yields only when nothing else fills k"
        );
        assert_eq!(capped[5].effects, [RuleEffect::OverCategoryCap]);
    }

    /// The rules as first written: a full stable sort, dedupe, partition, then the cap.
    fn apply_by_full_sort(
        ranked: &[Placed],
        k: usize,
        max_per_category: usize,
        demoted: &dyn Fn(ItemIdx) -> bool,
        backfill: impl Iterator<Item = Placed>,
    ) -> Vec<Placed> {
        let mut order: Vec<usize> = (0..ranked.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&ranked[a], &ranked[b]);
            b.score.total_cmp(&a.score).then(a.idx.cmp(&b.idx))
        });
        let mut seen = HashSet::new();
        order.retain(|&i| seen.insert(ranked[i].idx));
        let (kept, moved): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| !demoted(ranked[i].idx));
        let cap = if max_per_category == 0 {
            usize::MAX
        } else {
            max_per_category
        };
        let mut per_category: HashMap<Category, usize> = HashMap::new();
        let (mut out, mut set_aside) = (Vec::new(), Vec::new());
        let in_order = kept.iter().map(|&i| (i, false));
        for (i, was_demoted) in in_order.chain(moved.iter().map(|&i| (i, true))) {
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
        for mut p in set_aside {
            if out.len() == k {
                break;
            }
            p.effects.push(RuleEffect::OverCategoryCap);
            out.push(p);
        }
        out
    }

    #[test]
    fn reading_the_order_only_as_far_as_k_gives_the_full_sorts_answer() {
        let catalog = catalog();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) % n
        };
        for case in 0..2_000 {
            let n = next(300) as usize;
            let items = catalog.len() as u64;
            // Few distinct scores and items: ties and duplicates on every case.
            let ranked: Vec<Placed> = (0..n)
                .map(|row| {
                    let i = next(items) as ItemIdx;
                    Placed {
                        candidate: Some(row),
                        ..Placed::new(i, next(20) as f32 / 10.0, row as f32, catalog.attributes(i))
                    }
                })
                .collect();
            let k = 1 + next(40) as usize;
            let cap = next(4) as usize;
            // 0: every item demoted (a user shown everything already); 1: none.
            let every = next(6) as ItemIdx;
            let demoted = |i: ItemIdx| match every {
                0 => true,
                1 => false,
                every => i.is_multiple_of(every),
            };
            let fill = (0..catalog.len() as ItemIdx)
                .rev()
                .map(|i| Placed::new(i, 0.0, 0.0, catalog.attributes(i)));
            assert_eq!(
                apply(
                    ranked.as_slice(),
                    k,
                    cap,
                    (every != 1).then_some(&demoted),
                    fill.clone()
                ),
                apply_by_full_sort(&ranked, k, cap, &demoted, fill),
                "case {case}: n {n}, k {k}, cap {cap}, demoted every {every}"
            );
        }
    }
}
