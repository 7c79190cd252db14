//! Served-feature log: a sample of Recommend answers as Parquet rows, one per ranked candidate,
//! with the request, the model's input values and scores, so that a model can be trained on
//! exactly what was served. Requests only offer records to a bounded queue (never waiting:
//! a full queue drops the record and counts it); one thread writes the files.
//!
//! Files: `<dir>/day=YYYY-MM-DD/<model>-<first ms>-<n>.parquet`, one schema per model version:
//! `request_id`, `user_id`, `model_version`, `item_id` (utf8), `timestamp_ms` (i64),
//! `candidate` (u32, its place in the ranking request), `position` (u32, its place in the
//! answer; null if not served), `retrieval_score`, `score` (f32), then one
//! `FixedSizeList<f64>` column per model feature, named `feature.<input>.<feature>`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int64Array, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tandem_storage::sync_dir;

use crate::EventLogError;
use crate::export::{civil, day_of};

/// One feature's values for every candidate of a record (`rows × width`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedFeature {
    pub input: String,
    pub feature: String,
    pub width: usize,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServedCandidate {
    pub item_id: String,
    pub retrieval_score: f32,
    pub score: f32,
    /// Place in the answer, if it was served.
    pub position: Option<u32>,
}

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedRecord {
    pub request_id: String,
    pub user_id: String,
    pub timestamp_ms: i64,
    pub model_version: String,
    /// In ranking-request order.
    pub candidates: Vec<ServedCandidate>,
    pub features: Vec<ServedFeature>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServedLogConfig {
    pub dir: PathBuf,
    /// Records waiting to be written; past this new ones are dropped.
    pub queue: usize,
    /// A model version's file is closed and put in place once it holds this many rows...
    pub rows_per_file: usize,
    /// ... or this long after its first row arrived (rows go to the open file in batches of
    /// a few hundred as they come; only closed files are read).
    pub flush_interval: Duration,
}

/// What the writer thread takes.
enum Message {
    Record(ServedRecord),
    /// Close the open files, then rewrite every file that holds the user's rows.
    Erase {
        user: String,
        reply: mpsc::Sender<Result<(u64, usize), EventLogError>>,
    },
}

pub struct ServedLog {
    records: Option<mpsc::SyncSender<Message>>,
    dropped: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedLog")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl ServedLog {
    pub fn start(config: ServedLogConfig) -> Result<Self, EventLogError> {
        std::fs::create_dir_all(&config.dir).map_err(EventLogError::io(&config.dir))?;
        remove_unfinished(&config.dir);
        let (records, rx) = mpsc::sync_channel(config.queue.max(1));
        let dir = config.dir.clone();
        let writer = std::thread::Builder::new()
            .name("served-log".into())
            .spawn(move || write_loop(&config, &rx))
            .map_err(EventLogError::io(&dir))?;
        Ok(Self {
            records: Some(records),
            dropped: Arc::new(AtomicU64::new(0)),
            writer: Some(writer),
        })
    }

    /// Queues a record without waiting; `false` (and counted) when the queue is full.
    pub fn offer(&self, record: ServedRecord) -> bool {
        let sent = self
            .records
            .as_ref()
            .is_some_and(|tx| tx.try_send(Message::Record(record)).is_ok());
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Removes `user_id`'s rows from every file and from what is buffered; returns (rows
    /// removed, files rewritten). Blocks until the writer thread has done it: call it from a
    /// blocking thread.
    pub fn erase_user(&self, user_id: &str) -> Result<(u64, usize), EventLogError> {
        let closed = || EventLogError::Closed("the served-feature log writer stopped".into());
        let (reply, done) = mpsc::channel();
        self.records
            .as_ref()
            .ok_or_else(closed)?
            .send(Message::Erase {
                user: user_id.to_owned(),
                reply,
            })
            .map_err(|_| closed())?;
        done.recv().map_err(|_| closed())?
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for ServedLog {
    /// Writes what is buffered and closes the open files.
    fn drop(&mut self) {
        self.records.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Rows gathered before they go to the open file as one batch: few, so that a sampled
/// answer's model inputs are freed within a few answers (and their memory reused by the next
/// ones) instead of piling up for a whole file: buffered whole, a 100,000-row file of the demo
/// model held 75 MB of inputs and took as much again to write, every few seconds under load.
/// A batch's columns are fresh memory too: at 512 rows (two or three answers of 200
/// candidates) the largest is 128 KiB.
const BATCH_ROWS: usize = 512;
/// Rows per Parquet row group: the writer holds one group's encoded pages at a time.
const ROW_GROUP_ROWS: usize = 8_192;

/// Bytes of encoded values per data page, half the writer's default (1 MiB). Page buffers
/// (values, their split streams, the compressed page) are fresh memory for every page; at
/// 1 MiB they come from new pages the kernel zeroes, at this size mostly from memory the
/// allocator reuses: the e2e bench's writer thread spent about a tenth less CPU than at
/// 1 MiB, the same as at 256 KiB. Larger pages compress better, since candidates recur across
/// answers and zstd starts afresh on each page: 24.4 KB per answer against 23.3 at 1 MiB and
/// 25.3 at 256 KiB on the `served_log` bench's answers (97 users, a long tail of 50,000
/// items), 14.6 against 12.0 and 18.2 on the e2e bench's (one user per round).
const DATA_PAGE_BYTES: usize = 512 * 1024;

/// The file of one schema (model version and feature layout) being written.
struct Pending {
    since: Instant,
    /// Rows in the file and in `batch`.
    rows: usize,
    /// Records not yet in the file.
    batch: Vec<ServedRecord>,
    batch_rows: usize,
    /// Opened with the first batch.
    file: Option<OpenFile>,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    /// The file's schema, built once: every batch is made in it.
    schema: SchemaRef,
    tmp: PathBuf,
    path: PathBuf,
    day_dir: PathBuf,
}

impl Pending {
    /// Appends the batch to the file, opening it (file number `n`) first if needed.
    fn write_batch(&mut self, dir: &Path, n: &mut u64) -> Result<(), EventLogError> {
        let Some(first) = self.batch.first() else {
            return Ok(());
        };
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                *n += 1;
                let file = open_file(dir, first, *n)?;
                self.file.insert(file)
            }
        };
        let batch = record_batch(&file.path, &file.schema, &self.batch)?;
        file.writer
            .write(&batch)
            .map_err(|e| parquet_error(&file.path, &e))?;
        self.batch.clear();
        self.batch_rows = 0;
        Ok(())
    }

    /// Writes what is left, closes the file and puts it in place.
    /// On an error the file's rows are lost and its temporary file removed.
    fn finish(mut self, dir: &Path, n: &mut u64) -> Result<(), EventLogError> {
        if let Err(e) = self.write_batch(dir, n) {
            self.abandon();
            return Err(e);
        }
        let Some(file) = self.file else {
            return Ok(());
        };
        let (tmp, path, day_dir) = (file.tmp, file.path, file.day_dir);
        let closed = file
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&path, &e))
            .and_then(|written| written.sync_all().map_err(EventLogError::io(&tmp)))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(EventLogError::io(&path)));
        if closed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        closed?;
        sync_dir(&day_dir);
        Ok(())
    }

    /// Drops the file being written (after an error): its rows are lost.
    fn abandon(self) {
        if let Some(file) = self.file {
            drop(file.writer);
            let _ = std::fs::remove_file(&file.tmp);
        }
    }
}

/// Files a process that stopped mid-file left behind (`day=*/.<name>.parquet.tmp`): without
/// their footer no reader can open them, and an erasure, which rewrites `.parquet` files, would
/// not find the rows in them.
fn remove_unfinished(dir: &Path) {
    let Ok(days) = std::fs::read_dir(dir) else {
        return;
    };
    for day in days.flatten().map(|d| d.path()).filter(|p| p.is_dir()) {
        let Ok(files) = std::fs::read_dir(&day) else {
            continue;
        };
        for path in files.flatten().map(|f| f.path()) {
            let unfinished = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".parquet.tmp"));
            if unfinished {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), "removed an unfinished served-feature log file")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished served-feature log file")
                    }
                }
            }
        }
    }
}

fn schema_key(r: &ServedRecord) -> String {
    let mut key = r.model_version.clone();
    for f in &r.features {
        key.push_str(&format!("|{}.{}:{}", f.input, f.feature, f.width));
    }
    key
}

fn write_loop(config: &ServedLogConfig, records: &mpsc::Receiver<Message>) {
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut files = 0u64;
    let dir = config.dir.as_path();
    let finish = |p: Pending, files: &mut u64| {
        let rows = p.rows;
        if let Err(e) = p.finish(dir, files) {
            tracing::warn!(error = %e, rows, "served-feature log write failed; rows dropped");
        }
    };
    loop {
        let wait = pending
            .values()
            .map(|p| (p.since + config.flush_interval).saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        let closed = match records.recv_timeout(wait) {
            Ok(Message::Erase { user, reply }) => {
                // Every open file is finished first: then the user's rows are all in files.
                for (_, p) in std::mem::take(&mut pending) {
                    finish(p, &mut files);
                }
                let _ = reply.send(crate::erase::erase_from_parquet(dir, "user_id", &user));
                false
            }
            Ok(Message::Record(record)) => {
                let key = schema_key(&record);
                let p = pending.entry(key.clone()).or_insert_with(|| Pending {
                    since: Instant::now(),
                    rows: 0,
                    batch: Vec::new(),
                    batch_rows: 0,
                    file: None,
                });
                p.rows += record.candidates.len();
                p.batch_rows += record.candidates.len();
                p.batch.push(record);
                if p.batch_rows >= BATCH_ROWS
                    && let Err(e) = p.write_batch(dir, &mut files)
                {
                    tracing::warn!(error = %e, rows = p.rows, "served-feature log write failed; rows dropped");
                    if let Some(p) = pending.remove(&key) {
                        p.abandon();
                    }
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, p)| {
                closed
                    || p.rows >= config.rows_per_file
                    || p.since.elapsed() >= config.flush_interval
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(p) = pending.remove(&key) {
                finish(p, &mut files);
            }
        }
        if closed {
            return;
        }
    }
}

fn parquet_error(path: &Path, e: &dyn std::fmt::Display) -> EventLogError {
    EventLogError::Parquet {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// A new file for records like `first`, numbered `n`, written under a temporary name.
fn open_file(dir: &Path, first: &ServedRecord, n: u64) -> Result<OpenFile, EventLogError> {
    let day_dir = dir.join(format!("day={}", civil(day_of(first.timestamp_ms))));
    std::fs::create_dir_all(&day_dir).map_err(EventLogError::io(&day_dir))?;
    let model = first.model_version.replace(['/', '\\'], "-");
    let name = format!("{model}-{}-{n}.parquet", first.timestamp_ms);
    let path = day_dir.join(&name);
    let tmp = day_dir.join(format!(".{name}.tmp"));
    // Model inputs are nearly all distinct floats: no dictionary (the writer would hash every
    // value into one until it gave up on it), and their bytes split into streams
    // (BYTE_STREAM_SPLIT), which zstd compresses in a third less CPU (`cargo bench -p
    // tandem-events --bench served_log`). Statistics per column chunk, which is what readers
    // prune on, not per page, and none on model inputs (below). Text keeps its dictionary (a
    // request's id repeats on each of its rows); integers stay plain.
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_encoding(Encoding::BYTE_STREAM_SPLIT);
    for text in ["request_id", "user_id", "model_version", "item_id"] {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(text), true)
            .set_column_encoding(ColumnPath::from(text), Encoding::PLAIN);
    }
    // A minimum and maximum over a chunk's model inputs (whole embeddings, one-hot vectors)
    // prune nothing, and computing them took about a twelfth of the writer's CPU.
    for head in &first.features {
        props = props.set_column_statistics_enabled(
            ColumnPath::new(vec![feature_column(head), "list".into(), "item".into()]),
            EnabledStatistics::None,
        );
    }
    for integer in ["timestamp_ms", "candidate", "position"] {
        props = props.set_column_encoding(ColumnPath::from(integer), Encoding::PLAIN);
    }
    let props = props.build();
    let file = File::create(&tmp).map_err(EventLogError::io(&tmp))?;
    let schema = schema(first);
    let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
        .map_err(|e| parquet_error(&path, &e))?;
    Ok(OpenFile {
        writer,
        schema,
        tmp,
        path,
        day_dir,
    })
}

/// A feature's column, named so that a reader can tell model inputs from the request's columns.
fn feature_column(feature: &ServedFeature) -> String {
    format!("feature.{}.{}", feature.input, feature.feature)
}

/// The file schema of records like `first`.
fn schema(first: &ServedRecord) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("candidate", DataType::UInt32, false),
        Field::new("position", DataType::UInt32, true),
        Field::new("retrieval_score", DataType::Float32, false),
        Field::new("score", DataType::Float32, false),
    ];
    for head in &first.features {
        let item = Arc::new(Field::new("item", DataType::Float64, false));
        fields.push(Field::new(
            feature_column(head),
            DataType::FixedSizeList(item, head.width.max(1) as i32),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// One row per candidate of `records` (all of one schema), in the file's `schema`.
fn record_batch(
    path: &Path,
    schema: &SchemaRef,
    records: &[ServedRecord],
) -> Result<RecordBatch, EventLogError> {
    let Some(first) = records.first() else {
        return Err(parquet_error(path, &"no records"));
    };
    let rows = || {
        records
            .iter()
            .flat_map(|r| r.candidates.iter().enumerate().map(move |(i, c)| (r, i, c)))
    };
    let n_rows: usize = records.iter().map(|r| r.candidates.len()).sum();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows().map(|r| r.0.request_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows().map(|r| r.0.user_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows().map(|r| r.0.model_version.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows().map(|r| r.2.item_id.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows().map(|r| r.0.timestamp_ms),
        )),
        Arc::new(UInt32Array::from_iter_values(rows().map(|r| r.1 as u32))),
        Arc::new(UInt32Array::from_iter(rows().map(|r| r.2.position))),
        Arc::new(Float32Array::from_iter_values(
            rows().map(|r| r.2.retrieval_score),
        )),
        Arc::new(Float32Array::from_iter_values(rows().map(|r| r.2.score))),
    ];
    for (f, head) in first.features.iter().enumerate() {
        let width = head.width.max(1);
        let mut values = Vec::with_capacity(n_rows * width);
        for r in records {
            let rows = r.candidates.len();
            match r.features.get(f) {
                // Every row's values: one copy for the record, not one per row.
                Some(x) if x.values.len() == rows * width => values.extend_from_slice(&x.values),
                feature => {
                    for row in 0..rows {
                        match feature.and_then(|x| x.values.get(row * width..(row + 1) * width)) {
                            Some(v) => values.extend_from_slice(v),
                            None => values.extend(std::iter::repeat_n(f64::NAN, width)),
                        }
                    }
                }
            }
        }
        // The list's item field as the file's schema has it (built once per file).
        let item = match schema.fields().get(columns.len()).map(|c| c.data_type()) {
            Some(DataType::FixedSizeList(item, _)) => item.clone(),
            other => {
                return Err(parquet_error(
                    path,
                    &format!("a list column, not {other:?}"),
                ));
            }
        };
        let list = FixedSizeListArray::try_new(
            item,
            width as i32,
            Arc::new(Float64Array::from(values)),
            None,
        )
        .map_err(|e| parquet_error(path, &e))?;
        columns.push(Arc::new(list));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| parquet_error(path, &e))
}
