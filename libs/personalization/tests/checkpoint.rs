//! A snapshot written as checkpoint records and read back, into the same catalog and into one
//! where items moved and one went away.

use tandem_catalog::Catalog;
use tandem_catalog::testing::{synthetic_batch, write_parquet};
use tandem_personalization::{
    EventKind, InMemoryState, SnapshotDecoder, StateLimits, TrendingConfig, UserEvent,
};

fn catalog(dir: &std::path::Path, name: &str, batch: &arrow::array::RecordBatch) -> Catalog {
    let path = dir.join(name);
    write_parquet(batch, &path).expect("write catalog");
    Catalog::open(&path).expect("open catalog")
}

fn ev(item: u32, kind: EventKind, t: i64) -> UserEvent {
    UserEvent {
        item,
        kind,
        timestamp_ms: t,
    }
}

fn round_trip(state: &InMemoryState, from: &Catalog, to: &Catalog) -> InMemoryState {
    let mut records = Vec::new();
    state.snapshot().encode(from, &mut records);
    let mut decoder = SnapshotDecoder::new(to);
    for r in &records {
        assert!(decoder.take(r).expect("intact"));
    }
    let restored = InMemoryState::new(StateLimits::default(), TrendingConfig::default());
    restored.restore(decoder.finish());
    restored
}

#[test]
fn state_survives_a_checkpoint_and_follows_items_to_their_new_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = synthetic_batch(20, 4, 3, 1);
    let before = catalog(dir.path(), "a.parquet", &batch);
    let state = InMemoryState::new(StateLimits::default(), TrendingConfig::default());
    state.record(
        "u",
        &[
            ev(1, EventKind::View, 10),
            ev(2, EventKind::Purchase, 20),
            ev(2, EventKind::Purchase, 30),
            ev(5, EventKind::Click, 40),
        ],
    );
    state.record_shown("u", &[7, 8], 50);
    for n in 0..5000 {
        state.record(&format!("user-{n}"), &[ev(n % 20, EventKind::View, 60)]);
    }

    let same = round_trip(&state, &before, &before);
    assert_eq!(same.users(), state.users());
    assert_eq!(*same.user("u"), *state.user("u"));
    assert_eq!(*same.user("user-4999"), *state.user("user-4999"));
    assert_eq!(same.trending(3, &|_| true), state.trending(3, &|_| true));

    // The next catalog lists the items in reverse and lacks item 5.
    let reversed: Vec<u32> = (0..20u32).rev().filter(|&i| i != 5).collect();
    let moved =
        arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(reversed))
            .expect("reorder");
    let after = catalog(dir.path(), "b.parquet", &moved);
    let restored = round_trip(&state, &before, &after);
    let row = |old: u32| after.idx_of(before.item_id(old)).expect("still there");
    let h = restored.user("u");
    let recent: Vec<(u32, EventKind)> = h.recent.iter().map(|e| (e.item, e.kind)).collect();
    assert_eq!(
        recent,
        [
            (row(1), EventKind::View),
            (row(2), EventKind::Purchase),
            (row(2), EventKind::Purchase)
        ],
        "item 5's click is gone with the item"
    );
    assert_eq!(h.purchased.get(&row(2)).map(|p| p.count), Some(2));
    assert_eq!(h.shown.get(&row(7)).map(|s| s.times), Some(1));
    let trending = restored.trending(20, &|_| true);
    assert_eq!(trending.len(), 19, "every item but the one gone");
    assert!(trending.iter().all(|(i, _)| *i < after.len() as u32));
}

#[test]
fn a_damaged_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = catalog(dir.path(), "a.parquet", &synthetic_batch(10, 4, 2, 1));
    let state = InMemoryState::new(StateLimits::default(), TrendingConfig::default());
    state.record("u", &[ev(1, EventKind::View, 10)]);
    let mut records = Vec::new();
    state.snapshot().encode(&cat, &mut records);
    let mut decoder = SnapshotDecoder::new(&cat);
    decoder.take(&records[0]).expect("items");
    let user = &records[1];
    assert!(decoder.take(&user[..user.len() - 3]).is_err());
    assert_eq!(decoder.take(&[200, 1, 2]), Ok(false), "not ours");
}
