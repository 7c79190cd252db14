//! Retrieval gRPC service: `tandem.v1.RetrievalService/Search` over the HNSW index.
//! The gateway mounts the same handler in the embedded topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_proto::v1 as pb;
use tandem_retrieval::{
    FilterSpec, Index, IndexParams, ItemUpdate, Metric, RetrievalError, SearchParams,
};
use tandem_server::{AdminToken, Ready};
use tonic::{Request, Response, Status};

/// Index parameters (`--help` shows the defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// HNSW links per node (M).
    #[arg(long, env = "TANDEM_HNSW_M", default_value_t = 16)]
    pub hnsw_m: usize,
    /// HNSW candidate list size while building.
    #[arg(long, env = "TANDEM_EF_CONSTRUCTION", default_value_t = 200)]
    pub ef_construction: usize,
    /// HNSW candidate list size while searching (raised to k when lower).
    #[arg(long, env = "TANDEM_EF_SEARCH", default_value_t = 64)]
    pub ef_search: usize,
    /// Upper bound on a request's own `ef_search`.
    #[arg(long, env = "TANDEM_MAX_EF_SEARCH", default_value_t = 4096)]
    pub max_ef_search: usize,
    /// Similarity: `ip` (inner product, what the pipeline's embeddings are trained for),
    /// `cosine` or `l2`.
    #[arg(long, env = "TANDEM_METRIC", default_value = "ip")]
    pub metric: Metric,
    /// Directory for the write-ahead log of upserts and deletes (replayed at start-up).
    /// Unset: the index is read-only and UpsertItems/DeleteItems answer FAILED_PRECONDITION.
    #[arg(long, env = "TANDEM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Upserted rows held in the mutable segment before a background rebuild merges them.
    #[arg(long, env = "TANDEM_FRESH_CAPACITY", default_value_t = 20_000)]
    pub fresh_capacity: usize,
    /// Seconds between snapshots of the index into `--state-dir` (taken only when writes
    /// happened; a first one right after a build). 0 = only that first one.
    #[arg(long, env = "TANDEM_SNAPSHOT_INTERVAL_S", default_value_t = 300)]
    pub snapshot_interval_s: u64,
    /// Fraction of tombstoned rows in the index that triggers a background rebuild.
    #[arg(long, env = "TANDEM_REBUILD_TOMBSTONE_RATIO", default_value_t = 0.2)]
    pub rebuild_tombstone_ratio: f64,
}

impl IndexArgs {
    pub fn validate(&self) -> Result<IndexParams, String> {
        if !(2..=256).contains(&self.hnsw_m) {
            return Err(format!("--hnsw-m must be 2 to 256, got {}", self.hnsw_m));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err("--ef-construction and --ef-search must be positive".into());
        }
        if self.max_ef_search < self.ef_search {
            return Err(format!(
                "--max-ef-search {} is below --ef-search {}",
                self.max_ef_search, self.ef_search
            ));
        }
        if self.fresh_capacity == 0 {
            return Err("--fresh-capacity must be positive".into());
        }
        if !(self.rebuild_tombstone_ratio > 0.0 && self.rebuild_tombstone_ratio <= 1.0) {
            return Err(format!(
                "--rebuild-tombstone-ratio must be in (0, 1], got {}",
                self.rebuild_tombstone_ratio
            ));
        }
        if let Some(dir) = &self.state_dir
            && dir.exists()
            && !dir.is_dir()
        {
            return Err(format!("--state-dir {} is not a directory", dir.display()));
        }
        Ok(IndexParams {
            fresh_capacity: self.fresh_capacity,
            rebuild_tombstone_ratio: self.rebuild_tombstone_ratio,
            max_connections: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            max_ef_search: self.max_ef_search,
            metric: self.metric,
            ..IndexParams::default()
        })
    }
}

/// Opens the index: from the newest valid snapshot in `state_dir` plus the log after it, or
/// else reads the catalog and builds it (blocking; seconds for 50k items).
pub fn load_index(
    items: &Path,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    if let Some(index) = restore(params, state)? {
        return Ok(index);
    }
    let mut catalog = Catalog::open(items)?;
    tracing::info!(items = catalog.len(), dim = catalog.dim(), path = %items.display(), "loaded catalog");
    if let Some(shard) = params.shard {
        let rows: Vec<u32> = (0..catalog.len() as u32)
            .filter(|&r| shard.owns(catalog.item_id(r)))
            .collect();
        catalog = catalog.select(&rows);
        tracing::info!(%shard, items = catalog.len(), "serving one shard of the catalog");
    }
    build(Arc::new(catalog), params, state)
}

/// As `load_index` with the catalog already loaded (the embedded gateway shares it).
pub fn open_index(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    match restore(params, state)? {
        Some(index) => Ok(index),
        None => build(catalog, params, state),
    }
}

/// Where the index keeps its log and snapshots, and how often it snapshots.
#[derive(Debug, Clone)]
pub struct StateArgs {
    pub dir: PathBuf,
    pub snapshot_interval: std::time::Duration,
}

impl IndexArgs {
    pub fn state(&self) -> Option<StateArgs> {
        self.state_dir.clone().map(|dir| StateArgs {
            dir,
            snapshot_interval: std::time::Duration::from_secs(self.snapshot_interval_s),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn restore(params: IndexParams, state: Option<&StateArgs>) -> Result<Option<Arc<Index>>, BoxError> {
    let Some(state) = state else {
        return Ok(None);
    };
    std::fs::create_dir_all(&state.dir)
        .map_err(|e| format!("cannot create --state-dir {}: {e}", state.dir.display()))?;
    let Some((index, seq)) = Index::from_snapshots(&state.dir.join(SNAPSHOT_DIR), params) else {
        return Ok(None);
    };
    index.attach_wal_after(&state.dir.join(WAL_FILE), seq)?;
    let index = Arc::new(index);
    spawn_snapshots(&index, state, seq);
    Ok(Some(index))
}

fn build(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    let index = Index::build(catalog, params)?;
    let Some(state) = state else {
        tracing::warn!("no --state-dir: the index is read-only");
        return Ok(Arc::new(index));
    };
    index.attach_wal(&state.dir.join(WAL_FILE))?;
    let index = Arc::new(index);
    // A first snapshot right away: the next start loads it instead of rebuilding.
    spawn_snapshots(&index, state, u64::MAX);
    Ok(index)
}

/// Snapshots in the background: now if `last` is `u64::MAX`, then every interval when writes
/// happened since the last one.
fn spawn_snapshots(index: &Arc<Index>, state: &StateArgs, mut last: u64) {
    let (index, dir, every) = (
        Arc::downgrade(index),
        state.dir.join(SNAPSHOT_DIR),
        state.snapshot_interval,
    );
    let spawned = std::thread::Builder::new()
        .name("index-snapshots".into())
        .spawn(move || {
            loop {
                if last != u64::MAX {
                    if every.is_zero() {
                        return;
                    }
                    std::thread::sleep(every);
                }
                let Some(index) = index.upgrade() else {
                    return;
                };
                let seq = index.applied_seq();
                if seq != last {
                    match index.snapshot(&dir) {
                        Ok(_) => last = seq,
                        Err(e) => {
                            tracing::error!(error = %e, "snapshot failed; the log still holds every write");
                            if last == u64::MAX {
                                last = 0;
                            }
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the snapshot thread");
    }
}

/// Subdirectory of the state directory holding snapshots.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The write-ahead log's file name inside the state directory.
pub const WAL_FILE: &str = "retrieval.wal";

/// Wire filter → domain filter spec.
pub fn filter_from_proto(filter: Option<pb::ItemFilter>) -> FilterSpec {
    let f = filter.unwrap_or_default();
    FilterSpec {
        categories: f.categories,
        min_price: f.min_price,
        max_price: f.max_price,
        in_stock_only: f.in_stock_only.unwrap_or(false),
        exclude_item_ids: f.exclude_item_ids,
    }
}

/// The one place retrieval errors become gRPC statuses.
pub fn status(err: RetrievalError) -> Status {
    match err {
        RetrievalError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
        RetrievalError::EmptyCatalog | RetrievalError::ReadOnly => {
            Status::failed_precondition(err.to_string())
        }
        RetrievalError::Io { .. } | RetrievalError::Corrupt { .. } => {
            Status::internal(err.to_string())
        }
    }
}

/// Most ids one GetItems call may ask about.
pub const MAX_GET_ITEMS: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct RetrievalApi {
    index: Ready<Index>,
    admin: AdminToken,
}

impl RetrievalApi {
    pub fn new(index: Ready<Index>) -> Self {
        Self {
            index,
            admin: AdminToken::default(),
        }
    }

    /// UpsertItems and DeleteItems then require the token; Search stays open.
    pub fn with_admin_token(mut self, admin: AdminToken) -> Self {
        self.admin = admin;
        self
    }

    pub fn into_service(self) -> pb::retrieval_service_server::RetrievalServiceServer<Self> {
        pb::retrieval_service_server::RetrievalServiceServer::new(self)
            .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl pb::retrieval_service_server::RetrievalService for RetrievalApi {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let index = self.index.get()?.clone();
        let req = request.into_inner();
        let filter = index
            .resolve_filter(&filter_from_proto(req.filter))
            .map_err(status)?;
        let params = SearchParams {
            k: req.k as usize,
            ef_search: req.ef_search.map(|e| e as usize),
        };
        let found = tokio::task::spawn_blocking({
            let index = index.clone();
            move || index.search(&req.vector, &filter, params)
        })
        .await
        .map_err(|e| Status::internal(format!("search task failed: {e}")))?
        .map_err(status)?;
        let current = index.current_items().map_err(status)?;
        // Until a write replaces or deletes an item, the items file is current: the
        // attributes are left out, which keeps the common answer small.
        let report = current.has_changes();
        let candidates = found
            .into_iter()
            .filter_map(|c| {
                let (item_id, now) = current.row(c.idx)?;
                let mut candidate = pb::Candidate {
                    internal_id: c.idx,
                    item_id: item_id.to_owned(),
                    distance: c.distance,
                    score: c.score,
                    ..Default::default()
                };
                if report {
                    candidate.category = now.category.to_owned();
                    candidate.price = now.price;
                    candidate.in_stock = now.in_stock;
                }
                Some(candidate)
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { candidates }))
    }

    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        self.admin.check(&request)?;
        let index = self.index.get()?.clone();
        let items = request
            .into_inner()
            .items
            .into_iter()
            .map(|i| ItemUpdate {
                item_id: i.item_id,
                embedding: i.embedding,
                category: i.category,
                price: i.price,
                in_stock: i.in_stock,
                popularity: i.popularity,
            })
            .collect();
        let outcome = tokio::task::spawn_blocking(move || index.upsert(items))
            .await
            .map_err(|e| Status::internal(format!("upsert task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::UpsertItemsResponse {
            upserted: outcome.applied as u32,
            sequence: outcome.sequence,
        }))
    }

    async fn delete_items(
        &self,
        request: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        self.admin.check(&request)?;
        let index = self.index.get()?.clone();
        let ids = request.into_inner().item_ids;
        let outcome = tokio::task::spawn_blocking(move || index.delete(ids))
            .await
            .map_err(|e| Status::internal(format!("delete task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::DeleteItemsResponse {
            deleted: outcome.applied as u32,
            not_found: outcome.not_found as u32,
            sequence: outcome.sequence,
        }))
    }

    async fn get_items(
        &self,
        request: Request<pb::GetItemsRequest>,
    ) -> Result<Response<pb::GetItemsResponse>, Status> {
        let index = self.index.get()?.clone();
        let ids = request.into_inner().item_ids;
        if ids.len() > MAX_GET_ITEMS {
            return Err(Status::invalid_argument(format!(
                "item_ids: at most {MAX_GET_ITEMS} per call, got {}",
                ids.len()
            )));
        }
        let shard = index.params().shard;
        let current = index.current_items().map_err(status)?;
        let items = ids
            .into_iter()
            .map(|item_id| {
                let owned = shard.is_none_or(|s| s.owns(&item_id));
                match current.get(&item_id) {
                    Some(now) => pb::ItemState {
                        category: now.category.to_owned(),
                        price: now.price,
                        in_stock: now.in_stock,
                        found: true,
                        owned,
                        item_id,
                    },
                    None => pb::ItemState {
                        item_id,
                        owned,
                        ..Default::default()
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::GetItemsResponse { items }))
    }
}
