"""Anchor: plain ultralytics training of yolo11n.yaml on the embedded dataset for the default epoch budget.

Checks the embedded dataset is learnable but not trivial (issue: mAP50-95 between 0.3 and 0.8). Uses the same
hyperparameters as kdprune's default config (epochs, imgsz, batch, optimizer, lr, nbs, augmentation), read from it.

    .venv/bin/python -m bench.ultralytics_baseline [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import kdprune  # noqa: F401  (sets YOLO_OFFLINE before ultralytics is imported)
from bench.common import default_data_yaml, default_hyp, git_rev, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    a = ap.parse_args()

    from ultralytics import YOLO

    data = default_data_yaml()
    hyp = default_hyp()
    with tempfile.TemporaryDirectory() as project:
        t0 = time.time()
        model = YOLO("yolo11n.yaml")
        model.train(data=str(data), seed=a.seed, device="cpu", project=project, name="run", plots=False, amp=False,
                    verbose=False, **hyp)
        wall = time.time() - t0
        metrics = YOLO(str(Path(project) / "run" / "weights" / "best.pt")).val(
            data=str(data), imgsz=hyp["imgsz"], batch=hyp["batch"] * 2, device="cpu", plots=False, verbose=False)
    result = {
        "what": "ultralytics YOLO('yolo11n.yaml').train on the embedded dataset, kdprune's default hyperparameters",
        "hyp": hyp, "seed": a.seed,
        "mAP50": round(float(metrics.box.map50), 4), "mAP50-95": round(float(metrics.box.map), 4),
        "wall_time_s": round(wall, 1), "machine": machine(), "commit": git_rev(),
    }
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
