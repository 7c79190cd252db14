"""Item embeddings by truncated SVD of the train user-item matrix (implicit feedback)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from .features import TYPE_WEIGHTS
from .world import Events


def learn_item_embeddings(train: Events, n_users: int, n_items: int, category: np.ndarray,
                          dim: int, seed: int) -> np.ndarray:
    w = np.array([TYPE_WEIGHTS[int(t)] for t in range(1, 5)])[train.type.astype(np.int64) - 1]
    m = sp.coo_matrix((w, (train.user, train.item)), shape=(n_users, n_items)).tocsr()
    m.data = np.log1p(m.data)
    item_deg = np.asarray((m > 0).sum(axis=0)).ravel()
    rng = np.random.default_rng(seed)
    v0 = rng.random(min(m.shape))
    _, s, vt = svds(m.astype(np.float64), k=dim, v0=v0)
    # Unnormalized factors: the norm carries how much an item is engaged with, so the
    # metric is inner product (the query vector is normalized, the items are not).
    emb = (vt.T * s).astype(np.float32)
    seen = item_deg > 0
    # Items nobody touched in train: half their category's mean vector plus noise (content fallback).
    for c in np.unique(category):
        in_c = category == c
        known = in_c & seen
        centroid = emb[known].mean(axis=0) if known.any() else np.zeros(dim, np.float32)
        cold = np.flatnonzero(in_c & ~seen)
        scale = 0.1 * float(np.linalg.norm(centroid)) + 1e-3
        emb[cold] = 0.5 * centroid + scale * rng.normal(size=(cold.size, dim)) / np.sqrt(dim)
    return emb.astype(np.float32)
