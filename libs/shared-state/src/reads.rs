//! The answer path's side: a user's state in one pipelined round trip, trending copied in
//! every second, impressions written in the background.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tandem_catalog::ItemIdx;
use tandem_personalization::{
    EventKind, Purchases, Shown, StateStore, StateUnavailable, UserEvent, UserHistory,
};
use tokio::sync::mpsc;

use crate::{Impression, MAX_SHOWN, RedisState, SharedStateError};

/// Runs `f` on a clone of the connection, bounded by `limit`.
pub(crate) async fn within<T, F>(
    conn: &ConnectionManager,
    limit: Duration,
    f: impl FnOnce(ConnectionManager) -> F,
) -> Result<T, SharedStateError>
where
    F: std::future::Future<Output = redis::RedisResult<T>>,
{
    match tokio::time::timeout(limit, f(conn.clone())).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SharedStateError::Timeout(limit)),
    }
}

/// `count:last ms` as the scripts write them.
fn pair(s: &str) -> Option<(u32, i64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl RedisState {
    async fn read_user(&self, user_id: &str) -> Result<Arc<UserHistory>, SharedStateError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(self.key(&["r:", user_id]))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("HGETALL")
            .arg(self.key(&["p:", user_id]))
            .cmd("HGETALL")
            .arg(self.key(&["d:", user_id]));
        type Reply = (
            Vec<(String, f64)>,
            Vec<(String, String)>,
            Vec<(String, String)>,
        );
        let read: Result<Reply, _> =
            within(&self.conn, self.config.read_timeout, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await;
        self.note(&read, "read");
        let (recent, purchased, shown) = read?;
        let mut history = UserHistory::default();
        // Members are `<seq>:<n>:<type>:<item id>`, in time order (the score).
        for (member, at) in recent {
            let mut parts = member.splitn(4, ':');
            let (Some(_), Some(_), Some(kind), Some(item)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Some(kind), Some(item)) = (
                kind.parse().ok().and_then(EventKind::from_code),
                self.catalog.idx_of(item),
            ) else {
                continue;
            };
            history.recent.push_back(UserEvent {
                item,
                kind,
                timestamp_ms: at as i64,
            });
        }
        for (item, value) in purchased {
            if let (Some(item), Some((count, last_ms))) = (self.catalog.idx_of(&item), pair(&value))
            {
                history.purchased.insert(item, Purchases { count, last_ms });
            }
        }
        for (item, value) in shown {
            if let (Some(item), Some((times, last_ms))) = (self.catalog.idx_of(&item), pair(&value))
            {
                history.shown.insert(item, Shown { times, last_ms });
            }
        }
        Ok(Arc::new(history))
    }

    /// Copies the top of Redis's trending set into this gateway, as decayed counts.
    pub(crate) async fn refresh_trending(&self) -> Result<(), SharedStateError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.key(&["trending:meta"]))
            .arg("ref")
            .arg("latest")
            .cmd("ZRANGE")
            .arg(self.key(&["trending"]))
            .arg(0)
            .arg(self.config.trending_items.max(1) as i64 - 1)
            .arg("REV")
            .arg("WITHSCORES");
        type Reply = ((Option<i64>, Option<i64>), Vec<(String, f64)>);
        let read: Result<Reply, _> =
            within(&self.conn, self.config.write_timeout, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await;
        self.note(&read, "trending");
        let ((reference, latest), scaled) = read?;
        let now = match (reference, latest) {
            (Some(r), Some(l)) => {
                ((r - l) as f64 / self.config.trending.half_life_ms.max(1) as f64).exp2()
            }
            _ => 1.0,
        };
        let top: Vec<(ItemIdx, f32)> = scaled
            .into_iter()
            .filter_map(|(item, s)| Some((self.catalog.idx_of(&item)?, (s * now) as f32)))
            .collect();
        *self.trending.write().unwrap_or_else(|e| e.into_inner()) = top;
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for RedisState {
    async fn user(&self, user_id: &str) -> Result<Arc<UserHistory>, StateUnavailable> {
        self.read_user(user_id)
            .await
            .map_err(|e| StateUnavailable(e.to_string()))
    }

    fn record_shown(&self, user_id: &str, items: &[ItemIdx], at_ms: i64) {
        let items = items
            .iter()
            .filter(|&&i| (i as usize) < self.catalog.len())
            .map(|&i| self.catalog.item_id(i).to_owned())
            .collect::<Vec<_>>();
        if items.is_empty() {
            return;
        }
        let sent = self.impressions.try_send(Impression {
            user: user_id.to_owned(),
            items,
            at_ms,
        });
        if sent.is_err() {
            metrics::counter!("tandem_shared_state_impressions_dropped_total").increment(1);
        }
    }

    fn trending(&self, k: usize, admits: &dyn Fn(ItemIdx) -> bool) -> Vec<(ItemIdx, f32)> {
        self.trending
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(i, _)| admits(*i))
            .take(k)
            .copied()
            .collect()
    }
}

/// Every second, for as long as the store lives.
pub(crate) async fn refresh_trending_periodically(state: Weak<RedisState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        // Failures are counted and noted by `note`; the last copy stays in use.
        let _ = state.refresh_trending().await;
    }
}

/// Writes impressions in pipelined batches; dropped (and counted) while Redis is out of reach.
pub(crate) async fn write_impressions(state: Weak<RedisState>, mut rx: mpsc::Receiver<Impression>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut pipe = redis::pipe();
        for shown in &batch {
            pipe.cmd("EVALSHA")
                .arg(crate::follower::sha(crate::follower::Script::Shown))
                .arg(0)
                .arg(&state.config.key_prefix)
                .arg(&shown.user)
                .arg(shown.at_ms)
                .arg(state.idle_ttl_s())
                .arg(MAX_SHOWN)
                .arg(state.config.demote_after_shown)
                .arg(&shown.items)
                .ignore();
        }
        let written = state.run_scripts(&pipe).await;
        if written.is_err() {
            metrics::counter!("tandem_shared_state_impressions_dropped_total")
                .increment(batch.len() as u64);
        }
        state.note(&written, "impressions");
        batch.clear();
    }
}
