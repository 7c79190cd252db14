//! A read-only copy of an HNSW graph laid out for search: vectors in one contiguous array,
//! neighbour lists in flat per-layer `u32` arrays, a per-thread visited bitset and
//! reusable heaps, so a query allocates nothing but its answer.
//!
//! hnsw_rs builds the graph (its construction is good); its search path allocates per step and
//! locks per neighbour list, so queries run here instead.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::prelude::{Distance, Hnsw};
use tandem_memory::HugeArray;

use crate::codes::Codes;
use crate::kernels::{CodeKernelFn, prefetch};
use crate::space::Space;

/// Work one search did, to tell graph quality apart from kernel speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchStats {
    pub distance_evals: u64,
    pub visited: u64,
}

impl std::ops::AddAssign for SearchStats {
    fn add_assign(&mut self, other: Self) {
        self.distance_evals += other.distance_evals;
        self.visited += other.visited;
    }
}

/// A graph node's distance to the query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored {
    pub distance: f32,
    /// Local node id inside a graph, or a row, depending on where it is used.
    pub id: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.id.cmp(&other.id))
    }
}

/// Per-thread search state, reused across queries and graphs.
///
/// Visited nodes are bits, not hnswlib's per-node `u16` epochs: a query marks a few thousand
/// nodes at random, and as bits they share a few cache lines (6 KiB for 50k nodes, 125 KiB
/// per thread for 1M instead of 2 MiB) instead of dirtying one line each. The words a query
/// set are cleared from `marked` when the next one begins.
#[derive(Default)]
struct Scratch {
    visited: Vec<u64>,
    marked: Vec<u32>,
    candidates: BinaryHeap<Reverse<Scored>>,
    results: BinaryHeap<Scored>,
    /// The unvisited neighbours of the node being expanded, their vectors prefetched.
    batch: Vec<u32>,
    pool: Pool,
    /// The query with the code ranges folded in.
    folded: Vec<f32>,
}

impl Scratch {
    /// Starts a new visit over `n` nodes.
    fn begin(&mut self, n: usize) {
        self.clear_marked();
        let words = n.div_ceil(64);
        if self.visited.len() < words {
            self.visited.resize(words, 0);
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks a node; false if it was already visited in this search.
    #[inline]
    fn visit(&mut self, node: u32) -> bool {
        let (word, bit) = (node as usize / 64, 1u64 << (node % 64));
        let slot = &mut self.visited[word];
        if *slot & bit != 0 {
            false
        } else {
            if *slot == 0 {
                self.marked.push(word as u32);
            }
            *slot |= bit;
            true
        }
    }

    /// Clears the bits the previous search set.
    fn clear_marked(&mut self) {
        for &word in &self.marked {
            self.visited[word as usize] = 0;
        }
        self.marked.clear();
    }
}

/// The `ef` nearest nodes seen so far, nearest first, each marked once expanded.
///
/// Node ids stay below 2³¹ (catalog rows are `u32`, and a shard of two billion items is far
/// past what one process serves); the top bit is the mark, so an entry is 8 bytes and a
/// beam of 16-32 fits in two to four cache lines.
#[derive(Default)]
struct Pool {
    entries: Vec<(f32, u32)>,
    capacity: usize,
    /// No unexpanded entry sits before this index.
    cursor: usize,
}

const EXPANDED: u32 = 1 << 31;

impl Pool {
    fn reset(&mut self, capacity: usize) {
        self.entries.clear();
        self.entries.reserve(capacity + 1);
        self.capacity = capacity;
        self.cursor = 0;
    }

    /// Keeps the node if it is among the `capacity` nearest so far.
    #[inline]
    fn insert(&mut self, distance: f32, node: u32) {
        if self.entries.len() == self.capacity
            && self
                .entries
                .last()
                .is_some_and(|last| distance.total_cmp(&last.0).is_ge())
        {
            return;
        }
        let at = self
            .entries
            .partition_point(|e| e.0.total_cmp(&distance).is_le());
        if self.entries.len() == self.capacity {
            self.entries.pop();
        }
        self.entries.insert(at, (distance, node));
        self.cursor = self.cursor.min(at);
    }

    /// The nearest entry not yet expanded, now marked expanded.
    #[inline]
    fn next_unexpanded(&mut self) -> Option<u32> {
        while let Some(entry) = self.entries.get_mut(self.cursor) {
            self.cursor += 1;
            if entry.1 & EXPANDED == 0 {
                entry.1 |= EXPANDED;
                return Some(entry.1 & !EXPANDED);
            }
        }
        None
    }

    /// The node [`Pool::next_unexpanded`] would return, left unmarked.
    #[inline]
    fn peek_unexpanded(&self) -> Option<u32> {
        self.entries[self.cursor.min(self.entries.len())..]
            .iter()
            .find(|e| e.1 & EXPANDED == 0)
            .map(|e| e.1)
    }

    /// The `k` nearest, as (distance, node).
    fn best(&self, k: usize) -> impl Iterator<Item = (f32, u32)> + '_ {
        self.entries
            .iter()
            .take(k)
            .map(|&(distance, node)| (distance, node & !EXPANDED))
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A graph's arrays, as a snapshot stores them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphParts {
    pub rows: Vec<u32>,
    pub links0: Vec<u32>,
    pub max_links0: u32,
    pub upper: Vec<u32>,
    pub upper_start: Vec<u32>,
    pub max_links: u32,
    pub levels: Vec<u8>,
    pub entry: u32,
    pub max_level: u8,
}

/// A frozen HNSW graph over a fixed set of rows.
pub(crate) struct Graph {
    stored_len: usize,
    /// `len * stored_len` values in local-id order. This and the links are read at random,
    /// a node per cache miss: on 2 MiB pages a miss does not also walk the page tables (the
    /// 1M catalog's graph is 290 MB; 4 KiB pages would need 70,000 TLB entries).
    vectors: HugeArray<f32>,
    /// Local id → row in the item store.
    rows: Vec<u32>,
    /// `rows[i] == i` for every node (a graph over a whole catalog): the walk then skips
    /// the lookup, one cache line per scored node.
    identity_rows: bool,
    /// Level-0 links: per node a count then `max_links0` slots (hnswlib's layout).
    links0: HugeArray<u32>,
    max_links0: usize,
    /// Links of layers ≥ 1: node `i` with level `L` owns `L` blocks of a count and
    /// `max_links` slots, starting at `upper_start[i]`.
    upper: HugeArray<u32>,
    upper_start: Vec<u32>,
    max_links: usize,
    levels: Vec<u8>,
    entry: u32,
    max_level: u8,
    /// 8-bit codes of `vectors` the walk scores on ([`crate::codes`]); `None` walks on
    /// `vectors` (L2, or `--quantized-walk false`).
    codes: Option<Codes>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.len())
            .field("max_level", &self.max_level)
            .finish()
    }
}

impl Graph {
    /// Copies an hnsw_rs graph whose data ids are rows. `vectors` holds the stored vectors
    /// of `rows`, in that order (`rows.len() * stored_len` values); nodes are numbered in the
    /// order of `rows`, which must list every row the hnsw holds, once.
    pub(crate) fn from_hnsw<D: Distance<f32> + Send + Sync>(
        hnsw: &Hnsw<'_, f32, D>,
        stored_len: usize,
        rows: Vec<u32>,
        vectors: Vec<f32>,
        code_kernel: Option<CodeKernelFn>,
    ) -> Self {
        let n = rows.len();
        let max_links = usize::from(hnsw.get_max_nb_connection());
        let max_links0 = 2 * max_links;
        let local_of: std::collections::HashMap<u32, u32> = rows
            .iter()
            .enumerate()
            .map(|(l, r)| (*r, l as u32))
            .collect();
        let mut links0 = vec![0u32; n * (max_links0 + 1)];
        let mut levels = vec![0u8; n];
        let mut neighbourhoods: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
        for point in hnsw.get_point_indexation() {
            let Some(&local) = local_of.get(&(point.get_origin_id() as u32)) else {
                continue;
            };
            let level = point.get_point_id().0;
            levels[local as usize] = level;
            let layers: Vec<Vec<u32>> = point
                .get_neighborhood_id()
                .into_iter()
                .take(usize::from(level) + 1)
                .map(|layer| {
                    layer
                        .into_iter()
                        .filter_map(|nb| local_of.get(&(nb.d_id as u32)).copied())
                        .collect()
                })
                .collect();
            neighbourhoods[local as usize] = layers;
        }
        // A link at layer l must point to a node that lives on layer l.
        let mut dropped = 0usize;
        for layers in neighbourhoods.iter_mut() {
            for (layer, list) in layers.iter_mut().enumerate().skip(1) {
                let before = list.len();
                list.retain(|nb| usize::from(levels[*nb as usize]) >= layer);
                dropped += before - list.len();
            }
        }
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "dropped upper-layer links to nodes below that layer"
            );
        }
        let mut upper = Vec::new();
        let mut upper_start = vec![0u32; n];
        for (local, layers) in neighbourhoods.iter().enumerate() {
            if let Some(level0) = layers.first() {
                write_list(
                    &mut links0[local * (max_links0 + 1)..][..max_links0 + 1],
                    level0,
                );
            }
            upper_start[local] = upper.len() as u32;
            for level in 1..=usize::from(levels[local]) {
                let start = upper.len();
                upper.resize(start + max_links + 1, 0);
                if let Some(layer) = layers.get(level) {
                    write_list(&mut upper[start..], layer);
                }
            }
        }
        let max_level = levels.iter().copied().max().unwrap_or(0);
        let entry = levels.iter().position(|l| *l == max_level).unwrap_or(0) as u32;
        Self {
            stored_len,
            codes: code_kernel.map(|kernel| Codes::encode(&vectors, stored_len, kernel)),
            vectors: HugeArray::from(vectors),
            identity_rows: is_identity(&rows),
            rows,
            links0: HugeArray::from(links0),
            max_links0,
            upper: HugeArray::from(upper),
            upper_start,
            max_links,
            levels,
            entry,
            max_level,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The graph without its vectors, for snapshots.
    pub(crate) fn to_parts(&self) -> GraphParts {
        GraphParts {
            rows: self.rows.clone(),
            links0: self.links0.to_vec(),
            max_links0: self.max_links0 as u32,
            upper: self.upper.to_vec(),
            upper_start: self.upper_start.clone(),
            max_links: self.max_links as u32,
            levels: self.levels.clone(),
            entry: self.entry,
            max_level: self.max_level,
        }
    }

    /// Reassembles a graph, checking every index so a damaged snapshot cannot make a search
    /// read out of bounds. `vector_of(row)` gives each row's stored vector.
    pub(crate) fn from_parts(
        p: GraphParts,
        stored_len: usize,
        vector_of: impl Fn(u32) -> Option<Vec<f32>>,
        code_kernel: Option<CodeKernelFn>,
    ) -> Result<Self, String> {
        let n = p.rows.len();
        let (m0, m) = (p.max_links0 as usize, p.max_links as usize);
        if p.links0.len() != n * (m0 + 1) || p.upper_start.len() != n || p.levels.len() != n {
            return Err("graph arrays disagree on the node count".into());
        }
        if n > 0 && (p.entry as usize >= n || p.levels[p.entry as usize] != p.max_level) {
            return Err("graph entry point is invalid".into());
        }
        let node_ok = |x: u32| (x as usize) < n;
        for node in 0..n {
            let l0 = &p.links0[node * (m0 + 1)..(node + 1) * (m0 + 1)];
            if l0[0] as usize > m0 || !l0[1..=l0[0] as usize].iter().all(|x| node_ok(*x)) {
                return Err(format!("node {node}: bad layer-0 links"));
            }
            let start = p.upper_start[node] as usize;
            for level in 1..=usize::from(p.levels[node]) {
                let at = start + (level - 1) * (m + 1);
                let block = p
                    .upper
                    .get(at..at + m + 1)
                    .ok_or_else(|| format!("node {node}: upper links out of range"))?;
                let ok = block[0] as usize <= m
                    && block[1..=block[0] as usize]
                        .iter()
                        .all(|x| node_ok(*x) && p.levels[*x as usize] as usize >= level);
                if !ok {
                    return Err(format!("node {node}: bad layer-{level} links"));
                }
            }
        }
        let mut vectors = Vec::with_capacity(n * stored_len);
        for row in &p.rows {
            let mut v = vector_of(*row).ok_or_else(|| format!("graph row {row} has no item"))?;
            v.resize(stored_len, 0.0);
            vectors.extend_from_slice(&v);
        }
        Ok(Self {
            stored_len,
            codes: code_kernel.map(|kernel| Codes::encode(&vectors, stored_len, kernel)),
            vectors: HugeArray::from(vectors),
            identity_rows: is_identity(&p.rows),
            rows: p.rows,
            links0: HugeArray::from(p.links0),
            max_links0: m0,
            upper: HugeArray::from(p.upper),
            upper_start: p.upper_start,
            max_links: m,
            levels: p.levels,
            entry: p.entry,
            max_level: p.max_level,
        })
    }

    pub(crate) fn rows(&self) -> &[u32] {
        &self.rows
    }

    #[inline]
    pub(crate) fn vector(&self, local: u32) -> &[f32] {
        let start = local as usize * self.stored_len;
        &self.vectors[start..start + self.stored_len]
    }

    /// Heap bytes held, for memory-per-item reports.
    pub(crate) fn heap_bytes(&self) -> usize {
        let (vectors, links, rows) = self.heap_bytes_by_part();
        vectors + links + rows
    }

    /// Heap bytes of the vectors (with their codes), the links (with levels and offsets) and the row map.
    pub(crate) fn heap_bytes_by_part(&self) -> (usize, usize, usize) {
        (
            4 * self.vectors.len() + self.codes.as_ref().map_or(0, Codes::heap_bytes),
            4 * (self.links0.len() + self.upper.len() + self.upper_start.capacity())
                + self.levels.capacity(),
            4 * self.rows.capacity(),
        )
    }

    /// The item-store row of a node.
    #[inline]
    fn row(&self, local: u32) -> u32 {
        if self.identity_rows {
            local
        } else {
            self.rows[local as usize]
        }
    }

    #[inline]
    /// A node's level-0 block: its count and every slot.
    fn links0_block(&self, local: u32) -> &[u32] {
        let start = local as usize * (self.max_links0 + 1);
        &self.links0[start..start + self.max_links0 + 1]
    }

    fn neighbours(&self, local: u32, level: u8) -> &[u32] {
        let (links, start) = if level == 0 {
            (&self.links0, local as usize * (self.max_links0 + 1))
        } else {
            let start = self.upper_start[local as usize] as usize
                + (usize::from(level) - 1) * (self.max_links + 1);
            (&self.upper, start)
        };
        let count = links[start] as usize;
        &links[start + 1..start + 1 + count]
    }

    /// Greedy descent through the upper layers: the layer-0 entry node, its distance and the
    /// distance evaluations spent.
    fn descend(&self, dist: impl Fn(u32) -> f32) -> (u32, f32, u64) {
        let mut current = self.entry;
        let mut current_d = dist(current);
        let mut evals = 1u64;
        for level in (1..=self.max_level).rev() {
            let mut changed = true;
            while changed {
                changed = false;
                for &nb in self.neighbours(current, level) {
                    let d = dist(nb);
                    evals += 1;
                    if d < current_d {
                        current_d = d;
                        current = nb;
                        changed = true;
                    }
                }
            }
        }
        (current, current_d, evals)
    }

    /// The `ef`-beam search over every node (no filter, no deleted rows): the same walk as
    /// [`Graph::search`] with `admit` always true, but the beam is one sorted array of `ef`
    /// entries with an "expanded" mark (faiss's and DiskANN's pool) instead of two binary
    /// heaps. Without a filter, HNSW's candidate heap only ever expands nodes that are also
    /// among the `ef` best, so the pool visits the same nodes; at the small `ef` that reaches
    /// recall 0.95 on low-dimensional vectors, the heaps' pushes and pops were a tenth of a
    /// search, a short sorted insert is a few instructions.
    pub(crate) fn search_all(
        &self,
        space: &Space,
        query: &[f32],
        k: usize,
        ef: usize,
        stats: &mut SearchStats,
    ) -> Vec<Scored> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let ef = ef.max(k);
        SCRATCH.with_borrow_mut(|s| {
            let mut pool = std::mem::take(&mut s.pool);
            let mut folded = std::mem::take(&mut s.folded);
            pool.reset(ef);
            let mut out: Vec<Scored> = match &self.codes {
                Some(codes) => {
                    let q = codes.fold(query, &mut folded);
                    self.walk(
                        s,
                        &mut pool,
                        |local| q.distance(codes.code(local)),
                        |local| prefetch(codes.code(local)),
                        stats,
                    );
                    let head = pool.best(rescore_count(k, ef));
                    let head = head.map(|(distance, id)| Scored { distance, id }).collect();
                    self.rescore(space, query, head, k, stats)
                }
                None => {
                    self.walk(
                        s,
                        &mut pool,
                        |local| space.distance(query, self.vector(local)),
                        |local| prefetch(self.vector(local)),
                        stats,
                    );
                    pool.best(k)
                        .map(|(distance, id)| Scored { distance, id })
                        .collect()
                }
            };
            for found in &mut out {
                found.id = self.rows[found.id as usize];
            }
            s.pool = pool;
            s.folded = folded;
            out
        })
    }

    /// The walk's nearest on codes scored on the exact vectors, nearest first, `k` of them:
    /// the answer's order and distances are exact.
    fn rescore(
        &self,
        space: &Space,
        query: &[f32],
        head: Vec<Scored>,
        k: usize,
        stats: &mut SearchStats,
    ) -> Vec<Scored> {
        for r in &head {
            prefetch(self.vector(r.id));
        }
        stats.distance_evals += head.len() as u64;
        let mut exact: Vec<Scored> = head
            .into_iter()
            .map(|r| Scored {
                distance: space.distance(query, self.vector(r.id)),
                id: r.id,
            })
            .collect();
        exact.sort_unstable();
        exact.truncate(k);
        exact
    }

    /// Marks `node`'s unvisited layer-0 neighbours and collects them in `batch`, each
    /// `fetch`ed as it is found: marking and prefetching all before scoring any lets their
    /// cache misses overlap.
    fn unvisited_neighbours(
        &self,
        s: &mut Scratch,
        node: u32,
        batch: &mut Vec<u32>,
        fetch: &impl Fn(u32),
    ) {
        batch.clear();
        for &nb in self.neighbours(node, 0) {
            if s.visit(nb) {
                fetch(nb);
                batch.push(nb);
            }
        }
    }

    /// The pool's walk on layer 0 from the descent's entry, scoring nodes with `dist`;
    /// `fetch` starts loading what `dist` will read of a node.
    fn walk(
        &self,
        s: &mut Scratch,
        pool: &mut Pool,
        dist: impl Fn(u32) -> f32,
        fetch: impl Fn(u32),
        stats: &mut SearchStats,
    ) {
        let (entry, entry_d, mut evals) = self.descend(&dist);
        s.begin(self.rows.len());
        s.visit(entry);
        let mut visited = 1u64;
        pool.insert(entry_d, entry);
        let mut batch = std::mem::take(&mut s.batch);
        while let Some(next) = pool.next_unexpanded() {
            self.unvisited_neighbours(s, next, &mut batch, &fetch);
            for &nb in &batch {
                visited += 1;
                evals += 1;
                pool.insert(dist(nb), nb);
            }
            // The node expanded next: its list loads while this one's are scored.
            if let Some(top) = pool.peek_unexpanded() {
                prefetch(self.links0_block(top));
            }
        }
        s.batch = batch;
        stats.distance_evals += evals;
        stats.visited += visited;
    }

    /// The `ef`-beam search: greedy descent through the upper layers, then a beam of width
    /// `ef` on layer 0 in which only rows passing `admit` enter the results (rejected nodes
    /// are still walked through, so the filter does not cut the graph). Returns up to `k`
    /// (distance, row) pairs, nearest first. With codes, the walk runs on them and the
    /// results are rescored exactly, as in [`Graph::search_all`].
    pub(crate) fn search(
        &self,
        space: &Space,
        query: &[f32],
        k: usize,
        ef: usize,
        admit: impl Fn(u32) -> bool,
        stats: &mut SearchStats,
    ) -> Vec<Scored> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let ef = ef.max(k);
        SCRATCH.with_borrow_mut(|s| {
            let mut folded = std::mem::take(&mut s.folded);
            let found: Vec<Scored> = match &self.codes {
                Some(codes) => {
                    let q = codes.fold(query, &mut folded);
                    self.filtered_walk(
                        s,
                        ef,
                        &admit,
                        |local| q.distance(codes.code(local)),
                        |local| prefetch(codes.code(local)),
                        stats,
                    );
                    let mut head: Vec<Scored> = s.results.drain().collect();
                    let rescored = rescore_count(k, ef);
                    if head.len() > rescored {
                        head.select_nth_unstable(rescored);
                        head.truncate(rescored);
                    }
                    self.rescore(space, query, head, k, stats)
                }
                None => {
                    self.filtered_walk(
                        s,
                        ef,
                        &admit,
                        |local| space.distance(query, self.vector(local)),
                        |local| prefetch(self.vector(local)),
                        stats,
                    );
                    s.results.drain().collect()
                }
            };
            s.folded = folded;
            let mut out: Vec<Scored> = found
                .into_iter()
                .map(|r| Scored {
                    distance: r.distance,
                    id: self.rows[r.id as usize],
                })
                .collect();
            out.sort_unstable();
            out.truncate(k);
            out
        })
    }

    /// HNSW's walk on layer 0 with a candidate heap and a result heap of admitted nodes,
    /// scored with `dist` (`fetch` starts loading what it reads); leaves up to `ef` results
    /// in `s.results`.
    fn filtered_walk(
        &self,
        s: &mut Scratch,
        ef: usize,
        admit: impl Fn(u32) -> bool,
        dist: impl Fn(u32) -> f32,
        fetch: impl Fn(u32),
        stats: &mut SearchStats,
    ) {
        let (current, current_d, mut evals) = self.descend(&dist);
        s.begin(self.rows.len());
        s.visit(current);
        let mut visited = 1u64;
        let entry = Scored {
            distance: current_d,
            id: current,
        };
        s.candidates.push(Reverse(entry));
        if admit(self.row(current)) {
            s.results.push(entry);
        }
        let mut bound = s.results.peek().map_or(f32::INFINITY, |r| r.distance);
        let mut batch = std::mem::take(&mut s.batch);
        while let Some(Reverse(next)) = s.candidates.pop() {
            if next.distance > bound && s.results.len() >= ef {
                break;
            }
            self.unvisited_neighbours(s, next.id, &mut batch, &fetch);
            for &nb in &batch {
                visited += 1;
                let d = dist(nb);
                evals += 1;
                if s.results.len() < ef || d < bound {
                    let item = Scored {
                        distance: d,
                        id: nb,
                    };
                    s.candidates.push(Reverse(item));
                    if admit(self.row(nb)) {
                        s.results.push(item);
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                    }
                    if let Some(worst) = s.results.peek() {
                        bound = worst.distance;
                    }
                }
            }
            // The node expanded next: its list loads while the heap is popped.
            if let Some(Reverse(top)) = s.candidates.peek() {
                prefetch(self.links0_block(top.id));
            }
        }
        s.batch = batch;
        stats.distance_evals += evals;
        stats.visited += visited;
    }

    /// Every admitted node scored: the exact answer, for selective filters and ground truth.
    pub(crate) fn scan(
        &self,
        space: &Space,
        query: &[f32],
        admit: impl Fn(u32) -> bool,
        top: &mut TopK,
    ) {
        for (local, row) in self.rows.iter().enumerate() {
            if admit(*row) {
                top.offer(Scored {
                    distance: space.distance(query, self.vector(local as u32)),
                    id: *row,
                });
            }
        }
    }
}

/// How many of a walk on codes' nearest are rescored on the exact vectors: a few times `k`
/// (Qdrant's oversampling). An 8-bit code is off by at most half a step per dimension, so
/// an item ranked past 4·k on codes is practically never in the exact top k, and
/// rescoring all of a wide beam (ef in the hundreds on 128-d vectors) would add a tenth to
/// the walk's distance evaluations.
fn rescore_count(k: usize, ef: usize) -> usize {
    (4 * k).max(32).min(ef)
}

fn is_identity(rows: &[u32]) -> bool {
    rows.iter()
        .enumerate()
        .all(|(local, row)| local as u32 == *row)
}

/// Writes a count and the neighbours into a list slot, keeping what fits.
fn write_list(slot: &mut [u32], neighbours: &[u32]) {
    let n = neighbours.len().min(slot.len() - 1);
    slot[0] = n as u32;
    slot[1..=n].copy_from_slice(&neighbours[..n]);
}

/// The k nearest seen so far.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, item: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if self.heap.peek().is_some_and(|worst| item < *worst) {
            self.heap.pop();
            self.heap.push(item);
        }
    }

    /// Nearest first.
    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::index::{IndexParams, build_graph};
    use crate::kernels::Kernels;
    use crate::space::Metric;

    #[test]
    fn pool_keeps_the_nearest_sorted_and_expands_each_once() {
        let mut pool = Pool::default();
        pool.reset(3);
        for (d, node) in [(5.0, 1), (1.0, 2), (3.0, 3), (4.0, 4), (0.5, 5), (9.0, 6)] {
            pool.insert(d, node);
        }
        assert_eq!(
            pool.best(10).collect::<Vec<_>>(),
            [(0.5, 5), (1.0, 2), (3.0, 3)]
        );
        assert_eq!(pool.next_unexpanded(), Some(5));
        assert_eq!(pool.next_unexpanded(), Some(2));
        // A nearer node arriving after expansions is expanded next.
        pool.insert(0.7, 7);
        assert_eq!(pool.peek_unexpanded(), Some(7));
        assert_eq!(pool.next_unexpanded(), Some(7));
        assert_eq!(pool.next_unexpanded(), None);
        assert_eq!(pool.best(2).collect::<Vec<_>>(), [(0.5, 5), (0.7, 7)]);
    }

    #[test]
    fn pool_search_walks_like_the_heap_search_without_a_filter() {
        let (n, dim) = (3000, 12);
        let mut rng = StdRng::seed_from_u64(5);
        let space = Space::new(Metric::L2, dim, Kernels::detect());
        let mut vectors = Vec::with_capacity(n * space.stored_len());
        for _ in 0..n {
            let x: Vec<f32> = (0..dim).map(|_| rng.random::<f32>()).collect();
            vectors.extend(space.item(&x));
        }
        let params = IndexParams {
            metric: Metric::L2,
            ..IndexParams::default()
        };
        let graph = build_graph(&space, &params, (0..n as u32).collect(), vectors);
        for ef in [10, 16, 40, 200] {
            for _ in 0..50 {
                let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>()).collect();
                let q = space.query(&q).expect("a finite query");
                let (mut pooled, mut heaped) = (SearchStats::default(), SearchStats::default());
                let a = graph.search_all(&space, &q, 10, ef, &mut pooled);
                let b = graph.search(&space, &q, 10, ef, |_| true, &mut heaped);
                let ids = |v: &[Scored]| v.iter().map(|s| s.id).collect::<Vec<_>>();
                assert_eq!(ids(&a), ids(&b), "ef {ef}");
                assert_eq!(pooled, heaped, "ef {ef}: the same nodes scored");
            }
        }
    }

    #[test]
    fn a_walk_on_codes_returns_exact_distances_at_the_exact_walks_recall() {
        let (n, dim) = (4000, 24);
        let mut rng = StdRng::seed_from_u64(9);
        let space = Space::new(Metric::InnerProduct, dim, Kernels::detect());
        let mut vectors = Vec::with_capacity(n * space.stored_len());
        for i in 0..n {
            // Two scales, so the code ranges are set by a minority of long vectors.
            let scale = if i % 10 == 0 { 3.0 } else { 1.0 };
            let x: Vec<f32> = (0..dim)
                .map(|_| scale * (rng.random::<f32>() - 0.5))
                .collect();
            vectors.extend(space.item(&x));
        }
        let rows: Vec<u32> = (0..n as u32).collect();
        let build = |quantized_walk| {
            let params = IndexParams {
                quantized_walk,
                ..IndexParams::default()
            };
            build_graph(&space, &params, rows.clone(), vectors.clone())
        };
        let (coded, plain) = (build(true), build(false));
        assert!(coded.codes.is_some() && plain.codes.is_none());
        let (mut hits_coded, mut hits_plain) = (0, 0);
        for _ in 0..100 {
            let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let q = space.query(&q).expect("a finite query");
            let mut truth = TopK::new(10);
            coded.scan(&space, &q, |_| true, &mut truth);
            let truth: Vec<u32> = truth.into_sorted().iter().map(|s| s.id).collect();
            let mut stats = SearchStats::default();
            let found = coded.search_all(&space, &q, 10, 32, &mut stats);
            for s in &found {
                let exact = space.distance(&q, coded.vector(s.id));
                assert_eq!(s.distance, exact, "rescored on the exact vector");
            }
            assert!(found.windows(2).all(|w| w[0] <= w[1]), "nearest first");
            hits_coded += found.iter().filter(|s| truth.contains(&s.id)).count();
            let even = coded.search(&space, &q, 10, 32, |row| row % 2 == 0, &mut stats);
            assert_eq!(even.len(), 10);
            for s in &even {
                assert!(s.id % 2 == 0, "only admitted rows");
                assert_eq!(s.distance, space.distance(&q, coded.vector(s.id)));
            }
            let found = plain.search_all(&space, &q, 10, 32, &mut stats);
            hits_plain += found.iter().filter(|s| truth.contains(&s.id)).count();
        }
        assert!(
            hits_coded + 20 >= hits_plain,
            "recall on codes {hits_coded} vs exact walk {hits_plain} of 1000"
        );
    }
}
