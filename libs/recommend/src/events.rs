//! Event intake: a batch is validated whole, then applied.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tandem_catalog::Catalog;
use tandem_personalization::{EventKind, UserEvent};

use crate::RecommendError;
use crate::pipeline::MAX_EVENTS_PER_BATCH;

/// An event as a client sends it; `kind` is `None` when the type was unspecified.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub user_id: String,
    pub item_id: String,
    pub kind: Option<EventKind>,
    /// Milliseconds since the epoch; 0 means now.
    pub timestamp_ms: i64,
}

/// Events may be at most this far in the future (client clock skew).
const MAX_FUTURE_MS: i64 = 24 * 3_600_000;

pub(crate) fn validate(
    catalog: &Catalog,
    events: &[IncomingEvent],
) -> Result<HashMap<String, Vec<UserEvent>>, RecommendError> {
    if events.len() > MAX_EVENTS_PER_BATCH {
        return Err(RecommendError::invalid(
            "events",
            format!(
                "at most {MAX_EVENTS_PER_BATCH} per batch, got {}",
                events.len()
            ),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut by_user: HashMap<String, Vec<UserEvent>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.user_id.is_empty() {
            return Err(RecommendError::invalid(
                format!("events[{i}].user_id"),
                "must not be empty",
            ));
        }
        let item = catalog.idx_of(&e.item_id).ok_or_else(|| {
            RecommendError::invalid(
                format!("events[{i}].item_id"),
                format!("unknown item `{}`", e.item_id),
            )
        })?;
        let kind = e.kind.ok_or_else(|| {
            RecommendError::invalid(
                format!("events[{i}].type"),
                "must be VIEW, CLICK, ADD_TO_CART or PURCHASE",
            )
        })?;
        let timestamp_ms = match e.timestamp_ms {
            0 => now,
            t if t < 0 => {
                return Err(RecommendError::invalid(
                    format!("events[{i}].timestamp_ms"),
                    "must not be negative",
                ));
            }
            t if t > now + MAX_FUTURE_MS => {
                return Err(RecommendError::invalid(
                    format!("events[{i}].timestamp_ms"),
                    format!("{t} is more than a day in the future"),
                ));
            }
            t => t,
        };
        by_user
            .entry(e.user_id.clone())
            .or_default()
            .push(UserEvent {
                item,
                kind,
                timestamp_ms,
            });
    }
    Ok(by_user)
}
