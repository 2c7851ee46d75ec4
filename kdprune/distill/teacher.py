"""The frozen teacher: eval mode, no gradients, outside the student's module tree."""

from __future__ import annotations

import torch
from torch import nn


class Teacher:
    """Wraps the teacher network so it can never be trained or saved with the student.

    Deliberately not an ``nn.Module``: assigned to the LightningModule it does not become a submodule, so it is not in
    the student's ``state_dict`` (checkpoints), ``parameters()`` (optimizer), DDP wrapper, or ``.train()`` calls. Its
    parameters have ``requires_grad=False`` and every forward runs in eval mode under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module, info: dict | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.info = dict(info or {})  # where it came from, its val mAP

    def to(self, device) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, img: torch.Tensor):
        if self.model.training:  # someone called .train() on it: BN must keep its running statistics
            self.model.eval()
        return self.model(img)

    def measure(self, loader, data: dict, device, val_args: dict) -> dict:
        """Its val mAP50-95 and mAP50 in ``info`` (measured on ``loader`` unless its training already measured it)."""
        if self.info.get("mAP50-95") is None:
            from kdprune.yolo import evaluate_checkpoint

            m = evaluate_checkpoint(self.info["weights"], loader, data, device, **val_args)
            self.info["mAP50-95"], self.info["mAP50"] = m["mAP50-95"], m["mAP50"]
        return self.info
