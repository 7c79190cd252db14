//! The served-feature log on disk: rows stream into the open file in batches, the file is put
//! in place when closed, and an erasure finds every row of the user.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, FixedSizeListArray, Float64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tandem_events::{ServedCandidate, ServedFeature, ServedLog, ServedLogConfig, ServedRecord};

const ROWS: usize = 200;

fn record(n: usize, user: &str) -> ServedRecord {
    ServedRecord {
        request_id: format!("r{n}"),
        user_id: user.to_owned(),
        timestamp_ms: 1_800_000_000_000 + n as i64,
        model_version: "ranker/1".into(),
        candidates: (0..ROWS)
            .map(|i| ServedCandidate {
                item_id: format!("item-{i}"),
                retrieval_score: i as f32,
                score: -(i as f32),
                position: (i < 10).then_some(i as u32),
            })
            .collect(),
        features: vec![
            ServedFeature {
                input: "features".into(),
                feature: "user_vector".into(),
                width: 2,
                values: (0..ROWS * 2).map(|v| (n * 1000 + v) as f64).collect(),
            },
            ServedFeature {
                input: "features".into(),
                feature: "price".into(),
                width: 1,
                values: (0..ROWS).map(|v| v as f64 / 2.0).collect(),
            },
        ],
    }
}

/// A log in `dir` whose files close at `rows_per_file` rows (or an hour).
fn start(dir: &Path, rows_per_file: usize) -> ServedLog {
    ServedLog::start(ServedLogConfig {
        dir: dir.to_owned(),
        queue: 64,
        rows_per_file,
        flush_interval: Duration::from_secs(3600),
    })
    .expect("served log")
}

fn reader(path: &Path) -> ParquetRecordBatchReaderBuilder<File> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("file")).expect("parquet")
}

/// Each row's values of the model-input column `column` (a fixed-size list of f64), in file
/// order.
fn input_rows(
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    column: &str,
) -> Vec<Vec<f64>> {
    let mut rows = Vec::new();
    for batch in batches {
        let batch = batch.expect("batch");
        let list = batch
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .expect("fixed-size list");
        for row in 0..batch.num_rows() {
            let values = list.value(row);
            let values = values.as_any().downcast_ref::<Float64Array>().expect("f64");
            rows.push(values.values().to_vec());
        }
    }
    rows
}

/// Every file (and temporary file) under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Offers `records` to a log whose files hold up to 100,000 rows and stops it: the one file
/// it wrote (and the directory that holds it).
fn one_file(records: impl IntoIterator<Item = ServedRecord>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = start(dir.path(), 100_000);
    for r in records {
        assert!(log.offer(r));
    }
    drop(log);
    let mut written = files(dir.path());
    assert_eq!(written.len(), 1, "{written:?}");
    let file = written.remove(0);
    (dir, file)
}

#[test]
fn rows_stream_into_one_file_that_is_put_in_place_when_closed_and_erasure_finds_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = start(dir.path(), 100_000);
    // 50 answers (10,000 rows): several batches and more than one row group.
    for n in 0..50 {
        assert!(log.offer(record(n, if n % 5 == 0 { "erased" } else { "kept" })));
    }
    // The erasure closes the open file first: all of the user's rows are found in it.
    let (removed, rewritten) = log.erase_user("erased").expect("erased");
    assert_eq!((removed, rewritten), (10 * ROWS as u64, 1));
    drop(log);
    let written = files(dir.path());
    assert_eq!(written.len(), 1, "one file, no temporary left: {written:?}");
    let path = &written[0];
    assert!(
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ranker-1-1800000000000-") && n.ends_with(".parquet")),
        "{path:?}"
    );
    let mut rows = 0;
    for batch in reader(path).build().expect("reader") {
        let batch = batch.expect("batch");
        let users = batch
            .column_by_name("user_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("user_id");
        let requests = batch
            .column_by_name("request_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("request_id");
        let vectors = batch
            .column_by_name("feature.features.user_vector")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .expect("user_vector");
        for row in 0..batch.num_rows() {
            assert_eq!(users.value(row), "kept");
            // Each row's values are its own record's: request n, candidate i → n·1000 + 2i.
            let n: usize = requests.value(row)[1..].parse().expect("request number");
            let values = vectors.value(row);
            let values = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64 values");
            let candidate = (rows + row) % ROWS;
            assert_eq!(values.value(0), (n * 1000 + 2 * candidate) as f64);
            assert_eq!(values.value(1), (n * 1000 + 2 * candidate + 1) as f64);
        }
        rows += batch.num_rows();
    }
    assert_eq!(rows, 40 * ROWS);
}

#[test]
fn a_file_is_closed_at_its_row_limit_and_the_rest_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = start(dir.path(), 4 * ROWS);
    for n in 0..10 {
        assert!(log.offer(record(n, "u")));
    }
    drop(log);
    let rows: Vec<usize> = files(dir.path())
        .iter()
        .map(|path| {
            let reader = reader(path);
            reader.metadata().file_metadata().num_rows() as usize
        })
        .collect();
    assert_eq!(rows.iter().sum::<usize>(), 10 * ROWS);
    assert_eq!(rows.len(), 3, "two full files and the rest: {rows:?}");
}

#[test]
fn a_large_file_is_written_in_bounded_row_groups() {
    let (_dir, file) = one_file((0..50).map(|n| record(n, "u")));
    let reader = reader(&file);
    let groups = reader.metadata().row_groups();
    assert_eq!(
        groups.iter().map(|g| g.num_rows()).sum::<i64>(),
        50 * ROWS as i64
    );
    assert!(groups.len() >= 2, "{} row groups", groups.len());
    assert!(groups.iter().all(|g| g.num_rows() <= 8_192));
}

#[test]
fn request_columns_have_statistics_and_model_inputs_none() {
    let (_dir, file) = one_file((0..5).map(|n| record(n, "u")));
    let reader = reader(&file);
    let group = &reader.metadata().row_groups()[0];
    for chunk in group.columns() {
        let path = chunk.column_path().string();
        let is_input = path.starts_with("feature.");
        assert_eq!(
            chunk.statistics().is_none(),
            is_input,
            "{path}: {:?}",
            chunk.statistics()
        );
    }
    let timestamps = group
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "timestamp_ms")
        .and_then(|c| c.statistics())
        .expect("timestamp statistics");
    assert_eq!(
        timestamps.min_bytes_opt(),
        Some(&1_800_000_000_000i64.to_le_bytes()[..])
    );
    assert_eq!(
        timestamps.max_bytes_opt(),
        Some(&1_800_000_000_004i64.to_le_bytes()[..])
    );
}

#[test]
fn wide_inputs_are_written_in_many_small_pages_and_read_back_whole() {
    // 64 values per row: a row group's chunk of this column is 4 MiB of f64, which the
    // writer cuts into pages of about 512 KiB (its buffers stay small enough to be reused).
    const WIDTH: usize = 64;
    let wide = |n: usize| ServedRecord {
        features: vec![ServedFeature {
            input: "features".into(),
            feature: "item_embedding".into(),
            width: WIDTH,
            values: (0..ROWS * WIDTH)
                .map(|v| (n * 100_000 + v) as f64)
                .collect(),
        }],
        ..record(n, "u")
    };
    let (_dir, file) = one_file((0..50).map(wide));
    let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        File::open(&file).expect("file"),
        options,
    )
    .expect("parquet");
    let column = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| {
            c.path()
                .string()
                .starts_with("feature.features.item_embedding")
        })
        .expect("the input's column");
    let pages = builder
        .metadata()
        .page_index_for_row_group(0)
        .page_locations(column)
        .map(Vec::len)
        .expect("page index");
    // 1 MiB pages would be 4.
    assert!(pages >= 6, "{pages} pages for 8,192 rows of 64 f64");
    let rows = input_rows(
        builder.build().expect("reader"),
        "feature.features.item_embedding",
    );
    assert_eq!(rows.len(), 50 * ROWS);
    for (at, values) in rows.iter().enumerate() {
        let (n, candidate) = (at / ROWS, at % ROWS);
        assert_eq!(values.len(), WIDTH);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, (n * 100_000 + candidate * WIDTH + i) as f64);
        }
    }
}

#[test]
fn rows_a_record_has_no_values_for_are_written_as_nan() {
    // The second record's `user_vector` stops after 150 rows: rows 150.. have no values.
    let short = |n: usize| {
        let mut r = record(n, "u");
        r.features[0].values.truncate(150 * 2);
        r
    };
    let (_dir, file) = one_file([record(0, "u"), short(1)]);
    let rows = input_rows(
        reader(&file).build().expect("reader"),
        "feature.features.user_vector",
    );
    assert_eq!(rows.len(), 2 * ROWS);
    for (at, values) in rows.iter().enumerate() {
        let (n, candidate) = (at / ROWS, at % ROWS);
        if n == 1 && candidate >= 150 {
            assert!(values.iter().all(|v| v.is_nan()), "row {candidate}");
        } else {
            assert_eq!(values[0], (n * 1000 + 2 * candidate) as f64);
            assert_eq!(values[1], (n * 1000 + 2 * candidate + 1) as f64);
        }
    }
}

#[test]
fn a_file_left_unfinished_by_a_stopped_process_is_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = dir.path().join("day=2027-01-15");
    std::fs::create_dir_all(&day).expect("day dir");
    let stale = day.join(".ranker-1-1800000000000-3.parquet.tmp");
    std::fs::write(&stale, b"PAR1 no footer").expect("stale file");
    let kept = day.join("ranker-1-1800000000000-2.parquet");
    std::fs::write(&kept, b"a finished file is left alone").expect("finished file");
    let log = start(dir.path(), 100_000);
    assert!(!stale.exists());
    assert!(kept.exists());
    drop(log);
}
