//! The index's life: restored from its newest snapshot plus the write-ahead log, or built
//! from the catalog; then snapshotted in the background.

use std::path::Path;
use std::sync::Arc;

use tandem_catalog::{Catalog, CatalogMemory};
use tandem_retrieval::{Index, IndexParams};

use crate::StateArgs;

/// Opens the index: from the newest valid snapshot in `state_dir` plus the log after it, or
/// else reads the catalog and builds it (blocking; seconds for 50k items).
pub fn load_index(
    items: &Path,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    // The service reads the catalog only to build: a restored index holds the only copy.
    if let Some(index) = restore(None, params, state)? {
        spawn_metrics(&index);
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
    let index = build(Arc::new(catalog), params, state)?;
    spawn_metrics(&index);
    Ok(index)
}

/// Heap bytes by component, as `tandem_memory_bytes{component}` reports them. The catalog
/// never changes under an index, so its part (a walk over every id) is measured once.
fn memory_components(index: &Index, c: &CatalogMemory) -> [(&'static str, usize); 10] {
    let i = index.memory();
    [
        ("index_vectors", i.vectors),
        ("index_links", i.links),
        ("index_rows", i.rows),
        ("index_appended", i.appended),
        ("index_fresh_estimate", i.fresh_estimate),
        ("catalog_embeddings", c.embeddings),
        ("catalog_ids", c.item_ids),
        ("catalog_id_lookup", c.id_lookup),
        ("catalog_attributes", c.attributes),
        ("catalog_related", c.related),
    ]
}

/// One line at start-up: what the index and catalog hold, so a resident set can be told
/// apart from them (the rest is ONNX Runtime, user state and the runtime).
fn log_memory(index: &Index, catalog: &CatalogMemory) {
    let mib = |b: usize| (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
    let parts = memory_components(index, catalog);
    let total: usize = parts.iter().map(|(_, b)| b).sum();
    let listed = parts
        .iter()
        .map(|(name, bytes)| format!("{name}={}", mib(*bytes)))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        total_mib = mib(total),
        bytes_per_item = total / index.live_items().max(1),
        "index and catalog memory (MiB): {listed}"
    );
}

/// As `load_index` with the catalog already loaded (the embedded gateway shares it).
pub fn open_index(
    catalog: Arc<Catalog>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Arc<Index>, BoxError> {
    let index = match restore(Some(&catalog), params, state)? {
        Some(index) => index,
        None => build(catalog, params, state)?,
    };
    spawn_metrics(&index);
    Ok(index)
}

/// How often the index's gauges are refreshed (Prometheus scrapes every 15-60 s).
const METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `tandem_index_*` gauges current while the index lives: live rows, tombstones, rows
/// in the fresh segments, and the age of the last snapshot (absent until one is written);
/// and `tandem_memory_bytes` by component.
fn spawn_metrics(index: &Arc<Index>) {
    let catalog_memory = index.catalog().memory();
    log_memory(index, &catalog_memory);
    let index = Arc::downgrade(index);
    let spawned = std::thread::Builder::new()
        .name("index-metrics".into())
        .spawn(move || {
            while let Some(index) = index.upgrade() {
                let counts = index.counts();
                let memory = memory_components(&index, &catalog_memory);
                drop(index);
                for (component, bytes) in memory {
                    metrics::gauge!("tandem_memory_bytes", "component" => component)
                        .set(bytes as f64);
                }
                metrics::gauge!("tandem_index_rows").set(counts.live as f64);
                metrics::gauge!("tandem_index_tombstones").set(counts.tombstones as f64);
                metrics::gauge!("tandem_index_fresh_rows").set(counts.fresh as f64);
                if counts.last_snapshot_unix_ms > 0 {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let age = now_ms.saturating_sub(counts.last_snapshot_unix_ms);
                    metrics::gauge!("tandem_index_snapshot_age_seconds").set(age as f64 / 1e3);
                }
                std::thread::sleep(METRICS_INTERVAL);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the index metrics thread");
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `open`: the catalog the caller holds, which a snapshot of exactly its rows shares.
fn restore(
    open: Option<&Arc<Catalog>>,
    params: IndexParams,
    state: Option<&StateArgs>,
) -> Result<Option<Arc<Index>>, BoxError> {
    let Some(state) = state else {
        return Ok(None);
    };
    std::fs::create_dir_all(&state.dir)
        .map_err(|e| format!("cannot create --state-dir {}: {e}", state.dir.display()))?;
    let Some((index, seq)) = Index::from_snapshots(&state.dir.join(SNAPSHOT_DIR), params, open)
    else {
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
