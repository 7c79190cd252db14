//! Snapshots: restart from the newest valid snapshot plus the log after it; a damaged
//! snapshot is detected and an older one (or a rebuild) is used instead.

use std::path::Path;
use std::sync::Arc;

use tandem_catalog::Catalog;
use tandem_catalog::testing::{SplitMix, synthetic_batch, write_parquet};
use tandem_retrieval::{Index, IndexParams, ItemFilter, ItemUpdate, SearchParams};

const DIM: usize = 16;

fn far(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    let d: Vec<f32> = (0..DIM).map(|_| rng.normal()).collect();
    let n = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    d.iter().map(|v| 30.0 * v / n).collect()
}

fn item(id: &str, seed: u64) -> ItemUpdate {
    ItemUpdate {
        item_id: id.into(),
        embedding: far(seed),
        category: "new".into(),
        price: 2.0,
        in_stock: true,
        popularity: 1.0,
    }
}

/// Every live item with its exact score for a few queries: the observable state.
fn state(index: &Index) -> Vec<Vec<(String, i64)>> {
    (0..8)
        .map(|s| {
            index
                .exact(&far(s), &ItemFilter::default(), 5000)
                .expect("exact")
                .iter()
                .map(|c| {
                    let id = index.item_id(c.idx).expect("id");
                    (id, (c.score * 1000.0).round() as i64)
                })
                .collect()
        })
        .collect()
}

fn restore(dir: &Path) -> Option<Arc<Index>> {
    let (index, seq) = Index::from_snapshots(&dir.join("snapshots"), IndexParams::default(), None)?;
    index
        .attach_wal_after(&dir.join("r.wal"), seq)
        .expect("replay");
    Some(Arc::new(index))
}

fn setup(dir: &Path) -> (Arc<Catalog>, Arc<Index>) {
    let path = dir.join("items.parquet");
    write_parquet(&synthetic_batch(1500, DIM, 8, 2), &path).expect("write");
    let catalog = Arc::new(Catalog::open(&path).expect("open"));
    let index = Index::build(catalog.clone(), IndexParams::default()).expect("build");
    index.attach_wal(&dir.join("r.wal")).expect("wal");
    (catalog, Arc::new(index))
}

#[test]
fn restart_from_snapshot_plus_log_restores_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, index) = setup(dir.path());
    index
        .upsert(vec![item("a", 100), item("b", 101)])
        .expect("upsert");
    index
        .delete(vec![catalog.item_id(3).to_owned(), "a".into()])
        .expect("delete");
    // Replace a catalog item: its old row is a tombstone inside the snapshot.
    index
        .upsert(vec![item(catalog.item_id(9), 102)])
        .expect("upsert");
    index
        .snapshot(&dir.path().join("snapshots"))
        .expect("snapshot");
    // Written after the snapshot: only in the log.
    index.upsert(vec![item("c", 103)]).expect("upsert");
    index.delete(vec!["b".into()]).expect("delete");
    let before = state(&index);
    drop(index);

    let restored = restore(dir.path()).expect("a snapshot loads");
    assert_eq!(state(&restored), before);
    let top = restored
        .search(
            &far(103),
            &ItemFilter::default(),
            SearchParams {
                k: 1,
                ef_search: None,
            },
        )
        .expect("search");
    assert_eq!(restored.item_id(top[0].idx).as_deref(), Some("c"));
    let top = restored
        .search(
            &far(102),
            &ItemFilter::default(),
            SearchParams {
                k: 1,
                ef_search: None,
            },
        )
        .expect("search");
    assert_eq!(
        restored.item_id(top[0].idx).as_deref(),
        Some(catalog.item_id(9))
    );
    // Writes go on, numbered after the log's last batch.
    assert_eq!(
        restored.delete(vec!["c".into()]).expect("delete").sequence,
        6
    );
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_previous_one_then_to_a_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = dir.path().join("snapshots");
    let (_, index) = setup(dir.path());
    index.upsert(vec![item("first", 200)]).expect("upsert");
    let older = index.snapshot(&snapshots).expect("snapshot");
    index.upsert(vec![item("second", 201)]).expect("upsert");
    let newer = index.snapshot(&snapshots).expect("snapshot");
    let before = state(&index);
    drop(index);

    // Truncated newest snapshot: the older one plus the log give the same state.
    let bytes = std::fs::read(&newer).expect("read");
    std::fs::write(&newer, &bytes[..bytes.len() / 2]).expect("truncate");
    let (_, seq) = Index::from_snapshots(&snapshots, IndexParams::default(), None).expect("older");
    assert_eq!(seq, 1);
    assert_eq!(state(&restore(dir.path()).expect("restore")), before);

    // A flipped byte in the older one too: no snapshot is usable, the caller rebuilds.
    let mut bytes = std::fs::read(&older).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&older, &bytes).expect("damage");
    assert!(Index::from_snapshots(&snapshots, IndexParams::default(), None).is_none());
}

#[test]
fn the_log_keeps_what_the_older_snapshot_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = dir.path().join("snapshots");
    let (_, index) = setup(dir.path());
    let wal_len = || {
        std::fs::metadata(dir.path().join("r.wal"))
            .expect("wal")
            .len()
    };
    for round in 0..4u64 {
        index
            .upsert(vec![item(&format!("r{round}"), 300 + round)])
            .expect("upsert");
        index.snapshot(&snapshots).expect("snapshot");
    }
    // Four snapshots taken, two kept; the log starts after the older kept one (seq 3).
    let kept: Vec<_> = std::fs::read_dir(&snapshots)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tsnap"))
        .collect();
    assert_eq!(kept.len(), 2);
    let before = state(&index);
    let compacted = wal_len();
    drop(index);
    let (_, replayed) = tandem_retrieval::Wal::open(&dir.path().join("r.wal")).expect("wal");
    assert_eq!(
        replayed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![4]
    );
    assert!(compacted > 0);
    // Even with the newest snapshot gone, the older one plus the log is everything.
    let newest = snapshots.join(format!("snapshot-{:020}.tsnap", 4));
    std::fs::remove_file(newest).expect("remove");
    assert_eq!(state(&restore(dir.path()).expect("restore")), before);
}

#[test]
fn a_snapshot_of_the_open_catalog_shares_it_and_any_other_keeps_its_own_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = dir.path().join("snapshots");
    let (catalog, index) = setup(dir.path());
    index.snapshot(&snapshots).expect("snapshot");
    let before = state(&index);
    drop(index);
    let params = IndexParams::default();

    // No write since the build: the snapshot's items are the open catalog's rows, held once.
    let (shared, _) = Index::from_snapshots(&snapshots, params, Some(&catalog)).expect("restore");
    assert!(Arc::ptr_eq(shared.catalog(), &catalog));
    assert_eq!(state(&shared), before);
    drop(shared);

    // Another version of the items file: the index keeps the snapshot's rows, not the file's.
    let path = dir.path().join("other.parquet");
    write_parquet(&synthetic_batch(1500, DIM, 8, 3), &path).expect("write");
    let other = Arc::new(Catalog::open(&path).expect("open"));
    let (own, _) = Index::from_snapshots(&snapshots, params, Some(&other)).expect("restore");
    assert!(!Arc::ptr_eq(own.catalog(), &other));
    assert_eq!(state(&own), before);
    drop(own);

    // A snapshot after a write holds a row the file lacks: its own rows again.
    let index = restore(dir.path()).expect("restore");
    index.upsert(vec![item("new", 300)]).expect("upsert");
    std::fs::remove_dir_all(&snapshots).expect("clear");
    index.snapshot(&snapshots).expect("snapshot");
    let after = state(&index);
    drop(index);
    let (written, _) = Index::from_snapshots(&snapshots, params, Some(&catalog)).expect("restore");
    assert!(!Arc::ptr_eq(written.catalog(), &catalog));
    assert_eq!(state(&written), after);
    assert_ne!(after, before, "the upsert is in the restored state");
}
