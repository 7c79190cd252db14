//! Segments `seg-<first seq>.log` in one directory: the magic `TNDMEVT1`, then framed records
//! (see [`tandem_storage::frame`]), one per accepted batch. One writer thread owns the open
//! segment; appends queue to it and are answered after the fsync that covers them, so the
//! batches that arrive while one fsync runs share the next (group commit).
//!
//! A segment is closed when it passes `segment_bytes` or the UTC day turns, then exported to
//! Parquet and renamed `seg-<first seq>.done` (kept: replay reads it). With a retention, an
//! exported segment last written longer ago than that is deleted, at start-up before replay
//! and after each export; its Parquet files stay. Replay reads every segment in order; a torn
//! tail (a write that was never acknowledged) is cut off.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tandem_storage::codec::Writer;
use tandem_storage::{frame, next_record, sync_dir};
use tokio::sync::oneshot;

use crate::erase::{Erased, erase_user};
use crate::export::{day_of, export_segment};
use crate::record::{Logged, decode_record, encode_record};
use crate::{EventLogError, LoggedEvent};

pub(crate) const MAGIC: &[u8; 8] = b"TNDMEVT1";
/// A record larger than this is damage (a batch is at most a few MB).
const MAX_RECORD: usize = 64 << 20;
/// Batches written under one fsync, at most.
const MAX_GROUP: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLogConfig {
    pub dir: PathBuf,
    /// A segment is closed (and exported) past this size.
    pub segment_bytes: u64,
    /// Export closed segments to `dir/parquet/day=YYYY-MM-DD/`.
    pub export: bool,
    /// Exported segments last written longer ago than this are deleted (their events are then
    /// no longer replayed); `None` keeps them all.
    pub retention: Option<Duration>,
}

/// What replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub segments: usize,
    pub batches: u64,
    pub events: u64,
    /// Bytes of torn or damaged records dropped.
    pub dropped_bytes: u64,
    /// Exported segments deleted before replay, past the retention.
    pub expired_segments: usize,
    /// Segments not read: every batch in them was at or before `after_seq`.
    pub skipped_segments: usize,
    /// Sequence number of the newest batch in the log (replayed or skipped); 0 when empty.
    pub last_seq: u64,
}

struct Append {
    record: Logged,
    /// Close the segment after this record (an erasure: everything before it becomes a
    /// closed segment that can be rewritten).
    roll: bool,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// Work on closed segments, done in order by one thread.
enum Maintenance {
    /// Export a closed segment (if exports are on) and mark it `.done`.
    Closed(PathBuf),
    /// Rewrite closed segments and exports without one user's events.
    Erase {
        user: String,
        reply: oneshot::Sender<Result<Erased, EventLogError>>,
    },
}

pub struct EventLog {
    dir: PathBuf,
    appends: Option<mpsc::Sender<Append>>,
    maintenance: mpsc::Sender<Maintenance>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("dir", &self.dir).finish()
    }
}

impl EventLog {
    /// Replays every logged batch after `after_seq` into `apply` (oldest first; a checkpoint
    /// holds the earlier ones), then opens a new segment for appends and exports closed
    /// segments that were not yet exported. Segments wholly at or before `after_seq` are not
    /// read at all.
    pub fn open(
        config: &EventLogConfig,
        after_seq: u64,
        mut apply: impl FnMut(u64, &Logged),
    ) -> Result<(Self, Replayed), EventLogError> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).map_err(EventLogError::io(dir))?;
        let expired_segments = match config.retention {
            Some(retention) => delete_expired(dir, retention)?,
            None => 0,
        };
        let segments = list_segments(dir)?;
        let mut replayed = Replayed {
            segments: segments.len(),
            expired_segments,
            ..Replayed::default()
        };
        let mut last_seq = 0u64;
        for (i, segment) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            // A segment's batches end where the next one's begin.
            if let Some(next) = segments.get(i + 1)
                && next.first_seq.saturating_sub(1) <= after_seq
            {
                replayed.skipped_segments += 1;
                last_seq = last_seq.max(next.first_seq.saturating_sub(1));
                continue;
            }
            let bytes = read_either(&segment.path)?;
            if is_last && bytes.len() < MAGIC.len() {
                // Created, then the process died before the header was on disk.
                replayed.dropped_bytes += bytes.len() as u64;
                std::fs::remove_file(&segment.path).map_err(EventLogError::io(&segment.path))?;
                continue;
            }
            let (batches, pos) = parse_segment(&segment.path, &bytes)?;
            for (seq, record) in batches {
                // Never written twice; a repeat means damage. Skip rather than re-apply.
                if seq <= last_seq {
                    continue;
                }
                last_seq = seq;
                if seq <= after_seq {
                    continue;
                }
                replayed.batches += 1;
                if let Logged::Events(events) = &record {
                    replayed.events += events.len() as u64;
                }
                apply(seq, &record);
            }
            if pos < bytes.len() {
                let dropped = (bytes.len() - pos) as u64;
                replayed.dropped_bytes += dropped;
                tracing::warn!(
                    segment = %segment.path.display(),
                    dropped_bytes = dropped,
                    "event log segment ends in a torn or damaged record (a batch that was never \
                     acknowledged); cutting it off"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .map_err(EventLogError::io(&segment.path))?;
                f.set_len(pos as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(EventLogError::io(&segment.path))?;
            }
        }
        // Never below the checkpoint's position, even if the log lost what it covers: a
        // number reused would be skipped at the next start.
        let next_seq = last_seq
            .max(segments.last().map_or(0, |s| s.first_seq.saturating_sub(1)))
            .max(after_seq)
            + 1;
        replayed.last_seq = next_seq - 1;
        let open = Segment::create(dir, next_seq)?;

        // One thread for exports and erasures, so that a segment is never exported and
        // rewritten at once.
        let (maintenance, maintenance_rx) = mpsc::channel::<Maintenance>();
        {
            let (log_dir, retention, export) = (dir.clone(), config.retention, config.export);
            std::thread::Builder::new()
                .name("event-maintenance".into())
                .spawn(move || {
                    for work in maintenance_rx {
                        match work {
                            Maintenance::Closed(segment) if export => {
                                export_and_mark(&log_dir, &segment);
                                if let Some(retention) = retention
                                    && let Err(e) = delete_expired(&log_dir, retention)
                                {
                                    tracing::warn!(error = %e, "could not delete expired event log segments");
                                }
                            }
                            Maintenance::Closed(_) => {}
                            Maintenance::Erase { user, reply } => {
                                let _ = reply.send(erase_user(&log_dir, &user));
                            }
                        }
                    }
                })
                .map_err(EventLogError::io(dir))?;
        }
        if config.export {
            for s in segments.iter().filter(|s| !s.exported) {
                let _ = maintenance.send(Maintenance::Closed(s.path.clone()));
            }
        }
        let (appends, rx) = mpsc::channel::<Append>();
        let writer = {
            let segment_bytes = config.segment_bytes.max(1);
            let closed = maintenance.clone();
            let log_dir = dir.clone();
            std::thread::Builder::new()
                .name("event-log".into())
                .spawn(move || write_loop(&log_dir, open, next_seq, segment_bytes, &rx, &closed))
                .map_err(EventLogError::io(dir))?
        };
        Ok((
            Self {
                dir: dir.clone(),
                appends: Some(appends),
                maintenance,
                writer: Some(writer),
            },
            replayed,
        ))
    }

    /// Appends one batch; resolves once it is on disk (fsynced), with its sequence number.
    pub async fn append(&self, events: Vec<LoggedEvent>) -> Result<u64, EventLogError> {
        self.write(Logged::Events(events), false).await
    }

    /// Logs that `user_id` is forgotten (durably: a replay drops their state at this record),
    /// with its sequence number. Call [`EventLog::erase_user`] next to remove their events
    /// from the files.
    pub async fn log_forget(&self, user_id: &str) -> Result<u64, EventLogError> {
        self.write(Logged::ForgetUser(user_id.to_owned()), true)
            .await
    }

    /// Rewrites every closed segment and Parquet export without `user_id`'s events (the
    /// segment open at [`EventLog::log_forget`] was closed by it). Runs after the exports
    /// queued before it.
    pub async fn erase_user(&self, user_id: &str) -> Result<Erased, EventLogError> {
        let (reply, done) = oneshot::channel();
        self.maintenance
            .send(Maintenance::Erase {
                user: user_id.to_owned(),
                reply,
            })
            .map_err(|_| EventLogError::Closed("the maintenance thread stopped".into()))?;
        done.await
            .map_err(|_| EventLogError::Closed("the maintenance thread stopped".into()))?
    }

    async fn write(&self, record: Logged, roll: bool) -> Result<u64, EventLogError> {
        let (reply, done) = oneshot::channel();
        self.appends
            .as_ref()
            .ok_or_else(|| EventLogError::Closed("shut down".into()))?
            .send(Append {
                record,
                roll,
                reply,
            })
            .map_err(|_| EventLogError::Closed("the writer stopped".into()))?;
        done.await
            .map_err(|_| EventLogError::Closed("the writer stopped".into()))?
            .map_err(EventLogError::Closed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EventLog {
    /// Lets the writer finish what is queued.
    fn drop(&mut self) {
        self.appends.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    first_seq: u64,
    exported: bool,
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, EventLogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(EventLogError::io(dir))? {
        let path = entry.map_err(EventLogError::io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("seg-") else {
            continue;
        };
        let (seq, exported) = match (rest.strip_suffix(".log"), rest.strip_suffix(".done")) {
            (Some(seq), _) => (seq, false),
            (_, Some(seq)) => (seq, true),
            _ => continue,
        };
        if let Ok(first_seq) = seq.parse() {
            out.push(SegmentFile {
                path,
                first_seq,
                exported,
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// The segment appends go to.
struct Segment {
    path: PathBuf,
    file: File,
    bytes: u64,
    day: i64,
}

impl Segment {
    fn create(dir: &Path, first_seq: u64) -> Result<Self, EventLogError> {
        let path = dir.join(format!("seg-{first_seq:020}.log"));
        let file = {
            let io = EventLogError::io(&path);
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(&io)?;
            file.write_all(MAGIC).map_err(&io)?;
            file.sync_all().map_err(&io)?;
            file
        };
        sync_dir(dir);
        Ok(Self {
            path,
            file,
            bytes: MAGIC.len() as u64,
            day: day_of(now_ms()),
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn write_loop(
    dir: &Path,
    mut segment: Segment,
    mut next_seq: u64,
    segment_bytes: u64,
    appends: &mpsc::Receiver<Append>,
    closed: &mpsc::Sender<Maintenance>,
) {
    let mut failed: Option<String> = None;
    let mut buf = Writer::default();
    let mut record = Vec::new();
    while let Ok(first) = appends.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match appends.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        if let Some(why) = &failed {
            for a in group {
                let _ = a.reply.send(Err(why.clone()));
            }
            continue;
        }
        record.clear();
        let first_seq = next_seq;
        for a in &group {
            buf.0.clear();
            encode_record(next_seq, &a.record, &mut buf);
            frame(&mut record, &buf.0);
            next_seq += 1;
        }
        let roll = group.iter().any(|a| a.roll);
        let writing = std::time::Instant::now();
        let written = segment
            .file
            .write_all(&record)
            .and_then(|()| segment.file.sync_data());
        // Write and fsync of one group commit: what every acknowledgement waits for.
        metrics::histogram!("tandem_event_log_fsync_seconds")
            .record(writing.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                segment.bytes += record.len() as u64;
                if !roll {
                    for (i, a) in group.into_iter().enumerate() {
                        let _ = a.reply.send(Ok(first_seq + i as u64));
                    }
                } else {
                    // Answered once the segment is closed and queued for maintenance, so
                    // that an erasure sent next finds it closed.
                    roll_segment(dir, &mut segment, next_seq, closed);
                    for (i, a) in group.into_iter().enumerate() {
                        let _ = a.reply.send(Ok(first_seq + i as u64));
                    }
                    continue;
                }
            }
            Err(e) => {
                // What reached the file may be a torn record: replay cuts it off. Nothing
                // more is acknowledged by this process.
                let why = format!("{}: {e}", segment.path.display());
                tracing::error!(error = %why, "event log write failed; refusing further events");
                for a in group {
                    let _ = a.reply.send(Err(why.clone()));
                }
                failed = Some(why);
                continue;
            }
        }
        if segment.bytes >= segment_bytes || day_of(now_ms()) != segment.day {
            roll_segment(dir, &mut segment, next_seq, closed);
        }
    }
}

/// Closes the open segment (queued for export) and opens the next one.
fn roll_segment(
    dir: &Path,
    segment: &mut Segment,
    next_seq: u64,
    closed: &mpsc::Sender<Maintenance>,
) {
    match Segment::create(dir, next_seq) {
        Ok(fresh) => {
            let old = std::mem::replace(segment, fresh);
            let _ = closed.send(Maintenance::Closed(old.path));
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not roll the event log; still appending")
        }
    }
}

/// Exports a closed segment, then renames it `.done` so a restart does not export it again.
fn export_and_mark(dir: &Path, segment: &Path) {
    match export_segment(segment, dir) {
        Ok(files) => {
            let done = segment.with_extension("done");
            match std::fs::rename(segment, &done) {
                Ok(()) => {
                    sync_dir(dir);
                    tracing::info!(segment = %done.display(), files = files.len(), "exported event log segment");
                }
                Err(e) => {
                    tracing::warn!(segment = %segment.display(), error = %e, "could not mark segment exported")
                }
            }
        }
        Err(e) => {
            tracing::warn!(segment = %segment.display(), error = %e, "event export failed; retried at the next start")
        }
    }
}

/// Deletes exported segments last written more than `retention` ago, never the newest
/// segment (its first sequence number is where numbering goes on). Returns how many.
fn delete_expired(dir: &Path, retention: Duration) -> Result<usize, EventLogError> {
    let segments = list_segments(dir)?;
    let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
        return Ok(0);
    };
    let mut deleted = 0;
    for segment in segments.iter().rev().skip(1).filter(|s| s.exported) {
        let written = std::fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .map_err(EventLogError::io(&segment.path))?;
        if written < cutoff {
            std::fs::remove_file(&segment.path).map_err(EventLogError::io(&segment.path))?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        sync_dir(dir);
        tracing::info!(
            dir = %dir.display(),
            segments = deleted,
            retention_hours = retention.as_secs_f64() / 3600.0,
            "deleted event log segments past the retention (their Parquet export stays)"
        );
    }
    Ok(deleted)
}

/// A segment's bytes, also when an exporter renamed it `.done` since it was listed.
pub(crate) fn read_either(path: &Path) -> Result<Vec<u8>, EventLogError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let done = path.with_extension("done");
            std::fs::read(&done).map_err(EventLogError::io(&done))
        }
        other => other.map_err(EventLogError::io(path)),
    }
}

/// One log record and its sequence number.
pub(crate) type Batch = (u64, Logged);

pub(crate) fn read_segment(path: &Path) -> Result<Vec<Batch>, EventLogError> {
    let bytes = std::fs::read(path).map_err(EventLogError::io(path))?;
    Ok(parse_segment(path, &bytes)?.0)
}

/// A segment's batches up to the first torn or damaged record, and where that record starts.
pub(crate) fn parse_segment(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<Batch>, usize), EventLogError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(EventLogError::Corrupt {
            path: path.to_owned(),
            reason: "not a tandem event log segment (bad magic)".into(),
        });
    }
    let mut pos = MAGIC.len();
    let mut out = Vec::new();
    while let Some((payload, end)) = next_record(bytes, pos, MAX_RECORD) {
        let Some(batch) = decode_record(payload) else {
            break;
        };
        out.push(batch);
        pos = end;
    }
    Ok((out, pos))
}

/// The file naming this log (see [`log_id`]).
const LOG_ID_FILE: &str = "log-id";

/// This log's name, made once and kept in its directory: a store that follows several
/// gateways' logs (a shared Redis) keeps how far it applied each one under this name.
pub fn log_id(dir: &Path) -> Result<String, EventLogError> {
    use std::hash::BuildHasher;
    let path = dir.join(LOG_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EventLogError::io(&path)(e)),
    }
    std::fs::create_dir_all(dir).map_err(EventLogError::io(dir))?;
    // Random enough to tell logs apart: the std hasher's per-process keys, plus the clock.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = std::collections::hash_map::RandomState::new().hash_one(nanos);
    let id = format!("{:016x}{random:016x}", nanos as u64);
    let tmp = dir.join(format!("{LOG_ID_FILE}.tmp"));
    std::fs::write(&tmp, &id)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(EventLogError::io(&path))?;
    sync_dir(dir);
    Ok(id)
}

/// Reads the log in `dir` after `after_seq`, oldest first, changing nothing: for a follower
/// catching up while the log is being written (the open segment is read up to its last
/// whole record). `each` returns `false` to stop. Returns the log's newest sequence number
/// (0 when empty), also when it is at or before `after_seq`.
pub fn read_log(
    dir: &Path,
    after_seq: u64,
    mut each: impl FnMut(u64, Logged) -> bool,
) -> Result<u64, EventLogError> {
    let segments = list_segments(dir)?;
    // An empty newest segment still says where numbering goes on.
    let mut newest = segments.last().map_or(0, |s| s.first_seq.saturating_sub(1));
    let mut passed = after_seq;
    for (i, segment) in segments.iter().enumerate() {
        if let Some(next) = segments.get(i + 1)
            && next.first_seq.saturating_sub(1) <= after_seq
        {
            continue;
        }
        let bytes = match read_either(&segment.path) {
            Ok(bytes) => bytes,
            // Deleted past the retention since it was listed: its events are gone anyway.
            Err(EventLogError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        if bytes.len() < MAGIC.len() {
            continue;
        }
        for (seq, record) in parse_segment(&segment.path, &bytes)?.0 {
            newest = newest.max(seq);
            // A repeat means damage: passed once only.
            if seq <= passed {
                continue;
            }
            passed = seq;
            if !each(seq, record) {
                return Ok(newest);
            }
        }
    }
    Ok(newest)
}
