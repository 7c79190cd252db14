//! Closed segments as Parquet, one file per segment and UTC day of the events in it:
//! `parquet/day=YYYY-MM-DD/events-<first seq>.parquet` (Hive-style partitions that pyarrow,
//! Spark and DuckDB read as a `day` column). Columns: `seq` (u64, the batch), `event_id`,
//! `user_id`, `item_id` (utf8), `event_type` (i8, the numbers of `tandem.v1.EventType`),
//! `timestamp_ms` (i64).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int8Array, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tandem_storage::sync_dir;

use crate::log::read_segment;
use crate::record::{kind_code, kind_from_code};
use crate::{EventLogError, LoggedEvent};

/// Directory under the log's directory that holds the Parquet export.
pub const EXPORT_DIR: &str = "parquet";

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 (UTC) of a timestamp.
pub(crate) fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian; H. Hinnant's `civil_from_days`).
pub(crate) fn civil(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Int8, false),
        Field::new("timestamp_ms", DataType::Int64, false),
    ]))
}

/// Numbers the temporary files of this process's exports.
static EXPORT_WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes the segment's events as Parquet under `log_dir/parquet/`; returns the files. Each is
/// written to a temporary name and renamed, so a reader never sees half a file.
pub fn export_segment(segment: &Path, log_dir: &Path) -> Result<Vec<PathBuf>, EventLogError> {
    let first_seq = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("seg-"))
        .unwrap_or("0")
        .to_owned();
    let mut by_day: BTreeMap<i64, Vec<(u64, &LoggedEvent)>> = BTreeMap::new();
    let batches = read_segment(segment)?;
    for (seq, record) in &batches {
        let crate::record::Logged::Events(events) = record else {
            continue;
        };
        for e in events {
            by_day
                .entry(day_of(e.timestamp_ms))
                .or_default()
                .push((*seq, e));
        }
    }
    let mut files = Vec::new();
    for (day, rows) in by_day {
        let dir = log_dir.join(EXPORT_DIR).join(format!("day={}", civil(day)));
        std::fs::create_dir_all(&dir).map_err(EventLogError::io(&dir))?;
        let path = dir.join(format!("events-{first_seq}.parquet"));
        // Unique per writer: two exporters of one segment (a log reopened while the last
        // one's exporter still runs) must not write into the same file; the last rename wins
        // with a whole file either way.
        let writer = EXPORT_WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".events-{first_seq}.parquet.{}-{writer}.tmp",
            std::process::id()
        ));
        write_parquet(&tmp, &rows)?;
        std::fs::rename(&tmp, &path).map_err(EventLogError::io(&path))?;
        sync_dir(&dir);
        files.push(path);
    }
    Ok(files)
}

fn write_parquet(path: &Path, rows: &[(u64, &LoggedEvent)]) -> Result<(), EventLogError> {
    let parquet = |e: &dyn std::fmt::Display| EventLogError::Parquet {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.event_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.user_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.item_id.as_str()),
        )),
        Arc::new(Int8Array::from_iter_values(
            rows.iter().map(|r| kind_code(r.1.kind) as i8),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.1.timestamp_ms),
        )),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| parquet(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path).map_err(EventLogError::io(path))?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| parquet(&e))?;
    writer.write(&batch).map_err(|e| parquet(&e))?;
    let file = writer.into_inner().map_err(|e| parquet(&e))?;
    file.sync_all().map_err(EventLogError::io(path))
}

/// Every exported event under `log_dir/parquet/`, by day, then as logged.
pub fn read_exported(log_dir: &Path) -> Result<Vec<LoggedEvent>, EventLogError> {
    let root = log_dir.join(EXPORT_DIR);
    let mut files = Vec::new();
    if root.is_dir() {
        for day in std::fs::read_dir(&root).map_err(EventLogError::io(&root))? {
            let day = day.map_err(EventLogError::io(&root))?.path();
            for f in std::fs::read_dir(&day).map_err(EventLogError::io(&day))? {
                let f = f.map_err(EventLogError::io(&day))?.path();
                if f.extension().is_some_and(|e| e == "parquet") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let parquet = |e: &dyn std::fmt::Display| EventLogError::Parquet {
            path: path.clone(),
            reason: e.to_string(),
        };
        let file = File::open(&path).map_err(EventLogError::io(&path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| parquet(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| parquet(&e))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| parquet(&format!("no column `{name}`")))
            };
            let strings = |name: &str| -> Result<StringArray, EventLogError> {
                column(name)?
                    .as_string_opt::<i32>()
                    .cloned()
                    .ok_or_else(|| parquet(&format!("`{name}` is not utf8")))
            };
            let (event_id, user_id, item_id) = (
                strings("event_id")?,
                strings("user_id")?,
                strings("item_id")?,
            );
            let kinds = column("event_type")?
                .as_primitive_opt::<Int8Type>()
                .cloned()
                .ok_or_else(|| parquet(&"`event_type` is not int8"))?;
            let times = column("timestamp_ms")?
                .as_primitive_opt::<Int64Type>()
                .cloned()
                .ok_or_else(|| parquet(&"`timestamp_ms` is not int64"))?;
            column("seq")?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| parquet(&"`seq` is not uint64"))?;
            for i in 0..batch.num_rows() {
                let kind = kind_from_code(kinds.value(i) as u8)
                    .ok_or_else(|| parquet(&format!("row {i}: unknown event_type")))?;
                out.push(LoggedEvent {
                    event_id: event_id.value(i).to_owned(),
                    user_id: user_id.value(i).to_owned(),
                    item_id: item_id.value(i).to_owned(),
                    kind,
                    timestamp_ms: times.value(i),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(day_of(1_788_220_800_000)), "2026-09-01");
        assert_eq!(civil(day_of(951_782_400_000)), "2000-02-29");
        assert_eq!(civil(-1), "1969-12-31");
    }
}
