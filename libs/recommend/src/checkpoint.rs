//! Checkpoints of user state with the event log position they cover, so a restart loads the
//! newest and replays only the log's tail.
//!
//! `<event log dir>/checkpoints/state-<seq>.ckpt`: the magic `TNDMCKP1`, then framed records
//! ([`tandem_storage::frame`]): a header (log sequence number covered, time written, users),
//! the user state's records ([`StateSnapshot::encode`]), the dedupe window's event ids, and an
//! end record. Written to a temporary file, fsynced and renamed, so a crash leaves the
//! previous checkpoint; a damaged one is skipped for the one before it.

use std::path::{Path, PathBuf};

use tandem_catalog::Catalog;
use tandem_personalization::{SnapshotDecoder, StateSnapshot};
use tandem_storage::codec::{Reader, Writer};
use tandem_storage::{frame, next_record, sync_dir};

use crate::RecommendError;
use crate::pipeline::now_ms;

const MAGIC: &[u8; 8] = b"TNDMCKP1";
const TAG_HEADER: u8 = 100;
const TAG_SEEN: u8 = 101;
const TAG_END: u8 = 255;
/// A record larger than this is damage.
const MAX_RECORD: usize = 1 << 30;

/// Where checkpoints of an event log's state go.
pub fn checkpoint_dir(event_log_dir: &Path) -> PathBuf {
    event_log_dir.join("checkpoints")
}

/// A checkpoint read back.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub path: PathBuf,
    /// Every logged batch up to this one is in the state.
    pub seq: u64,
    pub state: StateSnapshot,
    pub seen: Vec<(String, String)>,
}

/// What writing one cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointWritten {
    pub path: PathBuf,
    pub seq: u64,
    pub users: usize,
    pub bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RecommendError + '_ {
    move |e| RecommendError::Unavailable(format!("checkpoint {}: {e}", path.display()))
}

/// Writes a checkpoint covering the log up to `seq` and deletes all but the newest `keep`
/// (at least this one).
pub(crate) fn write(
    dir: &Path,
    seq: u64,
    state: &StateSnapshot,
    seen: &[(String, String)],
    catalog: &Catalog,
    keep: usize,
) -> Result<CheckpointWritten, RecommendError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut records = Vec::new();
    let mut header = Writer::default();
    header.u8(TAG_HEADER);
    header.u64(seq);
    header.i64(now_ms());
    header.u64(state.users.len() as u64);
    records.push(header.0);
    state.encode(catalog, &mut records);
    let mut ids = Writer::default();
    ids.u8(TAG_SEEN);
    ids.u64(seen.len() as u64);
    for (user, id) in seen {
        ids.str(user);
        ids.str(id);
    }
    records.push(ids.0);
    records.push(vec![TAG_END]);

    let mut bytes = MAGIC.to_vec();
    for r in &records {
        frame(&mut bytes, r);
    }
    let path = dir.join(format!("state-{seq:020}.ckpt"));
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir);
    for old in list(dir)?.into_iter().skip(keep.max(1)) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not delete an old checkpoint");
        }
    }
    Ok(CheckpointWritten {
        path,
        seq,
        users: state.users.len(),
        bytes: bytes.len() as u64,
    })
}

/// Checkpoint files, newest first.
fn list(dir: &Path) -> Result<Vec<PathBuf>, RecommendError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let is_checkpoint = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("state-") && n.ends_with(".ckpt"));
        if is_checkpoint {
            out.push(path);
        }
    }
    // Zero-padded sequence numbers: names sort as numbers.
    out.sort();
    out.reverse();
    Ok(out)
}

/// The newest intact checkpoint, if any; damaged ones are reported and passed over.
pub(crate) fn load_latest(dir: &Path, catalog: &Catalog) -> Result<Option<Loaded>, RecommendError> {
    for path in list(dir)? {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        match parse(&bytes, catalog) {
            Ok((seq, state, seen)) => {
                return Ok(Some(Loaded {
                    path,
                    seq,
                    state,
                    seen,
                }));
            }
            Err(why) => tracing::warn!(
                path = %path.display(),
                reason = %why,
                "skipping a damaged checkpoint"
            ),
        }
    }
    Ok(None)
}

type Parsed = (u64, StateSnapshot, Vec<(String, String)>);

fn parse(bytes: &[u8], catalog: &Catalog) -> Result<Parsed, String> {
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("not a tandem checkpoint (bad magic)".into());
    }
    let mut pos = MAGIC.len();
    let mut seq = None;
    let mut seen = Vec::new();
    let mut decoder = SnapshotDecoder::new(catalog);
    let mut ended = false;
    while let Some((record, end)) = next_record(bytes, pos, MAX_RECORD) {
        pos = end;
        if decoder.take(record)? {
            continue;
        }
        let mut r = Reader::new(record);
        match r.u8() {
            Some(TAG_HEADER) => seq = Some(r.u64().ok_or("damaged header")?),
            Some(TAG_SEEN) => {
                let n = r.u64().ok_or("damaged event ids")?;
                for _ in 0..n {
                    let (user, id) = (r.string(), r.string());
                    seen.push((
                        user.ok_or("damaged event ids")?,
                        id.ok_or("damaged event ids")?,
                    ));
                }
            }
            Some(TAG_END) => {
                ended = true;
                break;
            }
            other => return Err(format!("unknown record tag {other:?}")),
        }
    }
    if !ended {
        return Err("ends before its end record (torn or damaged)".into());
    }
    let seq = seq.ok_or("no header")?;
    Ok((seq, decoder.finish(), seen))
}
