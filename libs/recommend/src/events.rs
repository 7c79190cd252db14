//! Event intake: validate, recognise retries, log durably, then apply to user state, in that
//! order, so that an acknowledged event is on disk and a retried one counts once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tandem_catalog::{Catalog, MAX_ID_BYTES, id_problem};
use tandem_events::{
    Erased, EventLog, EventLogConfig, LogFollower, Logged, LoggedEvent, Replayed, SeenIds,
};
use tandem_experiments::ExperimentLedger;
use tandem_personalization::{EventKind, InMemoryState, UserEvent};

use crate::RecommendError;
use crate::checkpoint::{self, CheckpointWritten};
use crate::pipeline::{MAX_EVENTS_PER_BATCH, now_ms};

/// An event as a client sends it; `kind` is `None` when the type was unspecified.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IncomingEvent {
    pub user_id: String,
    pub item_id: String,
    pub kind: Option<EventKind>,
    /// Milliseconds since the epoch; 0 means now.
    pub timestamp_ms: i64,
    /// The producer's id for retries; empty for none.
    pub event_id: String,
}

/// Events may be at most this far in the future (client clock skew).
const MAX_FUTURE_MS: i64 = 24 * 3_600_000;
/// Nor older than 2000-01-01: an earlier time is a unit mistake (seconds, not milliseconds).
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    pub accepted: usize,
    /// Retries of events already recorded.
    pub duplicates: usize,
}

/// What [`EventIntake::forget_user`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct UserErased {
    /// The erasure record's place in the event log.
    pub seq: u64,
    /// Whether the user had live state.
    pub state: bool,
    pub log: Erased,
    /// Whether checkpoints were rewritten without the user.
    pub checkpoint: bool,
    /// Whether the other gateways sharing the state store were told to erase the user.
    pub announced: bool,
}

/// An event refused on its own (streaming intake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position in the batch.
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

/// Validated and ready to log.
struct Valid {
    logged: LoggedEvent,
    event: UserEvent,
}

fn check(catalog: &Catalog, e: &IncomingEvent, now: i64) -> Result<Valid, (&'static str, String)> {
    if let Some(problem) = id_problem(&e.user_id) {
        return Err(("user_id", problem));
    }
    if e.event_id.len() > MAX_ID_BYTES {
        return Err((
            "event_id",
            format!(
                "must be at most {MAX_ID_BYTES} bytes, got {}",
                e.event_id.len()
            ),
        ));
    }
    if let Some(problem) = id_problem(&e.item_id) {
        return Err(("item_id", problem));
    }
    let item = catalog
        .idx_of(&e.item_id)
        .ok_or_else(|| ("item_id", format!("unknown item `{}`", e.item_id)))?;
    let kind = e.kind.ok_or_else(|| {
        (
            "type",
            "must be VIEW, CLICK, ADD_TO_CART or PURCHASE".to_owned(),
        )
    })?;
    let timestamp_ms = match e.timestamp_ms {
        0 => now,
        t if t < MIN_TIMESTAMP_MS => {
            return Err((
                "timestamp_ms",
                format!("{t} is before 2000-01-01 (milliseconds since the epoch expected)"),
            ));
        }
        t if t > now + MAX_FUTURE_MS => {
            return Err((
                "timestamp_ms",
                format!("{t} is more than a day in the future"),
            ));
        }
        t => t,
    };
    Ok(Valid {
        logged: LoggedEvent {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            item_id: e.item_id.clone(),
            kind,
            timestamp_ms,
        },
        event: UserEvent {
            item,
            kind,
            timestamp_ms,
        },
    })
}

/// Where logged events go next.
#[derive(Clone)]
pub enum StateWriter {
    /// This gateway's memory: applied in place, checkpointed, replayed from the log at start.
    Local(Arc<InMemoryState>),
    /// A store shared by several gateways, which follows each gateway's log.
    Shared(Arc<dyn LogFollower>),
}

/// Applies one logged batch to in-memory state (events on items this catalog lacks are left
/// out; returns how many).
fn apply_local(state: &InMemoryState, catalog: &Catalog, record: &Logged) -> u64 {
    let events = match record {
        Logged::Events(events) => events,
        Logged::ForgetUser(user) => {
            state.forget(user);
            return 0;
        }
    };
    let mut unknown_items = 0;
    let mut by_user: HashMap<&str, Vec<UserEvent>> = HashMap::new();
    for e in events {
        match catalog.idx_of(&e.item_id) {
            Some(item) => by_user.entry(&e.user_id).or_default().push(UserEvent {
                item,
                kind: e.kind,
                timestamp_ms: e.timestamp_ms,
            }),
            None => unknown_items += 1,
        }
    }
    for (user, events) in by_user {
        state.record(user, &events);
    }
    unknown_items
}

/// Where accepted events go: the log first, then user state.
pub struct EventIntake {
    catalog: Arc<Catalog>,
    writer: StateWriter,
    log: EventLog,
    seen: SeenIds,
    /// Held shared by each commit from claiming its ids to applying its events, exclusively by
    /// a checkpoint while it copies the state: so a checkpoint sees every logged batch up to
    /// `applied_seq` applied, and none half done.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Newest batch logged and applied.
    applied_seq: AtomicU64,
    /// Where checkpoints go (`None`: not taken).
    checkpoints: Option<PathBuf>,
    /// One checkpoint at a time.
    checkpointing: tokio::sync::Mutex<()>,
    /// Where accepted events are attributed to the answers that showed their items.
    experiments: std::sync::OnceLock<Arc<ExperimentLedger>>,
}

impl std::fmt::Debug for EventIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIntake")
            .field("log", &self.log)
            .finish()
    }
}

impl EventIntake {
    /// Loads the newest checkpoint in `checkpoints` (if given and there is one, for local
    /// state), replays the log after it into local state (events whose item this catalog
    /// lacks are skipped) and remembers the last `dedupe_window` event ids, then takes new
    /// events. A shared store is not replayed into here: its follower starts catching up
    /// from the log in the background.
    pub fn open(
        log: &EventLogConfig,
        catalog: Arc<Catalog>,
        writer: StateWriter,
        dedupe_window: usize,
        checkpoints: Option<PathBuf>,
    ) -> Result<(Self, Replayed), RecommendError> {
        let seen = SeenIds::new(dedupe_window);
        let mut after_seq = 0;
        let local = match &writer {
            StateWriter::Local(state) => Some(state.clone()),
            StateWriter::Shared(_) => None,
        };
        // Checkpoints hold local state; a shared store keeps its own.
        let checkpoints = checkpoints.filter(|_| local.is_some());
        if let (Some(dir), Some(history)) = (&checkpoints, &local) {
            let started = std::time::Instant::now();
            if let Some(loaded) = checkpoint::load_latest(dir, &catalog)? {
                let users = loaded.state.users.len();
                history.restore(loaded.state);
                seen.claim(loaded.seen.iter().map(|(u, e)| (u.as_str(), e.as_str())));
                after_seq = loaded.seq;
                tracing::info!(
                    path = %loaded.path.display(),
                    seq = loaded.seq,
                    users,
                    seconds = started.elapsed().as_secs_f64(),
                    "loaded user state checkpoint; replaying the event log after it"
                );
            }
        }
        let mut unknown_items = 0u64;
        let (log, replayed) = EventLog::open(log, after_seq, |_, record| {
            match record {
                Logged::Events(events) => {
                    seen.claim(
                        events
                            .iter()
                            .map(|e| (e.user_id.as_str(), e.event_id.as_str())),
                    );
                }
                // Erased here: nothing before this record comes back.
                Logged::ForgetUser(user) => {
                    seen.forget_user(user);
                }
            }
            if let Some(state) = &local {
                unknown_items += apply_local(state, &catalog, record);
            }
        })
        .map_err(|e| RecommendError::Unavailable(format!("event log: {e}")))?;
        if let StateWriter::Shared(follower) = &writer {
            follower
                .start(log.dir(), replayed.last_seq)
                .map_err(|e| RecommendError::Unavailable(format!("shared user state: {e}")))?;
        }
        if unknown_items > 0 {
            tracing::warn!(
                events = unknown_items,
                "logged events name items this catalog does not have; left out of user state"
            );
        }
        Ok((
            Self {
                catalog,
                writer,
                log,
                seen,
                gate: Arc::default(),
                applied_seq: AtomicU64::new(replayed.last_seq),
                checkpoints,
                checkpointing: tokio::sync::Mutex::new(()),
                experiments: std::sync::OnceLock::new(),
            },
            replayed,
        ))
    }

    pub(crate) fn set_experiments(&self, ledger: Arc<ExperimentLedger>) {
        let _ = self.experiments.set(ledger);
    }

    /// Erases a user from live state, the dedupe window, the event log and its exports, and
    /// the checkpoints (a fresh one replaces them). An erasure record goes into the log first,
    /// so a replay never brings the user back, even if this stops half way. With a shared
    /// store and `announce`, the other gateways are told to erase the user from their logs.
    pub async fn forget_user(
        &self,
        user_id: &str,
        announce: bool,
    ) -> Result<UserErased, RecommendError> {
        if let Some(problem) = id_problem(user_id) {
            return Err(RecommendError::invalid("user_id", problem));
        }
        let unavailable = |e: tandem_events::EventLogError| {
            RecommendError::Unavailable(format!("event log: {e}"))
        };
        let (seq, state) = {
            // No event of theirs may land between the erasure record and the state removal.
            let _quiet = self.gate.write().await;
            let seq = self.log.log_forget(user_id).await.map_err(unavailable)?;
            let state = match &self.writer {
                StateWriter::Local(state) => state.forget(user_id),
                StateWriter::Shared(follower) => {
                    let record = Arc::new(Logged::ForgetUser(user_id.to_owned()));
                    let applied = follower.committed(seq, record).await;
                    if !applied {
                        tracing::warn!(
                            "shared user state is out of reach: the erasure is logged and \
                             reaches it with the catch-up from the log"
                        );
                    }
                    applied
                }
            };
            self.seen.forget_user(user_id);
            self.applied_seq.fetch_max(seq, Ordering::AcqRel);
            (seq, state)
        };
        let announced = match &self.writer {
            StateWriter::Shared(follower) if announce => follower.announce_erasure(user_id).await,
            _ => false,
        };
        let log = self.log.erase_user(user_id).await.map_err(unavailable)?;
        let checkpoint = self.write_checkpoint(1).await?.is_some();
        Ok(UserErased {
            seq,
            state,
            log,
            checkpoint,
            announced,
        })
    }

    /// Writes a checkpoint of user state and the log position it covers (`None`: checkpoints
    /// are off, or the state store keeps its own). New events wait only while the state is
    /// copied, not while it is written.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointWritten>, RecommendError> {
        self.write_checkpoint(2).await
    }

    /// A checkpoint, keeping the newest `keep` (this one included).
    async fn write_checkpoint(
        &self,
        keep: usize,
    ) -> Result<Option<CheckpointWritten>, RecommendError> {
        let (Some(dir), StateWriter::Local(history)) = (self.checkpoints.clone(), &self.writer)
        else {
            return Ok(None);
        };
        let _one = self.checkpointing.lock().await;
        let quiet = self.gate.clone().write_owned().await;
        let seq = self.applied_seq.load(Ordering::Acquire);
        let seen = self.seen.export();
        let (history, catalog) = (history.clone(), self.catalog.clone());
        tokio::task::spawn_blocking(move || {
            let state = history.snapshot();
            drop(quiet);
            checkpoint::write(&dir, seq, &state, &seen, &catalog, keep).map(Some)
        })
        .await
        .map_err(|e| RecommendError::Unavailable(format!("checkpoint: {e}")))?
    }

    /// A whole batch: every event valid or none recorded (the error names the first bad one).
    pub async fn record(
        self: &Arc<Self>,
        events: &[IncomingEvent],
    ) -> Result<Recorded, RecommendError> {
        if events.len() > MAX_EVENTS_PER_BATCH {
            return Err(RecommendError::invalid(
                "events",
                format!(
                    "at most {MAX_EVENTS_PER_BATCH} per batch, got {}",
                    events.len()
                ),
            ));
        }
        let now = now_ms();
        let valid = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                check(&self.catalog, e, now).map_err(|(field, reason)| {
                    RecommendError::invalid(format!("events[{i}].{field}"), reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|_| {
                metrics::counter!("tandem_events_total", "outcome" => "rejected")
                    .increment(events.len() as u64);
            })?;
        self.commit(valid).await
    }

    /// Each event on its own: valid ones are recorded, invalid ones come back as rejections.
    pub async fn record_each(
        self: &Arc<Self>,
        events: &[IncomingEvent],
    ) -> Result<(Recorded, Vec<Rejection>), RecommendError> {
        if events.len() > MAX_EVENTS_PER_BATCH {
            return Err(RecommendError::invalid(
                "events",
                format!(
                    "at most {MAX_EVENTS_PER_BATCH} per message, got {}",
                    events.len()
                ),
            ));
        }
        let now = now_ms();
        let mut valid = Vec::with_capacity(events.len());
        let mut rejections = Vec::new();
        for (index, e) in events.iter().enumerate() {
            match check(&self.catalog, e, now) {
                Ok(v) => valid.push(v),
                Err((field, reason)) => rejections.push(Rejection {
                    index,
                    field,
                    reason,
                }),
            }
        }
        metrics::counter!("tandem_events_total", "outcome" => "rejected")
            .increment(rejections.len() as u64);
        Ok((self.commit(valid).await?, rejections))
    }

    /// Claims the event ids, logs the new events, applies them. If logging fails the ids are
    /// released, so the producer's retry is taken.
    /// Runs [`EventIntake::apply`] in its own task: a caller that goes away (a cancelled
    /// call) must not leave a batch logged but not applied to user state.
    async fn commit(self: &Arc<Self>, valid: Vec<Valid>) -> Result<Recorded, RecommendError> {
        let this = self.clone();
        tokio::spawn(async move { this.apply(valid).await })
            .await
            .map_err(|e| RecommendError::Unavailable(format!("event intake: {e}")))?
    }

    async fn apply(&self, valid: Vec<Valid>) -> Result<Recorded, RecommendError> {
        let _applying = self.gate.read().await;
        let mut fresh = self.seen.claim(
            valid
                .iter()
                .map(|v| (v.logged.user_id.as_str(), v.logged.event_id.as_str())),
        );
        // Retries that reached another gateway first: a shared store knows them.
        let mut claimed_shared: Vec<(&str, &str)> = Vec::new();
        if let StateWriter::Shared(follower) = &self.writer {
            let ask: Vec<(usize, (&str, &str))> = valid
                .iter()
                .enumerate()
                .filter(|(i, v)| fresh[*i] && !v.logged.event_id.is_empty())
                .map(|(i, v)| (i, (v.logged.user_id.as_str(), v.logged.event_id.as_str())))
                .collect();
            if !ask.is_empty() {
                let ids: Vec<(&str, &str)> = ask.iter().map(|(_, id)| *id).collect();
                if let Some(answers) = follower.claim(&ids).await {
                    for ((i, id), new) in ask.into_iter().zip(answers) {
                        if new {
                            claimed_shared.push(id);
                        } else {
                            fresh[i] = false;
                        }
                    }
                }
            }
        }
        let duplicates = fresh.iter().filter(|f| !**f).count();
        metrics::counter!("tandem_events_total", "outcome" => "duplicate")
            .increment(duplicates as u64);
        let new: Vec<&Valid> = valid
            .iter()
            .zip(&fresh)
            .filter_map(|(v, &f)| f.then_some(v))
            .collect();
        if new.is_empty() {
            return Ok(Recorded {
                accepted: 0,
                duplicates,
            });
        }
        let logged: Vec<LoggedEvent> = new.iter().map(|v| v.logged.clone()).collect();
        let seq = match self.log.append(logged).await {
            Ok(seq) => seq,
            Err(e) => {
                self.seen.forget(
                    new.iter()
                        .map(|v| (v.logged.user_id.as_str(), v.logged.event_id.as_str())),
                );
                if let StateWriter::Shared(follower) = &self.writer
                    && !claimed_shared.is_empty()
                {
                    follower.release(&claimed_shared).await;
                }
                return Err(RecommendError::Unavailable(format!(
                    "events were not recorded: {e}"
                )));
            }
        };
        match &self.writer {
            StateWriter::Local(state) => {
                let mut by_user: HashMap<&str, Vec<UserEvent>> = HashMap::new();
                for v in &new {
                    by_user.entry(&v.logged.user_id).or_default().push(v.event);
                }
                for (user, events) in by_user {
                    state.record(user, &events);
                }
            }
            StateWriter::Shared(follower) => {
                // Acknowledged either way: the batch is on disk, and the follower's catch-up
                // applies it when the store is back.
                let record = Logged::Events(new.iter().map(|v| v.logged.clone()).collect());
                if !follower.committed(seq, Arc::new(record)).await {
                    metrics::counter!("tandem_events_total", "outcome" => "deferred")
                        .increment(new.len() as u64);
                }
            }
        }
        self.applied_seq.fetch_max(seq, Ordering::AcqRel);
        if let Some(ledger) = self.experiments.get() {
            for v in &new {
                let price = f64::from(self.catalog.price(v.event.item));
                ledger.event(
                    &v.logged.user_id,
                    v.event.item,
                    v.event.kind,
                    v.event.timestamp_ms,
                    price,
                );
            }
        }
        metrics::counter!("tandem_events_total", "outcome" => "accepted")
            .increment(new.len() as u64);
        Ok(Recorded {
            accepted: new.len(),
            duplicates,
        })
    }
}
