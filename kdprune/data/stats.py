"""Class statistics of a dataset, and a fingerprint that says whether two runs saw the same data."""

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
