"""Memory under a million distinct users, from outside: the release gateway on the demo catalog
with a small user-state budget, driven by `tandem-load` (ghz configs in `load-tests/ghz/`):

1. `recommend-anonymous.json`: Recommend for N distinct never-seen user ids (must create no
   state at all);
2. `record-distinct-users.json`: RecordEvents for N distinct users, two events each (fills
   the budget; the least recently used are evicted).

Reports the gateway's resident set size after start-up and after each phase, and the state
metrics (`tandem_user_state_users`, `tandem_user_state_bytes`).

    python load-tests/soak/soak_users.py [--users 1000000] [--budget-mib 64]
"""

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import loadtest  # noqa: E402

ROOT = loadtest.ROOT


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def metric(port: int, name: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--budget-mib", type=int, default=64)
    args = p.parse_args()
    bin_dir = ROOT / "target" / "release"
    data = ROOT / "data" / "demo"
    port, metrics_port = loadtest.free_port(), loadtest.free_port()
    addr = f"127.0.0.1:{port}"
    env = loadtest.server_env()
    with tempfile.TemporaryDirectory(prefix="tandem-soak-") as scratch:
        servers = loadtest.Servers.__new__(loadtest.Servers)
        servers.procs = []
        servers.start(bin_dir / "tandem-gateway",
                      [f"--listen={addr}", f"--items={data / 'items.parquet'}",
                       f"--model-dir={data / 'models' / 'ranker'}", f"--state-dir={scratch}/state",
                       f"--event-log-dir={scratch}/events", f"--served-log-dir={scratch}/served",
                       f"--user-state-mib={args.budget_mib}", f"--metrics-listen=127.0.0.1:{metrics_port}"],
                      env, Path(scratch) / "gateway.log")
        try:
            servers.wait_serving(bin_dir, addr)
            pid = servers.procs[0][0].pid
            print(f"gateway serving: RSS {rss_mib(pid):.0f} MiB (user-state budget {args.budget_mib} MiB)", flush=True)
            for config, what in (("recommend-anonymous.json", "Recommend, distinct unknown users"),
                                 ("record-distinct-users.json", "RecordEvents, distinct users, 2 events each")):
                started = time.monotonic()
                report = loadtest.load(bin_dir, loadtest.GHZ / config, addr, [f"-n={args.users}"])
                seconds = time.monotonic() - started
                time.sleep(11)  # the state gauges refresh every 10 s
                codes = report.get("statusCodeDistribution", {})
                print(f"{what}: {args.users} calls in {seconds:.0f} s ({args.users / seconds:.0f}/s), "
                      f"status {codes}; RSS {rss_mib(pid):.0f} MiB; users kept "
                      f"{metric(metrics_port, 'tandem_user_state_users'):.0f}, state "
                      f"{metric(metrics_port, 'tandem_user_state_bytes') / 2**20:.1f} MiB", flush=True)
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
