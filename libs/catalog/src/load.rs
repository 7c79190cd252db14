//! Parquet → validated columns.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float32Array, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Float32Type};
use compact_str::CompactString;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tandem_memory::HugeArray;

use crate::{Catalog, CatalogError, ItemIdx, columns};

pub(crate) fn read_parquet(path: &Path) -> Result<Catalog, CatalogError> {
    let file = File::open(path).map_err(|source| CatalogError::Io {
        path: path.to_owned(),
        source,
    })?;
    let parquet_err = |source| CatalogError::Parquet {
        path: path.to_owned(),
        source,
    };
    let arrow_err = |source| CatalogError::Arrow {
        path: path.to_owned(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(65_536)
        .build()
        .map_err(parquet_err)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(arrow_err)?;
    let batch = concat_batches(&schema, &batches).map_err(arrow_err)?;
    if batch.num_rows() == 0 {
        return Err(CatalogError::Empty(path.to_owned()));
    }
    from_batch(&batch)
}

fn column<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a ArrayRef, CatalogError> {
    let col = batch.column_by_name(name).ok_or(CatalogError::Column {
        column: name,
        reason: "missing".into(),
    })?;
    if col.null_count() > 0 {
        return Err(CatalogError::Column {
            column: name,
            reason: format!("{} null values", col.null_count()),
        });
    }
    Ok(col)
}

fn cast_to(col: &ArrayRef, name: &'static str, to: &DataType) -> Result<ArrayRef, CatalogError> {
    cast(col, to).map_err(|e| CatalogError::Column {
        column: name,
        reason: format!("expected {to}, found {}: {e}", col.data_type()),
    })
}

/// Builds a catalog from one batch holding the catalog columns.
pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Catalog, CatalogError> {
    let item_ids = cast_to(
        column(batch, columns::ITEM_ID)?,
        columns::ITEM_ID,
        &DataType::Utf8,
    )?
    .as_string::<i32>()
    .clone();

    let emb_col = column(batch, columns::EMBEDDING)?;
    let (embeddings, dim) = match emb_col.data_type() {
        DataType::FixedSizeList(field, dim) if field.data_type() == &DataType::Float32 => {
            let list = emb_col.as_fixed_size_list();
            // A sliced list's values start at the slice offset; copy to a fresh contiguous
            // buffer in that case, else share it.
            let values = list.values().as_primitive::<Float32Type>();
            let dim = usize::try_from(*dim).unwrap_or(0);
            let start = list.offset() * dim;
            let values = values.slice(start, list.len() * dim);
            if values.null_count() > 0 {
                return Err(CatalogError::Column {
                    column: columns::EMBEDDING,
                    reason: "null vector components".into(),
                });
            }
            (values, dim)
        }
        other => {
            return Err(CatalogError::Column {
                column: columns::EMBEDDING,
                reason: format!("expected FixedSizeList<Float32>, found {other}"),
            });
        }
    };
    if dim == 0 {
        return Err(CatalogError::Column {
            column: columns::EMBEDDING,
            reason: "dimension 0".into(),
        });
    }
    if let Some(row) = embeddings
        .values()
        .iter()
        .position(|v| !v.is_finite())
        .map(|p| p / dim)
    {
        return Err(CatalogError::Column {
            column: columns::EMBEDDING,
            reason: format!("non-finite value in row {row}"),
        });
    }

    let category = cast_to(
        column(batch, columns::CATEGORY)?,
        columns::CATEGORY,
        &DataType::Utf8,
    )?;
    let category = category.as_string::<i32>();
    let mut categories: Vec<String> = category.iter().flatten().map(str::to_owned).collect();
    categories.sort_unstable();
    categories.dedup();
    let category_codes = category
        .iter()
        .flatten()
        .map(|c| {
            categories
                .binary_search_by(|v| v.as_str().cmp(c))
                .unwrap_or(0) as u32
        })
        .collect();

    let f32_col = |name: &'static str| -> Result<Float32Array, CatalogError> {
        let col = cast_to(column(batch, name)?, name, &DataType::Float32)?;
        let arr = col.as_primitive::<Float32Type>().clone();
        if let Some(row) = arr.values().iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(CatalogError::Column {
                column: name,
                reason: format!("negative or non-finite value in row {row}"),
            });
        }
        Ok(arr)
    };
    let price = f32_col(columns::PRICE)?;
    let popularity = f32_col(columns::POPULARITY)?;
    let in_stock: BooleanArray = cast_to(
        column(batch, columns::IN_STOCK)?,
        columns::IN_STOCK,
        &DataType::Boolean,
    )?
    .as_boolean()
    .clone();

    let mut by_item_id = HashMap::with_capacity(item_ids.len());
    for (idx, id) in item_ids.iter().flatten().enumerate() {
        if id.is_empty() {
            return Err(CatalogError::Column {
                column: columns::ITEM_ID,
                reason: format!("empty id in row {idx}"),
            });
        }
        if by_item_id
            .insert(CompactString::from(id), idx as ItemIdx)
            .is_some()
        {
            return Err(CatalogError::DuplicateItemId(id.to_owned()));
        }
    }
    let by_popularity = crate::popularity_order(&popularity);

    // Every other numeric column, for model features (`item_numeric`).
    let known = [
        columns::ITEM_ID,
        columns::EMBEDDING,
        columns::CATEGORY,
        columns::PRICE,
        columns::IN_STOCK,
        columns::POPULARITY,
    ];
    let mut extra_numeric = Vec::new();
    for field in batch.schema().fields() {
        let name = field.name();
        if known.contains(&name.as_str()) || !field.data_type().is_numeric() {
            continue;
        }
        let Some(col) = batch.column_by_name(name) else {
            continue;
        };
        let reason = if col.null_count() > 0 {
            Some(format!("{} null values", col.null_count()))
        } else {
            None
        };
        let values = cast(col, &DataType::Float32).map_err(|e| CatalogError::ExtraColumn {
            column: name.clone(),
            reason: e.to_string(),
        })?;
        let values = values.as_primitive::<Float32Type>().clone();
        let reason = reason.or_else(|| {
            values
                .values()
                .iter()
                .position(|v| !v.is_finite())
                .map(|row| format!("non-finite value in row {row}"))
        });
        if let Some(reason) = reason {
            return Err(CatalogError::ExtraColumn {
                column: name.clone(),
                reason,
            });
        }
        extra_numeric.push((name.clone(), values));
    }
    extra_numeric.sort_by(|a, b| a.0.cmp(&b.0));

    Ok(Catalog {
        extra_numeric,
        related: crate::Related::default(),
        item_ids,
        embeddings: HugeArray::from_slice(embeddings.values()),
        dim,
        category_codes,
        categories,
        price,
        in_stock,
        popularity,
        by_item_id,
        by_popularity,
    })
}
