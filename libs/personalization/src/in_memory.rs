//! One gateway's user state in its own memory, within a budget: at most `max_users` users and
//! about `max_bytes` of state, the least recently used forgotten first, and users idle past a
//! TTL forgotten by [`InMemoryState::expire_idle`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tandem_catalog::ItemIdx;

use crate::checkpoint::StateSnapshot;
use crate::history::{StateStore, StateUnavailable, UserEvent, UserHistory, allocation};
use crate::trending::{Trending, TrendingConfig};

/// How much [`InMemoryState`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Events kept per user (the oldest go first).
    pub events_per_user: usize,
    /// Users kept; beyond it the least recently used are forgotten.
    pub max_users: usize,
    /// Memory for user state (ids, events, purchases, impressions, allocator overhead); the
    /// store keeps what it counts ([`UserHistory::approx_bytes`]) under seven eighths of it
    /// and forgets the least recently used beyond that.
    pub max_bytes: usize,
    /// Users neither read nor written for this long are forgotten (`None`: never).
    pub idle_ttl_ms: Option<i64>,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            events_per_user: 100,
            max_users: 1_000_000,
            max_bytes: 1 << 30,
            idle_ttl_ms: None,
        }
    }
}

/// Bytes a user costs beyond its history and id: its share of the shard's table (buckets are
/// at most half empty after growth, so two per user, each the entry plus a control byte).
const PER_USER_OVERHEAD: usize = 2 * (std::mem::size_of::<(String, Slot)>() + 1);

#[derive(Debug)]
struct Slot {
    history: Arc<UserHistory>,
    /// Last read or write (ms since the epoch): what eviction orders by. Atomic so that a read
    /// under the shared lock can note itself.
    touched: AtomicI64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Shard {
    // SipHash (the default): user ids are caller input.
    users: HashMap<String, Slot>,
    bytes: usize,
}

/// Process-local state: users in shards to keep writers of different users apart.
///
/// Histories are shared with the requests reading them and copied on write
/// (`Arc::make_mut`): a read costs a reference count, not a copy of up to a thousand
/// impressions, and a write copies only while a request still holds the old state.
///
/// Eviction is by hand rather than an LRU cache crate: reads stay under a shared lock and only
/// store a timestamp, where a linked-list LRU would relink (and so lock exclusively) on every
/// read; a shard over its budget drops its least recently used eighth in one pass, so the
/// sort is paid once per many inserts.
#[derive(Debug)]
pub struct InMemoryState {
    shards: Vec<RwLock<Shard>>,
    trending: Mutex<Trending>,
    limits: StateLimits,
    /// Per-shard budgets.
    shard_users: usize,
    shard_bytes: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl InMemoryState {
    pub fn new(limits: StateLimits, trending: TrendingConfig) -> Self {
        // Small budgets get one shard, so that "least recently used" holds over all users.
        let n = (limits.max_users / 4096).clamp(1, 64);
        Self {
            shards: (0..n).map(|_| RwLock::new(Shard::default())).collect(),
            trending: Mutex::new(Trending::new(trending)),
            shard_users: limits.max_users.div_ceil(n).max(1),
            // An eighth of the budget is left to what the count cannot see: fragmentation of
            // the allocator's free lists as users come and go.
            shard_bytes: (limits.max_bytes - limits.max_bytes / 8).div_ceil(n).max(1),
            limits: StateLimits {
                events_per_user: limits.events_per_user.max(1),
                ..limits
            },
        }
    }

    pub fn limits(&self) -> StateLimits {
        self.limits
    }

    fn shard(&self, user_id: &str) -> &RwLock<Shard> {
        // FNV-1a: stable and cheap; the shard only spreads lock contention.
        let h = user_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Bytes of user state held now (the budget's measure).
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
    }

    /// Forgets users idle past the TTL; returns how many. The gateway calls it periodically.
    pub fn expire_idle(&self) -> usize {
        let Some(ttl) = self.limits.idle_ttl_ms else {
            return 0;
        };
        let oldest = now_ms().saturating_sub(ttl);
        let mut expired = 0;
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            let before = shard.users.len();
            let mut freed = 0;
            shard.users.retain(|_, slot| {
                let keep = slot.touched.load(Ordering::Relaxed) >= oldest;
                if !keep {
                    freed += slot.bytes;
                }
                keep
            });
            shard.bytes -= freed;
            expired += before - shard.users.len();
        }
        if expired > 0 {
            metrics::counter!("tandem_user_state_evictions_total", "reason" => "idle")
                .increment(expired as u64);
        }
        expired
    }

    fn expired(&self, slot: &Slot, now: i64) -> bool {
        self.limits
            .idle_ttl_ms
            .is_some_and(|ttl| slot.touched.load(Ordering::Relaxed) < now.saturating_sub(ttl))
    }

    /// Applies `update` to the user's state, creating it if `create`; keeps the shard within
    /// its budget.
    fn update(&self, user_id: &str, create: bool, update: impl FnOnce(&mut UserHistory)) {
        let now = now_ms();
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        // Past the TTL but not yet swept: as gone as a swept one (a write must not bring the
        // old history back).
        if let Some(slot) = shard.users.get(user_id)
            && self.expired(slot, now)
        {
            let freed = slot.bytes;
            shard.users.remove(user_id);
            shard.bytes -= freed;
        }
        if !shard.users.contains_key(user_id) {
            if !create {
                return;
            }
            shard.users.insert(
                user_id.to_owned(),
                Slot {
                    history: Arc::default(),
                    touched: AtomicI64::new(now),
                    bytes: 0,
                },
            );
        }
        let Some(slot) = shard.users.get_mut(user_id) else {
            return;
        };
        let history = Arc::make_mut(&mut slot.history);
        update(history);
        let bytes = history.approx_bytes() + allocation(user_id.len()) + PER_USER_OVERHEAD;
        shard.bytes = shard.bytes + bytes - slot.bytes;
        slot.bytes = bytes;
        slot.touched.store(now, Ordering::Relaxed);
        if shard.users.len() > self.shard_users || shard.bytes > self.shard_bytes {
            self.evict(shard, user_id);
        }
    }

    /// Drops the least recently used users until the shard is an eighth under both budgets
    /// (never `keep`, the user just written).
    fn evict(&self, shard: &mut Shard, keep: &str) {
        let mut by_age: Vec<(i64, usize, &String)> = shard
            .users
            .iter()
            .filter(|(id, _)| id.as_str() != keep)
            .map(|(id, s)| (s.touched.load(Ordering::Relaxed), s.bytes, id))
            .collect();
        by_age.sort_unstable();
        let (user_goal, byte_goal) = (
            self.shard_users - self.shard_users / 8,
            self.shard_bytes - self.shard_bytes / 8,
        );
        let (mut users, mut bytes) = (shard.users.len(), shard.bytes);
        let mut doomed = Vec::new();
        for (_, b, id) in by_age {
            if users <= user_goal && bytes <= byte_goal {
                break;
            }
            users -= 1;
            bytes -= b;
            doomed.push(id.clone());
        }
        for id in &doomed {
            shard.users.remove(id);
        }
        shard.bytes = bytes;
        metrics::counter!("tandem_user_state_evictions_total", "reason" => "budget")
            .increment(doomed.len() as u64);
    }
}

#[async_trait::async_trait]
impl StateStore for InMemoryState {
    async fn user(&self, user_id: &str) -> Result<Arc<UserHistory>, StateUnavailable> {
        Ok(InMemoryState::user(self, user_id))
    }

    fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64) {
        InMemoryState::record_shown(self, user_id, items, at_ms)
    }

    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)> {
        InMemoryState::trending(self, k, admits)
    }
}

// A poisoned lock only means another writer panicked mid-update; the maps are still usable.
impl InMemoryState {
    /// Applies events for one user (and to trending); visible to the next read.
    pub fn record(&self, user_id: &str, events: &[UserEvent]) {
        let capacity = self.limits.events_per_user;
        self.update(user_id, true, |history| {
            for e in events {
                history.record(*e, capacity);
            }
        });
        let mut trending = self.trending.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            trending.record(e);
        }
    }

    /// Notes that `items` were recommended to the user; only for users with state: an answer
    /// to an unknown user creates none.
    pub fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64) {
        self.update(user_id, false, |history| history.record_shown(items, at_ms));
    }

    /// The user's state as of now (empty for unknown users).
    pub fn user(&self, user_id: &str) -> Arc<UserHistory> {
        let shard = self
            .shard(user_id)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(slot) = shard.users.get(user_id) else {
            return Arc::default();
        };
        let now = now_ms();
        if self.expired(slot, now) {
            // Expired; the next sweep removes it.
            return Arc::default();
        }
        slot.touched.store(now, Ordering::Relaxed);
        slot.history.clone()
    }

    /// The `k` most trending items that `admits` accepts, with their decayed counts.
    pub fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)> {
        self.trending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .top(k, admits)
    }

    /// Number of users with state.
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).users.len())
            .sum()
    }

    /// Removes everything held about the user (right to erasure); `true` if there was any.
    pub fn forget(&self, user_id: &str) -> bool {
        let mut shard = self
            .shard(user_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match shard.users.remove(user_id) {
            Some(slot) => {
                shard.bytes -= slot.bytes;
                true
            }
            None => false,
        }
    }

    /// Everything held, for a checkpoint.
    pub fn snapshot(&self) -> StateSnapshot {
        let mut users = Vec::with_capacity(self.users());
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            users.extend(
                shard
                    .users
                    .iter()
                    .map(|(id, slot)| (id.clone(), slot.history.clone())),
            );
        }
        let trending = self
            .trending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        StateSnapshot {
            users,
            trending: Some(trending),
        }
    }

    /// Loads a checkpoint taken by [`InMemoryState::snapshot`] (into an empty store).
    pub fn restore(&self, snapshot: StateSnapshot) {
        for (id, history) in snapshot.users {
            self.update(&id, true, |h| *h = Arc::unwrap_or_clone(history));
        }
        if let Some(saved) = snapshot.trending {
            self.trending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{EventKind, MAX_SHOWN, Purchases, SHOWN_SLACK, Shown};

    fn limits(events_per_user: usize) -> StateLimits {
        StateLimits {
            events_per_user,
            ..StateLimits::default()
        }
    }

    fn ev(item: u32, kind: EventKind, t: i64) -> UserEvent {
        UserEvent {
            item,
            kind,
            timestamp_ms: t,
        }
    }

    #[test]
    fn keeps_time_order_bounded_and_all_purchases() {
        let store = InMemoryState::new(limits(3), TrendingConfig::default());
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
        let store = InMemoryState::new(limits(10), TrendingConfig::default());
        store.record_shown("u", &[1, 2], 100);
        assert_eq!(
            store.users(),
            0,
            "an answer to an unknown user creates no state"
        );
        store.record("u", &[ev(9, EventKind::View, 50)]);
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
        let store = InMemoryState::new(limits(10), TrendingConfig::default());
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
        let store = InMemoryState::new(limits(10), TrendingConfig::default());
        store.record("u", &[ev(999_999, EventKind::View, 0)]);
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

    fn budget(max_users: usize, max_bytes: usize) -> StateLimits {
        StateLimits {
            events_per_user: 10,
            max_users,
            max_bytes,
            idle_ttl_ms: None,
        }
    }

    #[test]
    fn forgets_the_least_recently_used_beyond_max_users() {
        let store = InMemoryState::new(budget(80, usize::MAX), TrendingConfig::default());
        for u in 0..80 {
            store.record(&format!("u{u}"), &[ev(1, EventKind::View, 10)]);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(store.users(), 80);
        // u0 is read, so it is recent again; u1.. are the least recently used.
        assert!(!store.user("u0").is_empty());
        store.record("new", &[ev(1, EventKind::View, 10)]);
        assert_eq!(store.users(), 70, "down to seven eighths in one pass");
        assert!(!store.user("u0").is_empty(), "recently read: kept");
        assert!(!store.user("new").is_empty(), "just written: kept");
        assert!(
            store.user("u1").is_empty(),
            "least recently used: forgotten"
        );
        assert!(!store.user("u79").is_empty());
    }

    #[test]
    fn keeps_state_bytes_within_the_budget() {
        let max_bytes = 200_000;
        let store = InMemoryState::new(budget(1_000_000, max_bytes), TrendingConfig::default());
        for u in 0..20_000u32 {
            store.record(&format!("user-{u}"), &[ev(u % 97, EventKind::Purchase, 10)]);
            assert!(store.bytes() <= max_bytes, "{} after {u}", store.bytes());
        }
        assert!(
            store.users() > 100 && store.users() < 20_000,
            "{}",
            store.users()
        );
        assert!(!store.user("user-19999").is_empty());
    }

    #[test]
    fn forgets_users_idle_past_the_ttl() {
        let store = InMemoryState::new(
            StateLimits {
                idle_ttl_ms: Some(30),
                ..budget(100, usize::MAX)
            },
            TrendingConfig::default(),
        );
        store.record("idle", &[ev(1, EventKind::View, 10)]);
        store.record("busy", &[ev(1, EventKind::View, 10)]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!store.user("busy").is_empty());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            store.user("idle").is_empty(),
            "past the TTL reads as unknown"
        );
        assert_eq!(store.expire_idle(), 1);
        assert_eq!(store.users(), 1);
        assert!(!store.user("busy").is_empty());
    }

    #[test]
    fn nothing_written_after_the_ttl_brings_the_old_state_back() {
        let store = InMemoryState::new(
            StateLimits {
                idle_ttl_ms: Some(30),
                ..budget(100, usize::MAX)
            },
            TrendingConfig::default(),
        );
        store.record("gone", &[ev(1, EventKind::Purchase, 10)]);
        let one = store.bytes();
        std::thread::sleep(std::time::Duration::from_millis(50));
        store.record_shown("gone", &[5], 60);
        assert!(
            store.user("gone").is_empty(),
            "an answer does not bring it back"
        );
        assert_eq!(store.bytes(), 0, "and its bytes are given back");
        store.record("gone", &[ev(2, EventKind::View, 70)]);
        let h = store.user("gone");
        let items: Vec<u32> = h.recent.iter().map(|e| e.item).collect();
        assert_eq!(items, [2], "a write after the TTL starts afresh");
        assert!(h.purchased.is_empty());
        assert!(
            store.bytes() < one,
            "a view costs less than the purchase did"
        );
    }

    #[test]
    fn a_rejected_history_write_keeps_accounting_exact() {
        let store = InMemoryState::new(budget(10, usize::MAX), TrendingConfig::default());
        store.record("u", &[ev(1, EventKind::Purchase, 10)]);
        let one = store.bytes();
        store.record("v", &[ev(1, EventKind::Purchase, 10)]);
        assert_eq!(store.bytes(), 2 * one);
        store.record_shown("nobody", &[1, 2, 3], 20);
        assert_eq!(store.bytes(), 2 * one);
    }
}
