"""The online features, computed exactly as the services compute them.

`user_vector` mirrors libs/personalization (QueryConfig defaults) and `assemble` mirrors
libs/ranking (feature assembly from the spec). Rank parity tests compare the two.
"""

from __future__ import annotations

import numpy as np

from .history import HISTORY_SOURCES, UserHistory, history_features

# Must match libs/personalization/src/query.rs (QueryConfig::default).
TYPE_WEIGHTS = {1: 1.0, 2: 2.0, 3: 4.0, 4: 8.0}
HALF_LIFE_MS = 24 * 3_600_000
MAX_EVENTS = 50


def normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-30), 0.0).astype(np.float32)


def user_vector(emb: np.ndarray, items: np.ndarray, types: np.ndarray, ts: np.ndarray,
                half_life_ms: int = HALF_LIFE_MS, max_events: int = MAX_EVENTS) -> np.ndarray | None:
    """Recency- and type-weighted mean of the embeddings of a user's most recent events."""
    if items.size == 0:
        return None
    order = np.argsort(ts, kind="stable")[-max_events:]
    items, types, ts = items[order], types[order], ts[order]
    latest = ts.max()
    w = np.array([TYPE_WEIGHTS[int(t)] for t in types]) * np.power(0.5, (latest - ts) / half_life_ms)
    v = (w[:, None] * emb[items].astype(np.float64)).sum(axis=0)
    n = np.linalg.norm(v)
    return (v / n).astype(np.float32) if n > 0 else None


def make_spec(dim: int, categories: list[str], version: str, hidden: list[int]) -> dict:
    features = [
        {"source": "user_vector", "width": dim},
        {"source": "item_embedding", "width": dim},
        {"source": "user_item_dot", "width": 1},
        {"source": "item_numeric", "column": "price", "transform": "log1p", "width": 1},
        {"source": "item_numeric", "column": "popularity", "transform": "log1p", "width": 1},
        {"source": "item_numeric", "column": "in_stock", "transform": "identity", "width": 1},
        {"source": "item_category_one_hot", "vocabulary": categories, "width": len(categories)},
    ]
    width = sum(f["width"] for f in features)
    return {
        "format_version": 1,
        "model": {"name": "ranker", "version": version, "file": "model.onnx",
                  "kind": "sklearn MLPClassifier", "hidden_layers": hidden},
        "embedding_dim": dim,
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, width], "features": features}],
        "output": {"name": "probabilities", "dtype": "float32", "column": 1},
        "user_vector": {"type_weights": {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0},
                        "half_life_ms": HALF_LIFE_MS, "max_events": MAX_EVENTS},
    }


def recent_sequence(items_newest_first, num_ids: int, width: int) -> np.ndarray:
    """Distinct items newest first as 1 + row, ids reaching num_ids left out, 0-padded (Rust: recent_sequence)."""
    out: list[int] = []
    for item in items_newest_first:
        if len(out) == width:
            break
        i = int(item) + 1
        if i < num_ids and i not in out:
            out.append(i)
    return np.array(out + [0] * (width - len(out)), dtype=np.int64)


def vocabulary_id(vocabulary: list[str], value) -> int:
    try:
        return vocabulary.index(value) + 1
    except ValueError:
        return 0


def assemble(spec: dict, catalog: dict, user_vecs: np.ndarray, item_idx: np.ndarray,
             retrieval_scores: np.ndarray | None = None, recent: list | None = None,
             context: list[dict] | None = None, histories: list | None = None,
             now_ms: int = 0) -> dict[str, np.ndarray]:
    """Model inputs for rows (user_vecs[i], item_idx[i]), driven by the spec.

    recent[i]: the row's user's recent item rows, newest first; context[i]: its request context;
    histories[i]: its user's `history.UserHistory` at `now_ms`. Rows of one user may share the
    same objects: sequences and history features are computed once per object.
    """
    n = len(item_idx)
    emb = catalog["embedding"][item_idx]
    out = {}
    for inp in spec["inputs"]:
        cols = []
        for f in inp["features"]:
            src = f["source"]
            if src == "user_vector":
                cols.append(user_vecs)
            elif src == "item_embedding":
                cols.append(emb)
            elif src == "user_item_dot":
                cols.append((user_vecs * emb).sum(axis=1, dtype=np.float32)[:, None])
            elif src == "retrieval_score":
                rs = retrieval_scores if retrieval_scores is not None else np.zeros(n, np.float32)
                cols.append(rs.astype(np.float32)[:, None])
            elif src == "item_numeric":
                v = catalog[f["column"]][item_idx].astype(np.float32)
                if f["transform"] == "log1p":
                    v = np.log1p(np.maximum(v, 0)).astype(np.float32)
                cols.append(v[:, None])
            elif src == "item_category_one_hot":
                vocab = {c: i for i, c in enumerate(f["vocabulary"])}
                oh = np.zeros((n, len(vocab)), np.float32)
                codes = np.array([vocab.get(c, -1) for c in catalog["category"][item_idx]])
                ok = codes >= 0
                oh[np.flatnonzero(ok), codes[ok]] = 1.0
                cols.append(oh)
            elif src == "item_categorical":
                vocab = {c: i + 1 for i, c in enumerate(f["vocabulary"])}
                cols.append(np.array([vocab.get(c, 0) for c in catalog[f["column"]][item_idx]],
                                     dtype=np.int64)[:, None])
            elif src == "recent_items":
                cache: dict[int, np.ndarray] = {}
                seqs = np.zeros((n, f["width"]), np.int64)
                for i in range(n):
                    r = recent[i] if recent is not None else []
                    key = id(r)
                    if key not in cache:
                        cache[key] = recent_sequence(r, f["num_ids"], f["width"])
                    seqs[i] = cache[key]
                cols.append(seqs)
            elif src == "context_numeric":
                vals = [(c or {}).get(f["key"]) for c in (context or [None] * n)]
                cols.append(np.array([float(v) if v is not None else f["default"] for v in vals],
                                     dtype=np.float32)[:, None])
            elif src == "context_categorical":
                vals = [(c or {}).get(f["key"]) for c in (context or [None] * n)]
                cols.append(np.array([vocabulary_id(f["vocabulary"], v) if v is not None else 0 for v in vals],
                                     dtype=np.int64)[:, None])
            elif src in HISTORY_SOURCES:
                vals = np.zeros((n, f["width"]), np.float32)
                groups: dict[int, list[int]] = {}
                for i in range(n):
                    groups.setdefault(id(histories[i]) if histories is not None else 0, []).append(i)
                for rows in groups.values():
                    h = histories[rows[0]] if histories is not None else UserHistory.empty()
                    vals[rows] = history_features(f, h, np.asarray(item_idx)[rows], now_ms, catalog)
                cols.append(vals)
            else:
                raise ValueError(f"unknown feature source {src!r}")
        dtype = np.int64 if inp["dtype"] == "int64" else np.float32
        out[inp["name"]] = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=dtype)
    return out
