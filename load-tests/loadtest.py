"""Throughput at a latency target, from outside: tandem's release servers on loopback, driven
by `tandem-load` (the ghz-compatible generator) with the ghz configs of `load-tests/ghz/`:
10,000 shoppers given history by `warm-many.json`, then `recommend-many.json` (a random one of
them per call); `--workload hot` uses the 16 users of `warm-users.json`/`recommend-warm.json`.

For each catalog (demo 50k, large 1M) and topology (embedded: one process; split: gateway,
retrieval, ranking), the rate steps up (open loop, latency from the intended send time) until
p99 passes the loosest target or calls fail; the answer is the highest rate served with
p99 <= 10 ms and <= 50 ms, no errors and at least 95 % of the offered rate achieved.

    make loadtest                        # all four, writes load-tests/results/
    python load-tests/loadtest.py --quick --catalog test --topology embedded   # CI's gate

`--quick` is make test's gate: the debug build on the test catalog, one short constant-rate
run whose report must meet `--max-p99` with no errors (tandem-load's own SLO gate, exit 1).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GHZ = ROOT / "load-tests" / "ghz"
RESULTS = ROOT / "load-tests" / "results"
TARGETS_MS = (10, 50)
# (history config, Recommend config, what it is)
WORKLOADS = {
    "many": ("warm-many.json", "recommend-many.json",
             "10,000 shoppers with 5 events each (warm-many.json), a random one per Recommend "
             "(recommend-many.json), k = 10, 200 candidates ranked by the MLP"),
    "hot": ("warm-users.json", "recommend-warm.json",
            "16 users round-robin (warm-users.json, recommend-warm.json): each is shown the same "
            "items again and again, so demotion and backfill (and its check with retrieval) "
            "run on most calls, k = 10, 200 candidates ranked by the MLP"),
}


def fail(message: str) -> None:
    print(f"loadtest: {message}", file=sys.stderr)
    sys.exit(1)


def server_env() -> dict:
    """The environment for a started server: ONNX Runtime from the project venv unless
    ORT_DYLIB_PATH is set, warnings only."""
    env = dict(os.environ)
    if "ORT_DYLIB_PATH" not in env:
        libs = sorted(ROOT.glob(".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
        if not libs:
            fail("no ONNX Runtime library: run `make .venv/.installed` or set ORT_DYLIB_PATH")
        env["ORT_DYLIB_PATH"] = str(libs[0])
    env.setdefault("RUST_LOG", "warn")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalog_paths(name: str) -> dict:
    data = {
        "test": ROOT / "data" / "test",
        "demo": ROOT / "data" / "demo",
        "large": ROOT / "data" / "large",
    }[name]
    if not (data / "items.parquet").is_file():
        fail(f"{data}/items.parquet is missing: make {'data' if name != 'large' else 'data/large/eval.json'}")
    # The 1M index takes minutes to build: its snapshot lives beside the catalog (as for
    # bench-e2e); the others are rebuilt in seconds into a scratch directory kept in target/.
    state = data / "state" if name == "large" else ROOT / "target" / "loadtest" / f"{name}-state"
    state.mkdir(parents=True, exist_ok=True)
    return {"items": data / "items.parquet", "models": data / "models" / "ranker", "state": state}


class Servers:
    """The servers of one topology, stopped (SIGTERM, then kill) on exit."""

    def __init__(self, bin_dir: Path, topology: str, catalog: dict, scratch: Path):
        self.procs = []
        self.gateway = f"127.0.0.1:{free_port()}"
        env = dict(os.environ)
        for var in [v for v in env if v.startswith("OTEL_")]:
            del env[var]
        env.setdefault("RUST_LOG", "warn")
        logs = {"event": scratch / "events", "served": scratch / "served"}
        gateway_args = [
            f"--listen={self.gateway}",
            f"--items={catalog['items']}",
            f"--event-log-dir={logs['event']}",
            f"--served-log-dir={logs['served']}",
        ]
        if topology == "embedded":
            gateway_args += [f"--model-dir={catalog['models']}", f"--state-dir={catalog['state']}"]
        else:
            retrieval = f"127.0.0.1:{free_port()}"
            ranking = f"127.0.0.1:{free_port()}"
            self.start(bin_dir / "tandem-retrieval",
                       [f"--listen={retrieval}", f"--items={catalog['items']}",
                        f"--state-dir={catalog['state']}"], env, scratch / "retrieval.log")
            self.start(bin_dir / "tandem-ranking",
                       [f"--listen={ranking}", f"--items={catalog['items']}",
                        f"--model-dir={catalog['models']}"], env, scratch / "ranking.log")
            self.wait_serving(bin_dir, retrieval)
            self.wait_serving(bin_dir, ranking)
            gateway_args += [f"--retrieval-addr={retrieval}", f"--ranking-addr={ranking}"]
        self.start(bin_dir / "tandem-gateway", gateway_args, env, scratch / "gateway.log")
        self.wait_serving(bin_dir, self.gateway)

    def start(self, binary: Path, args: list, env: dict, log: Path) -> None:
        out = open(log, "w")
        self.procs.append((subprocess.Popen([str(binary), *args], env=env, stdout=out,
                                            stderr=subprocess.STDOUT), log))

    def wait_serving(self, bin_dir: Path, addr: str, limit_s: float = 900) -> None:
        until = time.monotonic() + limit_s
        while time.monotonic() < until:
            for proc, log in self.procs:
                if proc.poll() is not None:
                    fail(f"a server exited ({proc.args[0]}): {log.read_text()[-2000:]}")
            probe = subprocess.run([str(bin_dir / "tandem-healthcheck"), f"--addr={addr}"],
                                   capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.5)
        fail(f"{addr} not SERVING within {limit_s} s")

    def cpu_seconds(self) -> float:
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for proc, _ in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def load(bin_dir: Path, config: Path, host: str, extra: list) -> dict:
    """One tandem-load run; its ghz JSON report."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run = subprocess.run([str(bin_dir / "tandem-load"), f"--config={config}", *extra,
                              "-O", "json", "-o", out.name, host], capture_output=True, text=True)
        if run.returncode not in (0, 1):
            fail(f"tandem-load failed ({run.returncode}): {run.stderr}")
        report = json.loads(Path(out.name).read_text())
        report["_exit"] = run.returncode
        report["_stderr"] = run.stderr
        return report


def percentile(report: dict, p: int) -> float:
    """The report's p-th percentile latency in ms (ghz reports nanoseconds)."""
    for entry in report.get("latencyDistribution") or []:
        if entry["percentage"] == p:
            return entry["latency"] / 1e6
    return float("inf")


def errors(report: dict) -> int:
    return sum(n for code, n in (report.get("statusCodeDistribution") or {}).items() if code != "OK")


def step_up(bin_dir: Path, servers: Servers, recommend: Path, seconds: int, start: int,
            factor: float) -> list:
    """Rates from `start` up by `factor` until p99 > the loosest target or calls fail."""
    steps = []
    rps = start
    while True:
        cpu_before = servers.cpu_seconds()
        report = load(bin_dir, recommend, servers.gateway,
                      ["--rps", str(rps), "-z", f"{seconds}s", "-c", "200", "--connections", "4"])
        cpu = servers.cpu_seconds() - cpu_before
        step = {
            "offered_rps": rps,
            "achieved_rps": round(report["rps"], 1),
            "count": report["count"],
            "errors": errors(report),
            "p50_ms": round(percentile(report, 50), 3),
            "p90_ms": round(percentile(report, 90), 3),
            "p99_ms": round(percentile(report, 99), 3),
            "server_cpu_us_per_call": round(cpu / max(report["count"], 1) * 1e6, 1),
            "error_distribution": report.get("errorDistribution") or {},
        }
        steps.append(step)
        print(f"  {rps:>6} rps offered: {step['achieved_rps']:>8} achieved, p50 {step['p50_ms']} ms, "
              f"p99 {step['p99_ms']} ms, errors {step['errors']}, "
              f"server CPU {step['server_cpu_us_per_call']} us/call", flush=True)
        if step["p99_ms"] > max(TARGETS_MS) or step["errors"] > 0 or \
                step["achieved_rps"] < 0.95 * rps:
            return steps
        rps = int(rps * factor)


def best(steps: list, target_ms: float):
    ok = [s["offered_rps"] for s in steps
          if s["p99_ms"] <= target_ms and s["errors"] == 0 and s["achieved_rps"] >= 0.95 * s["offered_rps"]]
    return max(ok) if ok else None


def give_history(bin_dir: Path, servers: Servers, history: str) -> None:
    """Records the workload's users' events, so that their Recommends are personalized."""
    warm = load(bin_dir, GHZ / history, servers.gateway, [])
    if errors(warm):
        fail(f"warming users failed: {warm.get('statusCodeDistribution')}")


def quick(args, bin_dir: Path) -> None:
    catalog = catalog_paths(args.catalog)
    history, recommend, _ = WORKLOADS[args.workload]
    with tempfile.TemporaryDirectory(prefix="tandem-loadtest-") as scratch:
        servers = Servers(bin_dir, args.topology, catalog, Path(scratch))
        try:
            give_history(bin_dir, servers, history)
            report = load(bin_dir, GHZ / recommend, servers.gateway,
                          ["--rps", str(args.rps), "-z", f"{args.seconds}s",
                           "--max-p99", f"{args.max_p99}ms", "--max-error-rate", "0"])
        finally:
            servers.stop()
    print(f"loadtest gate: {report['count']} calls at {args.rps} rps offered, "
          f"{report['rps']:.0f} achieved, p99 {percentile(report, 99):.2f} ms "
          f"(gate {args.max_p99} ms), errors {errors(report)}")
    if report["_exit"] != 0 or errors(report) or report["count"] < args.rps * args.seconds * 0.9:
        fail(f"the gate failed: {report['_stderr'].strip()}")


def full(args, bin_dir: Path) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    history, recommend, described = WORKLOADS[args.workload]
    rows = []
    for catalog_name in args.catalogs:
        catalog = catalog_paths(catalog_name)
        for topology in args.topologies:
            print(f"{catalog_name} / {topology}", flush=True)
            with tempfile.TemporaryDirectory(prefix="tandem-loadtest-") as scratch:
                started = time.monotonic()
                servers = Servers(bin_dir, topology, catalog, Path(scratch))
                ready_s = time.monotonic() - started
                try:
                    give_history(bin_dir, servers, history)
                    # A short run first: pages the index and the model in.
                    load(bin_dir, GHZ / recommend, servers.gateway, ["--rps", "100", "-z", "3s"])
                    steps = step_up(bin_dir, servers, GHZ / recommend, args.seconds, args.start,
                                    args.factor)
                finally:
                    servers.stop()
            result = {
                "catalog": catalog_name,
                "topology": topology,
                "ready_s": round(ready_s, 1),
                "workload": described,
                "step_seconds": args.seconds,
                "steps": steps,
                **{f"max_rps_p99_le_{t}ms": best(steps, t) for t in TARGETS_MS},
            }
            name = f"{catalog_name}-{topology}" + ("" if args.workload == "many" else f"-{args.workload}")
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            rows.append(result)
    write_table(rows, described, args.workload)


def write_table(rows: list, described: str, workload: str) -> None:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        "# Load-test results",
        "",
        f"`make loadtest`, {datetime.date.today().isoformat()}, on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; client (`tandem-load`, release) and servers "
        f"(release) on the same machine, loopback. Workload `{workload}`: {described}. Open loop, "
        "rates stepped up (x1.3 every step) until p99 > 50 ms or calls fail. A rate counts when "
        "p99 meets the target, no call failed and >= 95 % of it was achieved. Server CPU is all "
        "server processes' user + system time over the calls of that step.",
        "",
        "| catalog | topology | max rps, p99 <= 10 ms | max rps, p99 <= 50 ms | p50 / p99 at the 10 ms rate | server CPU per call | ready after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = next((s for s in r["steps"] if s["offered_rps"] == r["max_rps_p99_le_10ms"]), None)
        lat = f"{at['p50_ms']} / {at['p99_ms']} ms" if at else "-"
        cpu_call = f"{at['server_cpu_us_per_call']} µs" if at else "-"
        lines.append(f"| {r['catalog']} | {r['topology']} | {r['max_rps_p99_le_10ms'] or '-'} | "
                     f"{r['max_rps_p99_le_50ms'] or '-'} | {lat} | {cpu_call} | {r['ready_s']} s |")
    lines += ["", "Every step of each run is in the JSON files beside this one.", ""]
    suffix = "" if workload == "many" else f"-{workload}"
    (RESULTS / f"README{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines[6:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    parser.add_argument("--catalogs", nargs="+", default=["demo", "large"], choices=["test", "demo", "large"])
    parser.add_argument("--topologies", nargs="+", default=["embedded", "split"], choices=["embedded", "split"])
    parser.add_argument("--seconds", type=int, default=8, help="length of each rate step")
    parser.add_argument("--start", type=int, default=200, help="first rate (rps)")
    parser.add_argument("--factor", type=float, default=1.3, help="rate multiplier per step")
    parser.add_argument("--workload", default="many", choices=sorted(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="one gated run (make test)")
    parser.add_argument("--catalog", default="test", choices=["test", "demo", "large"])
    parser.add_argument("--topology", default="embedded", choices=["embedded", "split"])
    parser.add_argument("--rps", type=int, default=100)
    parser.add_argument("--max-p99", type=int, default=50)
    args = parser.parse_args()
    bin_dir = args.bin_dir.resolve()
    for binary in ["tandem-gateway", "tandem-retrieval", "tandem-ranking", "tandem-load", "tandem-healthcheck"]:
        if not (bin_dir / binary).is_file():
            fail(f"{bin_dir / binary} is missing: build it first (make loadtest does)")
    if not os.environ.get("ORT_DYLIB_PATH"):
        fail("ORT_DYLIB_PATH is not set (the Makefile sets it)")
    if args.quick:
        quick(args, bin_dir)
    else:
        full(args, bin_dir)


if __name__ == "__main__":
    main()
