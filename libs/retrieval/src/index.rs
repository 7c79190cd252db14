//! The HNSW index and the search path.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use hnsw_rs::prelude::{DistDot, Hnsw};
use tandem_catalog::{Catalog, ItemIdx};

use crate::RetrievalError;
use crate::filter::{CatalogStats, ItemFilter};

/// Most candidates one search may return.
pub const MAX_K: usize = 5000;

/// Index build and search parameters.
#[derive(Debug, Clone, Copy)]
pub struct IndexParams {
    /// HNSW links per node (M).
    pub max_connections: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching, unless a request says otherwise.
    pub ef_search: usize,
    /// Upper bound for a request's own ef_search.
    pub max_ef_search: usize,
    /// Below this estimated fraction of admitted items, scan them exactly instead of walking
    /// the graph, which would visit mostly rejected nodes.
    pub exact_scan_below: f64,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
            max_ef_search: 4096,
            exact_scan_below: 0.02,
        }
    }
}

/// Per-request search options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchParams {
    pub k: usize,
    pub ef_search: Option<usize>,
}

/// A retrieved item and its inner product with the (normalized) query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub idx: ItemIdx,
    pub score: f32,
}

pub struct Index {
    catalog: Arc<Catalog>,
    hnsw: Hnsw<'static, f32, DistDot>,
    /// Largest item norm: the R of the MIPS-to-cosine reduction.
    max_norm: f32,
    params: IndexParams,
    stats: CatalogStats,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("items", &self.catalog.len())
            .field("params", &self.params)
            .finish()
    }
}

impl Index {
    /// Builds the graph over every catalog item (all cores, through hnsw_rs's rayon pool).
    pub fn build(catalog: Arc<Catalog>, params: IndexParams) -> Result<Self, RetrievalError> {
        if catalog.is_empty() {
            return Err(RetrievalError::EmptyCatalog);
        }
        let started = Instant::now();
        let dim = catalog.dim();
        let max_norm = (0..catalog.len() as ItemIdx)
            .map(|i| norm(catalog.embedding(i)))
            .fold(0.0f32, f32::max)
            .max(f32::MIN_POSITIVE);
        let mut sphere = Vec::with_capacity(catalog.len() * (dim + 1));
        for i in 0..catalog.len() as ItemIdx {
            let start = sphere.len();
            let x = catalog.embedding(i);
            sphere.extend(x.iter().map(|v| v / max_norm));
            let r2 = x.iter().map(|v| v * v).sum::<f32>() / (max_norm * max_norm);
            sphere.push((1.0 - r2).max(0.0).sqrt());
            normalize(&mut sphere[start..]);
        }
        let hnsw = Hnsw::new(
            params.max_connections,
            catalog.len(),
            16,
            params.ef_construction,
            DistDot,
        );
        let points: Vec<(&[f32], usize)> = sphere.chunks_exact(dim + 1).zip(0..).collect();
        hnsw.parallel_insert_slice(&points);
        tracing::info!(
            items = catalog.len(),
            dim,
            m = params.max_connections,
            ef_construction = params.ef_construction,
            seconds = started.elapsed().as_secs_f32(),
            "built HNSW index"
        );
        let stats = CatalogStats::new(&catalog);
        Ok(Self {
            catalog,
            hnsw,
            max_norm,
            params,
            stats,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// Distance in the index's space for an inner-product score (smaller is nearer).
    pub fn distance(&self, score: f32) -> f32 {
        1.0 - score / self.max_norm
    }

    /// The `k` items with the largest inner product with `query` that pass `filter`, best
    /// first. Fewer than `k` only when fewer pass.
    pub fn search(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        params: SearchParams,
    ) -> Result<Vec<Candidate>, RetrievalError> {
        let query = self.unit_query(query)?;
        let k = params.k;
        if k == 0 || k > MAX_K {
            return Err(RetrievalError::invalid(
                "k",
                format!("must be 1 to {MAX_K}, got {k}"),
            ));
        }
        let ef = match params.ef_search {
            Some(0) => return Err(RetrievalError::invalid("ef_search", "must be positive")),
            Some(ef) if ef > self.params.max_ef_search => {
                return Err(RetrievalError::invalid(
                    "ef_search",
                    format!("at most {}, got {ef}", self.params.max_ef_search),
                ));
            }
            Some(ef) => ef,
            None => self.params.ef_search,
        }
        .max(k);

        if filter.has_attribute_constraints()
            && filter.estimated_selectivity(&self.stats) < self.params.exact_scan_below
        {
            return Ok(self.exact(&query, filter, k));
        }
        let mut sphere_query = query.clone();
        sphere_query.push(0.0);
        let found = if filter.is_empty() {
            self.hnsw.search(&sphere_query, k, ef)
        } else {
            let admits = |id: &usize| filter.admits(&self.catalog, *id as ItemIdx);
            self.hnsw.search_filter(&sphere_query, k, ef, Some(&admits))
        };
        if found.len() < k {
            // The filtered graph walk can strand itself; the exact scan cannot miss.
            return Ok(self.exact(&query, filter, k));
        }
        let mut out: Vec<Candidate> = found
            .into_iter()
            .map(|n| {
                let idx = n.d_id as ItemIdx;
                Candidate {
                    idx,
                    score: dot(&query, self.catalog.embedding(idx)),
                }
            })
            .collect();
        out.sort_by(by_score_desc);
        Ok(out)
    }

    /// Brute force over the admitted items.
    pub fn exact(&self, unit_query: &[f32], filter: &ItemFilter, k: usize) -> Vec<Candidate> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        for idx in 0..self.catalog.len() as ItemIdx {
            if !filter.admits(&self.catalog, idx) {
                continue;
            }
            let score = dot(unit_query, self.catalog.embedding(idx));
            heap.push(MinScore(Candidate { idx, score }));
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut out: Vec<Candidate> = heap.into_iter().map(|m| m.0).collect();
        out.sort_by(by_score_desc);
        out
    }

    /// Checks the query's length and values and scales it to unit length.
    pub fn unit_query(&self, query: &[f32]) -> Result<Vec<f32>, RetrievalError> {
        if query.len() != self.catalog.dim() {
            return Err(RetrievalError::invalid(
                "vector",
                format!(
                    "expected {} values, got {}",
                    self.catalog.dim(),
                    query.len()
                ),
            ));
        }
        if let Some(i) = query.iter().position(|v| !v.is_finite()) {
            return Err(RetrievalError::invalid(
                "vector",
                format!("value {i} is not finite"),
            ));
        }
        let mut q = query.to_vec();
        if norm(&q) == 0.0 {
            return Err(RetrievalError::invalid("vector", "must not be all zeros"));
        }
        normalize(&mut q);
        Ok(q)
    }
}

fn by_score_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.score.total_cmp(&a.score).then(a.idx.cmp(&b.idx))
}

/// Heap entry whose maximum is the worst candidate, so popping keeps the best k.
struct MinScore(Candidate);

impl PartialEq for MinScore {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MinScore {}
impl PartialOrd for MinScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MinScore {
    fn cmp(&self, other: &Self) -> Ordering {
        by_score_desc(&self.0, &other.0)
    }
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

fn normalize(a: &mut [f32]) {
    let n = norm(a);
    if n > 0.0 {
        a.iter_mut().for_each(|v| *v /= n);
    }
}
