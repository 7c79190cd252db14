//! One log record is one accepted batch: `seq u64, count u32`, then per event `event_id`,
//! `user_id`, `item_id` (strings: they outlive a catalog's row numbers), type code `u8`
//! (the numbers of `tandem.v1.EventType`) and `timestamp_ms i64`; or an erasure:
//! `seq u64`, the count `u32::MAX`, then the `user_id` forgotten.

use tandem_personalization::EventKind;
use tandem_storage::codec::{Reader, Writer};

/// An accepted event as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The producer's id for retries; empty when it sent none.
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    pub timestamp_ms: i64,
}

/// What one log record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    Events(Vec<LoggedEvent>),
    /// `ForgetUser`: what the user did before this point is erased; a replay drops their
    /// state here, so nothing before it comes back.
    ForgetUser(String),
}

/// The count that marks an erasure record.
const FORGET: u32 = u32::MAX;

pub fn kind_code(kind: EventKind) -> u8 {
    kind.code()
}

pub fn kind_from_code(code: u8) -> Option<EventKind> {
    EventKind::from_code(code)
}

pub(crate) fn encode_record(seq: u64, record: &Logged, out: &mut Writer) {
    match record {
        Logged::Events(events) => encode(seq, events, out),
        Logged::ForgetUser(user) => {
            out.u64(seq);
            out.u32(FORGET);
            out.str(user);
        }
    }
}

pub(crate) fn encode(seq: u64, events: &[LoggedEvent], out: &mut Writer) {
    out.u64(seq);
    out.u32(events.len() as u32);
    for e in events {
        out.str(&e.event_id);
        out.str(&e.user_id);
        out.str(&e.item_id);
        out.u8(kind_code(e.kind));
        out.i64(e.timestamp_ms);
    }
}

pub(crate) fn decode_record(payload: &[u8]) -> Option<(u64, Logged)> {
    let mut r = Reader::new(payload);
    let seq = r.u64()?;
    if r.u32()? == FORGET {
        let user = r.string()?;
        return r.is_empty().then_some((seq, Logged::ForgetUser(user)));
    }
    decode(payload).map(|(seq, events)| (seq, Logged::Events(events)))
}

pub(crate) fn decode(payload: &[u8]) -> Option<(u64, Vec<LoggedEvent>)> {
    let mut r = Reader::new(payload);
    let seq = r.u64()?;
    let count = r.u32()? as usize;
    // Each event takes at least 21 bytes: a count beyond that is damage, not a huge batch.
    if count > payload.len() / 21 + 1 {
        return None;
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(LoggedEvent {
            event_id: r.string()?,
            user_id: r.string()?,
            item_id: r.string()?,
            kind: kind_from_code(r.u8()?)?,
            timestamp_ms: r.i64()?,
        });
    }
    r.is_empty().then_some((seq, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let events = vec![
            LoggedEvent {
                event_id: "e-1".into(),
                user_id: "u".into(),
                item_id: "item-7".into(),
                kind: EventKind::AddToCart,
                timestamp_ms: 1_788_220_800_123,
            },
            LoggedEvent {
                event_id: String::new(),
                user_id: "ü".into(),
                item_id: "i".into(),
                kind: EventKind::Purchase,
                timestamp_ms: 5,
            },
        ];
        let mut w = Writer::default();
        encode(42, &events, &mut w);
        assert_eq!(decode(&w.0), Some((42, events.clone())));
        assert_eq!(decode(&w.0[..w.0.len() - 1]), None, "short");
        let mut bad_kind = w.0.clone();
        let kind_at = 8 + 4 + (4 + 3) + (4 + 1) + (4 + 6);
        bad_kind[kind_at] = 9;
        assert_eq!(decode(&bad_kind), None, "unknown type code");
        assert_eq!(
            decode_record(&w.0),
            Some((42, Logged::Events(events.clone())))
        );
        let mut forget = Writer::default();
        encode_record(43, &Logged::ForgetUser("ü-7".into()), &mut forget);
        assert_eq!(
            decode_record(&forget.0),
            Some((43, Logged::ForgetUser("ü-7".into())))
        );
        assert_eq!(decode_record(&forget.0[..forget.0.len() - 1]), None);
    }
}
