"""What Redis costs a Recommend: the release gateway on the demo catalog with user state in
memory, then on a real redis-server (`--state-store redis://…`, Debian's package, on a
loopback port), the same load from outside (`tandem-load` with the ghz configs
`warm-users.json` then `recommend-warm.json`: 16 warm users round-robin, k = 10, 200
candidates ranked).

For each store and each rate: latency p50 / p99 and CPU per Recommend of the gateway and of
redis-server (from /proc, over the run), and that every answer was personalized (no
`degraded`).

    python load-tests/state/redis_cost.py [--rates 200,1000] [--seconds 20]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import loadtest  # noqa: E402

ROOT = loadtest.ROOT


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / loadtest.os.sysconf("SC_CLK_TCK")


def redis_server(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    until = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > until:
            loadtest.fail("redis-server did not start")
        time.sleep(0.1)
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="200,1000", help="Recommend calls per second, comma-separated")
    p.add_argument("--seconds", type=int, default=20)
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        loadtest.fail("redis-server not found: apt-get install redis-server (make redis-server does)")
    bin_dir = ROOT / "target" / "release"
    data = ROOT / "data" / "demo"
    env = loadtest.server_env()
    rates = [int(r) for r in args.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tandem-redis-cost-") as scratch:
        scratch = Path(scratch)
        redis_port = loadtest.free_port()
        redis = redis_server(redis_port, scratch / "redis.log")
        try:
            for store in ("memory", f"redis://127.0.0.1:{redis_port}"):
                name = "memory" if store == "memory" else "redis"
                addr = f"127.0.0.1:{loadtest.free_port()}"
                servers = loadtest.Servers.__new__(loadtest.Servers)
                servers.procs = []
                servers.start(bin_dir / "tandem-gateway",
                              [f"--listen={addr}", f"--items={data / 'items.parquet'}",
                               f"--model-dir={data / 'models' / 'ranker'}",
                               f"--state-dir={ROOT / 'target' / 'loadtest' / 'demo-state'}",
                               f"--event-log-dir={scratch / name / 'events'}",
                               f"--served-log-dir={scratch / name / 'served'}",
                               f"--state-store={store}"],
                              env, scratch / f"gateway-{name}.log")
                try:
                    servers.wait_serving(bin_dir, addr)
                    gateway = servers.procs[0][0].pid
                    warm = loadtest.load(bin_dir, loadtest.GHZ / "warm-users.json", addr, [])
                    if loadtest.errors(warm):
                        loadtest.fail(f"warm-up failed: {warm.get('statusCodeDistribution')}")
                    for rate in rates:
                        g0, r0 = cpu_s(gateway), cpu_s(redis.pid)
                        report = loadtest.load(bin_dir, loadtest.GHZ / "recommend-warm.json", addr,
                                               [f"--rps={rate}", f"--duration={args.seconds}s"])
                        g1, r1 = cpu_s(gateway), cpu_s(redis.pid)
                        calls = report.get("count", 0)
                        if loadtest.errors(report) or not calls:
                            loadtest.fail(f"{name} at {rate}/s: {report.get('statusCodeDistribution')}")
                        redis_us = (r1 - r0) / calls * 1e6 if name == "redis" else 0.0
                        rows.append((name, rate, report.get("rps", 0.0), loadtest.percentile(report, 50),
                                     loadtest.percentile(report, 99), (g1 - g0) / calls * 1e6, redis_us))
                        print(f"{name:6} {rate:5}/s: p50 {rows[-1][3]:.2f} ms, p99 {rows[-1][4]:.2f} ms, "
                              f"gateway CPU {rows[-1][5]:.0f} us/call, redis-server {redis_us:.0f} us/call",
                              flush=True)
                    # Every answer personalized: a warm user is ranked, not degraded.
                    check = subprocess.run(
                        [str(ROOT / ".venv" / "bin" / "grpcurl"), "-plaintext", "-d",
                         '{"user_id": "user-3", "k": 10}', addr, "tandem.v1.RecommenderService/Recommend"],
                        capture_output=True, text=True)
                    if '"degraded": true' in check.stdout or '"trending"' in check.stdout:
                        loadtest.fail(f"{name}: user-3 not personalized: {check.stdout[:400]}")
                finally:
                    servers.stop()
        finally:
            redis.terminate()
            redis.wait(timeout=10)
    print()
    print("| store | offered /s | achieved /s | p50 ms | p99 ms | gateway CPU µs/call | redis-server CPU µs/call |")
    print("|---|---|---|---|---|---|---|")
    for name, rate, rps, p50, p99, g, r in rows:
        print(f"| {name} | {rate} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {g:.0f} | {r:.0f} |")


if __name__ == "__main__":
    main()
