"""mAP of an exported artifact: any runner (``kdprune.export.runtime``) -> host decode -> ultralytics' validator.

Exported graphs take one static square image, so the val split is letterboxed to ``imgsz x imgsz`` (``rect=False``),
not ultralytics' rectangular val batches: numbers are comparable between artifacts evaluated this way, and close to
(not identical with) the training-time validation on rect batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch

from kdprune.data import (
    prepare_batch,
    square_val_loader,  # noqa: F401  (re-exported: the loader evaluate_runner expects)
)
from kdprune.export.decode import decode
from kdprune.yolo.metrics import DetectionEvaluator


@torch.no_grad()
def evaluate_runner(runner, loader, data: dict, *, strides: Sequence[float], nc: int, reg_max: int,
                    names: dict[int, str], end2end: bool = False, channels_last: bool = False,
                    progress: Callable[[int, int], None] | None = None, conf: float, iou: float,
                    max_det: int) -> dict:
    """Ultralytics' detection metrics of ``runner`` over ``loader`` (``square_val_loader``): the dict
    ``DetectionEvaluator.compute()`` returns (mAP50, mAP50-95, precision, recall, fitness, per_class, images).

    Each image goes through the runner alone (exported graphs are batch 1), its outputs through ``decode`` (with
    ``end2end`` for a YOLO26 graph exported from its one-to-one branch: top-k, no NMS) and the validator's
    postprocess/update. ``progress(done, total)`` is called after each batch.
    """
    ev = DetectionEvaluator(names, conf=conf, iou=iou, max_det=max_det, distributed=False)
    # init_metrics reads only names and end2end from the model (set_head_attr is skipped when absent).
    ev.reset(SimpleNamespace(names=dict(names), end2end=bool(end2end)), torch.device("cpu"), data)
    total = len(loader)
    for n, batch in enumerate(loader, 1):
        batch = prepare_batch(batch, "cpu")
        imgs = batch["img"].numpy()
        preds = torch.cat([
            decode(runner(imgs[i:i + 1]), strides, nc=nc, reg_max=reg_max, channels_last=channels_last,
                   end2end=end2end, max_det=max_det)
            for i in range(len(imgs))
        ])
        ev.update(preds, batch)
        if progress is not None:
            progress(n, total)
    return ev.compute()
