//! Attribute filters: the wire form (`FilterSpec`, by name) and the resolved form checked per
//! item during the graph search (`ItemFilter`, by dense id).

use std::collections::HashSet;

use foldhash::fast::RandomState as FastHash;

use tandem_catalog::{Catalog, Category, ItemAttributes, ItemIdx};

use crate::RetrievalError;

/// A filter as a client states it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterSpec {
    pub categories: Vec<String>,
    pub min_price: Option<f32>,
    pub max_price: Option<f32>,
    pub in_stock_only: bool,
    pub exclude_item_ids: Vec<String>,
}

/// What a filter reads about items: the catalog, or the index's live rows (catalog plus
/// upserts).
pub trait Attributes {
    fn category_code_of(&self, name: &str) -> Option<u32>;
    /// Number of category codes in use (codes are below it).
    fn category_codes(&self) -> usize;
    fn row_of(&self, item_id: &str) -> Option<ItemIdx>;
    fn category_code(&self, row: ItemIdx) -> u32;
    fn price(&self, row: ItemIdx) -> f32;
    fn in_stock(&self, row: ItemIdx) -> bool;
}

impl Attributes for Catalog {
    fn category_code_of(&self, name: &str) -> Option<u32> {
        Catalog::category_code_of(self, name)
    }
    fn category_codes(&self) -> usize {
        self.categories().len()
    }
    fn row_of(&self, item_id: &str) -> Option<ItemIdx> {
        self.idx_of(item_id)
    }
    fn category_code(&self, row: ItemIdx) -> u32 {
        Catalog::category_code(self, row)
    }
    fn price(&self, row: ItemIdx) -> f32 {
        Catalog::price(self, row)
    }
    fn in_stock(&self, row: ItemIdx) -> bool {
        Catalog::in_stock(self, row)
    }
}

impl<T: Attributes + ?Sized> Attributes for std::sync::Arc<T> {
    fn category_code_of(&self, name: &str) -> Option<u32> {
        (**self).category_code_of(name)
    }
    fn category_codes(&self) -> usize {
        (**self).category_codes()
    }
    fn row_of(&self, item_id: &str) -> Option<ItemIdx> {
        (**self).row_of(item_id)
    }
    fn category_code(&self, row: ItemIdx) -> u32 {
        (**self).category_code(row)
    }
    fn price(&self, row: ItemIdx) -> f32 {
        (**self).price(row)
    }
    fn in_stock(&self, row: ItemIdx) -> bool {
        (**self).in_stock(row)
    }
}

/// A filter resolved against one catalog or index state.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// Indexed by category code; `None` admits every category.
    categories: Option<Vec<bool>>,
    min_price: Option<f32>,
    max_price: Option<f32>,
    in_stock_only: bool,
    /// Read for every node the search admits (thousands per query): hashed with foldhash,
    /// not SipHash, whose DoS resistance these internal indexes do not need.
    excluded: HashSet<ItemIdx, FastHash>,
}

impl ItemFilter {
    /// Validates the spec: unknown categories and bad price bounds are errors naming the field;
    /// excluded ids the catalog does not know are ignored (nothing to exclude).
    pub fn resolve(catalog: &impl Attributes, spec: &FilterSpec) -> Result<Self, RetrievalError> {
        let categories = if spec.categories.is_empty() {
            None
        } else {
            let mut allowed = vec![false; catalog.category_codes()];
            for name in &spec.categories {
                let code = catalog.category_code_of(name).ok_or_else(|| {
                    RetrievalError::invalid(
                        "filter.categories",
                        format!("unknown category `{name}`"),
                    )
                })?;
                allowed[code as usize] = true;
            }
            Some(allowed)
        };
        for (field, bound) in [
            ("filter.min_price", spec.min_price),
            ("filter.max_price", spec.max_price),
        ] {
            if let Some(v) = bound
                && !v.is_finite()
            {
                return Err(RetrievalError::invalid(
                    field,
                    format!("must be finite, got {v}"),
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (spec.min_price, spec.max_price)
            && lo > hi
        {
            return Err(RetrievalError::invalid(
                "filter.min_price",
                format!("{lo} is above filter.max_price {hi}"),
            ));
        }
        let excluded = spec
            .exclude_item_ids
            .iter()
            .filter_map(|id| catalog.row_of(id))
            .collect();
        Ok(Self {
            categories,
            min_price: spec.min_price,
            max_price: spec.max_price,
            in_stock_only: spec.in_stock_only,
            excluded,
        })
    }

    /// Excludes more items (purchased, on the current page, ...).
    pub fn exclude(&mut self, items: impl IntoIterator<Item = ItemIdx>) {
        self.excluded.extend(items);
    }

    /// Whether only exclusions constrain the filter.
    pub fn has_attribute_constraints(&self) -> bool {
        self.categories.is_some()
            || self.min_price.is_some()
            || self.max_price.is_some()
            || self.in_stock_only
    }

    pub fn is_empty(&self) -> bool {
        !self.has_attribute_constraints() && self.excluded.is_empty()
    }

    pub fn admits(&self, catalog: &impl Attributes, idx: ItemIdx) -> bool {
        if let Some(allowed) = &self.categories
            && !allowed
                .get(catalog.category_code(idx) as usize)
                .copied()
                .unwrap_or(false)
        {
            return false;
        }
        // The price is read only when bounded: in a graph walk each read is a cache line.
        if (self.min_price.is_some() || self.max_price.is_some()) && {
            let price = catalog.price(idx);
            self.min_price.is_some_and(|lo| price < lo)
                || self.max_price.is_some_and(|hi| price > hi)
        } {
            return false;
        }
        if self.in_stock_only && !catalog.in_stock(idx) {
            return false;
        }
        !self.excluded.contains(&idx)
    }

    /// Whether the filter admits catalog item `idx` with these (current) attributes; a
    /// category the catalog does not know matches no category filter.
    pub fn admits_item(&self, idx: ItemIdx, item: &ItemAttributes) -> bool {
        if let Some(allowed) = &self.categories {
            let admitted = match item.category {
                Category::Code(code) => allowed.get(code as usize).copied().unwrap_or(false),
                Category::Named(_) => false,
            };
            if !admitted {
                return false;
            }
        }
        if self.min_price.is_some_and(|lo| item.price < lo)
            || self.max_price.is_some_and(|hi| item.price > hi)
        {
            return false;
        }
        if self.in_stock_only && !item.in_stock {
            return false;
        }
        !self.excluded.contains(&idx)
    }

    /// The filter by name again, for a stage that resolves it against its own items (a remote
    /// server, or an index whose rows are not `catalog`'s).
    pub fn spec(&self, catalog: &Catalog) -> FilterSpec {
        let names = catalog.categories();
        FilterSpec {
            categories: self.categories.as_ref().map_or_else(Vec::new, |allowed| {
                allowed
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| **a)
                    .filter_map(|(code, _)| names.get(code).cloned())
                    .collect()
            }),
            min_price: self.min_price,
            max_price: self.max_price,
            in_stock_only: self.in_stock_only,
            exclude_item_ids: self
                .excluded
                .iter()
                .filter(|&&idx| (idx as usize) < catalog.len())
                .map(|&idx| catalog.item_id(idx).to_owned())
                .collect(),
        }
    }

    /// Estimated fraction of the catalog the filter admits, assuming independent predicates.
    pub(crate) fn estimated_selectivity(&self, stats: &CatalogStats) -> f64 {
        let mut s = 1.0;
        if let Some(allowed) = &self.categories {
            let n: usize = allowed
                .iter()
                .zip(&stats.category_counts)
                .filter(|(a, _)| **a)
                .map(|(_, c)| *c)
                .sum();
            s *= n as f64 / stats.items as f64;
        }
        if self.min_price.is_some() || self.max_price.is_some() {
            let lo = self
                .min_price
                .map_or(0, |lo| stats.sorted_prices.partition_point(|p| *p < lo));
            let hi = self.max_price.map_or(stats.items, |hi| {
                stats.sorted_prices.partition_point(|p| *p <= hi)
            });
            s *= hi.saturating_sub(lo) as f64 / stats.items as f64;
        }
        if self.in_stock_only {
            s *= stats.in_stock as f64 / stats.items as f64;
        }
        s
    }
}

/// Column statistics for selectivity estimates.
#[derive(Debug)]
pub(crate) struct CatalogStats {
    items: usize,
    category_counts: Vec<usize>,
    sorted_prices: Vec<f32>,
    in_stock: usize,
}

impl CatalogStats {
    pub(crate) fn new(catalog: &Catalog) -> Self {
        let mut category_counts = vec![0; catalog.categories().len()];
        let mut sorted_prices = Vec::with_capacity(catalog.len());
        let mut in_stock = 0;
        for idx in 0..catalog.len() as ItemIdx {
            category_counts[catalog.category_code(idx) as usize] += 1;
            sorted_prices.push(catalog.price(idx));
            in_stock += usize::from(catalog.in_stock(idx));
        }
        sorted_prices.sort_by(f32::total_cmp);
        Self {
            items: catalog.len(),
            category_counts,
            sorted_prices,
            in_stock,
        }
    }
}
