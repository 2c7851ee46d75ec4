"""BatchNorm recalibration and val mAP of an in-memory model, on batches collected once.

Every candidate is recalibrated on the same training images and evaluated on the same val images, so two candidates
differ only in what was pruned. The mAP is ultralytics' (``DetectionEvaluator``: its NMS, matching and AP), driven
the way ``DetectionModule``'s validation drives it.
"""

from __future__ import annotations

from itertools import islice

import torch
from torch import nn

from kdprune.data import prepare_batch
from kdprune.yolo import DetectionEvaluator


def take(loader, n: int | None = None) -> list[dict]:
    """The first ``n`` batches of ``loader`` (all with ``None``), images left as uint8 to halve the memory."""
    return list(islice(iter(loader), n))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[dict], device: torch.device) -> None:
    """Re-estimate every BatchNorm's running statistics from ``batches`` (forward in train mode, no gradients).

    Pruning a layer changes what every later BN sees, and stale statistics can cost more mAP than the channels
    themselves; a short recalibration measures the channels. The statistics are reset and averaged with
    ``momentum=None`` (a cumulative mean over these batches: no dependence on their order, nothing left of the
    old ones); each BN's momentum and the model's mode are restored afterwards. No batches: nothing happens.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not batches or not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for b in batches:
            model(prepare_batch(b, device)["img"])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


@torch.no_grad()
def val_metrics(model: nn.Module, batches: list[dict], data: dict, device: torch.device, *, conf: float, iou: float,
             max_det: int) -> dict:
    """Ultralytics' detection metrics (``mAP50``, ``mAP50-95``, ...) of ``model`` (eval mode) on ``batches``."""
    was_training = model.training
    model.eval()
    ev = DetectionEvaluator(model.names, conf=conf, iou=iou, max_det=max_det, distributed=False)
    ev.reset(model, device, data)
    try:
        for b in batches:
            b = prepare_batch(b, device)  # a copy: the batches are reused
            ev.update(model(b["img"]), b)
    finally:
        model.train(was_training)
    return ev.compute()
