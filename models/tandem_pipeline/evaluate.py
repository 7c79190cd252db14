"""Offline evaluation on the time-split test events, against a popularity baseline."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .features import assemble
from .features import user_vector
from .ranker import block_rows, group_by_user, top_n, user_vectors
from .world import CLICK, PURCHASE, Events


def _ndcg(ranked: np.ndarray, targets: set[int], k: int) -> float:
    gains = [1.0 / np.log2(i + 2) for i, it in enumerate(ranked[:k]) if int(it) in targets]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(targets))))
    return float(sum(gains) / ideal) if ideal > 0 else 0.0


def evaluate(rng, train: Events, test: Events, catalog: dict, spec: dict, model_path: str,
             max_users: int, num_candidates: int = 200) -> dict:
    emb = catalog["embedding"]
    pop = catalog["popularity"]
    train_groups = group_by_user(train)
    tmask = test.type >= CLICK
    engaged = Events(test.user[tmask], test.item[tmask], test.type[tmask], test.ts[tmask])
    test_groups = group_by_user(engaged)
    users = [u for u in test_groups if u in train_groups]
    rng.shuffle(users)
    vecs, users = user_vectors(emb, train, users[:max_users], train_groups)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    out_name, out_col = spec["output"]["name"], spec["output"]["column"]
    pop_order = np.argsort(-pop, kind="stable")

    acc = {k: [] for k in ("recall100", "pop_recall100", "ndcg10", "hr10", "dot_ndcg10", "dot_hr10",
                           "pop_ndcg10", "pop_hr10")}
    step = block_rows(len(emb))
    for start in range(0, len(users), step):
        block = vecs[start:start + step]
        scores = block @ emb.T
        for j, u in enumerate(users[start:start + step]):
            rows = train_groups[u]
            bought = train.item[rows][train.type[rows] == PURCHASE]
            scores[j, bought] = -np.inf
        cands = top_n(scores, num_candidates)
        for j, u in enumerate(users[start:start + step]):
            targets = set(int(i) for i in engaged.item[test_groups[u]]) - set(
                int(i) for i in train.item[train_groups[u]][train.type[train_groups[u]] == PURCHASE])
            if not targets:
                continue
            rows = train_groups[u]
            bought = set(int(i) for i in train.item[rows][train.type[rows] == PURCHASE])
            popular = np.array([i for i in pop_order[:100 + len(bought)] if int(i) not in bought])[:100]
            acc["recall100"].append(len(targets & set(int(i) for i in cands[j, :100])) / len(targets))
            acc["pop_recall100"].append(len(targets & set(int(i) for i in popular)) / len(targets))
            feats = assemble(spec, catalog, np.repeat(block[j][None], num_candidates, axis=0), cands[j],
                             (block[j] * emb[cands[j]]).sum(axis=1))
            model_scores = session.run([out_name], feats)[0][:, out_col]
            ranked = cands[j][np.argsort(-model_scores, kind="stable")]
            for name, order in (("", ranked), ("dot_", cands[j]), ("pop_", popular)):
                acc[f"{name}ndcg10"].append(_ndcg(order, targets, 10))
                acc[f"{name}hr10"].append(float(any(int(i) in targets for i in order[:10])))
    result = {k: float(np.mean(v)) if v else 0.0 for k, v in acc.items()}
    result["eval_users"] = len(acc["recall100"])
    return result


def print_report(result: dict) -> None:
    print(f"\nEvaluation on the test split ({result['eval_users']} users with engagements after the cut-off)")
    print(f"  {'metric':<14}{'tandem':>10}{'popularity':>12}{'retrieval order':>17}")
    print(f"  {'recall@100':<14}{result['recall100']:>10.4f}{result['pop_recall100']:>12.4f}{'':>17}")
    print(f"  {'NDCG@10':<14}{result['ndcg10']:>10.4f}{result['pop_ndcg10']:>12.4f}{result['dot_ndcg10']:>17.4f}")
    print(f"  {'HR@10':<14}{result['hr10']:>10.4f}{result['pop_hr10']:>12.4f}{result['dot_hr10']:>17.4f}")


def tandem_methods(catalog: dict, spec: dict, model_path, train: Events, num_candidates: int = 200) -> dict:
    """tandem's retrieval order and its ranker, as `baselines.compare` methods.

    Each answers as the service does: the query vector from the user's events before the cut,
    the top `num_candidates` by inner product among items not excluded, then the model.
    """
    from .baselines import Split
    emb = catalog["embedding"].astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out_name, out_col = spec["output"]["name"], spec["output"]["column"]

    def method(rank: bool):
        def build(split: Split, task_name: str):
            task = getattr(split, task_name)
            excluded = {int(u): e for u, e in zip(task.users, task.exclude)}
            groups = group_by_user(split.hist.events)
            ev = split.hist.events

            def score(users):
                s = np.full((users.size, emb.shape[0]), -np.inf)
                for j, u in enumerate(users):
                    rows = groups.get(int(u))
                    if rows is None:
                        continue
                    known = rows[ev.item[rows] >= 0]
                    v = user_vector(emb, ev.item[known], ev.type[known], ev.ts[known])
                    if v is None:
                        continue
                    dots = emb @ v
                    dots[excluded.get(int(u), [])] = -np.inf
                    cands = np.argpartition(-dots, num_candidates)[:num_candidates]
                    if not rank:
                        s[j, cands] = dots[cands]
                        continue
                    feats = assemble(spec, catalog, np.repeat(v[None], cands.size, axis=0), cands, dots[cands])
                    s[j, cands] = session.run([out_name], feats)[0][:, out_col]
                return s
            return score
        return build
    return {"tandem retrieval order": method(False), "tandem ranker (MLP)": method(True)}
