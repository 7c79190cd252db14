//! The index: a frozen graph over most rows, a small mutable hnsw_rs segment for rows upserted
//! since the last rebuild (searched alongside, as Lucene and Qdrant do with segments),
//! tombstones, the write-ahead log, and background rebuilds swapped in atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use hnsw_rs::prelude::Hnsw;
use tandem_catalog::{Catalog, ItemIdx};

use crate::RetrievalError;
use crate::filter::{Attributes, CatalogStats, FilterSpec, ItemFilter};
use crate::graph::{Graph, Scored, SearchStats, TopK};
use crate::kernels::Kernels;
use crate::rows::{ItemUpdate, Rows};
use crate::snapshot;
use crate::space::{GraphDistance, Metric, Space};
use crate::wal::{Mutation, Wal};

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
    /// Rows in the mutable segment at which it is merged into a rebuilt frozen graph.
    pub fresh_capacity: usize,
    /// Fraction of indexed rows that are tombstones at which the graph is rebuilt.
    pub rebuild_tombstone_ratio: f64,
    /// The part of the catalog this index serves; upserts of other shards' items are refused.
    pub shard: Option<Shard>,
    /// Unfiltered searches walk the graph on 8-bit codes of the vectors and rescore their
    /// beam exactly (inner-product metrics only; see `codes.rs`). Costs D bytes per item.
    pub quantized_walk: bool,
}

/// Shard `index` of `count`: the items whose id hashes to it ([`tandem_catalog::shard_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn owns(&self, item_id: &str) -> bool {
        tandem_catalog::shard_of(item_id, self.count) == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `i/n`, e.g. `0/3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}` is not i/n (e.g. 0/3)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|e| format!("shard index `{i}`: {e}"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|e| format!("shard count `{n}`: {e}"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= i < n"));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
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
            fresh_capacity: 20_000,
            rebuild_tombstone_ratio: 0.2,
            shard: None,
            quantized_walk: true,
        }
    }
}

impl IndexParams {
    /// The kernel of the walk's codes, when this index uses them.
    fn code_kernel(&self, space: &Space) -> Option<crate::kernels::CodeKernelFn> {
        (self.quantized_walk && space.metric() != Metric::L2).then(|| space.kernels().dot_u8)
    }
}

/// Per-request search options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchParams {
    pub k: usize,
    pub ef_search: Option<usize>,
}

/// A retrieved item: its row in the index (see [`Index::item_id`]), its score under the
/// metric (larger is better) and its distance in the index's space (smaller is nearer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub idx: ItemIdx,
    pub score: f32,
    pub distance: f32,
}

/// The index's items under a read lock; see [`Index::current_items`].
pub struct CurrentItems<'a> {
    state: std::sync::RwLockReadGuard<'a, State>,
}

/// An item's attributes as the index holds them now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurrentItem<'a> {
    pub category: &'a str,
    /// The category's code among the index's rows: its source catalog's code, or past that
    /// catalog's categories for one an upsert introduced.
    pub category_code: u32,
    pub price: f32,
    pub in_stock: bool,
}

impl CurrentItems<'_> {
    /// False while no item the index started with was deleted or replaced (a replaced item's
    /// old row is tombstoned too): then each is as its source catalog states it.
    pub fn has_changes(&self) -> bool {
        self.state.rows.deleted_count() > 0
    }

    /// `None` once the item is deleted, or when the index never held it.
    pub fn get(&self, item_id: &str) -> Option<CurrentItem<'_>> {
        let rows = &self.state.rows;
        let row = rows.row_of(item_id).filter(|&r| !rows.is_deleted(r))?;
        Some(self.attributes(row))
    }

    /// A row's attributes unless it is deleted (an upsert replaced it, or a delete removed it).
    pub fn live_row(&self, row: ItemIdx) -> Option<CurrentItem<'_>> {
        let rows = &self.state.rows;
        ((row as usize) < rows.len() && !rows.is_deleted(row)).then(|| self.attributes(row))
    }

    /// Asks the CPU for the attributes of `rows` before they are read one by one: the reads'
    /// cache misses then overlap instead of each waiting in turn. A search's candidates are
    /// scattered over the catalog's category and price columns (4 MB each at 1M items), which
    /// the walk itself does not read.
    pub fn prefetch_rows(&self, rows: impl IntoIterator<Item = ItemIdx>) {
        let state = &self.state.rows;
        for row in rows {
            state.prefetch_attributes(row);
        }
    }

    /// The attributes of a row a search returned, without reading its id.
    pub fn row_attributes(&self, row: ItemIdx) -> Option<CurrentItem<'_>> {
        ((row as usize) < self.state.rows.len()).then(|| self.attributes(row))
    }

    /// The item id of a row a search returned (rows are never reused).
    pub fn row_id(&self, row: ItemIdx) -> Option<&str> {
        let rows = &self.state.rows;
        ((row as usize) < rows.len()).then(|| rows.item_id(row))
    }

    fn attributes(&self, row: ItemIdx) -> CurrentItem<'_> {
        let rows = &self.state.rows;
        let category_code = rows.category_code(row);
        CurrentItem {
            category: rows.category_name(category_code),
            category_code,
            price: rows.price(row),
            in_stock: rows.in_stock(row),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Items changed (upserted, or deleted and previously present).
    pub applied: usize,
    /// Deletes of items the index did not hold.
    pub not_found: usize,
    /// The write-ahead log sequence number of the batch.
    pub sequence: u64,
}

/// Rows upserted since the last rebuild: hnsw_rs takes concurrent inserts through `&self`.
struct Fresh {
    hnsw: Hnsw<'static, f32, GraphDistance>,
    rows: Mutex<Vec<ItemIdx>>,
}

impl Fresh {
    fn new(space: Space, params: &IndexParams) -> Self {
        Self {
            hnsw: Hnsw::new(
                params.max_connections,
                params.fresh_capacity,
                16,
                params.ef_construction,
                GraphDistance(space),
            ),
            rows: Mutex::new(Vec::new()),
        }
    }

    fn rows(&self) -> Vec<ItemIdx> {
        self.rows.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.rows.lock().map(|r| r.len()).unwrap_or(0)
    }
}

struct State {
    rows: Rows,
    graph: Arc<Graph>,
    fresh: Arc<Fresh>,
    /// A mutable segment being merged by a background rebuild; searched until it lands.
    sealed: Option<Arc<Fresh>>,
    /// Tombstoned rows still present in `graph` or the segments.
    dead_indexed: usize,
}

/// An index's heap bytes by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexMemory {
    /// The graph's stored vectors.
    pub vectors: usize,
    /// The graph's links, levels and link offsets.
    pub links: usize,
    /// The graph's node → row map.
    pub rows: usize,
    /// Rows appended by upserts (their vectors and attributes) and tombstones.
    pub appended: usize,
    /// The mutable segments holding rows written since the graph was built (estimated).
    pub fresh_estimate: usize,
}

/// Sizes of an index's parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCounts {
    /// Items a search can return.
    pub live: usize,
    /// Deleted or replaced rows still in the graph or the fresh segments.
    pub tombstones: usize,
    /// Rows written since the graph was built, searched in the fresh segments.
    pub fresh: usize,
    /// When the last snapshot was written (0: none by this process).
    pub last_snapshot_unix_ms: u64,
}

pub struct Index {
    /// Set when a snapshot is written.
    last_snapshot_ms: std::sync::atomic::AtomicU64,
    catalog: Arc<Catalog>,
    space: Space,
    params: IndexParams,
    stats: CatalogStats,
    state: RwLock<State>,
    /// Serializes writers and owns the log, so memory applies batches in log order.
    writer: Mutex<Option<Wal>>,
    rebuilding: AtomicBool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("space", &self.space)
            .field("params", &self.params)
            .finish()
    }
}

fn poisoned() -> RetrievalError {
    RetrievalError::Corrupt {
        path: "index".into(),
        reason: "a writer panicked; the in-memory index is unusable".into(),
    }
}

impl Index {
    /// Builds the graph over every catalog item (all cores, through hnsw_rs's rayon pool),
    /// then copies it into the flat search layout.
    pub fn build(catalog: Arc<Catalog>, params: IndexParams) -> Result<Self, RetrievalError> {
        if catalog.is_empty() {
            return Err(RetrievalError::EmptyCatalog);
        }
        let space = Space::new(params.metric, catalog.dim(), Kernels::detect());
        let rows = Rows::new(catalog.clone(), space);
        let started = Instant::now();
        let live = rows.live_rows();
        let vectors = rows.stored_block(&live);
        let graph = build_graph(&space, &params, live, vectors);
        tracing::info!(
            items = catalog.len(),
            dim = catalog.dim(),
            metric = %params.metric,
            kernels = space.kernels().name,
            m = params.max_connections,
            ef_construction = params.ef_construction,
            seconds = started.elapsed().as_secs_f32(),
            "built HNSW index"
        );
        let fresh = Fresh::new(space, &params);
        Ok(Self::assemble(catalog, params, rows, graph, fresh))
    }

    /// The index over restored or built parts; writes need `attach_wal` next.
    fn assemble(
        catalog: Arc<Catalog>,
        params: IndexParams,
        rows: Rows,
        graph: Graph,
        fresh: Fresh,
    ) -> Self {
        let dead_indexed = graph.rows().iter().filter(|r| rows.is_deleted(**r)).count();
        Self {
            stats: CatalogStats::new(&catalog),
            catalog,
            space: rows.space(),
            params,
            state: RwLock::new(State {
                rows,
                graph: Arc::new(graph),
                fresh: Arc::new(fresh),
                sealed: None,
                dead_indexed,
            }),
            writer: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            last_snapshot_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Restores an index from the newest valid snapshot in `dir`, falling back to older ones
    /// (a clear warning for each that fails). Returns the index and the last log sequence it
    /// holds, or `None` when no snapshot can be used. `open`: the catalog this process already
    /// holds; a snapshot whose items are exactly its rows shares it rather than a copy.
    pub fn from_snapshots(
        dir: &Path,
        params: IndexParams,
        open: Option<&Arc<Catalog>>,
    ) -> Option<(Self, u64)> {
        for path in snapshot::list(dir) {
            let started = Instant::now();
            match snapshot::read(&path).and_then(|data| Self::from_snapshot(data, params, open)) {
                Ok((index, seq)) => {
                    // The file and its decoded parts were copied into the index: return them.
                    tandem_memory::release_freed_memory();
                    tracing::info!(
                        path = %path.display(),
                        items = index.live_items(),
                        wal_seq = seq,
                        seconds = started.elapsed().as_secs_f32(),
                        "loaded index snapshot"
                    );
                    return Some((index, seq));
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot use this snapshot; trying an older one, else rebuilding"
                ),
            }
        }
        None
    }

    fn from_snapshot(
        data: snapshot::SnapshotData,
        params: IndexParams,
        open: Option<&Arc<Catalog>>,
    ) -> Result<(Self, u64), RetrievalError> {
        let corrupt = |reason: String| RetrievalError::Corrupt {
            path: "snapshot".into(),
            reason,
        };
        if data.metric != params.metric {
            return Err(corrupt(format!(
                "built for metric {}, configured {}",
                data.metric, params.metric
            )));
        }
        let catalog = match open.filter(|open| open.holds_exactly(&data.items)) {
            Some(open) => open.clone(),
            None => Arc::new(Catalog::from_parts(data.items).map_err(|e| corrupt(e.to_string()))?),
        };
        let space = Space::new(params.metric, catalog.dim(), Kernels::detect());
        let rows = Rows::restore(catalog.clone(), space, &data.deleted);
        let graph = Graph::from_parts(
            data.graph,
            space.stored_len(),
            |row| ((row as usize) < rows.len()).then(|| rows.stored_vector(row).into_owned()),
            params.code_kernel(&space),
        )
        .map_err(corrupt)?;
        if let Some(bad) = data.unindexed.iter().find(|r| **r as usize >= rows.len()) {
            return Err(corrupt(format!("unindexed row {bad} out of range")));
        }
        let fresh = Fresh::new(space, &params);
        for &row in &data.unindexed {
            if !rows.is_deleted(row) {
                let mut v = rows.stored_vector(row).into_owned();
                v.resize(space.stored_len(), 0.0);
                fresh.hnsw.insert_slice((&v, row as usize));
                if let Ok(mut r) = fresh.rows.lock() {
                    r.push(row);
                }
            }
        }
        Ok((
            Self::assemble(catalog, params, rows, graph, fresh),
            data.wal_seq,
        ))
    }

    /// Writes a snapshot of the whole index into `dir` while searches and writes go on
    /// (writes wait only while the state is copied). Returns the file written.
    pub fn snapshot(&self, dir: &Path) -> Result<PathBuf, RetrievalError> {
        let data = {
            let writer = self.writer.lock().map_err(|_| poisoned())?;
            let wal_seq = writer.as_ref().map_or(0, |w| w.next_seq() - 1);
            let state = self.read()?;
            let (items, deleted) = state.rows.to_parts();
            let mut unindexed = state.fresh.rows();
            if let Some(sealed) = &state.sealed {
                unindexed.extend(sealed.rows());
            }
            snapshot::SnapshotData {
                wal_seq,
                metric: self.params.metric,
                items,
                deleted,
                graph: state.graph.to_parts(),
                unindexed,
            }
        };
        let started = Instant::now();
        let path = snapshot::write(dir, &data)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_snapshot_ms.store(now_ms, Ordering::Relaxed);
        if let Some(through) = snapshot::log_needed_after(dir)
            && let Some(wal) = self.writer.lock().map_err(|_| poisoned())?.as_mut()
        {
            let dropped = wal.truncate_through(through)?;
            tracing::debug!(through, dropped, "compacted the write-ahead log");
        }
        tracing::info!(
            path = %path.display(),
            wal_seq = data.wal_seq,
            seconds = started.elapsed().as_secs_f32(),
            "wrote index snapshot"
        );
        Ok(path)
    }

    /// The last log sequence number applied (0 without a log).
    pub fn applied_seq(&self) -> u64 {
        self.writer
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|w| w.next_seq() - 1))
            .unwrap_or(0)
    }

    /// Replays a write-ahead log into the index and makes later writes durable in it.
    pub fn attach_wal(&self, path: &Path) -> Result<usize, RetrievalError> {
        self.attach_wal_after(path, 0)
    }

    /// As `attach_wal`, skipping batches up to `after_seq` (already in a loaded snapshot).
    pub fn attach_wal_after(&self, path: &Path, after_seq: u64) -> Result<usize, RetrievalError> {
        let (wal, batches) = Wal::open(path)?;
        let batches: Vec<_> = batches
            .into_iter()
            .filter(|(seq, _)| *seq > after_seq)
            .collect();
        let replayed = batches.len();
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        for (_, mutation) in &batches {
            self.apply(mutation)?;
        }
        tracing::info!(path = %path.display(), batches = replayed, next_seq = wal.next_seq(), "replayed write-ahead log");
        *writer = Some(wal);
        Ok(replayed)
    }

    /// The catalog the index was built from (upserts are not in it).
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>, RetrievalError> {
        self.state.read().map_err(|_| poisoned())
    }

    /// The external id of a row returned by a search (rows are never reused).
    pub fn item_id(&self, row: ItemIdx) -> Option<String> {
        let state = self.read().ok()?;
        ((row as usize) < state.rows.len()).then(|| state.rows.item_id(row).to_owned())
    }

    /// Items as they are now, for callers that read attributes from elsewhere (the gateway's
    /// catalog file, which upserts and deletes do not change). Holds a read lock: drop it
    /// before anything slow.
    pub fn current_items(&self) -> Result<CurrentItems<'_>, RetrievalError> {
        Ok(CurrentItems {
            state: self.read()?,
        })
    }

    /// What the index holds, for its metrics.
    pub fn counts(&self) -> IndexCounts {
        self.read()
            .map(|s| IndexCounts {
                live: s.rows.live(),
                tombstones: s.dead_indexed,
                fresh: s.fresh.len() + s.sealed.as_ref().map_or(0, |f| f.len()),
                last_snapshot_unix_ms: self.last_snapshot_ms.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// Items a search can return.
    pub fn live_items(&self) -> usize {
        self.read().map(|s| s.rows.live()).unwrap_or(0)
    }

    /// Heap bytes of the search structures (graph and stored vectors), not the catalog.
    pub fn index_bytes(&self) -> usize {
        self.read().map(|s| s.graph.heap_bytes()).unwrap_or(0)
    }

    /// Heap bytes by part, for memory reports (the catalog's own are `Catalog::memory`).
    pub fn memory(&self) -> IndexMemory {
        let Ok(state) = self.read() else {
            return IndexMemory::default();
        };
        let (vectors, links, rows) = state.graph.heap_bytes_by_part();
        // hnsw_rs keeps a point (its vector, an `Arc` and a lock) and up to 2·M links of
        // 24 bytes per fresh row; an estimate, as the crate does not report its size.
        let per_fresh = 4 * self.space.stored_len() + 48 * self.params.max_connections + 160;
        let fresh_rows = state.fresh.len() + state.sealed.as_ref().map_or(0, |sealed| sealed.len());
        IndexMemory {
            vectors,
            links,
            rows,
            appended: state.rows.appended_bytes(),
            fresh_estimate: fresh_rows * per_fresh,
        }
    }

    /// Resolves a client filter against the live items (categories added by upserts included).
    pub fn resolve_filter(&self, spec: &FilterSpec) -> Result<ItemFilter, RetrievalError> {
        ItemFilter::resolve(&self.read()?.rows, spec)
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
        let state = self.read()?;
        let rows = &state.rows;

        if filter.has_attribute_constraints()
            && filter.estimated_selectivity(&self.stats) < self.params.exact_scan_below
        {
            return Ok((self.scan(&state, &query, filter, k, &mut stats), stats));
        }
        let unfiltered = filter.is_empty() && rows.deleted_count() == 0;
        let mut found = if unfiltered {
            state
                .graph
                .search_all(&self.space, &query, k, ef, &mut stats)
        } else {
            state.graph.search(
                &self.space,
                &query,
                k,
                ef,
                |row| !rows.is_deleted(row) && filter.admits(rows, row),
                &mut stats,
            )
        };
        for segment in std::iter::once(&state.fresh).chain(&state.sealed) {
            if segment.len() == 0 {
                continue;
            }
            let admits = |id: &usize| {
                let row = *id as ItemIdx;
                !rows.is_deleted(row) && filter.admits(rows, row)
            };
            for n in segment.hnsw.search_filter(&query, k, ef, Some(&admits)) {
                let row = n.d_id as ItemIdx;
                // hnsw_rs does not report its own evaluations; only the rescoring counts.
                stats.distance_evals += 1;
                found.push(Scored {
                    distance: self.space.distance(&query, &rows.stored_vector(row)),
                    id: row,
                });
            }
        }
        found.sort_unstable();
        found.dedup_by_key(|s| s.id);
        found.truncate(k);
        if found.len() < k {
            // The filtered graph walk can strand itself; the exact scan cannot miss.
            return Ok((self.scan(&state, &query, filter, k, &mut stats), stats));
        }
        Ok((self.candidates(found), stats))
    }

    /// Brute force over the admitted live items: ground truth for tests and benchmarks.
    pub fn exact(
        &self,
        query: &[f32],
        filter: &ItemFilter,
        k: usize,
    ) -> Result<Vec<Candidate>, RetrievalError> {
        let query = self.space.query(query)?;
        let state = self.read()?;
        Ok(self.scan(&state, &query, filter, k, &mut SearchStats::default()))
    }

    fn scan(
        &self,
        state: &State,
        query: &[f32],
        filter: &ItemFilter,
        k: usize,
        stats: &mut SearchStats,
    ) -> Vec<Candidate> {
        let rows = &state.rows;
        let admit = |row| !rows.is_deleted(row) && filter.admits(rows, row);
        let mut top = TopK::new(k);
        state.graph.scan(&self.space, query, admit, &mut top);
        stats.distance_evals += state.graph.len() as u64;
        for segment in std::iter::once(&state.fresh).chain(&state.sealed) {
            for row in segment.rows() {
                if admit(row) {
                    stats.distance_evals += 1;
                    top.offer(Scored {
                        distance: self.space.distance(query, &rows.stored_vector(row)),
                        id: row,
                    });
                }
            }
        }
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

    /// Checks a batch before anything is written: every item valid, or none applied.
    pub fn validate_upserts(&self, items: &[ItemUpdate]) -> Result<(), RetrievalError> {
        if items.is_empty() {
            return Err(RetrievalError::invalid("items", "must not be empty"));
        }
        for item in items {
            if let Some(problem) = tandem_catalog::id_problem(&item.item_id) {
                return Err(RetrievalError::invalid("items.item_id", problem));
            }
            if let Some(shard) = self.params.shard
                && !shard.owns(&item.item_id)
            {
                return Err(RetrievalError::invalid(
                    "items.item_id",
                    format!(
                        "`{}` belongs to shard {} of {}; this server is shard {shard}",
                        item.item_id,
                        tandem_catalog::shard_of(&item.item_id, shard.count),
                        shard.count
                    ),
                ));
            }
            if item.embedding.len() != self.space.dim() {
                return Err(RetrievalError::invalid(
                    "items.embedding",
                    format!(
                        "item `{}`: expected {} values, got {}",
                        item.item_id,
                        self.space.dim(),
                        item.embedding.len()
                    ),
                ));
            }
            if item.embedding.iter().any(|v| !v.is_finite()) {
                return Err(RetrievalError::invalid(
                    "items.embedding",
                    format!("item `{}`: values must be finite", item.item_id),
                ));
            }
            if item.category.is_empty() {
                return Err(RetrievalError::invalid(
                    "items.category",
                    format!("item `{}`: must not be empty", item.item_id),
                ));
            }
            for (field, v) in [
                ("items.price", item.price),
                ("items.popularity", item.popularity),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(RetrievalError::invalid(
                        field,
                        format!("item `{}`: must be finite and >= 0, got {v}", item.item_id),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds or replaces items. Durable (logged and fsynced) and searchable when this returns.
    pub fn upsert(
        self: &Arc<Self>,
        items: Vec<ItemUpdate>,
    ) -> Result<WriteOutcome, RetrievalError> {
        self.validate_upserts(&items)?;
        self.write(Mutation::Upsert(items))
    }

    /// Removes items; unknown ids are counted, not errors (a retried delete is harmless).
    pub fn delete(self: &Arc<Self>, item_ids: Vec<String>) -> Result<WriteOutcome, RetrievalError> {
        if item_ids.is_empty() {
            return Err(RetrievalError::invalid("item_ids", "must not be empty"));
        }
        if let Some((i, problem)) = item_ids
            .iter()
            .enumerate()
            .find_map(|(i, id)| tandem_catalog::id_problem(id).map(|p| (i, p)))
        {
            return Err(RetrievalError::invalid(
                "item_ids",
                format!("item_ids[{i}] {problem}"),
            ));
        }
        self.write(Mutation::Delete(item_ids))
    }

    /// Logs (fsynced) then applies one batch, under the writer lock so memory follows the
    /// log's order.
    fn write(self: &Arc<Self>, mutation: Mutation) -> Result<WriteOutcome, RetrievalError> {
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        let sequence = writer
            .as_mut()
            .ok_or(RetrievalError::ReadOnly)?
            .append(&mutation)?;
        let applied = self.apply(&mutation)?;
        drop(writer);
        self.maybe_rebuild();
        let asked = match &mutation {
            Mutation::Upsert(items) => items.len(),
            Mutation::Delete(ids) => ids.len(),
        };
        Ok(WriteOutcome {
            applied,
            not_found: asked - applied,
            sequence,
        })
    }

    /// Applies a logged batch; returns how many items it changed.
    fn apply(&self, mutation: &Mutation) -> Result<usize, RetrievalError> {
        match mutation {
            Mutation::Upsert(items) => self.apply_upserts(items).map(|()| items.len()),
            Mutation::Delete(ids) => self.apply_deletes(ids),
        }
    }

    fn apply_upserts(&self, items: &[ItemUpdate]) -> Result<(), RetrievalError> {
        let (fresh, added) = {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            let mut added = Vec::with_capacity(items.len());
            for item in items {
                let replaced = state.rows.row_of(&item.item_id).is_some();
                added.push(state.rows.upsert(item));
                state.dead_indexed += usize::from(replaced);
            }
            (state.fresh.clone(), added)
        };
        // Outside the state lock: searches go on while hnsw_rs links the new rows.
        for (row, stored) in &added {
            fresh.hnsw.insert_slice((stored, *row as usize));
        }
        if let Ok(mut rows) = fresh.rows.lock() {
            rows.extend(added.iter().map(|(row, _)| *row));
        }
        Ok(())
    }

    fn apply_deletes(&self, ids: &[String]) -> Result<usize, RetrievalError> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        let deleted = ids.iter().filter(|id| state.rows.delete(id)).count();
        state.dead_indexed += deleted;
        Ok(deleted)
    }

    /// Starts a background rebuild when the mutable segment is full or tombstones pile up.
    fn maybe_rebuild(self: &Arc<Self>) {
        let due = self.read().is_ok_and(|s| {
            let indexed = s.graph.len() + s.fresh.len();
            s.fresh.len() >= self.params.fresh_capacity
                || s.dead_indexed as f64 > self.params.rebuild_tombstone_ratio * indexed as f64
        });
        if due {
            self.rebuild_in_background();
        }
    }

    /// Rebuilds the frozen graph from every live row on a background thread and swaps it in;
    /// searches keep running on the old graph meanwhile. Returns false if one is running.
    pub fn rebuild_in_background(self: &Arc<Self>) -> bool {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return false;
        }
        let index = self.clone();
        let spawned = std::thread::Builder::new()
            .name("index-rebuild".into())
            .spawn(move || {
                if let Err(e) = index.rebuild() {
                    tracing::error!(error = %e, "index rebuild failed; serving the previous graph");
                }
                index.rebuilding.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.rebuilding.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Whether a background rebuild is running.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    fn rebuild(&self) -> Result<(), RetrievalError> {
        let started = Instant::now();
        // Seal the mutable segment and take the live rows' vectors in one step, so every row
        // is either in the new graph or in the new mutable segment.
        let (live, vectors, dead_before) = {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            let sealed = std::mem::replace(
                &mut state.fresh,
                Arc::new(Fresh::new(self.space, &self.params)),
            );
            state.sealed = Some(sealed);
            let live = state.rows.live_rows();
            let vectors = state.rows.stored_block(&live);
            (live, vectors, state.rows.deleted_count())
        };
        let items = live.len();
        let graph = build_graph(&self.space, &self.params, live, vectors);
        let mut state = self.state.write().map_err(|_| poisoned())?;
        state.graph = Arc::new(graph);
        state.sealed = None;
        state.dead_indexed = state.rows.deleted_count() - dead_before;
        tracing::info!(
            items,
            seconds = started.elapsed().as_secs_f32(),
            "rebuilt the index and swapped it in"
        );
        Ok(())
    }
}

/// hnsw_rs builds over `rows` (all cores), then the graph is copied to the flat layout.
/// `vectors` holds the rows' stored vectors in order.
pub(crate) fn build_graph(
    space: &Space,
    params: &IndexParams,
    rows: Vec<ItemIdx>,
    vectors: Vec<f32>,
) -> Graph {
    let hnsw = Hnsw::new(
        params.max_connections,
        rows.len().max(1),
        16,
        params.ef_construction,
        GraphDistance(*space),
    );
    let points: Vec<(&[f32], usize)> = vectors
        .chunks_exact(space.stored_len())
        .zip(&rows)
        .map(|(v, r)| (v, *r as usize))
        .collect();
    hnsw.parallel_insert_slice(&points);
    drop(points);
    let graph = Graph::from_hnsw(
        &hnsw,
        space.stored_len(),
        rows,
        vectors,
        params.code_kernel(space),
    );
    // hnsw_rs's graph is several times the frozen one: give its pages back now.
    drop(hnsw);
    tandem_memory::release_freed_memory();
    graph
}
