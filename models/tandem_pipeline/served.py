"""Training rows from what tandem served: its served-feature log and its event log.

The gateway writes a sample of ranked answers to `--served-log-dir` as Parquet (one row per
ranked candidate, with the model's input values as `feature.<input>.<feature>` columns) and
every accepted event to `--event-log-dir/parquet/day=*/`. A served row is a positive when the
user acted on (clicked, carted or bought) that item within `window_ms` after it was served.

    python -m tandem_pipeline.served --served data/demo/state/served [--events data/demo/state/events/parquet]

prints a JSON summary; `served_training_rows` returns the matrices to train on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# tandem.v1.EventType numbers that count as acting on an item.
POSITIVE_TYPES = (2, 3, 4)


def read_served(root: Path) -> dict[str, pa.Table]:
    """Every served-feature file under `root`, one table per model version (schemas differ)."""
    by_version: dict[str, list[pa.Table]] = {}
    for path in sorted(Path(root).glob("day=*/*.parquet")):
        table = pq.read_table(path)
        version = table.column("model_version")[0].as_py() if table.num_rows else "empty"
        by_version.setdefault(version, []).append(table)
    return {v: pa.concat_tables(ts) for v, ts in by_version.items()}


def feature_matrix(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The feature columns side by side as one float64 matrix, and their names."""
    names = [n for n in table.column_names if n.startswith("feature.")]
    blocks = []
    for name in names:
        col = table.column(name).combine_chunks()
        width = col.type.list_size
        blocks.append(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width))
    matrix = np.hstack(blocks) if blocks else np.zeros((table.num_rows, 0))
    return matrix, names


def read_events(root: Path) -> pa.Table | None:
    files = sorted(Path(root).glob("day=*/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def served_training_rows(served: pa.Table, events: pa.Table | None, window_ms: int = 3_600_000):
    """(features, labels, served positions) for one model version's served rows."""
    x, _ = feature_matrix(served)
    y = np.zeros(served.num_rows, dtype=np.int8)
    if events is not None and events.num_rows:
        acted: dict[tuple[str, str], list[int]] = {}
        for user, item, kind, t in zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist(),
                                       events.column("event_type").to_pylist(), events.column("timestamp_ms").to_pylist()):
            if kind in POSITIVE_TYPES:
                acted.setdefault((user, item), []).append(t)
        for i, (user, item, t) in enumerate(zip(served.column("user_id").to_pylist(), served.column("item_id").to_pylist(),
                                                served.column("timestamp_ms").to_pylist())):
            if any(t <= e <= t + window_ms for e in acted.get((user, item), ())):
                y[i] = 1
    position = served.column("position").to_numpy(zero_copy_only=False)
    return x, y, position


def world_from_logs(catalog_path: Path, events_dir: Path):
    """The items of an existing catalog and the events tandem logged, in the shapes the synthetic
    world has, so the rest of the pipeline trains on served events instead."""
    from . import world

    items_table = pq.read_table(catalog_path, columns=["item_id", "category", "price", "in_stock"])
    names = items_table.column("category").to_pylist()
    unknown = sorted(set(names) - set(world.CATEGORIES))
    if unknown:
        raise SystemExit(f"{catalog_path}: categories {unknown[:5]} are not in the pipeline's vocabulary")
    index = {c: i for i, c in enumerate(world.CATEGORIES)}
    item_ids = np.array(items_table.column("item_id").to_pylist(), dtype=object)
    n_items = len(item_ids)
    items = world.Items(
        item_id=item_ids,
        category=np.array([index[c] for c in names], dtype=np.int32),
        price=items_table.column("price").to_numpy().astype(np.float32),
        in_stock=items_table.column("in_stock").to_numpy(zero_copy_only=False).astype(bool),
        prior=np.ones(n_items),
        latent=np.zeros((n_items, world.LATENT_DIM), dtype=np.float32),
    )
    events = read_events(events_dir)
    if events is None or events.num_rows == 0:
        raise SystemExit(f"{events_dir}: no exported events (day=*/*.parquet)")
    row_of = {item: i for i, item in enumerate(item_ids.tolist())}
    users: dict[str, int] = {}
    kept_user, kept_item, kept_type, kept_ts = [], [], [], []
    skipped = 0
    for user, item, kind, t in zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist(),
                                   events.column("event_type").to_pylist(), events.column("timestamp_ms").to_pylist()):
        row = row_of.get(item)
        if row is None:
            skipped += 1
            continue
        kept_user.append(users.setdefault(user, len(users)))
        kept_item.append(row)
        kept_type.append(kind)
        kept_ts.append(t)
    order = np.argsort(np.array(kept_ts, dtype=np.int64), kind="stable")
    ev = world.Events(np.array(kept_user, dtype=np.int64)[order], np.array(kept_item, dtype=np.int64)[order],
                      np.array(kept_type, dtype=np.int8)[order], np.array(kept_ts, dtype=np.int64)[order])
    if skipped:
        print(f"served events: {skipped} name items this catalog lacks; left out")
    return items, ev, len(users)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--served", required=True, help="the gateway's --served-log-dir")
    p.add_argument("--events", default=None, help="the event log's Parquet export (…/events/parquet)")
    p.add_argument("--window-ms", type=int, default=3_600_000)
    args = p.parse_args()
    events = read_events(Path(args.events)) if args.events else None
    summary = {}
    for version, table in read_served(Path(args.served)).items():
        x, y, position = served_training_rows(table, events, args.window_ms)
        _, names = feature_matrix(table)
        summary[version] = {
            "rows": table.num_rows,
            "requests": len(set(table.column("request_id").to_pylist())),
            "served_rows": int(np.sum(~np.isnan(position.astype(float)))),
            "positives": int(y.sum()),
            "features": {n: table.schema.field(n).type.list_size for n in names},
            "matrix": list(x.shape),
            "finite": bool(np.isfinite(x).all()),
        }
    print(json.dumps(summary, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
