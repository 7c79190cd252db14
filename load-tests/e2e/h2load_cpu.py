"""Server CPU per call of the real `tandem-gateway` binary, driven from outside by h2load.

The e2e bench (`services/gateway/benches/e2e.rs`) measures the gateway inside its own
process; this measures the release binary as deployed, with a load generator that is not
ours: h2load (Debian `nghttp2-client`), one connection, one call at a time, and the server's
CPU read from /proc before and after each run.

    python load-tests/e2e/h2load_cpu.py --data data/demo [--state-dir DIR] [--requests 3000]

h2load sends one body per run, so each run asks for one warm user (5 clicks recorded
through RecordEvents first); runs rotate over users. It counts HTTP 200 as success, so
each user's answer is first checked with grpcurl (ranked by the model, not degraded).
"""

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from idle_cost import idle_settings

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
RECOMMEND = "/tandem.v1.RecommenderService/Recommend"
HEALTH = "/grpc.health.v1.Health/Check"


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression, 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def recommend_request(user: str, k: int, num_candidates: int) -> bytes:
    """tandem.v1.RecommendRequest: user_id = 1, k = 2, num_candidates = 3."""
    uid = user.encode()
    return (
        varint(1 << 3 | 2) + varint(len(uid)) + uid
        + varint(2 << 3) + varint(k)
        + varint(3 << 3) + varint(num_candidates)
    )


def grpcurl(addr: str, method: str, body: dict) -> dict:
    out = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", json.dumps(body), addr, method],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{method}: {out.stderr.strip()}")
    return json.loads(out.stdout or "{}")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(url: str, body: Path, n: int) -> None:
    out = subprocess.run(
        ["h2load", "-n", str(n), "-c", "1", "-m", "1", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers", url],
        capture_output=True, text=True, check=True,
    )
    if f"{n} succeeded" not in out.stdout:
        raise RuntimeError(f"h2load: not every call succeeded:\n{out.stdout}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default=str(ROOT / "target/release/tandem-gateway"))
    ap.add_argument("--data", default=str(ROOT / "data/demo"))
    ap.add_argument("--state-dir", help="index snapshot to restore (copied first); default: build")
    ap.add_argument("--requests", type=int, default=3000, help="calls per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=50971)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client (make bench-e2e-h2load does)")
        return 2

    data = Path(args.data)
    scratch = Path(tempfile.mkdtemp(prefix="tandem-h2load-"))
    state = scratch / "state"
    if args.state_dir:
        shutil.copytree(args.state_dir, state)
    addr = f"127.0.0.1:{args.port}"
    log = open(scratch / "gateway.log", "w")
    gateway = subprocess.Popen(
        [args.gateway, f"--listen={addr}", f"--items={data / 'items.parquet'}",
         f"--model-dir={data / 'models/ranker'}", f"--state-dir={state}",
         f"--event-log-dir={scratch / 'events'}", f"--served-log-dir={scratch / 'served'}"],
        stdout=log, stderr=log,
    )
    try:
        started = time.time()
        while True:
            if gateway.poll() is not None:
                raise RuntimeError(f"gateway exited; see {scratch / 'gateway.log'}")
            try:
                if grpcurl(addr, "grpc.health.v1.Health/Check", {}).get("status") == "SERVING":
                    break
            except RuntimeError:
                pass
            time.sleep(1)
        print(f"serving after {time.time() - started:.1f} s")

        ids = pq.read_table(data / "items.parquet", columns=["item_id"]).column(0).to_pylist()
        users = [f"h2load-{u}" for u in range(args.rounds)]
        events = [
            {"user_id": user, "item_id": ids[(7919 * (u + 1) + 3 * e) % len(ids)], "type": "EVENT_TYPE_CLICK"}
            for u, user in enumerate(users) for e in range(5)
        ]
        grpcurl(addr, "tandem.v1.RecommenderService/RecordEvents", {"events": events})
        bodies = {}
        for user in users:
            answer = grpcurl(addr, "tandem.v1.RecommenderService/Recommend",
                             {"user_id": user, "k": 10, "num_candidates": 200})
            version = answer.get("modelVersion", "")
            if answer.get("degraded") or version in ("", "trending", "retrieval") or len(answer.get("items", [])) != 10:
                raise RuntimeError(f"{user}: not a ranked answer: {answer}")
            bodies[user] = scratch / f"{user}.bin"
            bodies[user].write_bytes(grpc_frame(recommend_request(user, 10, 200)))
        health = scratch / "health.bin"
        health.write_bytes(grpc_frame(b""))

        url = f"http://{addr}"
        h2load(url + RECOMMEND, bodies[users[0]], args.requests // 5)  # warm-up
        h2load(url + HEALTH, health, args.requests // 5)
        recommend, check = [], []
        for user in users:
            for figures, path, body in ((recommend, RECOMMEND, bodies[user]), (check, HEALTH, health)):
                before = process_cpu_s(gateway.pid)
                h2load(url + path, body, args.requests)
                figures.append((process_cpu_s(gateway.pid) - before) / args.requests * 1e6)
        rss = Path(f"/proc/{gateway.pid}/status").read_text().split("VmRSS:")[1].split()[0]
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        log.close()

    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"catalog: {len(ids)} items; {args.rounds} runs of {args.requests} calls each, concurrency 1, k = 10, num_candidates = 200")
    print(f"Recommend server CPU per call (us): median {med(recommend):.1f}; runs " + " ".join(f"{x:.1f}" for x in recommend))
    print(f"Health    server CPU per call (us): median {med(check):.1f}; runs " + " ".join(f"{x:.1f}" for x in check))
    print(f"gateway RSS: {int(rss) // 1024} MiB; this machine's idle: {idle_settings()}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
