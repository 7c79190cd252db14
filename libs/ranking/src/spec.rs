//! The feature spec: the contract between the exported model and the service.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_catalog::Catalog;

use crate::RankingError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureSpec {
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

/// One model input: a float32 `[rows, width]` tensor whose columns are the listed features in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: String,
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
    /// The user's query vector.
    UserVector { width: usize },
    /// The candidate's embedding.
    ItemEmbedding { width: usize },
    /// Inner product of the two above.
    UserItemDot { width: usize },
    /// The candidate's score from retrieval.
    RetrievalScore { width: usize },
    /// A numeric catalog column (`price`, `popularity`, `in_stock` as 0/1).
    ItemNumeric {
        column: String,
        transform: Transform,
        width: usize,
    },
    /// One-hot of the item's category over a fixed vocabulary (unknown → all zeros).
    ItemCategoryOneHot {
        vocabulary: Vec<String>,
        width: usize,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    /// ln(1 + max(x, 0)).
    Log1p,
}

impl FeatureSource {
    pub fn width(&self) -> usize {
        match self {
            Self::UserVector { width }
            | Self::ItemEmbedding { width }
            | Self::UserItemDot { width }
            | Self::RetrievalScore { width }
            | Self::ItemNumeric { width, .. }
            | Self::ItemCategoryOneHot { width, .. } => *width,
        }
    }

    /// The width this source must have given the spec's embedding dimension.
    fn expected_width(&self, dim: usize) -> usize {
        match self {
            Self::UserVector { .. } | Self::ItemEmbedding { .. } => dim,
            Self::UserItemDot { .. } | Self::RetrievalScore { .. } | Self::ItemNumeric { .. } => 1,
            Self::ItemCategoryOneHot { vocabulary, .. } => vocabulary.len(),
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

    /// Internal consistency: widths add up and match the declared shapes.
    fn check(&self, path: &Path) -> Result<(), RankingError> {
        let err = |message: String| RankingError::Spec {
            path: path.to_owned(),
            message,
        };
        if self.format_version != 1 {
            return Err(err(format!(
                "format_version {} is not supported (1 is)",
                self.format_version
            )));
        }
        if self.inputs.is_empty() {
            return Err(err("no inputs".into()));
        }
        for input in &self.inputs {
            if input.dtype != "float32" {
                return Err(err(format!(
                    "input `{}`: dtype {} is not supported (float32 is)",
                    input.name, input.dtype
                )));
            }
            for f in &input.features {
                let want = f.expected_width(self.embedding_dim);
                if f.width() != want {
                    return Err(err(format!(
                        "input `{}`: feature {f:?} has width {}, expected {want}",
                        input.name,
                        f.width()
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
            if let FeatureSource::ItemNumeric { column, .. } = f
                && !Catalog::has_numeric(column)
            {
                return Err(err(format!(
                    "item_numeric column `{column}` is not a numeric catalog column"
                )));
            }
        }
        Ok(())
    }

    /// `NAME/VERSION`, reported with every score.
    pub fn version_label(&self) -> String {
        format!("{}/{}", self.model.name, self.model.version)
    }
}
