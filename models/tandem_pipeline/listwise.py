"""A listwise MLP ensemble: trained on each user's candidate list as one softmax, exported to ONNX.

Why not sklearn's MLPClassifier (the first history ranker): it fits a probability per row, so
part of its capacity goes to telling users apart (who buys anything at all), which no
within-list ranking needs, and on the shop's ~1,500 training lists one seed differs from the
next by several points of NDCG. Here the loss is the softmax cross-entropy of each list (the
positives share the target mass), and `members` networks from different seeds are averaged
in one graph (the validation figures that chose this are in `history_ranker.train`). numpy
is enough at this size (seconds per member); PyTorch would add gigabytes of wheels to every CI run for the same two matrix products.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

Layers = list[tuple[np.ndarray, np.ndarray]]


def train(x: np.ndarray, y: np.ndarray, sizes: np.ndarray, hidden: list[int], epochs: int, seed: int,
          members: int = 5, lr: float = 1e-3, l2: float = 1e-4, lists_per_batch: int = 32
          ) -> tuple[np.ndarray, np.ndarray, list[Layers]]:
    """`sizes`: each list's row count, rows contiguous. Returns the scaler and the members."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-9] = 1.0
    xs = (x - mean) / std
    y = y.astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    dims = [x.shape[1], *hidden, 1]
    out = []
    for _ in range(members):
        layers = [[rng.standard_normal((a, b)) * np.sqrt(2.0 / a), np.zeros(b)] for a, b in zip(dims[:-1], dims[1:])]
        moments = [[[np.zeros_like(p), np.zeros_like(p)] for p in layer] for layer in layers]
        step = 0
        for _ in range(epochs):
            order = rng.permutation(len(sizes))
            for at in range(0, order.size, lists_per_batch):
                batch = order[at:at + lists_per_batch]
                rows = np.concatenate([np.arange(starts[g], starts[g] + sizes[g]) for g in batch])
                bounds = np.concatenate([[0], np.cumsum(sizes[batch])[:-1]])
                list_of_row = np.repeat(np.arange(batch.size), sizes[batch])
                acts = [xs[rows]]
                for k, (w, b) in enumerate(layers):
                    h = acts[-1] @ w + b
                    acts.append(np.maximum(h, 0.0) if k < len(layers) - 1 else h)
                s = acts[-1][:, 0]
                e = np.exp(s - np.maximum.reduceat(s, bounds)[list_of_row])
                p = e / np.add.reduceat(e, bounds)[list_of_row]
                positives = np.add.reduceat(y[rows], bounds)[list_of_row]
                # d(cross-entropy)/d(score): softmax minus the target share, per list.
                d = ((p * (positives > 0) - y[rows] / np.maximum(positives, 1.0)) / batch.size)[:, None]
                step += 1
                for k in range(len(layers) - 1, -1, -1):
                    w = layers[k][0]
                    grads = (acts[k].T @ d + l2 * w, d.sum(axis=0))
                    if k > 0:
                        d = (d @ w.T) * (acts[k] > 0)
                    for j, g in enumerate(grads):
                        m, v = moments[k][j]
                        m *= 0.9
                        m += 0.1 * g
                        v *= 0.999
                        v += 0.001 * g * g
                        layers[k][j] -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        out.append([(w, b) for w, b in layers])
    return mean, std, out


def scores(mean: np.ndarray, std: np.ndarray, members: list[Layers], x: np.ndarray) -> np.ndarray:
    """The exported graph's logit, in numpy (the export is checked against it)."""
    xs = (x.astype(np.float64) - mean) / std
    total = np.zeros(x.shape[0])
    for layers in members:
        h = xs
        for k, (w, b) in enumerate(layers):
            h = h @ w + b
            h = np.maximum(h, 0.0) if k < len(layers) - 1 else h
        total += h[:, 0]
    return total / len(members)


def export(mean: np.ndarray, std: np.ndarray, members: list[Layers], check_rows: np.ndarray) -> bytes:
    """One graph: the members' first layers as one MatMul (the scaler folded in), their
    middle layers side by side, the last layers as one MatMul that averages. Output
    `probabilities` [n, 2] (column 1 = sigmoid of the mean logit), as the spec expects."""
    n_members, n_layers = len(members), len(members[0])
    if n_layers < 3:
        raise ValueError("the export expects at least two hidden layers")
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    w0 = np.concatenate([m[0][0] for m in members], axis=1)
    b0 = np.concatenate([m[0][1] for m in members]) - (mean / std) @ w0
    inits = [numpy_helper.from_array(f32(w0 / std[:, None]), "w0"), numpy_helper.from_array(f32(b0), "b0"),
             numpy_helper.from_array(np.array([m[0][1].size for m in members], np.int64), "split0")]
    nodes = [helper.make_node("MatMul", ["features", "w0"], ["l0"]),
             helper.make_node("Add", ["l0", "b0"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["r0"]),
             helper.make_node("Split", ["r0", "split0"], [f"m{j}_0" for j in range(n_members)], axis=1)]
    for j, layers in enumerate(members):
        for k in range(1, n_layers - 1):
            w, b = layers[k]
            inits += [numpy_helper.from_array(f32(w), f"w{j}_{k}"), numpy_helper.from_array(f32(b), f"b{j}_{k}")]
            nodes += [helper.make_node("MatMul", [f"m{j}_{k - 1}", f"w{j}_{k}"], [f"l{j}_{k}"]),
                      helper.make_node("Add", [f"l{j}_{k}", f"b{j}_{k}"], [f"a{j}_{k}"]),
                      helper.make_node("Relu", [f"a{j}_{k}"], [f"m{j}_{k}"])]
    last = n_layers - 1
    w_last = np.concatenate([m[last][0] for m in members], axis=0) / n_members
    b_last = np.array([sum(float(m[last][1][0]) for m in members) / n_members])
    inits += [numpy_helper.from_array(f32(w_last), "w_last"), numpy_helper.from_array(f32(b_last), "b_last"),
              numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    nodes += [helper.make_node("Concat", [f"m{j}_{last - 1}" for j in range(n_members)], ["joined"], axis=1),
              helper.make_node("MatMul", ["joined", "w_last"], ["l_last"]),
              helper.make_node("Add", ["l_last", "b_last"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], ["p1"]),
              helper.make_node("Sub", ["one", "p1"], ["p0"]),
              helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "listwise_mlp_ensemble",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, int(mean.size)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.23 and ort's api-22 read
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"features": check_rows.astype(np.float32)})[0][:, 1]
    want = 1.0 / (1.0 + np.exp(-scores(mean, std, members, check_rows)))
    gap = float(np.abs(got - want).max()) if got.size else 0.0
    if gap > 1e-4:
        raise ValueError(f"the exported graph differs from the trained members by up to {gap}")
    return model.SerializeToString()
