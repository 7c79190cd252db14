"""The container image, checked without a container engine (none runs here).

1. hadolint on the Dockerfile (one file for both variants).
2. The image's filesystem built by the script the Dockerfile's build stage runs
   (.ci/image-rootfs.sh), with this checkout's debug binaries (those `cargo test` builds).
3. The gateway started from that layout as the image starts it: the Dockerfile's ENTRYPOINT,
   ENV and HEALTHCHECK, read from the Dockerfile itself, with /opt, /var/lib/tandem and /data
   mapped into the layout and the test catalog; /opt made read-only.
4. Asserts: the HEALTHCHECK command fails while nothing serves and passes once the gateway is
   up; events are recorded and a Recommend is ranked by the model; after a clean SIGTERM the
   gateway wrote only under /var/lib/tandem.

    python .ci/test_image.py            (make test runs it)
"""

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
DATA = Path(os.environ.get("TANDEM_TEST_DATA", ROOT / "data" / "test"))


def fail(message: str) -> None:
    print(f"test_image: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of the last stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            instructions = []
        instructions.append((word.upper(), rest.strip()))
    return instructions


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    for w, rest in stage:
        if w == word:
            rest = rest[rest.index("CMD") + 3:].strip() if word == "HEALTHCHECK" else rest
            return json.loads(rest)
    fail(f"no {word} in the Dockerfile's final stage")
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_outside(rootfs: Path, writable: Path) -> dict[str, float]:
    seen = {}
    for path in rootfs.rglob("*"):
        if writable == path or writable in path.parents:
            continue
        seen[str(path)] = path.lstat().st_mtime
    return seen


def main() -> int:
    subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile")], check=True)
    print("test_image: hadolint Dockerfile: clean")

    # The binaries `cargo test --workspace` built (every server has integration tests, so it
    # builds them all): a no-op after make test's run. `cargo build --bins` would resolve
    # features without the dev-dependencies and compile much of the tree a second time.
    subprocess.run(["cargo", "test", "--workspace", "--no-run", "--locked"], cwd=ROOT, check=True)
    scratch = Path(tempfile.mkdtemp(prefix="tandem-image-"))
    rootfs = scratch / "rootfs"
    subprocess.run([str(ROOT / ".ci/image-rootfs.sh"), "--binaries", str(ROOT / "target/debug"), str(rootfs)],
                   check=True)

    stage = final_stage((ROOT / "Dockerfile").read_text())
    users = [rest for word, rest in stage if word == "USER"]
    if not users or users[-1].split(":")[0] in ("", "0", "root") or not users[-1].split(":")[0].isdigit():
        fail(f"the image must run as a non-root numeric user, not {users}")

    def in_layout(value: str) -> str:
        value = value.replace("/opt/", f"{rootfs}/opt/").replace("/var/lib/tandem", f"{rootfs}/var/lib/tandem")
        return value.replace("/data/", f"{DATA}/")

    port = free_port()
    env = {key: in_layout(value) for key, value in image_env(stage).items()}
    env["TANDEM_LISTEN"] = f"0.0.0.0:{port}"
    env["PATH"] = "/usr/bin:/bin"
    for key in ("ORT_DYLIB_PATH", "TANDEM_ITEMS", "TANDEM_MODEL_DIR"):
        if not Path(env[key]).exists():
            fail(f"{key}={env[key]} does not exist in the layout")
    entrypoint = [in_layout(part) for part in exec_form(stage, "ENTRYPOINT")]
    healthcheck = [in_layout(part) for part in exec_form(stage, "HEALTHCHECK")]

    # Read-only /opt, as on a read-only root filesystem (root ignores the mode: the file
    # comparison below is what catches a write).
    for path in (rootfs / "opt").rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = files_outside(rootfs, rootfs / "var/lib/tandem")

    probe = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
    if probe.returncode == 0:
        fail("HEALTHCHECK passed with no server listening")

    log = open(scratch / "gateway.log", "w")
    gateway = subprocess.Popen(entrypoint, env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 180
        while subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode != 0:
            if gateway.poll() is not None:
                fail(f"the gateway exited with {gateway.returncode}: {(scratch / 'gateway.log').read_text()[-2000:]}")
            if time.time() > deadline:
                fail("HEALTHCHECK did not pass within 180 s")
            time.sleep(0.5)
        print(f"test_image: HEALTHCHECK passes on 0.0.0.0:{port}")

        addr = f"127.0.0.1:{port}"
        items = json.loads(subprocess.run(
            [str(VENV_BIN / "python"), "-c",
             "import json,pyarrow.parquet as pq,sys; "
             "print(json.dumps(pq.read_table(sys.argv[1], columns=['item_id']).column(0).to_pylist()[:5]))",
             str(DATA / "items.parquet")], capture_output=True, text=True, check=True).stdout)
        events = [{"user_id": "image-user", "item_id": i, "type": "EVENT_TYPE_CLICK"} for i in items]
        grpcurl = lambda method, body: json.loads(subprocess.run(
            [str(VENV_BIN / "grpcurl"), "-plaintext", "-d", json.dumps(body), addr, method],
            capture_output=True, text=True, check=True, timeout=60).stdout or "{}")
        grpcurl("tandem.v1.RecommenderService/RecordEvents", {"events": events})
        answer = grpcurl("tandem.v1.RecommenderService/Recommend", {"user_id": "image-user", "k": 5})
        version = answer.get("modelVersion", "")
        if len(answer.get("items", [])) != 5 or version in ("", "trending", "retrieval") or answer.get("degraded"):
            fail(f"not a ranked answer from the image's gateway: {answer}")
        print(f"test_image: Recommend ranked by {version}")
    finally:
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=60)
        log.close()
    if code != 0:
        fail(f"the gateway exited with {code} on SIGTERM")

    after = files_outside(rootfs, rootfs / "var/lib/tandem")
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        fail(f"the gateway wrote outside /var/lib/tandem: {changed[:10]}")
    written = [p for p in (rootfs / "var/lib/tandem").rglob("*") if p.is_file()]
    if not any("events" in p.parts for p in written):
        fail("no event log under /var/lib/tandem/events")
    print(f"test_image: passed ({len(written)} files written, all under /var/lib/tandem)")
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
