//! Write-ahead log of upserts and deletes: a batch is on disk (written and fsynced) before it
//! is applied and acknowledged, and replayed at start-up.
//!
//! File: the magic `TNDMWAL1`, the sequence number before the first record (u64: after a
//! snapshot drops old records, numbering goes on from there), then records
//! `[len u32][crc32 u32][payload]`, little-endian.
//! A payload is one whole request (`seq u64`, `count u32`, operations), so a batch torn by a
//! crash is dropped whole: it was never acknowledged. Replay stops at the first short or
//! corrupt record and truncates the file there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::RetrievalError;
use crate::rows::ItemUpdate;
use tandem_storage::codec::{Reader, Writer};
use tandem_storage::{frame, next_record, sync_dir};

const MAGIC: &[u8; 8] = b"TNDMWAL1";
const HEADER: usize = 16;
const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;
/// A record larger than this is corruption, not data (a batch is at most a few MB).
const MAX_RECORD: usize = 256 << 20;

/// One acknowledged write request.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    Upsert(Vec<ItemUpdate>),
    Delete(Vec<String>),
}

#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    next_seq: u64,
    /// Sequence before the first record still in the file.
    base_seq: u64,
}

impl Wal {
    /// Opens (or creates) the log and returns what it holds, oldest first, with the sequence
    /// number of each batch.
    pub fn open(path: &Path) -> Result<(Self, Vec<(u64, Mutation)>), RetrievalError> {
        let io = |source| RetrievalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.is_empty() {
            file.write_all(&header(0)).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            return Ok((
                Self {
                    path: path.to_owned(),
                    file,
                    next_seq: 1,
                    base_seq: 0,
                },
                Vec::new(),
            ));
        }
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(RetrievalError::Corrupt {
                path: path.to_owned(),
                reason: "not a tandem write-ahead log (bad magic or header)".into(),
            });
        }
        let mut base = [0u8; 8];
        base.copy_from_slice(&bytes[MAGIC.len()..HEADER]);
        let mut pos = HEADER;
        let mut batches = Vec::new();
        let base_seq = u64::from_le_bytes(base);
        let mut next_seq = base_seq + 1;
        while let Some((payload, end)) = next_record(&bytes, pos, MAX_RECORD) {
            let Some((seq, mutation)) = decode(payload) else {
                break;
            };
            next_seq = seq + 1;
            batches.push((seq, mutation));
            pos = end;
        }
        if pos < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - pos,
                kept_batches = batches.len(),
                "write-ahead log ends in a torn or corrupt record (a write that was never \
                 acknowledged); truncating it"
            );
            file.set_len(pos as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((
            Self {
                path: path.to_owned(),
                file,
                next_seq,
                base_seq,
            },
            batches,
        ))
    }

    /// Appends one batch and fsyncs; returns its sequence number.
    pub fn append(&mut self, mutation: &Mutation) -> Result<u64, RetrievalError> {
        let seq = self.next_seq;
        let payload = encode(seq, mutation);
        let mut record = Vec::with_capacity(payload.len() + 8);
        frame(&mut record, &payload);
        let io = |source| RetrievalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&record).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Drops the batches up to `seq` (now in a snapshot), keeping later ones: the kept
    /// records are written to a new file, fsynced and renamed over the log, so a crash leaves
    /// either the old log or the new one, both complete.
    pub fn truncate_through(&mut self, seq: u64) -> Result<usize, RetrievalError> {
        let io = |source| RetrievalError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = std::fs::read(&self.path).map_err(io)?;
        let base = seq.min(self.next_seq - 1).max(self.base_seq);
        let mut kept = header(base).to_vec();
        let mut dropped = 0;
        let mut pos = HEADER;
        while let Some((payload, end)) = next_record(&bytes, pos, MAX_RECORD) {
            let record_seq = payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            if record_seq > seq {
                kept.extend_from_slice(&bytes[pos..end]);
            } else {
                dropped += 1;
            }
            pos = end;
        }
        if dropped == 0 {
            return Ok(0);
        }
        let tmp = self.path.with_extension("wal.tmp");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&kept).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir);
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.base_seq = base;
        Ok(dropped)
    }

    /// Sequence before the first batch the file still holds (0 if never compacted).
    pub fn base_seq(&self) -> u64 {
        self.base_seq
    }

    /// Sequence number the next batch will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

fn header(base_seq: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()..].copy_from_slice(&base_seq.to_le_bytes());
    h
}

fn encode(seq: u64, mutation: &Mutation) -> Vec<u8> {
    let mut out = Writer::default();
    out.u64(seq);
    match mutation {
        Mutation::Upsert(items) => {
            out.u32(items.len() as u32);
            for item in items {
                out.u8(OP_UPSERT);
                out.str(&item.item_id);
                out.u32(item.embedding.len() as u32);
                for v in &item.embedding {
                    out.f32(*v);
                }
                out.str(&item.category);
                out.f32(item.price);
                out.u8(u8::from(item.in_stock));
                out.f32(item.popularity);
            }
        }
        Mutation::Delete(ids) => {
            out.u32(ids.len() as u32);
            for id in ids {
                out.u8(OP_DELETE);
                out.str(id);
            }
        }
    }
    out.0
}

fn decode(payload: &[u8]) -> Option<(u64, Mutation)> {
    let mut r = Reader::new(payload);
    let seq = r.u64()?;
    let count = r.u32()? as usize;
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for _ in 0..count {
        match r.u8()? {
            OP_UPSERT => {
                let item_id = r.string()?;
                let dim = r.u32()? as usize;
                let embedding = (0..dim).map(|_| r.f32()).collect::<Option<Vec<_>>>()?;
                upserts.push(ItemUpdate {
                    item_id,
                    embedding,
                    category: r.string()?,
                    price: r.f32()?,
                    in_stock: r.u8()? != 0,
                    popularity: r.f32()?,
                });
            }
            OP_DELETE => deletes.push(r.string()?),
            _ => return None,
        }
    }
    if !r.is_empty() || (!upserts.is_empty() && !deletes.is_empty()) {
        return None;
    }
    Some((
        seq,
        if deletes.is_empty() {
            Mutation::Upsert(upserts)
        } else {
            Mutation::Delete(deletes)
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> ItemUpdate {
        ItemUpdate {
            item_id: id.into(),
            embedding: vec![0.5, -1.25, 3.0],
            category: "shoes".into(),
            price: 9.5,
            in_stock: true,
            popularity: 2.0,
        }
    }

    #[test]
    fn replays_what_was_appended_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("retrieval.wal");
        let batches = vec![
            Mutation::Upsert(vec![item("a"), item("b")]),
            Mutation::Delete(vec!["a".into()]),
        ];
        {
            let (mut wal, old) = Wal::open(&path).expect("open");
            assert!(old.is_empty());
            for b in &batches {
                wal.append(b).expect("append");
            }
        }
        // A crash in the middle of a third record.
        let full = std::fs::read(&path).expect("read");
        let mut torn = full.clone();
        torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
        std::fs::write(&path, &torn).expect("write");

        let (mut wal, replayed) = Wal::open(&path).expect("reopen");
        assert_eq!(
            replayed,
            vec![(1, batches[0].clone()), (2, batches[1].clone())]
        );
        assert_eq!(std::fs::read(&path).expect("read").len(), full.len());
        assert_eq!(wal.append(&batches[1]).expect("append"), 3);

        // Dropping what a snapshot holds keeps the rest and the numbering, also when
        // nothing is left.
        assert_eq!(wal.truncate_through(1).expect("truncate"), 1);
        assert_eq!(wal.append(&batches[0]).expect("append"), 4);
        drop(wal);
        let (mut wal, replayed) = Wal::open(&path).expect("reopen");
        assert_eq!(
            replayed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(wal.truncate_through(4).expect("truncate"), 3);
        drop(wal);
        let (mut wal, replayed) = Wal::open(&path).expect("reopen");
        assert!(replayed.is_empty());
        assert_eq!(wal.next_seq(), 5);
        wal.append(&batches[0]).expect("append");
        wal.append(&batches[1]).expect("append");
        drop(wal);

        // A flipped bit fails the checksum: replay keeps what precedes it.
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let (_, replayed) = Wal::open(&path).expect("reopen");
        assert_eq!(
            replayed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![5]
        );
    }
}
