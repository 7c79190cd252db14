"""Retrieval benchmark: tandem vs hnswlib vs faiss HNSWFlat on the same vectors.

Same vectors, same M and ef_construction, same queries, recall@k against exact brute force,
each engine's build time, bytes per item and process memory, and per ef_search recall and
queries/s; the summary gives q/s interpolated at recall 0.90 / 0.95 / 0.99.

Vectors, one of:
  --data DIR       a pipeline catalog (items.parquet, events/): queries are real user query
                   vectors (the type- and recency-weighted mean of a train user's recent items,
                   what the gateway sends); inner product on the raw vectors (the embeddings
                   carry popularity in their norm).
  --vectors FILE   your own: .parquet (a fixed-size or variable list column of floats,
                   --column, default `embedding`), .fvecs or .npy; queries from --query-file
                   (same formats) or, without one, --queries rows held out of the set.
  --synthetic NAME seeded sets of other shapes: `clustered64` (64-d, 1,000 overlapping
                   clusters: centres N(0, 1), spread 2; norms scaled by a log-normal with
                   sigma 0.5; inner product) or `weak128` (128-d, 100 weak clusters: 0.5 x
                   centre + N(0, 1), unit norm); --items rows (default 200,000).

    python load-tests/ann/compare.py --data data/demo --out load-tests/ann/results
    python load-tests/ann/compare.py --vectors my.fvecs --metric l2 --out /tmp/mine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
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

    space = {"ip": "ip", "l2": "l2", "cosine": "cosine"}[args.metric]
    idx = hnswlib.Index(space=space, dim=xa.shape[1])
    idx.init_index(max_elements=len(xa), ef_construction=args.ef_construction, M=args.m, random_seed=7)
    idx.set_num_threads(args.threads)
    t0 = time.perf_counter()
    idx.add_items(xa, np.arange(len(xa)))
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        idx.save_index(f"{d}/i.bin")
        size = os.path.getsize(f"{d}/i.bin")
        t0 = time.perf_counter()
        hnswlib.Index(space=space, dim=xa.shape[1]).load_index(f"{d}/i.bin")
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


EVALS_SRC = Path(__file__).with_name("hnswlib_evals.cpp")


def hnswlib_evals(xa, qa, truth, args, scratch: Path) -> list[dict] | None:
    """hnswlib's distance evaluations per query, which its Python binding does not report:
    hnswlib 0.8.0's own headers (its PyPI source archive) compiled with a counting distance
    (hnswlib_evals.cpp), built and searched like the binding does. Each run carries its own
    recall (the graph is another build). None without a C++ compiler."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        print("no C++ compiler: hnswlib's distance evaluations not measured", file=sys.stderr)
        return None
    cache = ROOT / ".venv" / "hnswlib-evals"
    exe = cache / "hnswlib_evals"
    if not exe.exists() or exe.stat().st_mtime < EVALS_SRC.stat().st_mtime:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "hnswlib==0.8.0",
                        "--no-binary", ":all:", "--no-deps", "--no-build-isolation", "-d", str(cache)],
                       check=True)
        with tarfile.open(cache / "hnswlib-0.8.0.tar.gz") as archive:
            archive.extractall(cache, filter="data")
        subprocess.run([cxx, "-O3", "-march=native", "-std=c++17", f"-I{cache / 'hnswlib-0.8.0'}",
                        "-pthread", str(EVALS_SRC), "-o", str(exe)], check=True)
    metric = "l2" if args.metric == "l2" else "ip"
    if args.metric == "cosine":  # hnswlib's cosine space: both sides normalized, then ip
        xa = xa / np.linalg.norm(xa, axis=1, keepdims=True)
        qa = qa / np.linalg.norm(qa, axis=1, keepdims=True)
    files = [scratch / "hnswlib_x.f32", scratch / "hnswlib_q.f32", scratch / "hnswlib_truth.u32"]
    np.ascontiguousarray(xa, dtype="<f4").tofile(files[0])
    np.ascontiguousarray(qa, dtype="<f4").tofile(files[1])
    np.ascontiguousarray(truth, dtype="<u4").tofile(files[2])
    out = subprocess.run([str(exe), *map(str, files), str(xa.shape[1]), str(args.k), str(args.m),
                          str(args.ef_construction), metric, ",".join(str(max(e, args.k)) for e in args.ef)],
                         check=True, capture_output=True, text=True)
    for f in files:
        f.unlink()
    return json.loads(out.stdout)["runs"]


def bench_faiss(xa, qa, truth, args) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.metric == "cosine":
        xa = xa / np.linalg.norm(xa, axis=1, keepdims=True)
        qa = qa / np.linalg.norm(qa, axis=1, keepdims=True)
    metric = faiss.METRIC_L2 if args.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    idx = faiss.IndexHNSWFlat(xa.shape[1], args.m, metric)
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

        faiss.cvar.hnsw_stats.reset()
        _, labels = search(1)
        ndis = faiss.cvar.hnsw_stats.ndis / len(qa)
        runs.append({
            "ef": ef,
            "dist_evals": ndis,
            "recall": recall(labels, truth),
            "qps_1": timed_qps(lambda: search(1), len(qa)),
            "qps_all": timed_qps(lambda: search(args.threads), len(qa)),
        })
    return {"engine": "faiss", "build_s": build, "bytes_per_item": size / len(xa), "load_s": load, "runs": runs}


def bench_tandem(items: Path, queries: Path, truth: Path, args) -> dict:
    cmd = ["cargo", "run", "--quiet", "--release", "-p", "tandem-retrieval", "--example", "ann_bench", "--",
           "--items", str(items), "--queries", str(queries), "--truth", str(truth), "--k", str(args.k),
           "--m", str(args.m), "--ef-construction", str(args.ef_construction),
           "--ef", ",".join(map(str, args.ef)), "--threads", str(args.threads),
           "--metric", {"ip": "ip", "l2": "l2", "cosine": "cosine"}[args.metric]]
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
        f"### {n:,} items x {dim}-d ({args.metric}), {nq} queries, k={args.k}, "
        f"M={args.m}, ef_construction={args.ef_construction}, {args.threads} threads",
        "",
        f"Machine: {machine()}",
        "",
        "| engine | build s | bytes/item | load s | ef | recall@10 | q/s 1 thread | q/s all threads | dist evals/q |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        counted = r.get("evals_runs") or []
        for i, run in enumerate(r["runs"]):
            if "dist_evals" not in run and i < len(counted):
                c = counted[i]
                run = {**run, "dist_evals_note": f"{c['dist_evals']:.0f} (at {c['recall']:.3f})"}
            head = (f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes_per_item']:.0f} | "
                    f"{r['load_s']:.2f} |" if i == 0 and r.get("load_s") is not None else
                    f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes_per_item']:.0f} | n/a |" if i == 0
                    else "| | | | |")
            evals = (f"{run['dist_evals']:.0f}" if "dist_evals" in run
                     else run.get("dist_evals_note", ""))
            lines.append(f"{head} {run['ef']} | {run['recall']:.3f} | {run['qps_1']:,.0f} | "
                         f"{run['qps_all']:,.0f} | {evals} |")
    return "\n".join(lines) + "\n"


def read_vectors(path: Path, column: str) -> np.ndarray:
    """Rows of float32 from .npy, .fvecs or a Parquet list column."""
    if path.suffix == ".npy":
        x = np.load(path)
    elif path.suffix == ".fvecs":
        raw = np.fromfile(path, dtype="<i4")
        dim = int(raw[0])
        x = raw.reshape(-1, dim + 1)[:, 1:].view("<f4")
    elif path.suffix == ".parquet":
        col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
        values = col.flatten().to_numpy(zero_copy_only=False)
        x = values.reshape(len(col), -1)
    else:
        sys.exit(f"{path}: expected .parquet, .fvecs or .npy")
    if x.ndim != 2 or not len(x):
        sys.exit(f"{path}: expected a non-empty 2-d array of vectors, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def synthetic(name: str, n: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sets the project's own pipeline never produced; queries come from the same
    distribution, not from the set."""
    rng = np.random.default_rng(seed)
    if name == "clustered64":
        dim, clusters = 64, 1000
        centres = rng.normal(size=(clusters, dim)).astype(np.float32)

        def draw(m):
            x = centres[rng.integers(clusters, size=m)] + 2.0 * rng.normal(size=(m, dim))
            return (x * rng.lognormal(0.0, 0.5, size=(m, 1))).astype(np.float32)
    elif name == "weak128":
        dim, clusters = 128, 100
        centres = rng.normal(size=(clusters, dim)).astype(np.float32)

        def draw(m):
            x = 0.5 * centres[rng.integers(clusters, size=m)] + rng.normal(size=(m, dim))
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    else:
        sys.exit(f"unknown synthetic set {name} (clustered64, weak128)")
    x = np.concatenate([draw(min(100_000, n - s)) for s in range(0, n, 100_000)])
    return x, draw(nq)


def exact_top_metric(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "ip":
        return exact_top(x, q, k)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    norms = (xs * xs).sum(axis=1)
    top = np.empty((len(q), k), dtype=np.uint32)
    for s in range(0, len(q), 256):
        qb = q[s:s + 256]
        # Smaller is closer: squared L2 (the |q|² term ranks nothing), or minus cosine.
        scores = norms[None, :] - 2 * qb @ xs.T if metric == "l2" else -(qb @ xs.T)
        part = np.argpartition(scores, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top[s:s + 256] = np.take_along_axis(part, order, axis=1)
    return top


def write_catalog(x: np.ndarray, path: Path) -> None:
    """The columns tandem's catalog needs, around the vectors (ann_bench reads a catalog)."""
    import pyarrow as pa

    n, dim = x.shape
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), dim)
    table = pa.table({
        "item_id": pa.array([f"v{i}" for i in range(n)]),
        "embedding": emb,
        "category": pa.array(["all"] * n),
        "price": pa.array(np.ones(n, dtype=np.float32)),
        "in_stock": pa.array(np.ones(n, dtype=bool)),
        "popularity": pa.array(np.zeros(n, dtype=np.float32)),
    })
    pq.write_table(table, path)


def at_recall(runs: list[dict], target: float, key: str = "qps_1") -> str:
    """q/s (one thread), or another per-run figure, at `target` recall, linear between the
    ef steps around it."""
    if any(key not in r for r in runs):
        return "n/a"
    pts = sorted((r["recall"], r[key]) for r in runs)
    if not pts or pts[-1][0] < target:
        return "not reached"
    if pts[0][0] >= target:
        # reached at the smallest ef: the best figure measured (most q/s, fewest evaluations)
        if key == "qps_1":
            return f"≥ {max(q for r, q in pts if r >= target):,.0f}"
        return f"≤ {min(q for r, q in pts if r >= target):,.0f}"
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            q = q0 + (q1 - q0) * (target - r0) / (r1 - r0) if r1 > r0 else q1
            return f"{q:,.0f}"
    return "not reached"


def in_child(fn, *args):
    """Runs an engine in a forked process, so its memory is its own to report."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run():
        result = fn(*args)
        status = Path("/proc/self/status").read_text()
        for key, name in (("VmRSS:", "rss_mib"), ("VmHWM:", "peak_rss_mib")):
            kib = next((int(l.split()[1]) for l in status.splitlines() if l.startswith(key)), 0)
            result[name] = kib / 1024
        child.send(result)

    proc = ctx.Process(target=run)
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def summary(results: list[dict], n: int, dim: int) -> str:
    lines = [
        "| engine | build s | bytes/item (index) | RSS after build MiB | q/s @ recall 0.90 | @ 0.95 | @ 0.99 "
        "| dist evals/q @ 0.95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = f"{r['rss_mib']:.0f}" if r.get("rss_mib") else "n/a"
        lines.append(f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes_per_item']:.0f} | {rss} | "
                     f"{at_recall(r['runs'], 0.90)} | {at_recall(r['runs'], 0.95)} | {at_recall(r['runs'], 0.99)} "
                     f"| {at_recall(r.get('evals_runs') or r['runs'], 0.95, 'dist_evals')} |")
    return "\n".join(lines) + "\n"


def memory(results: list[dict], n: int, dim: int, m: int) -> str:
    """tandem's resident set against what its index and catalog hold, after the build and
    after a restart from the snapshot (a new process), and its index bytes per item against
    the 4·D + 8·M an HNSW index needs."""
    r = next((r for r in results if r["engine"] == "tandem" and "index_vectors" in r), None)
    if r is None:
        return ""
    mib = 2**20
    index = r["index_vectors"] + r["index_links"] + r["index_rows"]
    data = index + r["catalog_bytes"]
    need = 4 * dim + 8 * m
    restart = r.get("restart", {}).get("rss_mib")
    lines = [
        f"tandem memory: index {index / mib:.0f} MiB (vectors {r['index_vectors'] / mib:.0f}, "
        f"links {r['index_links'] / mib:.0f}, rows {r['index_rows'] / mib:.1f}) + catalog "
        f"{r['catalog_bytes'] / mib:.0f} MiB (embeddings {r['catalog_embeddings'] / mib:.0f}, "
        f"ids {r['catalog_ids'] / mib:.1f}, id lookup {r['catalog_id_lookup'] / mib:.1f}, "
        f"attributes {r['catalog_attributes'] / mib:.1f}) = {data / mib:.0f} MiB.",
        f"RSS after the build {r['rss_mib']:.0f} MiB ({r['rss_mib'] * mib / data:.2f}x), "
        + (f"after a restart from its snapshot {restart:.0f} MiB ({restart * mib / data:.2f}x); "
           if restart else "")
        + f"index {index / n:.0f} bytes/item = {index / n / need:.2f}x (4·D + 8·M = {need}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="pipeline output dir (items.parquet, events/)")
    src.add_argument("--vectors", type=Path, help="your vectors: .parquet, .fvecs or .npy")
    src.add_argument("--synthetic", help="clustered64 or weak128")
    p.add_argument("--query-file", type=Path, help="queries for --vectors (.parquet, .fvecs, .npy)")
    p.add_argument("--column", default="embedding", help="the vector column of a Parquet file")
    p.add_argument("--items", type=int, default=200_000, help="rows of a synthetic set")
    p.add_argument("--metric", choices=["ip", "l2", "cosine"], default="ip")
    p.add_argument("--name", help="results file stem (default from the set)")
    p.add_argument("--out", type=Path, help="directory for the JSON and Markdown results")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=lambda s: [int(v) for v in s.split(",")], default=[10, 12, 16, 24, 32, 64, 128, 256])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--engines", default="tandem,hnswlib,faiss")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()

    scratch = tempfile.TemporaryDirectory()
    if args.data:
        items = args.data / "items.parquet"
        x, ids = load_items(items)
        q = user_queries(args.data, x, ids, args.queries, args.seed)
        what = f"pipeline catalog {args.data}, real user query vectors"
        stem = args.name or (f"{len(x) // 1000}k" if len(x) < 1_000_000 else f"{len(x) // 1_000_000}m")
    else:
        if args.synthetic:
            x, q = synthetic(args.synthetic, args.items, args.queries, args.seed)
            what = f"synthetic `{args.synthetic}` (seed {args.seed}), queries drawn from the same distribution"
            stem = args.name or f"{args.synthetic}-{args.items // 1000}k"
        else:
            x = read_vectors(args.vectors, args.column)
            if args.query_file:
                q = read_vectors(args.query_file, args.column)
                what = f"{args.vectors.name}, queries {args.query_file.name}"
            else:
                rng = np.random.default_rng(args.seed)
                held = rng.choice(len(x), size=min(args.queries, len(x) // 10), replace=False)
                keep = np.ones(len(x), dtype=bool)
                keep[held] = False
                q, x = x[held], np.ascontiguousarray(x[keep])
                what = f"{args.vectors.name}, {len(q)} rows held out as queries"
            stem = args.name or args.vectors.stem
        if q.shape[1] != x.shape[1]:
            sys.exit(f"queries are {q.shape[1]}-d, vectors {x.shape[1]}-d")
        items = Path(scratch.name) / "items.parquet"
        write_catalog(x, items)
    metric = args.metric
    truth = exact_top_metric(x, q, args.k, metric)
    xa = x
    qa = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32) if metric == "ip" else q
    print(f"{len(x)} items x {x.shape[1]}, {len(q)} queries, metric {metric}", file=sys.stderr)
    results = []
    qf, tf = Path(scratch.name) / "queries.f32", Path(scratch.name) / "truth.u32"
    q.astype("<f4").tofile(qf)
    truth.astype("<u4").tofile(tf)
    for engine in args.engines.split(","):
        print(f"running {engine} ...", file=sys.stderr)
        if engine == "tandem":
            results.append(bench_tandem(items, qf, tf, args))
        elif engine == "hnswlib":
            results.append(in_child(bench_hnswlib, xa, qa, truth, args))
            print("counting hnswlib's distance evaluations ...", file=sys.stderr)
            results[-1]["evals_runs"] = hnswlib_evals(xa, qa, truth, args, Path(scratch.name))
        elif engine == "faiss":
            results.append(in_child(bench_faiss, xa, qa, truth, args))
        else:
            sys.exit(f"unknown engine {engine}")
    md = (f"Vectors: {what}.\n\n" + summary(results, len(x), x.shape[1]) + "\n"
          + memory(results, len(x), x.shape[1], args.m) + "\n"
          + table(results, len(x), x.shape[1], len(q), args))
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        (args.out / f"{stem}.md").write_text(md)
    scratch.cleanup()


if __name__ == "__main__":
    main()
