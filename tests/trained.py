"""A trained fixture: yolo11n that really detects something, so tests can see accuracy move.

Tests on untrained weights compare zeros (every mAP is 0, every sensitivity drop is 0), so a broken feature passes.
This dataset is easy on purpose: one large disc or square per 64-px image on a flat background, val drawn the same
way. kdprune's own training (``TRAIN``) reached mAP50-95 0.61-0.68 on it (CPU nondeterminism), in well under a
minute on 2 cores; one training is shared by the session.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.conftest import compose

IMGSZ = 64
NAMES = ("disc", "square")
TRAIN = ["data.imgsz=64", "data.batch=16", "data.val_batch=16", "data.workers=0", "trainer.max_epochs=30",
         "data.augment.mosaic=0", "data.augment.close_mosaic=0", "optim.warmup_epochs=1", "optim.lr0=0.01",
         "val.plot_every=0", "logger=none"]


def easy_dataset(root: Path, n_train: int = 64, n_val: int = 32, seed: int = 0) -> Path:
    """Write the dataset under ``root``; return its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((IMGSZ, IMGSZ, 3), int(rng.integers(90, 160)), np.uint8)
            cls, side = int(rng.integers(len(NAMES))), int(rng.uniform(0.35, 0.6) * IMGSZ)
            x0, y0 = (int(v) for v in rng.integers(0, IMGSZ - side, 2))
            color = [int(c) for c in rng.integers(0, 256, 3)]
            if cls == 0:
                cv2.circle(img, (x0 + side // 2, y0 + side // 2), side // 2, color, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(img, (x0, y0), (x0 + side - 1, y0 + side - 1), color, -1)
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
            c = (x0 + side / 2) / IMGSZ, (y0 + side / 2) / IMGSZ
            w = side / IMGSZ
            (root / "labels" / split / f"{i:03d}.txt").write_text(f"{cls} {c[0]} {c[1]} {w} {w}\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    path = root / "data.yaml"
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return path


def train(root: Path) -> tuple[Path, Path, dict]:
    """(data.yaml, best.pt, summary) of a dense yolo11n trained on the easy dataset."""
    from kdprune.train import run

    data = easy_dataset(root / "data")
    summary = run(compose([*TRAIN, f"data.yaml={data}"], run_dir=root / "run"))
    return data, root / "run" / "weights" / "best.pt", summary
