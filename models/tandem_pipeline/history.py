"""What a user's history says about a candidate, computed as the services compute it online.

The gateway keeps, per user, the time of every item's purchases (count and latest) and the
newest `capacity` events of any kind; a Rank request carries them as one entry per item
(`UserContext.history`). The ranking stage turns that, the request time and the catalog's
co-occurrence table into the `user_*` and `co_occurrence` features below. `libs/ranking`
mirrors `history_features` and the rank parity tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .world import CLICK, PURCHASE, Events

DAY_MS = 86_400_000
# Days reported for "never": a year, so that a log1p feature stays bounded.
NEVER_DAYS = 365.0
# Events of any kind per user the gateway keeps (--history-capacity default).
CAPACITY = 200


@dataclass
class UserHistory:
    """One entry per item the user touched, as a Rank request carries it."""
    items: np.ndarray  # int64 catalog rows
    purchases: np.ndarray  # float64: purchases of the item (all the gateway saw)
    last_purchase_ms: np.ndarray  # int64, 0 when never bought
    events: np.ndarray  # float64: events on the item among the newest `capacity`
    last_event_ms: np.ndarray  # int64, 0 when none among them

    @staticmethod
    def empty() -> "UserHistory":
        z = np.zeros(0, np.int64)
        return UserHistory(z, z.astype(np.float64), z, z.astype(np.float64), z)


def histories(ev: Events, capacity: int = CAPACITY) -> dict[int, UserHistory]:
    """Every user's history from `ev` (the events before the moment asked about)."""
    known = ev.item >= 0
    order = np.lexsort((ev.ts, ev.user))
    order = order[known[order]]
    users, starts = np.unique(ev.user[order], return_index=True)
    bounds = list(starts[1:]) + [order.size]
    out: dict[int, UserHistory] = {}
    for u, s, e in zip(users, starts, bounds):
        rows = order[s:e]
        items, types, ts = ev.item[rows], ev.type[rows], ev.ts[rows]
        bought = types == PURCHASE
        recent = np.zeros(rows.size, bool)
        recent[-capacity:] = True
        distinct = np.unique(items[bought | recent])
        pos = np.searchsorted(distinct, items)
        purchases = np.bincount(pos[bought], minlength=distinct.size).astype(np.float64)
        last_purchase = np.zeros(distinct.size, np.int64)
        np.maximum.at(last_purchase, pos[bought], ts[bought])
        events = np.bincount(pos[recent], minlength=distinct.size).astype(np.float64)
        last_event = np.zeros(distinct.size, np.int64)
        np.maximum.at(last_event, pos[recent], ts[recent])
        out[int(u)] = UserHistory(distinct, purchases, last_purchase, events, last_event)
    return out


def co_occurrence(ev: Events, n_items: int, neighbours: int) -> sp.csr_matrix:
    """Item × item cosine similarity of the users who engaged with each, top `neighbours` per row."""
    m = (ev.item >= 0) & (ev.type >= CLICK)
    n_users = int(ev.user.max()) + 1 if ev.user.size else 1
    x = sp.csr_matrix((np.ones(m.sum()), (ev.user[m], ev.item[m])), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = (sp.diags(inv) @ (x.T @ x) @ sp.diags(inv)).tocsr()
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    rows, cols, vals = [], [], []
    for r in range(n_items):
        s, e = sim.indptr[r], sim.indptr[r + 1]
        sel = np.arange(s, e)
        if sel.size > neighbours:
            # Ties broken by the smaller item row, as the Rust loader's order is the file's.
            sel = s + np.lexsort((sim.indices[s:e], -sim.data[s:e]))[:neighbours]
        rows.append(np.full(sel.size, r))
        cols.append(sim.indices[sel])
        vals.append(sim.data[sel].astype(np.float32))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_items, n_items), dtype=np.float32)


def _days(now_ms: int, t_ms: np.ndarray) -> np.ndarray:
    """Days since t (0 meaning never → NEVER_DAYS), capped at NEVER_DAYS, never negative."""
    d = np.where(t_ms > 0, (now_ms - t_ms) / DAY_MS, NEVER_DAYS)
    return np.clip(d, 0.0, NEVER_DAYS)


def history_features(source: dict, h: UserHistory, cands: np.ndarray, now_ms: int, catalog: dict) -> np.ndarray:
    """[len(cands), width] float32 for one history source of the feature spec."""
    src = source["source"]
    n = cands.size
    where = {int(i): k for k, i in enumerate(h.items)}
    at = np.array([where.get(int(c), -1) for c in cands], dtype=np.int64)
    has = at >= 0
    if src == "user_item_history":
        purchases = np.where(has, h.purchases[at], 0.0)
        last_p = np.where(has, h.last_purchase_ms[at], 0)
        events = np.where(has, h.events[at], 0.0)
        last_e = np.where(has, h.last_event_ms[at], 0)
        out = np.stack([np.log1p(purchases), np.log1p(_days(now_ms, last_p)),
                        np.log1p(events), np.log1p(_days(now_ms, last_e))], axis=1)
    elif src == "user_category_history":
        codes = catalog["category_code"]
        hc = codes[h.items] if h.items.size else np.zeros(0, np.int64)
        out = np.zeros((n, 3))
        for k, c in enumerate(cands):
            same = hc == codes[c]
            last = h.last_purchase_ms[same].max() if same.any() else 0
            out[k] = [np.log1p(h.purchases[same].sum()), np.log1p(_days(now_ms, np.array(last))),
                      np.log1p(h.events[same].sum())]
    elif src == "co_occurrence":
        co: sp.csr_matrix = catalog["co_occurrence"]
        out = np.zeros((n, 2))
        if h.items.size:
            t = np.maximum(h.last_event_ms, h.last_purchase_ms)
            w = np.power(0.5, _days(now_ms, t) / float(source["half_life_days"]))
            latest = (t == t.max()).astype(np.float64)
            pos = {int(c): k for k, c in enumerate(cands)}
            for hi, wi, li in zip(h.items, w, latest):
                s, e = co.indptr[hi], co.indptr[hi + 1]
                for j, sim in zip(co.indices[s:e], co.data[s:e]):
                    k = pos.get(int(j))
                    if k is not None:
                        out[k, 0] += wi * float(sim)
                        out[k, 1] += li * float(sim)
    elif src == "user_price":
        log_price = np.log(np.maximum(catalog["price"][cands].astype(np.float64), 0.01))
        paid = h.items[h.purchases > 0] if (h.purchases > 0).any() else h.items
        ref = np.log(np.maximum(catalog["price"][paid].astype(np.float64), 0.01)).mean() if paid.size else None
        out = (log_price - ref if ref is not None else np.zeros(n))[:, None]
    elif src == "user_activity":
        latest = np.maximum(h.last_event_ms.max(initial=0), h.last_purchase_ms.max(initial=0))
        out = np.tile([np.log1p(h.items.size), np.log1p(_days(now_ms, np.array(latest)))], (n, 1))
    else:
        raise ValueError(f"not a history source: {src!r}")
    return np.asarray(out, dtype=np.float32).reshape(n, source["width"])


HISTORY_SOURCES = {"user_item_history", "user_category_history", "co_occurrence", "user_price", "user_activity"}
