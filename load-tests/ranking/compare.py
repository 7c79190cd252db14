"""Ranking benchmark: tandem's ranking tier vs the Python onnxruntime floor, same model, same batches.

For each candidate count, the same requests (user vector, candidates, recent items, hour) are
written to a JSON file; tandem (libs/ranking/examples/rank_bench.rs, in process, the
`Ranker` the services run) scores them from 1, 8 and 32 client threads with dynamic batching
on and off; the floor is `session.run` on the same assembled tensors in a loop, one thread,
with the same session options as one of tandem's sessions (intra-op threads, full graph
optimization, sequential execution).

The machines this runs on are shared VMs whose speed drifts by 10-30 % over seconds, so each
size is measured in rounds of floor, tandem, floor: a cell's "vs floor" is the median over
rounds of its rows/s divided by the mean of the two floor runs around it.

`--execution-provider cuda` puts tandem's sessions and the floor's on the CUDA provider (run it
from the onnxruntime-gpu venv: `make bench-ranking-gpu`). Either way every request's scores
from tandem are checked against the floor's on the same provider.

    python load-tests/ranking/compare.py --data data/demo --model ranker --out load-tests/ranking/results
"""

from __future__ import annotations

import os

# No BLAS helper threads: they spin after numpy's feature assembly and would take CPU from
# the floor's session.run.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
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


def ort_providers(execution_provider: str) -> list[str]:
    """Python onnxruntime's providers for tandem's `--execution-provider`: the floor runs where
    tandem runs."""
    if execution_provider == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def floor_session(model: Path, spec: dict, catalog: dict, requests: list[dict], intra: int,
                  opts: ort.SessionOptions | None = None, execution_provider: str = "cpu") -> tuple:
    """The floor's session (tandem's options: intra-op threads, full graph optimization,
    sequential) and each request's assembled feeds."""
    opts = opts or ort.SessionOptions()
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ort_providers(execution_provider)
    session = ort.InferenceSession(str(model), opts, providers=providers)
    if session.get_providers()[0] != providers[0]:
        sys.exit(f"onnxruntime {ort.__version__} could not use {providers[0]} "
                 f"(available: {ort.get_available_providers()})")
    feeds = [assemble(spec, catalog, np.repeat(np.array(r["user_vector"], np.float32)[None], len(r["items"]), 0),
                      np.array(r["items"]), np.array(r["retrieval_scores"], np.float32),
                      recent=[r["recent_items"]] * len(r["items"]),
                      context=[{"hour_of_day": str(r["hour"])}] * len(r["items"])) for r in requests]
    return session, feeds


def floor(model: Path, spec: dict, catalog: dict, requests: list[dict], seconds: float, intra: int,
          execution_provider: str = "cpu") -> dict:
    session, feeds = floor_session(model, spec, catalog, requests, intra, execution_provider=execution_provider)
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


def score_gap(tandem_scores: list[list[float]], model: Path, spec: dict, catalog: dict, requests: list[dict],
              execution_provider: str) -> float:
    """Largest |tandem - floor| over every score of `requests`, both on the same provider."""
    session, feeds = floor_session(model, spec, catalog, requests, 1, execution_provider=execution_provider)
    out = [spec["output"]["name"]]
    gap = 0.0
    for feed, ours in zip(feeds, tandem_scores, strict=True):
        theirs = np.asarray(session.run(out, feed)[0], np.float64)
        if theirs.ndim == 2:  # the score is one column of a [rows, columns] output
            theirs = theirs[:, spec["output"].get("column", 0)]
        gap = max(gap, float(np.max(np.abs(theirs - np.asarray(ours, np.float64)))))
    return gap


LOCKSTEP_MODES = ("tandem", "bare", "assemble")


def lockstep(cmd: list[str], model: Path, spec: dict, catalog: dict, requests: list[dict], intra: int,
             execution_provider: str = "cpu", slices: int = 60, slice_s: float = 0.03) -> dict:
    """Concurrency 1 without drift: the floor's `session.run` loop and a rank_bench process
    (answering on stdin) take turns in slices of ~30 ms, each running the same requests in the
    same order, both pinned to one core (a shared VM's two vCPUs need not run at the same
    speed). rank_bench runs each slice three ways, in rotating order: through tandem's ranker,
    as a bare Rust ORT run of the already assembled tensors (the model as exported, as the floor
    runs it), and as assembly plus that bare run. Each mode's ratio is the floor's time over its
    own, summed over all slices."""
    session, feeds = floor_session(model, spec, catalog, requests, intra, execution_provider=execution_provider)
    out = [spec["output"]["name"]]
    t0 = time.perf_counter()
    for feed in feeds:
        session.run(out, feed)
    per_call = (time.perf_counter() - t0) / len(feeds)
    count = max(len(feeds), int(slice_s / per_call) // len(feeds) * len(feeds))
    allowed = os.sched_getaffinity(0)
    core = max(allowed)
    os.sched_setaffinity(0, {core})  # the child inherits it
    proc = subprocess.Popen(cmd + ["--lockstep", "true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    floor_s, mode_s = 0.0, {m: 0.0 for m in LOCKSTEP_MODES}
    ratios: list[float] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for i in range(slices + 5):
            t0 = time.perf_counter()
            for j in range(count):
                session.run(out, feeds[j % len(feeds)])
            f = time.perf_counter() - t0
            took = {}
            for m in LOCKSTEP_MODES[i % len(LOCKSTEP_MODES):] + LOCKSTEP_MODES[:i % len(LOCKSTEP_MODES)]:
                proc.stdin.write(f"{m} {count}\n")
                proc.stdin.flush()
                took[m] = json.loads(proc.stdout.readline())["seconds"]
            if i >= 5:  # the first slices warm up
                floor_s += f
                for m in LOCKSTEP_MODES:
                    mode_s[m] += took[m]
                ratios.append(f / took["tandem"])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait()
        os.sched_setaffinity(0, allowed)
    ratios.sort()
    rows = sum(len(requests[j % len(requests)]["items"]) for j in range(count)) * slices
    return {"vs_floor": floor_s / mode_s["tandem"], "bare_vs_floor": floor_s / mode_s["bare"],
            "assemble_vs_floor": floor_s / mode_s["assemble"],
            "floor_us": floor_s / (count * slices) * 1e6,
            **{f"{m}_us": mode_s[m] / (count * slices) * 1e6 for m in LOCKSTEP_MODES},
            "floor_rows_per_s": rows / floor_s, "tandem_rows_per_s": rows / mode_s["tandem"],
            "slice_p25": ratios[len(ratios) // 4], "slice_p75": ratios[3 * len(ratios) // 4],
            "slices": slices, "requests_per_slice": count, "core": core}


def binding_overhead_us(model: Path, spec: dict, catalog: dict, requests: list[dict], intra: int,
                        calls: int = 2000) -> dict:
    """What Python's `session.run` adds to ONNX Runtime's own run: wall time per call minus the
    `model_run` time ORT's profiler records for it."""
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session, feeds = floor_session(model, spec, catalog, requests, intra, opts)
        out = [spec["output"]["name"]]
        for i in range(200):
            session.run(out, feeds[i % len(feeds)])
        start = time.perf_counter()
        for i in range(calls):
            session.run(out, feeds[i % len(feeds)])
        wall_us = (time.perf_counter() - start) / calls * 1e6
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][-calls:]
    ort_us = sum(runs) / max(1, len(runs))
    return {"wall_us": wall_us, "ort_run_us": ort_us, "binding_us": wall_us - ort_us}


def median_row(rounds: list[dict]) -> dict:
    """The round with the median rows/s (its latencies with it), plus every round's rows/s and,
    where paired with floors, the median of the per-round ratios."""
    ranked = sorted(rounds, key=lambda r: r["rows_per_s"])
    row = dict(ranked[len(ranked) // 2])
    row["rounds_rows_per_s"] = [r["rows_per_s"] for r in rounds]
    if all("vs_floor" in r for r in rounds):
        ratios = sorted(r["vs_floor"] for r in rounds)
        row["rounds_vs_floor"] = [r["vs_floor"] for r in rounds]
        row["vs_floor"] = ratios[len(ratios) // 2]
    return row


def lockstep_table(sizes: list[int], results: dict[int, dict], runs: dict[int, list[float]],
                   bare_runs: dict[int, list[float]] | None = None) -> list[str]:
    if not results:
        return []
    lines = [
        "",
        "Concurrency 1 in lockstep: the floor's loop and rank_bench take turns in ~30 ms slices of the same",
        "requests, both pinned to one core, so the machine's drift hits all alike. rank_bench runs each slice",
        "through tandem's ranker, as a bare Rust ORT run of the already assembled tensors, and as assembly",
        "plus that bare run. The bare runs use the model as exported, as the floor does; tandem runs it",
        "pruned to the score output (GetModelInfo's pruned_nodes), so it can beat assembly + bare. '× floor'",
        "is the floor's time over each one's, over all slices; p25-p75 is the spread of tandem's per-slice ratios.",
        "",
        "| candidates | floor µs | bare ORT µs | assembly + bare µs | tandem µs | tandem × floor | bare × floor "
        "| tandem per-slice p25-p75 | slices |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        if s in results:
            r = results[s]
            lines.append(f"| {s} | {r['floor_us']:.1f} | {r['bare_us']:.1f} | {r['assemble_us']:.1f} | "
                         f"{r['tandem_us']:.1f} | {r['vs_floor']:.3f} | {r['bare_vs_floor']:.3f} | "
                         f"{r['slice_p25']:.2f}-{r['slice_p75']:.2f} | {r['slices']} |")
    if any(len(runs.get(s, [])) > 1 for s in sizes):
        lines += ["", "The row of each size is its median run. Tandem × floor of every run:", ""]
        for s in sizes:
            if len(runs.get(s, [])) > 1:
                v = sorted(runs[s])
                at_target = sum(x >= 0.95 for x in v)
                lines.append(f"* {s} candidates, {len(v)} runs: {v[0]:.3f}-{v[-1]:.3f}, median "
                             f"{statistics.median(v):.3f}, {at_target} at or above 0.95 "
                             f"({', '.join(f'{x:.3f}' for x in runs[s])})")
                if bare_runs and len(bare_runs.get(s, [])) == len(runs[s]):
                    # Tandem over bare Rust ORT is the wrapper's own cost, stable from run to
                    # run; bare over the floor is where runs differ (each run is new processes).
                    own = [t / b for t, b in zip(runs[s], bare_runs[s])]
                    lines.append(f"  bare Rust ORT × floor: median {statistics.median(bare_runs[s]):.3f} "
                                 f"({min(bare_runs[s]):.3f}-{max(bare_runs[s]):.3f}); tandem × bare: median "
                                 f"{statistics.median(own):.3f} ({min(own):.3f}-{max(own):.3f})")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--model", default="ranker", help="model directory name under DATA/models")
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of floor, tandem, floor per size; each cell reports its median round")
    p.add_argument("--requests", type=int, default=16, help="distinct requests per size")
    p.add_argument("--intra-threads", type=int, default=1)
    p.add_argument("--sessions", type=int, default=os.cpu_count())
    p.add_argument("--batch-max-rows", type=int, default=1024)
    p.add_argument("--batch-max-wait-us", type=int, default=200)
    p.add_argument("--execution-provider", default="cpu")
    p.add_argument("--bench-bin", default=str(ROOT / "target/release/examples/rank_bench"))
    p.add_argument("--out", default=None, help="directory for the markdown table and raw JSON")
    p.add_argument("--lockstep-only", action="store_true",
                   help="only the pinned concurrency-1 lockstep (about 20 s), printed, nothing written")
    p.add_argument("--lockstep-runs", type=int, default=1,
                   help="lockstep runs per size (about 7 s each): the table shows the median run, every "
                        "run's ratio is listed under it; run to run they differ by up to ±0.02")
    args = p.parse_args()

    data = Path(args.data)
    catalog = load_catalog(data / "items.parquet")
    model_root = data / "models" / args.model
    version = max((d for d in model_root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    spec = json.loads((version / "feature_spec.json").read_text())
    rng = np.random.default_rng(11)
    sizes = [int(s) for s in args.sizes.split(",")]
    requests = {str(s): make_requests(rng, catalog, s, args.requests) for s in sizes}

    tandem_rounds: dict[int, list[list[dict]]] = {s: [] for s in sizes}
    floor_rounds: dict[int, list[dict]] = {s: [] for s in sizes}
    overheads: dict[int, list[dict]] = {s: [] for s in sizes}
    lockstep_results: dict[int, dict] = {}
    lockstep_runs: dict[int, list[float]] = {}
    lockstep_bare_runs: dict[int, list[float]] = {}
    parity: dict[int, float] = {}
    model_file = version / spec["model"]["file"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            req_path = Path(tmp) / f"requests-{size}.json"
            req_path.write_text(json.dumps({str(size): requests[str(size)]}))
            cmd = [args.bench_bin, "--model", str(model_root), "--items", str(data / "items.parquet"),
                   "--requests", str(req_path), "--concurrency", args.concurrency, "--seconds", str(args.seconds),
                   "--sessions", str(args.sessions), "--intra-threads", str(args.intra_threads),
                   "--batch-max-rows", str(args.batch_max_rows), "--batch-max-wait-us", str(args.batch_max_wait_us),
                   "--execution-provider", args.execution_provider]
            print("running", " ".join(cmd), file=sys.stderr)
            runs = [lockstep(cmd, model_file, spec, catalog, requests[str(size)], args.intra_threads,
                             args.execution_provider) for _ in range(max(1, args.lockstep_runs))]
            lockstep_runs[size] = [r["vs_floor"] for r in runs]
            lockstep_bare_runs[size] = [r["bare_vs_floor"] for r in runs]
            lockstep_results[size] = sorted(runs, key=lambda r: r["vs_floor"])[len(runs) // 2]
            if args.lockstep_only:
                continue
            for _ in range(max(1, args.rounds)):
                # Floors on both sides of the tandem run: a drift in the machine's speed
                # during the round affects both sides of the ratio alike.
                before = floor(model_file, spec, catalog, requests[str(size)], args.seconds, args.intra_threads,
                               args.execution_provider)
                lines = [json.loads(line) for line in
                         subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
                         if line.startswith("{")]
                scores = next((c["scores"] for c in lines if c["mode"] == "scores"), None)
                if scores is not None and size not in parity:  # the same every round: check once
                    parity[size] = score_gap(scores, model_file, spec, catalog, requests[str(size)],
                                             args.execution_provider)
                cells = [c for c in lines if c["mode"] not in ("overhead", "scores")]
                overheads[size].extend(c for c in lines if c["mode"] == "overhead")
                after = floor(model_file, spec, catalog, requests[str(size)], args.seconds, args.intra_threads,
                              args.execution_provider)
                paired = (before["rows_per_s"] + after["rows_per_s"]) / 2
                for cell in cells:
                    cell["vs_floor"] = cell["rows_per_s"] / paired
                tandem_rounds[size].append(cells)
                floor_rounds[size].extend([before, after])
    if args.lockstep_only:
        print(f"# Ranking: `{spec['model']['name']}/{spec['model']['version']}`, lockstep only")
        print("\n".join(lockstep_table(sizes, lockstep_results, lockstep_runs, lockstep_bare_runs)))
        return
    tandem = [median_row([r[i] for r in tandem_rounds[s]]) for s in sizes for i in range(len(tandem_rounds[s][0]))]
    floors = {s: median_row(floor_rounds[s]) for s in sizes}
    bindings = {}
    if args.execution_provider == "cpu":
        bindings = {s: binding_overhead_us(model_file, spec, catalog, requests[str(s)], args.intra_threads)
                    for s in sizes}

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if args.execution_provider != "cpu":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            cpu = f"{cpu} + {gpu}"
        except (OSError, subprocess.CalledProcessError):
            pass
    provider = tandem[0]["provider"] if tandem else args.execution_provider
    lines = [
        f"# Ranking: `{spec['model']['name']}/{spec['model']['version']}` ({len(spec['inputs'])} input tensor(s))",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores; onnxruntime {ort.__version__}; execution provider {provider}.",
        f"tandem: {args.sessions} sessions x {args.intra_threads} intra-op thread(s), batching max {args.batch_max_rows} rows"
        f" / {args.batch_max_wait_us} us wait; floor: Python `session.run` loop, one thread, {args.intra_threads} intra-op thread(s),"
        f" same tensors. {args.seconds:g} s per cell after warm-up; {args.rounds} round(s) of floor, tandem, floor per size;"
        f" rows/s and latency are each cell's median round, 'vs floor' the median over rounds of tandem's rows/s over the"
        f" mean of the two floor runs around it. Latency is per request (feature assembly + queue + run + split).",
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
                             f"{r['p50_us'] / 1e3:.3f} | {r['p99_us'] / 1e3:.3f} | {r['vs_floor']:.2f} |")
    if any(overheads.values()):
        lines += [
            "",
            "What tandem adds to the ORT call itself, at concurrency 1: each request alternated with a bare ORT run",
            "(Rust, same session options) on that request's already assembled tensors, so drift hits both alike",
            "(median over rounds), and of that, feature assembly alone timed right after a run. Beside it, what",
            "Python's `session.run` adds to ORT's own `model_run` (ORT profiler).",
            "",
            "| candidates | tandem request µs | bare ORT run µs | bare ÷ tandem | tandem adds µs | of which assembly µs "
            "| Python binding adds µs |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in sizes:
            if not overheads[s]:
                continue
            o = sorted(overheads[s], key=lambda r: r["bare_over_tandem"])[len(overheads[s]) // 2]
            b = bindings.get(s, {}).get("binding_us", float("nan"))
            lines.append(f"| {s} | {o['tandem_us']:.1f} | {o['bare_ort_us']:.1f} | {o['bare_over_tandem']:.3f} | "
                         f"{o['tandem_us'] - o['bare_ort_us']:.1f} | {o.get('assembly_us', float('nan')):.1f} | {b:.1f} |")
    if parity:
        lines += ["", "Scores: largest |tandem − floor| over every request of a size, both on the same execution provider: "
                  + ", ".join(f"{s} candidates {parity[s]:.1e}" for s in sizes if s in parity) + "."]
    lines += lockstep_table(sizes, lockstep_results, lockstep_runs, lockstep_bare_runs)
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.model}-{provider}.md").write_text(table + "\n")
        (out / f"{args.model}-{provider}.json").write_text(json.dumps({"tandem": tandem, "floor": floors, "overhead": overheads,
                                                                       "python_binding": bindings,
                                                                       "lockstep": lockstep_results,
                                                                       "lockstep_runs": lockstep_runs,
                                                                       "lockstep_bare_runs": lockstep_bare_runs,
                                                                       "max_score_gap": parity}, indent=1))


if __name__ == "__main__":
    main()
