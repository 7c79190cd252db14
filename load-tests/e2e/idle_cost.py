"""What waiting between calls costs the next one, without tandem: ONNX Runtime from Python.

A server at one call at a time waits between calls; the e2e ratio divides its CPU per call by
stages measured in tight loops, which never wait. This runs the same ranking model through the
`onnxruntime` wheel (one intra-op thread, as tandem runs it) and reports the thread CPU of one
run when runs follow each other at once and when the thread sleeps between them, so the cost
of the wait can be read on any machine, apart from any code of ours.

    python load-tests/e2e/idle_cost.py --model data/demo/models/ranker/1/model.onnx
"""

import argparse
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/demo/models/ranker/1/model.onnx")
    ap.add_argument("--rows", type=int, nargs="+", default=[20, 200, 1000])
    ap.add_argument("--gaps-us", type=float, nargs="+", default=[0, 50, 300, 2000],
                    help="sleep between runs, microseconds (0: back to back)")
    ap.add_argument("--runs", type=int, default=1500)
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    width = feed.shape[1]
    output = session.get_outputs()[-1].name

    def per_run_us(rows: int, gap_s: float) -> float:
        x = np.random.default_rng(7).random((rows, width), dtype=np.float32)
        session.run([output], {feed.name: x})
        total = 0
        for _ in range(args.runs):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.thread_time_ns()
            session.run([output], {feed.name: x})
            total += time.thread_time_ns() - t0
        return total / args.runs / 1e3

    print(f"{args.model}: thread CPU per run (us), {args.runs} runs each; gaps are sleeps between runs")
    print("rows  " + "  ".join(f"{f'gap {g:g} us':>12}" for g in args.gaps_us) + "  back to back again")
    for rows in args.rows:
        figures = [per_run_us(rows, g / 1e6) for g in args.gaps_us] + [per_run_us(rows, 0)]
        print(f"{rows:4d}  " + "  ".join(f"{f:12.1f}" for f in figures))


if __name__ == "__main__":
    main()
