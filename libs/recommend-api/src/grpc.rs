//! `tandem.v1.RecommenderService` handlers: wire types in, domain calls, wire types out.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_personalization::EventKind;
use tandem_proto::v1 as pb;
use tandem_recommend::{IncomingEvent, RecommendRequest, Recommender, RepeatPurchases};
use tandem_retrieval_api::filter_from_proto;
use tandem_server::Ready;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::status::status;

#[derive(Debug, Clone)]
pub struct RecommenderApi {
    recommender: Ready<Recommender>,
    /// One permit per Recommend in flight; none left → shed.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    default_deadline: Duration,
}

impl RecommenderApi {
    pub fn new(
        recommender: Ready<Recommender>,
        max_in_flight: usize,
        default_deadline: Duration,
    ) -> Self {
        Self {
            recommender,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            default_deadline,
        }
    }

    pub fn into_service(self) -> pb::recommender_service_server::RecommenderServiceServer<Self> {
        pb::recommender_service_server::RecommenderServiceServer::new(self)
            .max_decoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_server::MAX_MESSAGE_BYTES)
    }
}

fn event_kind(raw: i32) -> Option<EventKind> {
    match pb::EventType::try_from(raw).ok()? {
        pb::EventType::View => Some(EventKind::View),
        pb::EventType::Click => Some(EventKind::Click),
        pb::EventType::AddToCart => Some(EventKind::AddToCart),
        pb::EventType::Purchase => Some(EventKind::Purchase),
        pb::EventType::Unspecified => None,
    }
}

#[tonic::async_trait]
impl pb::recommender_service_server::RecommenderService for RecommenderApi {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let received = Instant::now();
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics::counter!("tandem_requests_shed_total", "method" => "Recommend").increment(1);
            return Err(Status::resource_exhausted(format!(
                "{} Recommend calls in flight, the most this gateway takes (--max-in-flight); \
                 retry with backoff",
                self.max_in_flight
            )));
        };
        let recommender = self.recommender.get()?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let timeout = grpc_timeout(request.metadata()).unwrap_or(self.default_deadline);
        let req = request.into_inner();
        let in_stock_only = req.filter.as_ref().and_then(|f| f.in_stock_only);
        let domain = RecommendRequest {
            user_id: req.user_id,
            k: req.k,
            num_candidates: req.num_candidates,
            in_stock_only,
            max_per_category: req.max_per_category,
            filter: filter_from_proto(req.filter),
            context_item_ids: req.context_item_ids,
            context: req.context.into_iter().collect(),
            model_version: (!req.model_version.is_empty()).then_some(req.model_version),
            deadline: Some(received + timeout),
            explain: req.explain,
            request_id: request_id.clone(),
            repeat_purchases: match pb::RepeatPurchases::try_from(req.repeat_purchases) {
                Ok(pb::RepeatPurchases::Unspecified) => RepeatPurchases::AfterWindow,
                Ok(pb::RepeatPurchases::Exclude) => RepeatPurchases::Never,
                Ok(pb::RepeatPurchases::Allow) => RepeatPurchases::Allowed,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "repeat_purchases: unknown value {}",
                        req.repeat_purchases
                    )));
                }
            },
            reasons: req.reasons,
        };
        let result = recommender.recommend(&domain).await.map_err(|e| {
            tracing::debug!(%request_id, error = %e, "recommend rejected");
            status(e)
        })?;
        let catalog = recommender.catalog();
        tracing::debug!(
            %request_id,
            user_id = domain.user_id,
            items = result.items.len(),
            model_version = result.model_version,
            degraded = result.degraded.as_deref().unwrap_or(""),
            "recommend"
        );
        Ok(Response::new(pb::RecommendResponse {
            // Moved, not copied: the answer's strings and feature rows become the reply's.
            items: result
                .items
                .into_iter()
                .map(|it| pb::RecommendedItem {
                    item_id: catalog.item_id(it.idx).to_owned(),
                    score: it.score,
                    retrieval_score: it.retrieval_score,
                    category: it.category,
                    price: it.price,
                    explanation: domain.explain.then(|| pb::ItemExplanation {
                        features: it
                            .features
                            .into_iter()
                            .map(|f| pb::FeatureValue {
                                input: f.input,
                                feature: f.feature,
                                values: f.values,
                            })
                            .collect(),
                        rules: it.effects.iter().map(|e| e.as_str().to_owned()).collect(),
                        reason: it.reason.clone(),
                    }),
                    reason: it.reason,
                })
                .collect(),
            model_version: result.model_version,
            request_id,
            degraded: result.degraded.is_some(),
            degraded_reason: result.degraded.unwrap_or_default(),
        }))
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let recommender = self.recommender.get()?;
        let events = incoming(request.into_inner().events);
        let recorded = recommender.record_events(&events).await.map_err(status)?;
        Ok(Response::new(pb::RecordEventsResponse {
            accepted: recorded.accepted as u32,
            duplicates: recorded.duplicates as u32,
        }))
    }

    async fn record_event_stream(
        &self,
        request: Request<Streaming<pb::RecordEventStreamRequest>>,
    ) -> Result<Response<pb::RecordEventStreamResponse>, Status> {
        let recommender = self.recommender.get()?;
        let mut stream = request.into_inner();
        let mut summary = pb::RecordEventStreamResponse::default();
        let mut offset = 0u64;
        // Each message is durable before the next is read: a broken stream loses nothing it
        // delivered, and event ids make the producer's resend of the rest safe.
        while let Some(message) = stream.message().await? {
            let events = incoming(message.events);
            let (recorded, rejections) = recommender
                .record_each_event(&events)
                .await
                .map_err(status)?;
            summary.accepted += recorded.accepted as u64;
            summary.duplicates += recorded.duplicates as u64;
            summary.rejected += rejections.len() as u64;
            let room = MAX_REPORTED_REJECTIONS.saturating_sub(summary.rejections.len());
            summary
                .rejections
                .extend(
                    rejections
                        .into_iter()
                        .take(room)
                        .map(|r| pb::EventRejection {
                            index: offset + r.index as u64,
                            field: r.field.to_owned(),
                            reason: r.reason,
                        }),
                );
            offset += events.len() as u64;
        }
        Ok(Response::new(summary))
    }
}

/// The caller's deadline from the `grpc-timeout` header: 1 to 8 digits and a unit (H, M, S,
/// m, u, n). `None` when absent or malformed.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Rejections listed in a stream's summary; the count covers all of them.
const MAX_REPORTED_REJECTIONS: usize = 100;

fn incoming(events: Vec<pb::Event>) -> Vec<IncomingEvent> {
    events
        .into_iter()
        .map(|e| IncomingEvent {
            user_id: e.user_id,
            item_id: e.item_id,
            kind: event_kind(e.r#type),
            timestamp_ms: e.timestamp_ms,
            event_id: e.event_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let parse = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            grpc_timeout(&m)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999u"), Some(Duration::from_micros(99_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits");
        assert_eq!(parse("m"), None);
        assert_eq!(parse("10x"), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
