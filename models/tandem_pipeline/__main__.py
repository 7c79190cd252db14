"""Builds a tandem data directory: items.parquet, events, the ranking model bundle, an evaluation.

    python -m tandem_pipeline --out data/demo            # 50,000 items
    python -m tandem_pipeline --out data/large --large   # 1,000,000 items
    python -m tandem_pipeline --out data/online-retail --dataset online-retail --cutoff 2011-11-01
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

from . import baselines, history, history_ranker, retail, seqranker, served, world
from .embeddings import learn_item_embeddings
from .evaluate import evaluate, print_report, tandem_methods
from .features import TYPE_WEIGHTS, assemble, make_spec
from .ranker import candidate_rows, group_by_user, top_n, train_and_export, training_rows, user_vectors


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data directory the services read")
    p.add_argument("--dataset", choices=["synthetic", "online-retail"], default="synthetic",
                   help="synthetic: a seeded world (default); online-retail: the UCI Online Retail "
                        "purchases vendored under models/datasets/online-retail")
    p.add_argument("--cutoff", default=None,
                   help="YYYY-MM-DD: train before it, test from it (online-retail; default 2011-11-01)")
    p.add_argument("--items", type=int, default=50_000, help="catalog size (default 50000)")
    p.add_argument("--large", action="store_true", help="1,000,000 items (overrides --items)")
    p.add_argument("--users", type=int, default=None, help="default: 2/5 of the items, at most 200000")
    p.add_argument("--days", type=int, default=60, help="span of the event history")
    p.add_argument("--dim", type=int, default=None,
                   help="embedding dimension (default 32; 64 for online-retail)")
    p.add_argument("--hidden", default="64,32", help="MLP hidden layer sizes")
    p.add_argument("--max-iter", type=int, default=20, help="MLP training epochs at most")
    p.add_argument("--history-epochs", type=int, default=10, help="history ranker training epochs")
    p.add_argument("--history-members", type=int, default=5,
                   help="networks averaged in the history ranker (seeds of one listwise MLP)")
    p.add_argument("--history-users", type=int, default=4_000,
                   help="users per training window of the history ranker")
    p.add_argument("--seq-epochs", type=int, default=4, help="seqranker training epochs")
    p.add_argument("--train-users", type=int, default=20_000, help="users sampled for ranker training")
    p.add_argument("--eval-users", type=int, default=3_000, help="users sampled for evaluation")
    p.add_argument("--compare-users", type=int, default=3_000,
                   help="test users in the side-by-side comparison with the baselines (0: skip it)")
    p.add_argument("--model-version", default="1")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--events-from", default=None,
                   help="train on events tandem served: its event log's Parquet export "
                        "(<event-log-dir>/parquet), with the items of --catalog, instead of a synthetic world")
    p.add_argument("--catalog", default=None, help="items.parquet whose items the served events name")
    return p.parse_args()


def write_items(path: Path, items: world.Items, categories: list[str], emb: np.ndarray,
                popularity: np.ndarray, extra: dict[str, np.ndarray]) -> None:
    """The catalog; `extra` float columns (trend figures) are read by `item_numeric` features."""
    dim = emb.shape[1]
    schema = pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.field("element", pa.float32(), nullable=False), dim), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("price", pa.float32(), nullable=False),
        pa.field("in_stock", pa.bool_(), nullable=False),
        pa.field("popularity", pa.float32(), nullable=False),
        *[pa.field(name, pa.float32(), nullable=False) for name in extra],
    ])
    table = pa.table({
        "item_id": pa.array(items.item_id.tolist(), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
        "category": pa.array([categories[c] for c in items.category], pa.string()),
        "price": pa.array(items.price, pa.float32()),
        "in_stock": pa.array(items.in_stock, pa.bool_()),
        "popularity": pa.array(popularity, pa.float32()),
        **{name: pa.array(values, pa.float32()) for name, values in extra.items()},
    }, schema=schema)
    pq.write_table(table, path, compression="zstd", row_group_size=65_536,
                   use_dictionary=["category"],
                   column_encoding={"embedding.list.element": "BYTE_STREAM_SPLIT"})


def write_co_occurrence(path: Path, co, items: world.Items) -> None:
    """Each item's most similar items (cosine of their users), strongest first."""
    coo = co.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    pq.write_table(pa.table({
        "item_id": pa.array(items.item_id[coo.row[order]].tolist(), pa.string()),
        "related_id": pa.array(items.item_id[coo.col[order]].tolist(), pa.string()),
        "weight": pa.array(coo.data[order], pa.float32()),
    }), path, compression="zstd")


def write_events(path: Path, ev: world.Events, items: world.Items, user_ids: np.ndarray) -> None:
    known = ev.item >= 0  # real data: products launched after the cutoff are in no catalog
    ev = world.Events(ev.user[known], ev.item[known], ev.type[known], ev.ts[known])
    table = pa.table({
        "user_id": pa.array(user_ids[ev.user].tolist(), pa.string()),
        "item_id": pa.array(items.item_id[ev.item].tolist(), pa.string()),
        "event_type": pa.array(ev.type, pa.int8()),
        "timestamp_ms": pa.array(ev.ts, pa.int64()),
    })
    pq.write_table(table, path, compression="zstd")


def write_rank_reference(path: Path, rng, catalog, spec, model_path, emb, train, items) -> None:
    """Requests and the scores Python onnxruntime gives them: the services must match (1e-5)."""
    groups = group_by_user(train)
    users = [int(u) for u in rng.choice(list(groups), size=min(4, len(groups)), replace=False)]
    vecs, users = user_vectors(emb, train, users, groups)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cases = []
    for n, (v, u) in enumerate(zip(vecs, users)):
        cands = top_n((v[None] @ emb.T), 64)[0]
        rs = (v[None] * emb[cands]).sum(axis=1)
        rows = groups[u]
        recent = train.item[rows][np.argsort(-train.ts[rows], kind="stable")][:40]
        context = {"hour_of_day": str((5 * n + 3) % 24)}
        feats = assemble(spec, catalog, np.repeat(v[None], len(cands), 0), cands, rs,
                         recent=[recent] * len(cands), context=[context] * len(cands))
        scores = session.run([spec["output"]["name"]], feats)[0][:, spec["output"]["column"]]
        cases.append({"user_id": f"user-{u}", "query_vector": v.tolist(),
                      "item_ids": items.item_id[cands].tolist(), "retrieval_scores": rs.tolist(),
                      "recent_item_ids": items.item_id[recent].tolist(), "context": context,
                      "scores": scores.astype(float).tolist()})
    path.write_text(json.dumps({"model_version": f"{spec['model']['name']}/{spec['model']['version']}",
                                "cases": cases}))


def write_history_rank_reference(path: Path, rng, catalog, spec, model_path, train, items, cutoff,
                                 query) -> None:
    """History-ranker requests (with the users' histories) and Python onnxruntime's scores."""
    hist = history.histories(train)
    groups = group_by_user(train)
    users = [int(u) for u in rng.choice(sorted(hist), size=min(4, len(hist)), replace=False)]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    emb = catalog["embedding"]
    cases = []
    for u in users:
        v = history_ranker.query_vector(emb, train, groups[u], query)
        if v is None:
            continue
        h = hist[u]
        now = cutoff + 3_600_000
        # The user's own items first (their history features are the ones to check), then ANN.
        cands = np.unique(np.concatenate([h.items[:40], np.argpartition(-(emb @ v), 40)[:40]]))
        feats = assemble(spec, catalog, np.repeat(v[None], cands.size, 0), cands,
                         histories=[h] * cands.size, now_ms=now)
        scores = session.run([spec["output"]["name"]], feats)[0][:, spec["output"]["column"]]
        cases.append({"user_id": str(u), "query_vector": v.tolist(), "now_ms": now,
                      "item_ids": items.item_id[cands].tolist(),
                      "retrieval_scores": (emb[cands] @ v).tolist(),
                      "history": [{"item_id": items.item_id[i], "purchases": int(p), "last_purchase_ms": int(lp),
                                   "events": int(e), "last_event_ms": int(le)}
                                  for i, p, lp, e, le in zip(h.items, h.purchases, h.last_purchase_ms, h.events,
                                                             h.last_event_ms)],
                      "scores": scores.astype(float).tolist()})
    path.write_text(json.dumps({"model_version": f"{spec['model']['name']}/{spec['model']['version']}",
                                "cases": cases}))


def auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def train_seqranker(rng, rows, catalog, categories, emb, n_items, hidden, epochs, version,
                    out: Path) -> tuple[dict, Path, dict]:
    """The multi-input reference model; returns its spec, bundle and held-out AUC figures."""
    spec = seqranker.make_spec(emb.shape[1], categories, n_items, version, hidden)
    contexts = [{"hour_of_day": str(h)} for h in rows.hours]
    rs = (rows.vecs[rows.u_rows] * emb[rows.i_rows]).sum(axis=1)
    inputs = assemble(spec, catalog, rows.vecs[rows.u_rows], rows.i_rows, rs,
                      recent=rows.per_row(rows.recent), context=rows.per_row(contexts))
    # Hold out 10% of users for the AUC report.
    held = np.isin(rows.u_rows, rng.permutation(len(rows.vecs))[: max(1, len(rows.vecs) // 10)])
    fit = {k: v[~held] for k, v in inputs.items()}
    item_table = np.vstack([np.zeros((1, emb.shape[1]), np.float32), emb]).astype(np.float32)
    model = seqranker.train(rng, fit, rows.y[~held], item_table, len(categories), hidden, epochs)
    onnx_bytes = seqranker.export(model, inputs["dense"].shape[1])
    bundle = out / "models" / "seqranker" / version
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.onnx").write_bytes(onnx_bytes)
    (bundle / "feature_spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    # The exported graph must compute what was trained.
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    sample = {k: v[:256] for k, v in inputs.items()}
    got = session.run(["score"], sample)[0][:, 0]
    want = model.predict(sample["dense"], sample["category"], sample["recent_items"])
    if not np.allclose(got, want, atol=1e-4):
        raise SystemExit(f"seqranker export differs from its numpy forward pass by {np.abs(got - want).max()}")
    held_inputs = {k: v[held] for k, v in inputs.items()}
    scores = session.run(["score"], held_inputs)[0][:, 0]
    return spec, bundle, {"seqranker_auc": auc(rows.y[held], scores),
                          "dot_auc": auc(rows.y[held], rs[held]), "held_out_rows": int(held.sum())}


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

    categories = world.CATEGORIES
    if args.dataset == "online-retail":
        if args.events_from:
            raise SystemExit("--events-from builds its own world: leave out --dataset online-retail")
        real = retail.load(retail.parse_cutoff(args.cutoff or "2011-11-01"))
        items = world.Items(real.item_id, real.category, real.price, real.in_stock,
                            np.zeros(len(real.item_id)), np.zeros((len(real.item_id), 0), np.float32))
        events, categories, user_ids = real.events, retail.CATEGORIES, real.user_id
        n_items, n_users, cutoff = len(items.item_id), len(user_ids), real.cutoff_ms
        dim = args.dim or 64
        print(f"online retail: {json.dumps(real.stats)}")
    else:
        if args.cutoff:
            raise SystemExit("--cutoff applies to --dataset online-retail (the synthetic world splits at 85 %)")
        if args.events_from:
            if not args.catalog:
                raise SystemExit("--events-from needs --catalog (the items.parquet the events name)")
            items, events, n_users = served.world_from_logs(Path(args.catalog), Path(args.events_from))
            n_items = len(items.item_id)
        else:
            items = world.make_items(rng, n_items)
            events = world.make_events(rng, items, n_users, args.days)
        cutoff = world.split_by_time(events, 0.85)[2]
        user_ids = np.array([f"user-{u}" for u in range(n_users)], dtype=object)
        dim = args.dim or 32
    train, test = baselines.before(events, cutoff), baselines.between(events, cutoff, np.iinfo(np.int64).max)
    n_types = np.bincount(events.type, minlength=5)[1:]
    print(f"world: {n_items} items, {n_users} users, {len(events.ts)} events "
          f"(views {n_types[0]}, clicks {n_types[1]}, carts {n_types[2]}, purchases {n_types[3]}); "
          f"train {len(train.ts)} / test {len(test.ts)} split at {cutoff} ms  [{time.time() - t0:.1f}s]")

    emb = learn_item_embeddings(train, n_users, n_items, items.category, dim, args.seed)
    w = np.array([TYPE_WEIGHTS[t] for t in range(1, 5)])[train.type.astype(np.int64) - 1]
    popularity = np.bincount(train.item, weights=w, minlength=n_items).astype(np.float32)
    print(f"embeddings: {emb.shape} from train events  [{time.time() - t0:.1f}s]")

    catalog = {"embedding": emb, "price": items.price, "popularity": popularity,
               "in_stock": items.in_stock.astype(np.float32),
               "category": np.array(categories, dtype=object)[items.category]}
    spec = make_spec(dim, categories, args.model_version, hidden)
    rows = candidate_rows(rng, train, emb, args.train_users)
    x, y = training_rows(rows, catalog, spec)
    print(f"ranker training rows: {x.shape[0]} x {x.shape[1]}, positives {y.mean():.3f}  [{time.time() - t0:.1f}s]")
    onnx_bytes = train_and_export(x, y, hidden, args.max_iter, args.seed)

    bundle = out / "models" / "ranker" / args.model_version
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.onnx").write_bytes(onnx_bytes)
    (bundle / "feature_spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    # The history ranker: co-occurrence and trend read from train only, as of the cutoff.
    query = ({"half_life_ms": 30 * 86_400_000, "max_events": 200} if args.dataset == "online-retail"
             else {"half_life_ms": 24 * 3_600_000, "max_events": 50})
    def world_at(ev: world.Events, now_ms: int) -> tuple[np.ndarray, dict]:
        """Embeddings and catalog columns learnt from `ev` alone (a training window's past)."""
        e = emb if ev is train else learn_item_embeddings(ev, n_users, n_items, items.category, dim, args.seed)
        known = ev.item >= 0
        w = np.array([TYPE_WEIGHTS[t] for t in range(1, 5)])[ev.type[known].astype(np.int64) - 1]
        cat = dict(catalog, embedding=e, category_code=items.category.astype(np.int64),
                   popularity=np.bincount(ev.item[known], weights=w, minlength=n_items).astype(np.float32),
                   co_occurrence=history.co_occurrence(ev, n_items, 50))
        cat.update(history_ranker.trend_columns(ev, n_items, now_ms))
        return e, cat

    _, catalog = world_at(train, cutoff)
    trend = {c: catalog[c] for c in (*history_ranker.TREND_COLUMNS, "first_seen_days", "repeat_rate")}
    hspec = history_ranker.make_spec(dim, categories, args.model_version, hidden, query, 30.0)
    sources = history_ranker.Sources()
    h_onnx, h_info = history_ranker.train(train, cutoff, 31 if args.dataset == "online-retail" else 4, world_at,
                                          hspec, query, sources, rng, hidden, args.history_epochs, args.seed,
                                          max_users=args.history_users, members=args.history_members)
    h_bundle = out / "models" / "history-ranker" / args.model_version
    h_bundle.mkdir(parents=True, exist_ok=True)
    (h_bundle / "model.onnx").write_bytes(h_onnx)
    (h_bundle / "feature_spec.json").write_text(json.dumps(hspec, indent=2) + "\n")
    print(f"history ranker: {h_bundle}/model.onnx from {h_info['rows']} rows "
          f"(positives {h_info['positives']:.3f})  [{time.time() - t0:.1f}s]")
    write_items(out / "items.parquet", items, categories, emb, popularity, trend)
    write_co_occurrence(out / "co_occurrence.parquet", catalog["co_occurrence"], items)
    write_history_rank_reference(out / "history_rank_reference.json", rng, catalog, hspec,
                                 h_bundle / "model.onnx", train, items, cutoff, query)
    (out / "events").mkdir(exist_ok=True)
    write_events(out / "events" / "train.parquet", train, items, user_ids)
    write_events(out / "events" / "test.parquet", test, items, user_ids)
    print(f"wrote {out}/items.parquet, {bundle}/model.onnx  [{time.time() - t0:.1f}s]")

    write_rank_reference(out / "rank_reference.json", rng, catalog, spec, bundle / "model.onnx",
                         emb, train, items)
    seq_spec, seq_bundle, seq_eval = train_seqranker(rng, rows, catalog, categories, emb, n_items, hidden,
                                                     args.seq_epochs, args.model_version, out)
    write_rank_reference(out / "seq_rank_reference.json", rng, catalog, seq_spec, seq_bundle / "model.onnx",
                         emb, train, items)
    print(f"seqranker: {seq_bundle}/model.onnx, held-out AUC {seq_eval['seqranker_auc']:.4f} "
          f"(retrieval score alone {seq_eval['dot_auc']:.4f}, {seq_eval['held_out_rows']} rows)  "
          f"[{time.time() - t0:.1f}s]")
    result = evaluate(rng, train, test, catalog, spec, str(bundle / "model.onnx"), args.eval_users)
    result.update(seq_eval)
    result.update({"items": n_items, "users": n_users, "events": int(len(events.ts)), "seed": args.seed})
    print_report(result)
    if args.compare_users:
        title = "online retail" if args.dataset == "online-retail" else "synthetic world"
        # A week of validation in the synthetic world's two months; October for the shop.
        validation_days = 31 if args.dataset == "online-retail" else 7
        comparison = baselines.compare(
            events, n_users, n_items, items.category, cutoff, args.seed, validation_days,
            args.compare_users,
            {**tandem_methods(catalog, spec, bundle / "model.onnx", train),
             "tandem history ranker": history_ranker.method(catalog, hspec, h_bundle / "model.onnx", query,
                                                            sources)})
        baselines.print_comparison(comparison, title)
        result["comparison"] = comparison
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"done in {time.time() - t0:.1f}s")
    os.sync() if hasattr(os, "sync") else None


if __name__ == "__main__":
    main()
