"""ultralytics' detection loss, with the classification BCE and class weights made swappable, and the raw head
outputs that distillation reads.

v8DetectionLoss (and each branch of YOLO26's E2ELoss) computes its classification term as ``self.bce(...)`` element-
wise, then multiplies by ``self.class_weights`` if set. Replacing those two attributes on our instance is the drop-in
point: the assigner, box/DFL losses and normalisation stay ultralytics' own.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from ultralytics.models.yolo.detect.train import DetectionTrainer
from ultralytics.utils.loss import E2ELoss


def inverse_frequency_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """ultralytics' class weights (``cls_pw``): ``(1 / count) ** power``, classes without labels get the mean weight,
    normalised to mean 1 over classes (``DetectionTrainer.compute_class_weights`` + ``set_class_weights``)."""
    counts = np.asarray(counts, dtype=np.float64)
    if not counts.any():
        return np.ones_like(counts)
    shim = SimpleNamespace(args=SimpleNamespace(cls_pw=float(power)))
    w = DetectionTrainer.compute_class_weights(shim, counts)
    return w / w.mean()


def raw_head(preds) -> dict[str, torch.Tensor]:
    """The raw head outputs ``{boxes (B, 4*reg_max, A), scores (B, nc, A), feats [Detect inputs]}`` of a train- or
    eval-mode forward; for end-to-end heads (YOLO26) the one-to-many branch, the dense one the backbone learns from."""
    if isinstance(preds, tuple):  # eval mode: (decoded, raw)
        preds = preds[1]
    return preds.get("one2many", preds)


def in_fp32(x):
    """``x`` (a tensor, or lists / tuples / dicts of them) with every floating tensor in fp32: under mixed precision
    (bf16-mixed, 16-mixed) the head's outputs arrive in 16 bits, and the losses and box decoding need fp32."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: in_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(in_fp32(v) for v in x)
    return x


class DetectionCriterion:
    """``model.init_criterion()`` (v8DetectionLoss, or E2ELoss for end-to-end heads) with an optional element-wise
    classification loss (e.g. ``FocalBCE``) and per-class weights on the classification term."""

    def __init__(self, model: nn.Module, cls_loss: nn.Module | None = None, class_weights: torch.Tensor | None = None):
        self.inner = model.init_criterion()
        self.end2end = isinstance(self.inner, E2ELoss)
        self.branches = [self.inner.one2many, self.inner.one2one] if self.end2end else [self.inner]
        self.class_weights = class_weights  # kept here, on the device given, for to()
        for b in self.branches:
            if cls_loss is not None:
                b.bce = cls_loss
            if class_weights is not None:
                b.class_weights = class_weights.to(b.device, torch.float32).view(1, 1, -1)

    @property
    def device(self) -> torch.device:
        return self.branches[0].device

    def to(self, device: torch.device | str) -> DetectionCriterion:
        """Move the loss's tensors to ``device``. ultralytics builds its loss lazily, once the model sits on its device;
        ours is built with the LightningModule, on CPU, before Lightning moves the model, and v8DetectionLoss keeps the
        device it saw at construction (its ``proj``, ``device`` and class weights)."""
        device = torch.device(device)
        for b in self.branches:
            b.device = device
            b.proj = torch.arange(b.reg_max, dtype=torch.float, device=device)  # as v8DetectionLoss builds it
            b.bbox_loss.to(device)
            if isinstance(b.bce, nn.Module):
                b.bce.to(device)
            if self.class_weights is not None:
                b.class_weights = self.class_weights.to(device, torch.float32).view(1, 1, -1)
        return self

    def __call__(self, preds, batch: dict, foreground: bool = False):
        """``(loss (3,) summed over the batch, loss items, fg_mask or None)``; ``foreground=True`` also returns the
        anchors the task-aligned assigner gave an object to (B, A), of the one-to-many branch."""
        device = raw_head(preds)["boxes"].device
        if device != self.device:  # first call on the model's device (GPU training), once
            self.to(device)
        if not foreground:
            loss, items = self.inner(preds, batch)
            return loss, items, None
        preds = self.branches[0].parse_output(preds)
        head = preds["one2many"] if self.end2end else preds
        bs = head["boxes"].shape[0]
        (fg, *_), loss, items = self.branches[0].get_assigned_targets_and_loss(head, batch)
        loss = loss * bs
        if self.end2end:  # E2ELoss.__call__ with the one-to-many half computed above
            o2o_loss, items = self.inner.one2one.loss(preds["one2one"], batch)
            loss = loss * self.inner.o2m + o2o_loss * self.inner.o2o
        return loss, items, fg

    def update(self) -> None:
        if hasattr(self.inner, "update"):
            self.inner.update()  # E2ELoss anneals its one-to-many weight per epoch
