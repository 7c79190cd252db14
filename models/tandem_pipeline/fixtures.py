"""Broken model bundles for the ranking tests, derived from a data directory's ranker:

    python -m tandem_pipeline.fixtures --data ../data/test

writes DATA/fixtures/nan_model/ (a valid graph whose weights are NaN, so every score is NaN)
and DATA/fixtures/garbage_model/ (bytes that are no ONNX model), each beside a copy of the
ranker's feature spec. A rollout must refuse both and keep serving the previous version.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def main() -> None:
    p = argparse.ArgumentParser(prog="tandem_pipeline.fixtures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data directory holding models/ranker/1")
    args = p.parse_args()
    data = Path(args.data)
    src = data / "models" / "ranker" / "1"
    out = data / "fixtures"

    model = onnx.load(str(src / "model.onnx"))
    poisoned = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(np.full_like(arr, np.nan), init.name))
            poisoned += 1
    if poisoned == 0:
        raise SystemExit("no weight matrix to poison in the ranker model")
    nan_dir = out / "nan_model"
    nan_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(nan_dir / "model.onnx"))
    shutil.copy(src / "feature_spec.json", nan_dir / "feature_spec.json")

    garbage_dir = out / "garbage_model"
    garbage_dir.mkdir(parents=True, exist_ok=True)
    (garbage_dir / "model.onnx").write_bytes(b"this is not an ONNX model\n" * 40)
    shutil.copy(src / "feature_spec.json", garbage_dir / "feature_spec.json")
    print(f"wrote {nan_dir} ({poisoned} weight matrices set to NaN) and {garbage_dir}")


if __name__ == "__main__":
    main()
