use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tandem_catalog::ItemIdx;

/// Event types, strongest signal last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    View,
    Click,
    AddToCart,
    Purchase,
}

impl EventKind {
    /// The number of `tandem.v1.EventType`, also what logs and checkpoints store.
    pub fn code(self) -> u8 {
        match self {
            EventKind::View => 1,
            EventKind::Click => 2,
            EventKind::AddToCart => 3,
            EventKind::Purchase => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => EventKind::View,
            2 => EventKind::Click,
            3 => EventKind::AddToCart,
            4 => EventKind::Purchase,
            _ => return None,
        })
    }
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

/// What a heap allocation of `bytes` costs: rounded up to 16 plus 32 for the allocator's
/// header and the free space that churn leaves between blocks (measured with glibc by the
/// soak test, `tests/soak.rs`).
pub(crate) fn allocation(bytes: usize) -> usize {
    bytes.div_ceil(16) * 16 + 32
}

/// Impressions remembered per user; the least recently shown go first.
pub(crate) const MAX_SHOWN: usize = 1000;
/// Forgetting waits until this many more are held, then drops down to `MAX_SHOWN` in one
/// pass: a user at the limit no longer pays a pass over every impression on each answer.
pub(crate) const SHOWN_SLACK: usize = MAX_SHOWN / 8;

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

    /// Heap bytes this state holds, allocator overhead included (what the in-memory store's
    /// budget counts).
    pub fn approx_bytes(&self) -> usize {
        // A hashbrown table holds a power-of-two number of buckets (capacity is 7/8 of them),
        // each its entry plus one control byte.
        fn map<V>(m: &ItemMap<V>) -> usize {
            match m.capacity() {
                0 => 0,
                c => allocation(
                    (c * 8 / 7).next_power_of_two() * (std::mem::size_of::<(ItemIdx, V)>() + 1),
                ),
            }
        }
        let recent = match self.recent.capacity() {
            0 => 0,
            c => allocation(c * std::mem::size_of::<UserEvent>()),
        };
        // The history itself sits behind an `Arc`: two counts before it.
        allocation(std::mem::size_of::<Self>() + 16)
            + recent
            + map(&self.purchased)
            + map(&self.shown)
    }

    /// Inserts in time order (late events land where they belong) and keeps the newest `capacity`.
    pub(crate) fn record(&mut self, event: UserEvent, capacity: usize) {
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

    pub(crate) fn record_shown(&mut self, items: &[ItemIdx], at_ms: i64) {
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

/// Why a store could not answer (a shared store out of reach): the caller answers from what
/// it can and says so, rather than failing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StateUnavailable(pub String);

/// Where the request path reads user state and trending: the embedded [`crate::InMemoryState`]
/// (one gateway's memory), or a store shared by several gateway replicas. Writes are not
/// here: they follow the event log (the in-memory store is written by the gateway's own
/// intake, a shared store by its log follower), so that the log stays the source of truth.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The user's state as of now (empty for unknown users): a snapshot that later writes
    /// do not change.
    async fn user(&self, user_id: &str) -> Result<Arc<UserHistory>, StateUnavailable>;
    /// Notes that `items` were recommended to the user (off the answer's latency path; an
    /// impression that cannot be stored is dropped).
    fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64);
    /// The `k` most trending items that `admits` accepts, with their decayed counts.
    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)>;
}
