"""The second reference model: dense features plus a learned category embedding and a pooled
embedding of the user's recent items, in three input tensors (float32 dense, int64 category,
int64 recent-items sequence). It proves the service feeds multi-input models; trained here with
numpy (Adam, backprop written out) and exported with onnx.helper.

Graph:  dense ─ standardize ───────────────────────────────┐
        category ─ Gather(category table) ─────────────────┤ Concat ─ Gemm/Relu ─ Gemm/Relu ─ Gemm ─ Sigmoid → score
        recent_items ─ Gather(item table) ─ masked mean ─┬─┤
        dense[item embedding] ─────────── dot ───────────┘─┘
The item table is the catalog's embeddings (row 0: padding) and stays fixed; the category
table and the MLP are learned.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ_LEN = 20
CAT_DIM = 8


def make_spec(dim: int, categories: list[str], n_items: int, version: str, hidden: list[int]) -> dict:
    dense = [
        {"source": "user_vector", "width": dim},
        {"source": "item_embedding", "width": dim},
        {"source": "user_item_dot", "width": 1},
        {"source": "retrieval_score", "width": 1},
        {"source": "item_numeric", "column": "price", "transform": "log1p", "width": 1},
        {"source": "item_numeric", "column": "popularity", "transform": "log1p", "width": 1},
        {"source": "item_numeric", "column": "in_stock", "transform": "identity", "width": 1},
        {"source": "context_numeric", "key": "hour_of_day", "default": 12.0, "width": 1},
    ]
    width = sum(f["width"] for f in dense)
    return {
        "format_version": 2,
        "model": {"name": "seqranker", "version": version, "file": "model.onnx",
                  "kind": "numpy MLP with category embedding and recent-items pooling",
                  "hidden_layers": hidden},
        "embedding_dim": dim,
        "inputs": [
            {"name": "dense", "dtype": "float32", "shape": [-1, width], "features": dense},
            {"name": "category", "dtype": "int64", "shape": [-1, 1],
             "features": [{"source": "item_categorical", "column": "category",
                           "vocabulary": categories, "width": 1}]},
            {"name": "recent_items", "dtype": "int64", "shape": [-1, SEQ_LEN],
             "features": [{"source": "recent_items", "num_ids": n_items + 1, "width": SEQ_LEN}]},
        ],
        "output": {"name": "score", "dtype": "float32", "column": 0},
    }


class Model:
    """Parameters and the forward/backward pass the ONNX graph reproduces."""

    def __init__(self, rng, item_table: np.ndarray, n_categories: int, dense_width: int,
                 hidden: list[int], mean: np.ndarray, std: np.ndarray):
        dim = item_table.shape[1]
        self.item_table = item_table  # [n_items + 1, dim], row 0 zeros
        self.dim, self.mean, self.std = dim, mean, std
        self.cat_table = (rng.normal(size=(n_categories + 1, CAT_DIM)) * 0.1).astype(np.float32)
        sizes = [dense_width + CAT_DIM + dim + 1] + hidden + [1]
        self.w = [(rng.normal(size=(a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
        self.b = [np.zeros(b, np.float32) for b in sizes[1:]]

    def features(self, dense, category, recent):
        emb = self.item_table[recent]  # [B, L, dim]
        mask = (recent > 0).astype(np.float32)[:, :, None]
        pooled = (emb * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        item = dense[:, self.dim:2 * self.dim]
        seq_dot = (pooled * item).sum(axis=1, keepdims=True)
        d = (dense - self.mean) / self.std
        return np.concatenate([d, self.cat_table[category[:, 0]], pooled, seq_dot], axis=1).astype(np.float32)

    def forward(self, x):
        acts = [x]
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            z = acts[-1] @ w + b
            acts.append(np.maximum(z, 0) if i < len(self.w) - 1 else z)
        return acts

    def predict(self, dense, category, recent):
        z = self.forward(self.features(dense, category, recent))[-1][:, 0]
        return 1.0 / (1.0 + np.exp(-z))


def train(rng, inputs: dict, y: np.ndarray, item_table: np.ndarray, n_categories: int,
          hidden: list[int], epochs: int, batch: int = 512, lr: float = 1e-3) -> Model:
    dense, category, recent = inputs["dense"], inputs["category"], inputs["recent_items"]
    mean = dense.mean(axis=0)
    std = np.maximum(dense.std(axis=0), 1e-3).astype(np.float32)
    model = Model(rng, item_table, n_categories, dense.shape[1], hidden, mean.astype(np.float32), std)
    params = model.w + model.b + [model.cat_table]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0
    cat_cols = slice(dense.shape[1], dense.shape[1] + CAT_DIM)
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            x = model.features(dense[idx], category[idx], recent[idx])
            acts = model.forward(x)
            p = 1.0 / (1.0 + np.exp(-acts[-1][:, 0]))
            grad = ((p - y[idx]) / len(idx)).astype(np.float32)[:, None]  # d(logloss)/dz
            gw, gb = [None] * len(model.w), [None] * len(model.b)
            for i in range(len(model.w) - 1, -1, -1):
                gw[i] = acts[i].T @ grad
                gb[i] = grad.sum(axis=0)
                grad = grad @ model.w[i].T
                if i > 0:
                    grad = grad * (acts[i] > 0)
            gcat = np.zeros_like(model.cat_table)
            np.add.at(gcat, category[idx, 0], grad[:, cat_cols])
            t += 1
            for j, (param, g) in enumerate(zip(params, gw + gb + [gcat])):
                m[j] = 0.9 * m[j] + 0.1 * g
                v[j] = 0.999 * v[j] + 0.001 * g * g
                param -= lr * (m[j] / (1 - 0.9 ** t)) / (np.sqrt(v[j] / (1 - 0.999 ** t)) + 1e-8)
    return model


def export(model: Model, dense_width: int) -> bytes:
    dim = model.dim
    init = [
        numpy_helper.from_array(model.item_table.astype(np.float32), "item_table"),
        numpy_helper.from_array(model.cat_table, "category_table"),
        numpy_helper.from_array(model.mean.astype(np.float32), "dense_mean"),
        numpy_helper.from_array(model.std.astype(np.float32), "dense_std"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([dim], np.int64), "emb_start"),
        numpy_helper.from_array(np.array([2 * dim], np.int64), "emb_end"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Sub", ["dense", "dense_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "dense_std"], ["dense_std_out"]),
        helper.make_node("Gather", ["category_table", "category"], ["cat_3d"], axis=0),
        helper.make_node("Flatten", ["cat_3d"], ["cat_emb"], axis=1),
        helper.make_node("Gather", ["item_table", "recent_items"], ["seq_emb"], axis=0),
        helper.make_node("Greater", ["recent_items", "zero_i64"], ["present"]),
        helper.make_node("Cast", ["present"], ["mask_2d"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_2d", "axis2"], ["mask"]),
        helper.make_node("Mul", ["seq_emb", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["seq_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_2d", "axis1"], ["seq_count"], keepdims=1),
        helper.make_node("Max", ["seq_count", "one"], ["seq_count_1"]),
        helper.make_node("Div", ["seq_sum", "seq_count_1"], ["pooled"]),
        helper.make_node("Slice", ["dense", "emb_start", "emb_end", "axis1"], ["item_emb"]),
        helper.make_node("Mul", ["pooled", "item_emb"], ["pooled_item"]),
        helper.make_node("ReduceSum", ["pooled_item", "axis1"], ["seq_dot"], keepdims=1),
        helper.make_node("Concat", ["dense_std_out", "cat_emb", "pooled", "seq_dot"], ["h0"], axis=1),
    ]
    init.append(numpy_helper.from_array(np.array(0, np.int64), "zero_i64"))
    prev = "h0"
    for i, (w, b) in enumerate(zip(model.w, model.b)):
        init += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"z{i}"]))
        if i < len(model.w) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"]))
            prev = f"h{i + 1}"
    nodes.append(helper.make_node("Sigmoid", [f"z{len(model.w) - 1}"], ["score"]))
    graph = helper.make_graph(
        nodes, "seqranker",
        inputs=[
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["rows", dense_width]),
            helper.make_tensor_value_info("category", TensorProto.INT64, ["rows", 1]),
            helper.make_tensor_value_info("recent_items", TensorProto.INT64, ["rows", SEQ_LEN]),
        ],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["rows", 1])],
        initializer=init,
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tandem_pipeline")
    onx.ir_version = 8
    onnx.checker.check_model(onx)
    return onx.SerializeToString()
