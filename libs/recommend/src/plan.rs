//! Step 1 of a Recommend: validate the request and resolve it, once, into the gateway
//! catalog's indexes: the filter with every exclusion, the user's state, and the query.

use std::collections::HashSet;
use std::sync::Arc;

use tandem_catalog::{Catalog, ItemIdx, MAX_ID_BYTES};
use tandem_personalization::{ItemMap, QueryConfig, UserHistory, query_vector};
use tandem_ranking::ItemHistory;
use tandem_retrieval::ItemFilter;

use crate::RecommendError;
use crate::pipeline::{
    DEFAULT_K, DEFAULT_NUM_CANDIDATES, MAX_K, MAX_NUM_CANDIDATES, RecommendRequest, RepeatPurchases,
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
    /// The same per item, as ranking, the candidate sources and the reasons read it.
    pub items: Vec<ItemHistory>,
    pub repeats: RepeatPurchases,
    /// The page's items this catalog knows, in request order.
    pub context: Vec<ItemIdx>,
    /// `None`: nothing to personalize on (no history): the answer is trending items.
    pub query: Option<Vec<f32>>,
}

/// Refused before any state is looked up for it.
pub(crate) fn check_user_id(user_id: &str) -> Result<(), RecommendError> {
    match tandem_catalog::id_problem(user_id) {
        Some(problem) => Err(RecommendError::invalid("user_id", problem)),
        None => Ok(()),
    }
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
    check_user_id(&req.user_id)?;
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
    for (field, ids) in [
        ("context_item_ids", &req.context_item_ids),
        ("filter.exclude_item_ids", &req.filter.exclude_item_ids),
    ] {
        if let Some(i) = ids.iter().position(|id| id.len() > MAX_ID_BYTES) {
            return Err(RecommendError::invalid(
                format!("{field}[{i}]"),
                format!("must be at most {MAX_ID_BYTES} bytes, got {}", ids[i].len()),
            ));
        }
    }
    // Unknown context items are skipped: a page may show items newer than this catalog.
    let context: Vec<ItemIdx> = req
        .context_item_ids
        .iter()
        .filter_map(|id| catalog.idx_of(id))
        .collect();
    let mut spec = req.filter.clone();
    spec.in_stock_only = req.in_stock_only.unwrap_or(rules.in_stock_only);
    let mut filter = ItemFilter::resolve(catalog, &spec)?;
    let bought_since = match req.repeat_purchases {
        RepeatPurchases::AfterWindow => Some(
            rules
                .purchase_exclusion_ms
                .map_or(i64::MIN, |window| now_ms.saturating_sub(window)),
        ),
        RepeatPurchases::Never => Some(i64::MIN),
        RepeatPurchases::Allowed => None,
    };
    if let Some(since) = bought_since {
        filter.exclude(history.purchased_since(since));
    }
    filter.exclude(context.iter().copied());
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
        items: item_history(&history),
        history,
        repeats: req.repeat_purchases,
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

/// The user's history as ranking reads it: one entry per item they bought or recently touched.
fn item_history(history: &UserHistory) -> Vec<ItemHistory> {
    // Sized once: at most one entry per recent event and per purchased item.
    let mut by_item: ItemMap<ItemHistory> = ItemMap::with_capacity_and_hasher(
        history.recent.len() + history.purchased.len(),
        Default::default(),
    );
    for e in &history.recent {
        let h = by_item.entry(e.item).or_insert(ItemHistory {
            item: e.item,
            ..ItemHistory::default()
        });
        h.events += 1;
        h.last_event_ms = h.last_event_ms.max(e.timestamp_ms);
    }
    for (&item, p) in &history.purchased {
        let h = by_item.entry(item).or_insert(ItemHistory {
            item,
            ..ItemHistory::default()
        });
        h.purchases = p.count;
        h.last_purchase_ms = p.last_ms;
    }
    let mut out: Vec<ItemHistory> = by_item.into_values().collect();
    out.sort_unstable_by_key(|h| h.item);
    out
}
