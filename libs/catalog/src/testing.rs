//! Seeded catalog fixtures for tests and benches in any crate (feature `test-util`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::columns;

/// Deterministic generator (splitmix64), so fixtures need no RNG dependency.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// A catalog of `n` items with clustered embeddings: item i is in category `cat-{i % categories}`,
/// and its embedding points near that category's centre.
pub fn synthetic_batch(n: usize, dim: usize, categories: usize, seed: u64) -> RecordBatch {
    let mut rng = SplitMix::new(seed);
    let centres: Vec<Vec<f32>> = (0..categories)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let mut values = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[i % categories];
        values.extend(c.iter().map(|x| x + 0.5 * rng.normal()));
    }
    let ids = StringArray::from_iter_values((0..n).map(|i| format!("item-{i:06}")));
    let cats = StringArray::from_iter_values((0..n).map(|i| format!("cat-{:02}", i % categories)));
    let price = Float32Array::from_iter_values((0..n).map(|_| 1.0 + 99.0 * rng.unit()));
    let in_stock = BooleanArray::from_iter((0..n).map(|_| Some(rng.unit() < 0.9)));
    let popularity = Float32Array::from_iter_values((0..n).map(|i| 1000.0 / (i as f32 + 1.0)));
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let emb = FixedSizeListArray::new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new(columns::ITEM_ID, DataType::Utf8, false),
        Field::new(
            columns::EMBEDDING,
            DataType::FixedSizeList(item, dim as i32),
            false,
        ),
        Field::new(columns::CATEGORY, DataType::Utf8, false),
        Field::new(columns::PRICE, DataType::Float32, false),
        Field::new(columns::IN_STOCK, DataType::Boolean, false),
        Field::new(columns::POPULARITY, DataType::Float32, false),
    ]));
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(emb),
        Arc::new(cats),
        Arc::new(price),
        Arc::new(in_stock),
        Arc::new(popularity),
    ];
    RecordBatch::try_new(schema, arrays).expect("fixture columns match the schema")
}

/// Writes a batch the way the pipeline does: zstd, byte-stream-split embeddings, no dictionary.
pub fn write_parquet(batch: &RecordBatch, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let emb_leaf = ColumnPath::from(vec![
        columns::EMBEDDING.to_owned(),
        "list".to_owned(),
        "item".to_owned(),
    ]);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_column_dictionary_enabled(emb_leaf.clone(), false)
        .set_column_encoding(emb_leaf, Encoding::BYTE_STREAM_SPLIT)
        .build();
    let mut writer = ArrowWriter::try_new(File::create(path)?, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Writes `co_occurrence.parquet` rows (item, related item, weight) as the pipeline does; put
/// each item's rows strongest first.
pub fn write_related(
    pairs: &[(&str, &str, f32)],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("related_id", DataType::Utf8, false),
        Field::new("weight", DataType::Float32, false),
    ]));
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.0))),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.1))),
        Arc::new(Float32Array::from_iter_values(pairs.iter().map(|p| p.2))),
    ];
    let batch = RecordBatch::try_new(schema, arrays)?;
    let mut writer = ArrowWriter::try_new(File::create(path)?, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

/// `batch` with one more float column (an extra numeric column such as `buyers_7d`).
pub fn with_numeric(batch: &RecordBatch, name: &str, values: Vec<f32>) -> RecordBatch {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, DataType::Float32, false));
    let mut arrays = batch.columns().to_vec();
    arrays.push(Arc::new(Float32Array::from(values)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .expect("one value per row of the batch")
}
