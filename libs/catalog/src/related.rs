//! Items used together: for each item, the items whose users overlap most with its own
//! (cosine of the sets of users who engaged with each), as the pipeline writes them to
//! `co_occurrence.parquet` beside the catalog: columns `item_id`, `related_id`, `weight`
//! (float), one row per pair, each item's rows strongest first.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;

use crate::{Catalog, CatalogError, ItemIdx};

/// File name of the table, next to `items.parquet`.
pub const RELATED_FILE: &str = "co_occurrence.parquet";

/// (item, related item, weight), as read.
type Pair = (ItemIdx, ItemIdx, f32);

/// Rows of a batch one task resolves.
const RESOLVE_CHUNK: usize = 8_192;

/// Compressed rows: item `i`'s related items are `items[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct Related {
    offsets: Vec<u32>,
    items: Vec<ItemIdx>,
    weights: Vec<f32>,
}

impl Related {
    pub(crate) fn heap_bytes(&self) -> usize {
        4 * (self.offsets.capacity() + self.items.capacity() + self.weights.capacity())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn of(&self, idx: ItemIdx) -> (&[ItemIdx], &[f32]) {
        let i = idx as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&s), Some(&e)) => (
                &self.items[s as usize..e as usize],
                &self.weights[s as usize..e as usize],
            ),
            _ => (&[], &[]),
        }
    }

    /// Reads the table for `catalog`; pairs naming items the catalog does not hold are
    /// skipped (the table may be older than an upserted catalog).
    pub(crate) fn open(path: &Path, catalog: &Catalog) -> Result<Self, CatalogError> {
        let bad = |reason: String| CatalogError::Related {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(65_536).build())
            .map_err(|e| bad(e.to_string()))?;
        // The resolved chunks in file order, kept as they are (no copy into one list of
        // tens of millions of pairs): the counting sort below reads them in turn.
        let mut resolved: Vec<Vec<Pair>> = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let col = |name: &str, to: &DataType| {
                let c = batch
                    .column_by_name(name)
                    .ok_or_else(|| bad(format!("column `{name}` missing")))?;
                if c.null_count() > 0 {
                    return Err(bad(format!("column `{name}` has null values")));
                }
                cast(c, to).map_err(|e| bad(format!("column `{name}`: {e}")))
            };
            let item = col("item_id", &DataType::Utf8)?;
            let related = col("related_id", &DataType::Utf8)?;
            let weight = col("weight", &DataType::Float32)?;
            let (item, related) = (item.as_string::<i32>(), related.as_string::<i32>());
            let weight = weight.as_primitive::<Float32Type>();
            // 26.8 M rows on the 1M catalog, each a lookup that misses the cache: spread over
            // the cores in chunks, each chunk's pairs in file order, the chunks in order.
            let chunks: Vec<Result<Vec<Pair>, CatalogError>> = (0..batch.num_rows())
                .step_by(RESOLVE_CHUNK)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|from| {
                    let to = (from + RESOLVE_CHUNK).min(batch.num_rows());
                    let mut out = Vec::with_capacity(to - from);
                    // The pipeline writes each item's rows together: one lookup per run.
                    let mut last: Option<(&str, Option<ItemIdx>)> = None;
                    for row in from..to {
                        let w = weight.value(row);
                        if !w.is_finite() || w < 0.0 {
                            return Err(bad(format!(
                                "weight {w} is not a finite, non-negative number"
                            )));
                        }
                        let id = item.value(row);
                        let a = match last {
                            Some((last_id, idx)) if last_id == id => idx,
                            _ => {
                                let idx = catalog.idx_of(id);
                                last = Some((id, idx));
                                idx
                            }
                        };
                        if let Some(a) = a
                            && let Some(b) = catalog.idx_of(related.value(row))
                        {
                            out.push((a, b, w));
                        }
                    }
                    Ok(out)
                })
                .collect();
            for chunk in chunks {
                resolved.push(chunk?);
            }
        }
        // Grouped by item with a counting sort (stable: each item's rows keep the file's
        // order, strongest first), no comparison sort of tens of millions of pairs.
        let pairs = || resolved.iter().flatten();
        let mut offsets = vec![0u32; catalog.len() + 1];
        for &(a, _, _) in pairs() {
            offsets[a as usize + 1] += 1;
        }
        for i in 0..catalog.len() {
            offsets[i + 1] += offsets[i];
        }
        let total = offsets[catalog.len()] as usize;
        let mut next = offsets.clone();
        let mut items = vec![0; total];
        let mut weights = vec![0.0; total];
        for &(a, b, w) in pairs() {
            let at = &mut next[a as usize];
            items[*at as usize] = b;
            weights[*at as usize] = w;
            *at += 1;
        }
        Ok(Self {
            offsets,
            items,
            weights,
        })
    }
}
