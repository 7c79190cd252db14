//! `tandem.v1.RetrievalService` handlers: wire types in, index calls, wire types out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_proto::v1 as pb;
use tandem_retrieval::{FilterSpec, Index, ItemUpdate, RetrievalError, SearchParams};
use tandem_server::{AdminToken, Ready};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

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

/// Domain filter spec → wire filter (what a remote search sends).
pub fn filter_to_proto(spec: &FilterSpec) -> pb::ItemFilter {
    pb::ItemFilter {
        categories: spec.categories.clone(),
        min_price: spec.min_price,
        max_price: spec.max_price,
        in_stock_only: Some(spec.in_stock_only),
        exclude_item_ids: spec.exclude_item_ids.clone(),
    }
}

/// The one place retrieval errors become gRPC statuses; a bad field is also named in a
/// `google.rpc.BadRequest`, which a remote caller maps back without reading the text.
#[deny(clippy::wildcard_enum_match_arm)]
pub fn status(err: RetrievalError) -> Status {
    match err {
        RetrievalError::InvalidArgument { field, ref reason } => Status::with_error_details(
            tonic::Code::InvalidArgument,
            err.to_string(),
            ErrorDetails::with_bad_request_violation(field, reason.clone()),
        ),
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

/// True while the call's handler lives; cleared when it is dropped.
struct CallerWaiting(Arc<AtomicBool>);

impl CallerWaiting {
    fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for CallerWaiting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
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
        // The handler is dropped when its caller goes (cancelled, or its `grpc-timeout`
        // passed); a search still waiting for a blocking thread then never starts.
        let caller = CallerWaiting::new();
        let span = tracing::info_span!("ann.search", tandem.k = params.k);
        let found = tokio::task::spawn_blocking({
            let (index, waiting) = (index.clone(), caller.flag());
            move || {
                if !waiting.load(Ordering::Relaxed) {
                    return Ok(Vec::new());
                }
                span.in_scope(|| index.search(&req.vector, &filter, params))
            }
        })
        .await
        .map_err(|e| Status::internal(format!("search task failed: {e}")))?
        .map_err(status)?;
        let current = index.current_items().map_err(status)?;
        // Until a write replaces or deletes an item, the items file is current: the
        // attributes are left out, which keeps the common answer small.
        let report = current.has_changes();
        if report {
            current.prefetch_rows(found.iter().map(|c| c.idx));
        }
        let candidates = found
            .into_iter()
            .filter_map(|c| {
                let mut candidate = pb::Candidate {
                    internal_id: c.idx,
                    item_id: current.row_id(c.idx)?.to_owned(),
                    distance: c.distance,
                    score: c.score,
                    ..Default::default()
                };
                if report {
                    let now = current.row_attributes(c.idx)?;
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
