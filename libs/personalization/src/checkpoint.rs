//! User state as checkpoint records, so a restart loads it and replays only the event log's
//! tail. Items are written as catalog ids (a table in the first record), not row numbers: the
//! catalog a restart opens may have moved or dropped items, which are then left out.
//!
//! Records (each framed by the caller with [`tandem_storage::frame`]) start with a tag byte:
//! the item table, users in chunks, then trending. Other tags belong to the caller.

use std::sync::Arc;

use tandem_catalog::{Catalog, ItemIdx};
use tandem_storage::codec::{Reader, Writer};

use crate::history::{EventKind, Purchases, Shown, UserEvent, UserHistory};
use crate::trending::Trending;

const TAG_ITEMS: u8 = 1;
const TAG_USERS: u8 = 2;
const TAG_TRENDING: u8 = 3;
/// Users per record: keeps each record a few MB at most.
const USERS_PER_RECORD: usize = 4096;

/// Everything an [`crate::InMemoryState`] holds at one moment; histories are shared with the
/// live store (copy on write), so taking one costs the id strings and reference counts.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    pub users: Vec<(String, Arc<UserHistory>)>,
    pub(crate) trending: Option<Trending>,
}

impl StateSnapshot {
    /// Appends the snapshot's records (payloads, unframed) to `records`.
    pub fn encode(&self, catalog: &Catalog, records: &mut Vec<Vec<u8>>) {
        let mut w = Writer::default();
        w.u8(TAG_ITEMS);
        w.u64(catalog.len() as u64);
        for i in 0..catalog.len() {
            w.str(catalog.item_id(i as ItemIdx));
        }
        records.push(w.0);
        for chunk in self.users.chunks(USERS_PER_RECORD) {
            let mut w = Writer::default();
            w.u8(TAG_USERS);
            w.u32(chunk.len() as u32);
            for (id, h) in chunk {
                w.str(id);
                w.u32(h.recent.len() as u32);
                for e in &h.recent {
                    w.u32(e.item);
                    w.u8(e.kind.code());
                    w.i64(e.timestamp_ms);
                }
                w.u32(h.purchased.len() as u32);
                for (item, p) in &h.purchased {
                    w.u32(*item);
                    w.u32(p.count);
                    w.i64(p.last_ms);
                }
                w.u32(h.shown.len() as u32);
                for (item, s) in &h.shown {
                    w.u32(*item);
                    w.u32(s.times);
                    w.i64(s.last_ms);
                }
            }
            records.push(w.0);
        }
        if let Some(t) = &self.trending {
            let mut w = Writer::default();
            w.u8(TAG_TRENDING);
            t.encode(&mut w);
            records.push(w.0);
        }
    }
}

/// Builds a [`StateSnapshot`] from records, in the order [`StateSnapshot::encode`] wrote them.
#[derive(Debug)]
pub struct SnapshotDecoder<'a> {
    catalog: &'a Catalog,
    /// Table position → this catalog's row (`None`: the item is gone).
    items: Vec<Option<ItemIdx>>,
    snapshot: StateSnapshot,
}

impl<'a> SnapshotDecoder<'a> {
    pub fn new(catalog: &'a Catalog) -> Self {
        Self {
            catalog,
            items: Vec::new(),
            snapshot: StateSnapshot {
                users: Vec::new(),
                trending: None,
            },
        }
    }

    /// Takes one record: `Ok(true)` if it was one of ours, `Ok(false)` if its tag is the
    /// caller's, `Err` when it is damaged.
    pub fn take(&mut self, record: &[u8]) -> Result<bool, String> {
        let mut r = Reader::new(record);
        let damaged = |what: &str| format!("damaged {what} record");
        match r.u8() {
            Some(TAG_ITEMS) => {
                let n = r.u64().ok_or_else(|| damaged("item table"))?;
                self.items.clear();
                for _ in 0..n {
                    let id = r.string().ok_or_else(|| damaged("item table"))?;
                    self.items.push(self.catalog.idx_of(&id));
                }
            }
            Some(TAG_USERS) => self.users(&mut r).ok_or_else(|| damaged("user"))?,
            Some(TAG_TRENDING) => {
                let mut t = Trending::decode(&mut r).ok_or_else(|| damaged("trending"))?;
                t.retain_items(|old| self.item(old));
                self.snapshot.trending = Some(t);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn item(&self, table_pos: ItemIdx) -> Option<ItemIdx> {
        self.items.get(table_pos as usize).copied().flatten()
    }

    fn users(&mut self, r: &mut Reader) -> Option<()> {
        let n = r.u32()?;
        for _ in 0..n {
            let id = r.string()?;
            let mut h = UserHistory::default();
            for _ in 0..r.u32()? {
                let (item, kind, timestamp_ms) = (r.u32()?, r.u8()?, r.i64()?);
                if let Some(item) = self.item(item) {
                    h.recent.push_back(UserEvent {
                        item,
                        kind: EventKind::from_code(kind)?,
                        timestamp_ms,
                    });
                }
            }
            for _ in 0..r.u32()? {
                let (item, count, last_ms) = (r.u32()?, r.u32()?, r.i64()?);
                if let Some(item) = self.item(item) {
                    h.purchased.insert(item, Purchases { count, last_ms });
                }
            }
            for _ in 0..r.u32()? {
                let (item, times, last_ms) = (r.u32()?, r.u32()?, r.i64()?);
                if let Some(item) = self.item(item) {
                    h.shown.insert(item, Shown { times, last_ms });
                }
            }
            self.snapshot.users.push((id, Arc::new(h)));
        }
        Some(())
    }

    pub fn finish(self) -> StateSnapshot {
        self.snapshot
    }
}
