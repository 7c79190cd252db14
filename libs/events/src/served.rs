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
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
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
    /// A file is written once this many rows are buffered for one model version...
    pub rows_per_file: usize,
    /// ... or this long after the first of them arrived.
    pub flush_interval: Duration,
}

/// What the writer thread takes.
enum Message {
    Record(ServedRecord),
    /// Drop the user's buffered records and rewrite the files that hold their rows.
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
    /// Writes what is buffered.
    fn drop(&mut self) {
        self.records.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Records of one schema (model version and feature layout) waiting for their file.
struct Pending {
    since: Instant,
    rows: usize,
    records: Vec<ServedRecord>,
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
    loop {
        let wait = pending
            .values()
            .map(|p| (p.since + config.flush_interval).saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        let closed = match records.recv_timeout(wait) {
            Ok(Message::Erase { user, reply }) => {
                let mut buffered = 0u64;
                for p in pending.values_mut() {
                    p.records.retain(|r| {
                        let theirs = r.user_id == user;
                        if theirs {
                            buffered += r.candidates.len() as u64;
                        }
                        !theirs
                    });
                    p.rows = p.records.iter().map(|r| r.candidates.len()).sum();
                }
                pending.retain(|_, p| !p.records.is_empty());
                let _ = reply.send(
                    crate::erase::erase_from_parquet(&config.dir, "user_id", &user)
                        .map(|(rows, files)| (rows + buffered, files)),
                );
                false
            }
            Ok(Message::Record(record)) => {
                let p = pending
                    .entry(schema_key(&record))
                    .or_insert_with(|| Pending {
                        since: Instant::now(),
                        rows: 0,
                        records: Vec::new(),
                    });
                p.rows += record.candidates.len();
                p.records.push(record);
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
                files += 1;
                if let Err(e) = write_file(&config.dir, &p.records, files) {
                    tracing::warn!(error = %e, records = p.records.len(), "served-feature log write failed; records dropped");
                }
            }
        }
        if closed {
            return;
        }
    }
}

fn write_file(dir: &Path, records: &[ServedRecord], n: u64) -> Result<PathBuf, EventLogError> {
    let Some(first) = records.first() else {
        return Ok(dir.to_owned());
    };
    let day_dir = dir.join(format!("day={}", civil(day_of(first.timestamp_ms))));
    std::fs::create_dir_all(&day_dir).map_err(EventLogError::io(&day_dir))?;
    let model = first.model_version.replace(['/', '\\'], "-");
    let name = format!("{model}-{}-{n}.parquet", first.timestamp_ms);
    let path = day_dir.join(&name);
    let tmp = day_dir.join(format!(".{name}.tmp"));
    let parquet = |e: &dyn std::fmt::Display| EventLogError::Parquet {
        path: path.clone(),
        reason: e.to_string(),
    };
    let rows = || {
        records
            .iter()
            .flat_map(|r| r.candidates.iter().enumerate().map(move |(i, c)| (r, i, c)))
    };
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
        let mut values = Vec::new();
        for r in records {
            let feature = r.features.get(f);
            for row in 0..r.candidates.len() {
                match feature.and_then(|x| x.values.get(row * width..(row + 1) * width)) {
                    Some(v) => values.extend_from_slice(v),
                    None => values.extend(std::iter::repeat_n(f64::NAN, width)),
                }
            }
        }
        let item = Arc::new(Field::new("item", DataType::Float64, false));
        let list = FixedSizeListArray::try_new(
            item.clone(),
            width as i32,
            Arc::new(Float64Array::from(values)),
            None,
        )
        .map_err(|e| parquet(&e))?;
        fields.push(Field::new(
            format!("feature.{}.{}", head.input, head.feature),
            DataType::FixedSizeList(item, width as i32),
            false,
        ));
        columns.push(Arc::new(list));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| parquet(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(&tmp).map_err(EventLogError::io(&tmp))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| parquet(&e))?;
    writer.write(&batch).map_err(|e| parquet(&e))?;
    let file = writer.into_inner().map_err(|e| parquet(&e))?;
    file.sync_all().map_err(EventLogError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(EventLogError::io(&path))?;
    sync_dir(&day_dir);
    Ok(path)
}
