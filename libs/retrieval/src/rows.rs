//! The index's items: the catalog's rows, then rows appended by upserts, with tombstones.
//!
//! Rows are append-only and never renumbered while the process runs: an upsert appends a new
//! row and tombstones the item's previous one, a delete tombstones. So a row number read from a
//! search stays valid for looking up its item id, whatever happens after.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tandem_catalog::{Catalog, CatalogParts, ItemIdx};

use crate::filter::Attributes;
use crate::kernels::prefetch;
use crate::space::Space;

/// An item as an upsert states it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemUpdate {
    pub item_id: String,
    pub embedding: Vec<f32>,
    pub category: String,
    pub price: f32,
    pub in_stock: bool,
    pub popularity: f32,
}

#[derive(Debug)]
pub(crate) struct Rows {
    base: Arc<Catalog>,
    space: Space,
    /// Categories the catalog does not have; code = catalog categories + position.
    extra_categories: Vec<String>,
    extra_ids: Vec<String>,
    /// Stored (space-transformed, padded) vectors of appended rows.
    extra_vectors: Vec<f32>,
    extra_category: Vec<u32>,
    extra_price: Vec<f32>,
    extra_in_stock: Vec<bool>,
    extra_popularity: Vec<f32>,
    deleted: Vec<u64>,
    deleted_count: usize,
    /// Items whose current row is not their catalog row: moved (Some) or deleted (None).
    moved: HashMap<String, Option<ItemIdx>>,
}

impl Rows {
    pub(crate) fn new(base: Arc<Catalog>, space: Space) -> Self {
        let deleted = vec![0; base.len().div_ceil(64)];
        Self {
            base,
            space,
            extra_categories: Vec::new(),
            extra_ids: Vec::new(),
            extra_vectors: Vec::new(),
            extra_category: Vec::new(),
            extra_price: Vec::new(),
            extra_in_stock: Vec::new(),
            extra_popularity: Vec::new(),
            deleted,
            deleted_count: 0,
            moved: HashMap::new(),
        }
    }

    /// Heap bytes of the rows appended by upserts and of the tombstones.
    pub(crate) fn appended_bytes(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(|s| 24 + s.capacity()).sum::<usize>();
        strings(&self.extra_ids)
            + strings(&self.extra_categories)
            + 4 * (self.extra_vectors.capacity()
                + self.extra_category.capacity()
                + self.extra_price.capacity()
                + self.extra_popularity.capacity())
            + self.extra_in_stock.capacity()
            + 8 * self.deleted.capacity()
            + self.moved.capacity() * (std::mem::size_of::<(String, Option<ItemIdx>)>() + 1)
            + self.moved.keys().map(String::capacity).sum::<usize>()
    }

    pub(crate) fn space(&self) -> Space {
        self.space
    }

    /// Rows ever allocated, deleted ones included.
    pub(crate) fn len(&self) -> usize {
        self.base.len() + self.extra_ids.len()
    }

    pub(crate) fn live(&self) -> usize {
        self.len() - self.deleted_count
    }

    pub(crate) fn is_deleted(&self, row: ItemIdx) -> bool {
        let row = row as usize;
        self.deleted
            .get(row / 64)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    pub(crate) fn item_id(&self, row: ItemIdx) -> &str {
        let r = row as usize;
        if r < self.base.len() {
            self.base.item_id(row)
        } else {
            &self.extra_ids[r - self.base.len()]
        }
    }

    /// A row's stored vector: borrowed where the stored form is the embedding itself.
    pub(crate) fn stored_vector(&self, row: ItemIdx) -> Cow<'_, [f32]> {
        let r = row as usize;
        let n = self.space.stored_len();
        if r >= self.base.len() {
            let start = (r - self.base.len()) * n;
            return Cow::Borrowed(&self.extra_vectors[start..start + n]);
        }
        let x = self.base.embedding(row);
        match self.space.metric() {
            crate::Metric::InnerProduct | crate::Metric::L2 => Cow::Borrowed(x),
            crate::Metric::Cosine => Cow::Owned(self.space.item(x)),
        }
    }

    /// The stored vectors of `rows`, padded, one after another: what a graph build takes.
    pub(crate) fn stored_block(&self, rows: &[ItemIdx]) -> Vec<f32> {
        let n = self.space.stored_len();
        let mut block = Vec::with_capacity(rows.len() * n);
        for &row in rows {
            let v = self.stored_vector(row);
            block.extend_from_slice(&v);
            block.resize(block.len() + n - v.len(), 0.0);
        }
        block
    }

    /// Appends the item's new row and tombstones its previous one. Returns the new row and
    /// the stored vector to index.
    pub(crate) fn upsert(&mut self, item: &ItemUpdate) -> (ItemIdx, Vec<f32>) {
        if let Some(old) = self.row_of(&item.item_id) {
            self.tombstone(old);
        }
        let category = match self.category_code_of(&item.category) {
            Some(c) => c,
            None => {
                self.extra_categories.push(item.category.clone());
                (self.base.categories().len() + self.extra_categories.len() - 1) as u32
            }
        };
        let row = self.len() as ItemIdx;
        let stored = self.space.item(&item.embedding);
        self.extra_ids.push(item.item_id.clone());
        self.extra_vectors.extend_from_slice(&stored);
        self.extra_category.push(category);
        self.extra_price.push(item.price);
        self.extra_in_stock.push(item.in_stock);
        self.extra_popularity.push(item.popularity);
        self.deleted.resize(self.len().div_ceil(64), 0);
        self.moved.insert(item.item_id.clone(), Some(row));
        (row, stored)
    }

    /// Tombstones the item's row; false if the item is unknown or already deleted.
    pub(crate) fn delete(&mut self, item_id: &str) -> bool {
        match self.row_of(item_id) {
            Some(row) => {
                self.tombstone(row);
                self.moved.insert(item_id.to_owned(), None);
                true
            }
            None => false,
        }
    }

    fn tombstone(&mut self, row: ItemIdx) {
        let r = row as usize;
        if !self.is_deleted(row) {
            self.deleted[r / 64] |= 1 << (r % 64);
            self.deleted_count += 1;
        }
    }

    pub(crate) fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    pub(crate) fn popularity(&self, row: ItemIdx) -> f32 {
        let r = row as usize;
        if r < self.base.len() {
            self.base.popularity(row)
        } else {
            self.extra_popularity[r - self.base.len()]
        }
    }

    /// Asks the CPU for a catalog row's category code and price ahead of reading them (rows
    /// appended by upserts are few and stay cached).
    #[inline]
    pub(crate) fn prefetch_attributes(&self, row: ItemIdx) {
        let r = row as usize;
        if r < self.base.len() {
            prefetch(&Catalog::category_codes(&self.base)[r..=r]);
            prefetch(&self.base.prices()[r..=r]);
        }
    }

    pub(crate) fn category_name(&self, code: u32) -> &str {
        let c = code as usize;
        let base = self.base.categories();
        if c < base.len() {
            &base[c]
        } else {
            &self.extra_categories[c - base.len()]
        }
    }

    /// Every row as catalog columns (vocabulary sorted again), and the tombstones (one byte
    /// per row), for a snapshot.
    pub(crate) fn to_parts(&self) -> (CatalogParts, Vec<u8>) {
        let n = self.len();
        let dim = self.space.dim();
        let mut categories: Vec<String> = self
            .base
            .categories()
            .iter()
            .chain(&self.extra_categories)
            .cloned()
            .collect();
        categories.sort_unstable();
        let code_of = |name: &str| {
            categories
                .binary_search_by(|c| c.as_str().cmp(name))
                .unwrap_or(0) as u32
        };
        let mut parts = CatalogParts {
            item_ids: Vec::with_capacity(n),
            embeddings: Vec::with_capacity(n * dim),
            dim,
            categories: Vec::new(),
            category_codes: Vec::with_capacity(n),
            price: Vec::with_capacity(n),
            in_stock: Vec::with_capacity(n),
            popularity: Vec::with_capacity(n),
        };
        let mut deleted = Vec::with_capacity(n);
        for row in 0..n as ItemIdx {
            parts.item_ids.push(self.item_id(row).to_owned());
            parts
                .embeddings
                .extend_from_slice(&self.stored_vector(row)[..dim]);
            parts
                .category_codes
                .push(code_of(self.category_name(self.category_code(row))));
            parts.price.push(self.price(row));
            parts.in_stock.push(self.in_stock(row));
            parts.popularity.push(self.popularity(row));
            deleted.push(u8::from(self.is_deleted(row)));
        }
        parts.categories = categories;
        (parts, deleted)
    }

    /// Rows over a snapshot's items, with its tombstones.
    pub(crate) fn restore(base: Arc<Catalog>, space: Space, deleted: &[u8]) -> Self {
        let mut rows = Self::new(base, space);
        for (row, d) in deleted.iter().enumerate() {
            if *d != 0 {
                let row = row as ItemIdx;
                rows.tombstone(row);
                // The id's last row is deleted: the item is gone, not moved.
                let id = rows.base.item_id(row).to_owned();
                if rows.base.idx_of(&id) == Some(row) {
                    rows.moved.insert(id, None);
                }
            }
        }
        rows
    }

    /// Rows not deleted, in order.
    pub(crate) fn live_rows(&self) -> Vec<ItemIdx> {
        (0..self.len() as ItemIdx)
            .filter(|r| !self.is_deleted(*r))
            .collect()
    }
}

impl Attributes for Rows {
    fn category_code_of(&self, name: &str) -> Option<u32> {
        self.base.category_code_of(name).or_else(|| {
            self.extra_categories
                .iter()
                .position(|c| c == name)
                .map(|p| (self.base.categories().len() + p) as u32)
        })
    }

    fn category_codes(&self) -> usize {
        self.base.categories().len() + self.extra_categories.len()
    }

    fn row_of(&self, item_id: &str) -> Option<ItemIdx> {
        match self.moved.get(item_id) {
            Some(current) => *current,
            None => self.base.idx_of(item_id),
        }
    }

    fn category_code(&self, row: ItemIdx) -> u32 {
        let r = row as usize;
        if r < self.base.len() {
            self.base.category_code(row)
        } else {
            self.extra_category[r - self.base.len()]
        }
    }

    fn price(&self, row: ItemIdx) -> f32 {
        let r = row as usize;
        if r < self.base.len() {
            self.base.price(row)
        } else {
            self.extra_price[r - self.base.len()]
        }
    }

    fn in_stock(&self, row: ItemIdx) -> bool {
        let r = row as usize;
        if r < self.base.len() {
            self.base.in_stock(row)
        } else {
            self.extra_in_stock[r - self.base.len()]
        }
    }
}
