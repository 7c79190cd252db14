"""Ranking benchmark: tandem's ranking tier vs the Python onnxruntime floor, same model, same batches.

For each candidate count, the same requests (user vector, candidates, recent items, hour) are
written to a JSON file; tandem (libs/ranking/examples/rank_bench.rs, in process, the
`Ranker` the services run) scores them from 1, 8 and 32 client threads with dynamic batching
on and off; the floor is `session.run` on the same assembled tensors in a loop, one thread,
with the same session options as one of tandem's sessions (intra-op threads, full graph
optimization, sequential execution).

    python load-tests/ranking/compare.py --data data/demo --model ranker --out load-tests/ranking/results
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
import onnxruntime as ort
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
from tandem_pipeline.features import assemble  # noqa: E402


def load_catalog(path: Path) -> dict:
    t = pq.read_table(path)
    dim = t.schema.field("embedding").type.list_size
    emb = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim).astype(np.float32)
    return {"embedding": emb, "price": t.column("price").to_numpy(),
            "popularity": t.column("popularity").to_numpy(),
            "in_stock": t.column("in_stock").to_numpy().astype(np.float32),
            "category": np.array(t.column("category").to_pylist(), dtype=object)}


def make_requests(rng, catalog: dict, size: int, n: int) -> list[dict]:
    """Requests shaped like serving: a user vector from a few items, its nearest candidates."""
    emb = catalog["embedding"]
    out = []
    for _ in range(n):
        recent = rng.choice(len(emb), size=20, replace=False)
        v = emb[recent[:8]].sum(axis=0)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        scores = emb @ v
        items = np.argpartition(-scores, size)[:size]
        out.append({"user_vector": v.tolist(), "items": items.tolist(),
                    "retrieval_scores": scores[items].astype(float).tolist(),
                    "recent_items": recent.tolist(), "hour": int(rng.integers(0, 24))})
    return out


def floor(model: Path, spec: dict, catalog: dict, requests: list[dict], seconds: float, intra: int) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feeds = []
    for r in requests:
        n = len(r["items"])
        feeds.append(assemble(spec, catalog, np.repeat(np.array(r["user_vector"], np.float32)[None], n, 0),
                              np.array(r["items"]), np.array(r["retrieval_scores"], np.float32),
                              recent=[r["recent_items"]] * n, context=[{"hour_of_day": str(r["hour"])}] * n))
    out = [spec["output"]["name"]]
    start, rows, lat, i = time.perf_counter(), 0, [], 0
    warm = start + seconds * 0.2
    while True:
        t0 = time.perf_counter()
        if t0 - start >= seconds * 1.2:
            break
        feed = feeds[i % len(feeds)]
        session.run(out, feed)
        t1 = time.perf_counter()
        if t0 >= warm:
            rows += len(requests[i % len(requests)]["items"])
            lat.append((t1 - t0) * 1e6)
        i += 1
    lat.sort()
    return {"rows_per_s": rows / seconds, "p50_us": lat[len(lat) // 2], "p99_us": lat[int(len(lat) * 0.99)],
            "requests": len(lat)}


def median_row(rounds: list[dict]) -> dict:
    """The round with the median rows/s (its latencies with it), plus every round's rows/s."""
    ranked = sorted(rounds, key=lambda r: r["rows_per_s"])
    row = dict(ranked[len(ranked) // 2])
    row["rounds_rows_per_s"] = [r["rows_per_s"] for r in rounds]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--model", default="ranker", help="model directory name under DATA/models")
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="tandem and floor run alternately this many times; each cell reports its median round")
    p.add_argument("--requests", type=int, default=16, help="distinct requests per size")
    p.add_argument("--intra-threads", type=int, default=1)
    p.add_argument("--sessions", type=int, default=os.cpu_count())
    p.add_argument("--batch-max-rows", type=int, default=1024)
    p.add_argument("--batch-max-wait-us", type=int, default=200)
    p.add_argument("--execution-provider", default="cpu")
    p.add_argument("--bench-bin", default=str(ROOT / "target/release/examples/rank_bench"))
    p.add_argument("--out", default=None, help="directory for the markdown table and raw JSON")
    args = p.parse_args()

    data = Path(args.data)
    catalog = load_catalog(data / "items.parquet")
    model_root = data / "models" / args.model
    version = max((d for d in model_root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    spec = json.loads((version / "feature_spec.json").read_text())
    rng = np.random.default_rng(11)
    sizes = [int(s) for s in args.sizes.split(",")]
    requests = {str(s): make_requests(rng, catalog, s, args.requests) for s in sizes}

    tandem_rounds, floor_rounds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        req_path = Path(tmp) / "requests.json"
        req_path.write_text(json.dumps(requests))
        cmd = [args.bench_bin, "--model", str(model_root), "--items", str(data / "items.parquet"),
               "--requests", str(req_path), "--concurrency", args.concurrency, "--seconds", str(args.seconds),
               "--sessions", str(args.sessions), "--intra-threads", str(args.intra_threads),
               "--batch-max-rows", str(args.batch_max_rows), "--batch-max-wait-us", str(args.batch_max_wait_us),
               "--execution-provider", args.execution_provider]
        print("running", " ".join(cmd), file=sys.stderr)
        # Alternating rounds spread a noisy neighbour's slow spell over both sides.
        for _ in range(max(1, args.rounds)):
            tandem_rounds.append([json.loads(line) for line in
                                  subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
                                  if line.startswith("{")])
            floor_rounds.append({s: floor(version / spec["model"]["file"], spec, catalog, requests[str(s)],
                                          args.seconds, args.intra_threads) for s in sizes})
    tandem = [median_row([r[i] for r in tandem_rounds]) for i in range(len(tandem_rounds[0]))]
    floors = {s: median_row([r[s] for r in floor_rounds]) for s in sizes}

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    provider = tandem[0]["provider"] if tandem else args.execution_provider
    lines = [
        f"# Ranking: `{spec['model']['name']}/{spec['model']['version']}` ({len(spec['inputs'])} input tensor(s))",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores; onnxruntime {ort.__version__}; execution provider {provider}.",
        f"tandem: {args.sessions} sessions x {args.intra_threads} intra-op thread(s), batching max {args.batch_max_rows} rows"
        f" / {args.batch_max_wait_us} us wait; floor: Python `session.run` loop, one thread, {args.intra_threads} intra-op thread(s),"
        f" same tensors. {args.seconds:.0f} s per cell after warm-up; tandem and floor alternate for {args.rounds} round(s),"
        f" each cell shows its median round. Latency is per request (feature assembly + queue + run + split).",
        "",
        "| candidates | concurrency | mode | rows/s | p50 ms | p99 ms | vs floor |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s in sizes:
        f = floors[s]
        lines.append(f"| {s} | 1 | Python floor | {f['rows_per_s']:,.0f} | {f['p50_us'] / 1e3:.3f} | {f['p99_us'] / 1e3:.3f} | 1.00 |")
        for mode in ("unbatched", "batched"):
            for r in (r for r in tandem if r["candidates"] == s and r["mode"] == mode):
                lines.append(f"| {s} | {r['concurrency']} | tandem {mode} | {r['rows_per_s']:,.0f} | "
                             f"{r['p50_us'] / 1e3:.3f} | {r['p99_us'] / 1e3:.3f} | {r['rows_per_s'] / f['rows_per_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.model}-{provider}.md").write_text(table + "\n")
        (out / f"{args.model}-{provider}.json").write_text(json.dumps({"tandem": tandem, "floor": floors}, indent=1))


if __name__ == "__main__":
    main()
