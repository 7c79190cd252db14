//! Retrieval gRPC service: `tandem.v1.RetrievalService/Search` over the HNSW index.
//! The gateway mounts the same handler in the embedded topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_proto::v1 as pb;
use tandem_retrieval::{
    FilterSpec, Index, IndexParams, ItemUpdate, Metric, RetrievalError, SearchParams,
};
use tandem_server::Ready;
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

/// Reads the catalog, builds the index and replays the write-ahead log (blocking; seconds
/// for 50k items).
pub fn load_index(
    items: &Path,
    params: IndexParams,
    state_dir: Option<&Path>,
) -> Result<Arc<Index>, Box<dyn std::error::Error + Send + Sync>> {
    let mut catalog = Catalog::open(items)?;
    tracing::info!(items = catalog.len(), dim = catalog.dim(), path = %items.display(), "loaded catalog");
    if let Some(shard) = params.shard {
        let rows: Vec<u32> = (0..catalog.len() as u32)
            .filter(|&r| shard.owns(catalog.item_id(r)))
            .collect();
        catalog = catalog.select(&rows);
        tracing::info!(%shard, items = catalog.len(), "serving one shard of the catalog");
    }
    open_index(Arc::new(catalog), params, state_dir)
}

/// Builds the index over a loaded catalog and replays the write-ahead log in `state_dir`.
pub fn open_index(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state_dir: Option<&Path>,
) -> Result<Arc<Index>, Box<dyn std::error::Error + Send + Sync>> {
    let index = Index::build(catalog, params)?;
    match state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create --state-dir {}: {e}", dir.display()))?;
            index.attach_wal(&dir.join(WAL_FILE))?;
        }
        None => tracing::warn!("no --state-dir: the index is read-only"),
    }
    Ok(Arc::new(index))
}

/// The write-ahead log's file name inside the state directory.
pub const WAL_FILE: &str = "retrieval.wal";

/// Wire filter → domain filter spec.
pub fn filter_from_proto(filter: Option<pb::ItemFilter>) -> FilterSpec {
    let f = filter.unwrap_or_default();
    FilterSpec {
        categories: f.categories,
        min_price: f.min_price,
        max_price: f.max_price,
        in_stock_only: f.in_stock_only,
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

#[derive(Debug, Clone, Default)]
pub struct RetrievalApi {
    index: Ready<Index>,
}

impl RetrievalApi {
    pub fn new(index: Ready<Index>) -> Self {
        Self { index }
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
        let candidates = found
            .into_iter()
            .filter_map(|c| {
                Some(pb::Candidate {
                    internal_id: c.idx,
                    item_id: index.item_id(c.idx)?,
                    distance: c.distance,
                    score: c.score,
                })
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { candidates }))
    }

    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
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
}
