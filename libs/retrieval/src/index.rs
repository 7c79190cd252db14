//! The HNSW index and the search path.

use std::sync::Arc;
use std::time::Instant;

use hnsw_rs::prelude::Hnsw;
use tandem_catalog::{Catalog, ItemIdx};

use crate::RetrievalError;
use crate::filter::{CatalogStats, ItemFilter};
use crate::graph::{Graph, Scored, SearchStats, TopK};
use crate::kernels::Kernels;
use crate::space::{GraphDistance, Metric, Space};

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
    pub metric: Metric,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
            max_ef_search: 4096,
            exact_scan_below: 0.02,
            metric: Metric::InnerProduct,
        }
    }
}

/// Per-request search options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchParams {
    pub k: usize,
    pub ef_search: Option<usize>,
}

/// A retrieved item: its score under the metric (larger is better) and its distance in the
/// index's space (smaller is nearer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub idx: ItemIdx,
    pub score: f32,
    pub distance: f32,
}

pub struct Index {
    catalog: Arc<Catalog>,
    space: Space,
    graph: Graph,
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
    /// Builds the graph over every catalog item (all cores, through hnsw_rs's rayon pool),
    /// then copies it into the flat search layout.
    pub fn build(catalog: Arc<Catalog>, params: IndexParams) -> Result<Self, RetrievalError> {
        if catalog.is_empty() {
            return Err(RetrievalError::EmptyCatalog);
        }
        let started = Instant::now();
        let dim = catalog.dim();
        let space = Space::new(params.metric, dim, Kernels::detect());
        let stored_len = space.stored_len();
        let mut stored = vec![0.0f32; catalog.len() * stored_len];
        for (i, out) in stored.chunks_exact_mut(stored_len).enumerate() {
            space.item_into(catalog.embedding(i as ItemIdx), out);
        }
        let hnsw = Hnsw::new(
            params.max_connections,
            catalog.len(),
            16,
            params.ef_construction,
            GraphDistance(space),
        );
        let points: Vec<(&[f32], usize)> = stored.chunks_exact(stored_len).zip(0..).collect();
        hnsw.parallel_insert_slice(&points);
        let built = started.elapsed();
        let rows: Vec<u32> = (0..catalog.len() as u32).collect();
        let graph = Graph::from_hnsw(&hnsw, stored_len, rows, |row| {
            let start = row as usize * stored_len;
            stored[start..start + stored_len].to_vec()
        });
        drop(hnsw);
        tracing::info!(
            items = catalog.len(),
            dim,
            metric = %params.metric,
            kernels = space.kernels().name,
            m = params.max_connections,
            ef_construction = params.ef_construction,
            build_seconds = built.as_secs_f32(),
            freeze_seconds = (started.elapsed() - built).as_secs_f32(),
            "built HNSW index"
        );
        let stats = CatalogStats::new(&catalog);
        Ok(Self {
            catalog,
            space,
            graph,
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

    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Heap bytes of the search structures (graph and stored vectors), not the catalog.
    pub fn index_bytes(&self) -> usize {
        self.graph.heap_bytes()
    }

    /// The `k` best items for `query` that pass `filter`, best first. Fewer than `k` only
    /// when fewer pass.
    pub fn search(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        params: SearchParams,
    ) -> Result<Vec<Candidate>, RetrievalError> {
        self.search_with_stats(query, filter, params)
            .map(|(found, _)| found)
    }

    /// As `search`, also reporting the work done.
    pub fn search_with_stats(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        params: SearchParams,
    ) -> Result<(Vec<Candidate>, SearchStats), RetrievalError> {
        let query = self.space.query(query)?;
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
        let mut stats = SearchStats::default();

        if filter.has_attribute_constraints()
            && filter.estimated_selectivity(&self.stats) < self.params.exact_scan_below
        {
            return Ok((self.scan(&query, filter, k, &mut stats), stats));
        }
        let found = if filter.is_empty() {
            self.graph
                .search(&self.space, &query, k, ef, |_| true, &mut stats)
        } else {
            let catalog = &self.catalog;
            self.graph.search(
                &self.space,
                &query,
                k,
                ef,
                |row| filter.admits(catalog, row),
                &mut stats,
            )
        };
        if found.len() < k {
            // The filtered graph walk can strand itself; the exact scan cannot miss.
            return Ok((self.scan(&query, filter, k, &mut stats), stats));
        }
        Ok((self.candidates(found), stats))
    }

    /// Brute force over the admitted items: ground truth for tests and benchmarks.
    pub fn exact(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        k: usize,
    ) -> Result<Vec<Candidate>, RetrievalError> {
        let query = self.space.query(query)?;
        Ok(self.scan(&query, filter, k, &mut SearchStats::default()))
    }

    fn scan(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        k: usize,
        stats: &mut SearchStats,
    ) -> Vec<Candidate> {
        let mut top = TopK::new(k);
        self.graph.scan(
            &self.space,
            query,
            |row| filter.admits(&self.catalog, row),
            &mut top,
        );
        stats.distance_evals += self.graph.len() as u64;
        self.candidates(top.into_sorted())
    }

    fn candidates(&self, found: Vec<Scored>) -> Vec<Candidate> {
        found
            .into_iter()
            .map(|s| Candidate {
                idx: s.id,
                score: self.space.score(s.distance),
                distance: s.distance,
            })
            .collect()
    }
}
