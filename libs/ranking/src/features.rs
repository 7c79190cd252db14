//! Feature assembly: spec + user + candidates → one row-major float32 matrix per model input.
//! Mirrors `models/tandem_pipeline/features.py::assemble`.

use tandem_catalog::{Catalog, ItemIdx};

use crate::spec::{FeatureSource, FeatureSpec, Transform};

/// Rows for `items`, in order, for every input of the spec: `(input name, width, values)`.
pub fn assemble(
    spec: &FeatureSpec,
    catalog: &Catalog,
    user_vector: &[f32],
    items: &[ItemIdx],
    retrieval_scores: &[f32],
) -> Vec<(String, usize, Vec<f32>)> {
    spec.inputs
        .iter()
        .map(|input| {
            let width = input.width();
            let mut values = Vec::with_capacity(items.len() * width);
            for (row, &item) in items.iter().enumerate() {
                let emb = catalog.embedding(item);
                for f in &input.features {
                    match f {
                        FeatureSource::UserVector { .. } => values.extend_from_slice(user_vector),
                        FeatureSource::ItemEmbedding { .. } => values.extend_from_slice(emb),
                        FeatureSource::UserItemDot { .. } => {
                            values.push(user_vector.iter().zip(emb).map(|(a, b)| a * b).sum())
                        }
                        FeatureSource::RetrievalScore { .. } => {
                            values.push(retrieval_scores.get(row).copied().unwrap_or(0.0))
                        }
                        FeatureSource::ItemNumeric {
                            column, transform, ..
                        } => {
                            let v = catalog.numeric(column, item).unwrap_or(0.0);
                            values.push(match transform {
                                Transform::Identity => v,
                                Transform::Log1p => v.max(0.0).ln_1p(),
                            });
                        }
                        FeatureSource::ItemCategoryOneHot { vocabulary, .. } => {
                            let category = catalog.category(item);
                            values.extend(
                                vocabulary
                                    .iter()
                                    .map(|c| if c == category { 1.0 } else { 0.0 }),
                            );
                        }
                    }
                }
            }
            (input.name.clone(), width, values)
        })
        .collect()
}
