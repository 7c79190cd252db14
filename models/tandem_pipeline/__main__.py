"""Builds a tandem data directory: items.parquet, events, the ranking model bundle, an evaluation.

    python -m tandem_pipeline --out data/demo            # 50,000 items
    python -m tandem_pipeline --out data/large --large   # 1,000,000 items
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from . import world
from .embeddings import learn_item_embeddings
from .evaluate import evaluate, print_report
from .features import TYPE_WEIGHTS, assemble, make_spec
from .ranker import group_by_user, top_n, train_and_export, training_rows, user_vectors


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data directory the services read")
    p.add_argument("--items", type=int, default=50_000, help="catalog size (default 50000)")
    p.add_argument("--large", action="store_true", help="1,000,000 items (overrides --items)")
    p.add_argument("--users", type=int, default=None, help="default: 2/5 of the items, at most 200000")
    p.add_argument("--days", type=int, default=60, help="span of the event history")
    p.add_argument("--dim", type=int, default=32, help="embedding dimension")
    p.add_argument("--hidden", default="64,32", help="MLP hidden layer sizes")
    p.add_argument("--max-iter", type=int, default=20, help="MLP training epochs at most")
    p.add_argument("--train-users", type=int, default=20_000, help="users sampled for ranker training")
    p.add_argument("--eval-users", type=int, default=3_000, help="users sampled for evaluation")
    p.add_argument("--model-version", default="1")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def write_items(path: Path, items: world.Items, emb: np.ndarray, popularity: np.ndarray) -> None:
    dim = emb.shape[1]
    schema = pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.field("element", pa.float32(), nullable=False), dim), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("price", pa.float32(), nullable=False),
        pa.field("in_stock", pa.bool_(), nullable=False),
        pa.field("popularity", pa.float32(), nullable=False),
    ])
    table = pa.table({
        "item_id": pa.array(items.item_id.tolist(), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
        "category": pa.array([world.CATEGORIES[c] for c in items.category], pa.string()),
        "price": pa.array(items.price, pa.float32()),
        "in_stock": pa.array(items.in_stock, pa.bool_()),
        "popularity": pa.array(popularity, pa.float32()),
    }, schema=schema)
    pq.write_table(table, path, compression="zstd", row_group_size=65_536,
                   use_dictionary=["category"],
                   column_encoding={"embedding.list.element": "BYTE_STREAM_SPLIT"})


def write_events(path: Path, ev: world.Events, items: world.Items) -> None:
    table = pa.table({
        "user_id": pa.array([f"user-{u}" for u in ev.user], pa.string()),
        "item_id": pa.array(items.item_id[ev.item].tolist(), pa.string()),
        "event_type": pa.array(ev.type, pa.int8()),
        "timestamp_ms": pa.array(ev.ts, pa.int64()),
    })
    pq.write_table(table, path, compression="zstd")


def write_rank_reference(path: Path, rng, catalog, spec, model_path, emb, test, train, items) -> None:
    """Requests and the scores Python onnxruntime gives them: the services must match (1e-5)."""
    groups = group_by_user(train)
    users = [int(u) for u in rng.choice(list(groups), size=min(4, len(groups)), replace=False)]
    vecs, users = user_vectors(emb, train, users, groups)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cases = []
    for v, u in zip(vecs, users):
        cands = top_n((v[None] @ emb.T), 64)[0]
        rs = (v[None] * emb[cands]).sum(axis=1)
        feats = assemble(spec, catalog, np.repeat(v[None], len(cands), 0), cands, rs)
        scores = session.run([spec["output"]["name"]], feats)[0][:, spec["output"]["column"]]
        cases.append({"user_id": f"user-{u}", "query_vector": v.tolist(),
                      "item_ids": items.item_id[cands].tolist(), "retrieval_scores": rs.tolist(),
                      "scores": scores.astype(float).tolist()})
    path.write_text(json.dumps({"model_version": f"{spec['model']['name']}/{spec['model']['version']}",
                                "cases": cases}))


def main() -> None:
    args = parse_args()
    n_items = 1_000_000 if args.large else args.items
    n_users = args.users or min(200_000, max(200, n_items * 2 // 5))
    hidden = [int(h) for h in args.hidden.split(",")]
    if len(hidden) < 2:
        raise SystemExit("--hidden needs at least two layers, e.g. 64,32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    items = world.make_items(rng, n_items)
    events = world.make_events(rng, items, n_users, args.days)
    train, test, cutoff = world.split_by_time(events, 0.85)
    n_types = np.bincount(events.type, minlength=5)[1:]
    print(f"world: {n_items} items, {n_users} users, {len(events.ts)} events "
          f"(views {n_types[0]}, clicks {n_types[1]}, carts {n_types[2]}, purchases {n_types[3]}); "
          f"train {len(train.ts)} / test {len(test.ts)} split at {cutoff} ms  [{time.time() - t0:.1f}s]")

    emb = learn_item_embeddings(train, n_users, n_items, items.category, args.dim, args.seed)
    w = np.array([TYPE_WEIGHTS[t] for t in range(1, 5)])[train.type.astype(np.int64) - 1]
    popularity = np.bincount(train.item, weights=w, minlength=n_items).astype(np.float32)
    print(f"embeddings: {emb.shape} from train events  [{time.time() - t0:.1f}s]")

    catalog = {"embedding": emb, "price": items.price, "popularity": popularity,
               "in_stock": items.in_stock.astype(np.float32),
               "category": np.array(world.CATEGORIES, dtype=object)[items.category]}
    spec = make_spec(args.dim, world.CATEGORIES, args.model_version, hidden)
    x, y = training_rows(rng, train, catalog, spec, args.train_users)
    print(f"ranker training rows: {x.shape[0]} x {x.shape[1]}, positives {y.mean():.3f}  [{time.time() - t0:.1f}s]")
    onnx_bytes = train_and_export(x, y, hidden, args.max_iter, args.seed)

    bundle = out / "models" / "ranker" / args.model_version
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.onnx").write_bytes(onnx_bytes)
    (bundle / "feature_spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    write_items(out / "items.parquet", items, emb, popularity)
    (out / "events").mkdir(exist_ok=True)
    write_events(out / "events" / "train.parquet", train, items)
    write_events(out / "events" / "test.parquet", test, items)
    print(f"wrote {out}/items.parquet, {bundle}/model.onnx  [{time.time() - t0:.1f}s]")

    write_rank_reference(out / "rank_reference.json", rng, catalog, spec, bundle / "model.onnx",
                         emb, test, train, items)
    result = evaluate(rng, train, test, catalog, spec, str(bundle / "model.onnx"), args.eval_users)
    result.update({"items": n_items, "users": n_users, "events": int(len(events.ts)), "seed": args.seed})
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"done in {time.time() - t0:.1f}s")
    os.sync() if hasattr(os, "sync") else None


if __name__ == "__main__":
    main()
