//! Whether a catalog item may be recommended now.
//!
//! The gateway reads item attributes from its catalog file, which upserts and deletes do not
//! change. With the index in this process (embedded topology) every item the answer may hold,
//! ranked or backfilled, is checked against the index's current rows. With retrieval behind
//! gRPC, search results are current already and the backfilled items of an answer are checked
//! by asking retrieval (`CandidateStage::item_status`). Either way a deleted item is never
//! recommended again, and a changed one is filtered on its new category, price and stock.

use tandem_catalog::{Catalog, ItemIdx};
use tandem_retrieval::{Attributes, CurrentItems, ItemFilter};

/// Whether `filter` admits catalog item `idx`, as `current` holds it when given.
pub(crate) fn admits(
    catalog: &Catalog,
    current: Option<&CurrentItems<'_>>,
    filter: &ItemFilter,
    idx: ItemIdx,
) -> bool {
    let Some(current) = current else {
        return filter.admits(catalog, idx);
    };
    match current.get(catalog.item_id(idx)) {
        Some(now) => admits_as(catalog, filter, idx, now.category, now.price, now.in_stock),
        None => false,
    }
}

/// Whether `filter` admits catalog item `idx` with these current attributes.
pub(crate) fn admits_as(
    catalog: &Catalog,
    filter: &ItemFilter,
    idx: ItemIdx,
    category: &str,
    price: f32,
    in_stock: bool,
) -> bool {
    let item = Overlaid {
        catalog,
        // A category the catalog does not know matches no category filter.
        category: catalog.category_code_of(category).unwrap_or(u32::MAX),
        price,
        in_stock,
    };
    filter.admits(&item, idx)
}

/// One catalog item with the attributes the index holds for it now. The filter was resolved
/// against the catalog, so category codes and exclusions stay the catalog's.
struct Overlaid<'a> {
    catalog: &'a Catalog,
    category: u32,
    price: f32,
    in_stock: bool,
}

impl Attributes for Overlaid<'_> {
    fn category_code_of(&self, name: &str) -> Option<u32> {
        self.catalog.category_code_of(name)
    }
    fn category_codes(&self) -> usize {
        self.catalog.categories().len()
    }
    fn row_of(&self, item_id: &str) -> Option<ItemIdx> {
        self.catalog.idx_of(item_id)
    }
    fn category_code(&self, _: ItemIdx) -> u32 {
        self.category
    }
    fn price(&self, _: ItemIdx) -> f32 {
        self.price
    }
    fn in_stock(&self, _: ItemIdx) -> bool {
        self.in_stock
    }
}
