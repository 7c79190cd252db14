"""Baseline recommenders and the offline report that puts tandem beside them.

Two tasks on a time split, the same users for both: the test customers are those who, after
the cutoff, engaged (clicked, carted or bought) with at least one item they had not engaged
with before it.
- new items: targets are those items; what the user engaged with before is not recommended;
- all items: targets are every item engaged with after the cutoff; repeats are allowed.
Warm customers have history before the cutoff, cold ones none (they get the fallback only:
recent popularity for the baselines, the gateway's live trending items for tandem's methods).

Every method is a function from a block of users to a score matrix over the catalog; the
top 10 after exclusions is its answer. Hyper-parameters are chosen on a validation split
inside train (the last `validation_days` before the cutoff as the targets, the history
before them as the input), never on the test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .world import CLICK, Events

DAY_MS = 86_400_000
K = 10
# Half-lives (minutes) tried for the gateway's live trending: 6 hours (its default) to 2 weeks.
LIVE_TRENDING_HALF_LIVES_MIN = (360, 1440, 4320, 10080, 20160)
TYPE_WEIGHTS = np.array([0.0, 1.0, 2.0, 4.0, 8.0])


@dataclass
class Task:
    name: str  # "new" or "all"
    users: np.ndarray  # user indexes
    targets: list[set[int]]  # per user
    exclude: list[np.ndarray]  # per user: items not to recommend
    warm: np.ndarray  # bool per user


@dataclass
class History:
    """What methods may know: the events before `now_ms`, as matrices."""
    events: Events
    n_users: int
    n_items: int
    now_ms: int
    counts: sp.csr_matrix = field(init=False)  # type-weighted event counts
    engaged: sp.csr_matrix = field(init=False)  # 1 where the user clicked/carted/bought

    def __post_init__(self):
        ev = self.events
        ok = ev.item >= 0
        w = TYPE_WEIGHTS[ev.type.astype(np.int64)]
        self.counts = sp.csr_matrix((w[ok], (ev.user[ok], ev.item[ok])), shape=(self.n_users, self.n_items))
        self.counts.sum_duplicates()
        pos = ok & (ev.type >= CLICK)
        self.engaged = sp.csr_matrix((np.ones(pos.sum()), (ev.user[pos], ev.item[pos])),
                                     shape=(self.n_users, self.n_items))
        self.engaged.sum_duplicates()
        self.engaged.data[:] = 1.0


def before(ev: Events, t_ms: int) -> Events:
    m = ev.ts < t_ms
    return Events(ev.user[m], ev.item[m], ev.type[m], ev.ts[m])


def between(ev: Events, t0: int, t1: int) -> Events:
    m = (ev.ts >= t0) & (ev.ts < t1)
    return Events(ev.user[m], ev.item[m], ev.type[m], ev.ts[m])


def make_tasks(hist: History, future: Events, max_users: int | None, rng) -> tuple[Task, Task]:
    """Both tasks over the users with at least one new engaged item in `future`."""
    pos = (future.type >= CLICK)
    by_user: dict[int, set[int]] = {}
    for u, i in zip(future.user[pos], future.item[pos]):
        by_user.setdefault(int(u), set()).add(int(i))
    users, new_t, all_t, excl, warm = [], [], [], [], []
    for u in sorted(by_user):
        before_items = hist.engaged.indices[hist.engaged.indptr[u]:hist.engaged.indptr[u + 1]] \
            if u < hist.n_users else np.zeros(0, np.int64)
        fresh = by_user[u] - set(before_items.tolist())
        if not fresh:
            continue
        users.append(u)
        new_t.append(fresh)
        all_t.append(by_user[u])
        excl.append(before_items)
        warm.append(before_items.size > 0 or hist.counts[u].nnz > 0 if u < hist.n_users else False)
    users = np.array(users, dtype=np.int64)
    keep = np.arange(users.size)
    if max_users is not None and users.size > max_users:
        keep = np.sort(rng.choice(users.size, size=max_users, replace=False))
    pick = lambda xs: [xs[k] for k in keep]  # noqa: E731
    warm = np.array(warm, bool)[keep]
    empty = [np.zeros(0, np.int64)] * keep.size
    return (Task("new", users[keep], pick(new_t), pick(excl), warm),
            Task("all", users[keep], pick(all_t), empty, warm))


ScoreFn = Callable[[np.ndarray], np.ndarray]  # users -> [len(users), n_items]


def top_lists(score: ScoreFn, task: Task, fallback: np.ndarray, k: int = K, block: int = 512) -> np.ndarray:
    """[users, k] item indexes: the method's top k after exclusions, cold users from `fallback`."""
    out = np.zeros((task.users.size, k), np.int64)
    for start in range(0, task.users.size, block):
        users = task.users[start:start + block]
        s = np.asarray(score(users), dtype=np.float64).copy()
        for j in range(users.size):
            s[j, task.exclude[start + j]] = -np.inf
            if not task.warm[start + j]:
                s[j] = fallback
                s[j, task.exclude[start + j]] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        out[start:start + users.size] = np.take_along_axis(part, order, axis=1)
    return out


def metrics(lists: np.ndarray, task: Task, category: np.ndarray, buyers: np.ndarray, n_train_users: int,
            n_items: int, mask: np.ndarray | None = None) -> dict:
    """HR, NDCG, recall at k, catalog coverage, intra-list category diversity and novelty."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(lists.shape[0])
    if rows.size == 0:
        return {"users": 0}
    disc = 1.0 / np.log2(np.arange(2, lists.shape[1] + 2))
    hr, ndcg, recall, div = [], [], [], []
    for r in rows:
        targets = task.targets[r]
        hit = np.array([int(i) in targets for i in lists[r]])
        ideal = disc[:min(len(targets), lists.shape[1])].sum()
        hr.append(float(hit.any()))
        ndcg.append(float((hit * disc).sum() / ideal) if ideal > 0 else 0.0)
        recall.append(float(hit.sum() / len(targets)))
        c = category[lists[r]]
        same = (c[:, None] == c[None, :]).sum() - c.size
        div.append(1.0 - same / max(c.size * (c.size - 1), 1))
    items = lists[rows].ravel()
    share = (buyers[items] + 1.0) / (n_train_users + 1.0)
    return {"users": int(rows.size), "hr10": float(np.mean(hr)), "ndcg10": float(np.mean(ndcg)),
            "recall10": float(np.mean(recall)), "coverage": float(np.unique(items).size / n_items),
            "diversity": float(np.mean(div)), "novelty": float(np.mean(-np.log2(share)))}


# ---- methods ---------------------------------------------------------------------------------

def distinct_buyers(hist: History, days: float | None) -> np.ndarray:
    ev = hist.events
    m = (ev.item >= 0) & (ev.type >= CLICK)
    if days is not None:
        m &= ev.ts >= hist.now_ms - days * DAY_MS
    pairs = np.unique(np.stack([ev.user[m], ev.item[m]]), axis=1)
    return np.bincount(pairs[1], minlength=hist.n_items).astype(np.float64)


def popularity(hist: History, days: float | None = None) -> ScoreFn:
    return popularity_scores(distinct_buyers(hist, days))


def popularity_scores(pop: np.ndarray) -> ScoreFn:
    """The same scores for every user."""
    return lambda users: np.broadcast_to(pop, (users.size, pop.size))


def live_trending(hist: History, half_life_min: float) -> np.ndarray:
    """What the gateway answers cold users with (libs/personalization/src/trending.rs): every
    event weighted by its type, halving every `half_life_min`, summed per item at the cut."""
    ev = hist.events
    m = ev.item >= 0
    age_half_lives = (hist.now_ms - ev.ts[m]) / (half_life_min * 60_000.0)
    return np.bincount(ev.item[m], weights=TYPE_WEIGHTS[ev.type[m]] * np.exp2(-age_half_lives),
                       minlength=hist.n_items)


def repeat_buy(hist: History, fallback: np.ndarray) -> ScoreFn:
    """The user's own items by how often, then how recently, they engaged; then `fallback`."""
    ev = hist.events
    m = ev.item >= 0
    last = sp.csr_matrix(((ev.ts[m] - ev.ts.min() + 1).astype(np.float64), (ev.user[m], ev.item[m])),
                         shape=(hist.n_users, hist.n_items))
    last = last.tocoo()
    latest = sp.csr_matrix((np.zeros(0), (np.zeros(0, int), np.zeros(0, int))), shape=last.shape)
    if last.nnz:
        order = np.lexsort((last.data, last.row, last.col))
        keys = last.row[order] * hist.n_items + last.col[order]
        final = np.r_[keys[1:] != keys[:-1], True]
        latest = sp.csr_matrix((last.data[order][final], (last.row[order][final], last.col[order][final])),
                               shape=last.shape)
    span = float(ev.ts.max() - ev.ts.min() + 2) if ev.ts.size else 1.0
    base = fallback / (fallback.max() + 1.0)

    def score(users):
        own = hist.engaged[users].multiply(hist.counts[users]).toarray()
        rec = latest[users].toarray() / span
        return np.where(own > 0, 10.0 + own + rec, 0.0) + base
    return score


def item_knn(hist: History, neighbours: int = 100) -> ScoreFn:
    """Cosine similarity between items' buyer sets, top `neighbours` per item."""
    x = hist.engaged.tocsc()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()) + 1e-9
    sim = (x.T @ x).tocsr().astype(np.float64)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    sim = sp.diags(1.0 / norms) @ sim @ sp.diags(1.0 / norms)
    sim = keep_top(sp.csr_matrix(sim), neighbours)
    tie = distinct_buyers(hist, None)
    tie = 1e-6 * tie / (tie.max() + 1.0)
    return lambda users: (hist.engaged[users] @ sim).toarray() + tie


def keep_top(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for r in range(m.shape[0]):
        s, e = m.indptr[r], m.indptr[r + 1]
        if e - s > k:
            sel = s + np.argpartition(-m.data[s:e], k)[:k]
        else:
            sel = np.arange(s, e)
        rows.append(np.full(sel.size, r))
        cols.append(m.indices[sel])
        vals.append(m.data[sel])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)


def svd_factors(hist: History, dim: int, seed: int) -> np.ndarray:
    from sklearn.utils.extmath import randomized_svd
    m = hist.counts.copy()
    m.data = np.log1p(m.data)
    dim = max(1, min(dim, min(m.shape) - 1))
    _, s, vt = randomized_svd(m, dim, random_state=seed)
    return (vt.T * np.sqrt(s)).astype(np.float64)


def recency_weights(hist: History, half_life_days: float | None) -> sp.csr_matrix:
    """User × item: sum over the user's events of 2^(-age / half-life) (1 each without one)."""
    ev = hist.events
    m = ev.item >= 0
    if half_life_days is None:
        w = np.ones(m.sum())
    else:
        w = np.power(0.5, (hist.now_ms - ev.ts[m]) / (half_life_days * DAY_MS))
    w = w * TYPE_WEIGHTS[ev.type[m].astype(np.int64)]
    out = sp.csr_matrix((w, (ev.user[m], ev.item[m])), shape=(hist.n_users, hist.n_items))
    out.sum_duplicates()
    return out


def svd(hist: History, factors: np.ndarray, half_life_days: float | None) -> ScoreFn:
    """Truncated SVD of log counts; the user is the recency-weighted sum of their items."""
    w = recency_weights(hist, half_life_days)
    return lambda users: (w[users] @ factors) @ factors.T


def als(hist: History, factors: int, regularization: float, alpha: float, seed: int) -> ScoreFn:
    from implicit.cpu.als import AlternatingLeastSquares
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=15, random_state=seed)
    conf = hist.counts.copy().astype(np.float32)
    conf.data = np.log1p(conf.data)
    model.fit(sp.csr_matrix(conf), show_progress=False)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda users: uf[users] @ itf.T


# ---- tuning and the report -------------------------------------------------------------------

def tune(name: str, grid: list[dict], build: Callable[..., ScoreFn], task: Task, fallback, evaluate) -> dict:
    """The grid point with the best validation NDCG@10 on `task`."""
    best, best_ndcg = grid[0], -1.0
    for params in grid:
        ndcg = evaluate(top_lists(build(**params), task, fallback))["ndcg10"]
        if ndcg > best_ndcg:
            best, best_ndcg = params, ndcg
    print(f"  tuned {name}: {best} (validation NDCG@10 {best_ndcg:.4f})", flush=True)
    return best


@dataclass
class Split:
    """Input history and the two tasks at one cut."""
    hist: History
    new: Task
    all: Task


def split_at(events: Events, n_users: int, n_items: int, cut_ms: int, end_ms: int | None,
             max_users: int | None, rng) -> Split:
    hist = History(before(events, cut_ms), n_users, n_items, cut_ms)
    future = between(events, cut_ms, end_ms if end_ms is not None else np.iinfo(np.int64).max)
    new, all_items = make_tasks(hist, future, max_users, rng)
    return Split(hist, new, all_items)


# A method: (name, tasks it answers, builder from (split, task name, tuned params) to scores).
TandemMethod = Callable[[Split, str], ScoreFn]


def compare(events: Events, n_users: int, n_items: int, category: np.ndarray, cutoff_ms: int, seed: int,
            validation_days: int = 31, max_users: int | None = None,
            tandem: dict[str, TandemMethod] | None = None) -> dict:
    """Every baseline and tandem method on both tasks at the cutoff, tuned on validation."""
    rng = np.random.default_rng(seed)
    train = before(events, cutoff_ms)
    val = split_at(train, n_users, n_items, cutoff_ms - validation_days * DAY_MS, cutoff_ms, max_users, rng)
    test = split_at(events, n_users, n_items, cutoff_ms, None, max_users, rng)
    out: dict = {"users": {t: int(getattr(test, t).users.size) for t in ("new", "all")},
                 "warm_users": int(test.new.warm.sum()), "validation_days": validation_days,
                 "tuned": {}, "methods": {}}

    def evaluator(split: Split, task: Task):
        buyers = distinct_buyers(split.hist, None)
        return lambda lists, mask=None: metrics(lists, task, category, buyers, n_users, n_items, mask)

    for task_name in ("new", "all"):
        v_task, t_task = getattr(val, task_name), getattr(test, task_name)
        v_eval, t_eval = evaluator(val, v_task), evaluator(test, t_task)
        v_fallback = distinct_buyers(val.hist, 30)
        # Recent popularity is also every method's answer for cold users: tuned first.
        recent = tune("recent popularity", [{"days": d} for d in (7, 14, 30, 90)],
                      lambda days: popularity(val.hist, days), v_task, v_fallback, v_eval)
        v_fallback = distinct_buyers(val.hist, recent["days"])
        t_fallback = distinct_buyers(test.hist, recent["days"])
        if task_name == "new":
            # tandem's cold users get the gateway's live trending items, not recent popularity:
            # offline scores them the same way, its half-life chosen here (served with
            # --trending-half-life-min).
            trending = tune("live trending", [{"half_life_min": h} for h in LIVE_TRENDING_HALF_LIVES_MIN],
                            lambda half_life_min: popularity_scores(live_trending(val.hist, half_life_min)),
                            v_task, v_fallback, v_eval)
            out["tuned"]["tandem cold users"] = trending
        t_trending = live_trending(test.hist, out["tuned"]["tandem cold users"]["half_life_min"])
        factors_v = {d: svd_factors(val.hist, d, seed) for d in (32, 64)}
        tuned = {
            "recent popularity": recent,
            "item-kNN (cosine)": tune("item-kNN", [{"neighbours": n} for n in (20, 100, 400)],
                                      lambda neighbours: item_knn(val.hist, neighbours), v_task, v_fallback,
                                      v_eval),
            "ALS (implicit)": tune("ALS", [{"factors": f, "regularization": r, "alpha": a}
                                           for f in (32, 64) for r in (0.01, 0.1) for a in (1.0, 10.0)],
                                   lambda factors, regularization, alpha: als(val.hist, factors, regularization,
                                                                              alpha, seed),
                                   v_task, v_fallback, v_eval),
            "SVD, recency-weighted user": tune("SVD", [{"dim": d, "half_life_days": h}
                                                       for d in (32, 64) for h in (7, 30, 90, None)],
                                               lambda dim, half_life_days: svd(val.hist, factors_v[dim],
                                                                               half_life_days),
                                               v_task, v_fallback, v_eval),
        }
        out["tuned"][task_name] = tuned
        methods: dict[str, ScoreFn] = {
            "popularity": popularity(test.hist, None),
            "recent popularity": popularity(test.hist, recent["days"]),
            "item-kNN (cosine)": item_knn(test.hist, **tuned["item-kNN (cosine)"]),
            "ALS (implicit)": als(test.hist, seed=seed, **tuned["ALS (implicit)"]),
            "SVD, recency-weighted user": svd(test.hist, svd_factors(test.hist, tuned["SVD, recency-weighted user"]
                                                                     ["dim"], seed),
                                              tuned["SVD, recency-weighted user"]["half_life_days"]),
        }
        if task_name == "all":
            methods["repeat-buy"] = repeat_buy(test.hist, t_fallback)
        for name, build in (tandem or {}).items():
            methods[name] = build(test, task_name)
        for name, score in methods.items():
            lists = top_lists(score, t_task, t_trending if name in (tandem or {}) else t_fallback)
            out["methods"].setdefault(name, {})[task_name] = {
                "all": t_eval(lists), "warm": t_eval(lists, t_task.warm), "cold": t_eval(lists, ~t_task.warm)}
    return out


def print_comparison(result: dict, title: str) -> None:
    print(f"\n{title}: {result['users']['new']} test users ({result['warm_users']} warm), top {K}")
    for task, label in (("new", "new items (not engaged with before)"), ("all", "all items (repeats allowed)")):
        for segment in ("all", "warm", "cold"):
            print(f"  {label}, {segment} users")
            print(f"    {'method':<30}{'HR@10':>8}{'NDCG@10':>9}{'recall@10':>10}{'coverage':>9}"
                  f"{'diversity':>10}{'novelty':>8}")
            for name, per_task in result["methods"].items():
                m = per_task.get(task, {}).get(segment)
                if not m or not m.get("users"):
                    continue
                print(f"    {name:<30}{m['hr10']:>8.3f}{m['ndcg10']:>9.3f}{m['recall10']:>10.3f}"
                      f"{m['coverage']:>9.3f}{m['diversity']:>10.3f}{m['novelty']:>8.2f}")
