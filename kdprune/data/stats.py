"""Class statistics of a dataset, a fingerprint that says whether two runs saw the same data, and what the input size
does to the objects: the share that falls below a few pixels once an image is letterboxed to ``imgsz`` (the cost of
a lower resolution that no mAP on another dataset shows; nothing in ultralytics reports it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from kdprune.data.checks import split_image_files


def class_counts(dataset, nc: int) -> np.ndarray:
    """Instances per class over ultralytics' loaded labels (``YOLODataset.labels``), as ultralytics counts them."""
    cls = [lb["cls"].reshape(-1) for lb in dataset.labels]
    flat = np.concatenate(cls).astype(int) if cls else np.zeros(0, dtype=int)
    return np.bincount(flat, minlength=nc)[:nc]


def data_fingerprint(data: dict) -> str:
    """A short hash of what a model trained on ``data`` learned from: class names, every image's name and size, and
    every label file's content, for the train and val splits. Moving the dataset elsewhere keeps the fingerprint;
    editing one label changes it."""
    from ultralytics.data.utils import img2label_paths

    h = hashlib.sha256(repr(sorted(dict(data["names"]).items())).encode())
    for split in ("train", "val"):
        images = split_image_files(data[split])
        root = os.path.commonpath(images) if images else ""
        h.update(f"{split}:{len(images)}".encode())
        for im, lb in zip(images, img2label_paths(images)):
            h.update(os.path.relpath(im, root).encode())
            h.update(str(os.path.getsize(im)).encode())
            if os.path.isfile(lb):
                h.update(Path(lb).read_bytes())
    return h.hexdigest()[:12]


SMALL_PX = 8         # the finest detection level's stride: an object under it spans less than one P3 cell
SMALL_WARN = 0.10    # a share of objects above this under SMALL_PX is worth a warning


def small_objects(labels: list[dict], imgsz: int, min_px: int = SMALL_PX) -> dict:
    """Share of labelled objects whose shorter side is under ``min_px`` pixels at ``imgsz`` (letterboxed: the image's
    longer side becomes ``imgsz``), with the same share at twice the size for comparison."""
    sides = []
    for lb in labels:
        boxes = np.asarray(lb.get("bboxes", ()), dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        h, w = lb["shape"]
        scale = 1.0 / max(h, w)  # times imgsz: pixels at the input
        sides.append(np.minimum(boxes[:, 2] * w, boxes[:, 3] * h) * scale)
    s = np.concatenate(sides) if sides else np.zeros(0)
    n = int(s.size)

    def share(size: int) -> float:
        return round(float(np.mean(s * size < min_px)), 4) if n else 0.0

    return {"imgsz": int(imgsz), "min_px": int(min_px), "objects": n, "share": share(imgsz),
            "share_at_2x": share(2 * imgsz), "median_px": round(float(np.median(s) * imgsz), 1) if n else None}


def small_objects_line(s: dict) -> str:
    line = (f"{100 * s['share']:.1f} % of the {s['objects']:,} training objects are under {s['min_px']} px on their "
            f"shorter side at imgsz {s['imgsz']} ({100 * s['share_at_2x']:.1f} % at {2 * s['imgsz']}; median "
            f"{s['median_px']} px)")
    if s["share"] > SMALL_WARN:
        line += " -- a lower data.imgsz loses these first; weigh RAM against them (device=, prune.target.arena_bytes)"
    return line
