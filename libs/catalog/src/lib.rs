//! The item catalog: one Parquet file read into Arrow columns, with dense internal ids.
//!
//! Owns item attributes and embeddings and the mapping between external string ids and
//! dense `u32` ids (the row number). It does not search or score: retrieval and ranking
//! read from it.

mod attributes;
mod error;
mod load;
mod related;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, BooleanArray, Float32Array, StringArray};
use compact_str::CompactString;
use tandem_memory::HugeArray;

pub use attributes::{Category, ItemAttributes};
pub use error::CatalogError;
pub use related::{RELATED_FILE, Related};

/// Dense id of an item: its row in the catalog.
pub type ItemIdx = u32;

/// Longest item, user or event id a caller may send, in bytes: ids are keys in memory, in
/// Redis and in every log, so one request must not be able to make them megabytes.
pub const MAX_ID_BYTES: usize = 256;

/// Why `id` is refused as an id (`None`: it is fine).
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("must not be empty".into())
    } else if id.len() > MAX_ID_BYTES {
        Some(format!(
            "must be at most {MAX_ID_BYTES} bytes, got {}",
            id.len()
        ))
    } else {
        None
    }
}

/// Columns of `items.parquet`; the file may hold more, which are ignored.
pub mod columns {
    pub const ITEM_ID: &str = "item_id";
    pub const EMBEDDING: &str = "embedding";
    pub const CATEGORY: &str = "category";
    pub const PRICE: &str = "price";
    pub const IN_STOCK: &str = "in_stock";
    pub const POPULARITY: &str = "popularity";
}

/// Immutable, columnar item catalog.
pub struct Catalog {
    item_ids: StringArray,
    /// Row-major `len * dim` values, one contiguous buffer.
    /// Row-major, `dim` per item; on huge pages, since ranking and scans read random rows.
    embeddings: HugeArray<f32>,
    dim: usize,
    category_codes: Vec<u32>,
    /// Sorted vocabulary; a code indexes into it.
    categories: Vec<String>,
    price: Float32Array,
    in_stock: BooleanArray,
    popularity: Float32Array,
    /// Keys inline up to 24 bytes (`CompactString`): a lookup of a 1M-item map otherwise
    /// misses the cache twice, on the entry and on the key's own allocation.
    by_item_id: HashMap<CompactString, ItemIdx>,
    /// All items, most popular first: the fallback when a user has no history.
    by_popularity: Vec<ItemIdx>,
    /// Any other numeric column of the file (trend figures a model reads), by name.
    extra_numeric: Vec<(String, Float32Array)>,
    /// Items bought or used together (`co_occurrence.parquet` beside the catalog file).
    related: Related,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("items", &self.len())
            .field("dim", &self.dim)
            .field("categories", &self.categories.len())
            .finish()
    }
}

impl Catalog {
    /// Reads and validates `items.parquet`, and `co_occurrence.parquet` beside it if present.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let mut catalog = load::read_parquet(path)?;
        let related = path.with_file_name(RELATED_FILE);
        if related.exists() {
            catalog.related = Related::open(&related, &catalog)?;
        }
        Ok(catalog)
    }

    /// Items that co-occur with `idx` in users' histories, strongest first, with their weights.
    #[inline]
    pub fn related(&self, idx: ItemIdx) -> (&[ItemIdx], &[f32]) {
        self.related.of(idx)
    }

    /// Whether a co-occurrence table was loaded.
    pub fn has_related(&self) -> bool {
        !self.related.is_empty()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.item_ids.len()
    }

    /// Heap bytes held, by part, for memory reports.
    pub fn memory(&self) -> CatalogMemory {
        let id_lookup = self.by_item_id.capacity()
            * (std::mem::size_of::<(CompactString, ItemIdx)>() + 1)
            + self
                .by_item_id
                .keys()
                .filter(|k| k.is_heap_allocated())
                .map(CompactString::capacity)
                .sum::<usize>();
        let attributes = 4 * self.category_codes.capacity()
            + self.categories.iter().map(String::capacity).sum::<usize>()
            + self.price.get_array_memory_size()
            + self.in_stock.get_array_memory_size()
            + self.popularity.get_array_memory_size()
            + 4 * self.by_popularity.capacity()
            + self
                .extra_numeric
                .iter()
                .map(|(_, values)| values.get_array_memory_size())
                .sum::<usize>();
        CatalogMemory {
            embeddings: std::mem::size_of_val(&self.embeddings[..]),
            item_ids: self.item_ids.get_array_memory_size(),
            id_lookup,
            attributes,
            related: self.related.heap_bytes(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.item_ids.is_empty()
    }

    /// Embedding dimension.
    #[inline]
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn idx_of(&self, item_id: &str) -> Option<ItemIdx> {
        self.by_item_id.get(item_id).copied()
    }

    pub fn item_id(&self, idx: ItemIdx) -> &str {
        self.item_ids.value(idx as usize)
    }

    #[inline]
    pub fn embedding(&self, idx: ItemIdx) -> &[f32] {
        let start = idx as usize * self.dim;
        &self.embeddings[start..start + self.dim]
    }

    /// All embeddings, row-major.
    #[inline]
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    pub fn category(&self, idx: ItemIdx) -> &str {
        &self.categories[self.category_codes[idx as usize] as usize]
    }

    #[inline]
    pub fn category_code(&self, idx: ItemIdx) -> u32 {
        self.category_codes[idx as usize]
    }

    /// Every row's category code, by row.
    #[inline]
    pub fn category_codes(&self) -> &[u32] {
        &self.category_codes
    }

    pub fn category_code_of(&self, name: &str) -> Option<u32> {
        self.categories
            .binary_search_by(|c| c.as_str().cmp(name))
            .ok()
            .map(|c| c as u32)
    }

    /// The category vocabulary, sorted; codes index into it.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    #[inline]
    pub fn price(&self, idx: ItemIdx) -> f32 {
        self.price.value(idx as usize)
    }

    /// Every row's price, by row.
    #[inline]
    pub fn prices(&self) -> &[f32] {
        self.price.values()
    }

    #[inline]
    pub fn in_stock(&self, idx: ItemIdx) -> bool {
        self.in_stock.value(idx as usize)
    }

    #[inline]
    pub fn popularity(&self, idx: ItemIdx) -> f32 {
        self.popularity.value(idx as usize)
    }

    /// A numeric attribute by column name (booleans read as 0/1), for model features.
    pub fn numeric(&self, column: &str, idx: ItemIdx) -> Option<f32> {
        match column {
            columns::PRICE => Some(self.price(idx)),
            columns::POPULARITY => Some(self.popularity(idx)),
            columns::IN_STOCK => Some(if self.in_stock(idx) { 1.0 } else { 0.0 }),
            _ => self
                .extra_numeric
                .iter()
                .find(|(name, _)| name == column)
                .map(|(_, values)| values.value(idx as usize)),
        }
    }

    const BUILT_IN_NUMERIC: [&'static str; 3] =
        [columns::PRICE, columns::POPULARITY, columns::IN_STOCK];

    /// Whether `numeric` knows the column.
    pub fn has_numeric(&self, column: &str) -> bool {
        Self::BUILT_IN_NUMERIC.contains(&column)
            || self.extra_numeric.iter().any(|(name, _)| name == column)
    }

    /// Items by descending popularity (ties by id).
    pub fn by_popularity(&self) -> &[ItemIdx] {
        &self.by_popularity
    }

    /// The items at `rows`, in that order, as a catalog of their own (a shard). The category
    /// vocabulary is kept whole, so a filter valid on the full catalog stays valid on a part.
    pub fn select(&self, rows: &[ItemIdx]) -> Catalog {
        let item_ids = StringArray::from_iter_values(rows.iter().map(|&r| self.item_id(r)));
        let mut values = Vec::with_capacity(rows.len() * self.dim);
        for &r in rows {
            values.extend_from_slice(self.embedding(r));
        }
        let f32s =
            |f: &dyn Fn(ItemIdx) -> f32| Float32Array::from_iter_values(rows.iter().map(|&r| f(r)));
        let price = f32s(&|r| self.price(r));
        let popularity = f32s(&|r| self.popularity(r));
        let in_stock: BooleanArray = rows.iter().map(|&r| Some(self.in_stock(r))).collect();
        let by_item_id = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (CompactString::from(self.item_id(r)), i as ItemIdx))
            .collect();
        let by_popularity = popularity_order(&popularity);
        let extra_numeric = self
            .extra_numeric
            .iter()
            .map(|(name, values)| {
                let picked = rows.iter().map(|&r| values.value(r as usize));
                (name.clone(), Float32Array::from_iter_values(picked))
            })
            .collect();
        Catalog {
            extra_numeric,
            // Co-occurrence serves the gateway's candidate sources and ranking, which read
            // the whole catalog; a shard does not need it.
            related: Related::default(),
            item_ids,
            embeddings: HugeArray::from(values),
            dim: self.dim,
            category_codes: rows.iter().map(|&r| self.category_code(r)).collect(),
            categories: self.categories.clone(),
            price,
            in_stock,
            popularity,
            by_item_id,
            by_popularity,
        }
    }
}

/// A catalog's heap bytes by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogMemory {
    pub embeddings: usize,
    /// The id strings as loaded.
    pub item_ids: usize,
    /// The id → row map (its keys are copies of the ids).
    pub id_lookup: usize,
    /// Category, price, stock, popularity, trend columns and the popularity order.
    pub attributes: usize,
    /// The co-occurrence table.
    pub related: usize,
}

impl CatalogMemory {
    pub fn total(&self) -> usize {
        self.embeddings + self.item_ids + self.id_lookup + self.attributes + self.related
    }
}

/// A catalog's columns, as a snapshot stores them.
#[derive(Debug, Clone, Default)]
pub struct CatalogParts {
    pub item_ids: Vec<String>,
    /// Row-major, `dim` values per item.
    pub embeddings: Vec<f32>,
    pub dim: usize,
    /// Sorted vocabulary.
    pub categories: Vec<String>,
    pub category_codes: Vec<u32>,
    pub price: Vec<f32>,
    pub in_stock: Vec<bool>,
    pub popularity: Vec<f32>,
}

impl Catalog {
    /// Rebuilds a catalog from its columns. Unlike `open`, an id may repeat (a snapshot keeps
    /// an item's superseded rows): `idx_of` gives its last row.
    pub fn from_parts(parts: CatalogParts) -> Result<Catalog, CatalogError> {
        let n = parts.item_ids.len();
        let bad = |column: &'static str, reason: String| CatalogError::Column { column, reason };
        if parts.dim == 0 || parts.embeddings.len() != n * parts.dim {
            return Err(bad(
                columns::EMBEDDING,
                format!(
                    "{} values for {n} items of dim {}",
                    parts.embeddings.len(),
                    parts.dim
                ),
            ));
        }
        for (column, len) in [
            (columns::CATEGORY, parts.category_codes.len()),
            (columns::PRICE, parts.price.len()),
            (columns::IN_STOCK, parts.in_stock.len()),
            (columns::POPULARITY, parts.popularity.len()),
        ] {
            if len != n {
                return Err(bad(column, format!("{len} values for {n} items")));
            }
        }
        if let Some(code) = parts
            .category_codes
            .iter()
            .find(|c| **c as usize >= parts.categories.len())
        {
            return Err(bad(
                columns::CATEGORY,
                format!("code {code} outside the vocabulary"),
            ));
        }
        let by_item_id = parts
            .item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (CompactString::from(id.as_str()), i as ItemIdx))
            .collect();
        let popularity = Float32Array::from(parts.popularity);
        let by_popularity = popularity_order(&popularity);
        Ok(Catalog {
            // A snapshot keeps what retrieval reads; ranking opens the catalog file itself.
            extra_numeric: Vec::new(),
            related: Related::default(),
            item_ids: StringArray::from_iter_values(parts.item_ids.iter()),
            embeddings: HugeArray::from(parts.embeddings),
            dim: parts.dim,
            category_codes: parts.category_codes,
            categories: parts.categories,
            price: Float32Array::from(parts.price),
            in_stock: parts.in_stock.into_iter().map(Some).collect(),
            popularity,
            by_item_id,
            by_popularity,
        })
    }

    /// Whether `parts` are this catalog's rows, bit for bit. A snapshot of an index no upsert
    /// reached holds exactly the catalog it was built from (deletes are kept apart from the
    /// rows): a process that has that catalog open shares it instead of holding a second copy
    /// (a 1M-item catalog is about 200 MB).
    pub fn holds_exactly(&self, parts: &CatalogParts) -> bool {
        let n = self.len();
        let same_floats = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        parts.item_ids.len() == n
            && parts.dim == self.dim
            && parts.categories == self.categories
            && parts.category_codes == self.category_codes
            && same_floats(&parts.price, self.price.values())
            && same_floats(&parts.popularity, self.popularity.values())
            && same_floats(&parts.embeddings, &self.embeddings)
            && parts.in_stock.len() == n
            && parts
                .in_stock
                .iter()
                .enumerate()
                .all(|(i, &s)| self.in_stock.value(i) == s)
            && parts
                .item_ids
                .iter()
                .enumerate()
                .all(|(i, id)| self.item_ids.value(i) == id)
    }
}

/// Rows by descending popularity, ties by row.
pub(crate) fn popularity_order(popularity: &Float32Array) -> Vec<ItemIdx> {
    let mut order: Vec<ItemIdx> = (0..popularity.len() as ItemIdx).collect();
    order.sort_by(|&a, &b| {
        popularity
            .value(b as usize)
            .total_cmp(&popularity.value(a as usize))
            .then(a.cmp(&b))
    });
    order
}

/// Which of `shards` shards owns an item: FNV-1a of the id, so the assignment is the same in
/// every process and release.
pub fn shard_of(item_id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in item_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}
