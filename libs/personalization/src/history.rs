use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::RwLock;

use tandem_catalog::ItemIdx;

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

/// One user's state: the most recent events in time order, and every purchase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserHistory {
    pub recent: VecDeque<UserEvent>,
    pub purchased: HashSet<ItemIdx>,
}

impl UserHistory {
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Inserts in time order (late events land where they belong) and keeps the newest `capacity`.
    fn record(&mut self, event: UserEvent, capacity: usize) {
        if event.kind == EventKind::Purchase {
            self.purchased.insert(event.item);
        }
        let at = self
            .recent
            .partition_point(|e| e.timestamp_ms <= event.timestamp_ms);
        self.recent.insert(at, event);
        while self.recent.len() > capacity {
            self.recent.pop_front();
        }
    }
}

/// Where user state lives.
pub trait HistoryStore: Send + Sync + 'static {
    /// Applies events for one user; they are visible to the next `get`.
    fn record(&self, user_id: &str, events: &[UserEvent]);
    /// A copy of the user's state (empty for unknown users).
    fn get(&self, user_id: &str) -> UserHistory;
    /// Number of users with state.
    fn users(&self) -> usize;
}

/// Process-local store, sharded to keep writers of different users apart.
#[derive(Debug)]
pub struct InMemoryHistory {
    shards: Vec<RwLock<HashMap<String, UserHistory>>>,
    capacity: usize,
}

impl InMemoryHistory {
    /// `capacity`: events kept per user (the oldest go first).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..64).map(|_| RwLock::new(HashMap::new())).collect(),
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

impl HistoryStore for InMemoryHistory {
    fn record(&self, user_id: &str, events: &[UserEvent]) {
        // A poisoned lock only means another writer panicked mid-insert; the map is still usable.
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let history = shard.entry(user_id.to_owned()).or_default();
        for e in events {
            history.record(*e, self.capacity);
        }
    }

    fn get(&self, user_id: &str) -> UserHistory {
        let shard = self
            .shard(user_id)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(user_id).cloned().unwrap_or_default()
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
        let store = InMemoryHistory::new(3);
        store.record(
            "u",
            &[ev(1, EventKind::Purchase, 10), ev(2, EventKind::View, 30)],
        );
        store.record(
            "u",
            &[ev(3, EventKind::View, 20), ev(4, EventKind::Click, 40)],
        );
        let h = store.get("u");
        let items: Vec<u32> = h.recent.iter().map(|e| e.item).collect();
        assert_eq!(items, [3, 2, 4], "oldest dropped, late event in place");
        assert!(h.purchased.contains(&1), "purchase outlives the window");
        assert!(store.get("other").is_empty());
        assert_eq!(store.users(), 1);
    }
}
