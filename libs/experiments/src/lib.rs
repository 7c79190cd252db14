//! Experiments measured: every item an answer showed is an impression of the model version
//! that answered; a later click, add-to-cart or purchase of that item by the same user within
//! the attribution window counts for that version (once per impression and kind; purchases
//! add the item's price as revenue). [`ExperimentLedger::report`] gives per version the
//! rates with 95 % Wilson intervals and a two-proportion z-test against a control.
//!
//! The ledger is bounded: impressions older than the window, or beyond `max_impressions`
//! (oldest first), or past a user's latest [`MAX_SCANNED`] (dropped as newer ones come), can
//! no longer be attributed to.

mod stats;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use tandem_catalog::ItemIdx;
use tandem_personalization::EventKind;

pub use stats::{Proportion, two_proportion_p_value, wilson};

/// A user's latest this many impressions are kept; older ones go as newer come. A user shown
/// more within the window is a crawler or a load test: an event must not scan them all under
/// the ledger's lock, and they must not push everyone else's impressions out of the bound.
pub const MAX_SCANNED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerConfig {
    /// Events this long after an impression are attributed to it.
    pub window_ms: i64,
    /// Impressions remembered for attribution.
    pub max_impressions: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            window_ms: 24 * 3_600_000,
            max_impressions: 500_000,
        }
    }
}

/// One version's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VersionTotals {
    pub impressions: u64,
    /// Impressions followed by at least one click (add-to-cart, purchase) within the window.
    pub clicked: u64,
    pub carted: u64,
    pub purchased: u64,
    pub revenue: f64,
    /// Sum over impressions of the squared revenue each brought (for the interval).
    revenue_squares: f64,
}

/// One version in a report.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionReport {
    pub version: String,
    pub totals: VersionTotals,
    pub ctr: Proportion,
    pub add_to_cart_rate: Proportion,
    pub conversion_rate: Proportion,
    /// Revenue per impression, with a 95 % normal interval.
    pub revenue_per_impression: (f64, f64, f64),
    /// Two-sided p-values of the difference to the control (`None` for the control itself).
    pub ctr_p_value: Option<f64>,
    pub conversion_p_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentReport {
    pub control: Option<String>,
    pub window_ms: i64,
    pub versions: Vec<VersionReport>,
}

#[derive(Debug, Clone, Copy)]
struct Impression {
    version: u16,
    at_ms: i64,
    /// Bits: 1 clicked, 2 carted, 4 purchased.
    seen: u8,
    revenue: f64,
}

#[derive(Debug, Default)]
struct Ledger {
    versions: Vec<String>,
    version_ids: HashMap<String, u16>,
    totals: Vec<VersionTotals>,
    /// `tandem_experiment_impressions_total` per version, made when the version first shows
    /// up (a registry lookup per answer would copy and hash the label).
    impression_counters: Vec<metrics::Counter>,
    /// User hash → the user's impressions in the order shown; a later impression of an item
    /// supersedes the earlier ones (an event is attributed to the latest). Kept per user, an
    /// answer's items are one lookup and a few appends to one list rather than an insert
    /// each into one table of every user's impressions.
    users: HashMap<u64, UserImpressions, foldhash::fast::FixedState>,
    /// One entry per answer in the order shown, for expiry: (shown at, user, impressions of
    /// it not yet expired). Each user's list is in the same order, so an answer's impressions
    /// are always the front of its user's list (or already dropped) when it expires.
    answers: VecDeque<(i64, u64, usize)>,
    /// Impressions in the users' lists: the sum of `answers`' counts less those dropped past
    /// [`MAX_SCANNED`].
    held: usize,
}

/// One user's impressions, at most [`MAX_SCANNED`] of them.
#[derive(Debug, Default)]
struct UserImpressions {
    list: VecDeque<(ItemIdx, Impression)>,
    /// The user's oldest impressions that went past [`MAX_SCANNED`] while their answers are
    /// still in `answers`: those answers' expiry takes these first.
    dropped: usize,
}

impl Ledger {
    /// Expires the first `n` impressions of `user` (its oldest answer's, or part of it).
    fn drop_oldest(&mut self, user: u64, n: usize) {
        let mut drained = 0;
        if let Some(u) = self.users.get_mut(&user) {
            let dropped = u.dropped.min(n);
            u.dropped -= dropped;
            drained = (n - dropped).min(u.list.len());
            u.list.drain(..drained);
            if u.list.is_empty() && u.dropped == 0 {
                self.users.remove(&user);
            }
        }
        self.held = self.held.saturating_sub(drained);
    }
}

/// Impressions and what followed them, per model version (one gateway's).
#[derive(Debug)]
pub struct ExperimentLedger {
    config: LedgerConfig,
    /// Users are hashed (not stored): 64 bits keep collisions negligible at any user count a
    /// gateway sees.
    users: foldhash::quality::RandomState,
    inner: Mutex<Ledger>,
}

impl ExperimentLedger {
    pub fn new(config: LedgerConfig) -> Self {
        Self {
            config,
            users: foldhash::quality::RandomState::default(),
            inner: Mutex::new(Ledger::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Nothing panics under the lock; a poisoned one still holds valid counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An answer of `version` showed `items` to `user` at `at_ms`.
    pub fn shown(&self, user: &str, version: &str, items: &[ItemIdx], at_ms: i64) {
        if items.is_empty() {
            return;
        }
        let user = self.users.hash_one(user);
        let mut guard = self.lock();
        let l = &mut *guard;
        let version_id = match l.version_ids.get(version) {
            Some(&id) => id,
            None => {
                let id = l.versions.len() as u16;
                l.versions.push(version.to_owned());
                l.version_ids.insert(version.to_owned(), id);
                l.totals.push(VersionTotals::default());
                l.impression_counters.push(metrics::counter!(
                    "tandem_experiment_impressions_total",
                    "model_version" => version.to_owned()
                ));
                id
            }
        };
        l.totals[usize::from(version_id)].impressions += items.len() as u64;
        let impression = Impression {
            version: version_id,
            at_ms,
            seen: 0,
            revenue: 0.0,
        };
        let mine = l.users.entry(user).or_default();
        mine.list
            .extend(items.iter().map(|&item| (item, impression)));
        // Past the user's latest MAX_SCANNED: no event would reach them. Their list stays
        // at one size (no growth, no fresh pages) however long a crawler goes on.
        let past = mine.list.len().saturating_sub(MAX_SCANNED);
        mine.list.drain(..past);
        mine.dropped += past;
        l.answers.push_back((at_ms, user, items.len()));
        l.held += items.len() - past;
        let horizon = at_ms - self.config.window_ms;
        while let Some(&(t, oldest_user, n)) = l.answers.front() {
            let excess = l.held.saturating_sub(self.config.max_impressions);
            if t < horizon || excess >= n {
                l.answers.pop_front();
                l.drop_oldest(oldest_user, n);
            } else if excess > 0 {
                // Past the bound by part of an answer: its oldest items go.
                if let Some(front) = l.answers.front_mut() {
                    front.2 -= excess;
                }
                l.drop_oldest(oldest_user, excess);
            } else {
                break;
            }
        }
        l.impression_counters[usize::from(version_id)].increment(items.len() as u64);
    }

    /// `user` did `kind` on `item` at `at_ms`; attributed if an answer showed it within the
    /// window before. `price` counts as revenue for a purchase.
    pub fn event(&self, user: &str, item: ItemIdx, kind: EventKind, at_ms: i64, price: f64) {
        let bit = match kind {
            EventKind::View => return,
            EventKind::Click => 1,
            EventKind::AddToCart => 2,
            EventKind::Purchase => 4,
        };
        let user = self.users.hash_one(user);
        let mut l = self.lock();
        let Some(impression) = l.users.get_mut(&user).and_then(|mine| {
            mine.list
                .iter_mut()
                .rev()
                .find(|(shown, _)| *shown == item)
                .map(|(_, impression)| impression)
        }) else {
            return;
        };
        if at_ms < impression.at_ms || at_ms > impression.at_ms + self.config.window_ms {
            return;
        }
        let first = impression.seen & bit == 0;
        impression.seen |= bit;
        let before = impression.revenue;
        if bit == 4 {
            impression.revenue += price;
        }
        let (version, after) = (usize::from(impression.version), impression.revenue);
        let totals = &mut l.totals[version];
        if first {
            match bit {
                1 => totals.clicked += 1,
                2 => totals.carted += 1,
                _ => totals.purchased += 1,
            }
        }
        totals.revenue += after - before;
        totals.revenue_squares += after * after - before * before;
        let name = l.versions[version].clone();
        if first {
            let metric = match bit {
                1 => "tandem_experiment_clicks_total",
                2 => "tandem_experiment_add_to_carts_total",
                _ => "tandem_experiment_purchases_total",
            };
            metrics::counter!(metric, "model_version" => name.clone()).increment(1);
        }
        if bit == 4 {
            metrics::counter!("tandem_experiment_revenue_total", "model_version" => name)
                .increment(price.max(0.0).round() as u64);
        }
    }

    /// Forgets which items were shown to `user` (erasure); the per-version totals, which
    /// hold no user, stay.
    pub fn forget(&self, user: &str) {
        let user = self.users.hash_one(user);
        let mut l = self.lock();
        if let Some(mine) = l.users.remove(&user) {
            l.held -= mine.list.len();
        }
        l.answers.retain(|(_, u, _)| *u != user);
    }

    /// Per version, against `control` (default: the version with the most impressions).
    pub fn report(&self, control: Option<&str>) -> ExperimentReport {
        let l = self.lock();
        let control = control.map(str::to_owned).or_else(|| {
            l.versions
                .iter()
                .zip(&l.totals)
                .max_by_key(|(_, t)| t.impressions)
                .map(|(v, _)| v.clone())
        });
        let base = control
            .as_ref()
            .and_then(|c| l.version_ids.get(c))
            .map(|&id| l.totals[usize::from(id)]);
        let versions = l
            .versions
            .iter()
            .zip(&l.totals)
            .map(|(version, t)| {
                let is_control = control.as_deref() == Some(version.as_str());
                let against = |x: u64, pick: fn(&VersionTotals) -> u64| {
                    base.filter(|_| !is_control)
                        .map(|b| two_proportion_p_value(x, t.impressions, pick(&b), b.impressions))
                };
                VersionReport {
                    version: version.clone(),
                    totals: *t,
                    ctr: wilson(t.clicked, t.impressions),
                    add_to_cart_rate: wilson(t.carted, t.impressions),
                    conversion_rate: wilson(t.purchased, t.impressions),
                    revenue_per_impression: stats::mean_interval(
                        t.revenue,
                        t.revenue_squares,
                        t.impressions,
                    ),
                    ctr_p_value: against(t.clicked, |b| b.clicked),
                    conversion_p_value: against(t.purchased, |b| b.purchased),
                }
            })
            .collect();
        ExperimentReport {
            control,
            window_ms: self.config.window_ms,
            versions,
        }
    }
}
