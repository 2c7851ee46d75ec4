"""``Distiller``: the weighted sum of the distillation terms between a student's and a teacher's head outputs."""

from __future__ import annotations

import torch
from torch import nn

from kdprune.distill.adapters import FeatureAdapters
from kdprune.losses.kd import ANCHOR_WEIGHTS, anchor_weights, cls_kd, cwd, ld_kd


class Distiller(nn.Module):
    """KD loss per image: ``cls * cls_kd + ld * ld_kd + cwd * mean_levels(cwd)``.

    Inputs are the raw head dicts ``{boxes, scores, feats}`` of student (train mode) and teacher (eval mode, no grad).
    Terms with weight 0 are not computed. Holds the trainable feature adapters (only when ``cwd > 0``); the teacher
    itself lives elsewhere, so it is never in this module's state, optimizer or DDP wrapper.
    """

    def __init__(self, *, cls: float, ld: float, cwd: float, t_cls: float, t_ld: float, t_cwd: float, anchors: str,
                 reg_max: int = 16, student_channels: list[int] | None = None,
                 teacher_channels: list[int] | None = None):
        super().__init__()
        if anchors not in ANCHOR_WEIGHTS:
            raise ValueError(f"anchors={anchors!r}: choose one of {', '.join(ANCHOR_WEIGHTS)}")
        for name, v in (("cls", cls), ("ld", ld), ("cwd", cwd), ("t_cls", t_cls), ("t_ld", t_ld), ("t_cwd", t_cwd)):
            if v < 0 or (name.startswith("t_") and v == 0):
                raise ValueError(f"{name}={v}: must be {'> 0' if name.startswith('t_') else '>= 0'}")
        self.weights = {"cls": float(cls), "ld": float(ld), "cwd": float(cwd)}
        self.t_cls, self.t_ld, self.t_cwd = float(t_cls), float(t_ld), float(t_cwd)
        self.anchors, self.reg_max = anchors, reg_max
        self.adapters = FeatureAdapters(student_channels, teacher_channels) if cwd > 0 else None

    @property
    def needs_foreground(self) -> bool:
        return self.anchors == "foreground" and (self.weights["cls"] > 0 or self.weights["ld"] > 0)

    def forward(self, student: dict, teacher: dict, fg_mask: torch.Tensor | None = None):
        """``(total, {term: value})``, both per image (multiply by the batch size to sit beside ultralytics' loss)."""
        items = {}
        if self.weights["cls"] or self.weights["ld"]:
            w = anchor_weights(self.anchors, teacher["scores"], fg_mask)
            if self.weights["cls"]:
                items["cls"] = cls_kd(student["scores"], teacher["scores"], w, self.t_cls)
            if self.weights["ld"]:
                items["ld"] = ld_kd(student["boxes"], teacher["boxes"], w, self.reg_max, self.t_ld)
        if self.adapters is not None:
            mapped = self.adapters(student["feats"])
            items["cwd"] = torch.stack([cwd(s, t, self.t_cwd) for s, t in zip(mapped, teacher["feats"])]).mean()
        total = sum(self.weights[k] * v for k, v in items.items())
        return total, {k: v.detach() for k, v in items.items()}
