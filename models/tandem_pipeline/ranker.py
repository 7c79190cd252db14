"""Ranking model: an MLP over online features, trained on retrieval-shaped candidates, exported to ONNX."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .features import assemble, user_vector
from .world import CLICK, Events


def group_by_user(ev: Events) -> dict[int, np.ndarray]:
    order = np.argsort(ev.user, kind="stable")
    users, starts = np.unique(ev.user[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    return {int(u): order[s:e] for u, s, e in zip(users, starts, bounds)}


def user_vectors(emb: np.ndarray, ev: Events, users: list[int], groups: dict[int, np.ndarray]):
    vecs, kept = [], []
    for u in users:
        rows = groups.get(u)
        if rows is None:
            continue
        v = user_vector(emb, ev.item[rows], ev.type[rows], ev.ts[rows])
        if v is not None:
            vecs.append(v)
            kept.append(u)
    return np.array(vecs, dtype=np.float32).reshape(len(kept), emb.shape[1]), kept


def block_rows(n_items: int) -> int:
    """Users scored against the whole catalog at once: about 200 MB of scores per block."""
    return max(16, min(1024, 50_000_000 // n_items))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    part = np.argpartition(-scores, n, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class CandidateRows:
    """Labelled rows shaped like serving: each user's retrieved candidates, one row each."""
    vecs: np.ndarray  # [users, dim] query vectors from history before the label window
    u_rows: np.ndarray  # row -> user position
    i_rows: np.ndarray  # row -> item
    y: np.ndarray  # 1 if the user engaged with the item in the label window
    recent: list  # per user position: history item rows, newest first
    hours: np.ndarray  # per user position: UTC hour of the last history event

    def per_row(self, values):
        return [values[u] for u in self.u_rows]


def candidate_rows(rng, train: Events, emb: np.ndarray, max_users: int) -> CandidateRows:
    """History before t1 → user vector; engagement in [t1, end of train) → labels."""
    t1 = int(np.quantile(train.ts, 0.8))
    hist_mask = train.ts < t1
    hist = Events(train.user[hist_mask], train.item[hist_mask], train.type[hist_mask], train.ts[hist_mask])
    lab_mask = (~hist_mask) & (train.type >= CLICK)
    lab = Events(train.user[lab_mask], train.item[lab_mask], train.type[lab_mask], train.ts[lab_mask])
    hist_groups, lab_groups = group_by_user(hist), group_by_user(lab)
    users = [u for u in lab_groups if u in hist_groups]
    rng.shuffle(users)
    vecs, users = user_vectors(emb, hist, users[:max_users], hist_groups)
    u_rows, i_rows, y = [], [], []
    step = block_rows(len(emb))
    for start in range(0, len(users), step):
        block = vecs[start:start + step]
        # Rows shaped like serving: the retrieved candidates, labelled by later engagement.
        cands = top_n(block @ emb.T, 200)
        for j, u in enumerate(users[start:start + step]):
            hit = np.isin(cands[j], lab.item[lab_groups[u]])
            pos, rest = cands[j][hit], cands[j][~hit]
            if pos.size == 0:
                continue
            neg = rng.choice(rest, size=min(24, rest.size), replace=False)
            items = np.concatenate([pos, neg])
            u_rows.append(np.full(items.size, start + j))
            i_rows.append(items)
            y.append(np.concatenate([np.ones(pos.size), np.zeros(neg.size)]))
    recent, hours = [], []
    for u in users:
        rows = hist_groups[u]
        order = np.argsort(-hist.ts[rows], kind="stable")
        recent.append(hist.item[rows][order])
        hours.append(int(hist.ts[rows].max() // 3_600_000 % 24))
    return CandidateRows(vecs, np.concatenate(u_rows), np.concatenate(i_rows),
                         np.concatenate(y).astype(np.int64), recent, np.array(hours))


def training_rows(rows: CandidateRows, catalog: dict, spec: dict):
    x = assemble(spec, catalog, rows.vecs[rows.u_rows], rows.i_rows)["features"]
    return x, rows.y


def train_and_export(x: np.ndarray, y: np.ndarray, hidden: list[int], max_iter: int, seed: int,
                     early_stopping: bool = True, alpha: float = 1e-4, batch_size: int = 512) -> bytes:
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=tuple(hidden), batch_size=batch_size, max_iter=max_iter,
                      early_stopping=early_stopping, n_iter_no_change=3, alpha=alpha, random_state=seed),
    )
    model.fit(x, y)
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    folded = fold_scaler(onx)
    # The fold must not change what the service serves: checked on the training rows.
    sample = x[:1024].astype(np.float32)
    before, after = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        .run(["probabilities"], {"features": sample})[0]
        for m in (onx, folded)
    )
    gap = float(np.abs(before - after).max())
    if gap > 1e-5:
        raise ValueError(f"folding the scaler changed the probabilities by up to {gap}")
    return folded.SerializeToString()


def fold_scaler(model: onnx.ModelProto) -> onnx.ModelProto:
    """The StandardScaler folded into the first layer's weights, the same scores (to float
    rounding) from one node less.

    skl2onnx exports the scaler as `ai.onnx.ml.Scaler`, which ONNX Runtime computes one
    element at a time: on 200 candidates x 92 features it took about 130 of the model's 200
    microseconds per run, more than the three matrix products. (x - offset) * scale @ W + b
    is x @ (scale[:, None] * W) + (b - (offset * scale) @ W): the first MatMul reads the
    features directly. Returns the model unchanged when its graph is not that shape.
    """
    nodes = list(model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    consumers = lambda name: [n for n in nodes if name in n.input]
    scalers = [n for n in nodes if n.op_type == "Scaler"]
    if len(scalers) != 1:
        return model
    scaler = scalers[0]
    chain = consumers(scaler.output[0])
    cast = chain[0] if len(chain) == 1 and chain[0].op_type == "Cast" else None
    head = consumers(cast.output[0]) if cast else chain
    if len(head) != 1 or head[0].op_type != "MatMul" or head[0].input[0] != (cast or scaler).output[0]:
        return model
    matmul = head[0]
    adds = consumers(matmul.output[0])
    if len(adds) != 1 or adds[0].op_type != "Add" or matmul.input[1] not in inits or adds[0].input[1] not in inits:
        return model
    add = adds[0]
    attrs = {a.name: np.array(a.floats, dtype=np.float64) for a in scaler.attribute}
    weights = numpy_helper.to_array(inits[matmul.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(inits[add.input[1]]).astype(np.float64)
    offset = np.broadcast_to(attrs.get("offset", np.zeros(1)), weights.shape[:1])
    scale = np.broadcast_to(attrs.get("scale", np.ones(1)), weights.shape[:1])
    if len(consumers(matmul.input[1])) != 1 or len(consumers(add.input[1])) != 1:
        return model
    folded = onnx.ModelProto.FromString(model.SerializeToString())
    g_inits = {t.name: t for t in folded.graph.initializer}
    g_inits[matmul.input[1]].CopyFrom(numpy_helper.from_array(
        (scale[:, None] * weights).astype(np.float32), matmul.input[1]))
    g_inits[add.input[1]].CopyFrom(numpy_helper.from_array(
        (bias - (offset * scale) @ weights).astype(np.float32), add.input[1]))
    # By position: the copy keeps the node order, and node names may be empty.
    dropped = {nodes.index(scaler)} | ({nodes.index(cast)} if cast else set())
    at = nodes.index(matmul)
    kept = []
    for i, node in enumerate(folded.graph.node):
        if i in dropped:
            continue
        if i == at:
            node.input[0] = scaler.input[0]
        kept.append(node)
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    onnx.checker.check_model(folded)
    return folded
