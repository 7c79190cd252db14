//! Snapshots: the whole index (items, tombstones, frozen graph) in one checksummed file, so
//! a restart loads it and replays only the log after it instead of rebuilding the graph.
//!
//! File `snapshot-<seq>.tsnap`: the magic `TNDMSNP1`, a payload, and the CRC32 of the
//! payload. Written to a temporary name, fsynced, then renamed: a crash leaves either the
//! old set of snapshots or the new one. A file that fails its checksum or does not parse is
//! skipped with a warning and the next older one is tried.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tandem_catalog::CatalogParts;

use crate::RetrievalError;
use crate::graph::GraphParts;
use crate::space::Metric;
use tandem_storage::checksum;
use tandem_storage::codec::{Reader, Writer};

const MAGIC: &[u8; 8] = b"TNDMSNP1";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".tsnap";
/// Snapshots kept: the newest and one to fall back to.
const KEEP: usize = 2;

/// Everything an index needs to come back without a rebuild.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotData {
    /// Last write-ahead log sequence number the snapshot contains.
    pub wal_seq: u64,
    pub metric: Metric,
    /// Every row, tombstoned ones included, in row order.
    pub items: CatalogParts,
    pub deleted: Vec<u8>,
    pub graph: GraphParts,
    /// Rows of the mutable segments, indexed again at load.
    pub unindexed: Vec<u32>,
}

fn encode(d: &SnapshotData) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(d.wal_seq);
    w.str(d.metric.as_str());
    let i = &d.items;
    w.u32(i.dim as u32);
    w.strs(&i.item_ids);
    w.f32s(&i.embeddings);
    w.strs(&i.categories);
    w.u32s(&i.category_codes);
    w.f32s(&i.price);
    w.bytes(&i.in_stock.iter().map(|b| u8::from(*b)).collect::<Vec<_>>());
    w.f32s(&i.popularity);
    w.bytes(&d.deleted);
    let g = &d.graph;
    w.u32s(&g.rows);
    w.u32s(&g.links0);
    w.u32(g.max_links0);
    w.u32s(&g.upper);
    w.u32s(&g.upper_start);
    w.u32(g.max_links);
    w.bytes(&g.levels);
    w.u32(g.entry);
    w.u8(g.max_level);
    w.u32s(&d.unindexed);
    w.0
}

fn decode(payload: &[u8]) -> Option<SnapshotData> {
    let mut r = Reader::new(payload);
    let wal_seq = r.u64()?;
    let metric = r.string()?.parse().ok()?;
    let dim = r.u32()? as usize;
    let items = CatalogParts {
        item_ids: r.strs()?,
        embeddings: r.f32s()?,
        dim,
        categories: r.strs()?,
        category_codes: r.u32s()?,
        price: r.f32s()?,
        in_stock: r.bytes()?.into_iter().map(|b| b != 0).collect(),
        popularity: r.f32s()?,
    };
    let deleted = r.bytes()?;
    let graph = GraphParts {
        rows: r.u32s()?,
        links0: r.u32s()?,
        max_links0: r.u32()?,
        upper: r.u32s()?,
        upper_start: r.u32s()?,
        max_links: r.u32()?,
        levels: r.bytes()?,
        entry: r.u32()?,
        max_level: r.u8()?,
    };
    let unindexed = r.u32s()?;
    if !r.is_empty() || deleted.len() != items.item_ids.len() {
        return None;
    }
    Some(SnapshotData {
        wal_seq,
        metric,
        items,
        deleted,
        graph,
        unindexed,
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RetrievalError + '_ {
    move |source| RetrievalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a snapshot into `dir` and drops all but the newest two.
pub(crate) fn write(dir: &Path, data: &SnapshotData) -> Result<PathBuf, RetrievalError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let payload = encode(data);
    let path = dir.join(format!("{PREFIX}{:020}{SUFFIX}", data.wal_seq));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(MAGIC).map_err(io(&tmp))?;
        f.write_all(&payload).map_err(io(&tmp))?;
        f.write_all(&checksum(&payload).to_le_bytes())
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    for old in list(dir).into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// Snapshot files in `dir`, newest first.
pub(crate) fn list(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    found.reverse();
    found
}

/// The log sequence a snapshot file holds, from its name.
pub(crate) fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// The log may drop batches up to this sequence: the oldest kept snapshot holds them, so a
/// damaged newest snapshot still has an older one plus a complete log after it. `None` while
/// fewer than two snapshots exist.
pub(crate) fn log_needed_after(dir: &Path) -> Option<u64> {
    list(dir).get(KEEP - 1).and_then(|p| seq_of(p))
}

/// Reads and verifies one snapshot file.
pub(crate) fn read(path: &Path) -> Result<SnapshotData, RetrievalError> {
    let corrupt = |reason: &str| RetrievalError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = std::fs::read(path).map_err(io(path))?;
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a tandem snapshot (bad magic or truncated)"));
    }
    let (payload, crc) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if checksum(payload) != crc {
        return Err(corrupt("checksum mismatch (truncated or damaged)"));
    }
    decode(payload).ok_or_else(|| corrupt("checksum matches but the contents do not parse"))
}
