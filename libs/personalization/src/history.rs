use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tandem_catalog::ItemIdx;

use crate::trending::{Trending, TrendingConfig};

/// Event types, strongest signal last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    View,
    Click,
    AddToCart,
    Purchase,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserEvent {
    pub item: ItemIdx,
    pub kind: EventKind,
    pub timestamp_ms: i64,
}

/// How often an item was recommended to a user since they last did anything with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shown {
    pub times: u32,
    pub last_ms: i64,
}

/// How often a user bought an item, and when last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purchases {
    pub count: u32,
    pub last_ms: i64,
}

/// One user's state: the most recent events in time order, purchases, and what was shown to
/// them and ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserHistory {
    pub recent: VecDeque<UserEvent>,
    /// Every item the user bought (not bounded by `capacity`: repeat purchases are the
    /// strongest signal a shop has).
    pub purchased: ItemMap<Purchases>,
    /// Item → impressions since the user's last event on it (an event on it resets this).
    pub shown: ItemMap<Shown>,
}

/// Per-user maps keyed by catalog index, read for every candidate of every answer (demotion):
/// foldhash, not SipHash; the keys are indexes the gateway resolved, not caller input.
pub type ItemMap<V> = HashMap<ItemIdx, V, foldhash::fast::RandomState>;

/// Impressions remembered per user; the least recently shown go first.
const MAX_SHOWN: usize = 1000;
/// Forgetting waits until this many more are held, then drops down to `MAX_SHOWN` in one
/// pass: a user at the limit no longer pays a pass over every impression on each answer.
const SHOWN_SLACK: usize = MAX_SHOWN / 8;

impl UserHistory {
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Items bought at or after `since_ms`.
    pub fn purchased_since(&self, since_ms: i64) -> impl Iterator<Item = ItemIdx> + '_ {
        self.purchased
            .iter()
            .filter(move |(_, p)| p.last_ms >= since_ms)
            .map(|(i, _)| *i)
    }

    /// Inserts in time order (late events land where they belong) and keeps the newest `capacity`.
    fn record(&mut self, event: UserEvent, capacity: usize) {
        if event.kind == EventKind::Purchase {
            let p = self.purchased.entry(event.item).or_insert(Purchases {
                count: 0,
                last_ms: event.timestamp_ms,
            });
            p.count += 1;
            p.last_ms = p.last_ms.max(event.timestamp_ms);
        }
        self.shown.remove(&event.item);
        let at = self
            .recent
            .partition_point(|e| e.timestamp_ms <= event.timestamp_ms);
        self.recent.insert(at, event);
        while self.recent.len() > capacity {
            self.recent.pop_front();
        }
    }

    fn record_shown(&mut self, items: &[ItemIdx], at_ms: i64) {
        for &item in items {
            let s = self.shown.entry(item).or_default();
            s.times += 1;
            s.last_ms = s.last_ms.max(at_ms);
        }
        if self.shown.len() > MAX_SHOWN + SHOWN_SLACK {
            let excess = self.shown.len() - MAX_SHOWN;
            let mut by_age: Vec<(i64, ItemIdx)> =
                self.shown.iter().map(|(i, s)| (s.last_ms, *i)).collect();
            // The `excess` least recently shown, in no particular order.
            by_age.select_nth_unstable(excess - 1);
            for (_, item) in &by_age[..excess] {
                self.shown.remove(item);
            }
        }
    }
}

/// Where user state and trending live. The embedded [`InMemoryState`] is one gateway's; a
/// store shared by several gateway replicas implements the same trait.
pub trait StateStore: Send + Sync + 'static {
    /// Applies events for one user (and to trending); visible to the next read.
    fn record(&self, user_id: &str, events: &[UserEvent]);
    /// Notes that `items` were recommended to the user.
    fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64);
    /// The user's state as of now (empty for unknown users): a snapshot that later writes
    /// do not change.
    fn user(&self, user_id: &str) -> Arc<UserHistory>;
    /// The `k` most trending items that `admits` accepts, with their decayed counts.
    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)>;
    /// Number of users with state.
    fn users(&self) -> usize;
}

/// Process-local state: users in shards to keep writers of different users apart.
///
/// Histories are shared with the requests reading them and copied on write
/// (`Arc::make_mut`): a read costs a reference count, not a copy of up to a thousand
/// impressions, and a write copies only while a request still holds the old state.
#[derive(Debug)]
pub struct InMemoryState {
    shards: Vec<RwLock<HashMap<String, Arc<UserHistory>>>>,
    trending: Mutex<Trending>,
    capacity: usize,
}

impl InMemoryState {
    /// `capacity`: events kept per user (the oldest go first).
    pub fn new(capacity: usize, trending: TrendingConfig) -> Self {
        Self {
            shards: (0..64).map(|_| RwLock::new(HashMap::new())).collect(),
            trending: Mutex::new(Trending::new(trending)),
            capacity: capacity.max(1),
        }
    }

    fn shard(&self, user_id: &str) -> &RwLock<HashMap<String, Arc<UserHistory>>> {
        // FNV-1a: stable and cheap; no need for DoS resistance on internal ids.
        let h = user_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % self.shards.len() as u64) as usize]
    }
}

// A poisoned lock only means another writer panicked mid-update; the maps are still usable.
impl StateStore for InMemoryState {
    fn record(&self, user_id: &str, events: &[UserEvent]) {
        {
            let mut shard = self
                .shard(user_id)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let history = Arc::make_mut(shard.entry(user_id.to_owned()).or_default());
            for e in events {
                history.record(*e, self.capacity);
            }
        }
        let mut trending = self.trending.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            trending.record(e);
        }
    }

    fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64) {
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match shard.get_mut(user_id) {
            Some(history) => Arc::make_mut(history).record_shown(items, at_ms),
            None => {
                let mut history = UserHistory::default();
                history.record_shown(items, at_ms);
                shard.insert(user_id.to_owned(), Arc::new(history));
            }
        }
    }

    fn user(&self, user_id: &str) -> Arc<UserHistory> {
        let shard = self
            .shard(user_id)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(user_id).cloned().unwrap_or_default()
    }

    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)> {
        self.trending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .top(k, admits)
    }

    fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(item: u32, kind: EventKind, t: i64) -> UserEvent {
        UserEvent {
            item,
            kind,
            timestamp_ms: t,
        }
    }

    #[test]
    fn keeps_time_order_bounded_and_all_purchases() {
        let store = InMemoryState::new(3, TrendingConfig::default());
        store.record(
            "u",
            &[ev(1, EventKind::Purchase, 10), ev(2, EventKind::View, 30)],
        );
        store.record(
            "u",
            &[ev(3, EventKind::View, 20), ev(4, EventKind::Click, 40)],
        );
        let h = store.user("u");
        let items: Vec<u32> = h.recent.iter().map(|e| e.item).collect();
        assert_eq!(items, [3, 2, 4], "oldest dropped, late event in place");
        assert_eq!(
            h.purchased.get(&1),
            Some(&Purchases {
                count: 1,
                last_ms: 10
            }),
            "purchase outlives the window"
        );
        store.record("u", &[ev(1, EventKind::Purchase, 5)]);
        assert_eq!(
            store.user("u").purchased.get(&1),
            Some(&Purchases {
                count: 2,
                last_ms: 10
            }),
            "a late purchase counts and keeps the latest time"
        );
        assert_eq!(h.purchased_since(11).count(), 0);
        assert!(store.user("other").is_empty());
        assert_eq!(store.users(), 1);
        let trending: Vec<u32> = store.trending(2, &|_| true).iter().map(|t| t.0).collect();
        assert_eq!(trending, [1, 4], "purchase weighs most, then the click");
    }

    #[test]
    fn impressions_count_until_the_user_acts_on_the_item() {
        let store = InMemoryState::new(10, TrendingConfig::default());
        store.record_shown("u", &[1, 2], 100);
        store.record_shown("u", &[1], 200);
        let h = store.user("u");
        assert_eq!(
            h.shown.get(&1),
            Some(&Shown {
                times: 2,
                last_ms: 200
            })
        );
        assert_eq!(h.shown.get(&2).map(|s| s.times), Some(1));
        store.record("u", &[ev(1, EventKind::Click, 300)]);
        assert!(!store.user("u").shown.contains_key(&1), "a click resets it");
    }

    #[test]
    fn a_snapshot_does_not_change_under_later_writes() {
        let store = InMemoryState::new(10, TrendingConfig::default());
        store.record("u", &[ev(1, EventKind::View, 10)]);
        let before = store.user("u");
        store.record("u", &[ev(2, EventKind::View, 20)]);
        store.record_shown("u", &[3], 30);
        assert_eq!(before.recent.len(), 1);
        assert!(before.shown.is_empty());
        let after = store.user("u");
        assert_eq!(after.recent.len(), 2);
        assert_eq!(after.shown.get(&3).map(|s| s.times), Some(1));
    }

    #[test]
    fn forgets_the_least_recently_shown_beyond_the_limit() {
        let store = InMemoryState::new(10, TrendingConfig::default());
        let mut most = 0;
        // One answer of 10 items per millisecond, every item new.
        for answer in 0..200u32 {
            let items: Vec<u32> = (answer * 10..answer * 10 + 10).collect();
            store.record_shown("u", &items, i64::from(answer));
            most = most.max(store.user("u").shown.len());
        }
        let shown = &store.user("u").shown;
        assert!(most <= MAX_SHOWN + SHOWN_SLACK, "held {most}");
        assert!(shown.len() >= MAX_SHOWN);
        // What is kept is the most recent: every item of the last MAX_SHOWN / 10 answers.
        let newest = 200 * 10 - MAX_SHOWN as u32;
        assert!((newest..2000).all(|i| shown.contains_key(&i)));
        let oldest_kept = shown.values().map(|s| s.last_ms).min();
        assert!(oldest_kept >= Some(200 - (MAX_SHOWN + SHOWN_SLACK) as i64 / 10));
    }
}
