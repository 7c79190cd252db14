use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};

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

/// One user's state: the most recent events in time order, purchases, and what was shown to
/// them and ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserHistory {
    pub recent: VecDeque<UserEvent>,
    /// Item → time of its latest purchase.
    pub purchased: HashMap<ItemIdx, i64>,
    /// Item → impressions since the user's last event on it (an event on it resets this).
    pub shown: HashMap<ItemIdx, Shown>,
}

/// Impressions remembered per user; the least recently shown go first.
const MAX_SHOWN: usize = 1000;

impl UserHistory {
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Items bought at or after `since_ms`.
    pub fn purchased_since(&self, since_ms: i64) -> impl Iterator<Item = ItemIdx> + '_ {
        self.purchased
            .iter()
            .filter(move |(_, t)| **t >= since_ms)
            .map(|(i, _)| *i)
    }

    /// Inserts in time order (late events land where they belong) and keeps the newest `capacity`.
    fn record(&mut self, event: UserEvent, capacity: usize) {
        if event.kind == EventKind::Purchase {
            let at = self
                .purchased
                .entry(event.item)
                .or_insert(event.timestamp_ms);
            *at = (*at).max(event.timestamp_ms);
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
        if self.shown.len() > MAX_SHOWN {
            let mut by_age: Vec<(ItemIdx, i64)> =
                self.shown.iter().map(|(i, s)| (*i, s.last_ms)).collect();
            by_age.sort_by_key(|x| x.1);
            for (item, _) in &by_age[..self.shown.len() - MAX_SHOWN] {
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
    /// A copy of the user's state (empty for unknown users).
    fn user(&self, user_id: &str) -> UserHistory;
    /// The `k` most trending items that `admits` accepts, with their decayed counts.
    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)>;
    /// Number of users with state.
    fn users(&self) -> usize;
}

/// Process-local state: users in shards to keep writers of different users apart.
#[derive(Debug)]
pub struct InMemoryState {
    shards: Vec<RwLock<HashMap<String, UserHistory>>>,
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

    fn shard(&self, user_id: &str) -> &RwLock<HashMap<String, UserHistory>> {
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
            let history = shard.entry(user_id.to_owned()).or_default();
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
        shard
            .entry(user_id.to_owned())
            .or_default()
            .record_shown(items, at_ms);
    }

    fn user(&self, user_id: &str) -> UserHistory {
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
            Some(&10),
            "purchase outlives the window"
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
}
