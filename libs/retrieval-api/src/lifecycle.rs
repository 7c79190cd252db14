//! The index's life: restored from its newest snapshot plus the write-ahead log, or built
//! from the catalog; then snapshotted in the background.

use std::path::Path;
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_retrieval::{Index, IndexParams};

use crate::StateArgs;

/// Opens the index: from the newest valid snapshot in `state_dir` plus the log after it, or
/// else reads the catalog and builds it (blocking; seconds for 50k items).
pub fn load_index(
    items: &Path,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    if let Some(index) = restore(params, state)? {
        return Ok(index);
    }
    let mut catalog = Catalog::open(items)?;
    tracing::info!(items = catalog.len(), dim = catalog.dim(), path = %items.display(), "loaded catalog");
    if let Some(shard) = params.shard {
        let rows: Vec<u32> = (0..catalog.len() as u32)
            .filter(|&r| shard.owns(catalog.item_id(r)))
            .collect();
        catalog = catalog.select(&rows);
        tracing::info!(%shard, items = catalog.len(), "serving one shard of the catalog");
    }
    build(Arc::new(catalog), params, state)
}

/// As `load_index` with the catalog already loaded (the embedded gateway shares it).
pub fn open_index(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    match restore(params, state)? {
        Some(index) => Ok(index),
        None => build(catalog, params, state),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn restore(params: IndexParams, state: Option<&StateArgs>) -> Result<Option<Arc<Index>>, BoxError> {
    let Some(state) = state else {
        return Ok(None);
    };
    std::fs::create_dir_all(&state.dir)
        .map_err(|e| format!("cannot create --state-dir {}: {e}", state.dir.display()))?;
    let Some((index, seq)) = Index::from_snapshots(&state.dir.join(SNAPSHOT_DIR), params) else {
        return Ok(None);
    };
    index.attach_wal_after(&state.dir.join(WAL_FILE), seq)?;
    let index = Arc::new(index);
    spawn_snapshots(&index, state, seq);
    Ok(Some(index))
}

fn build(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    let index = Index::build(catalog, params)?;
    let Some(state) = state else {
        tracing::warn!("no --state-dir: the index is read-only");
        return Ok(Arc::new(index));
    };
    index.attach_wal(&state.dir.join(WAL_FILE))?;
    let index = Arc::new(index);
    // A first snapshot right away: the next start loads it instead of rebuilding.
    spawn_snapshots(&index, state, u64::MAX);
    Ok(index)
}

/// Snapshots in the background: now if `last` is `u64::MAX`, then every interval when writes
/// happened since the last one.
fn spawn_snapshots(index: &Arc<Index>, state: &StateArgs, mut last: u64) {
    let (index, dir, every) = (
        Arc::downgrade(index),
        state.dir.join(SNAPSHOT_DIR),
        state.snapshot_interval,
    );
    let spawned = std::thread::Builder::new()
        .name("index-snapshots".into())
        .spawn(move || {
            loop {
                if last != u64::MAX {
                    if every.is_zero() {
                        return;
                    }
                    std::thread::sleep(every);
                }
                let Some(index) = index.upgrade() else {
                    return;
                };
                let seq = index.applied_seq();
                if seq != last {
                    match index.snapshot(&dir) {
                        Ok(_) => last = seq,
                        Err(e) => {
                            tracing::error!(error = %e, "snapshot failed; the log still holds every write");
                            if last == u64::MAX {
                                last = 0;
                            }
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the snapshot thread");
    }
}

/// Subdirectory of the state directory holding snapshots.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The write-ahead log's file name inside the state directory.
pub const WAL_FILE: &str = "retrieval.wal";
