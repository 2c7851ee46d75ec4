"""``Distiller``: the weighted sum of the distillation terms between a student's and a teacher's head outputs."""

from __future__ import annotations

import torch
from torch import nn

from kdprune.distill.adapters import FeatureAdapters
from kdprune.losses.kd import KD_TERMS, KDContext, anchor_weights, check_kd


class Distiller(nn.Module):
    """KD loss per image: the sum over the registered terms (``kdprune.losses.kd.KD_TERMS``: ``cls``, ``ld``, ``cwd``)
    of ``weight * term``, from settings ``name=weight, t_name=temperature`` (a missing temperature takes the term's
    default, a missing weight is 0).

    Inputs are the raw head dicts ``{boxes, scores, feats}`` of student (train mode) and teacher (eval mode, no grad).
    Terms with weight 0 are not computed. Holds the trainable feature adapters (only when a feature term is on); the
    teacher itself lives elsewhere, so it is never in this module's state, optimizer or DDP wrapper.
    """

    def __init__(self, *, anchors: str, reg_max: int = 16, student_channels: list[int] | None = None,
                 teacher_channels: list[int] | None = None, **settings: float):
        super().__init__()
        if (msg := check_kd(settings, anchors)) is not None:
            raise ValueError(msg)
        self.weights = {n: float(settings.get(n, 0.0)) for n in KD_TERMS}
        self.temperatures = {n: float(settings.get(f"t_{n}", term.temperature)) for n, term in KD_TERMS.items()}
        self.on = [n for n in KD_TERMS if self.weights[n] > 0]
        self.anchors, self.reg_max = anchors, reg_max
        features = any(KD_TERMS[n].features for n in self.on)
        self.adapters = FeatureAdapters(student_channels, teacher_channels) if features else None

    @property
    def needs_foreground(self) -> bool:
        return self.anchors == "foreground" and any(not KD_TERMS[n].features for n in self.on)

    def forward(self, student: dict, teacher: dict, fg_mask: torch.Tensor | None = None):
        """``(total, {term: value})``, both per image (multiply by the batch size to sit beside ultralytics' loss)."""
        responses = any(not KD_TERMS[n].features for n in self.on)
        w = anchor_weights(self.anchors, teacher["scores"], fg_mask) if responses else None
        mapped = self.adapters(student["feats"]) if self.adapters is not None else None
        items = {n: KD_TERMS[n].fn(student, teacher, KDContext(self.temperatures[n], w, self.reg_max, mapped))
                 for n in self.on}
        total = sum(self.weights[k] * v for k, v in items.items())
        return total, {k: v.detach() for k, v in items.items()}
