"""How well does ``kdprune.pruning.budget.arena_bytes`` predict the tensor arena TensorFlow Lite Micro needs?

For yolo11n and yolov8n (nc=3, SplitC2f blocks as training leaves them), unpruned and pruned by ``YoloPruner`` to
0.3 and 0.6, at 160 and 256 px: the estimate on the PyTorch model against ``tensor_arena_bytes`` of its full-INT8
TFLite file (PTQ graph through kdprune's own export, ``bench.int8_size.to_tflite``), with TFLM's head (planned
activations) and tail (persistent structures) beside the estimate's parts.

    .venv/bin/python -m bench.arena_estimate    # table + bench/results/estimators/arena_bytes.json (~6 min, 2 cores)
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS
from bench.int8_size import build, to_tflite


def tflm_parts(path: Path) -> dict:
    from kdprune.export.tflm import _captured_stderr, _micro

    text = _captured_stderr(_micro(path.read_bytes(), 64 << 20).print_allocations)
    return {k: int(re.search(rf"Arena allocation {k} (\d+) bytes", text).group(1)) for k in ("total", "head", "tail")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolov8n.yaml"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.3, 0.6])
    ap.add_argument("--imgsz", nargs="+", type=int, default=[160, 256])
    ap.add_argument("--out", default=str(RESULTS / "estimators" / "arena_bytes.json"))
    args = ap.parse_args()
    from kdprune.pruning.arena import peak_activation_bytes
    from kdprune.pruning.budget import arena_bytes

    rows, tmp = [], Path(tempfile.mkdtemp(prefix="arena-"))
    for cfg in args.models:
        for ratio in args.ratios:
            model = build(cfg, ratio)
            for imgsz in args.imgsz:
                t0 = time.time()
                path = to_tflite(model, imgsz, tmp / f"{Path(cfg).stem}-{ratio}-{imgsz}.tflite")
                m = tflm_parts(path)
                est, peak = arena_bytes(model, imgsz), peak_activation_bytes(model, imgsz)
                row = {"model": cfg, "ratio": ratio, "imgsz": imgsz, "tflm": m["total"], "tflm_head": m["head"],
                       "tflm_tail": m["tail"], "estimate": est, "peak": peak, "tail_estimate": est - int(1.02 * peak),
                       "error_pct": round(100 * (est / m["total"] - 1), 2)}
                rows.append(row)
                print(f"{cfg:13s} ratio {ratio:.1f} {imgsz:4d} px: TFLM {m['total']:>9,} (head {m['head']:>9,} tail "
                      f"{m['tail']:>7,})  estimate {est:>9,} (peak {peak:>9,})  {row['error_pct']:+.2f} %  "
                      f"[{time.time() - t0:.0f} s]", flush=True)
    errs = [abs(r["error_pct"]) for r in rows]
    print(f"|error| mean {sum(errs) / len(errs):.2f} %, max {max(errs):.2f} %; estimate under TFLM in "
          f"{sum(r['estimate'] < r['tflm'] for r in rows)} of {len(rows)}")
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
