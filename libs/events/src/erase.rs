//! Right to erasure: one user's events removed from the closed log segments and from every
//! Parquet file under a directory (the log's exports, the served-feature log). Each file that
//! held the user is rewritten to a temporary name, fsynced and renamed over the original, so
//! a crash leaves either the old file or the new one, never half of one.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tandem_storage::codec::Writer;
use tandem_storage::{frame, sync_dir};

use crate::EventLogError;
use crate::export::EXPORT_DIR;
use crate::log::{MAGIC, list_segments, parse_segment, read_either};
use crate::record::{Logged, encode_record};

/// What erasing one user removed from an event log's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Events removed from log segments, and the segments rewritten.
    pub log_events: u64,
    pub log_segments: usize,
    /// Rows removed from the Parquet exports, and the files rewritten.
    pub exported_rows: u64,
    pub exported_files: usize,
}

/// Rewrites the log in `dir` (every segment but the open one) and its exports without
/// `user`'s events. Erasure records stay: they are what keeps a replay from bringing the user
/// back.
pub(crate) fn erase_user(dir: &Path, user: &str) -> Result<Erased, EventLogError> {
    let mut erased = Erased::default();
    let segments = list_segments(dir)?;
    // The newest is the open segment: the erasure record closed the one before it.
    for segment in segments.iter().rev().skip(1) {
        let bytes = read_either(&segment.path)?;
        let (batches, _) = parse_segment(&segment.path, &bytes)?;
        let removed: usize = batches
            .iter()
            .map(|(_, record)| match record {
                Logged::Events(events) => events.iter().filter(|e| e.user_id == user).count(),
                Logged::ForgetUser(_) => 0,
            })
            .sum();
        if removed == 0 {
            continue;
        }
        let mut out = MAGIC.to_vec();
        let mut buf = Writer::default();
        for (seq, record) in batches {
            let kept = match record {
                Logged::Events(mut events) => {
                    // An emptied batch stays, empty: sequence numbers keep no gaps.
                    events.retain(|e| e.user_id != user);
                    Logged::Events(events)
                }
                forget @ Logged::ForgetUser(_) => forget,
            };
            buf.0.clear();
            encode_record(seq, &kept, &mut buf);
            frame(&mut out, &buf.0);
        }
        // The exporter may have renamed it `.done` since it was listed.
        let path = if segment.path.exists() {
            segment.path.clone()
        } else {
            segment.path.with_extension("done")
        };
        replace(&path, &out)?;
        erased.log_events += removed as u64;
        erased.log_segments += 1;
    }
    let (rows, files) = erase_from_parquet(&dir.join(EXPORT_DIR), "user_id", user)?;
    erased.exported_rows = rows;
    erased.exported_files = files;
    Ok(erased)
}

/// Writes `bytes` over `path` through a temporary file.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), EventLogError> {
    use std::io::Write;
    let tmp = temporary(path);
    let mut f = File::create(&tmp).map_err(EventLogError::io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(EventLogError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(EventLogError::io(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// A hidden sibling name, ignored by every reader of the directory.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.erase.tmp"))
}

/// Every `.parquet` file under `root` (any depth), in name order.
fn parquet_files(root: &Path, out: &mut Vec<PathBuf>) -> Result<(), EventLogError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(EventLogError::io(root)(e)),
    };
    for entry in entries {
        let path = entry.map_err(EventLogError::io(root))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_dir() {
            parquet_files(&path, out)?;
        } else if !hidden && path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// Removes the rows whose utf8 column `column` equals `user` from every Parquet file under
/// `root`; returns (rows removed, files rewritten). Files without such rows are not touched.
pub fn erase_from_parquet(
    root: &Path,
    column: &str,
    user: &str,
) -> Result<(u64, usize), EventLogError> {
    let mut files = Vec::new();
    parquet_files(root, &mut files)?;
    let (mut rows, mut rewritten) = (0u64, 0usize);
    for path in files {
        let parquet = |e: &dyn std::fmt::Display| EventLogError::Parquet {
            path: path.clone(),
            reason: e.to_string(),
        };
        let file = File::open(&path).map_err(EventLogError::io(&path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet(&e))?;
        let schema = builder.schema().clone();
        let mut kept = Vec::new();
        let mut removed = 0u64;
        for batch in builder.build().map_err(|e| parquet(&e))? {
            let batch = batch.map_err(|e| parquet(&e))?;
            let users = batch
                .column_by_name(column)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| parquet(&format!("no utf8 column `{column}`")))?;
            let keep: BooleanArray = users.iter().map(|u| Some(u != Some(user))).collect();
            removed += keep.false_count() as u64;
            kept.push(filter_record_batch(&batch, &keep).map_err(|e| parquet(&e))?);
        }
        if removed == 0 {
            continue;
        }
        let tmp = temporary(&path);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let out = File::create(&tmp).map_err(EventLogError::io(&tmp))?;
        let mut writer = ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| parquet(&e))?;
        for batch in &kept {
            writer.write(batch).map_err(|e| parquet(&e))?;
        }
        writer
            .into_inner()
            .map_err(|e| parquet(&e))?
            .sync_all()
            .map_err(EventLogError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(EventLogError::io(&path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir);
        }
        rows += removed;
        rewritten += 1;
    }
    Ok((rows, rewritten))
}
