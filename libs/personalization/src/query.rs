//! The user's query vector. `models/tandem_pipeline/features.py::user_vector` computes the same
//! thing offline for training; keep the two in step.

use tandem_catalog::{Catalog, ItemIdx};

use crate::{EventKind, UserHistory};

/// How events turn into a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryConfig {
    /// Weight of view, click, add-to-cart and purchase events.
    pub type_weights: [f64; 4],
    /// An event this much older than the user's latest counts half.
    pub half_life_ms: i64,
    /// Only the newest events count.
    pub max_events: usize,
    /// Share of the page context in the query when the user also has history.
    pub context_weight: f64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            type_weights: [1.0, 2.0, 4.0, 8.0],
            half_life_ms: 24 * 3_600_000,
            max_events: 50,
            context_weight: 0.5,
        }
    }
}

impl QueryConfig {
    fn weight(&self, kind: EventKind) -> f64 {
        self.type_weights[match kind {
            EventKind::View => 0,
            EventKind::Click => 1,
            EventKind::AddToCart => 2,
            EventKind::Purchase => 3,
        }]
    }
}

/// Unit-length query from the history (recency- and type-weighted mean of item embeddings)
/// blended with the mean of the context items; `None` when there is nothing to go on.
pub fn query_vector(
    catalog: &Catalog,
    history: &UserHistory,
    context: &[ItemIdx],
    config: &QueryConfig,
) -> Option<Vec<f32>> {
    let dim = catalog.dim();
    let from_history = {
        let skip = history.recent.len().saturating_sub(config.max_events);
        let events = history.recent.iter().skip(skip);
        let latest = history.recent.back().map(|e| e.timestamp_ms);
        latest.and_then(|latest| {
            let mut v = vec![0.0f64; dim];
            for e in events {
                let age = (latest - e.timestamp_ms) as f64 / config.half_life_ms as f64;
                let w = config.weight(e.kind) * 0.5f64.powf(age);
                for (acc, x) in v.iter_mut().zip(catalog.embedding(e.item)) {
                    *acc += w * f64::from(*x);
                }
            }
            unit(v)
        })
    };
    let from_context = if context.is_empty() {
        None
    } else {
        let mut v = vec![0.0f64; dim];
        for &item in context {
            for (acc, x) in v.iter_mut().zip(catalog.embedding(item)) {
                *acc += f64::from(*x);
            }
        }
        unit(v)
    };
    let blended = match (from_history, from_context) {
        (Some(h), Some(c)) => unit(
            h.iter()
                .zip(&c)
                .map(|(h, c)| (1.0 - config.context_weight) * h + config.context_weight * c)
                .collect(),
        ),
        (h, c) => h.or(c),
    }?;
    Some(blended.into_iter().map(|v| v as f32).collect())
}

fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (n > 0.0 && n.is_finite()).then(|| v.into_iter().map(|x| x / n).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tandem_catalog::testing::{synthetic_batch, write_parquet};

    use super::*;
    use crate::UserEvent;

    fn catalog() -> Catalog {
        let dir = tempfile_dir();
        let path = dir.join("items.parquet");
        write_parquet(&synthetic_batch(50, 4, 5, 9), &path).expect("write");
        Catalog::open(&path).expect("open")
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-query-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        d / (n(a) * n(b))
    }

    #[test]
    fn recent_strong_events_dominate_and_context_blends_in() {
        let catalog = catalog();
        let cfg = QueryConfig::default();
        let day = cfg.half_life_ms;
        let history = UserHistory {
            recent: VecDeque::from(vec![
                UserEvent {
                    item: 1,
                    kind: EventKind::View,
                    timestamp_ms: 0,
                },
                UserEvent {
                    item: 2,
                    kind: EventKind::Purchase,
                    timestamp_ms: 10 * day,
                },
            ]),
            ..Default::default()
        };
        let q = query_vector(&catalog, &history, &[], &cfg).expect("query");
        assert!((q.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(
            cosine(&q, catalog.embedding(2)) > 0.999,
            "a 10-day-old view barely counts"
        );

        let with_ctx = query_vector(&catalog, &history, &[3], &cfg).expect("query");
        assert!(cosine(&with_ctx, catalog.embedding(3)) > cosine(&q, catalog.embedding(3)));
        assert!(query_vector(&catalog, &UserHistory::default(), &[], &cfg).is_none());
        let only_ctx = query_vector(&catalog, &UserHistory::default(), &[4], &cfg).expect("ctx");
        assert!(cosine(&only_ctx, catalog.embedding(4)) > 0.999);
    }
}
