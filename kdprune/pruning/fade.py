"""Fade before removal: channels chosen to go are driven to zero over the fade's training steps, while the rest
(and the teacher's signal) keep training, so that removing them changes the model's output by (almost) nothing.

The gate acts on the BatchNorm of every layer in each pruned group (the root conv and every conv coupled to it by a
residual add or a split): its weight and bias are scaled towards 0 after each optimizer step, in the model and in its
EMA. With both at exactly 0 the BN outputs 0, SiLU(0) = 0, and every consumer reads zeros from those channels.
"""

from __future__ import annotations

import torch
from torch import nn

Targets = dict[str, list[int]]  # BatchNorm module name -> channel indices to fade


class ChannelFade:
    """A linear fade of ``targets`` over ``steps`` calls of ``step`` (one per training batch): after call ``t``
    (1-based) the faded weights are ``1 - t / steps`` of what training left them; after the last, exactly 0."""

    def __init__(self, targets: Targets, steps: int):
        self.targets = {k: sorted(int(i) for i in v) for k, v in targets.items()}
        self.steps, self.done = max(int(steps), 1), 0

    @property
    def complete(self) -> bool:
        return self.done >= self.steps

    @torch.no_grad()
    def step(self, *models: nn.Module) -> None:
        if self.complete:
            return
        t = self.done + 1
        factor = (self.steps - t) / (self.steps - t + 1)  # s_t / s_{t-1} with s_t = 1 - t / steps
        for model in models:
            self._scale(model, factor)
        self.done = t

    @torch.no_grad()
    def _scale(self, model: nn.Module, factor: float) -> None:
        for name, idxs in self.targets.items():
            bn = model.get_submodule(name)
            i = torch.as_tensor(idxs, device=bn.weight.device)
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.data[i] = p.data[i] * factor if factor > 0 else 0.0

    def state_dict(self) -> dict:
        return {"targets": self.targets, "steps": self.steps, "done": self.done}

    @classmethod
    def from_state(cls, state: dict) -> ChannelFade:
        f = cls(state["targets"], state["steps"])
        f.done = int(state["done"])
        return f
