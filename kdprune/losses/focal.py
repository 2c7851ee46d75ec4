"""Focal loss on the classification BCE (Lin et al. 2017), element-wise so it can replace ``v8DetectionLoss.bce``.

Written here rather than using ultralytics' ``FocalLoss``: that one reduces to a scalar (``loss.mean(1).sum()``), while
v8DetectionLoss needs the per-anchor, per-class loss to apply its class weights and divide by the target-score sum;
and it cannot switch alpha off, so gamma=0 would not give back plain BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalBCE(nn.Module):
    """``BCEWithLogitsLoss(reduction='none')`` times ``(1 - p_t) ** gamma`` and, if ``alpha`` is set, the class balance
    ``alpha * y + (1 - alpha) * (1 - y)``. Targets may be soft (ultralytics' IoU-aligned scores): ``p_t`` is then
    ``y * p + (1 - y) * (1 - p)``. ``gamma=0, alpha=None`` is exactly BCE."""

    def __init__(self, gamma: float = 1.5, alpha: float | None = 0.25):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma={gamma}: must be >= 0")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha}: must be in [0, 1] or None")
        self.gamma, self.alpha = float(gamma), alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.gamma:
            p = logits.sigmoid()
            p_t = target * p + (1 - target) * (1 - p)
            loss = loss * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (target * self.alpha + (1 - target) * (1 - self.alpha))
        return loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
