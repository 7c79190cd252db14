//! The vector space the graph lives in: how items and queries are transformed for a metric,
//! and how a graph distance maps back to the score clients see.

use std::str::FromStr;

use crate::RetrievalError;
use crate::kernels::{Kernels, padded_len};

/// How "near" is measured. Larger scores are better for every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// q·x with the query normalized. The embeddings carry popularity in their norm, so this
    /// is the default. The graph is built on inner product itself (ip-NSW, as hnswlib's `ip`
    /// space): on the pipeline's skewed norms it reaches recall 0.99 at a quarter of the work
    /// the MIPS-to-cosine reduction needs (load-tests/ann/README.md).
    #[default]
    InnerProduct,
    /// Cosine similarity.
    Cosine,
    /// Negative squared Euclidean distance.
    L2,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InnerProduct => "ip",
            Self::Cosine => "cosine",
            Self::L2 => "l2",
        }
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" | "inner_product" | "dot" => Ok(Self::InnerProduct),
            "cosine" | "cos" => Ok(Self::Cosine),
            "l2" | "euclidean" => Ok(Self::L2),
            other => Err(format!("unknown metric `{other}` (ip, cosine or l2)")),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metric bound to one catalog's dimension, with the kernels this CPU runs.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    metric: Metric,
    dim: usize,
    /// Stored length: dim padded to SIMD lanes.
    stored: usize,
    kernels: Kernels,
}

impl Space {
    pub fn new(metric: Metric, dim: usize, kernels: Kernels) -> Self {
        Self {
            metric,
            dim,
            stored: padded_len(dim),
            kernels,
        }
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Length of a stored (transformed, padded) vector.
    pub fn stored_len(&self) -> usize {
        self.stored
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Writes an item's stored form into `out` (`stored_len` values).
    pub fn item_into(&self, x: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        let scale = match self.metric {
            Metric::Cosine => 1.0 / norm(x).max(f32::MIN_POSITIVE),
            Metric::InnerProduct | Metric::L2 => 1.0,
        };
        for (o, v) in out.iter_mut().zip(x) {
            *o = v * scale;
        }
    }

    pub fn item(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.stored];
        self.item_into(x, &mut out);
        out
    }

    /// Validates a query vector and returns its stored form.
    pub fn query(&self, q: &[f32]) -> Result<Vec<f32>, RetrievalError> {
        if q.len() != self.dim {
            return Err(RetrievalError::invalid(
                "vector",
                format!("expected {} values, got {}", self.dim, q.len()),
            ));
        }
        if let Some(i) = q.iter().position(|v| !v.is_finite()) {
            return Err(RetrievalError::invalid(
                "vector",
                format!("value {i} is not finite"),
            ));
        }
        let mut out = vec![0.0; self.stored];
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => {
                let n = norm(q);
                if n == 0.0 {
                    return Err(RetrievalError::invalid("vector", "must not be all zeros"));
                }
                for (o, v) in out.iter_mut().zip(q) {
                    *o = v / n;
                }
            }
            Metric::L2 => out[..q.len()].copy_from_slice(q),
        }
        Ok(out)
    }

    /// Distance between a stored query and a stored item (smaller is nearer; negative under
    /// inner product when q·x > 1).
    #[inline]
    pub fn distance(&self, query: &[f32], item: &[f32]) -> f32 {
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => 1.0 - (self.kernels.dot)(query, item),
            Metric::L2 => (self.kernels.squared_l2)(query, item),
        }
    }

    /// The client-facing score for a distance: q·x for inner product (query normalized),
    /// the cosine, or −|q − x|².
    pub fn score(&self, distance: f32) -> f32 {
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => 1.0 - distance,
            Metric::L2 => -distance,
        }
    }
}

/// hnsw_rs distance over stored vectors. hnsw_rs asserts distances are non-negative, and
/// HNSW only ever compares distances, so inner product goes through an order-preserving map
/// onto (0, ∞) that keeps relative precision: 2 − dot below dot = 1, 1/dot above.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GraphDistance(pub Space);

impl hnsw_rs::prelude::Distance<f32> for GraphDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = self.0.distance(a, b);
        match self.0.metric {
            Metric::InnerProduct => {
                let dot = 1.0 - d;
                if dot < 1.0 { 2.0 - dot } else { 1.0 / dot }
            }
            Metric::Cosine => d.max(0.0),
            Metric::L2 => d,
        }
    }
}

pub(crate) fn norm(a: &[f32]) -> f32 {
    a.iter().map(|v| v * v).sum::<f32>().sqrt()
}
