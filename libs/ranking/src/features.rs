//! Feature assembly: spec + requests → one row-major tensor buffer per model input, with the
//! rows of every request in a batch one after the other.
//! Mirrors `models/tandem_pipeline/features.py::assemble`.

use std::collections::BTreeMap;

use tandem_catalog::{Catalog, ItemIdx};

use crate::RankingError;
use crate::spec::{FeatureSource, FeatureSpec, InputDtype, Transform};

/// One request to score: one user, many candidates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRequest {
    /// Picks the version under a traffic split (stable hash).
    pub user_id: String,
    pub user_vector: Vec<f32>,
    pub items: Vec<ItemIdx>,
    /// Empty, or one per item.
    pub retrieval_scores: Vec<f32>,
    /// The user's recent items, newest first (repeats allowed; the sequence keeps the first).
    pub recent_items: Vec<ItemIdx>,
    /// Request context (`hour_of_day`, `device`, ...), read by `context_*` features.
    pub context: BTreeMap<String, String>,
    /// Score with this version (`VERSION` or `NAME/VERSION`) instead of the split's choice.
    pub version: Option<String>,
}

/// A model input's values for a whole batch.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One assembled model input: `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledInput {
    pub name: String,
    pub width: usize,
    pub values: InputValues,
}

/// Checks what the spec will read from a request, so that assembly cannot fail later.
pub(crate) fn validate(
    spec: &FeatureSpec,
    catalog: &Catalog,
    req: &ScoreRequest,
) -> Result<(), RankingError> {
    let invalid =
        |field: &'static str, reason: String| RankingError::InvalidArgument { field, reason };
    if req.user_vector.len() != spec.embedding_dim {
        return Err(invalid(
            "user.query_vector",
            format!(
                "expected {} values, got {}",
                spec.embedding_dim,
                req.user_vector.len()
            ),
        ));
    }
    if let Some(i) = req.user_vector.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "user.query_vector",
            format!("value {i} is not finite"),
        ));
    }
    if !req.retrieval_scores.is_empty() && req.retrieval_scores.len() != req.items.len() {
        return Err(invalid(
            "candidates.retrieval_score",
            "one per candidate or none".into(),
        ));
    }
    if let Some(i) = req.retrieval_scores.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "candidates.retrieval_score",
            format!("candidate {i}: not finite"),
        ));
    }
    let rows = catalog.len();
    if let Some(&bad) = req.items.iter().find(|&&i| i as usize >= rows) {
        return Err(invalid(
            "candidates",
            format!("item row {bad} is not in the catalog"),
        ));
    }
    if let Some(&bad) = req.recent_items.iter().find(|&&i| i as usize >= rows) {
        return Err(invalid(
            "user.recent_item_ids",
            format!("item row {bad} is not in the catalog"),
        ));
    }
    for f in spec.inputs.iter().flat_map(|i| &i.features) {
        if let FeatureSource::ContextNumeric { key, .. } = f
            && let Some(raw) = req.context.get(key)
            && !raw.trim().parse::<f32>().is_ok_and(f32::is_finite)
        {
            return Err(invalid(
                "user.context",
                format!("`{key}` must be a finite number, got `{raw}`"),
            ));
        }
    }
    Ok(())
}

/// The model inputs for `requests`, rows in request order. Requests must have passed
/// [`validate`] against the same spec and catalog.
pub fn assemble(
    spec: &FeatureSpec,
    catalog: &Catalog,
    requests: &[&ScoreRequest],
) -> Vec<AssembledInput> {
    let rows: usize = requests.iter().map(|r| r.items.len()).sum();
    spec.inputs
        .iter()
        .map(|input| {
            let width = input.width();
            let values = match input.dtype {
                InputDtype::Float32 => {
                    let mut out = Vec::with_capacity(rows * width);
                    for req in requests {
                        float_rows(&input.features, catalog, req, &mut out);
                    }
                    InputValues::F32(out)
                }
                InputDtype::Int64 => {
                    let mut out = Vec::with_capacity(rows * width);
                    for req in requests {
                        id_rows(&input.features, catalog, req, &mut out);
                    }
                    InputValues::I64(out)
                }
            };
            AssembledInput {
                name: input.name.clone(),
                width,
                values,
            }
        })
        .collect()
}

fn float_rows(
    features: &[FeatureSource],
    catalog: &Catalog,
    req: &ScoreRequest,
    out: &mut Vec<f32>,
) {
    let user = &req.user_vector;
    for (row, &item) in req.items.iter().enumerate() {
        let emb = catalog.embedding(item);
        for f in features {
            match f {
                FeatureSource::UserVector { .. } => out.extend_from_slice(user),
                FeatureSource::ItemEmbedding { .. } => out.extend_from_slice(emb),
                FeatureSource::UserItemDot { .. } => {
                    out.push(user.iter().zip(emb).map(|(a, b)| a * b).sum())
                }
                FeatureSource::RetrievalScore { .. } => {
                    out.push(req.retrieval_scores.get(row).copied().unwrap_or(0.0))
                }
                FeatureSource::ItemNumeric {
                    column, transform, ..
                } => {
                    let v = catalog.numeric(column, item).unwrap_or(0.0);
                    out.push(match transform {
                        Transform::Identity => v,
                        Transform::Log1p => v.max(0.0).ln_1p(),
                    });
                }
                FeatureSource::ItemCategoryOneHot { vocabulary, .. } => {
                    let category = catalog.category(item);
                    out.extend(
                        vocabulary
                            .iter()
                            .map(|c| if c == category { 1.0 } else { 0.0 }),
                    );
                }
                FeatureSource::ContextNumeric { key, default, .. } => out.push(
                    req.context
                        .get(key)
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(*default),
                ),
                FeatureSource::ItemCategorical { .. }
                | FeatureSource::RecentItems { .. }
                | FeatureSource::ContextCategorical { .. } => {
                    unreachable!("the spec check keeps id features out of float32 inputs")
                }
            }
        }
    }
}

fn id_rows(features: &[FeatureSource], catalog: &Catalog, req: &ScoreRequest, out: &mut Vec<i64>) {
    // Per-request values, the same on every row.
    let constant: Vec<Vec<i64>> = features
        .iter()
        .map(|f| match f {
            FeatureSource::RecentItems { num_ids, width } => {
                recent_sequence(&req.recent_items, *num_ids, *width)
            }
            FeatureSource::ContextCategorical {
                key, vocabulary, ..
            } => {
                vec![
                    req.context
                        .get(key)
                        .map_or(0, |v| vocabulary_id(vocabulary, v)),
                ]
            }
            _ => Vec::new(),
        })
        .collect();
    for &item in &req.items {
        for (f, constant) in features.iter().zip(&constant) {
            match f {
                FeatureSource::ItemCategorical { vocabulary, .. } => {
                    out.push(vocabulary_id(vocabulary, catalog.category(item)))
                }
                _ => out.extend_from_slice(constant),
            }
        }
    }
}

/// `1 + position`, 0 when unknown.
fn vocabulary_id(vocabulary: &[String], value: &str) -> i64 {
    vocabulary
        .iter()
        .position(|v| v == value)
        .map_or(0, |p| p as i64 + 1)
}

/// Distinct items newest first as `1 + row`, rows outside the model's table left out, padded with 0.
fn recent_sequence(recent: &[ItemIdx], num_ids: i64, width: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(width);
    for &item in recent {
        if out.len() == width {
            break;
        }
        let id = i64::from(item) + 1;
        if id < num_ids && !out.contains(&id) {
            out.push(id);
        }
    }
    out.resize(width, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_sequence_dedupes_clamps_and_pads() {
        assert_eq!(recent_sequence(&[4, 2, 4, 9, 1], 6, 4), vec![5, 3, 2, 0]);
        assert_eq!(recent_sequence(&[], 10, 3), vec![0, 0, 0]);
        assert_eq!(recent_sequence(&[1, 2, 3, 4], 100, 2), vec![2, 3]);
    }
}
