//! What can change about an item while it is served: its category, price and stock. The
//! request path filters, caps and shows items on these, as the stage that holds the item has
//! them now (upserts applied), in one catalog's terms.

use std::sync::Arc;

use crate::{Catalog, ItemIdx};

/// A category in one catalog's terms: its code there, or its name when that catalog has no
/// such category (an upsert introduced it after the catalog was written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Category {
    Code(u32),
    Named(Arc<str>),
}

/// An item's current attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemAttributes {
    pub category: Category,
    pub price: f32,
    pub in_stock: bool,
}

impl Catalog {
    /// The item as this catalog states it.
    #[inline]
    pub fn attributes(&self, idx: ItemIdx) -> ItemAttributes {
        ItemAttributes {
            category: Category::Code(self.category_code(idx)),
            price: self.price(idx),
            in_stock: self.in_stock(idx),
        }
    }

    /// `name` in this catalog's terms.
    pub fn category_named(&self, name: &str) -> Category {
        self.category_code_of(name)
            .map_or_else(|| Category::Named(Arc::from(name)), Category::Code)
    }

    /// The name of a category in this catalog's terms.
    pub fn category_name<'a>(&'a self, category: &'a Category) -> &'a str {
        match category {
            Category::Code(code) => self
                .categories()
                .get(*code as usize)
                .map_or("", String::as_str),
            Category::Named(name) => name,
        }
    }
}
