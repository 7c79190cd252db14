//! The write side: this gateway's logged records reach Redis in log order, one script call
//! each, pipelined; when Redis is out of reach, or turns out to have lost data, the follower
//! catches it up by reading the log from where Redis says it got to.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::Value;
use tandem_events::{LogFollower, Logged, read_log};
use tokio::sync::{mpsc, oneshot};

use crate::reads::within;
use crate::{RedisState, SharedStateError, scripts};

/// A record the intake logged, with who waits for it to be applied.
pub(crate) struct Committed {
    seq: u64,
    record: Arc<Logged>,
    done: Option<oneshot::Sender<bool>>,
}

/// Erasure announcements kept in Redis (a gateway down for longer than this many erasures
/// misses the oldest: the README says to run ForgetUser again on it).
const ERASURES_KEPT: usize = 100_000;
/// Where a gateway notes the last erasure announcement it acted on.
const ERASURE_CURSOR: &str = "erasure-cursor";

/// Records per pipeline, in a catch-up.
const CATCH_UP_CHUNK: usize = 256;
/// How long a missing sequence number is waited for before the log is read instead (a
/// batch logged but never handed over: the intake's task was lost).
const GAP_WAIT: Duration = Duration::from_millis(500);
/// Between tries while Redis is out of reach, and between checks that it still holds
/// what this gateway applied.
const RETRY: Duration = Duration::from_secs(1);

/// The SHA-1 Redis names a script by (what EVALSHA takes).
pub(crate) fn sha(script: Script) -> &'static str {
    static APPLY: OnceLock<String> = OnceLock::new();
    static SHOWN: OnceLock<String> = OnceLock::new();
    static CLAIM: OnceLock<String> = OnceLock::new();
    let (cell, text) = match script {
        Script::Apply => (&APPLY, scripts::APPLY),
        Script::Shown => (&SHOWN, scripts::SHOWN),
        Script::Claim => (&CLAIM, scripts::CLAIM),
    };
    cell.get_or_init(|| redis::Script::new(text).get_hash().to_owned())
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    Apply,
    Shown,
    Claim,
}

/// What one script call reported.
enum Outcome {
    Applied,
    /// Redis's position for this log is behind what this gateway knew it held.
    Lost(u64),
}

impl RedisState {
    fn applied_key(&self, log_id: &str) -> String {
        self.key(&["applied:", log_id])
    }

    /// Runs a pipeline of script calls, loading the scripts first when Redis lost them (a
    /// restart); a pipeline re-run is harmless: applies are idempotent by log position.
    pub(crate) async fn run_scripts(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, SharedStateError> {
        let first: Result<Vec<Value>, _> =
            within(&self.conn, self.config.write_timeout, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await;
        match first {
            Err(SharedStateError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                within(&self.conn, self.config.write_timeout, |mut c| async move {
                    for script in [scripts::APPLY, scripts::SHOWN, scripts::CLAIM] {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(script)
                            .query_async::<String>(&mut c)
                            .await?;
                    }
                    Ok(())
                })
                .await?;
                within(&self.conn, self.config.write_timeout, |mut c| async move {
                    pipe.query_async(&mut c).await
                })
                .await
            }
            other => other,
        }
    }

    /// Adds one record's script call to `pipe`.
    fn push_apply(
        &self,
        pipe: &mut redis::Pipeline,
        key: &str,
        seq: u64,
        expect: u64,
        record: &Logged,
    ) {
        let t = &self.config.trending;
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(sha(Script::Apply))
            .arg(1)
            .arg(key)
            .arg(seq)
            .arg(expect)
            .arg(&self.config.key_prefix)
            .arg(self.config.events_per_user.max(1))
            .arg(t.half_life_ms.max(1))
            .arg(t.type_weights[0])
            .arg(t.type_weights[1])
            .arg(t.type_weights[2])
            .arg(t.type_weights[3])
            .arg(self.config.trending_items)
            .arg(self.idle_ttl_s());
        match record {
            Logged::ForgetUser(user) => {
                cmd.arg("F").arg(user);
            }
            Logged::Events(events) => {
                cmd.arg("E");
                for e in events {
                    cmd.arg(&e.user_id)
                        .arg(&e.item_id)
                        .arg(e.kind.code())
                        .arg(e.timestamp_ms);
                }
            }
        }
    }

    /// Applies `records` (consecutive, oldest first) in one pipeline.
    async fn apply(
        &self,
        key: &str,
        records: &[(u64, &Logged)],
        expect: u64,
    ) -> Result<Outcome, SharedStateError> {
        let mut pipe = redis::pipe();
        for (seq, record) in records {
            self.push_apply(&mut pipe, key, *seq, expect, record);
        }
        let replies = self.run_scripts(&pipe).await;
        self.note(&replies, "apply");
        for reply in replies? {
            let (code, position): (i64, u64) = redis::from_redis_value(reply)
                .map_err(|e| SharedStateError::Unexpected(e.to_string()))?;
            if code < 0 {
                return Ok(Outcome::Lost(position));
            }
        }
        Ok(Outcome::Applied)
    }

    /// Redis's position for this log (0: it holds nothing of it).
    async fn position(&self, key: &str) -> Result<u64, SharedStateError> {
        let key = key.to_owned();
        let read = within(&self.conn, self.config.write_timeout, |mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<u64>>(&mut c)
                .await
        })
        .await;
        self.note(&read, "position");
        Ok(read?.unwrap_or(0))
    }

    /// Applies the log after Redis's position for it; returns the position reached.
    async fn catch_up(&self, dir: &Path, key: &str) -> Result<u64, SharedStateError> {
        let from = self.position(key).await?;
        let started = std::time::Instant::now();
        let (tx, mut rx) = mpsc::channel::<Vec<(u64, Logged)>>(4);
        let dir = dir.to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(CATCH_UP_CHUNK);
            let mut stopped = false;
            let last = read_log(&dir, from, |seq, record| {
                chunk.push((seq, record));
                if chunk.len() == CATCH_UP_CHUNK {
                    stopped = tx.blocking_send(std::mem::take(&mut chunk)).is_err();
                }
                !stopped
            })?;
            if !chunk.is_empty() {
                let _ = tx.blocking_send(chunk);
            }
            Ok::<u64, tandem_events::EventLogError>(last)
        });
        let mut reached = from;
        let mut records = 0u64;
        while let Some(chunk) = rx.recv().await {
            let refs: Vec<(u64, &Logged)> = chunk.iter().map(|(s, r)| (*s, r)).collect();
            match self.apply(key, &refs, 0).await? {
                Outcome::Applied => {}
                Outcome::Lost(at) => {
                    return Err(SharedStateError::Unexpected(format!(
                        "Redis's position for this log moved back to {at} during a catch-up"
                    )));
                }
            }
            reached = refs.last().map_or(reached, |(s, _)| *s);
            records += refs.len() as u64;
            self.applied.store(reached, Ordering::Release);
        }
        drop(rx);
        let newest = reader
            .await
            .map_err(|e| SharedStateError::Unexpected(format!("log reader: {e}")))??;
        if records > 0 {
            tracing::info!(
                from,
                to = reached,
                records,
                seconds = started.elapsed().as_secs_f64(),
                "Redis caught up from the event log"
            );
        }
        metrics::counter!("tandem_shared_state_catch_up_records_total").increment(records);
        if from > newest {
            // Redis ahead of the log (the log was cut back): records numbered from here on
            // must not be taken for applied ones.
            tracing::warn!(
                redis = from,
                log = newest,
                "Redis says more of this event log is applied than the log holds; resetting its position"
            );
            let key = key.to_owned();
            within(&self.conn, self.config.write_timeout, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(newest)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            reached = newest;
        }
        Ok(reached)
    }
}

/// Applies records in log order for as long as the store lives.
async fn follow(
    state: Weak<RedisState>,
    dir: std::path::PathBuf,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Committed>,
) {
    let mut pending: BTreeMap<u64, Committed> = BTreeMap::new();
    let mut behind = true;
    loop {
        let Some(store) = state.upgrade() else {
            return;
        };
        store.behind.store(behind, Ordering::Release);
        if behind {
            match store.catch_up(&dir, &key).await {
                Ok(reached) => {
                    store.applied.store(reached, Ordering::Release);
                    behind = false;
                    store.behind.store(false, Ordering::Release);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "catch-up failed; retrying");
                    // Everything queued so far is in the log, which the next catch-up
                    // reads: waiting acknowledgements go out now, and nothing is held in
                    // memory however long Redis stays away.
                    while let Ok(c) = rx.try_recv() {
                        pending.insert(c.seq, c);
                    }
                    for (_, c) in std::mem::take(&mut pending) {
                        if let Some(done) = c.done {
                            let _ = done.send(false);
                        }
                    }
                    drop(store);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let applied = store.applied.load(Ordering::Acquire);
        // Already applied (by the catch-up): acknowledge.
        while let Some(entry) = pending.first_entry() {
            if *entry.key() > applied {
                break;
            }
            if let Some(done) = entry.remove().done {
                let _ = done.send(true);
            }
        }
        let mut run: Vec<Committed> = Vec::new();
        while let Some(c) = pending.remove(&(applied + 1 + run.len() as u64)) {
            run.push(c);
        }
        if run.is_empty() {
            drop(store);
            // Wait for the next record; meanwhile check now and then that Redis still holds
            // what was applied (a restart that lost data is otherwise noticed only at the
            // next write).
            let wait = if pending.is_empty() { RETRY } else { GAP_WAIT };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(c)) => {
                    pending.insert(c.seq, c);
                    while let Ok(c) = rx.try_recv() {
                        pending.insert(c.seq, c);
                    }
                }
                Ok(None) => return,
                Err(_) if !pending.is_empty() => behind = true,
                Err(_) => {
                    let Some(store) = state.upgrade() else {
                        return;
                    };
                    match store.position(&key).await {
                        Ok(at) if at < store.applied.load(Ordering::Acquire) => {
                            tracing::warn!(
                                redis = at,
                                "Redis lost user state; catching it up from the event log"
                            );
                            behind = true;
                        }
                        Ok(_) => {}
                        Err(_) => behind = true,
                    }
                }
            }
            continue;
        }
        let records: Vec<(u64, &Logged)> = run.iter().map(|c| (c.seq, c.record.as_ref())).collect();
        let outcome = store.apply(&key, &records, applied).await;
        let ok = match outcome {
            Ok(Outcome::Applied) => {
                let last = run.last().map_or(applied, |c| c.seq);
                store.applied.store(last, Ordering::Release);
                true
            }
            Ok(Outcome::Lost(at)) => {
                tracing::warn!(
                    redis = at,
                    "Redis lost user state; catching it up from the event log"
                );
                behind = true;
                false
            }
            Err(_) => {
                behind = true;
                false
            }
        };
        for mut c in run {
            if let Some(done) = c.done.take() {
                let _ = done.send(ok);
            }
        }
    }
}

#[async_trait::async_trait]
impl LogFollower for RedisState {
    async fn claim(&self, ids: &[(&str, &str)]) -> Option<Vec<bool>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut pipe = redis::pipe();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(sha(Script::Claim))
            .arg(0)
            .arg(&self.config.key_prefix)
            .arg(now)
            .arg(self.config.dedupe_ttl.as_millis().max(1) as u64);
        for (user, event_id) in ids {
            cmd.arg(*user).arg(*event_id);
        }
        let claimed = self.run_scripts(&pipe).await;
        self.note(&claimed, "claim");
        let reply = claimed.ok()?.into_iter().next()?;
        let flags: Vec<i64> = redis::from_redis_value(reply).ok()?;
        (flags.len() == ids.len()).then(|| flags.into_iter().map(|f| f == 1).collect())
    }

    async fn release(&self, ids: &[(&str, &str)]) {
        let mut pipe = redis::pipe();
        for (user, event_id) in ids {
            pipe.cmd("ZREM")
                .arg(self.key(&["e:", user]))
                .arg(*event_id)
                .ignore();
        }
        let _ = within(&self.conn, self.config.write_timeout, |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    }

    async fn committed(&self, seq: u64, record: Arc<Logged>) -> bool {
        let Some(tx) = self.committed.get() else {
            return false;
        };
        // While Redis is being caught up (or is out of reach) the record joins the queue but
        // nobody waits for it: the acknowledgement needs only the log.
        if self.behind.load(Ordering::Acquire) {
            let _ = tx.send(Committed {
                seq,
                record,
                done: None,
            });
            return false;
        }
        let (done, applied) = oneshot::channel();
        let sent = tx.send(Committed {
            seq,
            record,
            done: Some(done),
        });
        if sent.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.config.write_timeout, applied).await,
            Ok(Ok(true))
        )
    }

    async fn announce_erasure(&self, user_id: &str) -> bool {
        let Some(origin) = self.log_id.get() else {
            return false;
        };
        let (key, user, origin) = (self.key(&["erasures"]), user_id.to_owned(), origin.clone());
        let sent = within(&self.conn, self.config.write_timeout, |mut c| async move {
            redis::cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(ERASURES_KEPT)
                .arg("*")
                .arg("user")
                .arg(user)
                .arg("origin")
                .arg(origin)
                .query_async::<String>(&mut c)
                .await
        })
        .await;
        sent.is_ok()
    }

    fn start(&self, dir: &Path, _last_seq: u64) -> Result<(), tandem_events::EventLogError> {
        let log_id = tandem_events::log_id(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if self.committed.set(tx).is_err() {
            return Ok(());
        }
        let _ = self.log_id.set(log_id.clone());
        let _ = self.log_dir.set(dir.to_owned());
        tracing::info!(log_id, "following the event log into Redis");
        tokio::spawn(follow(
            self.me.clone(),
            dir.to_owned(),
            self.applied_key(&log_id),
            rx,
        ));
        Ok(())
    }
}

impl RedisState {
    /// Acts on erasures announced by other gateways, in order, for as long as the store lives:
    /// `erase` erases the user here (log, exports, served-feature log) and says whether it
    /// worked; the last one handled is noted in the event log's directory, so a restart goes
    /// on from there. A gateway starting on a new log begins at the newest announcement (its
    /// log holds nothing older).
    pub async fn follow_erasures<F, Fut>(self: Arc<Self>, erase: F)
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let (Some(dir), Some(own)) = (self.log_dir.get().cloned(), self.log_id.get().cloned())
        else {
            tracing::warn!("erasures are not followed: the event log is not followed yet");
            return;
        };
        let cursor_file = dir.join(ERASURE_CURSOR);
        let mut cursor = std::fs::read_to_string(&cursor_file)
            .ok()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        let key = self.key(&["erasures"]);
        let me = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(store) = me.upgrade() else {
                return;
            };
            let limit = store.config.write_timeout;
            let read = match cursor.clone() {
                // No cursor yet: the newest announcement is where this log starts.
                None => {
                    within(&store.conn, limit, |mut c| {
                        let key = key.clone();
                        async move {
                            let newest: Vec<(String, Vec<(String, String)>)> =
                                redis::cmd("XREVRANGE")
                                    .arg(key)
                                    .arg("+")
                                    .arg("-")
                                    .arg("COUNT")
                                    .arg(1)
                                    .query_async(&mut c)
                                    .await?;
                            Ok((
                                Some(
                                    newest
                                        .first()
                                        .map_or_else(|| "0-0".to_owned(), |e| e.0.clone()),
                                ),
                                Vec::new(),
                            ))
                        }
                    })
                    .await
                }
                Some(after) => {
                    within(&store.conn, limit, |mut c| {
                        let key = key.clone();
                        async move {
                            let entries: Vec<(String, Vec<(String, String)>)> =
                                redis::cmd("XRANGE")
                                    .arg(key)
                                    .arg(format!("({after}"))
                                    .arg("+")
                                    .arg("COUNT")
                                    .arg(100)
                                    .query_async(&mut c)
                                    .await?;
                            Ok((None, entries))
                        }
                    })
                    .await
                }
            };
            drop(store);
            let mut wait = RETRY;
            match read {
                Ok((Some(start), _)) => {
                    note_cursor(&cursor_file, &start);
                    cursor = Some(start);
                    continue;
                }
                Ok((None, entries)) => {
                    if entries.len() == 100 {
                        wait = Duration::ZERO;
                    }
                    for (id, fields) in entries {
                        let field = |name: &str| {
                            fields
                                .iter()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone())
                        };
                        if let Some(user) = field("user")
                            && field("origin").as_deref() != Some(own.as_str())
                        {
                            if !erase(user.clone()).await {
                                // Tried again at the next pass.
                                wait = RETRY;
                                break;
                            }
                            tracing::info!(user_id = %user, "erased a user another gateway forgot");
                        }
                        note_cursor(&cursor_file, &id);
                        cursor = Some(id);
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Notes the last erasure announcement handled (best effort: a lost note repeats an erasure,
/// which removes nothing more).
fn note_cursor(path: &Path, id: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, id)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "could not note the erasure cursor");
    }
}
