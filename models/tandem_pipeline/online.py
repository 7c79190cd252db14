"""Online equals offline: the live service on the real-data world, scored like the report.

    python -m tandem_pipeline.online --world ../data/online-retail-2011-11-01 \
        --addr 127.0.0.1:50061 -- ../target/release/tandem-gateway --listen 127.0.0.1:50061 ...

Starts the gateway (the command after `--`, with a fresh state directory of its own), replays
the purchases before the cutoff through `RecordEventStream` with their timestamps shifted so
that the cutoff is now, asks `Recommend` for every test customer on both tasks ("new items":
REPEAT_PURCHASES_EXCLUDE; "all items": REPEAT_PURCHASES_ALLOW), and computes the offline
report's metrics on the answers. Training/serving skew shows up as a gap to the offline
figures of the same model (`eval.json`, "tandem history ranker"); the gap is reported, and
beyond `--tolerance` the run fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import baselines, retail

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_METHOD = "tandem history ranker"
TASK_REPEATS = {"new": "REPEAT_PURCHASES_EXCLUDE", "all": "REPEAT_PURCHASES_ALLOW"}


def stubs(out: Path):
    """The service's Python stubs, generated from proto/ (never committed)."""
    from grpc_tools import protoc
    import grpc_tools
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "tandem" / "v1").glob("*.proto")]
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    sys.path.insert(0, str(out))
    from tandem.v1 import recommender_pb2, recommender_pb2_grpc  # type: ignore
    return recommender_pb2, recommender_pb2_grpc


def wait_ready(channel, timeout_s: float) -> None:
    import grpc
    grpc.channel_ready_future(channel).result(timeout=timeout_s)


def replay(pb, stub, world: retail.RetailWorld, train, shift_ms: int, batch: int) -> dict:
    """Streams the train purchases in time order; returns counts and events/s."""
    items, users = world.item_id, world.user_id

    def batches():
        for start in range(0, train.ts.size, batch):
            end = min(start + batch, train.ts.size)
            yield pb.RecordEventStreamRequest(events=[
                pb.Event(user_id=str(users[train.user[r]]), item_id=str(items[train.item[r]]),
                         type=pb.EVENT_TYPE_PURCHASE, timestamp_ms=int(train.ts[r] + shift_ms),
                         event_id=f"retail-{r}")
                for r in range(start, end)])

    t0 = time.perf_counter()
    reply = stub.RecordEventStream(batches(), timeout=3600)
    seconds = time.perf_counter() - t0
    return {"events": int(train.ts.size), "accepted": int(reply.accepted), "duplicates": int(reply.duplicates),
            "rejected": int(reply.rejected), "seconds": round(seconds, 2),
            "events_per_s": round(train.ts.size / seconds, 1),
            "first_rejections": [f"{r.index}: {r.field}: {r.reason}" for r in reply.rejections[:5]]}


def recommend_all(pb, stub, world: retail.RetailWorld, task: baselines.Task, task_name: str,
                  concurrency: int) -> tuple[np.ndarray, dict]:
    """[users, 10] item indexes the service answered (-1: an id this catalog does not hold)."""
    index = {c: i for i, c in enumerate(world.item_id)}
    repeats = getattr(pb, TASK_REPEATS[task_name])
    lists = np.full((task.users.size, baselines.K), -1, np.int64)
    versions: dict[str, int] = {}
    latency: list[float] = []

    def ask(row: int):
        req = pb.RecommendRequest(user_id=str(world.user_id[task.users[row]]), k=baselines.K,
                                  max_per_category=0, repeat_purchases=repeats)
        t0 = time.perf_counter()
        reply = stub.Recommend(req, timeout=10)
        return row, reply, time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        for row, reply, seconds in pool.map(ask, range(task.users.size)):
            latency.append(seconds)
            versions[reply.model_version] = versions.get(reply.model_version, 0) + 1
            got = [index.get(it.item_id, -1) for it in reply.items][:baselines.K]
            lists[row, :len(got)] = got
    return lists, {"model_versions": versions, "p50_ms": round(1e3 * float(np.percentile(latency, 50)), 2),
                   "p99_ms": round(1e3 * float(np.percentile(latency, 99)), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="directory `make eval` wrote (eval.json, items.parquet)")
    p.add_argument("--cutoff", default="2011-11-01")
    p.add_argument("--addr", default="127.0.0.1:50061", help="where the started gateway listens")
    p.add_argument("--batch", type=int, default=5000, help="events per RecordEventStream message")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="largest relative gap to the offline NDCG@10/HR@10 of warm users")
    p.add_argument("--out", help="write the result here (default: <world>/eval_online.json)")
    p.add_argument("serve", nargs=argparse.REMAINDER, help="-- the gateway command line")
    args = p.parse_args()
    serve = [a for a in args.serve if a != "--"] if args.serve else []
    if not serve:
        raise SystemExit("give the gateway command after --")
    world_dir = Path(args.world)
    offline = json.loads((world_dir / "eval.json").read_text()).get("comparison")
    if not offline or OFFLINE_METHOD not in offline["methods"]:
        raise SystemExit(f"{world_dir}/eval.json has no comparison with {OFFLINE_METHOD!r}: run `make eval`")

    import grpc
    world = retail.load(retail.parse_cutoff(args.cutoff))
    ev = world.events
    rng = np.random.default_rng(0)
    test = baselines.split_at(ev, world.user_id.size, world.item_id.size, world.cutoff_ms, None, None, rng)
    train = baselines.before(ev, world.cutoff_ms)
    shift_ms = int(time.time() * 1000) - world.cutoff_ms
    buyers = baselines.distinct_buyers(test.hist, None)

    tmp = tempfile.TemporaryDirectory(prefix="tandem-online-")
    pb, pb_grpc = stubs(Path(tmp.name))
    state = Path(tmp.name) / "state"
    cmd = [*serve, "--state-dir", str(state), "--event-log-dir", str(state / "events"),
           "--served-log-dir", str(state / "served")]
    # Cold customers get live trending; the offline report scored them with the half-life it
    # chose on validation, so the service must use the same one.
    half_life = offline["tuned"].get("tandem cold users", {}).get("half_life_min")
    if half_life is not None:
        flag = "--trending-half-life-min"
        if flag in cmd and cmd[cmd.index(flag) + 1] != str(half_life):
            print(f"warning: {flag} {cmd[cmd.index(flag) + 1]} differs from the {half_life} the offline "
                  "report chose on validation; cold customers will not match", flush=True)
        elif flag not in cmd:
            cmd += [flag, str(half_life)]
    print("starting:", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd)
    result: dict = {"world": str(world_dir), "cutoff": args.cutoff, "shift_days": round(shift_ms / 86_400_000, 1)}
    try:
        channel = grpc.insecure_channel(args.addr, options=[("grpc.max_send_message_length", 64 << 20)])
        wait_ready(channel, 300)
        stub = pb_grpc.RecommenderServiceStub(channel)
        # Ready means serving: the health check says SERVING once the index is built.
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + 600
        while health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status != 1:
            if time.time() > deadline:
                raise SystemExit("the gateway did not become ready in 10 minutes")
            time.sleep(0.5)
        result["replay"] = replay(pb, stub, world, train, shift_ms, args.batch)
        print(f"replayed {result['replay']['accepted']} events at {result['replay']['events_per_s']:.0f} events/s "
              f"({result['replay']['rejected']} rejected)", flush=True)
        result["methods"] = {}
        gaps = []
        for task_name in ("new", "all"):
            task = getattr(test, task_name)
            lists, info = recommend_all(pb, stub, world, task, task_name, args.concurrency)
            # A short answer's empty slots: -2 is no target (-1 marks products launched after
            # the cutoff among the targets) and indexes like any item for category and buyers.
            filled = np.where(lists >= 0, lists, -2)
            metric = lambda mask=None: baselines.metrics(  # noqa: E731
                filled, task, world.category, buyers, world.user_id.size,
                world.item_id.size, mask)
            online = {"all": metric(), "warm": metric(task.warm), "cold": metric(~task.warm), **info}
            result["methods"][task_name] = online
            off = offline["methods"][OFFLINE_METHOD][task_name]
            for segment in ("warm", "all"):
                for m in ("ndcg10", "hr10"):
                    a, b = online[segment][m], off[segment][m]
                    gap = abs(a - b) / max(b, 1e-9)
                    gaps.append(gap)
                    print(f"  {task_name:>3} items, {segment:>4} users, {m:>6}: online {a:.4f}  "
                          f"offline {b:.4f}  gap {100 * gap:.1f} %", flush=True)
            print(f"  {task_name} items: p50 {info['p50_ms']} ms, p99 {info['p99_ms']} ms, "
                  f"model versions {info['model_versions']}", flush=True)
        result["largest_gap"] = round(max(gaps), 4)
        result["tolerance"] = args.tolerance
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()
    out = Path(args.out) if args.out else world_dir / "eval_online.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; largest gap {100 * result['largest_gap']:.1f} % (tolerance {100 * args.tolerance:.0f} %)")
    if result["largest_gap"] > args.tolerance:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
