"""Retrieval benchmark: tandem vs hnswlib vs faiss HNSWFlat on one pipeline catalog.

Same vectors, same M and ef_construction, same queries, recall@k against exact brute force.
Queries are real user query vectors: the type- and recency-weighted mean of a train user's
recent items (the pipeline's `user_vector`, what the gateway sends), normalized. The metric
is inner product on the raw item vectors, for all three engines (hnswlib `ip`, faiss
METRIC_INNER_PRODUCT): the embeddings carry popularity in their norm.

    python load-tests/ann/compare.py --data data/demo --out load-tests/ann/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
from tandem_pipeline.features import user_vector  # noqa: E402


def load_items(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    t = pq.read_table(path, columns=["item_id", "embedding"])
    dim = t.schema.field("embedding").type.list_size
    x = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    ids = {v: i for i, v in enumerate(t.column("item_id").to_pylist())}
    return np.ascontiguousarray(x, dtype=np.float32), ids


def user_queries(data: Path, x: np.ndarray, ids: dict[str, int], n: int, seed: int) -> np.ndarray:
    ev = pq.read_table(data / "events" / "train.parquet")
    users = ev.column("user_id").to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(users), size=n, replace=False)
    ev = ev.filter(pc.is_in(ev.column("user_id"), value_set=__import__("pyarrow").array(chosen)))
    u = ev.column("user_id").to_numpy(zero_copy_only=False)
    item = np.array([ids[i] for i in ev.column("item_id").to_pylist()])
    typ = ev.column("event_type").to_numpy()
    ts = ev.column("timestamp_ms").to_numpy()
    out = []
    for user in chosen:
        m = u == user
        v = user_vector(x, item[m], typ[m], ts[m])
        if v is not None:
            out.append(v)
    return np.stack(out).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    top = np.empty((len(q), k), dtype=np.uint32)
    for s in range(0, len(q), 256):
        scores = qn[s:s + 256] @ x.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top[s:s + 256] = np.take_along_axis(part, order, axis=1)
    return top


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed_qps(run, nq: int, min_seconds: float = 2.0) -> float:
    run()  # warm
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        run()
        done += nq
    return done / (time.perf_counter() - t0)


def bench_hnswlib(xa, qa, truth, args) -> dict:
    import hnswlib

    idx = hnswlib.Index(space="ip", dim=xa.shape[1])
    idx.init_index(max_elements=len(xa), ef_construction=args.ef_construction, M=args.m, random_seed=7)
    idx.set_num_threads(args.threads)
    t0 = time.perf_counter()
    idx.add_items(xa, np.arange(len(xa)))
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        idx.save_index(f"{d}/i.bin")
        size = os.path.getsize(f"{d}/i.bin")
        t0 = time.perf_counter()
        hnswlib.Index(space="ip", dim=xa.shape[1]).load_index(f"{d}/i.bin")
        load = time.perf_counter() - t0
    runs = []
    for ef in args.ef:
        idx.set_ef(max(ef, args.k))
        labels, _ = idx.knn_query(qa, k=args.k, num_threads=1)
        runs.append({
            "ef": ef,
            "recall": recall(labels, truth),
            "qps_1": timed_qps(lambda: idx.knn_query(qa, k=args.k, num_threads=1), len(qa)),
            "qps_all": timed_qps(lambda: idx.knn_query(qa, k=args.k, num_threads=args.threads), len(qa)),
        })
    return {"engine": "hnswlib", "build_s": build, "bytes_per_item": size / len(xa), "load_s": load, "runs": runs}


def bench_faiss(xa, qa, truth, args) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    idx = faiss.IndexHNSWFlat(xa.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = args.ef_construction
    t0 = time.perf_counter()
    idx.add(xa)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        faiss.write_index(idx, f"{d}/i.faiss")
        size = os.path.getsize(f"{d}/i.faiss")
        t0 = time.perf_counter()
        faiss.read_index(f"{d}/i.faiss")
        load = time.perf_counter() - t0
    runs = []
    for ef in args.ef:
        idx.hnsw.efSearch = max(ef, args.k)

        def search(threads):
            faiss.omp_set_num_threads(threads)
            return idx.search(qa, args.k)

        _, labels = search(1)
        runs.append({
            "ef": ef,
            "recall": recall(labels, truth),
            "qps_1": timed_qps(lambda: search(1), len(qa)),
            "qps_all": timed_qps(lambda: search(args.threads), len(qa)),
        })
    return {"engine": "faiss", "build_s": build, "bytes_per_item": size / len(xa), "load_s": load, "runs": runs}


def bench_tandem(items: Path, queries: Path, truth: Path, args) -> dict:
    cmd = ["cargo", "run", "--quiet", "--release", "-p", "tandem-retrieval", "--example", "ann_bench", "--",
           "--items", str(items), "--queries", str(queries), "--truth", str(truth), "--k", str(args.k),
           "--m", str(args.m), "--ef-construction", str(args.ef_construction),
           "--ef", ",".join(map(str, args.ef)), "--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "warn"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def table(results: list[dict], n: int, dim: int, nq: int, args) -> str:
    lines = [
        f"### {n:,} items x {dim}-d (inner product), {nq} user queries, k={args.k}, "
        f"M={args.m}, ef_construction={args.ef_construction}, {args.threads} threads",
        "",
        f"Machine: {machine()}",
        "",
        "| engine | build s | bytes/item | load s | ef | recall@10 | q/s 1 thread | q/s all threads | dist evals/q |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, run in enumerate(r["runs"]):
            head = (f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes_per_item']:.0f} | "
                    f"{r['load_s']:.2f} |" if i == 0 and r.get("load_s") is not None else
                    f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes_per_item']:.0f} | n/a |" if i == 0
                    else "| | | | |")
            evals = f"{run['dist_evals']:.0f}" if "dist_evals" in run else ""
            lines.append(f"{head} {run['ef']} | {run['recall']:.3f} | {run['qps_1']:,.0f} | "
                         f"{run['qps_all']:,.0f} | {evals} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="pipeline output dir (items.parquet, events/)")
    p.add_argument("--out", type=Path, help="directory for the JSON and Markdown results")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64, 128, 256])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--engines", default="tandem,hnswlib,faiss")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()

    items = args.data / "items.parquet"
    x, ids = load_items(items)
    q = user_queries(args.data, x, ids, args.queries, args.seed)
    truth = exact_top(x, q, args.k)
    xa = x
    qa = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    print(f"{len(x)} items x {x.shape[1]}, {len(q)} queries", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as d:
        qf, tf = Path(d) / "queries.f32", Path(d) / "truth.u32"
        q.astype("<f4").tofile(qf)
        truth.astype("<u4").tofile(tf)
        for engine in args.engines.split(","):
            print(f"running {engine} ...", file=sys.stderr)
            if engine == "tandem":
                results.append(bench_tandem(items, qf, tf, args))
            elif engine == "hnswlib":
                results.append(bench_hnswlib(xa, qa, truth, args))
            elif engine == "faiss":
                results.append(bench_faiss(xa, qa, truth, args))
            else:
                sys.exit(f"unknown engine {engine}")
    md = table(results, len(x), x.shape[1], len(q), args)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{len(x) // 1000}k" if len(x) < 1_000_000 else f"{len(x) // 1_000_000}m"
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        (args.out / f"{stem}.md").write_text(md)


if __name__ == "__main__":
    main()
