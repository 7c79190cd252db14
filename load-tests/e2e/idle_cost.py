"""What waiting between calls costs the next one, without tandem: ONNX Runtime from Python.

A server at one call at a time waits between calls; the e2e ratio divides its CPU per call by
stages measured in tight loops, which never wait. This runs the same ranking model through the
`onnxruntime` wheel (one intra-op thread, as tandem runs it) and reports the thread CPU of one
run when runs follow each other at once and when the thread sleeps between them, so the cost
of the wait can be read on any machine, apart from any code of ours. `--wait spin` waits the
same time without giving up the CPU: where that costs nothing and a sleep does, the cost is the
CPU going idle (on a VM, the vCPU halting), not the time that passed.

    python load-tests/e2e/idle_cost.py --model data/demo/models/ranker/1/model.onnx [--wait both]
"""

import argparse
import time
from pathlib import Path


def main() -> None:
    # Here, not at the top: h2load_cpu.py imports idle_settings alone.
    import numpy as np
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/demo/models/ranker/1/model.onnx")
    ap.add_argument("--rows", type=int, nargs="+", default=[20, 200, 1000])
    ap.add_argument("--gaps-us", type=float, nargs="+", default=[0, 50, 300, 2000],
                    help="wait between runs, microseconds (0: back to back)")
    ap.add_argument("--runs", type=int, default=1500)
    ap.add_argument("--wait", choices=["sleep", "spin", "both"], default="sleep",
                    help="between runs: sleep (the CPU may go idle), spin (it stays busy), or both")
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    width = feed.shape[1]
    output = session.get_outputs()[-1].name

    def spin(gap_s: float) -> None:
        until = time.perf_counter() + gap_s
        while time.perf_counter() < until:
            pass

    def per_run_us(rows: int, gap_s: float, wait) -> float:
        x = np.random.default_rng(7).random((rows, width), dtype=np.float32)
        session.run([output], {feed.name: x})
        total = 0
        for _ in range(args.runs):
            if gap_s:
                wait(gap_s)
            t0 = time.thread_time_ns()
            session.run([output], {feed.name: x})
            total += time.thread_time_ns() - t0
        return total / args.runs / 1e3

    print(f"{args.model}: thread CPU per run (us), {args.runs} runs each")
    print(f"this machine's idle: {idle_settings()}")
    waits = {"sleep": time.sleep, "spin": spin}
    chosen = list(waits) if args.wait == "both" else [args.wait]
    print("rows  wait   " + "  ".join(f"{f'gap {g:g} us':>12}" for g in args.gaps_us) + "  back to back again")
    for rows in args.rows:
        for name in chosen:
            figures = [per_run_us(rows, g / 1e6, waits[name]) for g in args.gaps_us]
            figures.append(per_run_us(rows, 0, waits[name]))
            print(f"{rows:4d}  {name:5s}  " + "  ".join(f"{f:12.1f}" for f in figures))


def idle_settings() -> str:
    """The cpuidle driver and, under KVM's haltpoll driver, how long an idle vCPU polls before
    it halts (0: it halts at once, and the next wake-up pays the exit to the host)."""
    cpuidle = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    poll = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    driver = cpuidle.read_text().strip() if cpuidle.exists() else "unknown"
    if poll.exists():
        return f"cpuidle driver {driver}, guest_halt_poll_ns {poll.read_text().strip()}"
    return f"cpuidle driver {driver}"


if __name__ == "__main__":
    main()
