//! The stages behind gRPC (split topology): retrieval shards searched in parallel and merged,
//! and the ranking server. Catalog indexes become item ids here and back, once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tandem_catalog::{Catalog, ItemAttributes, ItemIdx};
use tandem_proto::v1 as pb;
use tandem_ranking::{FeatureValues, ScoreRequest};
use tandem_retrieval::ItemFilter;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt;
use tracing::Instrument as _;

use super::{Candidate, CandidateStage, ItemStatus, Retrieved, Scored, ScoringStage};
use crate::StageError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the gateway dials its stages.
#[derive(Debug, Clone)]
pub struct StageConnection {
    /// The most one call may take, whatever time the caller left.
    pub timeout: Duration,
    /// TLS (and the gateway's client certificate) for `host:port` addresses; `None`: plaintext.
    pub tls: Option<ClientTlsConfig>,
    /// HTTP/2 PING interval on idle connections; `None`: off.
    pub keepalive: Option<Duration>,
}

impl StageConnection {
    /// Plaintext, no keepalive.
    pub fn plaintext(timeout: Duration) -> Self {
        Self {
            timeout,
            tls: None,
            keepalive: None,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, BoxError> {
        let uri = match (addr.contains("://"), self.tls.is_some()) {
            (true, _) => addr.to_owned(),
            (false, true) => format!("https://{addr}"),
            (false, false) => format!("http://{addr}"),
        };
        let mut endpoint = Endpoint::from_shared(uri)?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(interval) = self.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(interval)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// The time a call may take: what the caller left, at most `timeout`.
    fn time_left(&self, deadline: Option<Instant>) -> Duration {
        deadline.map_or(self.timeout, |d| {
            d.saturating_duration_since(Instant::now())
                .min(self.timeout)
        })
    }
}

/// Whether `status` is the call running out of `left` (tonic's client gives up at the
/// `grpc-timeout` it sent, the stage at the one it received), told by the clock, not the text.
fn ran_out(status: &tonic::Status, started: Instant, left: Duration) -> bool {
    matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    ) && started.elapsed() >= left
}

/// `message` as a call to `service/method` at `peer`, with `left` sent as `grpc-timeout`
/// (tonic's `Endpoint::timeout` only bounds the call here; the header is what lets the stage
/// stop working for a caller that has gone) and the call's client span, whose trace context
/// the metadata carries to the stage.
fn outgoing<T>(
    message: T,
    left: Duration,
    (service, method): (&'static str, &'static str),
    peer: &str,
) -> (tonic::Request<T>, tracing::Span) {
    let mut request = tonic::Request::new(message);
    request.set_timeout(left);
    let span = tandem_server::client_span(&mut request, service, method, peer);
    (request, span)
}

/// Runs an outgoing call in its client span and records how it ended.
async fn traced<T>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let answer = call.instrument(span.clone()).await;
    let code = answer
        .as_ref()
        .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
    tandem_server::record_client_status(&span, code);
    answer
}

const RETRIEVAL_SERVICE: &str = "tandem.v1.RetrievalService";
const RANKING_SERVICE: &str = "tandem.v1.RankingService";

/// A stage's status back to the domain error the stage made it from, by its code and
/// `google.rpc` details, never by its text: the caller's mistakes stay the caller's, anything
/// else means the stage could not answer (and the pipeline degrades).
#[deny(clippy::wildcard_enum_match_arm)]
pub(crate) fn stage_error(stage: &str, status: &tonic::Status) -> StageError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => {
            match status
                .get_details_bad_request()
                .and_then(|b| b.field_violations.into_iter().next())
            {
                Some(v) => StageError::InvalidArgument {
                    field: v.field,
                    reason: v.description,
                },
                None => StageError::InvalidArgument {
                    field: stage.to_owned(),
                    reason: status.message().to_owned(),
                },
            }
        }
        Code::NotFound => match status.get_details_resource_info() {
            Some(r) if r.resource_type == tandem_ranking_api::MODEL_VERSION_RESOURCE => {
                StageError::NotFound(format!(
                    "model_version: `{}` is not loaded",
                    r.resource_name
                ))
            }
            // Anything else the stage lacks (an item of another catalog version) is not the
            // caller's to fix.
            Some(_) | None => unavailable(stage, status),
        },
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss
        | Code::Unauthenticated => unavailable(stage, status),
    }
}

fn unavailable(stage: &str, status: &tonic::Status) -> StageError {
    StageError::Unavailable(format!("{stage} {:?}: {}", status.code(), status.message()))
}

type RetrievalClient = pb::retrieval_service_client::RetrievalServiceClient<Channel>;

/// Retrieval over gRPC: one server, or the shards of one catalog (each serving the items
/// whose id hashes to it), searched in parallel and merged.
#[derive(Debug, Clone)]
pub struct RemoteRetrieval {
    shards: Vec<(String, RetrievalClient)>,
    catalog: Arc<Catalog>,
    connection: StageConnection,
}

impl RemoteRetrieval {
    /// `connection.timeout`: the most one call to a shard may take before the shard counts as
    /// failed.
    pub fn new(
        addrs: &[String],
        connection: StageConnection,
        catalog: Arc<Catalog>,
    ) -> Result<Self, BoxError> {
        let shards = addrs
            .iter()
            .map(|addr| {
                let client = RetrievalClient::new(connection.channel(addr)?)
                    .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
                Ok((addr.clone(), client))
            })
            .collect::<Result<_, BoxError>>()?;
        Ok(Self {
            shards,
            catalog,
            connection,
        })
    }

    /// Runs `call` on every shard in parallel, each within the time left (`None`: no answer
    /// came), and returns the answers by shard address. `call` gets the time left to send.
    async fn each_shard<T, Fut>(
        &self,
        left: Duration,
        call: impl Fn(RetrievalClient, &str, Duration) -> Fut,
    ) -> Result<Vec<(String, Option<Result<T, tonic::Status>>)>, StageError>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let started = Instant::now();
        // Out of time is no answer, whichever side noticed first.
        let in_time = move |answer: Option<Result<tonic::Response<T>, tonic::Status>>| match answer
        {
            Some(Err(status)) if ran_out(&status, started, left) => None,
            answer => answer.map(|a| a.map(tonic::Response::into_inner)),
        };
        if let [(addr, client)] = &self.shards[..] {
            // One server: no task to spawn.
            let answer = tokio::time::timeout(left, call(client.clone(), addr, left))
                .await
                .ok();
            return Ok(vec![(addr.clone(), in_time(answer))]);
        }
        let calls: Vec<_> = self
            .shards
            .iter()
            .map(|(addr, client)| {
                let (answer, addr) = (call(client.clone(), addr, left), addr.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(left, answer).await.ok();
                    (addr, in_time(answer))
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(calls.len());
        for call in calls {
            answers.push(
                call.await
                    .map_err(|e| StageError::Unavailable(format!("retrieval task failed: {e}")))?,
            );
        }
        Ok(answers)
    }

    /// A reported item in this catalog's terms: the report when the server sent attributes
    /// (it does once writes changed an item), else the catalog's.
    fn attributes(
        &self,
        idx: ItemIdx,
        category: &str,
        price: f32,
        in_stock: bool,
    ) -> ItemAttributes {
        if category.is_empty() {
            return self.catalog.attributes(idx);
        }
        ItemAttributes {
            category: self.catalog.category_named(category),
            price,
            in_stock,
        }
    }
}

#[async_trait]
impl CandidateStage for RemoteRetrieval {
    async fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
        deadline: Option<Instant>,
    ) -> Result<Retrieved, StageError> {
        let left = self.connection.time_left(deadline);
        let request = pb::SearchRequest {
            vector: query.to_vec(),
            k: k as u32,
            filter: Some(tandem_retrieval_api::filter_to_proto(
                &filter.spec(&self.catalog),
            )),
            ef_search: None,
        };
        let answers = self
            .each_shard(left, move |mut client, peer, left| {
                let (request, span) =
                    outgoing(request.clone(), left, (RETRIEVAL_SERVICE, "Search"), peer);
                traced(span, async move { client.search(request).await })
            })
            .await?;
        let mut merged = Vec::new();
        let mut failed = Vec::new();
        for (addr, answer) in answers {
            match answer {
                Some(Ok(response)) => merged.extend(response.candidates),
                Some(Err(status)) => match stage_error("retrieval", &status) {
                    // Every shard validates the same request: a bad one is the caller's fault.
                    e @ (StageError::InvalidArgument { .. } | StageError::NotFound(_)) => {
                        return Err(e);
                    }
                    StageError::Unavailable(why) => failed.push(format!("{addr}: {why}")),
                },
                None => failed.push(format!("{addr}: no answer within {} ms", left.as_millis())),
            }
        }
        if failed.len() == self.shards.len() {
            return Err(StageError::Unavailable(failed.join("; ")));
        }
        merged.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item_id.cmp(&b.item_id)));
        // A server may run on another catalog version: keep what this catalog holds and the
        // filter admits, once each.
        let mut seen = HashSet::with_capacity(merged.len());
        let candidates = merged
            .into_iter()
            .filter_map(|c| {
                let idx = self.catalog.idx_of(&c.item_id)?;
                let attributes = self.attributes(idx, &c.category, c.price, c.in_stock);
                (filter.admits_item(idx, &attributes) && seen.insert(idx)).then_some(Candidate {
                    idx,
                    score: c.score,
                    attributes: Some(attributes),
                })
            })
            .take(k)
            .collect();
        let partial = (!failed.is_empty()).then(|| {
            format!(
                "{} of {} retrieval shards failed ({})",
                failed.len(),
                self.shards.len(),
                failed.join("; ")
            )
        });
        Ok(Retrieved {
            candidates,
            partial,
        })
    }

    /// Asks every shard at once: an item is present where a shard holds it, gone where its
    /// own shard (or every shard) answered without it, unknown while its shard is down.
    async fn items(
        &self,
        items: &[ItemIdx],
        deadline: Option<Instant>,
    ) -> Result<Vec<ItemStatus>, StageError> {
        let left = self.connection.time_left(deadline);
        let request = pb::GetItemsRequest {
            item_ids: items
                .iter()
                .map(|&i| self.catalog.item_id(i).to_owned())
                .collect(),
        };
        let answers = self
            .each_shard(left, move |mut client, peer, left| {
                let (request, span) =
                    outgoing(request.clone(), left, (RETRIEVAL_SERVICE, "GetItems"), peer);
                traced(span, async move { client.get_items(request).await })
            })
            .await?;
        let mut statuses: Vec<Option<ItemStatus>> = vec![None; items.len()];
        let mut failed = Vec::new();
        for (addr, answer) in answers {
            let states = match answer {
                Some(Ok(response)) => response.items,
                Some(Err(status)) => {
                    failed.push(format!("{addr}: {}", status.message()));
                    continue;
                }
                None => {
                    failed.push(format!("{addr}: no answer in time"));
                    continue;
                }
            };
            if states.len() != items.len() {
                failed.push(format!(
                    "{addr}: {} states for {} ids",
                    states.len(),
                    items.len()
                ));
                continue;
            }
            for ((status, state), &idx) in statuses.iter_mut().zip(states).zip(items) {
                if state.found {
                    *status = Some(ItemStatus::Present(self.attributes(
                        idx,
                        &state.category,
                        state.price,
                        state.in_stock,
                    )));
                } else if state.owned && status.is_none() {
                    *status = Some(ItemStatus::Gone);
                }
            }
        }
        if failed.len() == self.shards.len() {
            return Err(StageError::Unavailable(failed.join("; ")));
        }
        // Held by none of the shards that answered: gone if all did, else its shard is down.
        let unheld = if failed.is_empty() {
            ItemStatus::Gone
        } else {
            ItemStatus::Unknown
        };
        Ok(statuses
            .into_iter()
            .map(|s| s.unwrap_or_else(|| unheld.clone()))
            .collect())
    }
}

/// Ranking over gRPC.
#[derive(Debug, Clone)]
pub struct RemoteRanking {
    client: pb::ranking_service_client::RankingServiceClient<Channel>,
    /// Where it is, as configured (the client span's `server.address`).
    addr: String,
    catalog: Arc<Catalog>,
    connection: StageConnection,
}

impl RemoteRanking {
    pub fn new(
        addr: &str,
        connection: StageConnection,
        catalog: Arc<Catalog>,
    ) -> Result<Self, BoxError> {
        let client =
            pb::ranking_service_client::RankingServiceClient::new(connection.channel(addr)?)
                .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            addr: addr.to_owned(),
            catalog,
            connection,
        })
    }
}

#[async_trait]
impl ScoringStage for RemoteRanking {
    async fn score(
        &self,
        request: ScoreRequest,
        with_features: bool,
        deadline: Option<Instant>,
    ) -> Result<Scored, StageError> {
        let left = self.connection.time_left(deadline);
        let catalog = &self.catalog;
        let request = pb::RankRequest {
            user: Some(pb::UserContext {
                user_id: request.user_id,
                query_vector: request.user_vector,
                recent_item_ids: request
                    .recent_items
                    .iter()
                    .map(|&i| catalog.item_id(i).to_owned())
                    .collect(),
                context: request.context.into_iter().collect(),
                history: request
                    .history
                    .iter()
                    .map(|h| pb::ItemHistory {
                        item_id: catalog.item_id(h.item).to_owned(),
                        purchases: h.purchases,
                        last_purchase_ms: h.last_purchase_ms,
                        events: h.events,
                        last_event_ms: h.last_event_ms,
                    })
                    .collect(),
                now_ms: request.now_ms,
            }),
            model_version: request.version.unwrap_or_default(),
            explain: with_features,
            candidates: request
                .items
                .iter()
                .zip(&request.retrieval_scores)
                .map(|(&idx, &retrieval_score)| pb::RankCandidate {
                    item_id: catalog.item_id(idx).to_owned(),
                    retrieval_score,
                })
                .collect(),
        };
        let started = Instant::now();
        let (request, span) = outgoing(request, left, (RANKING_SERVICE, "Rank"), &self.addr);
        let mut client = self.client.clone();
        let response = traced(span, client.rank(request))
            .await
            .map_err(|s| {
                if ran_out(&s, started, left) {
                    StageError::Unavailable(format!(
                        "ranking timed out after its {} ms budget",
                        left.as_millis()
                    ))
                } else {
                    stage_error("ranking", &s)
                }
            })?
            .into_inner();
        Ok(Scored {
            features: features_by_name(&response.features),
            scores: response.scores,
            model_version: response.model_version,
        })
    }
}

/// Per-candidate feature lists from the wire, back to one column per feature.
fn features_by_name(per_candidate: &[pb::CandidateFeatures]) -> Vec<FeatureValues> {
    let Some(first) = per_candidate.first() else {
        return Vec::new();
    };
    first
        .features
        .iter()
        .enumerate()
        .map(|(f, head)| FeatureValues {
            input: head.input.clone(),
            feature: head.feature.clone(),
            width: head.values.len(),
            values: per_candidate
                .iter()
                .flat_map(|c| c.features.get(f).map_or(&[][..], |v| &v.values[..]))
                .copied()
                .collect(),
        })
        .collect()
}
