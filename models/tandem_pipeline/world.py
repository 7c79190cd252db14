"""A seeded synthetic e-commerce world: items, users with hidden tastes, funnel sessions.

The hidden tastes (category preferences and latent vectors) only drive event generation;
nothing downstream reads them, so the embeddings must be learned from events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = [
    "automotive", "baby", "beauty", "books", "crafts", "electronics", "fashion", "games",
    "garden", "grocery", "health", "home", "jewelry", "kitchen", "luggage", "movies",
    "music", "office", "outdoor", "pets", "shoes", "sports", "tools", "toys",
]

# Event type codes, the same numbers as tandem.v1.EventType.
VIEW, CLICK, ADD_TO_CART, PURCHASE = 1, 2, 3, 4

LATENT_DIM = 16
START_MS = 1_788_220_800_000  # 2026-09-01T00:00:00Z
DAY_MS = 86_400_000


@dataclass
class Items:
    item_id: np.ndarray  # object (str)
    category: np.ndarray  # int32 index into CATEGORIES
    price: np.ndarray  # float32
    in_stock: np.ndarray  # bool
    prior: np.ndarray  # float64, Zipf-like popularity prior (hidden)
    latent: np.ndarray  # float32 [n, LATENT_DIM] (hidden)


@dataclass
class Events:
    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    type: np.ndarray  # int8 event type code
    ts: np.ndarray  # int64 ms


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def make_items(rng: np.random.Generator, n_items: int) -> Items:
    k = len(CATEGORIES)
    centers = _normalize(rng.normal(size=(k, LATENT_DIM)))
    category = rng.integers(0, k, size=n_items).astype(np.int32)
    latent = _normalize(centers[category] + 0.7 * rng.normal(size=(n_items, LATENT_DIM)) / np.sqrt(LATENT_DIM) * 2)
    ranks = rng.permutation(n_items)
    prior = 1.0 / np.power(ranks + 10.0, 1.05)
    prior /= prior.sum()
    log_price_mean = rng.uniform(2.0, 5.5, size=k)
    price = np.round(np.exp(log_price_mean[category] + 0.6 * rng.normal(size=n_items)), 2)
    price = np.maximum(price, 0.99).astype(np.float32)
    in_stock = rng.random(n_items) < 0.92
    width = max(6, len(str(n_items - 1)))
    item_id = np.array([f"item-{i:0{width}d}" for i in range(n_items)], dtype=object)
    return Items(item_id, category, price, in_stock, prior, latent.astype(np.float32))


def make_events(rng: np.random.Generator, items: Items, n_users: int, days: int) -> Events:
    """Sessions: pick a category by taste, browse popularity-biased items of it, funnel down."""
    k = len(CATEGORIES)
    by_cat = [np.flatnonzero(items.category == c) for c in range(k)]
    cum_prior = []
    for idx in by_cat:
        # Sessions browse a flattened popularity: the head sells, but taste decides within it.
        p = np.sqrt(items.prior[idx])
        cum_prior.append(np.cumsum(p) / p.sum())

    cat_pref = rng.dirichlet(np.full(k, 0.25), size=n_users)
    cat_centers = np.stack([items.latent[idx].mean(axis=0) for idx in by_cat])
    user_latent = _normalize(cat_pref @ cat_centers + 0.3 * rng.normal(size=(n_users, LATENT_DIM)) / np.sqrt(LATENT_DIM) * 2)

    users, its, types, tss = [], [], [], []
    sessions_per_user = rng.poisson(5.0, size=n_users) + 1
    horizon = days * DAY_MS
    for u in range(n_users):
        prefs = cat_pref[u]
        for _ in range(sessions_per_user[u]):
            c = rng.choice(k, p=prefs)
            idx = by_cat[c]
            pool = idx[np.searchsorted(cum_prior[c], rng.random(96), side="right").clip(0, len(idx) - 1)]
            affinity = items.latent[pool] @ user_latent[u]
            logits = 8.0 * affinity
            p = np.exp(logits - logits.max())
            p /= p.sum()
            n_views = min(1 + rng.geometric(0.22), len(pool))
            viewed = rng.choice(pool, size=n_views, replace=False, p=p)
            aff = items.latent[viewed] @ user_latent[u]
            t = START_MS + int(rng.integers(0, horizon)) + np.cumsum(rng.integers(5_000, 120_000, size=n_views))
            click = rng.random(n_views) < 1 / (1 + np.exp(-(5.0 * aff - 2.0)))
            cart = click & (rng.random(n_views) < 1 / (1 + np.exp(-(4.0 * aff - 2.2))))
            buy = cart & (rng.random(n_views) < 0.55)
            for level, mask, delay in ((VIEW, np.ones(n_views, bool), 0), (CLICK, click, 2_000),
                                       (ADD_TO_CART, cart, 20_000), (PURCHASE, buy, 60_000)):
                m = np.flatnonzero(mask)
                if m.size == 0:
                    continue
                users.append(np.full(m.size, u, dtype=np.int64))
                its.append(viewed[m].astype(np.int64))
                types.append(np.full(m.size, level, dtype=np.int8))
                tss.append(t[m] + delay)
    ev = Events(np.concatenate(users), np.concatenate(its), np.concatenate(types), np.concatenate(tss))
    order = np.argsort(ev.ts, kind="stable")
    return Events(ev.user[order], ev.item[order], ev.type[order], ev.ts[order])


def split_by_time(ev: Events, train_fraction: float) -> tuple[Events, Events, int]:
    cutoff = int(np.quantile(ev.ts, train_fraction))
    tr = ev.ts < cutoff
    te = ~tr
    pick = lambda m: Events(ev.user[m], ev.item[m], ev.type[m], ev.ts[m])  # noqa: E731
    return pick(tr), pick(te), cutoff
