//! Retrieval gRPC service: `tandem.v1.RetrievalService/Search` over the HNSW index.
//! The gateway mounts the same handler in the embedded topology.

use std::path::Path;
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_proto::v1 as pb;
use tandem_retrieval::{
    FilterSpec, Index, IndexParams, ItemFilter, Metric, RetrievalError, SearchParams,
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
        Ok(IndexParams {
            max_connections: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            max_ef_search: self.max_ef_search,
            metric: self.metric,
            ..IndexParams::default()
        })
    }
}

/// Reads the catalog and builds the index (blocking; seconds for 50k items).
pub fn load_index(
    items: &Path,
    params: IndexParams,
) -> Result<Arc<Index>, Box<dyn std::error::Error + Send + Sync>> {
    let catalog = Arc::new(Catalog::open(items)?);
    tracing::info!(items = catalog.len(), dim = catalog.dim(), path = %items.display(), "loaded catalog");
    Ok(Arc::new(Index::build(catalog, params)?))
}

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
        RetrievalError::EmptyCatalog => Status::failed_precondition(err.to_string()),
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
        let filter =
            ItemFilter::resolve(index.catalog(), &filter_from_proto(req.filter)).map_err(status)?;
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
        let catalog = index.catalog();
        let candidates = found
            .into_iter()
            .map(|c| pb::Candidate {
                internal_id: c.idx,
                item_id: catalog.item_id(c.idx).to_owned(),
                distance: c.distance,
                score: c.score,
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { candidates }))
    }
}
