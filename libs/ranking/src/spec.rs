//! The feature spec: the contract between an exported model and the service.
//!
//! Each model input is a `[rows, width]` tensor whose columns are the listed features in
//! order. float32 inputs take numeric features, int64 inputs take ids (categorical columns,
//! the user's recent items, categorical request context), so a model can keep its dense,
//! categorical and sequence inputs in separate tensors.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_catalog::Catalog;

use crate::RankingError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureSpec {
    /// 1 (float32 inputs only) or 2 (adds int64 inputs and the id sources).
    pub format_version: u32,
    pub model: ModelMeta,
    pub embedding_dim: usize,
    pub inputs: Vec<InputSpec>,
    pub output: OutputSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub name: String,
    pub version: String,
    /// Model file, relative to the bundle directory.
    pub file: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputDtype {
    Float32,
    Int64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: InputDtype,
    pub shape: Vec<i64>,
    pub features: Vec<FeatureSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    pub dtype: String,
    /// The score is this column of a `[rows, columns]` output, or the output itself if 1-D.
    pub column: usize,
}

/// Where a feature's values come from. `width` is how many columns it fills.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum FeatureSource {
    /// float32: the user's query vector.
    UserVector { width: usize },
    /// float32: the candidate's embedding.
    ItemEmbedding { width: usize },
    /// float32: inner product of the two above.
    UserItemDot { width: usize },
    /// float32: the candidate's score from retrieval.
    RetrievalScore { width: usize },
    /// float32: a numeric catalog column (`price`, `popularity`, `in_stock` as 0/1).
    ItemNumeric {
        column: String,
        transform: Transform,
        width: usize,
    },
    /// float32: one-hot of the item's category over a fixed vocabulary (unknown → all zeros).
    ItemCategoryOneHot {
        vocabulary: Vec<String>,
        width: usize,
    },
    /// int64: a categorical catalog column (`category`) as `1 + position in vocabulary`;
    /// 0 means a value the model never saw.
    ItemCategorical {
        column: String,
        vocabulary: Vec<String>,
        width: usize,
    },
    /// int64: the user's most recent distinct items, newest first, as `1 + catalog row`,
    /// padded with 0 to `width`. Items whose id would reach `num_ids` (newer than the
    /// model's embedding table) are left out, so a lookup never leaves the table.
    RecentItems { num_ids: i64, width: usize },
    /// float32: a numeric request-context value (`context[key]`), `default` when absent.
    ContextNumeric {
        key: String,
        default: f32,
        width: usize,
    },
    /// int64: a categorical request-context value as `1 + position in vocabulary`, 0 when
    /// absent or unknown.
    ContextCategorical {
        key: String,
        vocabulary: Vec<String>,
        width: usize,
    },
    /// float32 × 4, from the user's history of this item: ln(1 + purchases), ln(1 + days since
    /// the last purchase), ln(1 + events among the recent ones), ln(1 + days since the last of
    /// them). "Never" counts as 365 days, days are capped there.
    UserItemHistory { width: usize },
    /// float32 × 3, the same over the items of the candidate's category: ln(1 + purchases),
    /// ln(1 + days since the last purchase), ln(1 + recent events).
    UserCategoryHistory { width: usize },
    /// float32 × 2: Σ over the user's items of similarity(item, candidate) from the catalog's
    /// co-occurrence table, weighted by 2^(-days since the user last touched the item /
    /// half_life_days); and the same sum over the items of the user's latest moment (basket).
    CoOccurrence { half_life_days: f64, width: usize },
    /// float32: ln(candidate price) − the mean ln(price) of the items the user bought (of
    /// those they touched if none); 0 without history.
    UserPrice { width: usize },
    /// float32 × 2: ln(1 + distinct items in the history), ln(1 + days since the user's latest
    /// event or purchase).
    UserActivity { width: usize },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    /// ln(1 + max(x, 0)).
    Log1p,
}

/// Catalog columns an `item_categorical` feature can read.
const CATEGORICAL_COLUMNS: &[&str] = &["category"];

impl FeatureSource {
    pub fn width(&self) -> usize {
        match self {
            Self::UserVector { width }
            | Self::ItemEmbedding { width }
            | Self::UserItemDot { width }
            | Self::RetrievalScore { width }
            | Self::ItemNumeric { width, .. }
            | Self::ItemCategoryOneHot { width, .. }
            | Self::ItemCategorical { width, .. }
            | Self::RecentItems { width, .. }
            | Self::ContextNumeric { width, .. }
            | Self::ContextCategorical { width, .. }
            | Self::UserItemHistory { width }
            | Self::UserCategoryHistory { width }
            | Self::CoOccurrence { width, .. }
            | Self::UserPrice { width }
            | Self::UserActivity { width } => *width,
        }
    }

    /// The `source` tag as written in the spec.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UserVector { .. } => "user_vector",
            Self::ItemEmbedding { .. } => "item_embedding",
            Self::UserItemDot { .. } => "user_item_dot",
            Self::RetrievalScore { .. } => "retrieval_score",
            Self::ItemNumeric { .. } => "item_numeric",
            Self::ItemCategoryOneHot { .. } => "item_category_one_hot",
            Self::ItemCategorical { .. } => "item_categorical",
            Self::RecentItems { .. } => "recent_items",
            Self::ContextNumeric { .. } => "context_numeric",
            Self::ContextCategorical { .. } => "context_categorical",
            Self::UserItemHistory { .. } => "user_item_history",
            Self::UserCategoryHistory { .. } => "user_category_history",
            Self::CoOccurrence { .. } => "co_occurrence",
            Self::UserPrice { .. } => "user_price",
            Self::UserActivity { .. } => "user_activity",
        }
    }

    /// The dtype of the tensor this source can fill.
    pub fn dtype(&self) -> InputDtype {
        match self {
            Self::ItemCategorical { .. }
            | Self::RecentItems { .. }
            | Self::ContextCategorical { .. } => InputDtype::Int64,
            _ => InputDtype::Float32,
        }
    }

    /// The width this source must have given the spec's embedding dimension (`None`: any
    /// positive width, the sequence length).
    fn expected_width(&self, dim: usize) -> Option<usize> {
        match self {
            Self::UserVector { .. } | Self::ItemEmbedding { .. } => Some(dim),
            Self::ItemCategoryOneHot { vocabulary, .. } => Some(vocabulary.len()),
            Self::RecentItems { .. } => None,
            Self::UserItemHistory { .. } => Some(4),
            Self::UserCategoryHistory { .. } => Some(3),
            Self::CoOccurrence { .. } | Self::UserActivity { .. } => Some(2),
            _ => Some(1),
        }
    }
}

impl InputSpec {
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureSource::width).sum()
    }
}

impl FeatureSpec {
    pub fn load(path: &Path) -> Result<Self, RankingError> {
        let text = std::fs::read_to_string(path).map_err(|source| RankingError::Io {
            path: path.to_owned(),
            source,
        })?;
        let spec: Self = serde_json::from_str(&text).map_err(|e| RankingError::Spec {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        spec.check(path)?;
        Ok(spec)
    }

    /// Internal consistency: dtypes agree, widths add up and match the declared shapes.
    fn check(&self, path: &Path) -> Result<(), RankingError> {
        let err = |message: String| RankingError::Spec {
            path: path.to_owned(),
            message,
        };
        if !(1..=2).contains(&self.format_version) {
            return Err(err(format!(
                "format_version {} is not supported (1 and 2 are)",
                self.format_version
            )));
        }
        if self.inputs.is_empty() {
            return Err(err("no inputs".into()));
        }
        for input in &self.inputs {
            if input.features.is_empty() {
                return Err(err(format!("input `{}`: no features", input.name)));
            }
            if self.format_version == 1 && input.dtype != InputDtype::Float32 {
                return Err(err(format!(
                    "input `{}`: format_version 1 takes float32 inputs only",
                    input.name
                )));
            }
            for f in &input.features {
                if f.dtype() != input.dtype {
                    return Err(err(format!(
                        "input `{}` is {:?} but feature {f:?} gives {:?}",
                        input.name,
                        input.dtype,
                        f.dtype()
                    )));
                }
                let ok = match f.expected_width(self.embedding_dim) {
                    Some(want) => f.width() == want,
                    None => f.width() > 0,
                };
                if !ok {
                    return Err(err(format!(
                        "input `{}`: feature {f:?} has width {}, expected {}",
                        input.name,
                        f.width(),
                        f.expected_width(self.embedding_dim)
                            .map_or("a positive number".to_owned(), |w| w.to_string())
                    )));
                }
                if let FeatureSource::CoOccurrence { half_life_days, .. } = f
                    && !(half_life_days.is_finite() && *half_life_days > 0.0)
                {
                    return Err(err(format!(
                        "input `{}`: co_occurrence half_life_days must be a positive number",
                        input.name
                    )));
                }
                if let FeatureSource::RecentItems { num_ids, .. } = f
                    && *num_ids < 1
                {
                    return Err(err(format!(
                        "input `{}`: recent_items num_ids must be at least 1 (padding)",
                        input.name
                    )));
                }
            }
            let width = input.width() as i64;
            if input.shape.len() != 2 || (input.shape[1] != width) {
                return Err(err(format!(
                    "input `{}`: shape {:?} does not match its features ([-1, {width}])",
                    input.name, input.shape
                )));
            }
        }
        Ok(())
    }

    /// The catalog must provide what the spec reads.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), RankingError> {
        let err = |message: String| RankingError::Spec {
            path: "feature_spec.json".into(),
            message,
        };
        if catalog.dim() != self.embedding_dim {
            return Err(err(format!(
                "embedding_dim {} but the catalog's embeddings have {}",
                self.embedding_dim,
                catalog.dim()
            )));
        }
        for f in self.inputs.iter().flat_map(|i| &i.features) {
            match f {
                FeatureSource::ItemNumeric { column, .. } if !catalog.has_numeric(column) => {
                    return Err(err(format!(
                        "item_numeric column `{column}` is not a numeric catalog column"
                    )));
                }
                FeatureSource::ItemCategorical { column, .. }
                    if !CATEGORICAL_COLUMNS.contains(&column.as_str()) =>
                {
                    return Err(err(format!(
                        "item_categorical column `{column}` is not a categorical catalog column ({})",
                        CATEGORICAL_COLUMNS.join(", ")
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The request-context keys the model reads.
    pub fn context_keys(&self) -> impl Iterator<Item = &str> {
        self.inputs
            .iter()
            .flat_map(|i| &i.features)
            .filter_map(|f| match f {
                FeatureSource::ContextNumeric { key, .. }
                | FeatureSource::ContextCategorical { key, .. } => Some(key.as_str()),
                _ => None,
            })
    }

    /// `NAME/VERSION`, reported with every score.
    pub fn version_label(&self) -> String {
        format!("{}/{}", self.model.name, self.model.version)
    }
}
