//! Step 1 of a Recommend: validate the request and resolve it, once, into the gateway
//! catalog's indexes: the filter with every exclusion, the user's state, and the query.

use std::collections::HashSet;
use std::sync::Arc;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_personalization::{QueryConfig, UserHistory, query_vector};
use tandem_retrieval::ItemFilter;

use crate::RecommendError;
use crate::pipeline::{
    DEFAULT_K, DEFAULT_NUM_CANDIDATES, MAX_K, MAX_NUM_CANDIDATES, RecommendRequest,
};
use crate::rules::RulesConfig;

/// What the later steps need to know about one request.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub k: usize,
    pub num_candidates: usize,
    /// Most items per category; 0 = no cap.
    pub cap: usize,
    /// The request's filter, the rules' in-stock default, the context items and the user's
    /// recent purchases, in catalog indexes.
    pub filter: ItemFilter,
    pub history: Arc<UserHistory>,
    /// The page's items this catalog knows, in request order.
    pub context: Vec<ItemIdx>,
    /// `None`: nothing to personalize on (no history): the answer is trending items.
    pub query: Option<Vec<f32>>,
}

/// Validates `req` and resolves it against `catalog` and the user's `history`.
pub(crate) fn plan(
    catalog: &Catalog,
    rules: &RulesConfig,
    query: &QueryConfig,
    req: &RecommendRequest,
    history: Arc<UserHistory>,
    now_ms: i64,
) -> Result<Plan, RecommendError> {
    if req.user_id.is_empty() {
        return Err(RecommendError::invalid("user_id", "must not be empty"));
    }
    let k = match req.k {
        None => DEFAULT_K,
        Some(k) if k == 0 || k as usize > MAX_K => {
            return Err(RecommendError::invalid(
                "k",
                format!("must be 1 to {MAX_K}, got {k}"),
            ));
        }
        Some(k) => k as usize,
    };
    let num_candidates = match req.num_candidates {
        None => DEFAULT_NUM_CANDIDATES.max(k),
        Some(n) if (n as usize) < k || n as usize > MAX_NUM_CANDIDATES => {
            return Err(RecommendError::invalid(
                "num_candidates",
                format!("must be k ({k}) to {MAX_NUM_CANDIDATES}, got {n}"),
            ));
        }
        Some(n) => n as usize,
    };
    // Unknown context items are skipped: a page may show items newer than this catalog.
    let context: Vec<ItemIdx> = req
        .context_item_ids
        .iter()
        .filter_map(|id| catalog.idx_of(id))
        .collect();
    let mut spec = req.filter.clone();
    spec.in_stock_only = req.in_stock_only.unwrap_or(rules.in_stock_only);
    let mut filter = ItemFilter::resolve(catalog, &spec)?;
    let bought_since = rules
        .purchase_exclusion_ms
        .map_or(i64::MIN, |window| now_ms.saturating_sub(window));
    filter.exclude(
        history
            .purchased_since(bought_since)
            .chain(context.iter().copied()),
    );
    let query = if history.is_empty() {
        None
    } else {
        query_vector(catalog, &history, &context, query)
    };
    Ok(Plan {
        k,
        num_candidates,
        cap: req
            .max_per_category
            .map_or(rules.max_per_category, |c| c as usize),
        filter,
        history,
        context,
        query,
    })
}

impl Plan {
    /// The context items' categories: a cold start prefers them.
    pub(crate) fn context_categories(&self, catalog: &Catalog) -> HashSet<u32> {
        self.context
            .iter()
            .map(|&i| catalog.category_code(i))
            .collect()
    }
}
